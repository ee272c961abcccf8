"""Cost of lines and zones per batch: the batched analytics stage against supervision's per-camera objects.

Both sides get the same random-walk tracks: C cameras x T tracks, L lines and Z zones per camera, for a
number of batches (one frame per camera each). The contender is what a per-camera integration of
supervision looks like: one `sv.LineZone` per line and one `sv.PolygonZone` per zone, triggered with each
camera's `sv.Detections`. Reported: milliseconds per batch for both and their ratio, side by side in one run.

    python benchmarks/bench_analytics.py --cameras 16 --tracks 50 --lines 4 --zones 4 --batches 100
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import supervision as sv
import torch

from rtsp_worker.analytics.events import Analytics
from rtsp_worker.config import CameraConfig, LineConfig, ZoneConfig
from rtsp_worker.types import Frame

W, H = 1280, 720
CLASSES = ("person", "car", "bike")


def configs(n_cams: int, n_lines: int, n_zones: int) -> list[CameraConfig]:
    lines = [LineConfig(name=f"l{i}", points=((0.05, (i + 1) / (n_lines + 1)), (0.95, (i + 1) / (n_lines + 1))),
                        units="fractions") for i in range(n_lines)]
    zones = [ZoneConfig(name=f"z{i}", units="fractions",
                        polygon=[(i / n_zones, 0.2), ((i + 1) / n_zones, 0.2), ((i + 1) / n_zones, 0.8),
                                 (i / n_zones, 0.8)]) for i in range(n_zones)]
    return [CameraConfig(name=f"c{c}", url=f"rtsp://h/{c}", lines=lines, zones=zones) for c in range(n_cams)]


def walks(n_cams: int, n_tracks: int, n_batches: int, seed: int = 0) -> np.ndarray:
    """(batches, cams, tracks, 4) xyxy boxes moving 2-12 px per frame."""
    rng = np.random.default_rng(seed)
    start = rng.uniform([0, 0], [W - 40, H - 80], (n_cams, n_tracks, 2))
    vel = rng.uniform(-12, 12, (n_cams, n_tracks, 2))
    pos = start[None] + vel[None] * np.arange(n_batches)[:, None, None, None]
    pos = np.abs(np.mod(pos, 2 * np.array([W - 40, H - 80]))) % np.array([W - 40, H - 80])
    return np.concatenate([pos, pos + np.array([40, 80])], axis=-1).astype(np.float32)


def run_ours(cams, boxes: np.ndarray) -> float:
    n_b, n_c, n_t, _ = boxes.shape
    a = Analytics(cams, CLASSES, expire=[32] * n_c, capacity=2 * n_t)
    bi = torch.arange(n_c).repeat_interleave(n_t)
    ids = torch.arange(1, n_t + 1).repeat(n_c)
    cls = torch.zeros(n_c * n_t, dtype=torch.int64)
    img = torch.zeros(1, dtype=torch.uint8)
    t0 = time.perf_counter()
    for b in range(n_b):
        frames = [Frame(row=c, seq=b, ts=b / 15, image=img, height=H, width=W) for c in range(n_c)]
        a.update(frames, bi, ids, cls, torch.from_numpy(boxes[b].reshape(-1, 4)))
    return (time.perf_counter() - t0) / n_b * 1e3


def run_supervision(cams, boxes: np.ndarray) -> float:
    n_b, n_c, n_t, _ = boxes.shape
    size = np.array([W, H])
    lines = [[sv.LineZone(sv.Point(*(np.array(ln.points[0]) * size)), sv.Point(*(np.array(ln.points[1]) * size)),
                          triggering_anchors=[sv.Position.BOTTOM_CENTER]) for ln in cam.lines] for cam in cams]
    zones = [[sv.PolygonZone((np.array(z.polygon) * size).astype(np.int64)) for z in cam.zones] for cam in cams]
    ids = np.arange(1, n_t + 1)
    t0 = time.perf_counter()
    for b in range(n_b):
        for c in range(n_c):
            det = sv.Detections(xyxy=boxes[b, c], class_id=np.zeros(n_t, dtype=np.int64), tracker_id=ids)
            for ln in lines[c]:
                ln.trigger(det)
            for z in zones[c]:
                z.trigger(det)
    return (time.perf_counter() - t0) / n_b * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cameras", type=int, default=16)
    ap.add_argument("--tracks", type=int, default=50)
    ap.add_argument("--lines", type=int, default=4)
    ap.add_argument("--zones", type=int, default=4)
    ap.add_argument("--batches", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)  # as in the pipeline on CPU
    cams = configs(args.cameras, args.lines, args.zones)
    boxes = walks(args.cameras, args.tracks, args.batches)
    run_ours(cams, boxes[:5])  # warm-up
    ours, theirs = run_ours(cams, boxes), run_supervision(cams, boxes)
    print(json.dumps({**vars(args), "analytics_ms_per_batch": round(ours, 3),
                      "supervision_per_camera_ms_per_batch": round(theirs, 3),
                      "ratio_supervision_over_ours": round(theirs / ours, 2)}))


if __name__ == "__main__":
    main()
