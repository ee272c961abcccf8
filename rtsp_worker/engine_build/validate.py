"""Accuracy guard: the same frames through ONNX Runtime (FP32 reference) and a reduced-precision model.

Two views of the difference:
- `compare_raw`: raw outputs of any layout, decoded to boxes in input pixels and scores, anchor by anchor
  — the largest score difference anywhere, and the largest box-coordinate difference (pixels) on anchors
  the reference scores at or above `conf` (boxes of background anchors are never used, so their drift
  does not matter); the rows of NMS-free layouts, each against its nearest same-class row;
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

from rtsp_worker.detection.layouts import DECODERS, Dense, OutputLayout
from rtsp_worker.types import Detections


@dataclass(frozen=True, slots=True)
class OutputDiff:
    """Largest differences between two raw outputs of one layout."""

    max_score_diff: float
    max_box_diff: float  # pixels, over anchors with reference score >= conf
    boxes_compared: int

    def within(self, score_tol: float, box_tol: float) -> bool:
        return self.max_score_diff <= score_tol and self.max_box_diff <= box_tol

    def __str__(self) -> str:
        return (f"max score diff {self.max_score_diff:.4f}, max box diff {self.max_box_diff:.3f} px "
                f"over {self.boxes_compared} boxes")


def _scores(d: Dense) -> Tensor:
    return d.class_scores if d.objectness is None else d.class_scores * d.objectness.unsqueeze(-1)


def compare_raw(ref: Tensor, out: Tensor, conf: float, layout: OutputLayout | None = None,
                input_size: tuple[int, int] | None = None) -> OutputDiff:
    """`layout` default: yolov8; `input_size` (height, width) is needed by the yolox and rtdetr layouts."""
    if ref.shape != out.shape:
        raise ValueError(f"output shapes differ: reference {tuple(ref.shape)}, other {tuple(out.shape)}")
    decoder = DECODERS[layout.name if layout is not None else "yolov8"]
    a, b = decoder(ref.float().cpu(), input_size), decoder(out.float().cpu(), input_size)
    if isinstance(a, Dense):
        score_diff = (_scores(a) - _scores(b)).abs()  # (B, N, nc)
        keep = _scores(a).amax(dim=-1) >= conf  # (B, N)
        box_diff = (a.boxes - b.boxes).abs().amax(dim=-1)[keep]  # (K,)
    else:
        # Top-k rows come in score order, which a tiny difference reorders: each reference row is compared
        # with the other output's row of the same class nearest to it.
        dist = (a.boxes[:, :, None] - b.boxes[:, None]).abs().amax(dim=-1)  # (B, K, K)
        dist = dist.masked_fill(a.class_ids[:, :, None] != b.class_ids[:, None], float("inf"))
        nearest, index = dist.min(dim=-1)
        keep = a.scores >= conf
        box_diff = nearest[keep]
        score_diff = (a.scores - b.scores.gather(1, index)).abs()[keep]
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
    """Raw outputs of an ONNX model for `frames` (N, 3, H, W), `batch` images per call, on CPU, float32
    (fed in the input's type: float32, or float16 for a model exported in half precision)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    half = session.get_inputs()[0].type == "tensor(float16)"
    x = frames.cpu().numpy().astype(np.float16 if half else np.float32)
    parts = [session.run(None, {name: x[i:i + batch]})[0] for i in range(0, x.shape[0], batch)]
    return torch.from_numpy(np.concatenate(parts).astype(np.float32))


def run_chunked(infer: Callable[[Tensor], Tensor], frames: Tensor, batch: int) -> Tensor:
    """Raw outputs of any `Engine.infer`, `batch` images per call, gathered on the CPU."""
    return torch.cat([infer(frames[i:i + batch]).float().cpu() for i in range(0, frames.shape[0], batch)])
