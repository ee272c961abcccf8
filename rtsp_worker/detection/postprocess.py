"""Vectorized postprocessing of a whole batch, for every output layout (detection/layouts.py).

NMS layouts: raw output -> dense candidates -> per-box confidence filter -> top-k candidates -> class- and
image-aware NMS in one `nms` call -> at most `max_det` boxes per image -> boxes mapped back to source pixels.
NMS-free layouts (end2end, rtdetr): class filter -> threshold -> the `max_det` best rows per image.
No Python loop over anchors or boxes, and no `.item()`: the only host syncs are the ones that
variable-length outputs force (the candidate mask and NMS), once per batch, never per frame. (On the CPU with
more than 1000 candidates NMS runs per (image, class) group, see `nms_per_image_and_class`.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rtsp_worker.detection.layouts import Dense, Final, OutputLayout, decode
from rtsp_worker.detection.nms import nms, nms_per_group
from rtsp_worker.types import Detections, Letterbox

if TYPE_CHECKING:
    from rtsp_worker.config import DetectionConfig
    from rtsp_worker.engines.base import ModelInfo

CPU_GROUPED_NMS_ABOVE = 1000  # boxes; see nms_per_image_and_class


def cxcywh_to_xyxy(b: Tensor) -> Tensor:
    half = b[..., 2:4] / 2
    return torch.cat((b[..., 0:2] - half, b[..., 0:2] + half), dim=-1)


def nms_per_image_and_class(
    boxes: Tensor, scores: Tensor, image: Tensor, cls: Tensor, iou: float, num_classes: int
) -> Tensor:
    """Indices of the boxes kept by NMS within each (image, class) group, in decreasing score order.

    One `nms` call for the whole batch: each image is shifted along x and each class along y by more than
    the largest coordinate, so boxes of different groups never overlap. Two axes instead of one group id
    keep the offsets small (float32 stays exact to ~0.01 px for 64 images x 80 classes at 1280 px).
    The single call compares every box with every other, so on the CPU above `CPU_GROUPED_NMS_ABOVE`
    boxes NMS runs per group instead (`nms_per_group`, a loop over the groups like torchvision's
    `batched_nms`): 4 x 3000 boxes over 80 classes took 18 ms in one call against 9 ms per group
    (benchmarks/bench_postprocess.py). On CUDA one call is always best.
    """
    if boxes.shape[0] == 0:  # the shape is known on the host: no sync
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if boxes.device.type == "cpu" and boxes.shape[0] > CPU_GROUPED_NMS_ABOVE:
        return nms_per_group(boxes, scores, image * num_classes + cls, iou)
    span = boxes.max() - torch.clamp(boxes.min(), max=0) + 1  # tensor: stays on the device
    shift = torch.stack((image, cls, image, cls), dim=1).to(boxes.dtype) * span
    return nms(boxes + shift, scores, iou)


def cap_per_image(kept: Tensor, image: Tensor, bsz: int, max_det: int) -> Tensor:
    """The first `max_det` of `kept` (indices in decreasing score order) for each image, grouped by image.

    Ranks each kept box within its image (a stable sort by image keeps the score order), no loop over images.
    """
    kb = image[kept]
    order = torch.sort(kb, stable=True).indices
    kept, kb = kept[order], kb[order]
    counts = torch.bincount(kb, minlength=bsz)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(kept.shape[0], device=kept.device) - starts[kb]
    return kept[rank < max_det]


def decode_predictions(
    raw: Tensor,
    conf: float,
    iou: float,
    max_det: int = 300,
    max_candidates: int = 3000,
    classes: Tensor | None = None,
    layout: OutputLayout | None = None,
    input_size: tuple[int, int] | None = None,
) -> Detections:
    """Boxes (xyxy, model-input pixels) kept after confidence filter and NMS, for every image of the batch.

    `classes` is an optional (nc,) bool mask of the classes to keep. `layout` defaults to `yolov8`
    with the class count of the output; `input_size` (height, width) is needed by layouts that
    depend on the grid (`yolox`) or on normalized boxes (`rtdetr`).
    """
    if layout is None:
        if raw.ndim != 3 or raw.shape[1] < 5:
            raise ValueError(f"expected raw output (B, 4 + nc, N), got {tuple(raw.shape)}")
        layout = OutputLayout("yolov8", raw.shape[1] - 4)
    size = input_size or (0, 0)
    out = decode(raw, layout, size)
    if isinstance(out, Final):
        return _select_final(out, conf, max_det, classes)
    return _nms_dense(out, conf, iou, max_det, max_candidates, classes)


def _nms_dense(
    dense: Dense, conf: float, iou: float, max_det: int, max_candidates: int, classes: Tensor | None
) -> Detections:
    class_scores = dense.class_scores
    bsz, n, nc = class_scores.shape
    if classes is not None:
        class_scores = class_scores * classes.to(class_scores.dtype)
    # Best score per anchor without its class index: `max(dim)` also computes indices for every anchor,
    # which cost 97% of this function on an 80-class model (OPTIMIZATION_SUMMARY.md).
    scores = class_scores.amax(dim=2)  # (B, N)
    if dense.objectness is not None:  # obj >= 0, so max(obj x cls) = obj x max(cls): no (B, N, nc) product
        scores = scores * dense.objectness

    # Untrained or badly calibrated models can leave thousands of candidates; NMS cost is quadratic.
    k = min(max_candidates, n)
    top_scores, top_idx = scores.topk(k, dim=1)  # (B, k), sorted by score
    keep = top_scores > conf  # (B, k)
    batch_index = torch.arange(bsz, device=scores.device).unsqueeze(1).expand(bsz, k)

    flat_keep = keep.reshape(-1).nonzero().squeeze(1)  # one sync per batch
    bi = batch_index.reshape(-1)[flat_keep]
    anchor = top_idx.reshape(-1)[flat_keep]
    boxes = cxcywh_to_xyxy(dense.boxes[bi, anchor])
    cand_scores = top_scores.reshape(-1)[flat_keep]
    cand_cls = class_scores[bi, anchor].argmax(dim=1)  # class ids for the candidates only

    kept = nms_per_image_and_class(boxes, cand_scores, bi, cand_cls, iou, nc)
    kept = cap_per_image(kept, bi, bsz, max_det)

    return Detections(
        boxes=boxes[kept],
        scores=cand_scores[kept],
        class_ids=cand_cls[kept],
        batch_index=bi[kept],
    )


def _select_final(out: Final, conf: float, max_det: int, classes: Tensor | None) -> Detections:
    """NMS-free layouts: class filter, threshold, the `max_det` best rows per image. No NMS."""
    scores = out.scores
    bsz, k = scores.shape
    if classes is not None:  # ids outside the mask's range (a broken model) count as unwanted, not a crash
        ids = out.class_ids.clamp(0, classes.shape[0] - 1)
        scores = scores * (classes[ids] & (out.class_ids == ids)).to(scores.dtype)
    top_scores, top_idx = scores.topk(min(max_det, k), dim=1)
    keep = top_scores > conf
    batch_index = torch.arange(bsz, device=scores.device).unsqueeze(1).expand_as(top_idx)
    flat_keep = keep.reshape(-1).nonzero().squeeze(1)  # one sync per batch
    bi = batch_index.reshape(-1)[flat_keep]
    row = top_idx.reshape(-1)[flat_keep]
    return Detections(boxes=out.boxes[bi, row], scores=top_scores.reshape(-1)[flat_keep],
                      class_ids=out.class_ids[bi, row], batch_index=bi)


def to_source_pixels(dets: Detections, letterbox: Letterbox) -> Detections:
    """Undo the letterbox: input pixels -> each source frame's pixels, clipped to the frame."""
    bi = dets.batch_index
    scale = letterbox.scale[bi]
    scale = scale.repeat(1, 2) if scale.ndim == 2 else scale.unsqueeze(1)  # (B, 2): stretched, per axis
    pad = letterbox.pad[bi].repeat(1, 2)
    boxes = (dets.boxes - pad) / scale
    limits = letterbox.source_size[bi].repeat(1, 2)
    boxes = torch.minimum(boxes.clamp(min=0), limits)
    return Detections(boxes=boxes, scores=dets.scores, class_ids=dets.class_ids, batch_index=bi)


def class_mask(wanted: list[int | str] | None, class_names: tuple[str, ...], device: torch.device) -> Tensor | None:
    """Turn `detection.classes` (ids or names) into an (nc,) bool mask; unknown names are an error."""
    if wanted is None:
        return None
    mask = torch.zeros(len(class_names), dtype=torch.bool)
    for c in wanted:
        if isinstance(c, str):
            if c not in class_names:
                raise ValueError(f"detection.classes: unknown class name {c!r} (model has {list(class_names)})")
            mask[class_names.index(c)] = True
        else:
            if not 0 <= c < len(class_names):
                raise ValueError(f"detection.classes: class id {c} out of range 0..{len(class_names) - 1}")
            mask[c] = True
    return mask.to(device)


def postprocess(
    raw: Tensor,
    letterbox: Letterbox,
    conf: float,
    iou: float,
    max_det: int = 300,
    max_candidates: int = 3000,
    classes: Tensor | None = None,
    layout: OutputLayout | None = None,
    input_size: tuple[int, int] | None = None,
) -> Detections:
    """Raw engine output of a batch -> detections in source-frame pixels."""
    dets = decode_predictions(raw, conf, iou, max_det=max_det, max_candidates=max_candidates, classes=classes,
                              layout=layout, input_size=input_size)
    return to_source_pixels(dets, letterbox)


class Postprocessor:
    """`postprocess` with everything but the batch fixed once: the thresholds of the detection config, the
    class filter and the model's output layout and input size. Built once per engine; called per batch."""

    def __init__(self, conf: float, iou: float, *, max_det: int = 300, max_candidates: int = 3000,
                 classes: Tensor | None = None, layout: OutputLayout | None = None,
                 input_size: tuple[int, int] | None = None) -> None:
        self.conf, self.iou = conf, iou
        self.max_det, self.max_candidates = max_det, max_candidates
        self.classes, self.layout, self.input_size = classes, layout, input_size

    @classmethod
    def for_model(cls, detection: DetectionConfig, info: ModelInfo, device: torch.device) -> Postprocessor:
        """From `detection:` and the loaded model's class names, output layout and input size.

        Unknown names or ids in `detection.classes` raise ValueError naming them."""
        return cls(detection.confidence, detection.iou, max_det=detection.max_detections,
                   max_candidates=detection.max_candidates,
                   classes=class_mask(detection.classes, info.class_names, device), layout=info.output_layout,
                   input_size=info.input_size)

    def __call__(self, raw: Tensor, letterbox: Letterbox) -> Detections:
        return postprocess(raw, letterbox, self.conf, self.iou, max_det=self.max_det,
                           max_candidates=self.max_candidates, classes=self.classes, layout=self.layout,
                           input_size=self.input_size)
