"""Accuracy of counts, dwell times, loitering and speeds against the synthetic scenes' ground truth.

N generated scenes (rtsp_worker/sim/synthetic.py, with their ground plane) go through the real worker end to
end: the real RTSP server (or file cameras), the shipped model models/synth_det.onnx, the tracker, the
analytics with two lines, a zone with `loiter_s` and the ground-plane calibration. The outputs are scored by
rtsp_worker/sim/accuracy.py: line counts per direction (error %), zone enters/exits, dwell error (median,
p90), loiter precision/recall, speed error (median, p90, km/h and %).

    python benchmarks/bench_analytics_accuracy.py --scenes 6 --seconds 40               # RTSP, real time
    python benchmarks/bench_analytics_accuracy.py --scenes 2 --seconds 20 --source file  # faster than real time
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from rtsp_worker.sim.accuracy import camera_config, score_scene, summarize
from rtsp_worker.sim.synthetic import write_sequence

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "synth_det.onnx"
FPS = 15.0
SIZE = (640, 360)


def run(scenes: int, seconds: float, source: str, seed0: int, workdir: Path, max_age: int = 15,
        smoothing_s: float = 0.5) -> dict:
    frames = int(seconds * FPS)
    seqs = [write_sequence(workdir / "scenes", f"seq{i}", seed=seed0 + i, frames=frames, size=SIZE, fps=FPS)
            for i in range(scenes)]
    server = None
    if source == "rtsp":
        from rtsp_worker.sim.devserver import RtspServerProcess

        server = RtspServerProcess.start({s.name: f"file:{s / 'video.mp4'}" for s in seqs}, port=0)
        urls = [server.url(s.name) for s in seqs]
    else:
        urls = [f"file://{s / 'video.mp4'}" for s in seqs]
    out = workdir / "out"
    cfg = {
        "cameras": [camera_config(s.name, u, realtime=True, smoothing_s=smoothing_s) for s, u in zip(seqs, urls)],
        "model": {"path": str(MODEL)},
        "tracker": {"max_age": max_age},
        "output": {"dir": str(out)},
    }
    cfg_path = workdir / "cameras.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    # RTSP: a little less than one pass of the clip (the server loops it). Files: until they end.
    duration = seconds - 3 if source == "rtsp" else seconds + 5
    t0 = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "rtsp_worker.cli", "run", str(cfg_path), "--duration",
                               f"{duration:g}"], capture_output=True, text=True, timeout=duration + 120, check=False)
    finally:
        if server is not None:
            server.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"worker exited {proc.returncode}: {proc.stderr[-2000:]}")
    wall = time.monotonic() - t0
    expire = max_age + 2
    scores = [score_scene(s, out / s.name, seed0 + i, frames, FPS, expire, SIZE) for i, s in enumerate(seqs)]
    result = summarize(scores)
    result["setup"] = {"scenes": scenes, "seconds": seconds, "source": source, "seed0": seed0,
                       "tracker.max_age": max_age, "calibration.smoothing_s": smoothing_s, "wall_s": round(wall, 1), "machine": platform.platform(),
                       "date": time.strftime("%Y-%m-%d")}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=40.0, help="length of each scene")
    ap.add_argument("--source", choices=("rtsp", "file"), default="rtsp")
    ap.add_argument("--seed0", type=int, default=3100)
    ap.add_argument("--smoothing", type=float, default=0.5, help="calibration.smoothing_s")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "analytics_accuracy.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.scenes, args.seconds, args.source, args.seed0, Path(tmp), smoothing_s=args.smoothing)
    text = json.dumps(result, indent=1)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
