"""Accuracy of the analytics against the synthetic scenes' ground truth (issue 31).

The scenes know every object's true box in every frame and, through their ground plane
(`synthetic.ground_homography`), its true position and speed in metres. This module builds the worker's
config for a set of scenes (two counting lines, one zone with a loiter rule, the ground-plane calibration)
and scores what the worker wrote (frames.jsonl, events.jsonl) against the truth:

- line counts per direction and zone enters/exits: the documented rules (anchor, margin, once per track and
  direction, zone hysteresis) applied to the true boxes over the frames the worker processed; error % of the
  totals.
- dwell: each worker exit event against the true visit of the object its track follows (tracks are tied to
  objects by box overlap, majority vote over the track's frames); absolute error, seconds.
- loiter: worker `loiter` events against the true visits that lasted `loiter_s`; visits whose true dwell is
  within `LOITER_TOLERANCE_S` of the threshold are left out of both precision and recall (a 0.1 s difference
  there is not a detection error).
- speed: each reported speed against the true speed of the object at that frame, where the object is fully
  in view (not clipped, visibility >= 0.95) and moving (>= 1 m/s).

Used by benchmarks/bench_analytics_accuracy.py and its smaller run in the tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rtsp_worker.sim.synthetic import GROUND_IMAGE_FRACTIONS, GROUND_WORLD_M, make_scene, object_ground_track

VLINE_X = 0.5  # vertical line top->bottom through the middle: directions (leftward, rightward)
HLINE_Y = 0.6  # horizontal line left->right: directions (down, up)
ZONE = (0.3, 0.35, 0.7, 0.9)  # x0, y0, x1, y1 fractions
MARGIN = 2.0
LOITER_S = 3.0
LOITER_TOLERANCE_S = 0.5
MIN_SPEED_MS = 1.0


def camera_config(name: str, url: str, realtime: bool = True, smoothing_s: float = 0.5) -> dict:
    """The worker's config of one scene camera: two lines, a zone with loiter, the calibration."""
    x0, y0, x1, y1 = ZONE
    cam = {
        "name": name, "url": url,
        "lines": [
            {"name": "vline", "points": [[VLINE_X, 0.0], [VLINE_X, 1.0]], "units": "fractions",
             "directions": ["leftward", "rightward"], "margin": MARGIN},
            {"name": "hline", "points": [[0.0, HLINE_Y], [1.0, HLINE_Y]], "units": "fractions",
             "directions": ["down", "up"], "margin": MARGIN},
        ],
        "zones": [{"name": "zone", "polygon": [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], "units": "fractions",
                   "margin": MARGIN, "loiter_s": LOITER_S}],
        "calibration": {"image": [list(p) for p in GROUND_IMAGE_FRACTIONS], "world": [list(p) for p in GROUND_WORLD_M],
                        "units": "fractions", "speed_unit": "m/s", "smoothing_s": smoothing_s},
    }
    if url.startswith("file:"):
        cam |= {"realtime": realtime, "loop": False}
    return cam


@dataclass
class Counts:
    lines: dict[str, int] = field(default_factory=dict)  # "vline:leftward" -> n
    enters: int = 0
    exits: int = 0


@dataclass
class Visit:
    gt_id: int
    enter: int  # scene frame
    exit: int | None  # scene frame, None: still inside at the end


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _gt_by_frame(gt: np.ndarray) -> dict[int, np.ndarray]:
    return {int(f): gt[gt[:, 0] == f] for f in np.unique(gt[:, 0])}


def align_offset(frames: list[dict], gt_by_frame: dict[int, np.ndarray], n: int, first: int = 40) -> int:
    """Scene frame = (worker frame + offset) mod n: the offset whose true boxes best match the first worker
    frames (an RTSP stream starts wherever the server's clip is; a file starts at 0)."""
    best, best_score = 0, -1.0
    sample = [f for f in frames if f["objects"]][:first]
    for off in range(n):
        score = 0.0
        for f in sample:
            g = gt_by_frame.get((f["frame"] + off) % n + 1)
            if g is None:
                continue
            boxes = np.array([o["box"] for o in f["objects"]])
            score += _iou(boxes, _xyxy(g)).max(1).sum() if len(g) else 0.0
        if score > best_score:
            best, best_score = off, score
    return best


def _xyxy(gt: np.ndarray) -> np.ndarray:
    return np.c_[gt[:, 2], gt[:, 3], gt[:, 2] + gt[:, 4], gt[:, 3] + gt[:, 5]]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)


def truth(gt: np.ndarray, scene_frames: np.ndarray, width: int, height: int, expire: int
          ) -> tuple[Counts, list[Visit]]:
    """Counts and zone visits from the true boxes over the processed `scene_frames` (1-based gt numbering)."""
    counts = Counts({f"vline:{d}": 0 for d in ("leftward", "rightward")} | {f"hline:{d}": 0 for d in ("down", "up")})
    visits: list[Visit] = []
    processed = set(scene_frames.tolist())
    vx = VLINE_X * width
    hy = HLINE_Y * height
    zx0, zy0, zx1, zy1 = ZONE[0] * width, ZONE[1] * height, ZONE[2] * width, ZONE[3] * height
    for tid in np.unique(gt[:, 1]):
        rows = gt[gt[:, 1] == tid]
        rows = rows[np.argsort(rows[:, 0])]
        rows = rows[np.isin(rows[:, 0], list(processed))]
        side = {"v": 0, "h": 0}
        done: set[str] = set()
        inside, visit = False, None
        for frame, _, left, top, w, h in rows[:, :6]:
            ax, ay = left + w / 2, top + h
            for key, val, pos, neg, name in (("v", ax - vx, "leftward", "rightward", "vline"),
                                              ("h", ay - hy, "up", "down", "hline")):  # pos, neg: see below
                # directions[0] names a move from the left of A->B to its right, as seen walking A->B on
                # screen (y down). Vertical line (top->bottom): its left is +x, so ending at -x is
                # directions[0]. Horizontal line (left->right): its left is -y, so ending at +y is.
                now = 1 if val > MARGIN else -1 if val < -MARGIN else 0
                if now and side[key] and now != side[key]:
                    d = (pos if now < 0 else neg) if key == "v" else (neg if now > 0 else pos)
                    k = f"{name}:{d}"
                    if k not in done:
                        done.add(k)
                        counts.lines[k] += 1
                side[key] = now or side[key]
            dist = min(abs(ax - zx0), abs(ax - zx1), abs(ay - zy0), abs(ay - zy1))
            pip = zx0 < ax < zx1 and zy0 < ay < zy1
            if dist >= MARGIN:
                if pip and not inside:
                    counts.enters += 1
                    visit = Visit(int(tid), int(frame), None)
                    visits.append(visit)
                elif not pip and inside:
                    counts.exits += 1
                    visit.exit = int(frame)  # type: ignore[union-attr]
                inside = pip
        if inside and np.count_nonzero(scene_frames > rows[-1, 0]) > expire:
            counts.exits += 1
            visit.exit = int(rows[-1, 0])  # type: ignore[union-attr]
    return counts, visits


@dataclass
class SceneScore:
    truth: Counts
    worker: Counts
    dwell_errors: list[float]
    loiter_tp: int
    loiter_fp: int
    loiter_fn: int
    speed_abs: list[float]  # m/s
    speed_rel: list[float]  # fraction of the true speed
    processed: int = 0  # frames the worker processed within the scored span
    span: int = 0  # scene frames the scored span covers


def score_scene(seq: Path, out: Path, seed: int, frames_total: int, fps: float, expire: int,
                size: tuple[int, int] = (640, 360)) -> SceneScore:
    """Score one camera's outputs (`out` = `<output.dir>/<camera>/`) against scene `seed` (folder `seq`)."""
    gt = np.loadtxt(seq / "gt" / "gt.txt", delimiter=",", ndmin=2)
    frames = _read_jsonl(out / "frames.jsonl")
    events = _read_jsonl(out / "events.jsonl")
    scene = make_scene(seed, frames=frames_total, width=size[0], height=size[1], fps=fps)
    gt_by_frame = _gt_by_frame(gt)
    offset = align_offset(frames, gt_by_frame, frames_total)
    to_scene = {f["frame"]: (f["frame"] + offset) % frames_total + 1 for f in frames}
    # Only frames before the clip wraps count (an RTSP clip loops; the tracker then sees objects jump).
    first = frames[0]["frame"]
    valid = [f for f in frames if f["frame"] - first + (to_scene[first] - 1) < frames_total]
    scene_frames = np.array([to_scene[f["frame"]] for f in valid])
    counts, visits = truth(gt, scene_frames, scene.width, scene.height, expire)
    last_valid = max(f["frame"] for f in valid)
    events = [e for e in events if e["frame"] <= last_valid]
    # Tie worker tracks to objects: greedy IoU >= 0.3 per frame, majority vote.
    votes: dict[int, dict[int, int]] = {}
    for f in valid:
        g = gt_by_frame.get(to_scene[f["frame"]])
        if g is None or not f["objects"]:
            continue
        iou = _iou(np.array([o["box"] for o in f["objects"]]), _xyxy(g))
        for i, o in enumerate(f["objects"]):
            j = int(iou[i].argmax())
            if iou[i, j] >= 0.3:
                d = votes.setdefault(o["track_id"], {})
                d[int(g[j, 1])] = d.get(int(g[j, 1]), 0) + 1
    owner = {t: max(d, key=d.get) for t, d in votes.items()}
    worker = Counts({k: 0 for k in counts.lines})
    for e in events:
        if e["kind"] == "line" and "rule" not in e:
            worker.lines[f"{e['line']}:{e['direction']}"] += 1
        elif e["kind"] == "zone" and e["direction"] == "enter":
            worker.enters += 1
        elif e["kind"] == "zone" and e["direction"] == "exit":
            worker.exits += 1
    # Dwell: each worker exit against the true visit of its object that ended nearest to it.
    dwell_errors = []
    for e in events:
        if e["kind"] != "zone" or e["direction"] != "exit" or e["track_id"] not in owner:
            continue
        mine = [v for v in visits if v.gt_id == owner[e["track_id"]] and v.exit is not None]
        if not mine:
            continue
        sf = to_scene[e["frame"]]
        v = min(mine, key=lambda v: abs(v.exit - sf))
        dwell_errors.append(abs(e["dwell_s"] - (v.exit - v.enter) / fps))
    # Loiter.
    def true_dwell(v: Visit) -> float:
        end = v.exit if v.exit is not None else int(scene_frames.max())
        return (end - v.enter) / fps

    sure = [v for v in visits if true_dwell(v) >= LOITER_S + LOITER_TOLERANCE_S]
    unsure = [v for v in visits if abs(true_dwell(v) - LOITER_S) < LOITER_TOLERANCE_S]
    found: set[int] = set()
    fp = 0
    for e in events:
        if e.get("rule") != "loiter":
            continue
        sf = to_scene[e["frame"]]
        gid = owner.get(e["track_id"])
        hits = [i for i, v in enumerate(visits) if v.gt_id == gid and v.enter <= sf
                and (v.exit is None or sf <= v.exit + 2)]
        if hits and visits[hits[-1]] in unsure:
            continue
        if hits and visits[hits[-1]] in sure:
            found.add(hits[-1])
        else:
            fp += 1
    tp = len(found)
    fn = len(sure) - tp
    # Speed.
    truth_speed: dict[tuple[int, int], float] = {}
    for obj in scene.objects:
        fr, _, sp = object_ground_track(scene, obj)
        for a, b in zip(fr.tolist(), sp.tolist()):
            truth_speed[(obj.track_id, a + 1)] = b
    full = {(int(r[0]), int(r[1])) for r in gt if r[8] >= 0.95 and r[2] > 0 and r[3] > 0
            and r[2] + r[4] < scene.width - 1 and r[3] + r[5] < scene.height - 1}
    speed_abs, speed_rel = [], []
    for f in valid:
        sf = to_scene[f["frame"]]
        for o in f["objects"]:
            gid = owner.get(o["track_id"])
            if gid is None or "speed" not in o or (sf, gid) not in full:
                continue
            t = truth_speed.get((gid, sf))
            if t is None or t < MIN_SPEED_MS:
                continue
            speed_abs.append(abs(o["speed"] - t))
            speed_rel.append(abs(o["speed"] - t) / t)
    span = int(scene_frames.max() - scene_frames.min() + 1) if len(scene_frames) else 0
    return SceneScore(counts, worker, dwell_errors, tp, fp, fn, speed_abs, speed_rel, len(valid), span)


def summarize(scores: list[SceneScore]) -> dict:
    """The benchmark's numbers over all scenes."""
    def pct(worker: int, truth: int) -> float | None:
        return round(100.0 * abs(worker - truth) / truth, 2) if truth else None

    keys = scores[0].truth.lines.keys() if scores else []
    lines = {k: {"truth": sum(s.truth.lines[k] for s in scores), "worker": sum(s.worker.lines[k] for s in scores)}
             for k in keys}
    t_all = sum(v["truth"] for v in lines.values())
    abs_err = sum(abs(s.worker.lines[k] - s.truth.lines[k]) for s in scores for k in keys)
    dwell = [e for s in scores for e in s.dwell_errors]
    sp_abs = np.array([e for s in scores for e in s.speed_abs])
    sp_rel = np.array([e for s in scores for e in s.speed_rel])
    tp, fp, fn = (sum(getattr(s, k) for s in scores) for k in ("loiter_tp", "loiter_fp", "loiter_fn"))
    q = lambda a, p: round(float(np.percentile(a, p)), 3) if len(a) else None
    span = sum(s.span for s in scores)
    return {
        "processed_fraction": round(sum(s.processed for s in scores) / span, 3) if span else None,
        "line_counts": lines,
        "line_count_error_pct": round(100.0 * abs_err / t_all, 2) if t_all else None,
        "line_count_error_pct_by_direction": {k: pct(v["worker"], v["truth"]) for k, v in lines.items()},
        "zone": {"enters": [sum(s.truth.enters for s in scores), sum(s.worker.enters for s in scores)],
                 "exits": [sum(s.truth.exits for s in scores), sum(s.worker.exits for s in scores)]},
        "dwell_error_s": {"median": q(dwell, 50), "p90": q(dwell, 90), "n": len(dwell)},
        "loiter": {"tp": tp, "fp": fp, "fn": fn,
                   "precision": round(tp / (tp + fp), 3) if tp + fp else None,
                   "recall": round(tp / (tp + fn), 3) if tp + fn else None},
        "speed_error": {"median_kmh": q(sp_abs * 3.6, 50), "p90_kmh": q(sp_abs * 3.6, 90),
                        "median_pct": q(sp_rel * 100, 50), "p90_pct": q(sp_rel * 100, 90), "n": len(sp_abs)},
    }
