"""Counting lines of all cameras as padded tensors, and one vectorized crossing step for a batch of tracks.

A track's side of a line is committed only when its anchor is more than `margin` pixels from it; a crossing
is a change of the committed side whose motion (from the last committed position to the new one) passes
through the segment A-B, not around its ends. Each track counts at most once per line and direction, so a
track wobbling on the line, or crossing and coming back, adds one event per direction at most; a track lost
and found again on the other side, or jumping over the line between two skipped frames, still counts (the
motion is taken from the last committed position, not the last frame).

supervision's `LineZone` keeps a dict per tracker id and tests one camera's detections at a time, with no
per-direction memory (a wobble across its line counts again); this keeps the same state in tensors for all
cameras and tracks of a batch: (tracks x lines) in one pass.
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
    segment_param,
    signed_distance,
    to_pixels,
)
from rtsp_worker.config import LineConfig

NO_CROSSING = -1


@dataclass(frozen=True, slots=True)
class LineStep:
    """Result of one step for M tracks and L (padded) lines."""

    side: Tensor  # (M, L) int8 committed side: -1 left of A->B, +1 right, 0 not yet known
    pos: Tensor  # (M, L, 2) float32 anchor at the last committed side, pixels
    counted: Tensor  # (M, L, 2) bool, direction already counted for this track
    crossing: Tensor  # (M, L) int64 direction index (0 left->right, 1 right->left) counted now, -1 none
    anchor: Tensor  # (M, L, 2) float32 the anchors of this frame, pixels


class LineSet:
    """Every camera's lines, padded to the most lines any camera has (`valid` marks the real ones)."""

    def __init__(self, per_camera: Sequence[Sequence[LineConfig]], allowed: Tensor,
                 device: torch.device) -> None:
        n_cams = len(per_camera)
        self.size = max((len(c) for c in per_camera), default=0)
        n = max(self.size, 1)
        pts = torch.zeros((n_cams, n, 2, 2), dtype=torch.float32)
        pts[:, :, 1, 0] = 1.0  # padding: a unit line, never active
        frac = torch.zeros((n_cams, n), dtype=torch.bool)
        valid = torch.zeros((n_cams, n), dtype=torch.bool)
        offsets = torch.zeros((n_cams, n, 2), dtype=torch.float32)
        margin = torch.zeros((n_cams, n), dtype=torch.float32)
        for c, lines in enumerate(per_camera):
            for i, line in enumerate(lines):
                pts[c, i] = torch.tensor(line.points, dtype=torch.float32)
                frac[c, i] = line.units == "fractions"
                valid[c, i] = True
                offsets[c, i] = torch.tensor(ANCHOR_OFFSETS[line.anchor])
                margin[c, i] = line.margin
        self.configs = [list(c) for c in per_camera]
        self.points, self.fractions, self.valid = pts.to(device), frac.to(device), valid.to(device)
        self.offsets, self.margin = offsets.to(device), margin.to(device)
        self.allowed = allowed.to(device)  # (C, L, K) bool, class k counted on line l of camera c

    def endpoints(self, cam: Tensor, sizes: Tensor) -> tuple[Tensor, Tensor]:
        """A and B of every line for each row's camera and frame size: (M, L, 2) each, pixels."""
        pts = to_pixels(self.points[cam], self.fractions[cam], sizes)
        return pts[:, :, 0], pts[:, :, 1]

    def step(self, cam: Tensor, boxes: Tensor, cls: Tensor, sizes: Tensor, known: Tensor, side: Tensor,
             pos: Tensor, counted: Tensor) -> LineStep:
        """Advance M tracks (rows) by one frame. `known` (M,) False for tracks seen for the first time
        (their `side`, `pos`, `counted` are ignored)."""
        a, b = self.endpoints(cam, sizes)
        p = anchors(boxes, self.offsets[cam])
        d = signed_distance(p, a, b)
        margin = self.margin[cam]
        now = torch.where(d > margin, 1, torch.where(d < -margin, -1, 0)).to(torch.int8)
        active = self.valid[cam] & class_allowed(self.allowed, cam, cls)
        prev = torch.where(known[:, None], side, torch.zeros_like(side))
        counted = counted & known[:, None, None]
        flipped = active & (now != 0) & (prev != 0) & (now != prev)
        # Where the motion from the last committed position to now meets the line: inside A-B?
        d0 = signed_distance(pos, a, b)
        u = d0 / torch.where(flipped, d0 - d, torch.ones_like(d))
        x = pos + u[..., None] * (p - pos)
        t = segment_param(x, a, b)
        through = flipped & (t >= 0) & (t <= 1)
        direction = (now < 0).to(torch.int64)  # arriving on the right (+1) is direction 0
        already = counted.gather(2, direction[..., None])[..., 0]
        new = through & ~already
        counted = counted | (new[..., None] & (torch.arange(2, device=cam.device) == direction[..., None]))
        commit = active & (now != 0)
        return LineStep(
            side=torch.where(commit, now, prev),
            pos=torch.where(commit[..., None], p, pos),
            counted=counted,
            crossing=torch.where(new, direction, NO_CROSSING),
            anchor=p,
        )
