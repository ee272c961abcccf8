"""Which frames of a batch run the detector: each camera's infer_interval, stretched under overload by its
priority multiplier (capacity.py's `Priorities`), then the motion gate (detection/motion_gate.py). Also the
measured capacity the admission of new cameras is checked against (docs/motion-and-capacity.md).

`Scheduler` holds the gate, the engine's measured `BatchCost` and the multipliers by row; the pipeline
calls `plan` on the inference thread, `observe` after each batch and `cameras_changed` between batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import torch

from rtsp_worker.batcher import Batcher
from rtsp_worker.camera_set import CameraSet, CapacityError
from rtsp_worker.capacity import (
    PRIORITY_RANK,
    BatchCost,
    Headroom,
    Priorities,
    admission,
    headroom,
    target_fps,
)
from rtsp_worker.config import CameraConfig
from rtsp_worker.detection.motion_gate import MotionGate
from rtsp_worker.status import BatchReport
from rtsp_worker.types import Frame

log = logging.getLogger(__name__)
Measured = Callable[[], dict[str, "float | None"]]  # each running camera's measured stream rate, by name


def slowed_period(k: int, interval: int, target: float) -> tuple[float, float] | None:
    """(stream seconds between the inferred frames, half a frame) of a camera slowed to x `k`; None at x1."""
    if k <= 1 or target <= 0:
        return None
    return k / target, 0.5 / (target * interval)


def clock_went_back(t: float, next_t: float, period: float) -> bool:
    """A frame at `t` far before its schedule's next time `next_t`: the stream's clock went back (a file that
    started over); the schedule starts again from it."""
    return t < next_t - 2 * period


def interval_due(seq: int, t: float, interval: int, slowed: tuple[float, float] | None,
                 next_t: float | None) -> bool:
    """Whether frame `seq` (stream time `t`) of a camera runs the detector before the motion gate has its say.

    At its target (`slowed` None): every `interval`-th frame, as always. Slowed down under overload: the first
    frame at its schedule's next time `next_t` (half a frame early is on time), so that it gets target / k. Not
    by frame number: an overloaded pipeline takes only some of the frames, and `seq % (interval * k)` would hit
    fewer still. A clock that went back (a file that started over) is due at once.
    """
    if slowed is None:
        return seq % interval == 0
    period, half_frame = slowed
    return next_t is None or t >= next_t - half_frame or clock_went_back(t, next_t, period)


def next_due(next_t: float | None, t: float, period: float) -> float:
    """The schedule's next time after a frame inferred at `t`: one period on, so a late frame is caught up by
    the next one, but never sooner than half a period after `t` (no burst after a long gap)."""
    if next_t is None or clock_went_back(t, next_t, period):
        return t + period
    return max(next_t + period, t + period / 2)


class Scheduler:
    """The motion gate, priorities under overload and the measured capacity of one pipeline's cameras."""

    def __init__(self, camset: CameraSet, batcher: Batcher, device: torch.device, measured: Measured,
                 warmup_ms: Mapping[int, float]) -> None:
        self.camset = camset
        self.batcher = batcher
        self.measured = measured
        self.gate = MotionGate(device)  # between the batcher and the step, on the work device
        self.cost = BatchCost()
        self.cost.seed(warmup_ms)  # the engine's warm-up runs at load: the estimate until the first batch
        if self.cost.source == "warm-up":
            log.info("engine warm-up: %s; about %.1f inferred frames/s until real batches are measured",
                     ", ".join(f"batch {b} in {ms:.1f} ms" for b, ms in sorted(warmup_ms.items())),
                     self.capacity_fps() or 0.0)
        self.priorities = Priorities()
        self._multiplier: dict[int, int] = {}  # by row, read on the hot path
        # Rows slowed down (multiplier > 1): their `slowed_period`, and the stream time each is due next.
        self._period: dict[int, tuple[float, float]] = {}
        self._next: dict[int, float] = {}
        self._configure()

    def plan(self, frames: Sequence[Frame]) -> tuple[list[bool], list[bool] | None]:
        """The frames to infer and, when any, the still ones (the tracker holds their tracks); counts the
        gated frames and the motion on each camera's stats."""
        by_row = self.camset.by_row
        if self.priorities.due():
            self._reprioritize()
        period, nxt = self._period, self._next
        times = [f.stream_time for f in frames]
        due = [interval_due(f.seq, t, by_row[f.row].cfg.infer_interval,  # type: ignore[union-attr]
                            period.get(f.row), nxt.get(f.row)) for f, t in zip(frames, times)]
        decision = self.gate(frames, due)
        for f, t, inferred, gated, moving in zip(frames, times, decision.due, decision.gated, decision.motion):
            st = by_row[f.row].stats  # type: ignore[union-attr]
            st.gated += gated
            st.motion = moving
            st.inferred += inferred
            if inferred and f.row in period:
                nxt[f.row] = next_due(nxt.get(f.row), t, period[f.row][0])
        return decision.due, decision.still if any(decision.still) else None

    def observe(self, r: BatchReport) -> None:
        # The engine's cost per batch size (its half of the step: preprocess + engine), what limits the box.
        self.cost.observe(r.inferred, r.preprocess_ms + r.infer_ms)

    def capacity_fps(self) -> float | None:
        return self.cost.capacity_fps(self.batcher.max_batch)

    def targets(self, measured: dict[str, float | None] | None = None) -> dict[str, float]:
        """Each running camera's full target rate (inferred frames/s), with the measured stream rate."""
        measured = self.measured() if measured is None else measured
        return {c.name: target_fps(c, measured.get(c.name)) for c in self.camset.view.cameras}

    def headroom(self, measured: dict[str, float | None] | None = None) -> Headroom:
        return headroom(self.capacity_fps(), list(self.targets(measured).values()), self.cost.source)

    def check_headroom(self, new: list[CameraConfig], leaving: tuple[str, ...] = ()) -> None:
        """Raise CapacityError when the running cameras (less `leaving`) plus `new` exceed the capacity measured
        on real batches (the warm-up estimate never refuses)."""
        running = {n: t for n, t in self.targets().items() if n not in leaving and n not in {c.name for c in new}}
        capacity = self.capacity_fps() if self.cost.known else None
        why = admission(capacity, list(running.values()), [(c.name, target_fps(c)) for c in new])
        if why is not None:
            raise CapacityError(why)

    def multiplier(self, row: int) -> int:
        return self._multiplier.get(row, 1)

    def cameras_changed(self, event: str, name: str) -> None:
        """Between batches: the gate and the batcher's ranks follow the cameras."""
        self._configure()
        cam = self.camset.get(name)
        if cam is not None and event in ("added", "reconnected"):  # another scene: a new background
            self.gate.reset(cam.row)
            self._next.pop(cam.row, None)  # and a new stream clock

    def _configure(self) -> None:
        for row, cam in enumerate(self.camset.by_row):
            self.gate.configure(row, cam.cfg.motion if cam is not None else None)
        self.batcher.ranks = [PRIORITY_RANK[c.priority] for c in self.camset.view.cameras]

    def _reprioritize(self) -> None:
        view = self.camset.view
        targets = self.targets()
        cams = [(c.name, c.priority, targets[c.name], st.processed, st.gated, st.dropped)
                for c, st in zip(view.cameras, view.stats)]
        by_name = self.priorities.update(self.capacity_fps(), cams)
        self._multiplier = {row: by_name.get(c.name, 1) for c, row in zip(view.cameras, view.rows)}
        self._period = {row: p for c, row in zip(view.cameras, view.rows)
                        if (p := slowed_period(self._multiplier[row], c.infer_interval, targets[c.name])) is not None}
        self._next = {row: t for row, t in self._next.items() if row in self._period}  # back to x1: schedule ends
