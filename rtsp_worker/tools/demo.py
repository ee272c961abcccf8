"""`rtsp-worker demo`: the embedded default. Synthetic scenes with known ground truth are served by the
project's GStreamer RTSP server (plus one `file://` camera), and the worker runs on them with the model the
project ships, printing per-camera FPS and writing the usual outputs."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from rtsp_worker.tools.models import SHIPPED_ONNX, find_model

log = logging.getLogger(__name__)

DEFAULT_MODEL = SHIPPED_ONNX


def make_clips(directory: Path, count: int, seconds: float, fps: float = 15.0) -> list[Path]:
    """Render (once, then reuse) `count` synthetic scenes with ground truth; returns their sequence folders."""
    from rtsp_worker.sim.synthetic import write_sequence

    frames = max(1, int(seconds * fps))
    seqs = []
    for i in range(count):
        name = f"scene{i:02d}"
        seq = directory / name
        info = seq / "seqinfo.ini"
        if not (info.exists() and f"seqLength={frames}\n" in info.read_text() and (seq / "video.mp4").exists()):
            log.info("rendering synthetic scene %s (%d frames)", name, frames)
            write_sequence(directory, name, seed=1000 + i, frames=frames, size=(640, 360), fps=fps)
        seqs.append(seq)
    return seqs


def demo_config(urls: dict[str, str], model: Path, out_dir: Path, video: bool, device: str) -> dict[str, Any]:
    return {
        "cameras": [{"name": name, "url": url} for name, url in urls.items()],
        "model": {"path": str(model)},
        "output": {"dir": str(out_dir), "video": video},
        "device": device,
        "log_interval": 5.0,
    }


def summarize(out_dir: Path, cameras: list[str]) -> str:
    """Per-camera table from the JSONL the run wrote (fps from the first and last frame timestamps)."""
    lines = [f"{'camera':<10} {'frames':>7} {'fps':>6} {'objects/frame':>14} {'track ids':>10}"]
    for cam in cameras:
        path = out_dir / cam / "frames.jsonl"
        frames, objects, ids, first, last = 0, 0, set(), 0.0, 0.0
        if path.exists():
            with path.open() as f:
                for line in f:
                    rec = json.loads(line)
                    frames += 1
                    objects += len(rec["objects"])
                    ids.update(o["track_id"] for o in rec["objects"])
                    first, last = first or rec["ts"], rec["ts"]
        lines.append(f"{cam:<10} {frames:>7} {(frames - 1) / max(last - first, 1e-6) if frames > 1 else 0.0:>6.1f} "
                     f"{objects / max(frames, 1):>14.2f} {len(ids):>10}")
    return "\n".join(lines)


def demo(
    cameras: Annotated[int, typer.Option(help="Synthetic RTSP cameras to serve (plus one file:// camera).")] = 4,
    duration: Annotated[float, typer.Option(help="Seconds to run (0: until Ctrl-C).")] = 30.0,
    out: Annotated[Path, typer.Option(help="Output directory (JSONL per camera, videos).")] = Path("outputs/demo"),
    model: Annotated[Path, typer.Option(help="Detector (ONNX, TorchScript or TensorRT plan).")] = DEFAULT_MODEL,
    video: Annotated[bool, typer.Option(help="Also write an annotated MP4 per camera.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda:N")] = "auto",
    clips: Annotated[Path | None, typer.Option(help="Where synthetic clips are cached.")] = None,
) -> None:
    """Run the worker on local synthetic cameras (GStreamer RTSP server + a file:// camera)."""
    from rtsp_worker.config import ConfigError, parse_config
    from rtsp_worker.exitcodes import ExitCode
    from rtsp_worker.service.runner import fail, run_pipeline, setup_logging
    from rtsp_worker.sim.devserver import RtspServerProcess, available

    setup_logging("INFO")
    model = find_model(model)
    clip_dir = clips or out / "clips"
    seqs = make_clips(clip_dir, cameras + 1, seconds=20.0)
    reason = available()
    if reason is not None:
        raise typer.Exit(fail(f"the demo's RTSP server cannot start: {reason}", ExitCode.RUNTIME))
    mounts = {f"cam{i}": f"file:{seqs[i] / 'video.mp4'}" for i in range(cameras)}
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*/frames.jsonl*"), *out.glob("*/events.jsonl")]:
        old.unlink()  # one demo run = one set of outputs (each camera's in out/<camera>/)
    with RtspServerProcess.start(mounts) as server:
        urls = {name: server.url(name) for name in mounts}
        urls["lobby"] = (seqs[cameras] / "video.mp4").resolve().as_uri()
        log.info("RTSP server on port %d serving %s", server.port, ", ".join(mounts))
        try:
            cfg = parse_config(demo_config(urls, model, out, video, device), source="demo")
        except ConfigError as e:
            raise typer.Exit(fail(str(e), ExitCode.CONFIG)) from None
        code = run_pipeline(cfg, duration or None)
    if code != ExitCode.OK:
        raise typer.Exit(code)
    typer.echo(summarize(out, list(urls)))
    typer.echo(f"outputs in {out}/<camera>/ (ground truth of each scene: {clip_dir}/sceneNN/gt/gt.txt)")
