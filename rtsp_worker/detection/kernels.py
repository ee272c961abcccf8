"""The fused GPU preprocessing kernel (cupy): NV12 of every camera -> the engine's input, one launch per batch.

One thread per output pixel of the (B, 3, H_in, W_in) batch: it finds its image's letterbox region, and
inside it samples the NV12 source bilinearly (half-pixel centres, like `F.interpolate(...,
align_corners=False)`): each of the four source neighbours is converted to RGB (its own Y, the chroma of
its 2x2 block, the image's YUV->RGB matrix), clamped to 0-255, blended, then mapped with the model's
`InputSpec` (channel order, `v * mul + add`) and written planar in the engine's dtype into the engine's
input buffer. Outside the region it writes the spec's pad. The kernel runs on torch's current stream (the
inference stream), so the engine, enqueued after it on the same stream, reads a finished buffer.

`reference` is the same arithmetic in torch (CPU or CUDA): the kernel's twin, tested on the CPU against the
torch preprocessing path; on a GPU the kernel is tested against it. cupy is imported only when a kernel is
built (the `gpu` extra, `cupy-cuda13x` for torch's CUDA 13 wheels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rtsp_worker.detection.input_spec import InputSpec
from rtsp_worker.devices import normalize_device, same_device

# Per image, int64: Y plane address, source height, width, region y0, x0, region height, width.
INT_FIELDS = 7
# Per image, float32: 3x3 YUV->RGB matrix (row-major), then the Y and UV offsets.
FLOAT_FIELDS = 11

# BT.601 limited range, the matrix FFmpeg's swscale uses by default for yuv420p -> rgb24.
BT601_LIMITED = ((1.164383, 0.0, 1.596027), (1.164383, -0.391762, -0.812968), (1.164383, 2.017232, 0.0))

KERNEL_SOURCE = r"""
extern "C" __global__ void nv12_letterbox(
    const long long* __restrict__ ints,   // (B, 7)
    const float* __restrict__ floats,     // (B, 11)
    const float* __restrict__ chan,       // (9,): mul[3], add[3], pad[3], in the model's channel order
    const int src_channel0,               // 0: model channel 0 is R (rgb), 2: it is B (bgr)
    OUT_T* __restrict__ out,              // (B, 3, H, W)
    const int batch, const int H, const int W)
{
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long plane = (long long)H * W;
    if (idx >= plane * batch) return;
    const int b = (int)(idx / plane);
    const int y = (int)((idx % plane) / W);
    const int x = (int)(idx % W);
    const long long* p = ints + b * 7;
    const float* f = floats + b * 11;
    const int sh = (int)p[1], sw = (int)p[2];
    const int ry = y - (int)p[3], rx = x - (int)p[4];
    const int rh = (int)p[5], rw = (int)p[6];
    float rgb[3];
    if (ry < 0 || rx < 0 || ry >= rh || rx >= rw) {
        for (int c = 0; c < 3; ++c) out[(b * 3 + c) * plane + (long long)y * W + x] = (OUT_T)chan[6 + c];
        return;
    }
    const unsigned char* luma = (const unsigned char*)p[0];
    const unsigned char* chroma = luma + (long long)sh * sw;
    // Half-pixel centres, clamped at 0 (align_corners=False).
    float fy = fmaxf((ry + 0.5f) * ((float)sh / rh) - 0.5f, 0.0f);
    float fx = fmaxf((rx + 0.5f) * ((float)sw / rw) - 0.5f, 0.0f);
    int y0 = (int)fy, x0 = (int)fx;
    int y1 = min(y0 + 1, sh - 1), x1 = min(x0 + 1, sw - 1);
    float ly = fy - y0, lx = fx - x0;
    int ys[2] = {y0, y1}, xs[2] = {x0, x1};
    float wy[2] = {1.0f - ly, ly}, wx[2] = {1.0f - lx, lx};
    rgb[0] = rgb[1] = rgb[2] = 0.0f;
    for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 2; ++j) {
            const int sy = ys[i], sx = xs[j];
            float Y = (float)luma[(long long)sy * sw + sx] - f[9];
            const long long c = (long long)(sy >> 1) * sw + (sx & ~1);
            float U = (float)chroma[c] - f[10], V = (float)chroma[c + 1] - f[10];
            for (int k = 0; k < 3; ++k) {
                float v = f[3 * k] * Y + f[3 * k + 1] * U + f[3 * k + 2] * V;
                rgb[k] += wy[i] * wx[j] * fminf(fmaxf(v, 0.0f), 255.0f);
            }
        }
    }
    for (int c = 0; c < 3; ++c) {
        const float v = rgb[c == 1 ? 1 : (src_channel0 == 0 ? c : 2 - c)];
        out[(b * 3 + c) * plane + (long long)y * W + x] = (OUT_T)(v * chan[c] + chan[3 + c]);
    }
}
"""

BLOCK = 256


@dataclass(frozen=True, slots=True)
class ImageGeometry:
    """Where one source frame goes in the model input."""

    height: int  # source frame
    width: int
    top: int  # region in the model input
    left: int
    region_h: int
    region_w: int


def channel_params(spec: InputSpec) -> list[float]:
    """mul[3], add[3], pad[3] of the spec, per model channel."""
    return [*spec.mul, *spec.add, *spec.pad]


def reference(
    nv12: Sequence[Tensor],
    geometry: Sequence[ImageGeometry],
    spec: InputSpec,
    matrices: Sequence[tuple[tuple[float, ...], float, float]] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The kernel's arithmetic in torch: (B, 3, H, W) in `dtype`, the kernel's twin (vectorized per image).

    `matrices`: per image (row-major 3x3 YUV->RGB, Y offset, UV offset); default BT.601 limited range.
    """
    h_in, w_in = spec.size
    device = nv12[0].device
    out = torch.empty((len(nv12), 3, h_in, w_in), dtype=torch.float32, device=device)
    mul = torch.tensor(spec.mul, device=device).view(3, 1, 1)
    add = torch.tensor(spec.add, device=device).view(3, 1, 1)
    pad = torch.tensor(spec.pad, device=device).view(3, 1, 1)
    for b, (img, g) in enumerate(zip(nv12, geometry)):  # per image: a loop over the batch, not pixels
        m, y_off, uv_off = matrices[b] if matrices is not None else (sum(BT601_LIMITED, ()), 16.0, 128.0)
        mat = torch.tensor(m, dtype=torch.float32, device=device).view(3, 3)
        sh, sw = g.height, g.width
        ry = torch.arange(g.region_h, device=device, dtype=torch.float32)
        rx = torch.arange(g.region_w, device=device, dtype=torch.float32)
        fy = ((ry + 0.5) * (sh / g.region_h) - 0.5).clamp(min=0)
        fx = ((rx + 0.5) * (sw / g.region_w) - 0.5).clamp(min=0)
        y0, x0 = fy.long(), fx.long()
        y1, x1 = (y0 + 1).clamp(max=sh - 1), (x0 + 1).clamp(max=sw - 1)
        ly, lx = (fy - y0)[:, None], (fx - x0)[None, :]
        luma = img[:sh].float()
        chroma = img[sh : sh + sh // 2].float().view(sh // 2, sw // 2, 2)
        acc = torch.zeros((3, g.region_h, g.region_w), device=device)
        for ys, wy in ((y0, 1 - ly), (y1, ly)):
            for xs, wx in ((x0, 1 - lx), (x1, lx)):
                yy = luma[ys[:, None], xs[None, :]] - y_off
                uv = chroma[(ys // 2)[:, None], (xs // 2)[None, :]] - uv_off  # (h, w, 2)
                yuv = torch.stack((yy, uv[..., 0], uv[..., 1]))  # (3, h, w)
                rgb = torch.einsum("kc,chw->khw", mat, yuv).clamp(0, 255)
                acc += (wy * wx) * rgb
        if spec.channels == "bgr":
            acc = acc.flip(0)
        out[b] = pad
        out[b, :, g.top : g.top + g.region_h, g.left : g.left + g.region_w] = acc * mul + add
    return out.to(dtype)


class FusedPreprocess:
    """The compiled kernel for one spec and output dtype; `__call__` enqueues one launch on the current stream."""

    def __init__(self, spec: InputSpec, dtype: torch.dtype, device: torch.device) -> None:
        import cupy

        if dtype not in (torch.float32, torch.float16):
            raise ValueError(f"fused preprocessing writes float32 or float16, not {dtype}")
        self.spec = spec
        self.dtype = dtype
        device = self.device = normalize_device(device)  # `cuda` -> `cuda:N`, as the frames report it
        out_t = "float" if dtype == torch.float32 else "__half"
        source = ("#include <cuda_fp16.h>\n" if dtype == torch.float16 else "") + KERNEL_SOURCE.replace(
            "OUT_T", out_t)
        self._cupy = cupy
        self._kernel = cupy.RawKernel(source, "nv12_letterbox")
        self._kernel.compile()  # now (NVRTC), so a failure falls back to torch at start-up, not mid-stream
        self._chan = torch.tensor(channel_params(spec), dtype=torch.float32, device=device)
        self._src_channel0 = 0 if spec.channels == "rgb" else 2

    def __call__(self, nv12: Sequence[Tensor], geometry: Sequence[ImageGeometry], out: Tensor,
                 matrices: Sequence[tuple[tuple[float, ...], float, float]] | None = None) -> Tensor:
        """Write the batch into `out` ((B, 3, H, W), contiguous, this device and dtype) and return it."""
        bsz = len(nv12)
        if out.shape[0] < bsz or tuple(out.shape[1:]) != (3, *self.spec.size) or out.dtype != self.dtype:
            raise ValueError(f"output buffer {tuple(out.shape)} {out.dtype} does not fit a batch of {bsz}")
        if not all(t.is_contiguous() and same_device(t.device, self.device) for t in nv12):
            raise ValueError(f"fused preprocessing reads contiguous NV12 frames on {self.device}")
        ints = torch.tensor([[t.data_ptr(), g.height, g.width, g.top, g.left, g.region_h, g.region_w]
                             for t, g in zip(nv12, geometry)], dtype=torch.int64)
        mats = [matrices[b] if matrices is not None else (sum(BT601_LIMITED, ()), 16.0, 128.0) for b in range(bsz)]
        floats = torch.tensor([[*m, y, uv] for m, y, uv in mats], dtype=torch.float32)
        stream = torch.cuda.current_stream(self.device)
        ints, floats = ints.to(self.device, non_blocking=True), floats.to(self.device, non_blocking=True)
        h, w = self.spec.size
        total = bsz * h * w
        cp = self._cupy
        with cp.cuda.ExternalStream(stream.cuda_stream, self.device.index):
            self._kernel(((total + BLOCK - 1) // BLOCK,), (BLOCK,), (
                cp.asarray(ints), cp.asarray(floats), cp.asarray(self._chan), cp.int32(self._src_channel0),
                cp.asarray(out), cp.int32(bsz), cp.int32(h), cp.int32(w)))
        for t in nv12:
            t.record_stream(stream)  # decoder-stream memory: not reused while this launch reads it
        return out[:bsz]
