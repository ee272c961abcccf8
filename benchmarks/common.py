"""Shared helpers of the benchmarks: arguments, clips, models, the RTSP server, timing, tables and JSON.

Every benchmark is one script with `--smoke` (seconds, for CI) and `--json FILE`; they import this module
for everything that is not the measurement itself, so each script reads as its method.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import logging
import math
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):  # the package is not installed in editable mode
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import torch

log = logging.getLogger("benchmarks")

TRAINED_MODEL = ROOT / "models" / "synth_det.onnx"
BENCH_MODELS = ROOT / "models" / "bench"  # written by scripts/make_benchmark_models.py
CACHE = Path(os.environ.get("RTSP_WORKER_BENCH_CACHE", "/tmp/rtsp-worker-bench"))
RESULTS = ROOT / "benchmarks" / "results"
ORT_THREADS = 0  # `--ort-threads`: model.threads of every engine and pipeline a benchmark makes

# -------------------------------------------------------------------------------------------- arguments


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser with the options every benchmark has: --smoke, --json, --model, --log-level."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes that run in seconds (CI)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this file")
    ap.add_argument("--model", default="auto",
                    help="ONNX model, or 'auto' (trained models/synth_det.onnx, else untrained YOLOv8n), "
                         "or 'untrained'")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch intra-op threads for pre/postprocessing and tracking (0: torch's default, "
                         "what the worker uses)")
    ap.add_argument("--ort-threads", type=int, default=0,
                    help="ONNX Runtime intra-op threads, i.e. `model.threads` (0: its default, all cores)")
    ap.add_argument("--log-level", default="WARNING")
    return ap


def setup(args: argparse.Namespace) -> None:
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("libav").setLevel(logging.CRITICAL)
    if getattr(args, "torch_threads", 0):
        torch.set_num_threads(args.torch_threads)
    global ORT_THREADS
    ORT_THREADS = getattr(args, "ort_threads", 0)


# ---------------------------------------------------------------------------------------------- machine


def machine() -> str:
    """'2-core CPU, Debian bookworm' (plus the GPU when there is one)."""
    os_name = platform.system()
    try:
        rel = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)
        os_name = f"{rel.get('NAME', os_name).strip(chr(34)).split()[0]} {rel.get('VERSION_CODENAME', '')}".strip()
    except OSError:
        pass
    text = f"{os.cpu_count()}-core CPU, {os_name}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def metadata(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """What every result file says about how and where it was measured."""
    import onnxruntime

    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    return {
        "command": shlex.join([".venv/bin/python", str(script), *sys.argv[1:]]),
        "machine": machine(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "smoke": bool(args.smoke),
        "torch_threads": torch.get_num_threads(),
        "ort_threads": ORT_THREADS or "default",
        "loadavg_at_start": loadavg(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "onnxruntime": onnxruntime.__version__},
        "note": "shared machine: other engineers' jobs ran on the same cores; compare ratios within a run",
        **extra,
    }


def write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    print(f"wrote {path}")


def _jsonable(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


# ------------------------------------------------------------------------------------------------ tables


def fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.{digits}f}" if abs(v) < 1e5 else f"{v:.3g}"
    return str(v)


def print_table(title: str, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                digits: int = 2) -> None:
    """A plain-text table of `rows` (dicts), columns in the given order (default: keys of the first row)."""
    if not rows:
        print(f"\n{title}: (no rows)")
        return
    cols = list(columns or rows[0].keys())
    cells = [[fmt(r.get(c), digits) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    print(f"\n{title}")
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))


# ------------------------------------------------------------------------------------------------ timing


@dataclass(frozen=True, slots=True)
class Timing:
    """Wall-clock times of repeated calls, in milliseconds."""

    median_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    runs: int

    def as_dict(self) -> dict[str, float]:
        return {"median_ms": self.median_ms, "mean_ms": self.mean_ms, "min_ms": self.min_ms,
                "max_ms": self.max_ms, "runs": self.runs}


def summarize_ms(samples: Sequence[float]) -> Timing:
    return Timing(statistics.median(samples), statistics.fmean(samples), min(samples), max(samples), len(samples))


def time_calls(fn: Callable[[], Any], repeat: int, warmup: int = 1) -> Timing:
    """Run `fn` `warmup` times untimed, then `repeat` times; the median is what the tables report."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return summarize_ms(samples)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def thread_cpu_seconds() -> dict[int, float]:
    """CPU seconds (user + system) of every thread of this process, by native thread id (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def thread_groups() -> dict[str, float]:
    """CPU seconds of this process's threads, summed by role: decode (camera-*), inference, finish, sinks,
    http and the main thread by their Python names; threads Python does not know (ONNX Runtime's pool,
    torch's intra-op pool, OpenCV/FFmpeg workers) by their kernel name."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            comm = (task / "comm").read_text().strip()
        except OSError:
            continue  # the thread ended meanwhile
        name = names.get(int(task.name))
        if name is None:
            group = f"native:{comm.rstrip('0123456789-_')}"
        elif name.startswith(("camera-", "sink-")):
            group = name.split("-", 1)[0]
        else:
            group = name.rstrip("0123456789-_ ()") or "python"
        out[group] = out.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def process_cpu_seconds(pid: int) -> float:
    """CPU seconds of another process and its reaped children (0.0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return sum(int(f) for f in fields[11:15]) / tick


def named_thread_ids(prefix: str) -> list[int]:
    """Native ids of the live Python threads whose name starts with `prefix`."""
    return [t.native_id for t in threading.enumerate() if t.name.startswith(prefix) and t.native_id]


# ------------------------------------------------------------------------------------------------- clips


def synthetic_clip(index: int, seconds: float, size: tuple[int, int] = (640, 360), fps: float = 15.0) -> Path:
    """An H.264 clip of synthetic scene `index` (objects with ground truth), rendered once and cached."""
    from rtsp_worker.sim.synthetic import write_sequence

    frames = max(2, round(seconds * fps))
    name = f"scene{index:02d}_{size[0]}x{size[1]}_{fps:g}fps_{frames}f"
    video = CACHE / "clips" / name / "video.mp4"
    if not video.exists():
        log.info("rendering %s", name)
        tmp = CACHE / "clips" / f".{name}.{os.getpid()}"
        write_sequence(tmp, name, seed=5000 + index, frames=frames, size=size, fps=fps)
        (CACHE / "clips").mkdir(parents=True, exist_ok=True)
        try:
            (tmp / name).rename(video.parent)
        except OSError:  # another process rendered it first
            pass
        for p in sorted(tmp.rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        tmp.rmdir()
    return video


def decode_file(path: Path, make_decoder: Callable, max_frames: int | None = None) -> list:
    """Decoded frames (`DecodedImage`) of a clip, or its first `max_frames`, by `make_decoder(stream)`."""
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        dec = make_decoder(stream)
        out: list = []
        for p in c.demux(stream):
            out += dec.decode(p)
            if max_frames is not None and len(out) >= max_frames:
                break
        else:
            out += dec.flush()
        dec.close()
    return out[:max_frames] if max_frames is not None else out


def decode_clip(path: Path, max_frames: int | None = None) -> list[torch.Tensor]:
    """All frames of a clip (or the first `max_frames`) as RGB (H, W, 3) uint8, by the project's decoder."""
    from rtsp_worker.sources.decoders import CpuDecoder

    return [img.image for img in decode_file(path, lambda s: CpuDecoder(s, pixel_format="rgb24"), max_frames)]


def make_frame(camera: int, seq: int, image: torch.Tensor):
    from rtsp_worker.types import Frame

    return Frame(row=camera, seq=seq, ts=time.time(), image=image, height=int(image.shape[0]),
                 width=int(image.shape[1]))


@contextlib.contextmanager
def rtsp_server(mounts: dict[str, Path]) -> Iterator[Any]:
    """The project's real GStreamer RTSP server replaying each clip (looping) on its own mount."""
    from rtsp_worker.sim.devserver import RtspServerProcess, available

    reason = available()
    if reason is not None:
        raise SystemExit(f"RTSP server unavailable: {reason}")
    server = RtspServerProcess.start({name: f"file:{path}" for name, path in mounts.items()}, timeout=20)
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------------ models


@dataclass(frozen=True, slots=True)
class ModelChoice:
    path: Path
    description: str
    trained: bool


def untrained_model(input_size: tuple[int, int], smoke: bool = False, variant: str = "n") -> ModelChoice:
    """Untrained YOLOv8 from scripts/make_benchmark_models.py when present, else our YOLOv8n-like stand-in.

    Smoke mode always uses a tiny stand-in (exported in about a second) so CI needs no model files.
    """
    h, w = input_size
    if not smoke:
        made = BENCH_MODELS / f"yolov8{variant}_{h}x{w}.onnx"
        if made.exists():
            return ModelChoice(made, f"untrained YOLOv8{variant} (ultralytics architecture) {h}x{w}", False)
    from yolo_like import export_yolo_like

    scale = "tiny" if smoke else variant
    path = CACHE / "models" / f"yolo_like_{scale}_{h}x{w}.onnx"
    if not path.exists():
        export_yolo_like(path, input_size, scale=scale)
    return ModelChoice(path, f"untrained YOLOv8{scale}-like stand-in (benchmarks/yolo_like.py) {h}x{w}", False)


def pick_model(choice: str, smoke: bool, input_size: tuple[int, int] = (384, 640)) -> ModelChoice:
    """'auto': the project's trained model when it exists (never in smoke mode), else an untrained one."""
    if choice not in ("auto", "untrained"):
        path = Path(choice)
        if not path.exists():
            raise SystemExit(f"{path}: model file not found")
        return ModelChoice(path, str(path), path.resolve() == TRAINED_MODEL.resolve())
    if choice == "auto" and not smoke and TRAINED_MODEL.exists():
        return ModelChoice(TRAINED_MODEL, "trained models/synth_det.onnx (3 classes, 384x640)", True)
    if smoke:
        input_size = (input_size[0] // 3 // 32 * 32 or 32, input_size[1] // 3 // 32 * 32 or 32)
    return untrained_model(input_size, smoke=smoke)


def model_keys(path: Path) -> dict[str, Any]:
    """`model:` for `path`, with `--ort-threads` when ONNX Runtime runs it (a key of no other backend)."""
    from rtsp_worker.config import backend_for

    keys: dict[str, Any] = {"path": str(path)}
    if backend_for(keys) == "onnxruntime":
        keys["threads"] = ORT_THREADS
    return keys


def load_engine(path: Path, max_batch: int):
    from rtsp_worker.config import ModelConfig
    from rtsp_worker.engines import load_engine as _load

    return _load(ModelConfig(**model_keys(path)), torch.device("cpu"), max_batch)


def pipeline_config(urls: Sequence[str], model: Path, out_dir: Path | None, max_batch: int | None = None,
                    **camera_fields: Any):
    """A Config for these camera URLs (cam0, cam1, ...); JSONL output only when `out_dir` is given."""
    from rtsp_worker.config import parse_config

    raw: dict[str, Any] = {
        "cameras": [{"name": f"cam{i}", "url": u, **camera_fields} for i, u in enumerate(urls)],
        "model": model_keys(model),
        "output": {"dir": str(out_dir or CACHE / "outputs"), "jsonl": out_dir is not None},
        "batcher": {"max_batch": max_batch or max(1, len(urls))},
        "device": "cpu",
        "log_interval": 3600,
    }
    return parse_config(raw, source="<benchmark>")


def wait_streaming(pipe: Any, timeout_s: float, poll_s: float) -> None:
    """Until every camera of `pipe` streams and has a processed frame, or `timeout_s` has passed."""
    from rtsp_worker.sources.state import CameraState

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(s.state == CameraState.STREAMING and s.processed
                                                  for s in pipe.stats):
        time.sleep(poll_s)


def fps_spread(per_camera: Sequence[float]) -> float:
    """(max - min) / mean of per-camera fps, in percent: 0 means every camera got the same rate."""
    if not per_camera:
        return float("nan")
    mean = statistics.fmean(per_camera)
    return 100.0 * (max(per_camera) - min(per_camera)) / mean if mean > 0 else float("nan")
