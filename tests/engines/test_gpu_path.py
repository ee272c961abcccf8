"""The GPU data path: Annex-B conversion for NVDEC, NV12 -> RGB parity, the TorchScript engine.

Everything that needs no GPU runs here on the CPU with real clips (encoded by PyAV) and real TorchScript
files (traced in the test). Tests marked `gpu` need CUDA (and PyNvVideoCodec for NVDEC) and skip without.
"""

from __future__ import annotations

import io
import json
import logging
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from media_support import decode_with
from torch import nn

from rtsp_worker.config import ModelConfig
from rtsp_worker.detection.preprocess import Preprocessor, nv12_to_rgb
from rtsp_worker.engines import load_engine
from rtsp_worker.engines.base import ModelError
from rtsp_worker.engines.export import export_program
from rtsp_worker.engines.torchscript import (
    TorchScriptEngine,
    batch_buckets,
    device_copies,
    device_literals,
    load_module,
    pick_bucket,
    torchscript_device_constants,
)
from rtsp_worker.sources.base import colorimetry_from_tags
from rtsp_worker.sources.decoders import CpuDecoder, UnsupportedCodec, make_decoder, nvdec_unavailable_reason
from rtsp_worker.sources.nvdec import AnnexBConverter, NvdecDecoder, is_length_prefixed, surface_images
from rtsp_worker.types import NV12, RGB, Frame

# torch.jit is deprecated in favour of torch.export but is the format this backend reads.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def nvdec_gate(cuda: bool, nvdec_reason: str | None) -> tuple[str, str]:
    """("skip" | "fail" | "run", why) for an NVDEC test.

    Without CUDA an NVDEC test cannot run: skip. With CUDA, a missing NVDEC (no PyNvVideoCodec, no
    libnvcuvid from the driver) is exactly what the GPU tests are there to find: fail with the reason,
    never skip, or a GPU run passes without NVDEC ever decoding a frame.
    """
    if not cuda:
        return "skip", "needs a CUDA device"
    if nvdec_reason is not None:
        return "fail", f"CUDA is present but NVDEC cannot run: {nvdec_reason}"
    return "run", ""


@pytest.fixture
def nvdec() -> None:
    """Gate for tests that decode on NVDEC (see `nvdec_gate`)."""
    action, why = nvdec_gate(CUDA, nvdec_unavailable_reason() if CUDA else None)
    if action == "skip":
        pytest.skip(why)
    if action == "fail":
        pytest.fail(why)


needs_nvdec = pytest.mark.usefixtures("nvdec")


@pytest.mark.parametrize(
    ("cuda", "reason", "action"),
    [
        (False, None, "skip"),
        (False, "no CUDA device", "skip"),
        (True, None, "run"),
        (True, "PyNvVideoCodec unavailable: RuntimeError: libnvcuvid.so.1 not found", "fail"),
        (True, "PyNvVideoCodec unavailable: ModuleNotFoundError: No module named 'PyNvVideoCodec'", "fail"),
    ],
)
def test_nvdec_tests_fail_not_skip_when_cuda_is_there(cuda, reason, action):
    got, why = nvdec_gate(cuda, reason)
    assert got == action
    if action == "fail":
        assert reason in why

# Measured 46.0-46.1 dB on the clip below (PyAV 18.1 / FFmpeg 8.1 swscale rgb24 vs nv12_to_rgb, max error 3
# levels); the bound keeps 6 dB of margin. A wrong matrix or range lands far below (checked in the test).
NV12_PARITY_PSNR_DB = 40.0


# ------------------------------------------------------------------------------------------------ clips


def encode_clip(codec: str = "libx264", fmt: str = "mp4", frames: int = 12, size: tuple[int, int] = (320, 240),
                bframes: bool = True) -> bytes:
    """Saturated colour blocks moving over gradients (chroma matters), with B-frames unless told otherwise."""
    w, h = size
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as c:
        s = c.add_stream(codec, rate=Fraction(25, 1))
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.gop_size = 6
        if codec == "libx265":
            s.options = {"x265-params": f"log-level=error:bframes={3 if bframes else 0}"}
        else:
            s.codec_context.max_b_frames = 2 if bframes else 0
        yy, xx = np.mgrid[0:h, 0:w]
        for i in range(frames):
            img = np.empty((h, w, 3), np.uint8)
            img[..., 0] = (xx * 255 // w + 5 * i) % 256
            img[..., 1] = yy * 255 // h
            img[..., 2] = ((xx + yy + 7 * i) % 64) * 4
            img[40 + i : 90 + i, 50:120] = (255, 0, 0)
            img[120:180, 150 + 2 * i : 220 + 2 * i] = (0, 200, 255)
            img[30:70, 220:300] = (20, 220, 40)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 25)
            c.mux(s.encode(frame))
        c.mux(s.encode(None))
    return buf.getvalue()


@pytest.fixture(scope="module")
def clips() -> dict[str, bytes]:
    return {
        "h264_mp4": encode_clip("libx264", "mp4"),
        "hevc_mp4": encode_clip("libx265", "mp4"),
        "h264_ts": encode_clip("libx264", "mpegts"),
        "hevc_ts": encode_clip("libx265", "mpegts"),
    }


def decode_all(data: bytes, fmt: str = "rgb24") -> list[np.ndarray]:
    with av.open(io.BytesIO(data)) as c:
        return [f.to_ndarray(format=fmt) for f in c.decode(video=0)]


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, peak: float = 255.0) -> float:
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


# ------------------------------------------------------------------------------------------------ Annex-B

START_CODE = b"\x00\x00\x01"


def nal_types(annexb: bytes, codec: str) -> list[int]:
    """NAL unit types of an Annex-B buffer (start codes of 3 or 4 bytes)."""
    types = []
    i = annexb.find(START_CODE)
    while i != -1:
        header = annexb[i + 3]
        types.append(header & 0x1F if codec == "h264" else (header >> 1) & 0x3F)
        i = annexb.find(START_CODE, i + 3)
    return types


PARAMETER_SETS = {"h264": {7, 8}, "hevc": {32, 33, 34}}  # SPS, PPS (+ VPS for HEVC)


def convert_all(data: bytes) -> tuple[str, str, bytes, list[av.Packet], list[bytes]]:
    """(codec, converter mode, extradata, converted packets, original packet bytes) of a clip."""
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        conv = AnnexBConverter(stream)
        originals, out = [], []
        for p in c.demux(stream):
            if p.size:
                originals.append(bytes(p))
            out.extend(conv.convert(p))
        out.extend(conv.flush())
        return stream.codec_context.name, conv.mode, bytes(stream.codec_context.extradata or b""), out, originals


def decode_packets(codec: str, packets: list[bytes], extradata: bytes | None = None) -> list[np.ndarray]:
    """Decode raw packet bytes with a fresh FFmpeg decoder (no container, optional extradata)."""
    ctx = av.CodecContext.create(codec, "r")
    if extradata:
        ctx.extradata = extradata
    frames = []
    for b in packets:
        frames += ctx.decode(av.Packet(b))
    frames += ctx.decode(None)
    return [f.to_ndarray(format="yuv420p") for f in frames]


@pytest.mark.parametrize("clip", ["h264_mp4", "hevc_mp4"])
def test_mp4_packets_become_self_contained_annexb(clips, clip):
    codec, mode, extradata, packets, _ = convert_all(clips[clip])
    assert is_length_prefixed(extradata)
    assert mode == f"{codec}_mp4toannexb"
    data = [bytes(p) for p in packets if p.size]
    assert all(b.startswith((b"\x00\x00\x00\x01", START_CODE)) for b in data)
    assert PARAMETER_SETS[codec] <= set(nal_types(data[0], codec))  # parameter sets in band for NVDEC
    # A decoder that never sees the extradata decodes exactly what the container decode gives.
    expected = decode_all(clips[clip], "yuv420p")
    got = decode_packets(codec, data)
    assert len(got) == len(expected) == 12
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
    # Timestamps pass through the filter (NVDEC reorders frames by them).
    assert sorted(p.pts for p in packets) == list(range(0, 12 * 512, 512))


@pytest.mark.parametrize("clip", ["h264_ts", "hevc_ts"])
def test_annexb_stream_passes_through_unchanged(clips, clip):
    codec, mode, extradata, packets, originals = convert_all(clips[clip])
    assert not is_length_prefixed(extradata)
    assert mode == "passthrough"
    data = [bytes(p) for p in packets if p.size]
    assert data[0].endswith(originals[0]) and data[1:] == originals[1:]
    assert data[0].startswith(extradata)  # extradata parameter sets lead the first packet
    got = decode_packets(codec, data)
    assert len(got) == 12 and all(np.array_equal(a, b) for a, b in zip(got, decode_all(clips[clip], "yuv420p")))


class _FakeStream:
    """A stream whose parameter sets exist only in the extradata, as with RTSP's sprop-parameter-sets."""

    def __init__(self, name: str, extradata: bytes) -> None:
        self.codec_context = type("Ctx", (), {"name": name, "extradata": extradata})()


def test_out_of_band_parameter_sets_are_put_in_front_of_the_first_packet(clips):
    codec, _, _, packets, _ = convert_all(clips["h264_mp4"])
    data = [bytes(p) for p in packets if p.size]
    # Split the first access unit into its parameter sets (the would-be SDP extradata) and the rest.
    first = data[0]
    starts = [i for i in range(len(first) - 3) if first[i : i + 3] == START_CODE]
    units = [first[s - (1 if s and first[s - 1] == 0 else 0) : e] for s, e in zip(starts, [*starts[1:], len(first)])]
    params = b"".join(u for u in units if nal_types(u, codec)[0] in PARAMETER_SETS[codec])
    rest = b"".join(u for u in units if nal_types(u, codec)[0] not in PARAMETER_SETS[codec])
    assert params and rest
    with pytest.raises((av.error.FFmpegError, ValueError)):  # without parameter sets nothing decodes
        if not decode_packets(codec, [rest, *data[1:]]):
            raise ValueError("nothing decoded")

    conv = AnnexBConverter(_FakeStream(codec, params))  # type: ignore[arg-type]
    assert conv.mode == "passthrough"
    fed = [bytes(q) for b in [rest, *data[1:]] for q in conv.convert(av.Packet(b))]
    assert fed[0] == params + rest and fed[1:] == data[1:]
    assert len(decode_packets(codec, fed)) == 12


def test_unsupported_codec_is_rejected_before_touching_the_gpu():
    buf = io.BytesIO()
    with av.open(buf, "w", format="avi") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        c.mux(s.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")))
        c.mux(s.encode(None))
    with av.open(io.BytesIO(buf.getvalue())) as c:
        stream = c.streams.video[0]
        with pytest.raises(UnsupportedCodec, match="mpeg4"):
            AnnexBConverter(stream)
        with pytest.raises(UnsupportedCodec, match="mpeg4"):
            NvdecDecoder(stream, torch.device("cuda"))


def test_nvdec_needs_a_cuda_device(clips):
    with av.open(io.BytesIO(clips["h264_mp4"])) as c, pytest.raises(ValueError, match="CUDA device"):
        NvdecDecoder(c.streams.video[0], torch.device("cpu"))


@pytest.mark.skipif(CUDA, reason="checks the fallback on a machine without CUDA")
@pytest.mark.parametrize("kind", ["nvdec", "auto"])
def test_decoder_selection_falls_back_to_cpu_with_a_reason(clips, kind, caplog):
    with av.open(io.BytesIO(clips["h264_mp4"])) as c, caplog.at_level(logging.INFO):
        dec = make_decoder(kind, c.streams.video[0], torch.device("cuda" if kind == "nvdec" else "cpu"), "cam7")
    assert isinstance(dec, CpuDecoder)
    if kind == "nvdec":
        assert any("cam7" in r.message and "falling back to CPU" in r.message and r.levelno == logging.WARNING
                   for r in caplog.records)


# ------------------------------------------------------------------------------------------------ NV12 parity


def test_nv12_to_rgb_matches_ffmpeg_rgb24(clips):
    """Decoded-frame parity of the NVDEC path's colour conversion, on the CPU with real frames."""
    nv12 = decode_all(clips["h264_mp4"], "nv12")
    rgb = decode_all(clips["h264_mp4"], "rgb24")
    h, w = rgb[0].shape[:2]
    assert nv12[0].shape == (h * 3 // 2, w)
    ours = nv12_to_rgb(torch.from_numpy(np.stack(nv12)), h, w).round().permute(0, 2, 3, 1)
    ref = torch.from_numpy(np.stack(rgb))
    values = [psnr(o, r) for o, r in zip(ours, ref)]
    assert min(values) >= NV12_PARITY_PSNR_DB, values
    assert float((ours - ref).abs().max()) <= 8
    # The bound is tight enough to catch a wrong range or matrix: full-range or BT.709 conversions fail it.
    y = torch.from_numpy(np.stack(nv12))[:, :h].double()
    full_range_y = y.unsqueeze(-1).expand(-1, -1, -1, 3)
    assert psnr(full_range_y.clamp(0, 255), ref) < NV12_PARITY_PSNR_DB
    wrong = nv12_to_rgb(torch.from_numpy(np.stack(nv12)), h, w, "bt709-limited").round().permute(0, 2, 3, 1)
    assert psnr(wrong, ref) < NV12_PARITY_PSNR_DB


def test_preprocessor_nv12_frames_match_rgb_frames(clips):
    nv12 = decode_all(clips["h264_mp4"], "nv12")[:4]
    rgb = decode_all(clips["h264_mp4"], "rgb24")[:4]
    h, w = rgb[0].shape[:2]
    pre = Preprocessor((192, 256), max_batch=4, device=torch.device("cpu"))
    as_rgb = [Frame(0, i, 0.0, torch.from_numpy(x), h, w, RGB) for i, x in enumerate(rgb)]
    as_nv12 = [Frame(0, i, 0.0, torch.from_numpy(x), h, w, NV12) for i, x in enumerate(nv12)]
    a, box_a = pre(as_rgb)
    a = a.clone()
    b, box_b = pre(as_nv12)
    assert psnr(a, b, peak=1.0) >= NV12_PARITY_PSNR_DB
    assert torch.equal(box_a.scale, box_b.scale) and torch.equal(box_a.pad, box_b.pad)


# ------------------------------------------------------------------------------------------------ engine


class TinyYolo(nn.Module):
    """Ultralytics output layout (B, 4 + nc, N): cx, cy, w, h in input pixels, then sigmoid class scores.

    The output grid is a buffer for `size`, so exports of it move to any device with the weights.
    """

    def __init__(self, nc: int = 2, fixed_batch: bool = False, size: tuple[int, int] = (64, 96)) -> None:
        super().__init__()
        self.nc, self.fixed_batch = nc, fixed_batch
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.SiLU(), nn.Conv2d(8, 16, 3, 4, 1), nn.SiLU(),
                                  nn.Conv2d(16, 4 + nc, 1))
        h, w = -(-size[0] // 8), -(-size[1] // 8)
        gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        self.register_buffer("grid", torch.stack((gx.flatten(), gy.flatten())), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        _, _, h, w = y.shape
        y = y.view(1, 4 + self.nc, h * w) if self.fixed_batch else y.flatten(2)
        cxcy = (self.grid + 0.5 + y[:, :2].tanh()) * 8
        wh = y[:, 2:4].sigmoid() * 64
        return torch.cat((cxcy, wh, y[:, 4:].sigmoid()), 1)


class GridInForward(TinyYolo):
    """The old way: the grid made in forward and moved with `.to(x.device)` (a trace bakes the device in)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x).flatten(2)
        h, w = -(-x.shape[2] // 8), -(-x.shape[3] // 8)
        gy, gx = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
        grid = torch.stack((gx.flatten(), gy.flatten())).to(x.device)
        return torch.cat(((grid + 0.5 + y[:, :2].tanh()) * 8, y[:, 2:4].sigmoid() * 64, y[:, 4:].sigmoid()), 1)


def save_tiny(path: Path, size=(64, 96), nc=2, fixed_batch=False, meta: dict | None = None) -> tuple[Path, nn.Module]:
    """`.pt2` paths are exported with torch.export (the project's format), others traced to TorchScript."""
    torch.manual_seed(0)
    model = TinyYolo(nc, fixed_batch, size).eval()
    if path.suffix == ".pt2" and not fixed_batch:
        export_program(model, path, size, {k: v if isinstance(v, str) else json.dumps(v) for k, v in (meta or {}).items()})
        return path, model
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.rand(1, 3, *size), check_trace=False)
    extra = {"config.txt": json.dumps(meta)} if meta is not None else {}
    torch.jit.save(traced, str(path), _extra_files=extra)
    return path, model


# ------------------------------------------------------------------------------------------------ device independence


def test_exported_program_names_no_device_and_loads_for_meta(tmp_path):
    """Defect: a model traced on the CPU kept `device=cpu` constants; the first CUDA forward failed."""
    path, _ = save_tiny(tmp_path / "m.pt2", meta={"names": ["a", "b"], "imgsz": [64, 96]})
    program = torch.export.load(str(path))
    assert device_copies(program) == []
    assert not [n for n in program.graph.nodes if n.op == "get_attr" and "_tensor_constant" in str(n.target)]
    module, _ = load_module(path, torch.device("meta"))
    out = module(torch.zeros(3, 3, 64, 96, device="meta"))
    assert out.device.type == "meta" and tuple(out.shape) == (3, 6, 96)
    assert all(t.device.type == "meta" for t in [*module.parameters(), *module.buffers()])
    eng = TorchScriptEngine(ModelConfig(path=path), torch.device("meta"), max_batch=4)  # the whole engine
    assert eng.info.class_names == ("a", "b") and eng.infer(torch.zeros(2, 3, 64, 96, device="meta")).is_meta


def test_shipped_model_is_device_independent():
    path = Path(__file__).resolve().parents[2] / "models" / "synth_det.pt2"
    program = torch.export.load(str(path))
    assert device_copies(program) == []
    from torch.export.passes import move_to_device_pass

    moved = move_to_device_pass(program, "meta")
    assert set(device_literals(moved).values()) == {"meta"}
    eng = TorchScriptEngine(ModelConfig(path=path), torch.device("meta"), max_batch=2)
    assert eng.info.input_size == (384, 640) and eng.info.class_names == ("person", "car", "bike")
    assert tuple(eng.infer(torch.zeros(2, 3, 384, 640, device="meta")).shape) == (2, 7, 5040)


def test_export_refuses_a_forward_that_copies_between_devices(tmp_path):
    with pytest.raises(ValueError, match=r"copies tensors between devices.*buffers"):
        export_program(GridInForward().eval(), tmp_path / "bad.pt2", (64, 96))
    assert not (tmp_path / "bad.pt2").exists()


def test_torchscript_traced_on_cpu_is_refused_for_another_device(tmp_path):
    old = torch.jit.trace(GridInForward().eval(), torch.rand(1, 3, 64, 96), check_trace=False)
    assert torchscript_device_constants(old) == ["cpu"]  # what made the first CUDA forward fail
    path = tmp_path / "old.torchscript"
    torch.jit.save(old, str(path))
    loaded = torch.jit.load(str(path), map_location="cpu")
    assert torchscript_device_constants(loaded) == ["cpu"]  # map_location does not move it
    fixed = torch.jit.trace(TinyYolo().eval(), torch.rand(1, 3, 64, 96), check_trace=False)
    assert torchscript_device_constants(fixed) == []
    # Refused with the reason instead of the cryptic first-forward failure ("cuda:0" stands for any other).
    with pytest.raises(ModelError, match=r"old\.torchscript: TorchScript graph was traced with tensors on cpu"):
        _refuse_for(path, torch.device("cuda", 0))


def _refuse_for(path: Path, device: torch.device) -> None:
    """load_module's TorchScript check for `device`, with the file mapped to the CPU (no GPU needed)."""
    import rtsp_worker.engines.torchscript as ts

    real_load = torch.jit.load
    try:
        torch.jit.load = lambda f, map_location=None, _extra_files=None: real_load(f, "cpu", _extra_files)
        ts.load_module(path, device)
    finally:
        torch.jit.load = real_load


def test_metadata_from_ultralytics_style_config_txt(tmp_path):
    path, _ = save_tiny(tmp_path / "m.torchscript",
                        meta={"names": {"0": "car", "1": "person"}, "imgsz": [64, 96], "stride": 32})
    eng = load_engine(ModelConfig(path=path), torch.device("cpu"), max_batch=4)  # suffix -> torch backend
    assert isinstance(eng, TorchScriptEngine)
    assert eng.info.input_size == (64, 96)
    assert eng.info.class_names == ("car", "person")
    assert eng.info.dynamic_batch and eng.input_dtype == torch.float32


def test_metadata_as_strings_like_the_project_export(tmp_path):
    # scripts/train_detector.py writes ONNX-style string props into config.txt.
    path, _ = save_tiny(tmp_path / "m.torchscript",
                        meta={"names": "{0: 'car', 1: 'person'}", "imgsz": "[64, 96]", "stride": "32"})
    eng = TorchScriptEngine(ModelConfig(path=path), torch.device("cpu"), max_batch=2)
    assert eng.info.input_size == (64, 96) and eng.info.class_names == ("car", "person")


def test_config_overrides_and_fallbacks(tmp_path):
    path, _ = save_tiny(tmp_path / "plain.torchscript")
    cpu = torch.device("cpu")
    eng = TorchScriptEngine(ModelConfig(path=path, input_size=(64, 96)), cpu, max_batch=2)
    assert eng.info.class_names == ("0", "1")
    eng = TorchScriptEngine(ModelConfig(path=path, input_size=(64, 96), class_names=["a", "b"]), cpu, max_batch=2)
    assert eng.info.class_names == ("a", "b")
    with pytest.raises(ModelError, match=r"plain\.torchscript.*set model\.input_size"):
        TorchScriptEngine(ModelConfig(path=path), cpu, max_batch=2)
    with pytest.raises(ModelError, match=r"plain\.torchscript: 3 class names for 2 classes in output shape \[1, 6, 96\]"):
        TorchScriptEngine(ModelConfig(path=path, input_size=(64, 96), class_names=["a", "b", "c"]), cpu, 2)


def test_bad_files_give_errors_naming_the_file(tmp_path):
    garbage = tmp_path / "garbage.torchscript"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="garbage.torchscript: cannot load as TorchScript"):
        TorchScriptEngine(ModelConfig(path=garbage, input_size=(64, 96)), torch.device("cpu"), 2)

    class Transposed(nn.Module):  # (B, N, 4 + nc): no layout reads it (the error path every backend shares)
        def __init__(self) -> None:
            super().__init__()
            self.inner = TinyYolo(nc=3)

        def forward(self, x):
            return self.inner(x).transpose(1, 2)

    bad = tmp_path / "bad.torchscript"
    torch.jit.save(torch.jit.trace(Transposed().eval(), torch.rand(1, 3, 64, 96), check_trace=False), str(bad))
    with pytest.raises(ModelError, match=r"bad\.torchscript: cannot recognize the output layout from shape "
                                         r"\[1, 96, 7\] at input 64x96; set model.layout"):
        TorchScriptEngine(ModelConfig(path=bad, input_size=(64, 96)), torch.device("cpu"), 2)


@pytest.mark.parametrize("suffix", [".pt2", ".torchscript"])
@pytest.mark.parametrize("batch", [1, 3])
def test_cpu_engine_matches_eager_model(tmp_path, batch, suffix):
    path, model = save_tiny(tmp_path / f"m{suffix}", meta={"names": ["a", "b"], "imgsz": [64, 96]})
    eng = TorchScriptEngine(ModelConfig(path=path), torch.device("cpu"), max_batch=4)
    x = torch.rand(batch, 3, 64, 96)
    out = eng.infer(x)
    assert out.shape == (batch, 6, 8 * 12) and out.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"expected \[B, 3, 64, 96\]"):
        eng.infer(torch.rand(batch, 3, 64, 64))


def test_fixed_batch_model_runs_any_batch_image_by_image(tmp_path):
    path, model = save_tiny(tmp_path / "fixed.torchscript", fixed_batch=True, meta={"imgsz": [64, 96]})
    eng = TorchScriptEngine(ModelConfig(path=path), torch.device("cpu"), max_batch=8)
    assert not eng.info.dynamic_batch and eng.info.max_batch == 1
    x = torch.rand(3, 3, 64, 96)
    with torch.no_grad():
        ref = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(eng.infer(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("max_batch", "buckets"),
    [(1, (1,)), (2, (1, 2)), (12, (1, 2, 4, 8, 12)), (16, (1, 2, 4, 8, 16)), (64, (1, 2, 4, 8, 16, 32, 64))],
)
def test_batch_buckets(max_batch, buckets):
    assert batch_buckets(max_batch) == buckets


@pytest.mark.parametrize(("batch", "bucket"), [(1, 1), (2, 2), (3, 4), (5, 8), (8, 8), (9, 12), (12, 12)])
def test_pick_bucket_pads_up_to_the_smallest_bucket(batch, bucket):
    assert pick_bucket(batch, batch_buckets(12)) == bucket


def test_pick_bucket_rejects_oversized_batch():
    with pytest.raises(ValueError, match="exceeds the largest bucket 12"):
        pick_bucket(13, batch_buckets(12))
    with pytest.raises(ValueError):
        batch_buckets(0)


# ------------------------------------------------------------------------------------------------ GPU


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("fp16", [False, True])
def test_cuda_graph_engine_matches_eager(tmp_path, fp16):
    path, model = save_tiny(tmp_path / "m.pt2", meta={"names": ["a", "b"], "imgsz": [64, 96]})
    dev = torch.device("cuda")
    graphs = TorchScriptEngine(ModelConfig(path=path, fp16=fp16, cuda_graphs=True), dev, max_batch=8)
    eager = TorchScriptEngine(ModelConfig(path=path, fp16=fp16, cuda_graphs=False), dev, max_batch=8)
    ref_model = model.to(dev)
    held = []
    for batch in (1, 3, 5, 8, 2):  # buckets 1, 4, 8, 8, 2: padding, reuse, and outputs that outlive replays
        x = torch.rand(batch, 3, 64, 96, device=dev)
        out = graphs.infer(x)
        assert out.shape == (batch, 6, 96) and out.dtype == torch.float32 and out.device.type == "cuda"
        torch.testing.assert_close(out, eager.infer(x), atol=1e-3 if fp16 else 1e-5, rtol=1e-3 if fp16 else 1e-5)
        with torch.no_grad():
            ref = ref_model(x)
        held.append((out, ref))
    for out, ref in held:
        torch.testing.assert_close(out, ref, atol=2e-2 if fp16 else 1e-4, rtol=2e-2 if fp16 else 1e-4)


def nvdec_decode(data: bytes) -> list:
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        dec = NvdecDecoder(stream, torch.device("cuda"))
        images = []
        for p in c.demux(stream):
            images += dec.decode(p)
        images += dec.flush()
        dec.close()
    return images


@pytest.mark.gpu
@needs_cuda
@needs_nvdec
@pytest.mark.parametrize("clip", ["h264_mp4", "hevc_mp4", "h264_ts"])
def test_nvdec_decodes_like_ffmpeg(clips, clip):
    images = nvdec_decode(clips[clip])  # all kept: each must be a copy, not the decoder's reused surface
    ref = decode_all(clips[clip], "nv12")
    assert len(images) == len(ref) == 12
    for img, r in zip(images, ref):
        assert img.pixel_format == NV12 and img.image.device.type == "cuda" and img.image.dtype == torch.uint8
        assert tuple(img.image.shape) == r.shape and (img.height, img.width) == (240, 320)
        assert psnr(img.image.cpu(), r) >= 45.0  # H.264/HEVC decoding is bit-exact in principle
    pts = [i.pts for i in images]
    assert np.diff(pts) == pytest.approx([0.04] * 11)  # display order (B-frames reordered), in seconds


@pytest.mark.gpu
@needs_cuda
@needs_nvdec
def test_nvdec_and_gpu_preprocess_match_cpu_path(clips, tmp_path):
    from torchvision.ops import box_iou

    from rtsp_worker.detection.postprocess import postprocess

    path, _ = save_tiny(tmp_path / "m.pt2", size=(256, 320), meta={"names": ["a", "b"], "imgsz": [256, 320]})
    dev = torch.device("cuda")
    gpu_imgs = nvdec_decode(clips["h264_mp4"])[:4]
    cpu_imgs = decode_all(clips["h264_mp4"], "rgb24")[:4]
    gpu_frames = [Frame(0, i, 0.0, d.image, d.height, d.width, NV12) for i, d in enumerate(gpu_imgs)]
    cpu_frames = [Frame(0, i, 0.0, torch.from_numpy(x), 240, 320, RGB) for i, x in enumerate(cpu_imgs)]
    x_gpu, lb_gpu = Preprocessor((256, 320), 4, dev)(gpu_frames)
    x_cpu, lb_cpu = Preprocessor((256, 320), 4, torch.device("cpu"))(cpu_frames)
    assert psnr(x_gpu.cpu(), x_cpu, peak=1.0) >= NV12_PARITY_PSNR_DB
    eng_gpu = TorchScriptEngine(ModelConfig(path=path, fp16=False), dev, 4)
    eng_cpu = TorchScriptEngine(ModelConfig(path=path), torch.device("cpu"), 4)
    d_gpu = postprocess(eng_gpu.infer(x_gpu), lb_gpu, conf=0.5, iou=0.5).to("cpu")
    d_cpu = postprocess(eng_cpu.infer(x_cpu), lb_cpu, conf=0.5, iou=0.5)
    assert len(d_cpu) > 0 and abs(len(d_gpu) - len(d_cpu)) <= max(2, len(d_cpu) // 10)
    iou = box_iou(d_cpu.boxes, d_gpu.boxes)
    same_image = d_cpu.batch_index[:, None] == d_gpu.batch_index[None, :]
    best, idx = (iou * same_image).max(1)
    assert float(best.median()) >= 0.95
    assert float((d_cpu.scores - d_gpu.scores[idx])[best > 0.9].abs().max()) <= 0.02


# ------------------------------------------------------------------------------------------------ devices of a CPU engine


def test_cameras_decode_on_the_engines_device_not_the_configured_one(tmp_path, monkeypatch):
    """Defect: `device: cuda` with an ONNX model (ONNX Runtime on the CPU) decoded on NVDEC and copied the
    frames back to the host every batch. Cameras must decode where the engine works."""
    import rtsp_worker.pipeline as pipeline_mod
    from rtsp_worker.config import parse_config

    onnx = Path(__file__).resolve().parents[2] / "models" / "synth_det.onnx"
    cfg = parse_config({
        "cameras": [{"name": "a", "url": "rtsp://127.0.0.1:1/a"}, {"name": "b", "url": "rtsp://127.0.0.1:1/b"}],
        "model": {"path": str(onnx)}, "device": "cpu", "output": {"dir": str(tmp_path)},
    })
    engine = load_engine(cfg.model, torch.device("cpu"), cfg.batcher.max_batch)
    # As if `device: cuda` resolved on a GPU machine; the ONNX Runtime engine stays on the CPU.
    monkeypatch.setattr(pipeline_mod, "resolve_device", lambda name: torch.device("cuda", 0))
    p = pipeline_mod.build_pipeline(cfg, engine=engine, sinks=[])
    assert p.device == torch.device("cuda", 0) and p.work_device.type == "cpu"
    assert [s.device for s in p.sources] == [torch.device("cpu")] * 2
    p.engine.close()


def test_copies_read_on_the_host_are_synchronous():
    """Defect: the preprocessor copied CUDA batches to the host with non_blocking=True and read them at
    once. Every copy whose destination is the host must be synchronous; copies to a device may be async."""
    from torch.overrides import TorchFunctionMode

    from rtsp_worker.detection.preprocess import to_device

    class RecordTo(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[tuple[str, bool]] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.Tensor.to:
                dest = next((a for a in args[1:] if isinstance(a, (torch.device, str))), kwargs.get("device"))
                if dest is not None:
                    self.calls.append((torch.device(dest).type, bool(kwargs.get("non_blocking", False))))
            return func(*args, **kwargs)

    nv12 = torch.randint(0, 256, (2, 72, 64), dtype=torch.uint8)
    frames = [Frame(0, i, 0.0, nv12[i], 48, 64, NV12) for i in range(2)]
    with RecordTo() as rec:
        Preprocessor((64, 96), max_batch=2, device=torch.device("cpu"))(frames)
        to_device(torch.zeros(2), torch.device("meta"))
    host = [nb for dev, nb in rec.calls if dev == "cpu"]
    assert host and not any(host), rec.calls  # the batch's copy to the host: blocking
    assert ("meta", True) in rec.calls  # to a device: stream-ordered, asynchronous


# ------------------------------------------------------------------------------------------------ NVDEC details


class _FakeSurface:
    """A decoded frame as PyNvVideoCodec hands it over: DLPack, and `getPTS()` without `timestamp`."""

    def __init__(self, tensor: torch.Tensor, pts: int) -> None:
        self._t, self._pts = tensor, pts

    def __dlpack__(self, stream=None, **kwargs):
        return self._t.__dlpack__()

    def __dlpack_device__(self):
        return self._t.__dlpack_device__()

    def getPTS(self) -> int:
        return self._pts


NVC_2_0 = SimpleNamespace(__version__="2.0.0")


def test_nvdec_timestamps_fall_back_to_getpts():
    nv12 = torch.randint(0, 256, (72, 64), dtype=torch.uint8)
    images = surface_images([_FakeSurface(nv12, 4500)], torch.device("cpu"), Fraction(1, 90000), (None, None), NVC_2_0)
    assert images[0].pts == pytest.approx(0.05) and (images[0].height, images[0].width) == (48, 64)
    assert torch.equal(images[0].image, nv12) and images[0].image.data_ptr() != nv12.data_ptr()  # a copy


def test_nvdec_surface_on_the_wrong_device_is_refused():
    """PyNvVideoCodec 2.0 put every surface on device 0 in `__dlpack_device__`: on cuda:N, N > 0, say so."""
    nv12 = torch.zeros((72, 64), dtype=torch.uint8)  # stands for a surface DLPack places elsewhere
    with pytest.raises(RuntimeError, match=r"NVDEC on cuda:1 returned a surface that DLPack places on cpu.*2\.0\.0"):
        surface_images([_FakeSurface(nv12, 0)], torch.device("cuda", 1), Fraction(1, 90000), (None, None), NVC_2_0)


def test_low_latency_decoding_only_for_streams_without_b_frames(clips, tmp_path, monkeypatch):
    """NVDEC's native mode delays output by 4 frames; streams without B-frames get the zero-delay mode."""
    from rtsp_worker.sources import decoders, nvdec

    made = []

    class Recorder:
        name = "nvdec"

        def __init__(self, stream, device, *, low_latency=False):
            made.append(low_latency)

    monkeypatch.setattr(nvdec, "NvdecDecoder", Recorder)
    monkeypatch.setattr(decoders, "nvdec_unavailable_reason", lambda: None)
    no_b = encode_clip("libx264", "mp4", bframes=False)
    for data in (no_b, clips["h264_mp4"], encode_clip("libx265", "mp4", bframes=False), clips["hevc_mp4"]):
        with av.open(io.BytesIO(data)) as c:
            decoders.make_decoder("nvdec", c.streams.video[0], torch.device("cuda"), "cam")
    assert made == [True, False, True, False]


# ------------------------------------------------------------------------------------------------ colour tags


def tagged_clip(matrix: str, full: bool) -> bytes:
    """An H.264 clip whose VUI says `matrix` (bt709 / smpte170m = BT.601) and limited or full range."""
    buf = io.BytesIO()
    params = f"colormatrix={matrix}:colorprim={matrix}:transfer={matrix}" + (":fullrange=on" if full else "")
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=Fraction(25, 1), options={"x264-params": params})
        s.width, s.height, s.pix_fmt = 320, 240, "yuvj420p" if full else "yuv420p"
        yy, xx = np.mgrid[0:240, 0:320]
        for i in range(4):
            img = np.empty((240, 320, 3), np.uint8)
            img[..., 0], img[..., 1], img[..., 2] = xx * 255 // 320, yy * 255 // 240, ((xx + yy + i) % 64) * 4
            img[40:90, 50:120], img[120:180, 150:220] = (255, 0, 0), (0, 200, 255)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            c.mux(s.encode(f))
        c.mux(s.encode(None))
    return buf.getvalue()


COLOUR_CASES = [("smpte170m", False, "bt601-limited"), ("bt709", False, "bt709-limited"),
                ("smpte170m", True, "bt601-full"), ("bt709", True, "bt709-full")]


@pytest.mark.parametrize(("matrix", "full", "expected"), COLOUR_CASES)
def test_nv12_path_follows_the_streams_colour_tags(matrix, full, expected):
    """Defect: the NVDEC path hard-coded BT.601 limited range while FFmpeg's rgb24 honours the tags."""
    data = tagged_clip(matrix, full)
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        assert colorimetry_from_tags(stream.codec_context.colorspace, stream.codec_context.color_range) == expected
    nv12 = decode_with(data, "nv12")
    rgb = decode_with(data, "rgb24")
    assert {d.colorimetry for d in nv12} == {expected}
    h, w = 240, 320
    frames = [Frame(0, i, 0.0, d.image, h, w, NV12, colorimetry=d.colorimetry) for i, d in enumerate(nv12)]
    ours = nv12_to_rgb(torch.stack([f.image for f in frames]), h, w, expected).round().permute(0, 2, 3, 1)
    ref = torch.stack([d.image for d in rgb])
    assert min(psnr(o, r) for o, r in zip(ours, ref)) >= NV12_PARITY_PSNR_DB
    # The old fixed BT.601 limited conversion is far off for every other tag.
    if expected != "bt601-limited":
        fixed = nv12_to_rgb(torch.stack([f.image for f in frames]), h, w).round().permute(0, 2, 3, 1)
        assert min(psnr(o, r) for o, r in zip(fixed, ref)) < NV12_PARITY_PSNR_DB
    # The preprocessor (torch path) and the fused kernel's twin use the frame's tags too.
    pre = Preprocessor((192, 256), len(frames), torch.device("cpu"))
    x_nv12, _ = pre(frames)
    x_nv12 = x_nv12.clone()
    x_rgb, _ = pre([Frame(0, i, 0.0, d.image, h, w, RGB) for i, d in enumerate(rgb)])
    assert psnr(x_nv12, x_rgb, peak=1.0) >= NV12_PARITY_PSNR_DB
    from rtsp_worker.detection.input_spec import InputSpec
    from rtsp_worker.detection.kernels import ImageGeometry, reference
    from rtsp_worker.detection.preprocess import letterbox_geometry, yuv_coefficients

    _, nh, nw, px, py = letterbox_geometry(h, w, (192, 256))
    twin = reference([f.image for f in frames], [ImageGeometry(h, w, py, px, nh, nw)] * len(frames),
                     InputSpec((192, 256)), [yuv_coefficients(expected)] * len(frames))
    torch.testing.assert_close(twin, x_nv12, atol=1e-5, rtol=0)
