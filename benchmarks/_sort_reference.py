"""A SORT reference tracker (Bewley et al. 2016), written for the MOT benchmark's side-by-side column.

Kalman filter on ``[u, v, s, r, du, dv, ds]`` (centre, area, aspect ratio; constant velocity, one
frame per step), Hungarian assignment on IoU (scipy's ``linear_sum_assignment``), ``min_hits`` 3,
``max_age`` 1, IoU 0.3, and SORT's output rule: a track is written on frames where it was matched,
once it has ``min_hits`` consecutive matches or while the sequence is in its first ``min_hits``
frames. Noise matrices are SORT's published ones. Plain numpy, one filter per track: this is a
reference for accuracy, not a contender for speed.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

_F = np.eye(7)
_F[0, 4] = _F[1, 5] = _F[2, 6] = 1.0
_H = np.eye(4, 7)
_R = np.diag([1.0, 1.0, 10.0, 10.0])
_Q = np.diag([1.0, 1.0, 1.0, 1.0, 0.01, 0.01, 0.0001])
_P0 = np.diag([10.0, 10.0, 10.0, 10.0, 1e4, 1e4, 1e4])


def _to_z(box: np.ndarray) -> np.ndarray:
    w, h = box[2] - box[0], box[3] - box[1]
    return np.array([box[0] + w / 2, box[1] + h / 2, w * h, w / max(h, 1e-9)])


def _to_box(x: np.ndarray) -> np.ndarray:
    w = np.sqrt(max(x[2] * x[3], 0.0))
    h = x[2] / w if w > 0 else 0.0
    return np.array([x[0] - w / 2, x[1] - h / 2, x[0] + w / 2, x[1] + h / 2])


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


class _Track:
    def __init__(self, box: np.ndarray, track_id: int) -> None:
        self.x = np.concatenate([_to_z(box), np.zeros(3)])
        self.p = _P0.copy()
        self.id = track_id
        self.since_update = 0
        self.hit_streak = 0

    def predict(self) -> np.ndarray:
        if self.x[6] + self.x[2] <= 0:
            self.x[6] = 0.0
        self.x = _F @ self.x
        self.p = _F @ self.p @ _F.T + _Q
        if self.since_update > 0:
            self.hit_streak = 0
        self.since_update += 1
        return _to_box(self.x)

    def update(self, box: np.ndarray) -> None:
        self.since_update = 0
        self.hit_streak += 1
        y = _to_z(box) - _H @ self.x
        s = _H @ self.p @ _H.T + _R
        k = self.p @ _H.T @ np.linalg.inv(s)
        self.x = self.x + k @ y
        self.p = (np.eye(7) - k @ _H) @ self.p


class SortReference:
    """One sequence's SORT tracker: call :meth:`update` once per frame with ``(N, 4)`` xyxy boxes."""

    def __init__(self, max_age: int = 1, min_hits: int = 3, iou_threshold: float = 0.3) -> None:
        self.max_age, self.min_hits, self.iou_threshold = max_age, min_hits, iou_threshold
        self.tracks: list[_Track] = []
        self.frame_count = 0
        self._next_id = 1

    def update(self, boxes: np.ndarray) -> np.ndarray:
        """Returns ``(M, 5)`` rows ``x1, y1, x2, y2, id`` of the tracks written for this frame."""
        self.frame_count += 1
        preds = [t.predict() for t in self.tracks]
        keep = [i for i, p in enumerate(preds) if np.all(np.isfinite(p))]
        self.tracks = [self.tracks[i] for i in keep]
        pred = np.array([preds[i] for i in keep]).reshape(-1, 4)
        matched_t: set[int] = set()
        matched_d: set[int] = set()
        if len(boxes) and len(pred):
            iou = _iou(boxes, pred)
            above = iou > self.iou_threshold
            if above.sum(1).max() == 1 and above.sum(0).max() == 1:  # SORT's shortcut: already 1-to-1
                rows, cols = np.nonzero(above)
            else:
                rows, cols = linear_sum_assignment(-iou)
            for d, t in zip(rows, cols):
                if iou[d, t] >= self.iou_threshold:
                    self.tracks[t].update(boxes[d])
                    matched_t.add(t)
                    matched_d.add(d)
        for d in range(len(boxes)):
            if d not in matched_d:
                self.tracks.append(_Track(boxes[d], self._next_id))
                self._next_id += 1
        out = []
        for t in self.tracks:
            if t.since_update < 1 and (t.hit_streak >= self.min_hits or self.frame_count <= self.min_hits):
                out.append([*_to_box(t.x), t.id])
        self.tracks = [t for t in self.tracks if t.since_update <= self.max_age]
        return np.array(out, dtype=np.float64).reshape(-1, 5)


def run_sort(rows: np.ndarray, num_frames: int, **kw) -> np.ndarray:
    """MOT det rows (``frame, -1, left, top, w, h, score``) -> MOT rows ``frame, id, left, top, w, h``."""
    frames = rows[:, 0].astype(np.int64)
    xyxy = np.concatenate([rows[:, 2:4], rows[:, 2:4] + rows[:, 4:6]], axis=1)
    sort = SortReference(**kw)
    out = []
    for f in range(1, max(num_frames, int(frames.max(initial=0))) + 1):
        res = sort.update(xyxy[frames == f])
        if len(res):
            out.append(np.column_stack([np.full(len(res), f), res[:, 4], res[:, :2], res[:, 2:4] - res[:, :2]]))
    return np.concatenate(out) if out else np.zeros((0, 6))
