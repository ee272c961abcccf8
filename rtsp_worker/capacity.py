"""What the box can carry: the engine's measured cost per batch size, cameras' target rates, admission by
measured headroom, and priorities under overload (docs/motion-and-capacity.md).

- `BatchCost` learns the milliseconds one batch of b inferred frames costs the engine (preprocess +
  engine: the inference thread's half of the step; postprocess and tracker run beside it on the overlap
  thread) from the real batches; sizes never seen are read off a least-squares line through
  the seen ones. `capacity_fps` is the best frames/s over batch sizes 1..max_batch: batches bigger than a
  fixed-batch engine takes run in chunks, so the engine's batch size is never a limit on cameras.
  Until the first real batch, the engine's own warm-up runs at load (`Engine.warmup_ms`, timed, no extra
  run) give a first estimate (`source` "warm-up"): shown, never a reason to refuse a camera (a first run is
  slower than the steady state); the first real batch replaces it.
- `target_fps` of a camera: its `target_fps`, else its stream rate / infer_interval (the rate the config
  gives, else the one measured, else ASSUMED_FPS).
- `admission` counts every camera at its full target: motion gating is headroom for priorities, never a
  reason to admit (a quiet night must not admit what the morning cannot carry).
- `allocate` shares the capacity under overload: high-priority cameras first, then normal, then low; a
  group that does not fit gets a larger effective interval (a multiplier of infer_interval). `Priorities`
  applies it every `period_s` of its (injectable) clock, logging each camera's change once.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from rtsp_worker.config import CameraConfig

log = logging.getLogger(__name__)

ASSUMED_FPS = 30.0  # a camera whose rate is neither configured nor measured yet
SAFETY = 0.9  # share of the measured capacity the priorities plan with (the rest absorbs noise)
MAX_MULTIPLIER = 100  # the largest effective-interval multiplier (a low camera is never starved entirely)
PRIORITY_RANK = {"high": 0, "normal": 1, "low": 2}
HYSTERESIS = 0.15
_EMA = 0.2


class BatchCost:
    """Milliseconds per batch, by the number of inferred frames in it, learned from real batches."""

    def __init__(self, max_size: int = 256) -> None:
        self.max_size = max_size
        self.ms = np.full(max_size + 1, np.nan)  # EMA per size; index 0 unused
        self.count = np.zeros(max_size + 1, dtype=np.int64)
        self.warmup = np.full(max_size + 1, np.nan)  # the engine's warm-up runs, by size: until a real batch

    def seed(self, warmup_ms: Mapping[int, float]) -> None:
        """The engine's warm-up runs at load ({batch size: ms}): the estimate until real batches are measured."""
        for size, ms in warmup_ms.items():
            if 0 < size <= self.max_size and math.isfinite(ms) and ms > 0:
                self.warmup[size] = ms

    def observe(self, size: int, ms: float) -> None:
        """One batch of `size` inferred frames took `ms` (size 0: a batch of gated/interval frames only)."""
        if size <= 0 or size > self.max_size or not math.isfinite(ms) or ms <= 0:
            return
        old = self.ms[size]
        self.ms[size] = ms if np.isnan(old) else old + _EMA * (ms - old)
        self.count[size] += 1

    @property
    def known(self) -> bool:
        """Measured on real batches (the warm-up estimate does not count)."""
        return bool(self.count.any())

    @property
    def source(self) -> str | None:
        """What the estimate rests on: "batches", "warm-up" (no real batch yet) or None (nothing)."""
        return "batches" if self.known else "warm-up" if not np.isnan(self.warmup).all() else None

    def _points(self) -> np.ndarray:
        """ms by size (NaN: not seen): the real batches once there is one, else the warm-up runs."""
        return self.ms if self.known else self.warmup

    def _line(self) -> tuple[float, float] | None:
        """(fixed ms, ms per frame) through the measured sizes; None before any."""
        points = self._points()
        seen = np.flatnonzero(~np.isnan(points))
        if len(seen) == 0:
            return None
        if len(seen) == 1:  # one size: the cost per frame, without a fixed part (conservative upwards)
            return 0.0, float(points[seen[0]] / seen[0])
        slope, fixed = np.polyfit(seen.astype(np.float64), points[seen], 1)
        return max(float(fixed), 0.0), max(float(slope), 0.0)

    def estimate(self, size: int, line: tuple[float, float] | None = None) -> float | None:
        """Milliseconds of a batch of `size` frames: measured, else on the line through the measured sizes."""
        points = self._points()
        if size <= self.max_size and not np.isnan(points[size]):
            return float(points[size])
        line = line if line is not None else self._line()
        return None if line is None else line[0] + line[1] * size

    def capacity_fps(self, max_batch: int) -> float | None:
        """The most inferred frames per second one engine delivers, at the best batch size in 1..max_batch."""
        line = self._line()
        if line is None:
            return None
        best = None
        for b in range(1, max(1, max_batch) + 1):
            ms = self.estimate(b, line)
            if ms is not None and ms > 0:
                fps = b * 1000.0 / ms
                best = fps if best is None or fps > best else best
        return best

    def table(self, max_batch: int) -> list[tuple[int, float | None, bool]]:
        """(size, ms, measured) for sizes 1..max_batch (measured: on real batches, or in warm-up before any)."""
        points = self._points()
        return [(b, self.estimate(b), bool(b <= self.max_size and not np.isnan(points[b])))
                for b in range(1, max_batch + 1)]


def target_fps(cfg: CameraConfig, measured_rate: float | None = None) -> float:
    """Inferred frames per second `cfg` asks for (see the module docstring)."""
    if cfg.target_fps is not None:
        return cfg.target_fps
    rate = cfg.frame_rate or measured_rate or ASSUMED_FPS
    return rate / cfg.infer_interval


@dataclass(frozen=True, slots=True)
class Headroom:
    capacity_fps: float | None  # None until a batch was measured (or the engine's warm-up timed)
    demand_fps: float  # every camera at its full target
    headroom_fps: float | None
    source: str | None = None  # BatchCost.source: "batches" or "warm-up"


def headroom(capacity: float | None, targets: Sequence[float], source: str | None = None) -> Headroom:
    demand = float(sum(targets))
    return Headroom(capacity, demand, None if capacity is None else capacity - demand, source)


def admission(capacity: float | None, targets: Sequence[float], new: Sequence[tuple[str, float]]) -> str | None:
    """Why adding the cameras `new` ((name, target fps)) to running ones of `targets` is refused, or None.

    Unknown capacity (no batch measured yet) admits: only a measurement may refuse.
    """
    if capacity is None or not new:
        return None
    h = headroom(capacity, targets)
    extra = sum(t for _, t in new)
    if h.demand_fps + extra <= capacity:
        return None
    names = ", ".join(f"{n} ({t:.1f} fps)" for n, t in new)
    return (f"not enough measured capacity for {names}: the running cameras ask {h.demand_fps:.1f} inferred "
            f"frames/s at their full target, the engine delivers {capacity:.1f} (headroom "
            f"{max(h.headroom_fps or 0.0, 0.0):.1f}, {extra:.1f} needed); add it anyway with ?force=1 (cameras "
            "are then degraded by priority), lower its target_fps or raise its infer_interval")


def allocate(capacity: float, cams: Sequence[tuple[str, str, float]]) -> dict[str, int]:
    """Effective-interval multiplier per camera ((name, priority, demand fps)): high first, then normal, low.

    A priority group whose demand does not fit what is left is slowed down alike (the multiplier that makes
    it fit); later groups share what remains (at least 1 / MAX_MULTIPLIER of their demand).
    """
    left = capacity * SAFETY
    out: dict[str, int] = {}
    for prio in ("high", "normal", "low"):
        group = [(n, d) for n, p, d in cams if p == prio]
        need = sum(d for _, d in group)
        if not group:
            continue
        if need <= left:
            k = 1
        else:
            k = min(MAX_MULTIPLIER, max(1, math.ceil(need / max(left, 1e-9))))
        for n, _ in group:
            out[n] = k
        left = max(0.0, left - need / k)
    return out


class Priorities:
    """Recomputes the multipliers every `period_s` from the measured capacity and the cameras' demand.

    Demand under motion gating is what the detector really ran lately (target x the share of frames not
    gated), so quiet cameras leave room to busy ones. Logs each camera's change once.
    """

    def __init__(self, period_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = period_s
        self.clock = clock
        self.multiplier: dict[str, int] = {}
        self.next_t = clock() + period_s
        self._last_counts: dict[str, tuple[int, int, int]] = {}

    def due(self) -> bool:
        return self.clock() >= self.next_t

    def update(self, capacity: float | None, cams: Sequence[tuple[str, str, float, int, int, int]]
               ) -> dict[str, int]:
        """`cams`: (name, priority, target fps, processed, gated, dropped) counters now. Returns the multipliers.

        Multipliers go up only while the pipeline is seen not to keep up (a camera dropped frames since the
        last round: its slot got a newer frame before a batch took the last one) and the measured capacity is
        short of the demand; they come down as the capacity allows, with hysteresis.
        """
        self.next_t = self.clock() + self.period_s
        demand = []
        behind = False
        for name, prio, target, processed, gated, dropped in cams:
            p0, g0, d0 = self._last_counts.get(name, (processed, gated, dropped))
            dp, dg = processed - p0, gated - g0
            behind |= dropped > d0
            share = 1.0 - (dg / dp if dp > 0 else 0.0)
            demand.append((name, prio, target * max(share, 0.05)))
            self._last_counts[name] = (processed, gated, dropped)
        names = {c[0] for c in cams}
        self._last_counts = {n: v for n, v in self._last_counts.items() if n in names}
        if capacity is None or len({c[1] for c in cams}) <= 1:
            # One priority for every camera: there is no one to favour, so nobody's interval grows; under
            # overload every camera keeps dropping its stale frames alike, as the batcher always did.
            new = {n: 1 for n in names}
        else:
            new = allocate(capacity, demand)
            # Hysteresis: a multiplier goes down only as far as 15% less capacity would still allow, so a
            # noisy measurement does not flap it up and down.
            cautious = allocate(capacity * (1 - HYSTERESIS), demand)
            for n, k in new.items():
                old = self.multiplier.get(n, 1)
                if k < old:
                    new[n] = max(k, min(old, cautious[n]))
                elif k > old and not behind:  # keeping up: no reason to slow anyone down
                    new[n] = old
        for name, k in new.items():
            old = self.multiplier.get(name, 1)
            if k != old:
                log.warning("camera %s: effective infer_interval x%d (was x%d): %s", name, k, old,
                            "overload, lower priority cameras first" if k > old else "load fell")
        self.multiplier = new
        return new
