"""Wires the stages: camera threads -> batcher -> batch step (step.py) -> sinks, plus the service face.

`build_pipeline` assembles a pipeline from its factories (engine, sinks, camera sources, the engine build on
start); `Pipeline` holds the parts and offers what the service layer uses: `status()` (a frozen snapshot),
`on_batch` / `on_camera` subscriptions and `add_camera` / `remove_camera` / `update_camera`. The run loop,
with its overlap (finish) thread and the periodic log line, is in loop.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch

from rtsp_worker import loop
from rtsp_worker.analytics.events import Analytics, needs_analytics
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
from rtsp_worker.config import CameraConfig, Config, ModelConfig, mask_url
from rtsp_worker.detection.motion_gate import MotionGate
from rtsp_worker.devices import resolve_device
from rtsp_worker.engines import Engine, load_engine
from rtsp_worker.evidence import Evidence
from rtsp_worker.sinks import Sink, SinkRunner, build_sinks
from rtsp_worker.sources.state import SourceFactory
from rtsp_worker.status import (
    AnalyticsStatus,
    BatchListener,
    BatchOutput,
    CameraListener,
    CameraStatus,
    PipelineStatus,
    RateMeter,
    ZoneCount,
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
        # The motion gate (detection/motion_gate.py) sits between the batcher and the step, on the work device.
        self.gate = MotionGate(self.work_device)
        self._configure_gate()
        # Measured capacity and priorities under overload (capacity.py); multipliers by row, read on the hot path.
        self.cost = BatchCost()
        self.priorities = Priorities()
        self._multiplier: dict[int, int] = {}
        self.batcher.ranks = [PRIORITY_RANK[c.priority] for c in view.cameras]
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
        by_row = self.camset.by_row
        if self.priorities.due():
            self._reprioritize()
        mult = self._multiplier
        due = [f.seq % (by_row[f.row].cfg.infer_interval * mult.get(f.row, 1)) == 0  # type: ignore[union-attr]
               for f in batch.frames]
        decision = self.gate(batch.frames, due)
        for f, gated, moving in zip(batch.frames, decision.gated, decision.motion):
            st = by_row[f.row].stats  # type: ignore[union-attr]
            st.gated += gated
            st.motion = moving
        still = decision.still if any(decision.still) else None
        return self.batch_step.infer(batch.frames, decision.due, own_output, still=still)

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
        if batch is not None and self.evidence.active:
            # The one hook before the sinks: evidence adds `clip` / `snapshot` to matching events and hands
            # back the records of clips finalized since the last batch (events are never held back).
            annotated, finished = self.evidence.annotate(batch)
            batch = replace(batch, results=tuple(annotated), events=tuple(e for res in annotated for e in res.events))
            self.sinks.submit_events(finished)
        results = list(batch.results) if batch is not None else out.results
        self.sinks.submit(results)
        for cam in live:
            cam.stats.processed += 1  # type: ignore[union-attr]
        self.batches += 1
        self.frames_out += len(out.results)
        self.last_report = (r.size, r.infer_ms, r.postprocess_ms, r.track_ms)
        # The engine's cost per batch size (its half of the step: preprocess + engine), what limits the box.
        self.cost.observe(r.inferred, r.preprocess_ms + r.infer_ms)
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
        cams = []
        for c, st, row in zip(view.cameras, view.stats, view.rows):
            rate = rates.get(c.name)
            cams.append(CameraStatus(
                c.name, row, mask_url(c.url), c.infer_interval, st.state, st.last_error, st.decoded, st.processed,
                st.dropped, st.reconnects, st.stalls, st.decode_errors, st.failures, st.skipping_nonref, st.codec,
                st.decoder, st.width, st.height, rate.rate(0) if rate else None, rate.rate(1) if rate else None,
                analytics.summary(row) if analytics is not None else "", st.gated, st.motion, c.priority,
                self._multiplier.get(row, 1)))
        room = headroom(self.capacity_fps(), list(self._targets({c.name: c.decode_fps for c in cams}).values()))
        return PipelineStatus(tuple(cams), self.sinks.status(), _analytics_status(analytics), self.batches,
                              self.frames_out, self.batch_step.nonfinite.value(), self.loop_ts,
                              self.stop_event.is_set(), self.camset.capacity, self.camset.lingering_sources,
                              self.evidence.status(), room.capacity_fps, room.demand_fps, room.headroom_fps)

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

    # -- measured capacity and priorities (capacity.py) ---------------------------------------------------------
    def capacity_fps(self) -> float | None:
        return self.cost.capacity_fps(self.batcher.max_batch)

    def targets(self) -> dict[str, float]:
        """Each running camera's full target rate (inferred frames/s), with the measured stream rate."""
        return self._targets({c.name: c.decode_fps for c in self.status().cameras})

    def _targets(self, measured: dict[str, float | None]) -> dict[str, float]:
        return {c.name: target_fps(c, measured.get(c.name)) for c in self.camset.view.cameras}

    def headroom(self) -> Headroom:
        return headroom(self.capacity_fps(), list(self.targets().values()))

    def check_headroom(self, new: list[CameraConfig], leaving: tuple[str, ...] = ()) -> None:
        """Raise CapacityError when the running cameras (less `leaving`) plus `new` exceed the measured capacity."""
        running = {n: t for n, t in self.targets().items() if n not in leaving and n not in {c.name for c in new}}
        why = admission(self.capacity_fps(), list(running.values()), [(c.name, target_fps(c)) for c in new])
        if why is not None:
            raise CapacityError(why)

    def multiplier(self, row: int) -> int:
        return self._multiplier.get(row, 1)

    def _reprioritize(self) -> None:
        view = self.camset.view
        targets = self.targets()
        cams = [(c.name, c.priority, targets[c.name], st.processed, st.gated, st.dropped)
                for c, st in zip(view.cameras, view.stats)]
        by_name = self.priorities.update(self.capacity_fps(), cams)
        self._multiplier = {row: by_name.get(c.name, 1) for c, row in zip(view.cameras, view.rows)}

    def remove_camera(self, name: str) -> int:
        """Returns the camera's final `processed` count (its JSONL holds as many lines)."""
        return self.camset.remove(name)

    def update_camera(self, cfg: CameraConfig) -> list[str]:
        return self.camset.update(cfg)

    def configs(self) -> dict[str, CameraConfig]:
        return self.camset.configs()

    def reopen_outputs(self) -> None:
        self.sinks.reopen()

    def _configure_gate(self) -> None:
        for row, cam in enumerate(self.camset.by_row):
            self.gate.configure(row, cam.cfg.motion if cam is not None else None)

    def _cameras_changed(self, event: str, name: str) -> None:
        # On the inference thread between batches (no batch in flight): the clip records go to the sinks
        # before a removed camera's close marker.
        if event == "removed":
            self.sinks.submit_events(self.evidence.remove(name))
        elif event in ("added", "updated", "reconnected"):
            cfg = self.camset.configs().get(name)
            if cfg is not None:
                self.sinks.submit_events(self.evidence.configure(cfg))
        self._configure_gate()
        self.batcher.ranks = [PRIORITY_RANK[c.priority] for c in self.camset.view.cameras]
        cam = self.camset.get(name)
        if cam is not None and event in ("added", "reconnected"):  # another scene: a new background
            self.gate.reset(cam.row)
        view = self.camset.view
        self.batcher.slots, self.batcher.stats = view.slots, view.stats
        if self.batch_step.analytics is not None or any(needs_analytics(c) for c in view.cameras):
            rows = [c.cfg if c is not None else None for c in self.camset.by_row]
            step = self.batch_step
            step.analytics = Analytics.for_rows(self.cfg, rows, self.class_names, step.analytics, step.event_ids)

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


def _analytics_status(a: Analytics | None) -> AnalyticsStatus | None:
    if a is None:
        return None
    zones = []
    for c, camera in enumerate(a.names):
        occ = a.occupancy(c)
        for z, zone in enumerate(a.zones.configs[c]):
            zones += [ZoneCount(camera, zone.name, cls, int(occ[z, k])) for k, cls in enumerate(a.class_names)]
    return AnalyticsStatus(tuple(sorted(a.crossing_totals().items())), tuple(zones),
                           tuple(sorted(a.rule_totals().items())), tuple(a.crowded()))
