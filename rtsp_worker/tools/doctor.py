"""`rtsp-worker doctor`: what this machine can do for the worker, and why not; then a short self-test.

Part 1 (capabilities) never fails: each line says what was found or what is missing and why (driver and
CUDA versions, torch's CUDA, the driver's video decode library, PyNvVideoCodec and NVDEC caps per codec,
TensorRT, cupy, NVML, ONNX Runtime providers).

Part 2 (self-test) runs generated 1080p clips (several cameras) through the path the options ask for:
decode (NVDEC or FFmpeg) -> preprocess (fused kernel or torch) -> engine -> postprocess -> tracker, for
about `--seconds`, and prints one pass/fail row per stage with the reason of each failure. The exit code
is non-zero when a requested path cannot work (e.g. `--device cuda` without CUDA, `--decoder nvdec`
without NVDEC), or a stage fails.

torch is imported by the checks, not with the module: rtsp_worker/cli.py registers this command at every start.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import json
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rtsp_worker.exitcodes import ExitCode
from rtsp_worker.tools.models import SHIPPED_ONNX, SHIPPED_PT2, find_model

if TYPE_CHECKING:
    import torch


@dataclass(slots=True)
class Check:
    """One line of the report: ok True (works), False (a requested path cannot work), None (absent, not asked)."""

    name: str
    ok: bool | None
    detail: str


@dataclass(slots=True)
class Report:
    """Everything doctor found, as printed and as written with --json."""

    capabilities: list[Check] = field(default_factory=list)
    selftest: list[Check] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(c.ok is False for c in (*self.capabilities, *self.selftest))

    def to_json(self) -> str:
        return json.dumps({"capabilities": [asdict(c) for c in self.capabilities],
                           "selftest": [asdict(c) for c in self.selftest], "summary": self.summary,
                           "failed": self.failed}, indent=2)


def _version(*dists: str) -> str | None:
    for d in dists:
        try:
            return importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _err(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}"


# ------------------------------------------------------------------------------------------- capabilities


def driver_checks() -> list[Check]:
    """NVIDIA driver and the CUDA version it supports (NVML, else libcuda), and the video decode library."""
    out = []
    try:
        import pynvml

        pynvml.nvmlInit()
        drv = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        gpus = [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
                for i in range(pynvml.nvmlDeviceGetCount())]
        out.append(Check("NVML", True, f"nvidia-ml-py {_version('nvidia-ml-py')}"))
        out.append(Check("NVIDIA driver", True, f"{drv}, CUDA {cuda // 1000}.{cuda % 1000 // 10}, GPUs: "
                         + (", ".join(str(g) for g in gpus) or "none")))
    except Exception as e:  # noqa: BLE001 - no package, or no driver: say which
        out.append(Check("NVML", None, f"unavailable ({_err(e)})"))
        try:
            lib = ctypes.CDLL("libcuda.so.1")
            v = ctypes.c_int(0)
            lib.cuDriverGetVersion(ctypes.byref(v))
            out.append(Check("NVIDIA driver", True, f"libcuda.so.1, CUDA {v.value // 1000}.{v.value % 1000 // 10}"))
        except OSError as e2:
            out.append(Check("NVIDIA driver", None, f"no libcuda.so.1 ({e2}): no NVIDIA driver on this machine"))
    try:
        ctypes.CDLL("libnvcuvid.so.1")
        out.append(Check("video decode library", True, "libnvcuvid.so.1 (NVDEC) loads"))
    except OSError as e:
        out.append(Check("video decode library", None, f"libnvcuvid.so.1 not loadable ({e}); NVDEC needs the "
                         "driver's video libraries (containers: NVIDIA_DRIVER_CAPABILITIES=compute,utility,video)"))
    return out


def torch_checks() -> list[Check]:
    import torch

    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (CPU-only build)"
        return [Check("torch CUDA", None, f"torch {torch.__version__}, built for CUDA {built}; no CUDA device usable")]
    names = [f"cuda:{i} {torch.cuda.get_device_name(i)} (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))})"
             for i in range(torch.cuda.device_count())]
    return [Check("torch CUDA", True, f"torch {torch.__version__}, CUDA {torch.version.cuda}: {', '.join(names)}")]


def nvdec_checks() -> list[Check]:
    import torch

    ver = _version("PyNvVideoCodec", "pynvvideocodec")
    if ver is None:
        return [Check("PyNvVideoCodec", None, "not installed (pip install 'rtsp-worker[gpu]')")]
    try:
        import PyNvVideoCodec  # noqa: F401 - loads the driver's video libraries
    except Exception as e:  # noqa: BLE001
        return [Check("PyNvVideoCodec", None, f"{ver} installed but does not import: {_err(e)}")]
    out = [Check("PyNvVideoCodec", True, ver)]
    if torch.cuda.is_available():
        from rtsp_worker.sources.nvdec import decoder_caps

        for codec in ("h264", "hevc"):
            try:
                caps = decoder_caps(codec, 0)
                ok = bool(caps.get("is_supported", caps.get("num_decoder_engines", 1)))
                out.append(Check(f"NVDEC {codec}", ok, ", ".join(f"{k}={v}" for k, v in sorted(caps.items()))))
            except Exception as e:  # noqa: BLE001
                out.append(Check(f"NVDEC {codec}", False, f"GetDecoderCaps failed: {_err(e)}"))
    return out


def library_checks() -> list[Check]:
    import torch

    out = []
    ver = _version("tensorrt", "tensorrt-cu13", "tensorrt-cu12")
    try:
        import tensorrt

        major = int(tensorrt.__version__.split(".")[0])
        path = {10: "TensorRT 10 path (builder flags)", 11: "TensorRT 11 path (strongly typed)"}.get(
            major, "a major this code is not written for (10 or 11)")
        out.append(Check("TensorRT", major in (10, 11), f"{tensorrt.__version__}: {path}"))
    except Exception as e:  # noqa: BLE001
        out.append(Check("TensorRT", None, f"{'installed ' + ver + ' but ' if ver else ''}not importable "
                         f"({_err(e)}); pip install 'rtsp-worker[tensorrt]' --extra-index-url https://pypi.nvidia.com"))
    cupy_ver = _version("cupy-cuda13x", "cupy-cuda12x", "cupy")
    try:
        import cupy

        detail = f"{cupy.__version__}"
        ok: bool | None = None
        if torch.cuda.is_available():
            from rtsp_worker.detection.input_spec import InputSpec
            from rtsp_worker.detection.kernels import FusedPreprocess

            try:
                FusedPreprocess(InputSpec((64, 64)), torch.float16, torch.device("cuda"))
                detail += ", fused preprocessing kernel compiles"
                ok = True
            except Exception as e:  # noqa: BLE001
                detail += f", fused kernel does not compile: {_err(e)}"
                ok = False
        else:
            detail += " (kernel not compiled: no CUDA device)"
        out.append(Check("cupy", ok, detail))
    except Exception as e:  # noqa: BLE001
        out.append(Check("cupy", None, f"{cupy_ver or 'not installed'} ({_err(e)}); the torch preprocessing is used"))
    import onnxruntime as ort

    out.append(Check("ONNX Runtime", True, f"{ort.__version__}, providers {', '.join(ort.get_available_providers())}"))
    return out


# ------------------------------------------------------------------------------------------------ self-test


def _default_model(device: torch.device) -> Path:
    return find_model(SHIPPED_PT2 if device.type == "cuda" else SHIPPED_ONNX)


def selftest(device: torch.device, decoder: str, model: Path, seconds: float, cameras: int,
             size: tuple[int, int] = (1920, 1080)) -> tuple[list[Check], dict[str, Any]]:
    """Decode -> the worker's batch step (rtsp_worker/step.py: preprocess -> engine -> postprocess -> tracker
    -> results) on generated clips; one Check per stage. The step is the pipeline's own, so the model's
    input conventions and output layout are honoured exactly as `run` honours them."""
    from rtsp_worker.config import ModelConfig, parse_config
    from rtsp_worker.engines import load_engine
    from rtsp_worker.sim.clips import write_test_clip
    from rtsp_worker.sources.decoders import make_decoder
    from rtsp_worker.step import BatchStep
    from rtsp_worker.types import Frame

    checks: list[Check] = []
    summary: dict[str, Any] = {"device": str(device), "decoder": decoder, "model": str(model),
                               "cameras": cameras, "size": list(size)}
    try:
        engine = load_engine(ModelConfig(path=model), device, max_batch=cameras)
    except Exception as e:  # noqa: BLE001 - every stage failure becomes a row
        return [Check("engine", False, f"{model}: {_err(e)}")], summary
    dev = engine.device
    names = [f"selftest{cam}" for cam in range(cameras)]
    with tempfile.TemporaryDirectory(prefix="rtsp-worker-doctor-") as tmp:
        fps = 15
        t0 = time.perf_counter()
        clip = write_test_clip(Path(tmp) / "clip.mp4", seconds=max(1.0, min(seconds, 4.0)), fps=fps, size=size)
        summary["clip_encode_s"] = round(time.perf_counter() - t0, 2)
        # The worker's defaults (detection thresholds, tracker), one camera row per simulated camera.
        cfg = parse_config({"cameras": [{"name": n, "url": clip.resolve().as_uri()} for n in names],
                            "model": {"path": str(model)}, "device": str(dev), "output": {"dir": tmp},
                            "batcher": {"max_batch": cameras}}, source="doctor")
        step = BatchStep.build(cfg, engine, cameras)
        import av

        streams = []
        try:
            for cam in range(cameras):
                c = av.open(str(clip))
                s = c.streams.video[0]
                streams.append((c, s, make_decoder(decoder, s, dev, names[cam])))
        except Exception as e:  # noqa: BLE001
            for c, _, _ in streams:
                c.close()
            engine.close()
            return [Check("decode", False, _err(e))], summary
        used = sorted({d.name for _, _, d in streams})
        decode_ok = not (decoder == "nvdec" and used != ["nvdec"]) and not (
            dev.type == "cuda" and decoder == "auto" and used != ["nvdec"])
        counts = {"decoded": 0, "batches": 0, "detections": 0, "tracks": 0}
        stage = "decode"
        t_start = time.perf_counter()
        try:
            demux = [c.demux(s) for c, s, _ in streams]
            pending: list[list] = [[] for _ in streams]
            seq = 0
            while time.perf_counter() - t_start < seconds:
                stage = "decode"
                for i, (_, _, dec) in enumerate(streams):
                    while not pending[i]:
                        packet = next(demux[i], None)
                        if packet is None:
                            pending[i] = dec.flush() or [None]
                            break
                        if packet.size:
                            pending[i] += dec.decode(packet)
                if any(p and p[0] is None for p in pending):
                    break
                images = [p.pop(0) for p in pending]
                counts["decoded"] += len(images)
                frames = [Frame(i, seq, time.time(), d.image, d.height, d.width, d.pixel_format, d.pts,
                                d.colorimetry) for i, d in enumerate(images)]
                seq += 1
                stage = "step"
                out = step(frames, names)
                counts["tracks"] += len(out.tracks)
                counts["detections"] += out.detections
                counts["batches"] += 1
        except Exception as e:  # noqa: BLE001 - the failing stage gets the reason
            failed, reason = (step.stage or "preprocess") if stage == "step" else stage, _err(e)
        else:
            failed, reason = None, ""
        finally:
            for c, _, d in streams:
                d.close()
                c.close()
        wall = time.perf_counter() - t_start
    fused = step.preprocess.fused_kernel
    summary.update(counts, seconds=round(wall, 2), fps=round(counts["decoded"] / max(wall, 1e-9), 1),
                   decoders=used, fused_preprocess=fused)
    engine.close()
    details = {
        "decode": f"{', '.join(used)} decoder, {counts['decoded']} frames of {size[0]}x{size[1]} H.264"
                  + ("" if decode_ok else f" (asked for {decoder} on {dev}: NVDEC not used)"),
        "preprocess": "fused cupy kernel" if fused else "torch",
        "engine": f"{type(engine).__name__} on {dev}, input {list(engine.info.input_size)}",
        "postprocess": f"{counts['detections']} detections",
        "tracker": f"{counts['tracks']} track rows",
        "host copy": f"{counts['batches']} batches, one device-to-host copy each",
    }
    stages = list(details)
    for name in stages:
        if failed is not None and stages.index(name) > stages.index(failed):
            checks.append(Check(name, None, "not reached"))
        elif name == failed:
            checks.append(Check(name, False, reason))
        else:
            ok = counts["batches"] > 0 and (decode_ok or name != "decode")
            checks.append(Check(name, ok, details[name] if ok or name == "decode" else "no batch completed"))
    return checks, summary


# ---------------------------------------------------------------------------------------------- the command


def run_doctor(device: str = "auto", decoder: str = "auto", model: Path | None = None, seconds: float = 10.0,
               cameras: int = 4, size: tuple[int, int] = (1920, 1080)) -> Report:
    import torch

    report = Report()
    report.summary["host"] = {"python": platform.python_version(), "platform": platform.platform()}
    for part in (driver_checks, torch_checks, nvdec_checks, library_checks):
        report.capabilities += part()
    wants_cuda = device.startswith("cuda")
    if wants_cuda and not torch.cuda.is_available():
        report.selftest.append(Check("device", False, f"--device {device} asked for, but torch sees no CUDA device"))
        return report
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    if decoder == "nvdec":
        from rtsp_worker.sources.decoders import nvdec_unavailable_reason

        reason = nvdec_unavailable_reason()
        if reason is not None:
            report.selftest.append(Check("decode", False, f"--decoder nvdec asked for, but {reason}"))
            return report
    checks, summary = selftest(dev, decoder, model or _default_model(dev), seconds, cameras, size)
    report.selftest += checks
    report.summary["selftest"] = summary
    return report


def _print(report: Report) -> None:
    mark = {True: "ok  ", False: "FAIL", None: "--  "}
    typer.echo("Capabilities")
    for c in report.capabilities:
        typer.echo(f"  {mark[c.ok]} {c.name:<22} {c.detail}")
    typer.echo("Self-test")
    for c in report.selftest:
        typer.echo(f"  {mark[c.ok]} {c.name:<22} {c.detail}")
    s = report.summary.get("selftest")
    if s:
        typer.echo(f"  {s.get('decoded', 0)} frames from {s['cameras']} cameras in {s.get('seconds', 0)} s "
                   f"({s.get('fps', 0)} fps) on {s['device']}")
    typer.echo("FAILED: a requested path cannot work (see FAIL rows)" if report.failed else "PASSED")


def doctor(
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:N]: the path to self-test.")] = "auto",
    decoder: Annotated[str, typer.Option(help="auto, nvdec or cpu.")] = "auto",
    model: Annotated[Path | None, typer.Option(help="Model to self-test (default: the shipped "
                                                  "synth_det.pt2 on CUDA, synth_det.onnx on the CPU).")] = None,
    seconds: Annotated[float, typer.Option(min=0.5, help="Self-test length.")] = 10.0,
    cameras: Annotated[int, typer.Option(min=1, max=64, help="Simulated cameras (one batch row each).")] = 4,
    width: Annotated[int, typer.Option(help="Generated clip width.")] = 1920,
    height: Annotated[int, typer.Option(help="Generated clip height.")] = 1080,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON here.")] = None,
) -> None:
    """Print what this machine can do (driver, CUDA, NVDEC, TensorRT, cupy...) and self-test the path."""
    if decoder not in ("auto", "nvdec", "cpu"):
        raise typer.BadParameter(f"--decoder {decoder!r}: must be auto, nvdec or cpu")
    report = run_doctor(device, decoder, model, seconds, cameras, (width, height))
    _print(report)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(report.to_json())
    if report.failed:
        raise typer.Exit(ExitCode.RUNTIME)
