"""Tracker time per batch: IouTracker (all cameras in one call) vs ByteTrack run per camera.

    python benchmarks/bench_tracker.py [--smoke] [--json FILE] [--cameras 1 8 32 64] [--frames 60]

Synthetic scenes: each camera has ~20 moving objects, detections jittered by a few pixels and 10%
missed. The detections of every frame are built before timing; only the tracker calls are timed
(IouTracker.update for the whole batch; ByteTrackTracker.update once per camera). The ratio column
(ByteTrack / IouTracker, same run, same machine) is the number to compare across machines.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import sys
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


def time_iou(
    scenes: list[np.ndarray], cameras: int, device: torch.device, warmup: int, motion: str = "kalman"
) -> list[float]:
    # The scene's scores are uniform in 0.4-1.0: the MOT-tuned split (0.85) would start few tracks.
    tracker = IouTracker(TrackerConfig(motion=motion, min_confidence=0.5), cameras, device)
    cams = torch.arange(cameras, device=device)
    dets = [to_detections(r, device) for r in scenes]
    times = []
    for i, d in enumerate(dets):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        tracks = tracker.update(cams, d)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    assert len(tracks) > 0, "tracker reported nothing: the benchmark scene is broken"
    return times


def time_bytetrack(scenes: list[np.ndarray], cameras: int, warmup: int) -> list[float]:
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
    times = []
    for i, per_cam in enumerate(per_frame):
        t0 = time.perf_counter()
        for trk, d in zip(trackers, per_cam):
            trk.update(d)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
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
    args = ap.parse_args()
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
        for dev in devices:
            for motion in args.motion:
                times = time_iou(scenes, cameras, dev, warmup, motion)
                row[f"iou_{motion}_{dev.type}_ms"] = 1e3 * statistics.median(times)
        if bytetrack:
            row["bytetrack_cpu_ms"] = 1e3 * statistics.median(time_bytetrack(scenes, cameras, warmup))
            for motion in args.motion:
                row[f"bytetrack_over_{motion}_cpu"] = row["bytetrack_cpu_ms"] / row[f"iou_{motion}_cpu_ms"]
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
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
