"""Non-finite detections out before the tracker: an FP16 engine that overflows gives NaN or Infinity boxes
or scores, which would become invalid JSON (`"box": [NaN, ...]`) and poison track boxes.

No host sync: a bad row is not removed (that would size a tensor by data) but neutralised in place of
the tracker's input: its score becomes -1, below any `tracker.min_confidence`, so the tracker neither
matches nor starts a track from it, and its box 0. The count is added to a device-side counter that is
read only when the periodic log line or a metrics scrape asks for it.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from rtsp_worker.types import Detections


def drop_nonfinite(dets: Detections) -> tuple[Detections, Tensor]:
    """(`dets` with every non-finite row neutralised, 0-dim int64 count of those rows on the same device)."""
    bad = ~(torch.isfinite(dets.boxes).all(dim=1) & torch.isfinite(dets.scores))
    boxes = torch.where(bad.unsqueeze(1), torch.zeros_like(dets.boxes), dets.boxes)
    scores = torch.where(bad, torch.full_like(dets.scores, -1.0), dets.scores)
    return Detections(boxes, scores, dets.class_ids, dets.batch_index), bad.sum()


class NonFiniteCounter:
    """Running count of non-finite detections, kept on the device until someone reads it."""

    def __init__(self, device: torch.device) -> None:
        self._total = torch.zeros((), dtype=torch.int64, device=device)
        self._lock = threading.Lock()  # added on the finishing thread, read by the log and metrics threads

    def add(self, count: Tensor) -> None:
        with self._lock:
            self._total = self._total + count.to(self._total.device)

    def value(self) -> int:
        with self._lock:
            total = self._total
        return int(total)  # the host sync, once per log line or scrape, never per frame
