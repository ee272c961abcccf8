"""The GPU path's likely problems (issue 26), each checked here on the CPU where its logic runs here:
colorimetry of untagged HD on both decoder paths, NVDEC's per-packet errors counted like FFmpeg's, NVML
found by PCI bus id, a frozen torch model, one TensorRT context by default, host-built small tensors.

What only a GPU shows (pinned uploads, CUDA graph capture under inference_mode, the NVDEC error types
raised by a real bad packet) is in scripts/gpu_check.sh's steps (docs/gpu-check.md)."""

from __future__ import annotations

import sys
import types
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch

from rtsp_worker.config import ModelConfig
from rtsp_worker.detection.input_spec import InputSpec
from rtsp_worker.detection.preprocess import Preprocessor, host_to_device, nv12_to_rgb, uploads_uint8
from rtsp_worker.engines import load_engine
from rtsp_worker.sources.base import HD_MIN_HEIGHT, DecodeError, colorimetry_from_tags
from rtsp_worker.sources.camera import decode_counting
from rtsp_worker.sources.decoders import CpuDecoder
from rtsp_worker.sources.nvdec import decode_packet, is_packet_error, surface_images
from rtsp_worker.sources.state import CameraStats
from rtsp_worker.types import NATIVE, RGB, Frame

REPO = Path(__file__).resolve().parents[2]
Y, U, V = 120, 100, 170  # a colour where BT.601 and BT.709 differ by ~8 levels in R and G


# -- colorimetry: untagged HD is BT.709 on both paths ------------------------------------------------------
@pytest.mark.parametrize(("colorspace", "color_range", "height", "expected"), [
    (2, 1, HD_MIN_HEIGHT, "bt709-limited"),  # untagged 720p
    (None, None, 1080, "bt709-limited"),  # no tag read at all
    (2, 1, HD_MIN_HEIGHT - 1, "bt601-limited"),  # untagged SD
    (5, 1, 1080, "bt601-limited"),  # tagged BT.470BG (BT.601) HD stays as tagged
    (6, 2, 1080, "bt601-full"),
    (1, 2, 360, "bt709-full"),  # tagged BT.709 SD stays as tagged
])
def test_colorimetry_rule(colorspace, color_range, height, expected):
    assert colorimetry_from_tags(colorspace, color_range, height) == expected


def _solid_clip(path: Path, width: int, height: int, frames: int = 3) -> Path:
    """An untagged H.264 clip of one YUV colour (lossless, so the decoded YUV is exactly Y, U, V)."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"qp": "0", "preset": "ultrafast"}
        for i in range(frames):
            f = av.VideoFrame(width, height, "yuv420p")
            for plane, value in zip(f.planes, (Y, U, V)):
                plane.update(np.full(plane.buffer_size, value, np.uint8).tobytes())
            f.pts, f.time_base = i, Fraction(1, 10)
            out.mux(s.encode(f))
        out.mux(s.encode(None))
    return path


def _decode(path: Path, pixel_format: str):
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        dec = CpuDecoder(stream, pixel_format=pixel_format)
        images = [img for p in c.demux(stream) if p.size for img in dec.decode(p)]
    return images


def _expected_rgb(colorimetry: str) -> torch.Tensor:
    nv12 = torch.empty((1, 3, 4), dtype=torch.uint8)  # a 2x4 NV12 image of (Y, U, V)
    nv12[0, :2] = Y
    nv12[0, 2, 0::2], nv12[0, 2, 1::2] = U, V
    return nv12_to_rgb(nv12, 2, 4, colorimetry)[0, :, 0, 0]  # (3,) in [0, 255]


@pytest.mark.parametrize(("width", "height", "matrix"), [(1280, 720, "bt709"), (640, 360, "bt601")])
def test_untagged_stream_converts_with_the_rule_on_the_cpu_and_the_nv12_path(tmp_path, width, height, matrix):
    clip = _solid_clip(tmp_path / "solid.mp4", width, height)
    expected = _expected_rgb(f"{matrix}-limited")
    other = _expected_rgb(f"{'bt601' if matrix == 'bt709' else 'bt709'}-limited")
    assert (expected - other).abs().max() > 5  # the two readings are far apart for this colour
    pre = Preprocessor(InputSpec((64, 64), scale=1.0, letterbox="stretch"), 1, torch.device("cpu"))

    def centre(img) -> torch.Tensor:
        frame = Frame(0, 0, 0.0, img.image, img.height, img.width, img.pixel_format, colorimetry=img.colorimetry)
        x, _ = pre([frame])
        return x[0, :, 32, 32]

    native = _decode(clip, NATIVE)[0]
    assert native.image.colorspace == 2 and native.colorimetry == f"{matrix}-limited"  # untagged indeed
    nv12 = _decode(clip, "nv12")[0]
    assert nv12.colorimetry == f"{matrix}-limited"
    rgb24 = _decode(clip, "rgb24")[0]
    # CPU path (FFmpeg's conversion), GPU path (the NV12 matrix, as NVDEC frames take), eager rgb24: all agree
    assert (centre(native) - expected).abs().max() <= 2.0, (centre(native), expected)
    assert (centre(nv12) - expected).abs().max() <= 2.0, (centre(nv12), expected)
    assert (rgb24.image[height // 2, width // 2].float() - expected).abs().max() <= 2.0


# -- NVDEC errors on one bad packet are decode errors -------------------------------------------------------
class PyNvVCException(Exception):  # the names PyNvVideoCodec 2.2 registers (pybind11)
    pass


class PyNvVCExceptionUnsupported(Exception):
    pass


def test_pynvvideocodec_packet_errors_are_told_from_fatal_ones():
    nvc = SimpleNamespace(PyNvVCException=PyNvVCException, PyNvVCExceptionUnsupported=PyNvVCExceptionUnsupported)
    assert is_packet_error(nvc, PyNvVCException("cuvidParseVideoData failed"))
    assert not is_packet_error(nvc, PyNvVCExceptionUnsupported("4:4:4 not supported"))
    assert not is_packet_error(nvc, RuntimeError("CUDA error: an illegal memory access"))
    assert not is_packet_error(SimpleNamespace(), PyNvVCException("a module without the type"))


class _Surface:
    """Stands for a PyNvVideoCodec frame: DLPack of an NV12 tensor, and its PTS."""

    def __init__(self, t: torch.Tensor) -> None:
        self._t = t

    def __dlpack__(self, stream=None, **kwargs):
        return self._t.__dlpack__()

    def __dlpack_device__(self):
        return self._t.__dlpack_device__()

    def getPTS(self) -> int:  # PyNvVideoCodec's name
        return 0


NVC = SimpleNamespace(PacketData=SimpleNamespace, PyNvVCException=PyNvVCException,
                      PyNvVCExceptionUnsupported=PyNvVCExceptionUnsupported)


def test_nvdec_surfaces_take_the_colorimetry_of_their_own_height():
    hd, sd = (torch.zeros((h * 3 // 2, w), dtype=torch.uint8) for h, w in ((1080, 1920), (360, 640)))
    images = surface_images([_Surface(hd), _Surface(sd)], torch.device("cpu"), Fraction(1, 90000), (2, 1), NVC)
    assert [i.colorimetry for i in images] == ["bt709-limited", "bt601-limited"]  # untagged, limited range


def test_nvdec_packet_errors_become_decode_errors():
    def bad(_):
        raise PyNvVCException("cuvidParseVideoData failed")

    with pytest.raises(DecodeError, match="NVDEC: PyNvVCException: cuvidParseVideoData failed"):
        decode_packet(SimpleNamespace(Decode=bad), NVC, NVC.PacketData())

    def unsupported(_):
        raise PyNvVCExceptionUnsupported("chroma 4:4:4")

    with pytest.raises(PyNvVCExceptionUnsupported):  # the stream cannot be decoded at all: not one bad frame
        decode_packet(SimpleNamespace(Decode=unsupported), NVC, NVC.PacketData())


def test_a_decode_error_is_counted_and_the_connection_goes_on():
    stats = CameraStats()

    class Bad:
        def decode(self, packet):
            raise DecodeError("NVDEC: PyNvVCException: cuvidParseVideoData failed")

    for _ in range(3):
        assert decode_counting(Bad(), object(), stats, "a") == []
    assert stats.decode_errors == 3

    class Broken:
        def decode(self, packet):
            raise RuntimeError("CUDA error")  # not a packet's fault: the connection ends (and reconnects)

    with pytest.raises(RuntimeError, match="CUDA error"):
        decode_counting(Broken(), object(), stats, "a")
    assert stats.decode_errors == 3


# -- NVML by PCI bus id --------------------------------------------------------------------------------------
def test_nvml_handle_is_found_by_the_cuda_devices_pci_bus_id(monkeypatch):
    from rtsp_worker.service import metrics

    asked: list = []
    fake = types.ModuleType("pynvml")
    fake.nvmlInit = lambda: None
    fake.nvmlDeviceGetHandleByPciBusId = lambda bus: asked.append(("bus", bus)) or "handle"
    fake.nvmlDeviceGetHandleByIndex = lambda i: asked.append(("index", i)) or "wrong"
    fake.nvmlDeviceGetUtilizationRates = lambda h: asked.append(("util", h)) or SimpleNamespace(gpu=40)
    fake.nvmlDeviceGetMemoryInfo = lambda h: asked.append(("mem", h)) or SimpleNamespace(used=3, total=8)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    # CUDA device 0 is the GPU at bus 0x65 (CUDA_VISIBLE_DEVICES=3, say): NVML's index 0 is another one.
    props = SimpleNamespace(pci_domain_id=0, pci_bus_id=0x65, pci_device_id=0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    nvml = metrics.Nvml(0)
    assert nvml.available and nvml.sample() == (40.0, 3.0, 8.0)
    assert asked == [("bus", "00000000:65:00.0"), ("util", "handle"), ("mem", "handle")]  # that GPU's handle


# -- the torch engine is frozen; one TensorRT context by default ---------------------------------------------
def test_torch_engine_parameters_are_frozen():
    engine = load_engine(ModelConfig(path=REPO / "models" / "synth_det.pt2"), torch.device("cpu"), max_batch=1)
    try:
        assert not any(p.requires_grad for p in engine.module.parameters())
        out = engine.infer(torch.zeros((1, 3, *engine.info.input_size)))
        assert out.grad_fn is None and not out.requires_grad
    finally:
        engine.close()


def test_one_tensorrt_context_by_default():
    # The pipeline infers from one stream: a second context would never be used (tensorrt.py's docstring).
    assert ModelConfig(path=Path("m.engine")).contexts == 1
    from rtsp_worker.engine_build.build import BuildOptions

    assert BuildOptions.__dataclass_fields__["contexts"].default == 1


# -- small tensors built on the host; host frames go up as uint8 ---------------------------------------------
def test_host_to_device_and_upload_rule_on_the_cpu():
    t = host_to_device([3, 1, 2], torch.int64, torch.device("cpu"))
    assert t.tolist() == [3, 1, 2] and t.dtype == torch.int64
    host = Frame(0, 0, 0.0, torch.zeros((4, 4, 3), dtype=torch.uint8), 4, 4, RGB)
    assert uploads_uint8([host], torch.device("cuda", 0))  # host frames for a GPU: uint8 upload
    assert not uploads_uint8([host], torch.device("cpu"))


def test_mixed_size_batch_uses_the_group_rows():
    # Two sizes in one batch: each group lands in its own rows (the index tensor path).
    pre = Preprocessor(InputSpec((32, 32), scale=1.0), 3, torch.device("cpu"))
    frames = [Frame(i, 0, 0.0, torch.full((h, w, 3), v, dtype=torch.uint8), h, w, RGB)
              for i, (h, w, v) in enumerate([(32, 32, 10), (16, 32, 200), (32, 32, 30)])]
    x, _ = pre(frames)
    assert x[0, :, 16, 16].tolist() == [10.0] * 3 and x[2, :, 16, 16].tolist() == [30.0] * 3
    assert x[1, :, 16, 16].tolist() == [200.0] * 3 and x[1, :, 0, 16].tolist() == [114.0] * 3


# -- what the GPU machine lacks is imported only by the part that needs it ----------------------------------
def test_anchor_names_are_supervisions():
    sv = pytest.importorskip("supervision")
    from rtsp_worker.analytics.geometry import ANCHOR_OFFSETS

    assert set(ANCHOR_OFFSETS) == {p.value for p in sv.Position} - {"CENTER_OF_MASS"}


# -- on a GPU (scripts/gpu_check.sh runs these; here they skip) ----------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")  # unindexed on purpose: what `device: cuda` and `auto` used to give


def _host_frames(tmp_path: Path) -> list[Frame]:
    clip = _solid_clip(tmp_path / "hd.mp4", 1280, 720, frames=2)
    native = [Frame(i, 0, 0.0, d.image, d.height, d.width, NATIVE, colorimetry=d.colorimetry)
              for i, d in enumerate(_decode(clip, NATIVE))]
    rgb = Frame(2, 0, 0.0, torch.randint(0, 255, (240, 320, 3), dtype=torch.uint8), 240, 320, RGB)
    return [*native, rgb]


@pytest.mark.gpu
@needs_cuda
def test_host_frames_on_a_gpu_preprocess_as_on_the_cpu(tmp_path):
    frames = _host_frames(tmp_path)  # two sizes: the group-rows index path too
    spec = InputSpec((256, 320))
    gpu = Preprocessor(spec, 3, CUDA)
    assert gpu.device == torch.device("cuda", torch.cuda.current_device())
    x_gpu, lb_gpu = gpu(frames)  # NATIVE and RGB frames go up as pinned uint8
    x_cpu, lb_cpu = Preprocessor(spec, 3, torch.device("cpu"))(frames)
    torch.cuda.synchronize()
    torch.testing.assert_close(x_gpu.cpu(), x_cpu, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lb_gpu.scale.cpu(), lb_cpu.scale)


@pytest.mark.gpu
@needs_cuda
def test_pt2_with_cuda_graphs_on_unindexed_cuda(tmp_path):
    path = REPO / "models" / "synth_det.pt2"
    graphs = load_engine(ModelConfig(path=path, cuda_graphs=True), CUDA, max_batch=4)  # was "names other devices"
    eager = load_engine(ModelConfig(path=path, cuda_graphs=False), CUDA, max_batch=4)
    try:
        assert graphs.device.index is not None and graphs.graphs
        x = torch.rand(3, 3, *graphs.info.input_size, device=CUDA)
        out = graphs.infer(x)
        assert out.grad_fn is None and not any(g.outputs.requires_grad for g in graphs.graphs.values())
        torch.testing.assert_close(out, eager.infer(x), atol=2e-2, rtol=2e-2)
    finally:
        graphs.close()
        eager.close()


@pytest.mark.gpu
@needs_cuda
def test_fused_kernel_runs_for_nv12_frames_on_unindexed_cuda(tmp_path):
    pytest.importorskip("cupy", reason="cupy is not installed")  # on the GPU machine it is
    clip = _solid_clip(tmp_path / "hd.mp4", 1280, 720, frames=2)
    frames = [Frame(i, 0, 0.0, d.image.to(CUDA), d.height, d.width, d.pixel_format, colorimetry=d.colorimetry)
              for i, d in enumerate(_decode(clip, "nv12"))]
    spec = InputSpec((384, 640))
    fused = Preprocessor(spec, 2, CUDA, torch.float16)
    x_fused, _ = fused(frames)
    assert fused.fused_kernel  # `f.image.device == cuda` used to switch it off silently
    plain = Preprocessor(spec, 2, CUDA, torch.float16, fused=False)
    x_torch, _ = plain(frames)
    assert not plain.fused_kernel
    torch.testing.assert_close(x_fused.float(), x_torch.float(), atol=2e-2, rtol=0)
    centre = x_fused[0, :, 192, 320].float() * 255
    assert (centre.cpu() - _expected_rgb("bt709-limited")).abs().max() <= 2.0  # untagged HD: BT.709 on NVDEC's path
