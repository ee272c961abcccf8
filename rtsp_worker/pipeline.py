"""Wires the stages: camera threads -> batcher -> preprocess -> engine -> postprocess -> tracker -> sinks.

The calling thread is the inference thread: it batches, preprocesses and runs the engine. With
`batcher.overlap` (the default) a second thread postprocesses, tracks and hands one batch to the sinks
while the next batch is preprocessed and inferred: two batches in flight, in order. Per batch there is one
device-to-host copy (the packed tracks), after which results are split per camera for the sinks.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rtsp_worker.analytics.events import Analytics, EventIds
from rtsp_worker.batcher import Batcher
from rtsp_worker.camera_set import CameraSet
from rtsp_worker.config import CameraConfig, Config, ModelConfig
from rtsp_worker.detection.finite import NonFiniteCounter, drop_nonfinite
from rtsp_worker.detection.postprocess import class_mask, postprocess
from rtsp_worker.detection.preprocess import Preprocessor, frame_rgb
from rtsp_worker.devices import resolve_device
from rtsp_worker.engines import Engine, load_engine
from rtsp_worker.sinks import Sink, SinkRunner
from rtsp_worker.sinks.run import run_id
from rtsp_worker.sources.camera import CameraSource, CameraState, CameraStats, FrameSlot
from rtsp_worker.tracking.tracker import IouTracker
from rtsp_worker.types import Batch, Detections, Frame, FrameResult, Letterbox, TrackedObject, Tracks

log = logging.getLogger(__name__)


def _build_on_start(model: ModelConfig, device: torch.device, max_batch: int) -> Path:
    """`model.build_engine`: the builder is imported only when an engine has to be built or checked."""
    from rtsp_worker.engine_build.on_start import ensure_engine

    return ensure_engine(model, device, max_batch)


@dataclass(frozen=True, slots=True)
class BatchReport:
    """Timings of one batch, for logs and metrics."""

    size: int
    inferred: int
    preprocess_ms: float
    infer_ms: float
    postprocess_ms: float
    track_ms: float
    latencies: tuple[tuple[int, float], ...]  # (camera index, seconds from decode to result)


@dataclass(slots=True)
class _Inferred:
    """A batch between the two halves of a step: engine output not yet postprocessed."""

    frames: Sequence[Frame]
    flags: list[bool]  # frame was inferred (infer_interval)
    rows: list[int]  # indices of the inferred frames
    raw: torch.Tensor | None
    letterbox: Letterbox | None
    t0: float
    t1: float
    t2: float


def build_sinks(cfg: Config, class_names: Sequence[str]) -> list[Sink]:
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


class Pipeline:
    """The whole worker for one config. `run()` blocks until `stop()` (or the duration) and drains."""

    def __init__(self, cfg: Config, engine: Engine | None = None, sinks: Sequence[Sink] | None = None) -> None:
        self.cfg = cfg
        cameras = cfg.enabled_cameras
        self.device = resolve_device(cfg.device)
        if self.device.type == "cpu":
            # Postprocess and tracker ops are small: with several intra-op threads they mostly wait on each
            # other and on ONNX Runtime's own pool (benchmarks/results/tracker.md measured 10-100x swings).
            torch.set_num_threads(1)
        self.engine = engine or load_engine(cfg.model, self.device, cfg.batcher.max_batch, build=_build_on_start)
        info = self.engine.info
        self.class_names = info.class_names
        self.work_device = self.engine.device
        det = cfg.detection
        self._classes = class_mask(det.classes, info.class_names, self.work_device)
        self.preprocess = Preprocessor(info.spec, cfg.batcher.max_batch, self.work_device,
                                       self.engine.input_dtype)
        self.tracker = IouTracker(cfg.tracker, len(cameras), self.work_device)
        # Lines and zones run on the host copy of the tracks (see analytics/events.py); None without any.
        self.event_ids = EventIds(run_id())  # outlives every rebuild of the analytics stage
        self.analytics = Analytics.from_config(cfg, info.class_names, event_ids=self.event_ids)
        self.nonfinite = NonFiniteCounter(self.work_device)  # NaN/Inf detections dropped before the tracker

        self.stop_event = threading.Event()
        self.cond = threading.Condition()
        # Cameras come and go at run time (service/reload.py); the engine's batch capacity bounds them.
        capacity = min(cfg.batcher.max_batch, info.max_batch or cfg.batcher.max_batch)
        self.camset = CameraSet(cameras, cfg.source, self.cond, self.work_device, self.tracker, capacity,
                                self.stop_event)
        self.batcher = Batcher(self.slots, self.stats, self.cond, cfg.batcher.max_batch,
                               cfg.batcher.max_wait_ms / 1000)
        self.camset.listeners.append(self._cameras_changed)
        self.sinks = SinkRunner(list(sinks) if sinks is not None else build_sinks(cfg, info.class_names))
        self.batch_listeners: list[Callable[[BatchReport], None]] = []
        self.batches = 0
        self.frames_out = 0
        self._started = False
        self._finisher: _Finisher | None = None
        self.failure = ""  # why run() stopped by itself, when that is an error (exit 4)
        self.loop_ts: float | None = None  # time.monotonic() of the loop's last round (service/health.py)

    # -- one batch ------------------------------------------------------------------------------------
    def step(self, batch: Batch) -> list[FrameResult]:
        """Run one batch through every stage and hand the results to the sinks."""
        return self._finish(self._infer(batch))

    def _infer(self, batch: Batch, own_output: bool = False) -> _Inferred:
        """First half of a step: preprocess and run the engine (frames due for inference only).

        `own_output`: the result must survive the engine's next call. Engines with preallocated outputs
        (TensorRT slots) reuse them, so with two batches in flight a device copy is taken (on the same
        stream, so it is ordered before the next call's writes).
        """
        frames = batch.frames
        t0 = time.perf_counter()
        by_row = self.camset.by_row
        flags = [f.seq % by_row[f.camera].cfg.infer_interval == 0 for f in frames]
        rows = [i for i, f in enumerate(flags) if f]
        raw = letterbox = None
        t1 = t0
        if rows:
            images, letterbox = self.preprocess([frames[i] for i in rows])
            t1 = time.perf_counter()
            raw = self.engine.infer(images)
            if own_output and raw.is_cuda and not getattr(self.engine, "fresh_outputs", False):
                raw = raw.clone()
        return _Inferred(frames, flags, rows, raw, letterbox, t0, t1, time.perf_counter())

    def _finish(self, inf: _Inferred) -> list[FrameResult]:
        """Second half: postprocess, track, pack (the one device-to-host copy), submit to the sinks."""
        frames, flags, rows = inf.frames, inf.flags, inf.rows
        dev = self.work_device
        t2 = time.perf_counter()
        if inf.raw is not None:
            det = self.cfg.detection
            dets = postprocess(inf.raw, inf.letterbox, det.confidence, det.iou, max_det=det.max_detections,
                               max_candidates=det.max_candidates, classes=self._classes,
                               layout=self.engine.info.output_layout, input_size=self.engine.info.input_size)
            if len(rows) != len(frames):  # rows of the inferred subset -> rows of the batch
                row_map = torch.tensor(rows, device=dets.batch_index.device)
                dets = Detections(dets.boxes, dets.scores, dets.class_ids, row_map[dets.batch_index])
            dets, nonfinite = drop_nonfinite(dets)
            self.nonfinite.add(nonfinite)
        else:
            dets = Detections.empty(dev)
        t3 = time.perf_counter()
        cams = torch.tensor([f.camera for f in frames], dtype=torch.int64, device=dev)
        inferred = torch.tensor(flags, dtype=torch.bool, device=dev)
        # Stream time where known: right across dropped frames and for file sources decoded faster than real time.
        stamps = torch.tensor([f.ts if f.pts is None else f.pts for f in frames], dtype=torch.float64, device=dev)
        tracks = self.tracker.update(cams, dets.to(dev), inferred,
                                     include_tentative=self.cfg.output.include_tentative, timestamps=stamps)
        results = self._results(frames, tracks)
        t4 = time.perf_counter()
        self.sinks.submit(results)
        for f in frames:
            self.camset.by_row[f.camera].stats.processed += 1
        self.batches += 1
        self.frames_out += len(frames)
        pre_ms, infer_ms = (inf.t1 - inf.t0) * 1e3, (inf.t2 - inf.t1) * 1e3
        if self.batch_listeners:
            report = BatchReport(len(frames), len(rows), pre_ms, infer_ms, (t3 - t2) * 1e3, (t4 - t3) * 1e3,
                                 tuple((r.camera_index, r.done_ts - r.ts) for r in results))
            for listener in self.batch_listeners:
                listener(report)
        self._last_report = (len(frames), infer_ms, (t3 - t2) * 1e3, (t4 - t3) * 1e3)
        return results

    def _results(self, frames: Sequence[Frame], tracks: Tracks) -> list[FrameResult]:
        cols = [tracks.batch_index, tracks.track_ids, tracks.class_ids, tracks.scores, tracks.boxes]
        packed = torch.cat([(c.unsqueeze(1) if c.ndim == 1 else c).double() for c in cols], dim=1)
        host = packed.cpu().numpy()  # the one device-to-host copy of the batch
        # Tracker boxes are smoothed with a motion prediction and may overshoot the frame edge.
        limits = np.array([[f.width, f.height, f.width, f.height] for f in frames], dtype=np.float64)
        np.clip(host[:, 4:8], 0.0, limits[host[:, 0].astype(np.int64)], out=host[:, 4:8])
        order = np.argsort(host[:, 0], kind="stable")
        host = host[order]
        counts = np.bincount(host[:, 0].astype(np.int64), minlength=len(frames))
        per_frame = np.split(host, np.cumsum(counts)[:-1])
        names = self.class_names
        done = time.time()
        images = self._images(frames) if self.sinks.wants_images else [None] * len(frames)
        events = [()] * len(frames)
        if self.analytics is not None:
            t = torch.from_numpy(host)
            events = self.analytics.update(frames, t[:, 0].long(), t[:, 1].long(), t[:, 2].long(), t[:, 4:8])
        out = []
        for f, rows, img, ev in zip(frames, per_frame, images, events):
            objects = tuple(
                TrackedObject(int(r[1]), int(r[2]), names[int(r[2])], float(r[3]), (r[4], r[5], r[6], r[7]))
                for r in rows.tolist()
            )
            out.append(FrameResult(camera=self.camset.by_row[f.camera].cfg.name, camera_index=f.camera, frame=f.seq,
                                   ts=f.ts, width=f.width, height=f.height, objects=objects, image=img,
                                   done_ts=done, events=tuple(ev)))
        return out

    @staticmethod
    def _images(frames: Sequence[Frame]) -> list[torch.Tensor]:
        return [frame_rgb(f) for f in frames]

    # -- the camera set: service/reload.py and service/control.py change it while the pipeline runs --------
    @property
    def cameras(self) -> tuple[CameraConfig, ...]:
        return self.camset.view.cameras

    @property
    def stats(self) -> tuple[CameraStats, ...]:
        return self.camset.view.stats

    @property
    def slots(self) -> tuple[FrameSlot, ...]:
        return self.camset.view.slots

    @property
    def sources(self) -> tuple[CameraSource, ...]:
        return self.camset.view.sources

    def add_camera(self, cfg: CameraConfig) -> None:
        self.camset.add(cfg)

    def remove_camera(self, name: str) -> int:
        """Returns the camera's final `processed` count (its JSONL holds as many lines)."""
        return self.camset.remove(name, self.sinks)

    def update_camera(self, cfg: CameraConfig) -> list[str]:
        return self.camset.update(cfg)

    def _cameras_changed(self, _event: str, _name: str) -> None:
        self.batcher.slots, self.batcher.stats = self.slots, self.stats
        if self.analytics is not None or any(c.lines or c.zones for c in self.camset.view.cameras):
            rows = [c.cfg if c is not None else None for c in self.camset.by_row]
            self.analytics = Analytics.for_rows(self.cfg, rows, self.class_names, self.analytics, self.event_ids)

    def _apply_changes(self) -> None:
        """Between two batches: finish the batch in flight, then change the camera set."""
        finisher, self._finisher = self._finisher, None
        if finisher is not None:
            finisher.close()
        try:
            self.camset.run_pending()
        finally:
            if finisher is not None:
                self._finisher = _Finisher(self)

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        self.camset.start()
        self._started = True

    def stop(self) -> None:
        self.stop_event.set()
        self.camset.stop_all()
        with self.cond:
            self.cond.notify_all()

    def run(self, duration: float | None = None) -> None:
        """Process batches until stopped (or `duration` seconds), then drain and close the sinks."""
        if not self._started:
            self.start()
        end = None if duration is None else time.monotonic() + duration
        reporter = _PeriodicLog(self, self.cfg.log_interval)
        self._finisher = _Finisher(self) if self.cfg.batcher.overlap else None
        self.camset.loop_started()
        try:
            while not self.stop_event.is_set():
                if end is not None and time.monotonic() >= end:
                    break
                if self.camset.pending:
                    self._apply_changes()
                if self.stats and all(st.state is CameraState.DISABLED for st in self.stats):
                    self.failure = "every camera is disabled (source.max_failures reached); nothing to do"
                    log.error("%s: stopping", self.failure)
                    break
                batch = self.batcher.next_batch(self.stop_event, timeout=0.2)
                if batch is not None and len(batch):
                    self._dispatch(batch)
                now = self.loop_ts = time.monotonic()
                for source in self.sources:  # stall watchdog: a few comparisons per camera
                    source.check_stall(now)
                reporter.maybe_log()
        finally:
            self.camset.loop_ended()
            self.shutdown(reporter)

    def _dispatch(self, batch: Batch) -> None:
        finisher = self._finisher
        if finisher is None:
            self.step(batch)
        else:
            finisher.submit(self._infer(batch, own_output=True))

    def shutdown(self, reporter: _PeriodicLog | None = None, join_timeout: float = 5.0) -> None:
        """Stop the cameras, process what they decoded, drain and close the sinks: bounded in time.

        A camera blocked in a connect or read past `join_timeout` (all cameras together) is left behind:
        its thread is a daemon and holds nothing the outputs need.
        """
        self.stop()
        deadline = time.monotonic() + join_timeout
        for s in self.sources if self._started else ():
            s.join(timeout=max(0.0, deadline - time.monotonic()))
            if s.is_alive():
                log.warning("camera %s: thread did not stop within %.0f s; leaving it", s.cfg.name, join_timeout)
        # Frames decoded before the stop are still processed: nothing produced is lost.
        error: BaseException | None = None
        try:
            leftover = self.batcher.next_batch(threading.Event(), timeout=0)
            if leftover is not None and len(leftover):
                self._dispatch(leftover)
        except BaseException as e:  # noqa: BLE001 - raised below, after the sinks are closed
            error = e
        finisher, self._finisher = self._finisher, None
        if finisher is not None:
            try:
                finisher.close()  # every batch handed over is finished before the sinks close
            except BaseException as e:  # noqa: BLE001
                error = error or e
        self.sinks.close()
        if reporter is not None:
            reporter.log_now(final=True)
        self.engine.close()
        if error is not None:
            raise error


class _Finisher:
    """The second half of every step on its own thread, batches in order, at most one waiting.

    An error there stops the pipeline and is raised again in the inference thread.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        self.q: queue.Queue[_Inferred | None] = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="finish", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while (item := self.q.get()) is not None:
            if self.error is None:
                try:
                    self.p._finish(item)
                except BaseException as e:  # noqa: BLE001 - re-raised in the inference thread
                    self.error = e
                    self.p.stop()

    def _raise(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"postprocess/tracker/sinks failed: {self.error!r}") from self.error

    def submit(self, item: _Inferred) -> None:
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


def _nonfinite_note(p: Pipeline) -> str:
    n = p.nonfinite.value()
    return f" nonfinite_dropped={n}" if n else ""


class _PeriodicLog:
    """Every `interval` seconds: one line per camera (fps, drops, state) and one aggregate line."""

    def __init__(self, pipeline: Pipeline, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.p = pipeline
        self.interval = interval
        self.clock = clock  # seconds, monotonic (tests pass a controlled one)
        self.t = self.t0 = clock()
        self.prev: dict[str, tuple[CameraStats, int, int, int]] = {}  # by name: cameras come and go
        self.prev_batches = 0
        self.prev_frames = 0

    def maybe_log(self) -> None:
        if self.clock() - self.t >= self.interval:
            self.log_now()

    def log_now(self, final: bool = False) -> None:
        now = self.clock()
        if final:
            # The final line's rates are over the whole run (the window since the last line may be ms).
            self.t, self.prev = self.t0, {}
            self.prev_batches = self.prev_frames = 0
        dt = max(now - self.t, 1e-6)
        p = self.p
        view = p.camset.view
        prev, self.prev = self.prev, {}
        for cam, st in zip(view.cameras, view.stats):
            was, d0, p0, x0 = prev.get(cam.name, (st, 0, 0, 0))
            if was is not st:  # the name was removed and added again: a new camera
                d0 = p0 = x0 = 0
            live = p.camset.get(cam.name)
            counts = p.analytics.summary(live.row) if p.analytics is not None and live is not None else ""
            # The last error only while it is current: a camera that streams again has none.
            err = st.last_error if st.state.value != "streaming" else ""
            log.info(
                "camera=%s state=%s decode_fps=%.1f processed_fps=%.1f dropped=%d reconnects=%d processed=%d%s%s",
                cam.name, st.state.value, (st.decoded - d0) / dt, (st.processed - p0) / dt, st.dropped - x0,
                st.reconnects, st.processed, f" last_error={err!r}" if err else "",
                f" {counts}" if counts else "",
            )
            self.prev[cam.name] = (st, st.decoded, st.processed, st.dropped)
        batches = p.batches - self.prev_batches
        frames = p.frames_out - self.prev_frames
        size, infer_ms, post_ms, track_ms = getattr(p, "_last_report", (0, 0.0, 0.0, 0.0))
        log.info(
            "pipeline%s: fps=%.1f batches=%d mean_batch=%.2f last_batch=%d infer_ms=%.1f post_ms=%.1f "
            "track_ms=%.1f sink_drops=%d sink_errors=%d%s",
            " final" if final else "", frames / dt, batches, frames / max(batches, 1), size, infer_ms, post_ms,
            track_ms, p.sinks.total_drops(), p.sinks.total_errors(), _nonfinite_note(p),
        )
        self.t = now
        self.prev_batches, self.prev_frames = p.batches, p.frames_out
