"""The live set of cameras: each camera's runtime (source thread, slot, stats, tracker row) and changes to it.

Every camera owns one batch row (its tracker row), which is `Frame.row`. A removed camera's row is reset and reused by
the next camera added, so add/remove cycles never grow the tracker. The inference thread reads the set on
every batch; every change to it runs on that thread between two batches (`call`), after the batch in flight
has been finished, so no batch ever sees half a change and the tracker is never touched by two threads.
What may block (stopping a camera thread, waiting for its outputs to close) runs on the caller's thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rtsp_worker.config import CameraConfig, SourceOptions, mask_url
from rtsp_worker.sources.state import CameraStats, FrameSlot, Source, SourceFactory
from rtsp_worker.tracking.tracker import IouTracker

log = logging.getLogger(__name__)

# Fields whose change needs a new connection (a new source thread); any other camera field is applied live.
RECONNECT_FIELDS = frozenset({"url", "decoder", "realtime", "loop"})
CHANGE_TIMEOUT_S = 30.0  # bound on waiting for the inference thread to apply a change


class CapacityError(ValueError):
    """Not enough measured capacity for a camera at its full target rate (rtsp_worker/capacity.py)."""


@dataclass(eq=False)
class LiveCamera:
    """One running camera."""

    cfg: CameraConfig
    row: int  # batch row and tracker row (`Frame.row`)
    stats: CameraStats
    slot: FrameSlot
    stop: threading.Event  # this camera's own stop (the pipeline's stop sets every camera's)
    source: Source


@dataclass(frozen=True, slots=True)
class CameraView:
    """The live cameras in order, as one consistent snapshot (a list of configs and their stats)."""

    cameras: tuple[CameraConfig, ...] = ()
    stats: tuple[CameraStats, ...] = ()
    slots: tuple[FrameSlot, ...] = ()
    sources: tuple[Source, ...] = ()
    rows: tuple[int, ...] = ()


@dataclass(eq=False)
class _Change:
    fn: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


def describe_change(old: CameraConfig, new: CameraConfig) -> list[str]:
    """`field old -> new` for every field that differs (URLs masked)."""
    out = []
    for name in type(new).model_fields:
        a, b = getattr(old, name), getattr(new, name)
        if a != b:
            if name == "url":
                a, b = mask_url(a), mask_url(b)
            out.append(f"{name} {a} -> {b}")
    return out


class CameraSet:
    """The cameras of one pipeline; `add`, `remove` and `update` may be called from any thread but the
    inference thread, one change at a time.

    `source_factory` makes each camera's source thread (`CameraSource` in the worker, a fake in unit tests).
    `on_detach(name)`, called on the inference thread when a camera is removed, returns an event set once
    its outputs are closed (the pipeline closes the camera's sink outputs), or None.
    """

    def __init__(
        self,
        cameras: Sequence[CameraConfig],
        options: SourceOptions,
        cond: threading.Condition,
        device: torch.device,
        tracker: IouTracker,
        capacity: int,
        stop_event: threading.Event,
        source_factory: SourceFactory,
        on_detach: Callable[[str], threading.Event | None] | None = None,
    ) -> None:
        self.options = options
        self.source_factory = source_factory
        self.on_detach = on_detach
        self.cond = cond
        self.device = device
        self.tracker = tracker
        self.capacity = capacity
        self.stop_event = stop_event
        self.by_row: list[LiveCamera | None] = []  # indexed by Frame.row: the hot path's lookup
        self._free: list[int] = []
        self._live: dict[str, LiveCamera] = {}
        self.view = CameraView()
        # Called on the inference thread after every change with (event, camera name); event is one of
        # "added", "removed", "updated", "reconnected".
        self.listeners: list[Callable[[str, str], None]] = []
        self._lock = threading.Lock()  # one change at a time
        # Removed cameras whose source thread did not end within its timeouts (left behind, counted).
        self.lingering_sources = 0
        self._linger_lock = threading.Lock()
        self._qlock = threading.Lock()
        self._pending: list[_Change] = []
        self._loop_active = False
        self._started = False
        if len(cameras) > capacity:
            log.info("%d cameras and batches of at most %d: batches take turns (the engine runs bigger ones in "
                     "chunks)", len(cameras), capacity)
        for cam in cameras:
            self._attach(cam)
        self._publish()

    # -- reading ----------------------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self._live

    def get(self, name: str) -> LiveCamera | None:
        return self._live.get(name)

    def configs(self) -> dict[str, CameraConfig]:
        return {name: cam.cfg for name, cam in self._live.items()}

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        self._started = True
        for cam in self._live.values():
            cam.source.start()

    def stop_all(self) -> None:
        for cam in list(self._live.values()):
            cam.stop.set()

    def loop_started(self) -> None:
        with self._qlock:
            self._loop_active = True

    def loop_ended(self) -> None:
        """The inference loop is gone: changes still waiting are refused."""
        with self._qlock:
            self._loop_active = False
            pending, self._pending = self._pending, []
        for ch in pending:
            ch.error = RuntimeError("the worker is stopping")
            ch.done.set()

    def run_pending(self) -> None:
        """Inference thread, between two batches: apply the waiting changes."""
        with self._qlock:
            pending, self._pending = self._pending, []
        for ch in pending:
            try:
                ch.result = ch.fn()
            except Exception as e:  # noqa: BLE001 - handed to the caller
                ch.error = e
            ch.done.set()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the inference thread between two batches (at once when no inference loop runs)."""
        with self._qlock:
            if self.stop_event.is_set():
                raise RuntimeError("the worker is stopping")
            if not self._loop_active:
                return fn()
            ch = _Change(fn)
            self._pending.append(ch)
        with self.cond:
            self.cond.notify_all()
        if not ch.done.wait(CHANGE_TIMEOUT_S):
            raise RuntimeError(f"the inference thread did not apply the change within {CHANGE_TIMEOUT_S:.0f} s")
        if ch.error is not None:
            raise ch.error
        return ch.result

    # -- changes ----------------------------------------------------------------------------------------
    def add(self, cfg: CameraConfig) -> None:
        """Start a new camera; ValueError for a name that is taken. The engine's batch size never limits the
        camera count (bigger batches run in chunks); the pipeline checks measured headroom before."""
        with self._lock:
            if cfg.name in self._live:
                raise ValueError(f"camera {cfg.name!r} exists already")
            self.call(lambda: self._attach(cfg, start=True, publish="added"))
        log.info("camera %s added (%s, decoder %s, infer_interval %d)", cfg.name, mask_url(cfg.url), cfg.decoder,
                 cfg.infer_interval)

    def remove(self, name: str, join_timeout: float | None = None) -> int:
        """Stop a camera, finish its results, flush and close its outputs. Returns its final `processed`."""
        with self._lock:
            cam = self._live.get(name)
            if cam is None:
                raise KeyError(name)
            cam.stop.set()  # the thread winds down while the inference thread detaches the camera
            closed = self.call(lambda: self._detach(cam))
            if closed is not None and not closed.wait(CHANGE_TIMEOUT_S):
                log.error("camera %s: outputs did not close within %.0f s", name, CHANGE_TIMEOUT_S)
        # Detached: nothing of it reaches the batches or the outputs any more. Its source may still be in a
        # connect or a read (up to its timeouts): it closes in the background, counted if it lingers.
        self._join_later(cam, join_timeout)
        log.info("camera %s removed: processed=%d decoded=%d dropped=%d reconnects=%d; its tracks ended, its "
                 "outputs are flushed and closed", name, cam.stats.processed, cam.stats.decoded, cam.stats.dropped,
                 cam.stats.reconnects)
        return cam.stats.processed

    def update(self, cfg: CameraConfig) -> list[str]:
        """Apply a camera's new config; returns what changed (empty: nothing did).

        A new URL, decoder or file playback mode reconnects (a new source thread, frame numbers going on;
        a new URL also ends the camera's tracks: it shows another scene). Any other change (infer_interval)
        applies between two batches and keeps the connection and the track ids.
        """
        with self._lock:
            cam = self._live.get(cfg.name)
            if cam is None:
                raise KeyError(cfg.name)
            changes = describe_change(cam.cfg, cfg)
            if not changes:
                return []
            changed = {n for n in type(cfg).model_fields if getattr(cam.cfg, n) != getattr(cfg, n)}
            if changed & RECONNECT_FIELDS:
                cam.stop.set()
                self._join(cam, None)
                self.call(lambda: self._replace(cam, cfg, reset_tracks="url" in changed))
                event = "reconnecting"
            else:
                self.call(lambda: self._edit(cam, cfg))
                event = "updated"
        log.info("camera %s %s: %s", cfg.name, event, "; ".join(changes))
        return changes

    # -- on the inference thread ------------------------------------------------------------------------
    def _attach(self, cfg: CameraConfig, start: bool = False, publish: str | None = None) -> None:
        if self._free:
            row = self._free.pop()
            self.tracker.reset_camera(row)
        else:
            row = len(self.by_row)
            if row >= self.tracker.num_cameras:
                self.tracker.add_cameras(row + 1 - self.tracker.num_cameras)
            self.by_row.append(None)
        cam = self._new(cfg, row, CameraStats())
        self.by_row[row] = cam
        self._live[cfg.name] = cam
        if publish:
            self._publish(publish, cfg.name)
        if start and self._started:
            cam.source.start()

    def _new(self, cfg: CameraConfig, row: int, stats: CameraStats, first_seq: int = 0) -> LiveCamera:
        slot = FrameSlot(self.cond, stats)
        stop = threading.Event()
        if self.stop_event.is_set():
            stop.set()
        source = self.source_factory(row, cfg, self.options, slot, stats, stop, self.device, first_seq=first_seq)
        return LiveCamera(cfg, row, stats, slot, stop, source)

    def _detach(self, cam: LiveCamera) -> threading.Event | None:
        del self._live[cam.cfg.name]
        self.by_row[cam.row] = None
        with self.cond:
            cam.slot.take()  # a frame decoded but not batched yet: never reaches the outputs, never counted
        self.tracker.reset_camera(cam.row)
        self._free.append(cam.row)
        self._publish("removed", cam.cfg.name)
        # Every result of this camera was handed to the sinks before this (the batch in flight is finished
        # first): the close marker queues behind them.
        return self.on_detach(cam.cfg.name) if self.on_detach is not None else None

    def _replace(self, old: LiveCamera, cfg: CameraConfig, reset_tracks: bool) -> None:
        with self.cond:
            if old.slot.take() is not None:
                old.stats.dropped += 1  # the old connection's last frame: a counted drop, like any other
        cam = self._new(cfg, old.row, old.stats, first_seq=old.source.next_seq)
        cam.stats.reconnects += 1
        if reset_tracks:
            self.tracker.reset_camera(old.row)
        self.by_row[old.row] = cam
        self._live[cfg.name] = cam
        self._publish("reconnected", cfg.name)
        if self._started:
            cam.source.start()

    def _edit(self, cam: LiveCamera, cfg: CameraConfig) -> None:
        cam.cfg = cfg
        cam.source.cfg = cfg  # only fields the thread reads per frame or per connection differ (not url)
        self._publish("updated", cfg.name)

    def _publish(self, event: str | None = None, name: str = "") -> None:
        cams = list(self._live.values())
        self.view = CameraView(tuple(c.cfg for c in cams), tuple(c.stats for c in cams), tuple(c.slot for c in cams),
                               tuple(c.source for c in cams), tuple(c.row for c in cams))
        if event is not None:
            for listener in list(self.listeners):
                listener(event, name)

    def _join_later(self, cam: LiveCamera, timeout: float | None) -> None:
        if not cam.source.is_alive():
            return

        def join() -> None:
            if not self._join(cam, timeout):
                with self._linger_lock:
                    self.lingering_sources += 1

        threading.Thread(target=join, name=f"close-{cam.cfg.name}", daemon=True).start()

    def _join(self, cam: LiveCamera, timeout: float | None) -> bool:
        # A connect or read in progress ends within its own timeouts; beyond that the thread is left
        # behind (a daemon writing into a slot nobody reads).
        if timeout is None:
            timeout = self.options.open_timeout_s + self.options.read_timeout_s + 2.0
        if cam.source.is_alive():
            cam.source.join(timeout)
        if cam.source.is_alive():
            log.warning("camera %s: thread did not stop within %.0f s; leaving it", cam.cfg.name, timeout)
            return False
        return True
