"""MOTChallenge-format loading and CLEAR/ID scoring of tracker output (py-motmetrics).

Rows are plain numpy arrays in MOT column order, ``frame, id, left, top, width, height[, score]``
(frames from 1), so the same :func:`score` serves the MOT15 benchmark and tests that compare the
pipeline's JSONL tracks with a synthetic scene's ground truth. ``motmetrics`` is a test/bench extra
and is imported inside the functions that need it.
"""

from __future__ import annotations

import configparser
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rtsp_worker.config import TrackerConfig
from rtsp_worker.types import Detections

_SUMMARY = {
    "mota": "mota",
    "idf1": "idf1",
    "id_switches": "num_switches",
    "false_positives": "num_false_positives",
    "misses": "num_misses",
    "precision": "precision",
    "recall": "recall",
    "mostly_tracked": "mostly_tracked",
    "mostly_lost": "mostly_lost",
    "num_objects": "num_objects",
    "num_frames": "num_frames",
}
_PERCENT = {"mota", "idf1", "precision", "recall"}


@dataclass(frozen=True, slots=True)
class SeqInfo:
    """A sequence's ``seqinfo.ini``."""

    name: str
    frame_rate: float
    length: int
    width: int
    height: int


def read_seqinfo(path: str | Path) -> SeqInfo:
    """Read ``seqinfo.ini`` (a file, or a sequence directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "seqinfo.ini"
    parser = configparser.ConfigParser()
    if not parser.read(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        sec = parser["Sequence"]
        return SeqInfo(
            name=sec.get("name", path.parent.name),
            frame_rate=float(sec["frameRate"]),
            length=int(sec["seqLength"]),
            width=int(sec["imWidth"]),
            height=int(sec["imHeight"]),
        )
    except KeyError as e:
        raise ValueError(f"{path}: missing [Sequence] field {e.args[0]}") from None


def _load_rows(path: str | Path, min_cols: int) -> np.ndarray:
    path = Path(path)
    try:
        rows = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
    except OSError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except ValueError as e:
        raise ValueError(f"{path}: not a MOT-format CSV: {e}") from None
    if rows.size == 0:
        return np.zeros((0, min_cols))
    if rows.shape[1] < min_cols:
        raise ValueError(f"{path}: expected at least {min_cols} columns, got {rows.shape[1]}")
    return rows


def load_mot_detections(path: str | Path) -> np.ndarray:
    """``det.txt`` -> ``(K, 7)`` float64 rows ``frame, -1, left, top, width, height, score``."""
    return _load_rows(path, 7)[:, :7]


def load_mot_gt(path: str | Path) -> np.ndarray:
    """``gt.txt`` -> ``(K, 6)`` rows ``frame, id, left, top, width, height``; flag-0 rows dropped."""
    rows = _load_rows(path, 6)
    if rows.shape[1] >= 7:
        rows = rows[rows[:, 6] != 0]
    return rows[:, :6]


def run_tracker_on_detections(
    rows: np.ndarray,
    cfg: TrackerConfig,
    *,
    num_frames: int | None = None,
    infer_interval: int = 1,
    frame_rate: float | None = None,
    include_tentative: bool = False,
    startup_grace: bool = True,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Track one sequence's detections frame by frame.

    ``rows``: ``frame, id, left, top, width, height, score`` (MOT det format). With
    ``infer_interval`` N, only frames 1, 1+N, ... get their detections (the others are skipped
    frames, tracked by prediction). ``frame_rate``: frames are timestamped ``(frame - 1) / frame_rate``
    seconds (the tracker's prediction uses the time between frames); None: no timestamps (one
    default step per frame). Returns ``(M, 7)`` rows ``frame, track_id, left, top, width,
    height, score`` for every reported track.
    """
    from rtsp_worker.tracking.tracker import IouTracker  # late: keeps this module importable standalone

    rows = _as_rows(rows)
    frames = rows[:, 0].astype(np.int64)
    order = np.argsort(frames, kind="stable")
    rows, frames = rows[order], frames[order]
    last = int(frames.max()) if len(frames) else 0
    num_frames = max(num_frames or 0, last)
    xyxy = np.concatenate([rows[:, 2:4], rows[:, 2:4] + rows[:, 4:6]], axis=1).astype(np.float32)
    scores = rows[:, 6].astype(np.float32) if rows.shape[1] > 6 else np.ones(len(rows), np.float32)
    bounds = np.searchsorted(frames, np.arange(1, num_frames + 2))

    tracker = IouTracker(cfg, 1, device, startup_grace=startup_grace)
    camera = torch.zeros(1, dtype=torch.int64)
    out: list[np.ndarray] = []
    for f in range(1, num_frames + 1):
        inferred = (f - 1) % infer_interval == 0
        lo, hi = (bounds[f - 1], bounds[f]) if inferred else (0, 0)
        k = hi - lo
        dets = Detections(
            boxes=torch.from_numpy(xyxy[lo:hi]),
            scores=torch.from_numpy(scores[lo:hi]),
            class_ids=torch.zeros(k, dtype=torch.int64),
            batch_index=torch.zeros(k, dtype=torch.int64),
        )
        ts = None if frame_rate is None else torch.tensor([(f - 1) / frame_rate], dtype=torch.float64)
        tracks = tracker.update(camera, dets, torch.tensor([inferred]), include_tentative, ts).to("cpu")
        if len(tracks):
            b = tracks.boxes.numpy().astype(np.float64)
            out.append(np.column_stack([
                np.full(len(b), f, np.float64),
                tracks.track_ids.numpy(),
                b[:, :2],
                b[:, 2:] - b[:, :2],
                tracks.scores.numpy(),
            ]))
    return np.concatenate(out) if out else np.zeros((0, 7))


def _iou_distance(gt: np.ndarray, hyp: np.ndarray, max_distance: float) -> np.ndarray:
    """1 - IoU of ``(G, 4)`` and ``(H, 4)`` xywh boxes; NaN beyond ``max_distance`` (motmetrics' way)."""
    g, h = gt[:, None, :], hyp[None, :, :]
    iw = np.minimum(g[..., 0] + g[..., 2], h[..., 0] + h[..., 2]) - np.maximum(g[..., 0], h[..., 0])
    ih = np.minimum(g[..., 1] + g[..., 3], h[..., 1] + h[..., 3]) - np.maximum(g[..., 1], h[..., 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = g[..., 2] * g[..., 3] + h[..., 2] * h[..., 3] - inter
    dist = 1.0 - np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    dist[dist > max_distance] = np.nan
    return dist


def _as_rows(rows: np.ndarray, min_cols: int = 6) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    if rows.size == 0:
        return np.zeros((0, min_cols))
    if rows.ndim != 2 or rows.shape[1] < min_cols:
        raise ValueError(f"expected (K, >={min_cols}) MOT rows, got shape {rows.shape}")
    return rows


def accumulate(gt: np.ndarray, hyp: np.ndarray, iou_threshold: float = 0.5):  # -> mm.MOTAccumulator
    """Match ``gt`` and ``hyp`` rows (``frame, id, left, top, width, height, ...``) frame by frame."""
    import motmetrics as mm

    gt, hyp = _as_rows(gt), _as_rows(hyp)
    acc = mm.MOTAccumulator(auto_id=False)
    frames = np.union1d(gt[:, 0], hyp[:, 0]).astype(np.int64)
    for f in frames:
        g = gt[gt[:, 0] == f]
        h = hyp[hyp[:, 0] == f]
        dist = _iou_distance(g[:, 2:6], h[:, 2:6], 1.0 - iou_threshold)
        acc.update(g[:, 1].astype(np.int64), h[:, 1].astype(np.int64), dist, frameid=int(f))
    return acc


def _summary_row(row) -> dict:
    out: dict = {}
    for key, metric in _SUMMARY.items():
        v = float(row[metric])
        out[key] = round(100.0 * v, 2) if key in _PERCENT else int(v)
    return out


def score_many(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], iou_threshold: float = 0.5) -> dict:
    """Score several ``{name: (gt, hyp)}`` sequences; adds an ``OVERALL`` entry (metrics pooled)."""
    import motmetrics as mm

    names = list(pairs)
    accs = [accumulate(gt, hyp, iou_threshold) for gt, hyp in pairs.values()]
    mh = mm.metrics.create()
    summary = mh.compute_many(
        accs, metrics=list(_SUMMARY.values()), names=names, generate_overall=len(names) > 1
    )
    result = {name: _summary_row(summary.loc[name]) for name in names}
    if len(names) > 1:
        result["OVERALL"] = _summary_row(summary.loc["OVERALL"])
    return result


def score(gt: np.ndarray, hyp: np.ndarray, iou_threshold: float = 0.5) -> dict:
    """MOTA, IDF1 (percent), ID switches and friends of one sequence.

    ``gt`` and ``hyp``: rows ``frame, id, left, top, width, height, ...`` (any extra columns ignored;
    filter ground-truth ignore flags before, as :func:`load_mot_gt` does). A hypothesis matches a
    ground-truth box at IoU >= ``iou_threshold``.
    """
    return score_many({"seq": (gt, hyp)}, iou_threshold)["seq"]
