"""The output layouts of the detectors people deploy, and one vectorized decoder per layout.

| layout          | raw output           | what it holds                                             | NMS |
|-----------------|----------------------|-----------------------------------------------------------|-----|
| `yolov8`        | (B, 4 + nc, N)       | cx cy w h (input px), class scores (YOLOv8/9/11/12, v5u)  | yes |
| `yolov5`        | (B, N, 5 + nc)       | cx cy w h (input px), objectness, class scores (v5, v7)   | yes |
| `yolox`         | (B, N, 5 + nc)       | raw grid offsets, obj, class scores (official export)     | yes |
| `yolox-decoded` | (B, N, 5 + nc)       | as yolov5, one anchor per cell (`decode_in_inference`)    | yes |
| `end2end`       | (B, K, 6)            | x1 y1 x2 y2 (input px), score, class (YOLOv10, YOLO26)    | no  |
| `rtdetr`        | (B, Q, 4 + nc)       | normalized cx cy w h, class scores                        | no  |
| `rtdetr-topk`   | (B, K, 6)            | normalized cx cy w h, score, class (ultralytics >= 8.4)   | no  |

Every decoder works on the whole batch at once with torch ops that run on CPU and CUDA alike, and
hands back either dense candidates (for the shared top-k + NMS path in `postprocess`) or final boxes.
`resolve_layout` picks the layout from the output shape, the model's metadata and `model.layout`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

LayoutName = Literal["yolov8", "yolov5", "yolox", "yolox-decoded", "end2end", "rtdetr", "rtdetr-topk"]
LAYOUTS: tuple[str, ...] = get_args(LayoutName)
STRIDES = (8, 16, 32)  # the P3-P5 heads every layout with a grid uses
MAX_QUERIES = 1000  # end2end / rtdetr outputs hold at most this many rows (300 in practice)


class LayoutError(ValueError):
    """An output that fits no layout (or not the one asked for); the message names the shapes."""


@dataclass(frozen=True, slots=True)
class OutputLayout:
    """How to read a model's raw output."""

    name: LayoutName
    num_classes: int

    @property
    def nms(self) -> bool:
        """False for NMS-free models (the model already removed duplicates)."""
        return self.name not in ("end2end", "rtdetr", "rtdetr-topk")

    def expected_shape(self) -> str:
        nc = self.num_classes
        return {
            "yolov8": f"[B, {4 + nc}, N]",
            "end2end": "[B, K, 6]",
            "rtdetr-topk": "[B, K, 6]",
            "rtdetr": f"[B, Q, {4 + nc}]",
        }.get(self.name, f"[B, N, {5 + nc}]")


@dataclass(frozen=True, slots=True)
class Dense:
    """Per-anchor candidates of an NMS layout, before any threshold (views of the raw output where possible)."""

    boxes: Tensor  # (B, N, 4) float32 cx cy w h, model-input pixels
    class_scores: Tensor  # (B, N, nc) float32
    objectness: Tensor | None = None  # (B, N) float32; score = objectness x class score (yolov5, yolox)


@dataclass(frozen=True, slots=True)
class Final:
    """One row per model output slot of an NMS-free layout: best class and its score."""

    boxes: Tensor  # (B, K, 4) float32 xyxy, model-input pixels
    scores: Tensor  # (B, K) float32
    class_ids: Tensor  # (B, K) int64


def grid_sizes(input_size: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(rows, cols, stride) of the P3-P5 grids for an input of (height, width) pixels."""
    h, w = input_size
    return [(-(-h // s), -(-w // s), s) for s in STRIDES]


def anchor_count(input_size: tuple[int, int]) -> int:
    return sum(r * c for r, c, _ in grid_sizes(input_size))


_GRIDS: dict[tuple[int, int, str], tuple[Tensor, Tensor]] = {}


def yolox_grid(input_size: tuple[int, int], device: torch.device) -> tuple[Tensor, Tensor]:
    """(N, 2) cell corners (x, y) in grid units and (N, 1) strides, in YOLOX's anchor order; cached."""
    key = (*input_size, str(device))
    if key not in _GRIDS:
        cells, strides = [], []
        for rows, cols, s in grid_sizes(input_size):
            gy, gx = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
            cells.append(torch.stack((gx, gy), dim=-1).reshape(-1, 2))
            strides.append(torch.full((rows * cols, 1), float(s)))
        _GRIDS[key] = (torch.cat(cells).float().to(device), torch.cat(strides).to(device))
    return _GRIDS[key]


def decode_yolov8(raw: Tensor, input_size: tuple[int, int]) -> Dense:
    pred = raw.float().transpose(1, 2)  # (B, N, 4 + nc), a view
    return Dense(pred[..., :4], pred[..., 4:])


def decode_yolov5(raw: Tensor, input_size: tuple[int, int]) -> Dense:
    pred = raw.float()
    return Dense(pred[..., :4], pred[..., 5:], pred[..., 4])


def decode_yolox(raw: Tensor, input_size: tuple[int, int]) -> Dense:
    pred = raw.float()
    if pred.shape[1] != anchor_count(input_size):
        raise LayoutError(f"yolox output has {pred.shape[1]} rows; an input of {input_size[0]}x{input_size[1]} "
                          f"has {anchor_count(input_size)} grid cells at strides {list(STRIDES)}")
    cells, strides = yolox_grid(input_size, pred.device)
    # Only 4 of the 5 + nc channels are touched: cheap next to the score pass NMS needs anyway.
    xy = (pred[..., 0:2] + cells) * strides
    wh = torch.exp(pred[..., 2:4]) * strides
    return Dense(torch.cat((xy, wh), dim=-1), pred[..., 5:], pred[..., 4])


def decode_end2end(raw: Tensor, input_size: tuple[int, int]) -> Final:
    pred = raw.float()
    return Final(pred[..., :4], pred[..., 4], pred[..., 5].round().long())


def decode_rtdetr(raw: Tensor, input_size: tuple[int, int]) -> Final:
    pred = raw.float()
    h, w = input_size
    scale = torch.tensor([w, h, w, h], dtype=pred.dtype, device=pred.device)
    b = pred[..., :4] * scale
    half = b[..., 2:4] / 2
    boxes = torch.cat((b[..., 0:2] - half, b[..., 0:2] + half), dim=-1)
    scores, cls = pred[..., 4:].max(dim=-1)  # Q is small (300): indices for every row are cheap here
    return Final(boxes, scores, cls)


def decode_rtdetr_topk(raw: Tensor, input_size: tuple[int, int]) -> Final:
    pred = raw.float()
    h, w = input_size
    b = pred[..., :4] * torch.tensor([w, h, w, h], dtype=pred.dtype, device=pred.device)
    half = b[..., 2:4] / 2
    boxes = torch.cat((b[..., 0:2] - half, b[..., 0:2] + half), dim=-1)
    return Final(boxes, pred[..., 4], pred[..., 5].round().long())


DECODERS = {
    "yolov8": decode_yolov8,
    "yolov5": decode_yolov5,
    "yolox": decode_yolox,
    "yolox-decoded": decode_yolov5,  # same rows; only the anchor count differs
    "end2end": decode_end2end,
    "rtdetr": decode_rtdetr,
    "rtdetr-topk": decode_rtdetr_topk,
}


def decode(raw: Tensor, layout: OutputLayout, input_size: tuple[int, int]) -> Dense | Final:
    """Raw output of a batch -> dense candidates (NMS layouts) or final rows (NMS-free layouts)."""
    check_shape(tuple(raw.shape), layout, "model output")
    return DECODERS[layout.name](raw, input_size)


# -- which layout a model has ---------------------------------------------------------------------------

def _num_classes(name: str, shape: Sequence[int | None]) -> int | None:
    a, b = shape[1], shape[2]
    if name == "yolov8":
        return a - 4 if a is not None else None
    if name in ("yolov5", "yolox", "yolox-decoded"):
        return b - 5 if b is not None else None
    if name == "rtdetr":
        return b - 4 if b is not None else None
    return None  # end2end, rtdetr-topk: the class count is not in the shape


def fits(name: str, shape: Sequence[int | None]) -> bool:
    """Whether an output of `shape` (None: dynamic) can be read as layout `name` at all."""
    if len(shape) != 3:
        return False
    a, b = shape[1], shape[2]
    if name == "yolov8":
        return a is not None and a >= 5 and (b is None or b > a)
    if name in ("yolov5", "yolox", "yolox-decoded"):
        return b is not None and b >= 6 and (a is None or a > b)
    if name in ("end2end", "rtdetr-topk"):
        return b == 6 and (a is None or a <= MAX_QUERIES)
    if name == "rtdetr":
        return b is not None and b >= 5 and (a is None or a <= MAX_QUERIES)
    return False


def check_shape(shape: tuple[int | None, ...], layout: OutputLayout, source: str) -> None:
    nc = _num_classes(layout.name, shape) if len(shape) == 3 else None
    if not fits(layout.name, shape) or (nc is not None and nc != layout.num_classes):
        raise LayoutError(f"{source}: output shape {list(shape)} does not fit layout {layout.name!r} with "
                          f"{layout.num_classes} classes (expected {layout.expected_shape()})")


def _meta_layout(meta: Mapping[str, str], shape: tuple[int | None, ...], num_names: int | None) -> str | None:
    """The layout the exporter recorded: ours (`layout`), or what ultralytics' metadata implies."""
    if meta.get("layout") in LAYOUTS:
        return meta["layout"]
    head = meta.get("head", "")
    if "RTDETR" in head or "rtdetr" in meta.get("description", "").lower().replace("-", ""):
        # ultralytics >= 8.4 exports the decoder's top-k (B, 300, 6); older ones the query scores
        topk = len(shape) == 3 and shape[2] == 6 and num_names != 2
        return "rtdetr-topk" if topk else "rtdetr"
    if str(meta.get("end2end", "")).lower() == "true":
        return "end2end"
    if meta.get("author") == "Ultralytics" or head == "Detect":
        return "yolov8"
    return None


def resolve_layout(
    shape: Sequence[int | None],
    input_size: tuple[int, int],
    num_names: int | None,
    meta: Mapping[str, str] | None = None,
    override: str = "auto",
    source: str = "model",
) -> OutputLayout:
    """The layout of an output of `shape`: `override` if not "auto", else metadata, else the shape.

    Without metadata the shape decides only where it cannot be misread: channels-first outputs are
    `yolov8`; channels-last outputs with one row per P3-P5 grid cell are `yolox`, three per cell `yolov5`
    (YOLOv5/v7 anchors); (B, K<=1000, 6) is `end2end`. Anything else is refused with the values of
    `model.layout` that would fit, so a model is never silently read the wrong way.
    """
    shape = tuple(shape)
    fitting = [n for n in LAYOUTS
               if fits(n, shape) and (num_names is None or _num_classes(n, shape) in (None, num_names))]
    hint = (f"model.layout values that fit this shape: {', '.join(fitting)}" if fitting
            else f"it fits none of the layouts ({', '.join(LAYOUTS)})")
    if override != "auto":
        name = override
        why = f"model.layout: {override}"
    else:
        name = _meta_layout(meta or {}, shape, num_names)
        why = "the model's metadata"
        if name is None:
            why = "its shape"
            name = _from_shape(shape, input_size)
        if name is None:
            raise LayoutError(f"{source}: cannot recognize the output layout from shape {list(shape)} at input "
                              f"{input_size[0]}x{input_size[1]}; set model.layout ({hint})")
    if not fits(name, shape):
        raise LayoutError(f"{source}: output shape {list(shape)} does not fit layout {name!r} (from {why}); {hint}")
    nc = _num_classes(name, shape)
    if nc is None:
        nc = num_names
    if nc is None:
        raise LayoutError(f"{source}: layout {name!r} output {list(shape)} does not say how many classes the "
                          "model has: set model.class_names (or write `names` into the model's metadata)")
    if num_names is not None and num_names != nc:
        raise LayoutError(f"{source}: {num_names} class names for {nc} classes in output shape {list(shape)} "
                          f"read as layout {name!r} (from {why}); check model.class_names or model.layout")
    return OutputLayout(name, nc)  # type: ignore[arg-type]


def _from_shape(shape: tuple[int | None, ...], input_size: tuple[int, int]) -> str | None:
    if len(shape) != 3:
        return None
    a, b = shape[1], shape[2]
    if fits("yolov8", shape) and b is not None:
        return "yolov8"
    cells = anchor_count(input_size)
    if a is not None and b is not None and b >= 6:
        if a == cells:
            return "yolox"
        if a == 3 * cells:
            return "yolov5"
        if b == 6 and a <= MAX_QUERIES:
            return "end2end"
    return None
