"""Output sinks behind one protocol, each fed by its own thread so a slow or failing sink never blocks
inference. `SinkRunner` owns the threads; `build_sinks` makes the configured ones."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from rtsp_worker.sinks.throttle import ErrorThrottle
from rtsp_worker.types import Event, FrameResult

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Receives the results of one batch at a time, on its own thread."""

    name: str
    wants_images: bool  # True: FrameResult.image must carry the frame's pixels

    def write(self, results: Sequence[FrameResult]) -> None: ...

    def close(self) -> None: ...

    # Optional, read with getattr: `failed` (entries the backend refused or a write lost: disk full, Redis
    # error reply), `errors` (failed write operations the sink handled itself), `dropped` (entries its own
    # buffer let go), `delivered` (entries the backend acknowledged: MQTT, webhooks), `reopen()` (reopen files
    # after external rotation, SIGUSR1).

    # Optional: `close_camera(name)` flushes and closes one camera's outputs (the camera was removed).


class _CloseCamera:
    """Queued behind a removed camera's last results: the sink closes that camera's outputs."""

    def __init__(self, camera: str, pending: int) -> None:
        self.camera = camera
        self.left = pending
        self.lock = threading.Lock()
        self.done = threading.Event()

    def finished(self) -> None:
        with self.lock:
            self.left -= 1
            if self.left <= 0:
                self.done.set()


class EventSink(Sink, Protocol):
    """A sink that also records events (line crossings, zone enter/exit): `write_events` gets those of one
    batch, in order, just before `write` gets its frames. A sink without the method ignores events."""

    def write_events(self, events: Sequence[Event]) -> None: ...


class SinkRunner:
    """One thread and one bounded queue per sink; a full queue drops the batch for that sink and counts it."""

    def __init__(self, sinks: Sequence[Sink], queue_size: int = 256, image_queue_size: int = 8) -> None:
        self.sinks = list(sinks)
        self.dropped = {s.name: 0 for s in self.sinks}
        self.errors = {s.name: 0 for s in self.sinks}
        self.failed = {s.name: 0 for s in self.sinks}  # results of batches whose write raised
        # Batches that carry full frames are big (16 x 1080p = 100 MB): a slow image sink may hold few.
        self.bounds = [image_queue_size if s.wants_images else queue_size for s in self.sinks]
        # Unbounded queues with the bound enforced in `submit` (the only producer): the end marker that
        # `close` puts can then never block behind a stuck sink.
        self._queues: list[queue.Queue] = [queue.Queue() for _ in self.sinks]
        self._threads = [
            threading.Thread(target=self._loop, args=(s, q), name=f"sink-{s.name}", daemon=True)
            for s, q in zip(self.sinks, self._queues)
        ]
        self._throttle = ErrorThrottle(log)
        for t in self._threads:
            t.start()

    def drops(self, name: str) -> int:
        """Entries sink `name` lost: its queue was full, its buffer overflowed, or its writes failed."""
        sink = next(s for s in self.sinks if s.name == name)
        return self.dropped[name] + self.failed[name] + getattr(sink, "dropped", 0) + getattr(sink, "failed", 0)

    def total_drops(self) -> int:
        return sum(self.drops(s.name) for s in self.sinks)

    def error_count(self, name: str) -> int:
        """Failed writes of sink `name`: raised out of `write`, or handled (and counted) inside it."""
        sink = next(s for s in self.sinks if s.name == name)
        return self.errors[name] + getattr(sink, "errors", 0)

    def total_errors(self) -> int:
        return sum(self.error_count(s.name) for s in self.sinks)

    def reopen(self) -> None:
        """Ask every sink that writes files to reopen them (SIGUSR1; safe from a signal handler)."""
        for s in self.sinks:
            if hasattr(s, "reopen"):
                s.reopen()

    @property
    def wants_images(self) -> bool:
        return any(s.wants_images for s in self.sinks)

    def submit(self, results: Sequence[FrameResult]) -> None:
        for sink, q, bound in zip(self.sinks, self._queues, self.bounds):
            if q.qsize() < bound:
                q.put_nowait(results)
            else:
                self.dropped[sink.name] += len(results)
                if self.dropped[sink.name] == len(results):
                    log.warning("sink %s is too slow: dropping results (counted)", sink.name)

    def close_camera(self, camera: str) -> threading.Event:
        """After every result already submitted, each sink closes `camera`'s outputs; the event is set when
        all have. Called by the only producer (the inference thread), so nothing of that camera follows."""
        marker = _CloseCamera(camera, len(self.sinks))
        if not self.sinks:
            marker.done.set()
        for q in self._queues:
            q.put_nowait(marker)  # never dropped: unbounded underneath, like the end marker
        return marker.done

    def _loop(self, sink: Sink, q: queue.Queue) -> None:
        while True:
            item = q.get()
            if item is None:
                break
            if isinstance(item, _CloseCamera):
                try:
                    close = getattr(sink, "close_camera", None)
                    if close is not None:
                        close(item.camera)
                except Exception as e:  # noqa: BLE001 - one camera's file must not stop the sink
                    log.error("sink %s: closing camera %s failed: %s", sink.name, item.camera, e)
                finally:
                    item.finished()
                continue
            try:
                write_events = getattr(sink, "write_events", None)
                if write_events is not None:
                    events = [e for r in item for e in r.events]
                    if events:
                        write_events(events)
                sink.write(item)
            except Exception as e:  # noqa: BLE001 - a failing sink must not take the worker down
                self.errors[sink.name] += 1
                self.failed[sink.name] += len(item)  # a batch that raised is counted as lost
                self._throttle.error(f"sink {sink.name}: write failed, batch dropped: {e}")

    def close(self, timeout: float = 10.0) -> None:
        """Drain every queue, then close every sink; `timeout` bounds the draining of all sinks together."""
        for q in self._queues:
            q.put_nowait(None)  # after what the queue holds: everything submitted is written first
        deadline = time.monotonic() + timeout
        for sink, q, t in zip(self.sinks, self._queues, self._threads):
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                log.error("sink %s did not drain within %.0f s; %d batches left unwritten", sink.name, timeout,
                          q.qsize())
        # After the drain: errors raised while draining are in the summary (flushed earlier, they were lost).
        self._throttle.flush()
        for s, t in zip(self.sinks, self._threads):
            if t.is_alive():
                continue  # still inside write(): closing under it would corrupt its output
            try:
                s.close()
            except Exception as e:  # noqa: BLE001 - one sink failing to close must not keep the others open
                log.error("sink %s: close failed: %s", s.name, e)
