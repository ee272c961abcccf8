"""Stacks the newest frame of every camera that has a fresh one into a batch.

It waits for the first fresh frame, then at most `max_wait` for more, and never for a camera that is
not streaming: one dead or slow camera cannot stall the others.
"""

from __future__ import annotations

import threading
import time

from rtsp_worker.sources.state import CameraState, CameraStats, FrameSlot
from rtsp_worker.types import Batch


class Batcher:
    def __init__(
        self,
        slots: list[FrameSlot],
        stats: list[CameraStats],
        cond: threading.Condition,
        max_batch: int,
        max_wait_s: float,
    ) -> None:
        self.slots = slots
        self.stats = stats
        self.cond = cond
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.ranks: list[int] = []  # priority rank per slot (0 high, 1 normal, 2 low); set by the pipeline

    def _fresh(self) -> list[int]:
        return [i for i, s in enumerate(self.slots) if s.peek() is not None]

    def target(self) -> int:
        """How many fresh cameras a batch waits for (at most `max_wait`): the streaming ones, up to max_batch."""
        live = sum(1 for s in self.stats if s.state == CameraState.STREAMING)
        return max(1, min(self.max_batch, live))

    def next_batch(self, stop: threading.Event, timeout: float = 0.5) -> Batch | None:
        """A batch, or None when nothing arrived within `timeout` (or `stop` was set and nothing is left)."""
        with self.cond:
            deadline = time.monotonic() + timeout
            while not self._fresh():
                left = deadline - time.monotonic()
                if left <= 0 or stop.is_set():
                    return None
                self.cond.wait(min(left, 0.1))
            fill_deadline = time.monotonic() + self.max_wait_s
            while len(self._fresh()) < self.target() and not stop.is_set():
                left = fill_deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            fresh = self._fresh()
            # More fresh cameras than fit: high priority first, then the ones that waited longest.
            ranks = self.ranks if len(self.ranks) == len(self.slots) else [1] * len(self.slots)
            fresh.sort(key=lambda i: (ranks[i], self.slots[i].peek().ts))  # type: ignore[union-attr]
            frames = [self.slots[i].take() for i in fresh[: self.max_batch]]
        return Batch(frames=tuple(f for f in frames if f is not None))
