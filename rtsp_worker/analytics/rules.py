"""The rules on top of lines and zones (issue 31): stream time, ground-plane speed, loiter and crowding tables.

- `StreamClock`: one clock per camera row from the frames' presentation times (decode wall-clock where a
  stream has none), so dwell, loitering and speed ignore batching jitter and a file played faster than real
  time measures the same durations. A pts that jumps back (a reconnect, a looped file) or far ahead is
  bridged with the wall-clock step instead, so the clock never runs backwards.
- `GroundPlane`: each track's ground anchor through the camera's homography (one batched matmul), and its
  velocity smoothed exponentially in stream time; all (M,)-shaped tensor work, no per-track Python.
- `CrowdState`: `crowded` / `cleared` with hysteresis per zone, on the host occupancy table the stage
  computes anyway ((cameras x zones) numbers per batch, not per track).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from rtsp_worker.analytics.geometry import ANCHOR_OFFSETS, anchors
from rtsp_worker.config import CameraConfig, ConfigError
from rtsp_worker.config.calibration import SPEED_FACTOR
from rtsp_worker.types import Frame

# A pts step larger than this (seconds) is a discontinuity, not elapsed time: bridged with wall-clock.
MAX_PTS_STEP_S = 30.0


class StreamClock:
    """Per camera row: seconds of stream time, monotonic, from `Frame.pts` (or `Frame.ts` without one)."""

    def __init__(self, rows: int) -> None:
        self.last_pts = [None] * rows  # type: list[float | None]
        self.last_wall = [0.0] * rows
        self.now = [None] * rows  # type: list[float | None]

    def times(self, frames: Sequence[Frame]) -> list[float]:
        out = []
        for f in frames:
            r = f.row
            prev = self.now[r]
            if prev is None:
                t = f.stream_time
            else:
                step = None
                last = self.last_pts[r]
                if f.pts is not None and last is not None:
                    step = f.pts - last
                    if not 0.0 <= step <= MAX_PTS_STEP_S:
                        step = None
                if step is None:
                    step = max(f.ts - self.last_wall[r], 0.0)
                t = prev + step
            self.now[r], self.last_pts[r], self.last_wall[r] = t, f.pts, f.ts
            out.append(t)
        return out

    def keep_row(self, r: int, old: StreamClock) -> None:
        self.last_pts[r], self.last_wall[r], self.now[r] = old.last_pts[r], old.last_wall[r], old.now[r]


def loiter_thresholds(cameras: Sequence[CameraConfig], class_names: Sequence[str], origin: str) -> Tensor:
    """(C, Z, K) float64 seconds before a track of class k loiters in zone z (inf: never)."""
    n = max(max((len(c.zones) for c in cameras), default=0), 1)
    out = torch.full((len(cameras), n, len(class_names)), math.inf, dtype=torch.float64)
    for c, cam in enumerate(cameras):
        for z, zone in enumerate(cam.zones):
            if zone.loiter_s is None:
                continue
            if not isinstance(zone.loiter_s, dict):
                out[c, z] = float(zone.loiter_s)
                continue
            for name, seconds in zone.loiter_s.items():
                if name not in class_names:
                    raise ConfigError(f"{origin}: camera {cam.name!r}, field 'zones.{z}.loiter_s': unknown class "
                                      f"{name!r} (the model's classes: {', '.join(class_names)})")
                out[c, z, class_names.index(name)] = float(seconds)
    return out


def speed_limits(cameras: Sequence[CameraConfig]) -> tuple[Tensor, Tensor]:
    """((C, Z), (C, L)) float32 `speed_over` of every zone and line in m/s (inf: no rule)."""
    nz = max(max((len(c.zones) for c in cameras), default=0), 1)
    nl = max(max((len(c.lines) for c in cameras), default=0), 1)
    zones = torch.full((len(cameras), nz), math.inf, dtype=torch.float32)
    lines = torch.full((len(cameras), nl), math.inf, dtype=torch.float32)
    for c, cam in enumerate(cameras):
        if cam.calibration is None:
            continue
        factor = SPEED_FACTOR[cam.calibration.speed_unit]
        for table, items in ((zones, cam.zones), (lines, cam.lines)):
            for i, item in enumerate(items):
                if item.speed_over is not None:
                    table[c, i] = item.speed_over / factor
    return zones, lines


class GroundPlane:
    """World positions and smoothed ground velocities of tracks, per (camera, slot) of the analytics table."""

    def __init__(self, cameras: Sequence[CameraConfig], slots: int, device: torch.device) -> None:
        n = len(cameras)
        h = torch.zeros((n, 3, 3), dtype=torch.float64)
        h[:] = torch.eye(3, dtype=torch.float64)
        calibrated = torch.zeros(n, dtype=torch.bool)
        frac = torch.zeros(n, dtype=torch.bool)
        tau = torch.ones(n, dtype=torch.float64)
        factor = torch.ones(n, dtype=torch.float32)
        for c, cam in enumerate(cameras):
            cal = cam.calibration
            if cal is None:
                continue
            h[c] = torch.from_numpy(cal.matrix())
            calibrated[c], frac[c] = True, cal.units == "fractions"
            tau[c], factor[c] = cal.smoothing_s, SPEED_FACTOR[cal.speed_unit]
        self.any = bool(calibrated.any())
        self.h, self.calibrated, self.fractions = h.to(device), calibrated.to(device), frac.to(device)
        self.tau, self.factor = tau.to(device), factor.to(device)  # factor: m/s -> the camera's unit
        self.offset = torch.tensor(ANCHOR_OFFSETS["BOTTOM_CENTER"], dtype=torch.float32, device=device)
        self.world = torch.zeros((n, slots, 2), dtype=torch.float64, device=device)
        self.vel = torch.zeros((n, slots, 2), dtype=torch.float64, device=device)
        self.ts = torch.zeros((n, slots), dtype=torch.float64, device=device)
        self.seen = torch.zeros((n, slots), dtype=torch.int64, device=device)  # observations, capped at 2

    def to_world(self, cam: Tensor, boxes: Tensor, sizes: Tensor) -> Tensor:
        """(M, 2) float64 metres: each box's bottom-centre through its camera's homography."""
        p = anchors(boxes, self.offset.expand(len(boxes), 1, 2))[:, 0].double()
        p = torch.where(self.fractions[cam][:, None], p / sizes.double(), p)
        q = torch.einsum("mij,mj->mi", self.h[cam], torch.cat([p, torch.ones_like(p[:, :1])], 1))
        return q[:, :2] / q[:, 2:3]

    def step(self, cam: Tensor, flat: Tensor, known: Tensor, boxes: Tensor, sizes: Tensor, ts: Tensor
             ) -> tuple[Tensor, Tensor]:
        """((M, 2) world metres, (M,) speed m/s float32) for this batch's rows; NaN where not calibrated or
        the track was seen once. Updates the slots' state."""
        m = len(cam)
        nan = torch.full((m,), math.nan, dtype=torch.float32, device=cam.device)
        if not self.any or m == 0:
            return torch.full((m, 2), math.nan, dtype=torch.float64, device=cam.device), nan
        world = self.to_world(cam, boxes, sizes)
        w_tab, v_tab = self.world.reshape(-1, 2), self.vel.reshape(-1, 2)
        t_tab, s_tab = self.ts.reshape(-1), self.seen.reshape(-1)
        seen = torch.where(known, s_tab[flat], torch.zeros_like(flat))
        dt = ts - t_tab[flat]
        moved = (seen > 0) & (dt > 0)
        raw = (world - w_tab[flat]) / dt.clamp(min=1e-6)[:, None]
        alpha = (1.0 - torch.exp(-dt.clamp(min=0) / self.tau[cam]))[:, None]
        # The first velocity is the first difference; after that an exponential average in stream time.
        vel = torch.where((seen == 1)[:, None], raw, v_tab[flat] + alpha * (raw - v_tab[flat]))
        vel = torch.where(moved[:, None], vel, v_tab[flat])
        seen_now = torch.where(moved, (seen + 1).clamp(max=2), seen.clamp(min=1))
        keep_pos = (seen > 0) & ~moved  # same timestamp again: keep the earlier position and time
        w_tab[flat] = torch.where(keep_pos[:, None], w_tab[flat], world)
        t_tab[flat] = torch.where(keep_pos, t_tab[flat], ts)
        v_tab[flat] = vel
        s_tab[flat] = seen_now
        speed = torch.where((seen_now >= 2) & self.calibrated[cam], vel.norm(dim=1).float(), nan)
        world = torch.where(self.calibrated[cam][:, None], world, math.nan)
        return world, speed

    def report(self, cam: Tensor, world: Tensor, speed: Tensor) -> np.ndarray:
        """(M, 3) float64 host array: world x, y and speed in each camera's configured unit."""
        if not self.any:
            return np.full((len(cam), 3), np.nan)
        out = torch.cat([world, (speed * self.factor[cam]).double()[:, None]], 1)
        return out.cpu().numpy()

    def forget(self, expired: Tensor) -> None:
        self.seen.masked_fill_(expired, 0)

    def keep_row(self, r: int, old: GroundPlane) -> None:
        for name in ("world", "vel", "ts", "seen"):
            getattr(self, name)[r] = getattr(old, name)[r]


class CrowdState:
    """`crowded` when a zone holds more than `max_objects` for `min_duration_s`; `cleared` at `clear_below`."""

    def __init__(self, cameras: Sequence[CameraConfig]) -> None:
        n = len(cameras)
        nz = max(max((len(c.zones) for c in cameras), default=0), 1)
        self.limit = np.full((n, nz), -1, dtype=np.int64)  # -1: no rule
        self.clear = np.zeros((n, nz), dtype=np.int64)
        self.hold = np.zeros((n, nz), dtype=np.float64)
        for c, cam in enumerate(cameras):
            for z, zone in enumerate(cam.zones):
                if zone.max_objects is not None:
                    self.limit[c, z] = zone.max_objects
                    self.clear[c, z] = zone.max_objects if zone.clear_below is None else zone.clear_below
                    self.hold[c, z] = zone.min_duration_s
        self.on = np.zeros((n, nz), dtype=bool)
        self.over_since = np.full((n, nz), np.nan)

    def step(self, row: int, counts: np.ndarray, now: float) -> Iterator[tuple[int, str, int]]:
        """(zone, "crowded" | "cleared", count) for the zones of camera `row` that changed state."""
        ruled = self.limit[row] >= 0
        if not ruled.any():
            return
        over = ruled & (counts > self.limit[row])
        since = self.over_since[row]
        since[over & np.isnan(since)] = now
        since[~over] = np.nan
        fire = over & ~self.on[row] & (now - since >= self.hold[row])
        clear = ruled & self.on[row] & (counts <= self.clear[row])
        self.on[row] |= fire
        self.on[row] &= ~clear
        for z in np.flatnonzero(fire):
            yield int(z), "crowded", int(counts[z])
        for z in np.flatnonzero(clear):
            yield int(z), "cleared", int(counts[z])

    def states(self) -> list[tuple[int, int, bool]]:
        return [(int(c), int(z), bool(self.on[c, z])) for c, z in zip(*np.nonzero(self.limit >= 0))]

    def keep_row(self, r: int, old: CrowdState) -> None:
        nz = min(self.on.shape[1], old.on.shape[1])
        self.on[r, :nz], self.over_since[r, :nz] = old.on[r, :nz], old.over_since[r, :nz]


def outside_frame(cam: CameraConfig, width: int, height: int) -> list[str]:
    """Warnings for the camera's pixel-unit lines and zones that lie entirely outside a width x height frame
    (checked at its first frame: the size is not known before). Fractions always lie inside."""
    out = []
    for kind, attr in (("lines", "points"), ("zones", "polygon")):
        for i, item in enumerate(getattr(cam, kind)):
            if item.units != "pixels":
                continue
            xs = [p[0] for p in getattr(item, attr)]
            ys = [p[1] for p in getattr(item, attr)]
            if max(xs) < 0 or min(xs) > width or max(ys) < 0 or min(ys) > height:
                out.append(f"camera {cam.name!r}, field '{kind}.{i}' ({item.name!r}): entirely outside the "
                           f"{width}x{height} frame; it will never count (check the coordinates and `units`)")
    return out
