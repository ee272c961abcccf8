"""The pipeline's run loop: batches until stopped, the overlap (finish) thread, the periodic log line and the
bounded drain at the end.

The calling thread is the inference thread: it batches, preprocesses and runs the engine. With
`batcher.overlap` (the default) the finish thread postprocesses, tracks and hands one batch to the sinks while
the next batch is preprocessed and inferred: two batches in flight, in order. Per batch there is one
device-to-host copy (the packed tracks), after which results are split per camera for the sinks.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rtsp_worker.sources.state import CameraState
from rtsp_worker.status import RateMeter

if TYPE_CHECKING:
    from rtsp_worker.pipeline import Pipeline
    from rtsp_worker.step import Inferred

log = logging.getLogger("rtsp_worker.pipeline")  # the name operators know these lines by


class FinishThread:
    """The second half of every step on its own thread, batches in order, at most one waiting.

    An error there calls `on_error` (the pipeline stops) and is raised again in the inference thread.
    """

    def __init__(self, finish: Callable[[Inferred], Any], on_error: Callable[[], None]) -> None:
        self.finish = finish
        self.on_error = on_error
        self.q: queue.Queue[Inferred | None] = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="finish", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (item := self.q.get()) is not None:
            if self.error is None:
                try:
                    self.finish(item)
                except BaseException as e:  # noqa: BLE001 - re-raised in the inference thread
                    self.error = e
                    self.on_error()

    def _raise(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"postprocess/tracker/sinks failed: {self.error!r}") from self.error

    def submit(self, item: Inferred) -> None:
        while True:  # bounded waits, so a dead finisher cannot block the inference thread
            self._raise()
            try:
                self.q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        self.q.put(None)
        self.thread.join()
        self._raise()


def _close_finisher(p: Pipeline) -> None:
    finisher, p.finisher = p.finisher, None
    if finisher is not None:
        finisher.close()  # every batch handed over is finished before anything else happens


def apply_changes(p: Pipeline) -> None:
    """Between two batches: finish the batch in flight, then change the camera set (the next dispatch
    starts a new finish thread)."""
    _close_finisher(p)
    p.camset.run_pending()


def run(p: Pipeline, duration: float | None = None) -> None:
    """Process batches until stopped (or `duration` seconds), then drain and close the sinks."""
    if not p.started:
        p.start()
    end = None if duration is None else time.monotonic() + duration
    reporter = PeriodicLog(p, p.cfg.log_interval)
    p.camset.loop_started()
    try:
        while not p.stop_event.is_set():
            if end is not None and time.monotonic() >= end:
                break
            if p.camset.pending:
                apply_changes(p)
            stats = p.camset.view.stats
            if stats and all(st.state is CameraState.DISABLED for st in stats):
                p.failure = "every camera is disabled (source.max_failures reached); nothing to do"
                log.error("%s: stopping", p.failure)
                break
            batch = p.batcher.next_batch(p.stop_event, timeout=0.2)
            if batch is not None and len(batch):
                p.dispatch(batch)
            now = p.loop_ts = time.monotonic()
            for source in p.camset.view.sources:  # stall watchdog: a few comparisons per camera
                source.check_stall(now)
            reporter.maybe_log()
    finally:
        p.camset.loop_ended()
        shutdown(p, reporter)


def shutdown(p: Pipeline, reporter: PeriodicLog | None = None, join_timeout: float = 5.0) -> None:
    """Stop the cameras, process what they decoded, drain and close the sinks: bounded in time.

    A camera blocked in a connect or read past `join_timeout` (all cameras together) is left behind:
    its thread is a daemon and holds nothing the outputs need.
    """
    p.stop()
    deadline = time.monotonic() + join_timeout
    for s in p.camset.view.sources if p.started else ():
        s.join(timeout=max(0.0, deadline - time.monotonic()))
        if s.is_alive():
            log.warning("camera %s: thread did not stop within %.0f s; leaving it", s.cfg.name, join_timeout)
    # Frames decoded before the stop are still processed: nothing produced is lost.
    error: BaseException | None = None
    try:
        leftover = p.batcher.next_batch(threading.Event(), timeout=0)
        if leftover is not None and len(leftover):
            p.dispatch(leftover)
    except BaseException as e:  # noqa: BLE001 - raised below, after the sinks are closed
        error = e
    try:
        _close_finisher(p)  # every batch handed over is finished before the sinks close
    except BaseException as e:  # noqa: BLE001
        error = error or e
    try:
        p.sinks.submit_events(p.evidence.close())  # open clips finalized, their records sent before the close
    except Exception as e:  # noqa: BLE001 - evidence never keeps the sinks from closing
        log.error("evidence: closing failed: %s", e)
    p.sinks.close()
    if reporter is not None:
        reporter.log_now(final=True)
    p.engine.close()
    if error is not None:
        raise error


class PeriodicLog:
    """Every `interval` seconds: one line per camera (fps, drops, state) and one aggregate line."""

    def __init__(self, pipeline: Pipeline, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.p = pipeline
        self.interval = interval
        self.clock = clock  # seconds, monotonic (tests pass a controlled one)
        self.t = clock()
        self.cameras = RateMeter(from_zero=True, clock=clock)  # by name: cameras come and go
        self.totals = RateMeter(from_zero=True, clock=clock)

    def maybe_log(self) -> None:
        if self.clock() - self.t >= self.interval:
            self.log_now()

    def log_now(self, final: bool = False) -> None:
        now = self.t = self.clock()
        if final:  # the final line's rates are over the whole run (the window since the last line may be ms)
            self.cameras.restart()
            self.totals.restart()
        s = self.p.status()
        stats = dict(zip((c.name for c in self.p.camset.view.cameras), self.p.camset.view.stats))
        growth = self.cameras.read(((c.name, stats.get(c.name), (c.decoded, c.processed, c.dropped))
                                    for c in s.cameras), now)
        for cam in s.cameras:
            g = growth[cam.name]
            assert g is not None  # from_zero: every camera has a growth
            # The last error only while it is current: a camera that streams again has none.
            err = cam.last_error if cam.state is not CameraState.STREAMING else ""
            log.info(
                "camera=%s state=%s decode_fps=%.1f processed_fps=%.1f dropped=%d reconnects=%d processed=%d%s%s",
                cam.name, cam.state.value, g.rate(0), g.rate(1), g.deltas[2], cam.reconnects, cam.processed,
                f" last_error={err!r}" if err else "", f" {cam.analytics}" if cam.analytics else "",
            )
            if cam.gated:
                log.info("camera=%s motion=%s gated=%d", cam.name, "yes" if cam.motion else "no", cam.gated)
        total = self.totals.read([("pipeline", self, (s.frames, s.batches))], now)["pipeline"]
        assert total is not None
        frames, batches = total.deltas
        size, infer_ms, post_ms, track_ms = self.p.last_report
        log.info(
            "pipeline%s: fps=%.1f batches=%d mean_batch=%.2f last_batch=%d infer_ms=%.1f post_ms=%.1f "
            "track_ms=%.1f sink_drops=%d sink_errors=%d%s",
            " final" if final else "", total.rate(0), batches, frames / max(batches, 1), size, infer_ms, post_ms,
            track_ms, s.sink_lost, s.sink_errors, f" nonfinite_dropped={s.nonfinite}" if s.nonfinite else "",
        )
