"""Wires the stages: camera threads -> batcher -> batch step (step.py) -> sinks, plus the service face.

`build_pipeline` assembles a pipeline from its factories (engine, sinks, camera sources, the engine build on
start); `Pipeline` holds the parts and offers what the service layer uses: `status()` (a frozen snapshot),
`on_batch` / `on_camera` subscriptions and `add_camera` / `remove_camera` / `update_camera`. The run loop,
with its overlap (finish) thread and the periodic log line, is in loop.py; which frames run the detector
(interval, priorities, motion gate) and the measured capacity, in scheduling.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from rtsp_worker import loop
from rtsp_worker.batcher import Batcher
from rtsp_worker.camera_set import CameraSet
from rtsp_worker.config import CameraConfig, Config, ModelConfig
from rtsp_worker.devices import resolve_device
from rtsp_worker.engines import Engine, load_engine
from rtsp_worker.evidence import Evidence
from rtsp_worker.scheduling import Scheduler
from rtsp_worker.sinks import Sink, SinkRunner, build_sinks
from rtsp_worker.sources.state import SourceFactory
from rtsp_worker.status import (
    BatchListener,
    BatchOutput,
    CameraListener,
    PipelineStatus,
    RateMeter,
    analytics_status,
    camera_status,
)
from rtsp_worker.step import BatchStep, Inferred
from rtsp_worker.types import Batch, FrameResult

BuildOnStart = Callable[[ModelConfig, torch.device, int], Path]
RATE_WINDOW_S = 1.0  # the snapshot's fps are measured over at least this long


def _camera_source(*args, **kwargs):  # SourceFactory
    from rtsp_worker.sources.camera import CameraSource  # PyAV: imported only when real cameras run

    return CameraSource(*args, **kwargs)


def build_pipeline(cfg: Config, *, engine: Engine | None = None, sinks: Sequence[Sink] | None = None,
                   engine_factory: Callable[..., Engine] = load_engine,
                   sink_factory: Callable[[Config], list[Sink]] = build_sinks,
                   source_factory: SourceFactory = _camera_source,
                   build_on_start: BuildOnStart | None = None) -> Pipeline:
    """A pipeline for `cfg`. `engine` / `sinks`: ready-made parts (else made by their factories);
    `build_on_start`: turns an ONNX into a TensorRT plan for `model.build_engine` (the runner passes
    engine_build's; without it such a config fails to load)."""
    device = resolve_device(cfg.device)  # as configured; the stages work on the engine's device
    if device.type == "cpu":
        # Postprocess and tracker ops are small: with several intra-op threads they mostly wait on each
        # other and on ONNX Runtime's own pool (benchmarks/results/tracker.md measured 10-100x swings).
        torch.set_num_threads(1)
    if engine is None:
        engine = engine_factory(cfg.model, device, cfg.batcher.max_batch, build=build_on_start)
    step = BatchStep.build(cfg, engine, len(cfg.enabled_cameras))
    return Pipeline(cfg, step, SinkRunner(list(sinks) if sinks is not None else sink_factory(cfg)), source_factory,
                    device)


class Pipeline:
    """The whole worker for one config. `run()` blocks until `stop()` (or the duration) and drains."""

    def __init__(self, cfg: Config, step: BatchStep, sinks: SinkRunner, source_factory: SourceFactory,
                 device: torch.device | None = None) -> None:
        self.cfg = cfg
        self.device = device if device is not None else step.device  # the configured device
        self.batch_step = step
        self.engine = step.engine
        self.class_names = step.class_names
        self.work_device = step.device
        self.sinks = sinks
        self.stop_event = threading.Event()
        self.cond = threading.Condition()
        # The largest batch: a TensorRT profile's maximum caps it; a fixed-batch model (ultralytics' default
        # export) takes any batch in chunks of its size (engines/onnxruntime.py). Never a limit on cameras:
        # admission counts measured frames per second (capacity.py).
        info = step.engine.info
        max_batch = cfg.batcher.max_batch
        capacity = min(max_batch, info.max_batch) if info.dynamic_batch and info.max_batch else max_batch
        self.camset = CameraSet(cfg.enabled_cameras, cfg.source, self.cond, self.work_device, step.tracker,
                                capacity, self.stop_event, source_factory, on_detach=sinks.close_camera)
        view = self.camset.view
        self.batcher = Batcher(view.slots, view.stats, self.cond, capacity, cfg.batcher.max_wait_ms / 1000)
        self.camset.listeners.append(self._cameras_changed)
        # Clips and snapshots: events get their paths before the sinks see them (see `finish`).
        self.evidence = Evidence(cfg.output.dir, step.event_ids.next)
        for cam in cfg.enabled_cameras:
            self.evidence.configure(cam)
        # The motion gate, priorities under overload and the measured capacity (scheduling.py).
        self.scheduler = Scheduler(self.camset, self.batcher, self.work_device,
                                   lambda: {c.name: c.decode_fps for c in self.status().cameras}, step.engine.warmup_ms)
        self.batch_listeners: list[BatchListener] = []
        self.batches = 0
        self.frames_out = 0
        self.failure = ""  # why run() stopped by itself, when that is an error (exit 4)
        self.loop_ts: float | None = None  # time.monotonic() of the loop's last round (service/health.py)
        self.last_report = (0, 0.0, 0.0, 0.0)  # size, infer_ms, post_ms, track_ms of the last batch
        self.finisher: loop.FinishThread | None = None  # the overlap thread, while the loop runs
        self._started = False
        self._rates = RateMeter(RATE_WINDOW_S)

    # -- one batch ------------------------------------------------------------------------------------
    def step(self, batch: Batch) -> list[FrameResult]:
        """Run one batch through every stage and hand the results to the sinks."""
        return self.finish(self.infer(batch))

    def dispatch(self, batch: Batch) -> None:
        """Run one batch: through the finish thread when `batcher.overlap` is on (two batches in flight)."""
        if self.cfg.batcher.overlap and self.finisher is None:
            self.finisher = loop.FinishThread(self.finish, self.stop)
        if self.finisher is None:
            self.step(batch)
        else:
            self.finisher.submit(self.infer(batch, own_output=True))

    def infer(self, batch: Batch, own_output: bool = False) -> Inferred:
        due, still = self.scheduler.plan(batch.frames)
        return self.batch_step.infer(batch.frames, due, own_output, still=still)

    def finish(self, inf: Inferred) -> list[FrameResult]:
        """Second half: postprocess, track, hand the results to the sinks, tell the subscribers."""
        live = [self.camset.by_row[f.row] for f in inf.frames]
        names = tuple(c.cfg.name for c in live)  # type: ignore[union-attr]
        out = self.batch_step.finish(inf, names, images=self.sinks.wants_images)
        r = out.report
        batch = None
        if self.evidence.active or self.batch_listeners:
            batch = BatchOutput(tuple(inf.frames), names, out.tracks, tuple(out.results),
                                tuple(e for res in out.results for e in res.events), r)
        if batch is not None and self.evidence.active:  # clip / snapshot paths on events, before the sinks
            batch, finished = self.evidence.before_sinks(batch)
            self.sinks.submit_events(finished)
        results = list(batch.results) if batch is not None else out.results
        self.sinks.submit(results)
        for cam in live:
            cam.stats.processed += 1  # type: ignore[union-attr]
        self.batches += 1
        self.frames_out += len(out.results)
        self.last_report = (r.size, r.infer_ms, r.postprocess_ms, r.track_ms)
        self.scheduler.observe(r)
        if batch is not None and self.batch_listeners:
            for listener in list(self.batch_listeners):
                listener(batch)
        return results

    # -- the service face -------------------------------------------------------------------------------
    def on_batch(self, listener: BatchListener) -> Callable[[], None]:
        """Call `listener` with every finished batch (finish thread); returns the unsubscribe function."""
        self.batch_listeners.append(listener)
        return lambda: self.batch_listeners.remove(listener) if listener in self.batch_listeners else None

    def on_camera(self, listener: CameraListener) -> Callable[[], None]:
        """Call `listener(event, name)` after every camera change; returns the unsubscribe function."""
        self.camset.listeners.append(listener)
        return lambda: self.camset.listeners.remove(listener) if listener in self.camset.listeners else None

    def status(self) -> PipelineStatus:
        view = self.camset.view  # one consistent set of cameras
        rates = self._rates.read((c.name, st, (st.decoded, st.processed)) for c, st in zip(view.cameras, view.stats))
        analytics = self.batch_step.analytics
        cams = [camera_status(c, st, row, rates.get(c.name), analytics.summary(row) if analytics is not None else "",
                              self.scheduler.multiplier(row)) for c, st, row in zip(view.cameras, view.stats, view.rows)]
        room = self.scheduler.headroom({c.name: c.decode_fps for c in cams})
        return PipelineStatus(tuple(cams), self.sinks.status(), analytics_status(analytics), self.batches,
                              self.frames_out, self.batch_step.nonfinite.value(), self.loop_ts,
                              self.stop_event.is_set(), self.camset.capacity, self.camset.lingering_sources,
                              self.evidence.status(), room)

    @property
    def cameras(self) -> tuple[CameraConfig, ...]:
        return self.camset.view.cameras

    @property
    def stats(self) -> tuple:  # tuple[CameraStats, ...]
        return self.camset.view.stats

    @property
    def sources(self) -> tuple:  # tuple[Source, ...]
        return self.camset.view.sources

    def add_camera(self, cfg: CameraConfig, force: bool = False) -> None:
        """Start a camera; CapacityError (with the numbers) when the measured headroom cannot carry it at its
        full target rate, unless `force`."""
        if not force and cfg.name not in self.camset:
            self.check_headroom([cfg])
        self.camset.add(cfg)

    def check_headroom(self, new: list[CameraConfig], leaving: tuple[str, ...] = ()) -> None:
        """Raise CapacityError when the running cameras (less `leaving`) plus `new` exceed the measured capacity."""
        self.scheduler.check_headroom(new, leaving)

    def remove_camera(self, name: str) -> int:
        """Returns the camera's final `processed` count (its JSONL holds as many lines)."""
        return self.camset.remove(name)

    def update_camera(self, cfg: CameraConfig) -> list[str]:
        return self.camset.update(cfg)

    def configs(self) -> dict[str, CameraConfig]:
        return self.camset.configs()

    def reopen_outputs(self) -> None:
        self.sinks.reopen()

    def _cameras_changed(self, event: str, name: str) -> None:
        # On the inference thread between batches (no batch in flight): the clip records go to the sinks
        # before a removed camera's close marker.
        self.sinks.submit_events(self.evidence.camera_changed(event, name, self.camset.configs().get(name)))
        self.scheduler.cameras_changed(event, name)
        view = self.camset.view
        self.batcher.slots, self.batcher.stats = view.slots, view.stats
        rows = [c.cfg if c is not None else None for c in self.camset.by_row]
        self.batch_step.cameras_changed(self.cfg, view.cameras, rows)

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        self.camset.start()
        self._started = True

    @property
    def started(self) -> bool:
        return self._started

    def stop(self) -> None:
        self.stop_event.set()
        self.camset.stop_all()
        with self.cond:
            self.cond.notify_all()

    def run(self, duration: float | None = None) -> None:
        """Process batches until stopped (or `duration` seconds), then drain and close the sinks."""
        loop.run(self, duration)

    def shutdown(self, reporter: loop.PeriodicLog | None = None, join_timeout: float = 5.0) -> None:
        """Stop the cameras, process what they decoded, drain and close the sinks: bounded in time."""
        loop.shutdown(self, reporter, join_timeout)

