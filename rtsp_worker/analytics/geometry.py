"""Tensor geometry shared by lines and zones: box anchors, scaling fractions to pixels, signed distances,
point-in-polygon. Every function broadcasts over leading dimensions and runs on CPU and CUDA alike.

supervision has the same geometry (`sv.Position` anchors, `LineZone`'s cross products, `PolygonZone`) but
for one camera at a time on numpy, with `PolygonZone` testing a rasterised mask of one fixed resolution;
here all cameras of a batch, each with its own frame size, are tested in one pass. The anchor names are
supervision's, so a config reads the same as code written against it.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Where on the box each `sv.Position` sits, as (fraction of width, fraction of height) from the top-left.
# The keys are supervision's `sv.Position` values, written out: counting must not need supervision (and its
# OpenCV) installed, only the video sink draws with it (tests/test_gpu_fixes.py checks the names agree).
ANCHOR_OFFSETS: dict[str, tuple[float, float]] = {
    "CENTER": (0.5, 0.5),
    "CENTER_LEFT": (0.0, 0.5),
    "CENTER_RIGHT": (1.0, 0.5),
    "TOP_CENTER": (0.5, 0.0),
    "TOP_LEFT": (0.0, 0.0),
    "TOP_RIGHT": (1.0, 0.0),
    "BOTTOM_LEFT": (0.0, 1.0),
    "BOTTOM_CENTER": (0.5, 1.0),
    "BOTTOM_RIGHT": (1.0, 1.0),
}


def anchors(boxes: Tensor, offsets: Tensor) -> Tensor:
    """Anchor points: boxes (M, 4) xyxy and offsets (M, K, 2) -> (M, K, 2), one per box and line/zone."""
    lo, size = boxes[:, None, :2], (boxes[:, None, 2:] - boxes[:, None, :2])
    return lo + offsets * size


def to_pixels(points: Tensor, fractions: Tensor, sizes: Tensor) -> Tensor:
    """points (M, K, P, 2) in config units, fractions (M, K) bool, sizes (M, 2) (width, height) -> pixels."""
    ones = torch.ones_like(sizes)[:, None, None]
    scale = torch.where(fractions[:, :, None, None], sizes[:, None, None, :], ones)
    return points * scale


def signed_distance(p: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Distance of p from the infinite line a->b, positive on its right as seen on screen (y down)."""
    ab = b - a
    cross = ab[..., 0] * (p[..., 1] - a[..., 1]) - ab[..., 1] * (p[..., 0] - a[..., 0])
    return cross / ab.norm(dim=-1).clamp(min=1e-9)


def segment_param(p: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Position of p's projection on a->b: 0 at a, 1 at b."""
    ab = b - a
    return ((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-12)


def point_in_polygon(p: Tensor, verts: Tensor) -> Tensor:
    """Even-odd rule: p (..., 2), verts (..., V, 2) (padded by repeating the last vertex) -> (...) bool."""
    vi, vj = verts, verts.roll(-1, dims=-2)
    px, py = p[..., None, 0], p[..., None, 1]
    straddles = (vi[..., 1] > py) != (vj[..., 1] > py)
    dy = vj[..., 1] - vi[..., 1]
    dy = torch.where(straddles, dy, torch.ones_like(dy))  # other edges are masked out below
    x_at = vi[..., 0] + (vj[..., 0] - vi[..., 0]) * (py - vi[..., 1]) / dy
    return ((straddles & (px < x_at)).sum(-1) % 2) == 1


def distance_to_polygon(p: Tensor, verts: Tensor) -> Tensor:
    """Distance of p (..., 2) to the nearest edge of verts (..., V, 2) -> (...)."""
    vi, vj = verts, verts.roll(-1, dims=-2)
    q = p[..., None, :]
    t = segment_param(q, vi, vj).clamp(0, 1)
    nearest = vi + t[..., None] * (vj - vi)
    return (q - nearest).norm(dim=-1).amin(-1)


def class_allowed(allowed: Tensor, cam: Tensor, cls: Tensor) -> Tensor:
    """allowed (C, K, classes) bool, cam and cls (M,) -> (M, K): may row m's class be counted on item k."""
    per_row = allowed[cam]  # (M, K, classes)
    return per_row.gather(2, cls[:, None, None].expand(-1, per_row.shape[1], 1))[..., 0]
