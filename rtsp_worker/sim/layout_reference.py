"""Per-box reference decoding of every output layout: plain Python, one box at a time.

Written from each family's definition, independently of detection/layouts.py, so the tests can check
the vectorized decoders against it and the benchmark can time what a per-box loop costs. Never used by
the worker itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Box = tuple[float, float, float, float]
Det = tuple[Box, float, int]  # (x1, y1, x2, y2) source pixels, score, class id


def _iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _cells(input_size: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(x, y, stride) of every grid cell, in the order YOLOX writes its rows."""
    h, w = input_size
    out = []
    for s in (8, 16, 32):
        for y in range(-(-h // s)):
            for x in range(-(-w // s)):
                out.append((x, y, s))
    return out


def _row_candidates(rows: Sequence[Sequence[float]], layout: str, input_size: tuple[int, int],
                    classes: set[int] | None) -> list[Det]:
    """Every row -> (box xyxy input px, score, class), before any threshold."""
    cells = _cells(input_size) if layout == "yolox" else None
    h, w = input_size
    out: list[Det] = []
    for i, r in enumerate(rows):
        if layout in ("end2end", "rtdetr-topk"):
            box, score, cls = (r[0], r[1], r[2], r[3]), r[4], round(r[5])
            if layout == "rtdetr-topk":
                cx, cy, bw, bh = r[0] * w, r[1] * h, r[2] * w, r[3] * h
                box = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
            if classes is not None and cls not in classes:
                continue
            out.append((box, score, cls))
            continue
        if layout == "rtdetr":
            cx, cy, bw, bh = r[0] * w, r[1] * h, r[2] * w, r[3] * h
            scores, obj = list(r[4:]), 1.0
        elif layout == "yolov8":
            cx, cy, bw, bh = r[0], r[1], r[2], r[3]
            scores, obj = list(r[4:]), 1.0
        else:
            cx, cy, bw, bh = r[0], r[1], r[2], r[3]
            if layout == "yolox":
                gx, gy, s = cells[i]  # type: ignore[index]
                cx, cy, bw, bh = (cx + gx) * s, (cy + gy) * s, math.exp(bw) * s, math.exp(bh) * s
            scores, obj = list(r[5:]), r[4]
        if classes is not None and layout != "rtdetr":
            scores = [v if c in classes else 0.0 for c, v in enumerate(scores)]
        cls = max(range(len(scores)), key=lambda c: scores[c])
        if layout == "rtdetr" and classes is not None and cls not in classes:
            continue  # as ultralytics' RT-DETR predictor: a query is its best class, kept or dropped whole
        out.append(((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), obj * scores[cls], cls))
    return out


def reference_image(rows: Sequence[Sequence[float]], layout: str, input_size: tuple[int, int], conf: float,
                    iou: float, max_det: int, classes: set[int] | None = None) -> list[Det]:
    """One image's detections in model-input pixels, best first."""
    cands = [d for d in _row_candidates(rows, layout, input_size, classes) if d[1] > conf]
    cands.sort(key=lambda d: -d[1])
    if layout in ("end2end", "rtdetr", "rtdetr-topk"):
        return cands[:max_det]
    kept: list[Det] = []
    for d in cands:  # greedy NMS within each class
        if all(k[2] != d[2] or _iou(k[0], d[0]) <= iou for k in kept):
            kept.append(d)
    return kept[:max_det]


def to_source(det: Det, scale: float | tuple[float, float], pad: tuple[float, float],
              source: tuple[float, float]) -> Det:
    """Undo the letterbox (or stretch) for one box and clip it to the (width, height) source frame."""
    sx, sy = scale if isinstance(scale, tuple) else (scale, scale)
    (x1, y1, x2, y2), score, cls = det
    clip = (lambda v, hi: min(max(v, 0.0), hi))
    box = (clip((x1 - pad[0]) / sx, source[0]), clip((y1 - pad[1]) / sy, source[1]),
           clip((x2 - pad[0]) / sx, source[0]), clip((y2 - pad[1]) / sy, source[1]))
    return box, score, cls


def rows_of(raw_image: Sequence[Sequence[float]], layout: str) -> list[list[float]]:
    """One image's raw output as rows (yolov8 stores columns)."""
    if layout == "yolov8":
        return [list(col) for col in zip(*raw_image)]
    return [list(r) for r in raw_image]
