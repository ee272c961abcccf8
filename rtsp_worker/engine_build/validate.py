"""Accuracy guard: the same frames through ONNX Runtime (FP32 reference) and a reduced-precision model.

Two views of the difference:
- `compare_raw`: raw outputs anchor by anchor — the largest class-score difference anywhere, and the
  largest box-coordinate difference (pixels) on anchors the reference scores at or above `conf` (boxes
  of background anchors are never used, so their drift does not matter);
- `match_detections`: detections after NMS — each reference box's best IoU with a box of the same image
  and class, and the score difference to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rtsp_worker.types import Detections


@dataclass(frozen=True, slots=True)
class OutputDiff:
    """Largest differences between two raw (B, 4 + nc, N) outputs."""

    max_score_diff: float
    max_box_diff: float  # pixels, over anchors with reference score >= conf
    boxes_compared: int

    def within(self, score_tol: float, box_tol: float) -> bool:
        return self.max_score_diff <= score_tol and self.max_box_diff <= box_tol

    def __str__(self) -> str:
        return (f"max score diff {self.max_score_diff:.4f}, max box diff {self.max_box_diff:.3f} px "
                f"over {self.boxes_compared} boxes")


def compare_raw(ref: Tensor, out: Tensor, conf: float) -> OutputDiff:
    if ref.shape != out.shape:
        raise ValueError(f"output shapes differ: reference {tuple(ref.shape)}, other {tuple(out.shape)}")
    ref, out = ref.float().cpu(), out.float().cpu()
    score_diff = (ref[:, 4:] - out[:, 4:]).abs()
    keep = ref[:, 4:].amax(dim=1) >= conf  # (B, N)
    box_diff = (ref[:, :4] - out[:, :4]).abs().amax(dim=1)[keep]  # (K,)
    return OutputDiff(
        max_score_diff=float(score_diff.max()) if score_diff.numel() else 0.0,
        max_box_diff=float(box_diff.max()) if box_diff.numel() else 0.0,
        boxes_compared=int(keep.sum()),
    )


@dataclass(frozen=True, slots=True)
class DetectionMatch:
    """How well detections `out` reproduce reference detections `ref` (same images)."""

    ref_count: int
    out_count: int
    matched: int  # reference boxes with a same-image, same-class box at IoU >= the match threshold
    min_iou: float  # over matched reference boxes (1.0 when none)
    max_score_diff: float  # over matched reference boxes (0.0 when none)


def match_detections(ref: Detections, out: Detections, iou_match: float = 0.5) -> DetectionMatch:
    """Best same-image, same-class partner of every reference box (one IoU matrix, no per-box loop)."""
    from torchvision.ops import box_iou

    n_ref, n_out = len(ref), len(out)
    if n_ref == 0 or n_out == 0:
        return DetectionMatch(n_ref, n_out, 0, 1.0, 0.0)
    iou = box_iou(ref.boxes.float().cpu(), out.boxes.float().cpu())  # (R, O)
    same = (ref.batch_index.cpu()[:, None] == out.batch_index.cpu()[None, :]) & (
        ref.class_ids.cpu()[:, None] == out.class_ids.cpu()[None, :])
    iou = torch.where(same, iou, torch.zeros_like(iou))
    best_iou, best = iou.max(dim=1)
    ok = best_iou >= iou_match
    score_diff = (ref.scores.cpu() - out.scores.cpu()[best]).abs()[ok]
    return DetectionMatch(
        ref_count=n_ref,
        out_count=n_out,
        matched=int(ok.sum()),
        min_iou=float(best_iou[ok].min()) if ok.any() else 1.0,
        max_score_diff=float(score_diff.max()) if score_diff.numel() else 0.0,
    )


def run_onnxruntime(onnx_path: str | Path, frames: Tensor, batch: int = 1) -> Tensor:
    """Raw outputs of an ONNX model for `frames` (N, 3, H, W) float32, `batch` images per call, on CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = frames.float().cpu().numpy()
    parts = [session.run(None, {name: x[i:i + batch]})[0] for i in range(0, x.shape[0], batch)]
    return torch.from_numpy(np.concatenate(parts).astype(np.float32))


def run_chunked(infer: Callable[[Tensor], Tensor], frames: Tensor, batch: int) -> Tensor:
    """Raw outputs of any `Engine.infer`, `batch` images per call, gathered on the CPU."""
    return torch.cat([infer(frames[i:i + batch]).float().cpu() for i in range(0, frames.shape[0], batch)])
