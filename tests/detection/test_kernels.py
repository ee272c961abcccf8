"""The fused NV12 preprocessing kernel (detection/kernels.py).

On the CPU: its torch twin (`reference`, the kernel's arithmetic step for step) against the torch
preprocessing path on real decoded frames, for several frame sizes in one batch, for fp16 output and for
other input conventions (BGR, mean/std). On a GPU (marked `gpu`): the compiled kernel against the twin.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from rtsp_worker.detection.input_spec import InputSpec
from rtsp_worker.detection.kernels import KERNEL_SOURCE, ImageGeometry, reference
from rtsp_worker.detection.preprocess import Preprocessor, letterbox_geometry, nv12_to_rgb
from rtsp_worker.types import NV12, Frame


def nv12_frames(size: tuple[int, int], count: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Real NV12 frames: coloured noise blocks and gradients, H.264-encoded and decoded by PyAV."""
    w, h = size
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=Fraction(25, 1))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        yy, xx = np.mgrid[0:h, 0:w]
        for i in range(count):
            img = np.empty((h, w, 3), np.uint8)
            img[..., 0] = (xx * 255 // w + 9 * i) % 256
            img[..., 1] = yy * 255 // h
            img[..., 2] = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1)).repeat(8, 0).repeat(8, 1)[:h, :w]
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    with av.open(io.BytesIO(buf.getvalue())) as c:
        return [f.to_ndarray(format="nv12") for f in c.decode(video=0)]


def geometry(h: int, w: int, input_size: tuple[int, int], placement: str = "center") -> ImageGeometry:
    _, new_h, new_w, pad_x, pad_y = letterbox_geometry(h, w, input_size, placement)
    return ImageGeometry(h, w, pad_y, pad_x, new_h, new_w)


@pytest.fixture(scope="module")
def mixed_batch() -> list[tuple[torch.Tensor, int, int]]:
    """Frames of three sizes (down-, up-scaled, odd aspect), as they arrive from different cameras."""
    out = []
    for size in ((320, 240), (160, 96), (256, 256)):
        for f in nv12_frames(size):
            out.append((torch.from_numpy(f), size[1], size[0]))
    return out


@pytest.mark.parametrize(("dtype", "placement"), [(torch.float32, "center"), (torch.float16, "center"),
                                                  (torch.float32, "topleft"), (torch.float32, "stretch")])
def test_twin_matches_the_torch_preprocessing_path(mixed_batch, dtype, placement):
    """The kernel's geometry (a region per image, each axis scaled on its own) covers every placement:
    centred letterbox, YOLOX's top-left one and RT-DETR's stretch."""
    size = (192, 256)
    spec = InputSpec(size, letterbox=placement)
    frames = [Frame(i, 0, 0.0, img, h, w, NV12) for i, (img, h, w) in enumerate(mixed_batch)]
    expected, _ = Preprocessor(spec, len(frames), torch.device("cpu"), dtype)(frames)
    got = reference([f.image for f in frames], [geometry(f.height, f.width, size, placement) for f in frames],
                    spec, dtype=dtype)
    assert got.dtype == dtype and got.shape == expected.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-3
    torch.testing.assert_close(got.float(), expected.float(), atol=tol, rtol=0)


def test_twin_applies_the_input_spec(mixed_batch):
    """BGR order, 0-255 scale with mean/std, as other model families want."""
    img, h, w = mixed_batch[0]
    size = (160, 160)
    g = geometry(h, w, size)
    spec = InputSpec(size, channels="bgr", scale=1.0, mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 8.0), pad_value=0.0)
    got = reference([img], [g], spec)[0]
    plain = reference([img], [g], InputSpec(size, scale=1.0, pad_value=0.0))[0]  # RGB 0-255
    region = (slice(None), slice(g.top, g.top + g.region_h), slice(g.left, g.left + g.region_w))
    expected = (plain.flip(0) - torch.tensor([10.0, 20.0, 30.0]).view(3, 1, 1)) / torch.tensor([2.0, 4.0, 8.0]).view(3, 1, 1)
    torch.testing.assert_close(got[region], expected[region], atol=1e-4, rtol=1e-5)
    pad = torch.tensor(spec.pad).view(3, 1)
    assert g.top > 0 and torch.allclose(got[:, : g.top].flatten(1), pad.expand(3, g.top * size[1]))


def test_twin_at_scale_one_is_the_colour_conversion(mixed_batch):
    """No resize: the twin is exactly nv12_to_rgb (the reference the NVDEC parity tests use)."""
    img, h, w = mixed_batch[0]
    got = reference([img], [ImageGeometry(h, w, 0, 0, h, w)], InputSpec((h, w), scale=1.0))[0]
    torch.testing.assert_close(got, nv12_to_rgb(img.unsqueeze(0), h, w)[0], atol=1e-3, rtol=0)


def test_kernel_source_reads_the_layout_the_twin_uses():
    """The launch packs 7 ints and 11 floats per image and 9 channel params; the kernel indexes them so."""
    assert "ints + b * 7" in KERNEL_SOURCE and "floats + b * 11" in KERNEL_SOURCE
    assert "chan[6 + c]" in KERNEL_SOURCE and "(sx & ~1)" in KERNEL_SOURCE  # pad; chroma pair of the column


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel_matches_its_twin_on_the_gpu(mixed_batch, dtype):
    from rtsp_worker.detection.kernels import FusedPreprocess

    dev = torch.device("cuda")
    size = (192, 256)
    spec = InputSpec(size)
    images = [img.to(dev) for img, _, _ in mixed_batch]
    geo = [geometry(h, w, size) for _, h, w in mixed_batch]
    kernel = FusedPreprocess(spec, dtype, dev)
    out = torch.full((len(images) + 2, 3, *size), -1.0, dtype=dtype, device=dev)
    got = kernel(images, geo, out)
    expected = reference(images, geo, spec, dtype=dtype)
    torch.testing.assert_close(got.float(), expected.float(), atol=2e-3 if dtype == torch.float16 else 1e-4, rtol=0)
    assert (out[len(images):] == -1).all()  # rows past the batch untouched
    frames = [Frame(i, 0, 0.0, img, h, w, NV12) for i, (img, (_, h, w)) in enumerate(zip(images, mixed_batch))]
    pre = Preprocessor(size, len(frames), dev, dtype)
    x, _ = pre(frames)
    assert pre.fused_kernel  # the Preprocessor took the kernel path
    torch.testing.assert_close(x.float(), expected.float(), atol=2e-3 if dtype == torch.float16 else 1e-4, rtol=0)
