"""Output sinks behind one base class, each fed by its own thread so a slow or failing sink never blocks
inference. `SinkRunner` owns the threads; `build_sinks` makes the configured ones."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rtsp_worker.sinks.throttle import ErrorThrottle
from rtsp_worker.types import Event, FrameResult

if TYPE_CHECKING:
    from rtsp_worker.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SinkCounters:
    """What a sink counts itself (its own buffer, its own handled errors); `Sink.counters()` returns it."""

    dropped: int = 0  # entries its own buffer let go (a backend down for long)
    failed: int = 0  # entries the backend refused or a failed write lost (disk full, Redis error reply)
    errors: int = 0  # failed write operations the sink handled itself
    buffered: int | None = None  # entries held while its backend is down; None: the sink has no buffer
    delivered: int | None = None  # entries its backend acknowledged (MQTT PUBACK, webhook 2xx); None: not counted


@dataclass(frozen=True, slots=True)
class SinkStatus:
    """One sink's counters: the runner's (queue, writes that raised) and the sink's own, in one place."""

    name: str
    written: int  # results handed to `write` that returned
    queue_dropped: int  # results dropped because its queue was full (the sink is too slow)
    write_failed: int  # results of batches whose `write` raised, plus what the sink counts as failed
    buffer_dropped: int  # results its own buffer let go
    errors: int  # failed writes: raised out of `write`, or handled (and counted) inside it
    buffered: int | None  # held while its backend is down; None: no buffer
    delivered: int | None = None  # acknowledged by its backend; None: the sink does not count it

    @property
    def lost(self) -> int:
        """Every result this sink lost, wherever."""
        return self.queue_dropped + self.write_failed + self.buffer_dropped


class Sink:
    """Receives the results of one batch at a time, on its own thread (`SinkRunner`).

    Subclasses set `name` and `wants_images` and implement `write`; the other methods are no-ops here.
    """

    name: str = "sink"
    wants_images: bool = False  # True: FrameResult.image must carry the frame's pixels

    def write(self, results: Sequence[FrameResult]) -> None:
        raise NotImplementedError

    def write_events(self, events: Sequence[Event]) -> None:
        """The line crossings and zone enter/exit of one batch, in order, just before `write` gets its frames."""

    def close_camera(self, camera: str) -> None:
        """Flush and close one camera's outputs (the camera was removed)."""

    def reopen(self) -> None:
        """Reopen output files after external rotation (SIGUSR1); called from a signal handler."""

    def counters(self) -> SinkCounters:
        return SinkCounters()

    def close(self) -> None:
        """Flush and close everything (after the last write)."""


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


@dataclass(frozen=True, slots=True)
class _Events:
    """Queued events without a frame: the sink's `write_events` gets them alone."""

    events: tuple[Event, ...]


class SinkRunner:
    """One thread and one bounded queue per sink; a full queue drops the batch for that sink and counts it."""

    def __init__(self, sinks: Sequence[Sink], queue_size: int = 256, image_queue_size: int = 8) -> None:
        self.sinks = list(sinks)
        # Per sink, by position: results written, dropped at a full queue, lost to a write that raised, and
        # the writes that raised. Each list is written by one thread (submit, or that sink's own thread).
        self._written = [0] * len(self.sinks)
        self._dropped = [0] * len(self.sinks)
        self._failed = [0] * len(self.sinks)
        self._errors = [0] * len(self.sinks)
        # Batches that carry full frames are big (16 x 1080p = 100 MB): a slow image sink may hold few.
        self.bounds = [image_queue_size if s.wants_images else queue_size for s in self.sinks]
        # Unbounded queues with the bound enforced in `submit` (the only producer): the end marker that
        # `close` puts can then never block behind a stuck sink.
        self._queues: list[queue.Queue] = [queue.Queue() for _ in self.sinks]
        self._threads = [
            threading.Thread(target=self._loop, args=(i, s, q), name=f"sink-{s.name}", daemon=True)
            for i, (s, q) in enumerate(zip(self.sinks, self._queues))
        ]
        self._throttle = ErrorThrottle(log)
        for t in self._threads:
            t.start()

    def status(self) -> tuple[SinkStatus, ...]:
        out = []
        for i, sink in enumerate(self.sinks):
            c = sink.counters()
            out.append(SinkStatus(sink.name, self._written[i], self._dropped[i], self._failed[i] + c.failed,
                                  c.dropped, self._errors[i] + c.errors, c.buffered, c.delivered))
        return tuple(out)

    def sink_status(self, name: str) -> SinkStatus:
        return next(s for s in self.status() if s.name == name)

    def reopen(self) -> None:
        """Ask every sink that writes files to reopen them (SIGUSR1; safe from a signal handler)."""
        for s in self.sinks:
            s.reopen()

    @property
    def wants_images(self) -> bool:
        return any(s.wants_images for s in self.sinks)

    def submit(self, results: Sequence[FrameResult]) -> None:
        for i, (sink, q, bound) in enumerate(zip(self.sinks, self._queues, self.bounds)):
            if q.qsize() < bound:
                q.put_nowait(results)
            else:
                self._dropped[i] += len(results)
                if self._dropped[i] == len(results):
                    log.warning("sink %s is too slow: dropping results (counted)", sink.name)

    def submit_events(self, events: Sequence[Event]) -> None:
        """Events that belong to no frame (a finalized clip's record), in order with the results; like
        `submit`, called only by the one producer. Never dropped (they are few)."""
        if events:
            for q in self._queues:
                q.put_nowait(_Events(tuple(events)))

    def close_camera(self, camera: str) -> threading.Event:
        """After every result already submitted, each sink closes `camera`'s outputs; the event is set when
        all have. Called by the only producer (the inference thread), so nothing of that camera follows."""
        marker = _CloseCamera(camera, len(self.sinks))
        if not self.sinks:
            marker.done.set()
        for q in self._queues:
            q.put_nowait(marker)  # never dropped: unbounded underneath, like the end marker
        return marker.done

    def _loop(self, i: int, sink: Sink, q: queue.Queue) -> None:
        while True:
            item = q.get()
            if item is None:
                break
            if isinstance(item, _CloseCamera):
                try:
                    sink.close_camera(item.camera)
                except Exception as e:  # noqa: BLE001 - one camera's file must not stop the sink
                    log.error("sink %s: closing camera %s failed: %s", sink.name, item.camera, e)
                finally:
                    item.finished()
                continue
            if isinstance(item, _Events):
                try:
                    sink.write_events(item.events)
                except Exception as e:  # noqa: BLE001 - a failing sink must not take the worker down
                    self._errors[i] += 1
                    self._throttle.error(f"sink {sink.name}: write failed, events dropped: {e}")
                continue
            try:
                events = [e for r in item for e in r.events]
                if events:
                    sink.write_events(events)
                sink.write(item)
                self._written[i] += len(item)
            except Exception as e:  # noqa: BLE001 - a failing sink must not take the worker down
                self._errors[i] += 1
                self._failed[i] += len(item)  # a batch that raised is counted as lost
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


def build_sinks(cfg: Config) -> list[Sink]:
    """The sinks `cfg.output` asks for; each backend is imported only when configured."""
    out = cfg.output
    sinks: list[Sink] = []
    if out.jsonl:
        from rtsp_worker.sinks.jsonl import JsonlSink

        sinks.append(JsonlSink(out.dir, max_bytes=out.jsonl_max_bytes, backups=out.jsonl_backups))
    if out.video:
        from rtsp_worker.sinks.video import VideoSink

        sinks.append(VideoSink(out.dir, fps=out.video_fps, cameras=cfg.enabled_cameras))
    if out.redis is not None:
        from rtsp_worker.sinks.redis import RedisSink

        sinks.append(RedisSink(out.redis))
    if out.mqtt is not None:
        from rtsp_worker.sinks.mqtt import MqttSink

        sinks.append(MqttSink(out.mqtt))
    if out.webhooks:
        from rtsp_worker.sinks.webhook import WebhookSink

        sinks.extend(WebhookSink(w, i) for i, w in enumerate(out.webhooks))
    return sinks
