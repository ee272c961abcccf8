"""Vectorized postprocessing of ultralytics-layout outputs for a whole batch.

`(B, 4 + nc, N)` raw output -> per-box confidence filter -> top-k candidates -> class- and image-aware NMS
in one `nms` call -> at most `max_det` boxes per image -> boxes mapped back to source pixels.
No Python loop over anchors or boxes, and no `.item()`: the only host syncs are the ones that
variable-length outputs force (the candidate mask and NMS), once per batch, never per frame. (On the CPU with
more than 1000 candidates NMS runs per (image, class) group, see `nms_per_image_and_class`.)
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, nms

from rtsp_worker.types import Detections, Letterbox

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
    boxes NMS runs per group instead (torchvision's `batched_nms`, which loops over the groups there):
    4 x 3000 boxes over 80 classes took 18 ms in one call against 9 ms per group
    (benchmarks/bench_postprocess.py). On CUDA one call is always best.
    """
    if boxes.shape[0] == 0:  # the shape is known on the host: no sync
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    if boxes.device.type == "cpu" and boxes.shape[0] > CPU_GROUPED_NMS_ABOVE:
        return batched_nms(boxes, scores, image * num_classes + cls, iou)
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
) -> Detections:
    """Boxes (xyxy, model-input pixels) kept after confidence filter and NMS, for every image of the batch.

    `classes` is an optional (nc,) bool mask of the classes to keep.
    """
    if raw.ndim != 3 or raw.shape[1] < 5:
        raise ValueError(f"expected raw output (B, 4 + nc, N), got {tuple(raw.shape)}")
    bsz, _, n = raw.shape
    pred = raw.float().transpose(1, 2)  # (B, N, 4 + nc), a view
    class_scores = pred[..., 4:]
    if classes is not None:
        class_scores = class_scores * classes.to(class_scores.dtype)
    # Best score per anchor without its class index: `max(dim)` also computes indices for every anchor,
    # which cost 97% of this function on an 80-class model (OPTIMIZATION_SUMMARY.md).
    scores = class_scores.amax(dim=2)  # (B, N)

    # Untrained or badly calibrated models can leave thousands of candidates; NMS cost is quadratic.
    k = min(max_candidates, n)
    top_scores, top_idx = scores.topk(k, dim=1)  # (B, k), sorted by score
    keep = top_scores > conf  # (B, k)
    batch_index = torch.arange(bsz, device=raw.device).unsqueeze(1).expand(bsz, k)

    flat_keep = keep.reshape(-1).nonzero().squeeze(1)  # one sync per batch
    bi = batch_index.reshape(-1)[flat_keep]
    anchor = top_idx.reshape(-1)[flat_keep]
    boxes = cxcywh_to_xyxy(pred[bi, anchor, :4])
    cand_scores = top_scores.reshape(-1)[flat_keep]
    cand_cls = class_scores[bi, anchor].argmax(dim=1)  # class ids for the candidates only

    kept = nms_per_image_and_class(boxes, cand_scores, bi, cand_cls, iou, class_scores.shape[2])
    kept = cap_per_image(kept, bi, bsz, max_det)

    return Detections(
        boxes=boxes[kept],
        scores=cand_scores[kept],
        class_ids=cand_cls[kept],
        batch_index=bi[kept],
    )


def to_source_pixels(dets: Detections, letterbox: Letterbox) -> Detections:
    """Undo the letterbox: input pixels -> each source frame's pixels, clipped to the frame."""
    bi = dets.batch_index
    scale = letterbox.scale[bi].unsqueeze(1)
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
) -> Detections:
    """Raw engine output of a batch -> detections in source-frame pixels."""
    dets = decode_predictions(raw, conf, iou, max_det=max_det, max_candidates=max_candidates, classes=classes)
    return to_source_pixels(dets, letterbox)
