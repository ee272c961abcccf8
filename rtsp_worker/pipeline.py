"""Wires the stages: camera threads -> batcher -> preprocess -> engine -> postprocess -> tracker -> sinks.

The calling thread is the inference thread: it owns the engine and the device work. Per batch there is one
device-to-host copy (the packed tracks), after which results are split per camera for the sinks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rtsp_worker.batcher import Batcher
from rtsp_worker.config import Config
from rtsp_worker.engines import Engine, load_engine
from rtsp_worker.postprocess import class_mask, postprocess
from rtsp_worker.preprocess import Preprocessor, nv12_to_rgb
from rtsp_worker.sinks import Sink, SinkRunner
from rtsp_worker.sources.camera import CameraSource, CameraStats, FrameSlot
from rtsp_worker.tracking import IouTracker
from rtsp_worker.types import NV12, Batch, Detections, Frame, FrameResult, TrackedObject, Tracks

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return dev


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
        self.engine = engine or load_engine(cfg.model, self.device, cfg.batcher.max_batch)
        info = self.engine.info
        self.class_names = info.class_names
        self.work_device = self.engine.device
        det = cfg.detection
        self._classes = class_mask(det.classes, info.class_names, self.work_device)
        self.preprocess = Preprocessor(info.input_size, cfg.batcher.max_batch, self.work_device,
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

    # -- one batch ------------------------------------------------------------------------------------
    def step(self, batch: Batch) -> list[FrameResult]:
        """Run one batch through every stage and hand the results to the sinks."""
        frames = batch.frames
        dev = self.work_device
        t0 = time.perf_counter()
        flags = [f.seq % self._intervals[f.camera] == 0 for f in frames]
        rows = [i for i, f in enumerate(flags) if f]
        det = self.cfg.detection
        t1 = t2 = t0
        if rows:
            images, letterbox = self.preprocess([frames[i] for i in rows])
            t1 = time.perf_counter()
            raw = self.engine.infer(images)
            t2 = time.perf_counter()
            dets = postprocess(raw, letterbox, det.confidence, det.iou, max_det=det.max_detections,
                               max_candidates=det.max_candidates, classes=self._classes)
            if len(rows) != len(frames):  # rows of the inferred subset -> rows of the batch
                row_map = torch.tensor(rows, device=dets.batch_index.device)
                dets = Detections(dets.boxes, dets.scores, dets.class_ids, row_map[dets.batch_index])
        else:
            dets = Detections.empty(dev)
            t1 = t2 = time.perf_counter()
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
        if self.batch_listeners:
            report = BatchReport(len(frames), len(rows), (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3,
                                 (t4 - t3) * 1e3, tuple((r.camera_index, r.done_ts - r.ts) for r in results))
            for listener in self.batch_listeners:
                listener(report)
        self._last_report = (len(frames), (t2 - t1) * 1e3, (t3 - t2) * 1e3, (t4 - t3) * 1e3)
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
        try:
            while not self.stop_event.is_set():
                if end is not None and time.monotonic() >= end:
                    break
                batch = self.batcher.next_batch(self.stop_event, timeout=0.2)
                if batch is not None and len(batch):
                    self.step(batch)
                now = time.monotonic()
                for source in self.sources:  # stall watchdog: a few comparisons per camera
                    source.check_stall(now)
                reporter.maybe_log()
        finally:
            self.shutdown(reporter)

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
        leftover = self.batcher.next_batch(threading.Event(), timeout=0)
        if leftover is not None and len(leftover):
            self.step(leftover)
        self.sinks.close()
        if reporter is not None:
            reporter.log_now(final=True)
        self.engine.close()


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
