"""Batched letterbox preprocessing in torch, on whatever device the frames live on.

Frames (the CPU decoder's native av.VideoFrame, RGB (H, W, 3) uint8, or NVDEC's NV12 (H*3/2, W) uint8) -> one (B, 3, H_in, W_in) tensor prepared
as the model's `InputSpec` says (channel order, value mapping, letterbox placement and fill; default RGB in
[0, 1], centred, grey 114) written into a preallocated buffer, plus the `Letterbox` that maps boxes back.
Frames of the same size are resized together in one `interpolate` call; the loop is over distinct frame
sizes, never over pixels or boxes. The conventions cost no extra pass: channel order is picked while the
frames are gathered (or folded into the NV12 matrix), and the value mapping is the one multiply-add that
the [0, 1] scaling already was.

Frames stay in the decoder's YUV until here, so only the frames a batch takes are converted: NVDEC's NV12
in torch (or the fused kernel) on the GPU, the CPU decoder's native frames by FFmpeg's swscale straight into
the model's channel order (a SIMD pass per frame, ~0.3 ms at 640x360 and ~1 ms at 1080p on one core, where
the same conversion in torch costs 20-140 ms on the CPU: OPTIMIZATION_SUMMARY.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rtsp_worker.detection.input_spec import InputSpec
from rtsp_worker.devices import normalize_device, same_device
from rtsp_worker.sources.base import swscale_colorspace
from rtsp_worker.types import NATIVE, NV12, RGB, Frame, Letterbox

log = logging.getLogger(__name__)

PAD_VALUE = 114 / 255  # the grey ultralytics models are trained with


def letterbox_geometry(
    height: int, width: int, input_size: tuple[int, int], placement: str = "center"
) -> tuple[float, int, int, int, int]:
    """(scale, new_h, new_w, pad_x, pad_y) that fit a height x width frame into input_size.

    `placement` center (ultralytics) or topleft (YOLOX: all padding right and below). For stretch use
    `stretch_scale`: the frame fills the input and each axis has its own scale.
    """
    in_h, in_w = input_size
    if placement == "stretch":
        return min(in_h / height, in_w / width), in_h, in_w, 0, 0
    scale = min(in_h / height, in_w / width)
    new_h = min(in_h, max(1, round(height * scale)))
    new_w = min(in_w, max(1, round(width * scale)))
    if placement == "topleft":
        return scale, new_h, new_w, 0, 0
    return scale, new_h, new_w, (in_w - new_w) // 2, (in_h - new_h) // 2


# YUV -> RGB per colorimetry: (3x3 matrix on (Y - y_off, U - 128, V - 128), y_off). Limited ("TV") range
# scales Y from 16-235 and chroma from 16-240; full ("PC") range uses 0-255. BT.601 limited is what FFmpeg's
# swscale uses for untagged SD and most camera streams; HD cameras usually tag BT.709.
BT601_LIMITED = "bt601-limited"
_COLORIMETRY: dict[str, tuple[tuple[tuple[float, ...], ...], float]] = {
    "bt601-limited": (((1.164383, 0.0, 1.596027), (1.164383, -0.391762, -0.812968), (1.164383, 2.017232, 0.0)), 16.0),
    "bt709-limited": (((1.164383, 0.0, 1.792741), (1.164383, -0.213249, -0.532909), (1.164383, 2.112402, 0.0)), 16.0),
    "bt601-full": (((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0)), 0.0),
    "bt709-full": (((1.0, 0.0, 1.5748), (1.0, -0.187324, -0.468124), (1.0, 1.8556, 0.0)), 0.0),
}
_YUV2RGB = torch.tensor(_COLORIMETRY[BT601_LIMITED][0], dtype=torch.float32)  # the default, kept for callers

def yuv_coefficients(colorimetry: str) -> tuple[tuple[float, ...], float, float]:
    """(row-major 3x3 YUV->RGB matrix, Y offset, UV offset) of a colorimetry name."""
    if colorimetry not in _COLORIMETRY:
        raise ValueError(f"colorimetry {colorimetry!r} is not one of {sorted(_COLORIMETRY)}")
    m, y_off = _COLORIMETRY[colorimetry]
    return sum(m, ()), y_off, 128.0


def nv12_to_rgb(nv12: Tensor, height: int, width: int, colorimetry: str | None = None,
                bgr: bool = False) -> Tensor:
    """(G, H*3/2, W) uint8 NV12 -> (G, 3, H, W) float32 RGB (or BGR: the matrix rows swapped) in [0, 255].

    Default colorimetry: BT.601 limited."""
    if colorimetry is None:
        m, y_off = _YUV2RGB, 16.0
    else:
        flat, y_off, _ = yuv_coefficients(colorimetry)
        m = torch.tensor(flat, dtype=torch.float32).view(3, 3)
    y = nv12[:, :height, :].float()
    uv = nv12[:, height : height + height // 2, :].reshape(nv12.shape[0], height // 2, width // 2, 2).float()
    uv = uv.permute(0, 3, 1, 2)  # (G, 2, H/2, W/2)
    uv = F.interpolate(uv, size=(height, width), mode="nearest") - 128.0
    yuv = torch.stack((y - y_off, uv[:, 0], uv[:, 1]), dim=1)  # (G, 3, H, W)
    m = m.flip(0) if bgr else m
    rgb = torch.einsum("rc,gchw->grhw", m.to(nv12.device), yuv)
    return rgb.clamp_(0, 255)


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """`t` on `device`, asynchronously only where that is safe to read.

    A copy to a device is ordered on its stream, so it may be asynchronous. A copy to the host with
    `non_blocking=True` returns before the data has arrived, and the CPU reads it at once (ONNX Runtime
    on NVDEC frames would see stale or zero pixels): it must be a synchronous copy.
    """
    return t.to(device, non_blocking=device.type != "cpu")


def native_to_hwc(frames: Sequence[Frame], bgr: bool = False, pin: bool = False) -> Tensor:
    """Same-size NATIVE frames (av.VideoFrame) -> (G, H, W, 3) uint8 RGB or BGR on the host, by swscale, which
    reads each frame's colour tags; an untagged HD frame is read as BT.709 (`Frame.colorimetry`, from
    `sources.base.colorimetry_from_tags`) where swscale alone would assume BT.601.

    `pin`: written straight into page-locked memory, so the copy to a GPU is one asynchronous DMA."""
    fmt = "bgr24" if bgr else "rgb24"
    first = frames[0]
    shape = (len(frames), first.height, first.width, 3)
    out = torch.empty(shape, dtype=torch.uint8, pin_memory=True) if pin else torch.empty(shape, dtype=torch.uint8)
    view = out.numpy()
    for i, f in enumerate(frames):
        src = swscale_colorspace(f.image, f.colorimetry)
        view[i] = f.image.to_ndarray(format=fmt, **({"src_colorspace": src} if src else {}))
    return out


def frame_rgb(frame: Frame) -> Tensor:
    """One frame as (H, W, 3) uint8 RGB on the host (for sinks that want pixels), whatever its pixel format."""
    if frame.pixel_format == NATIVE:
        return native_to_hwc([frame])[0]
    if frame.pixel_format == NV12:
        rgb = nv12_to_rgb(frame.image.unsqueeze(0), frame.height, frame.width, frame.colorimetry)[0]
        return rgb.round().to(torch.uint8).permute(1, 2, 0).cpu()
    return frame.image.cpu()


def host_to_device(values: Any, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A small host-built tensor (indices, letterbox parameters) on `device` without a host sync.

    `torch.tensor(list, device=cuda)` copies from pageable memory, which waits for the device; built on the
    host in page-locked memory, the copy is queued on the current stream and the host goes on (torch's
    pinned allocator keeps the block until that copy has run)."""
    t = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def uploads_uint8(frames: Sequence[Frame], device: torch.device) -> bool:
    """Host frames for a GPU: they travel as uint8 (a quarter of float32's bytes) and are converted there."""
    first = frames[0]
    return device.type == "cuda" and (first.pixel_format == NATIVE or not first.image.is_cuda)


def _to_chw_float(frames: Sequence[Frame], bgr: bool = False, device: torch.device | None = None) -> Tensor:
    """Same-size frames -> (G, 3, H, W) float32 in [0, 255], RGB or BGR, on `device` (default: where the
    frames are). Host frames for a GPU go up as uint8 from pinned memory before any conversion; GPU frames
    for the CPU are converted where they are (the GPU's work), then copied."""
    first = frames[0]
    upload = device is not None and uploads_uint8(frames, device)
    if first.pixel_format == NATIVE:  # channel order chosen in the conversion itself: no flip
        hwc = native_to_hwc(frames, bgr, pin=upload)
        if upload:
            hwc = hwc.to(device, non_blocking=True)
        return hwc.permute(0, 3, 1, 2).float()
    if first.image.is_cuda:
        # NVDEC frames were allocated on the decoder's stream: keep their memory from being reused
        # while this (inference) stream still reads it.
        stream = torch.cuda.current_stream(first.image.device)
        for f in frames:
            f.image.record_stream(stream)
    if upload:
        staged = torch.empty((len(frames), *first.image.shape), dtype=first.image.dtype, pin_memory=True)
        stacked = torch.stack([f.image for f in frames], out=staged).to(device, non_blocking=True)
    else:
        stacked = torch.stack([f.image for f in frames])
    if first.pixel_format == NV12:
        return nv12_to_rgb(stacked, first.height, first.width, first.colorimetry, bgr)
    if first.pixel_format != RGB:
        raise ValueError(f"unsupported pixel format {first.pixel_format!r}")
    chw = stacked.permute(0, 3, 1, 2)
    return (chw.flip(1) if bgr else chw).float()


class Preprocessor:
    """Letterboxes batches into a buffer allocated once for the largest batch.

    `input_size` may be an `InputSpec` (the model's conventions) or a plain (height, width), which means
    the ultralytics defaults.
    """

    def __init__(
        self, input_size: tuple[int, int] | InputSpec, max_batch: int, device: torch.device,
        dtype: torch.dtype = torch.float32, fused: bool = True,
    ) -> None:
        """`fused=False` keeps NV12 frames on the torch path (a reference to compare the fused kernel with)."""
        spec = input_size if isinstance(input_size, InputSpec) else InputSpec(tuple(input_size))  # type: ignore[arg-type]
        self.spec = spec
        self.input_size = spec.size
        device = self.device = normalize_device(device)  # compared with the frames' devices below
        self.dtype = dtype
        self._buffer = torch.empty((max_batch, 3, *spec.size), dtype=dtype, device=device)
        self._bgr = spec.channels == "bgr"
        self._mul = torch.tensor(spec.mul, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._add = torch.tensor(spec.add, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._pad = torch.tensor(spec.pad, dtype=dtype, device=device).view(1, 3, 1, 1)
        # the cupy kernel (detection.kernels), False where it cannot be used (or is not wanted), None: not tried
        self._fused: Any = None if fused else False

    def __call__(self, frames: Sequence[Frame]) -> tuple[Tensor, Letterbox]:
        bsz = len(frames)
        if bsz > self._buffer.shape[0]:
            raise ValueError(f"batch of {bsz} exceeds the preallocated {self._buffer.shape[0]}")
        out = self._buffer[:bsz]
        placement = self.spec.letterbox
        geo = [letterbox_geometry(f.height, f.width, self.input_size, placement) for f in frames]
        if self._fused_ok(frames):  # NVDEC frames on the GPU: one cupy launch for the whole batch
            from rtsp_worker.detection.kernels import ImageGeometry

            self._fused(  # type: ignore[misc]
                [f.image for f in frames],
                [ImageGeometry(f.height, f.width, g[4], g[3], g[1], g[2]) for f, g in zip(frames, geo)], out,
                [yuv_coefficients(f.colorimetry) for f in frames])
            return out, self._letterbox(frames, geo)
        if placement != "stretch":  # stretched frames cover the whole input
            out.copy_(self._pad.expand_as(out))

        groups: dict[tuple[int, int, str, str], list[int]] = {}
        for i, f in enumerate(frames):
            groups.setdefault((f.height, f.width, f.pixel_format, f.colorimetry), []).append(i)
        for idx in groups.values():
            _, new_h, new_w, pad_x, pad_y = geo[idx[0]]
            imgs = to_device(_to_chw_float([frames[i] for i in idx], self._bgr, self.device), self.device)
            if imgs.shape[-2:] != (new_h, new_w):
                # bilinear can overshoot 0-255 slightly at edges; uint8 pixels need no clamp
                imgs = F.interpolate(imgs, size=(new_h, new_w), mode="bilinear", align_corners=False).clamp_(0, 255)
            region = torch.addcmul(self._add, imgs, self._mul, out=imgs).to(self.dtype)  # v * mul + add
            if len(idx) == bsz:
                out[:, :, pad_y : pad_y + new_h, pad_x : pad_x + new_w] = region
            else:  # the group's rows: built on the host, queued to the device without a sync
                index = host_to_device(idx, torch.int64, self.device)
                out[index, :, pad_y : pad_y + new_h, pad_x : pad_x + new_w] = region

        return out, self._letterbox(frames, geo)

    @property
    def fused_kernel(self) -> bool:
        """True once the fused NV12 kernel runs (decided on the first NV12 batch on a CUDA device)."""
        return self._fused not in (None, False)

    def _fused_ok(self, frames: Sequence[Frame]) -> bool:
        """Use the fused kernel: CUDA, NV12 frames on this device, and cupy importable (once decided)."""
        if self.device.type != "cuda" or not all(f.pixel_format == NV12
                                                 and same_device(f.image.device, self.device)
                                                 for f in frames):
            return False
        if self._fused is None:
            try:
                from rtsp_worker.detection.kernels import FusedPreprocess

                self._fused = FusedPreprocess(self.spec, self.dtype, self.device)
            except Exception as e:  # noqa: BLE001 - no cupy, or it cannot compile: the torch path works
                log.warning("fused preprocessing kernel unavailable (%s: %s); using torch", type(e).__name__, e)
                self._fused = False
        return self._fused is not False

    def _letterbox(self, frames: Sequence[Frame], geo: list[tuple[float, int, int, int, int]]) -> Letterbox:
        if self.spec.letterbox == "stretch":
            scale = torch.tensor([[self.input_size[1] / f.width, self.input_size[0] / f.height] for f in frames],
                                 dtype=torch.float32)
        else:
            scale = torch.tensor([g[0] for g in geo], dtype=torch.float32)
        letterbox = Letterbox(
            scale=scale,
            pad=torch.tensor([[g[3], g[4]] for g in geo], dtype=torch.float32),
            source_size=torch.tensor([[f.width, f.height] for f in frames], dtype=torch.float32),
        )
        if self.device.type == "cuda":  # from pinned memory: queued, no host sync (see host_to_device)
            letterbox = Letterbox(*(t.pin_memory().to(self.device, non_blocking=True) for t in
                                    (letterbox.scale, letterbox.pad, letterbox.source_size)))
        return letterbox
