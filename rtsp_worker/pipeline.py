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

from rtsp_worker.batcher import Batcher
from rtsp_worker.config import Config, ModelConfig
from rtsp_worker.detection.postprocess import class_mask, postprocess
from rtsp_worker.detection.preprocess import Preprocessor, nv12_to_rgb
from rtsp_worker.engines import Engine, load_engine
from rtsp_worker.sinks import Sink, SinkRunner
from rtsp_worker.sources.camera import CameraSource, CameraStats, FrameSlot
from rtsp_worker.tracking.tracker import IouTracker
from rtsp_worker.types import NV12, Batch, Detections, Frame, FrameResult, Letterbox, TrackedObject, Tracks

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return dev


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

        sinks.append(VideoSink(out.dir, fps=out.video_fps))
    if out.redis is not None:
        from rtsp_worker.sinks.redis import RedisSink

        sinks.append(RedisSink(out.redis))
    return sinks


class Pipeline:
    """The whole worker for one config. `run()` blocks until `stop()` (or the duration) and drains."""

    def __init__(self, cfg: Config, engine: Engine | None = None, sinks: Sequence[Sink] | None = None) -> None:
        self.cfg = cfg
        self.cameras = cfg.enabled_cameras
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
        self.tracker = IouTracker(cfg.tracker, len(self.cameras), self.work_device)
        self._intervals = [c.infer_interval for c in self.cameras]

        self.stop_event = threading.Event()
        self.cond = threading.Condition()
        self.stats = [CameraStats() for _ in self.cameras]
        self.slots = [FrameSlot(self.cond, st) for st in self.stats]
        self.sources = [
            CameraSource(i, cam, cfg.source, self.slots[i], self.stats[i], self.stop_event, self.device)
            for i, cam in enumerate(self.cameras)
        ]
        self.batcher = Batcher(self.slots, self.stats, self.cond, cfg.batcher.max_batch,
                               cfg.batcher.max_wait_ms / 1000)
        self.sinks = SinkRunner(list(sinks) if sinks is not None else build_sinks(cfg, info.class_names))
        self.batch_listeners: list[Callable[[BatchReport], None]] = []
        self.batches = 0
        self.frames_out = 0
        self._started = False
        self._finisher: _Finisher | None = None

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
        flags = [f.seq % self._intervals[f.camera] == 0 for f in frames]
        rows = [i for i, f in enumerate(flags) if f]
        raw = letterbox = None
        t1 = t0
        if rows:
            images, letterbox = self.preprocess([frames[i] for i in rows])
            t1 = time.perf_counter()
            raw = self.engine.infer(images)
            if own_output and raw.is_cuda:
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
        else:
            dets = Detections.empty(dev)
        t3 = time.perf_counter()
        cams = torch.tensor([f.camera for f in frames], dtype=torch.int64, device=dev)
        inferred = torch.tensor(flags, dtype=torch.bool, device=dev)
        tracks = self.tracker.update(cams, dets.to(dev), inferred,
                                     include_tentative=self.cfg.output.include_tentative)
        results = self._results(frames, tracks)
        t4 = time.perf_counter()
        self.sinks.submit(results)
        for f in frames:
            self.stats[f.camera].processed += 1
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
        out = []
        for f, rows, img in zip(frames, per_frame, images):
            objects = tuple(
                TrackedObject(int(r[1]), int(r[2]), names[int(r[2])], float(r[3]), (r[4], r[5], r[6], r[7]))
                for r in rows.tolist()
            )
            out.append(FrameResult(camera=self.cameras[f.camera].name, camera_index=f.camera, frame=f.seq,
                                   ts=f.ts, width=f.width, height=f.height, objects=objects, image=img,
                                   done_ts=done))
        return out

    @staticmethod
    def _images(frames: Sequence[Frame]) -> list[torch.Tensor]:
        imgs = []
        for f in frames:
            if f.pixel_format == NV12:
                rgb = nv12_to_rgb(f.image.unsqueeze(0), f.height, f.width)[0]
                imgs.append(rgb.round().to(torch.uint8).permute(1, 2, 0).cpu())
            else:
                imgs.append(f.image.cpu())
        return imgs

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        for s in self.sources:
            s.start()
        self._started = True

    def stop(self) -> None:
        self.stop_event.set()
        with self.cond:
            self.cond.notify_all()

    def run(self, duration: float | None = None) -> None:
        """Process batches until stopped (or `duration` seconds), then drain and close the sinks."""
        if not self._started:
            self.start()
        end = None if duration is None else time.monotonic() + duration
        reporter = _PeriodicLog(self, self.cfg.log_interval)
        self._finisher = _Finisher(self) if self.cfg.batcher.overlap else None
        try:
            while not self.stop_event.is_set():
                if end is not None and time.monotonic() >= end:
                    break
                batch = self.batcher.next_batch(self.stop_event, timeout=0.2)
                if batch is not None and len(batch):
                    self._dispatch(batch)
                now = time.monotonic()
                for source in self.sources:  # stall watchdog: a few comparisons per camera
                    source.check_stall(now)
                reporter.maybe_log()
        finally:
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


class _PeriodicLog:
    """Every `interval` seconds: one line per camera (fps, drops, state) and one aggregate line."""

    def __init__(self, pipeline: Pipeline, interval: float) -> None:
        self.p = pipeline
        self.interval = interval
        self.t = time.monotonic()
        self.prev = [(0, 0, 0) for _ in pipeline.stats]
        self.prev_batches = 0
        self.prev_frames = 0

    def maybe_log(self) -> None:
        if time.monotonic() - self.t >= self.interval:
            self.log_now()

    def log_now(self, final: bool = False) -> None:
        now = time.monotonic()
        dt = max(now - self.t, 1e-6)
        p = self.p
        for i, (cam, st) in enumerate(zip(p.cameras, p.stats)):
            d0, p0, x0 = self.prev[i]
            log.info(
                "camera=%s state=%s decode_fps=%.1f processed_fps=%.1f dropped=%d reconnects=%d processed=%d%s",
                cam.name, st.state.value, (st.decoded - d0) / dt, (st.processed - p0) / dt, st.dropped - x0,
                st.reconnects, st.processed, f" last_error={st.last_error!r}" if st.last_error else "",
            )
            self.prev[i] = (st.decoded, st.processed, st.dropped)
        batches = p.batches - self.prev_batches
        frames = p.frames_out - self.prev_frames
        size, infer_ms, post_ms, track_ms = getattr(p, "_last_report", (0, 0.0, 0.0, 0.0))
        log.info(
            "pipeline%s: fps=%.1f batches=%d mean_batch=%.2f last_batch=%d infer_ms=%.1f post_ms=%.1f "
            "track_ms=%.1f sink_drops=%d",
            " final" if final else "", frames / dt, batches, frames / max(batches, 1), size, infer_ms, post_ms,
            track_ms, sum(p.sinks.dropped.values()),
        )
        self.t = now
        self.prev_batches, self.prev_frames = p.batches, p.frames_out
