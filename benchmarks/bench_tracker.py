"""Tracker time per batch: IouTracker (all cameras in one call) vs ByteTrack run per camera.

    python benchmarks/bench_tracker.py [--smoke] [--json FILE] [--cameras 1 8 32 64] [--frames 60]
        [--baseline REV]   # also the tracker of git revision REV, side by side

Synthetic scenes: each camera has ~20 moving objects, detections jittered by a few pixels and 10%
missed. The detections of every frame are built before timing; only the tracker calls are timed
(IouTracker.update for the whole batch; ByteTrackTracker.update once per camera), interleaved frame by
frame so that every variant sees the same machine. The ratio column (ByteTrack / IouTracker, same run,
same machine) is the number to compare across machines.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtsp_worker.config import TrackerConfig
from rtsp_worker.tracking.tracker import IouTracker
from rtsp_worker.types import Detections

OBJECTS = 20
WIDTH, HEIGHT = 1280, 720


def make_scenes(cameras: int, frames: int, seed: int = 0) -> list[np.ndarray]:
    """Per frame, ``(N, 7)`` rows ``camera, x1, y1, x2, y2, score, class`` for all cameras."""
    rng = np.random.default_rng(seed)
    size = rng.uniform([30, 60], [90, 200], (cameras, OBJECTS, 2))
    pos = rng.uniform([0, 0], [WIDTH, HEIGHT], (cameras, OBJECTS, 2))
    vel = rng.normal(0, 4, (cameras, OBJECTS, 2))
    cam = np.repeat(np.arange(cameras), OBJECTS)
    out = []
    for _ in range(frames):
        pos = pos + vel
        bounce = (pos < 0) | (pos > [WIDTH, HEIGHT])
        vel = np.where(bounce, -vel, vel)
        jitter = rng.normal(0, 2, (cameras, OBJECTS, 4))
        xyxy = np.concatenate([pos - size / 2, pos + size / 2], axis=-1) + jitter
        keep = rng.random(cameras * OBJECTS) > 0.1
        score = rng.uniform(0.4, 1.0, cameras * OBJECTS)
        rows = np.column_stack([cam, xyxy.reshape(-1, 4), score, np.zeros(cameras * OBJECTS)])[keep]
        out.append(rows.astype(np.float32))
    return out


def to_detections(rows: np.ndarray, device: torch.device) -> Detections:
    t = torch.from_numpy(rows).to(device)
    return Detections(boxes=t[:, 1:5].contiguous(), scores=t[:, 5].contiguous(),
                      class_ids=t[:, 6].long(), batch_index=t[:, 0].long())


def tracker_of_revision(rev: str) -> type:
    """The IouTracker class of git revision ``rev`` (its tracker and motion modules, loaded side by side
    with the current ones), to time a change against what it replaced in the same run."""
    repo = Path(__file__).resolve().parents[1]
    out = Path(tempfile.mkdtemp(prefix="bench_tracker_"))
    pkg = "rtsp_worker/tracking"
    for name in ("tracker", "motion"):
        text = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{pkg}/{name}.py"], check=True,
                              capture_output=True, text=True).stdout
        text = text.replace("from rtsp_worker.tracking.motion import", "from baseline_motion import")
        (out / f"baseline_{name}.py").write_text(text)
    sys.path.insert(0, str(out))
    return importlib.import_module("baseline_tracker").IouTracker


def iou_stepper(scenes: list[np.ndarray], cameras: int, device: torch.device, motion: str = "kalman",
                tracker_cls: type = IouTracker):
    """One call per frame: IouTracker.update for the whole batch (timed by the caller)."""
    # The scene's scores are uniform in 0.4-1.0: the MOT-tuned split (0.85) would start few tracks.
    tracker = tracker_cls(TrackerConfig(motion=motion, min_confidence=0.5), cameras, device)
    cams = torch.arange(cameras, device=device)
    dets = [to_detections(r, device) for r in scenes]
    reported = [0]

    def step(i: int) -> None:
        tracks = tracker.update(cams, dets[i])
        if device.type == "cuda":
            torch.cuda.synchronize()
        reported[0] += len(tracks)

    def check() -> None:
        assert reported[0] > 0, "tracker reported nothing: the benchmark scene is broken"

    return step, check


def bytetrack_stepper(scenes: list[np.ndarray], cameras: int):
    """One call per frame: ByteTrackTracker.update once per camera (timed by the caller)."""
    import supervision as sv
    from trackers import ByteTrackTracker

    trackers = [ByteTrackTracker() for _ in range(cameras)]
    per_frame = []
    for rows in scenes:
        per_cam = []
        for c in range(cameras):
            r = rows[rows[:, 0] == c]
            per_cam.append(sv.Detections(xyxy=r[:, 1:5].astype(np.float32), confidence=r[:, 5],
                                         class_id=r[:, 6].astype(int)))
        per_frame.append(per_cam)

    def step(i: int) -> None:
        for trk, d in zip(trackers, per_frame[i]):
            trk.update(d)

    return step, lambda: None


def time_interleaved(steppers: dict, frames: int, warmup: int) -> dict[str, list[float]]:
    """Per frame, every variant in turn, so that a machine that speeds up or slows down during the run (a
    shared VM does) weighs on all variants alike; seconds per frame after warm-up. The order is shuffled
    each frame: what ran just before a call (its caches) changes its time by up to a third, and a fixed
    order would hand one variant the coldest caches every time."""
    names = list(steppers)
    rng = random.Random(0)
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(frames):
        for name in rng.sample(names, len(names)):
            if name.endswith("_cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            steppers[name][0](i)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    for step, check in steppers.values():
        check()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny run for CI (a few seconds)")
    ap.add_argument("--cameras", type=int, nargs="+", default=None)
    ap.add_argument("--frames", type=int, default=None, help="timed frames per size")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--no-bytetrack", action="store_true")
    ap.add_argument("--motion", nargs="+", default=["kalman", "velocity"], help="IouTracker motion models")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--baseline", metavar="REV", help="also time the IouTracker of git revision REV (CPU)")
    args = ap.parse_args()
    baseline = tracker_of_revision(args.baseline) if args.baseline else None
    if args.threads:
        torch.set_num_threads(args.threads)
    cams_list = args.cameras or ([1, 8] if args.smoke else [1, 8, 32, 64])
    frames = args.frames or (5 if args.smoke else 60)
    warmup = 2 if args.smoke else 10
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    bytetrack = not args.no_bytetrack
    if bytetrack:
        try:
            import trackers  # noqa: F401

            bt_version = importlib.metadata.version("trackers")
        except ImportError:
            print("trackers not installed: ByteTrack column skipped (pip install trackers)")
            bytetrack, bt_version = False, None
    warnings.filterwarnings("ignore", category=UserWarning)

    rows = []
    for cameras in cams_list:
        scenes = make_scenes(cameras, frames + warmup)
        row: dict = {"cameras": cameras, "detections_per_frame": float(np.mean([len(s) for s in scenes]))}
        steppers = {f"iou_{motion}_{dev.type}": iou_stepper(scenes, cameras, dev, motion)
                    for dev in devices for motion in args.motion}
        if baseline is not None:
            cpu = torch.device("cpu")
            steppers.update({f"base_{motion}_cpu": iou_stepper(scenes, cameras, cpu, motion, baseline)
                             for motion in args.motion})
        if bytetrack:
            steppers["bytetrack_cpu"] = bytetrack_stepper(scenes, cameras)
        for name, times in time_interleaved(steppers, frames + warmup, warmup).items():
            row[f"{name}_ms"] = 1e3 * statistics.median(times)
        if bytetrack:
            for motion in args.motion:
                row[f"bytetrack_over_{motion}_cpu"] = row["bytetrack_cpu_ms"] / row[f"iou_{motion}_cpu_ms"]
        if baseline is not None:
            for motion in args.motion:
                row[f"base_over_{motion}_cpu"] = row[f"base_{motion}_cpu_ms"] / row[f"iou_{motion}_cpu_ms"]
        rows.append(row)
        cells = "  ".join(f"{k}={v:.3g}" for k, v in row.items() if k != "cameras")
        print(f"cameras={cameras:<3d} {cells}", flush=True)

    cols = [k for k in rows[0] if k not in ("cameras", "detections_per_frame")]
    print()
    print("| cameras | dets/frame | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 2) + "|")
    for r in rows:
        cells = " | ".join(f"{r[c]:.2f}" for c in cols)
        print(f"| {r['cameras']} | {r['detections_per_frame']:.0f} | {cells} |")
    if args.json:
        meta = {
            "command": " ".join(["python", *sys.argv]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "trackers": bt_version if bytetrack else None,
            "frames": frames,
            "warmup": warmup,
            "objects_per_camera": OBJECTS,
            "baseline": args.baseline,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
