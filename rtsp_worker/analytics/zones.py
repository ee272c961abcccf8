"""Zones of all cameras as padded polygon tensors, and one vectorized enter/exit step for a batch of tracks.

A track enters when its anchor is inside the polygon by more than `margin` pixels and exits when it is
outside by more than that (a track on the border does not flicker). A track first seen inside enters at once.

supervision's `PolygonZone` rasterises its polygon into a mask of one frame size and tests one camera's
detections against it; here the polygons stay vertex lists (scaled per frame when given as fractions, so a
resolution change needs nothing rebuilt) and all cameras' tracks x zones are tested in one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from rtsp_worker.analytics.geometry import (
    ANCHOR_OFFSETS,
    anchors,
    class_allowed,
    distance_to_polygon,
    point_in_polygon,
    to_pixels,
)
from rtsp_worker.config import ZoneConfig


@dataclass(frozen=True, slots=True)
class ZoneStep:
    """Result of one step for M tracks and Z (padded) zones."""

    inside: Tensor  # (M, Z) bool, after this frame
    entered: Tensor  # (M, Z) bool
    exited: Tensor  # (M, Z) bool
    anchor: Tensor  # (M, Z, 2) float32, pixels


class ZoneSet:
    """Every camera's zones, padded to the most zones and vertices any camera has."""

    def __init__(self, per_camera: Sequence[Sequence[ZoneConfig]], allowed: Tensor,
                 device: torch.device) -> None:
        n_cams = len(per_camera)
        self.size = max((len(c) for c in per_camera), default=0)
        n = max(self.size, 1)
        n_verts = max((len(z.polygon) for c in per_camera for z in c), default=3)
        verts = torch.zeros((n_cams, n, n_verts, 2), dtype=torch.float32)
        frac = torch.zeros((n_cams, n), dtype=torch.bool)
        valid = torch.zeros((n_cams, n), dtype=torch.bool)
        offsets = torch.zeros((n_cams, n, 2), dtype=torch.float32)
        margin = torch.zeros((n_cams, n), dtype=torch.float32)
        for c, zones in enumerate(per_camera):
            for i, zone in enumerate(zones):
                poly = torch.tensor(zone.polygon, dtype=torch.float32)
                verts[c, i, : len(poly)] = poly
                verts[c, i, len(poly):] = poly[-1]  # repeated last vertex: zero-length edges change nothing
                frac[c, i] = zone.units == "fractions"
                valid[c, i] = True
                offsets[c, i] = torch.tensor(ANCHOR_OFFSETS[zone.anchor])
                margin[c, i] = zone.margin
        self.configs = [list(c) for c in per_camera]
        self.verts, self.fractions, self.valid = verts.to(device), frac.to(device), valid.to(device)
        self.offsets, self.margin = offsets.to(device), margin.to(device)
        self.allowed = allowed.to(device)  # (C, Z, K) bool

    def polygons(self, cam: Tensor, sizes: Tensor) -> Tensor:
        """(M, Z, V, 2) vertices in pixels for each row's camera and frame size."""
        return to_pixels(self.verts[cam], self.fractions[cam], sizes)

    def step(self, cam: Tensor, boxes: Tensor, cls: Tensor, sizes: Tensor, known: Tensor,
             inside: Tensor) -> ZoneStep:
        verts = self.polygons(cam, sizes)
        p = anchors(boxes, self.offsets[cam])
        pip = point_in_polygon(p, verts)
        dist = distance_to_polygon(p, verts)
        deep = dist >= self.margin[cam]
        active = self.valid[cam] & class_allowed(self.allowed, cam, cls)
        prev = inside & known[:, None]
        now = torch.where(pip & deep, True, torch.where(~pip & deep, False, prev)) & active
        return ZoneStep(inside=now, entered=now & ~prev, exited=prev & ~now, anchor=p)

    def centre(self, row: int, zone: int, width: int, height: int) -> tuple[float, float]:
        """The mean of a zone's vertices in pixels (where zone-wide events are placed)."""
        poly = self.configs[row][zone].polygon
        x = sum(p[0] for p in poly) / len(poly)
        y = sum(p[1] for p in poly) / len(poly)
        if self.configs[row][zone].units == "fractions":
            return x * width, y * height
        return x, y
