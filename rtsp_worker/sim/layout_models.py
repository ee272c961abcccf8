"""Tiny detectors in every output layout, exported on the spot (tests, benchmarks, demos; no downloads):
to ONNX, or to the torch backend's `.pt2` / TorchScript, with the same metadata.

One small conv body at stride 8, pooled to strides 16 and 32 (the P3-P5 grids every real layout uses),
and a head that writes the output exactly the way each family's exporter does (detection/layouts.py):
ultralytics' channels-first YOLOv8 rows, YOLOv5's three anchors per cell with objectness, YOLOX's raw
grid offsets (or decoded), an end2end top-K of (x1, y1, x2, y2, score, class), and RT-DETR's normalized
query boxes. The weights are random but fixed by the seed, and strong enough that a frame yields a few
dozen boxes above 0.3, so decoding has something to get right.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtsp_worker.engines.export import export_onnx, export_program

END2END_K = 50  # rows of the end2end output
STRIDES = (8, 16, 32)


class LayoutNet(nn.Module):
    """A random detector whose single output is in `layout`'s format (see the module docstring)."""

    def __init__(self, layout: str, nc: int = 3, width: int = 8) -> None:
        super().__init__()
        self.layout, self.nc = layout, nc
        self.anchors = 3 if layout == "yolov5" else 1
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 2, 1),
                                  nn.ReLU(), nn.Conv2d(width, width, 3, 2, 1), nn.ReLU())
        self.head = nn.Conv2d(width, self.anchors * (5 + nc), 1)

    def _levels(self, x: Tensor) -> list[tuple[Tensor, int]]:
        f8 = self.body(x - 0.5)
        f16 = F.avg_pool2d(f8, 2, ceil_mode=True)
        f32 = F.avg_pool2d(f16, 2, ceil_mode=True)
        return [(self.head(f), s) for f, s in zip((f8, f16, f32), STRIDES)]

    def _rows(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, 5 + nc) raw head rows, (N, 2) cell corners, (N, 1) strides; N = anchors x cells."""
        rows, cells, strides = [], [], []
        b = x.shape[0]
        for y, s in self._levels(x):
            _, _, h, w = y.shape
            y = y.reshape(b, self.anchors, 5 + self.nc, h * w).permute(0, 1, 3, 2).reshape(b, -1, 5 + self.nc)
            gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            cell = torch.stack((gx, gy), dim=-1).reshape(1, -1, 2).expand(self.anchors, -1, -1).reshape(-1, 2)
            rows.append(y)
            cells.append(cell.to(x.dtype))
            strides.append(torch.full((cell.shape[0], 1), float(s), dtype=x.dtype))
        t = torch.cat(rows, 1)
        # The letterbox pad is uniform, so cells over it would tie exactly; a fixed per-row ripple keeps
        # every score distinct and the comparison with the reference free of tie-breaking questions.
        ripple = torch.sin(torch.arange(t.shape[1], dtype=x.dtype) * 0.731).reshape(1, -1, 1)
        ripple = ripple * torch.linspace(0.2, 0.4, t.shape[2], dtype=x.dtype)
        return t + ripple, torch.cat(cells), torch.cat(strides)

    def forward(self, x: Tensor) -> Tensor:
        t, cells, strides = self._rows(x)
        if self.layout in ("rtdetr", "rtdetr-topk"):
            q = t[:, : t.shape[1] // 4]  # fewer queries than cells, like the real decoder's 300
            boxes, scores = torch.sigmoid(q[..., :4] / 8), torch.sigmoid(q[..., 5:] / 4)
            if self.layout == "rtdetr":
                return torch.cat((boxes, scores), dim=-1)
            # ultralytics >= 8.4: top-k over (query, class) pairs, normalized cx cy w h, score, class
            top, index = scores.flatten(1).topk(min(END2END_K, scores.shape[1] * self.nc), dim=1)
            query = torch.div(index, self.nc, rounding_mode="floor")
            picked = torch.gather(boxes, 1, query.unsqueeze(-1).expand(-1, -1, 4))
            return torch.cat((picked, top.unsqueeze(-1), (index - query * self.nc).unsqueeze(-1).to(x.dtype)), -1)
        # Smooth bounds instead of clamps (clamps would make ties): offsets within 1.5 cells, sizes within
        # e^3 strides, scores away from saturation.
        offset = 1.5 * torch.tanh(t[..., 0:2] / 8)
        raw_wh = 3 * torch.tanh(t[..., 2:4] / 8)
        obj = torch.sigmoid(t[..., 4:5] / 4)
        cls = torch.sigmoid(t[..., 5:] / 4)
        if self.layout == "yolox":  # the official export: offsets and log sizes left for the host
            return torch.cat((offset, raw_wh, obj, cls), dim=-1)
        xy = (cells + 0.5 + offset) * strides
        wh = torch.exp(raw_wh) * strides * 2
        if self.layout in ("yolov5", "yolox-decoded"):
            return torch.cat((xy, wh, obj, cls), dim=-1)
        if self.layout == "yolov8":
            return torch.cat((xy, wh, cls), dim=-1).transpose(1, 2)
        if self.layout == "end2end":
            score, cls_id = cls.max(dim=-1)
            k = min(END2END_K, score.shape[1])
            top, idx = score.topk(k, dim=1)
            box = torch.cat((xy - wh / 2, xy + wh / 2), dim=-1)
            box = torch.gather(box, 1, idx.unsqueeze(-1).expand(-1, -1, 4))
            cid = torch.gather(cls_id, 1, idx).to(x.dtype)
            return torch.cat((box, top.unsqueeze(-1), cid.unsqueeze(-1)), dim=-1)
        raise ValueError(f"unknown layout {self.layout!r}")


# What our exporter writes besides `names`: layouts the shape alone cannot tell get a metadata entry,
# the way ultralytics' exporter records `head` and `end2end`.
_META = {"rtdetr": {"head": "RTDETRDecoder"}, "rtdetr-topk": {"head": "RTDETRDecoder"},
         "yolox-decoded": {"layout": "yolox-decoded"}}


def make_layout_model(layout: str, nc: int = 3, seed: int = 0) -> LayoutNet:
    torch.manual_seed(seed)
    model = LayoutNet(layout, nc).eval()
    with torch.no_grad():  # wide random weights: varied boxes and scores spread across (0, 1)
        for p in model.parameters():
            p.mul_(3.0)
    return model


def export_layout_model(
    path: Path | str, layout: str, size: tuple[int, int] = (64, 96), nc: int = 3, dynamic_batch: bool = True,
    names: list[str] | None = None, seed: int = 0, metadata: dict[str, str] | None = None,
) -> Path:
    """Export a `LayoutNet` with `names` (default 'c0'..) and the layout's metadata, by the suffix of `path`:
    ONNX (metadata props), `.pt2` (torch.export) or `.torchscript` (a trace; metadata in `config.txt`)."""
    path = Path(path)
    model = make_layout_model(layout, nc, seed)
    meta = {"names": str(dict(enumerate(names or [f"c{i}" for i in range(nc)]))),
            "imgsz": str(list(size)), **_META.get(layout, {}), **(metadata or {})}
    if path.suffix == ".onnx":
        return export_onnx(model, path, size, meta, dynamic_batch=dynamic_batch,
                           example_batch=2 if dynamic_batch else 1)
    if not dynamic_batch:
        raise ValueError(f"{path}: torch exports of the layout models have a dynamic batch")
    if path.suffix == ".pt2":
        return export_program(model, path, size, meta)
    import json

    with torch.no_grad():
        traced = torch.jit.trace(model, torch.rand(2, 3, *size), check_trace=False)
    torch.jit.save(traced, str(path), _extra_files={"config.txt": json.dumps(meta)})
    return path
