"""One batch through the stages: preprocess -> engine -> postprocess -> tracker -> analytics -> results.

The public batch step that the pipeline, `doctor` and the benchmarks all run. It has two halves so that the
pipeline can overlap them (rtsp_worker/loop.py): `infer` (preprocess and engine, on the inference thread)
and `finish` (postprocess, tracker, analytics and the one device-to-host copy of the batch, which becomes
the per-frame `FrameResult` records). It knows nothing of cameras coming and going: the caller says which
frames are due for inference and what each frame's camera is called.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rtsp_worker.analytics.events import Analytics, EventIds, needs_analytics
from rtsp_worker.config import CameraConfig, Config
from rtsp_worker.detection.finite import NonFiniteCounter, drop_nonfinite
from rtsp_worker.detection.postprocess import Postprocessor
from rtsp_worker.detection.preprocess import Preprocessor, frame_rgb
from rtsp_worker.engines import Engine
from rtsp_worker.sinks.run import run_id
from rtsp_worker.status import BatchReport
from rtsp_worker.tracking.tracker import IouTracker
from rtsp_worker.types import Detections, Frame, FrameResult, Letterbox, TrackedObject, Tracks


@dataclass(slots=True)
class Inferred:
    """A batch between the two halves: engine output not yet postprocessed."""

    frames: Sequence[Frame]
    due: list[bool]  # frame was inferred (its camera's infer_interval)
    still: list[bool] | None  # the motion gate saw no change: the tracker holds the frame's tracks still
    rows: list[int]  # positions of the inferred frames in the batch
    raw: torch.Tensor | None
    letterbox: Letterbox | None
    t0: float
    t1: float
    t2: float


@dataclass(frozen=True, slots=True)
class StepOutput:
    results: list[FrameResult]
    tracks: Tracks  # on the work device; `batch_index` = position of the frame in the batch
    report: BatchReport
    detections: int  # detections kept by postprocessing (finite ones), before the tracker


class BatchStep:
    """The stages of one engine, built once; `infer` + `finish` (or a call) run one batch through them.

    Not thread-safe: `infer` runs on one thread (it owns the engine), `finish` on one (it owns the tracker
    and the analytics), in batch order.
    """

    def __init__(self, engine: Engine, preprocess: Preprocessor, postprocess: Postprocessor, tracker: IouTracker,
                 analytics: Analytics | None = None, include_tentative: bool = False) -> None:
        self.engine = engine
        self.device = engine.device
        self.class_names = engine.info.class_names
        self.preprocess = preprocess
        self.postprocess = postprocess
        self.tracker = tracker
        self.analytics = analytics  # replaced by the pipeline when cameras with lines or zones change
        # Event ids (`<run>-<camera>-<n>`) outlive every rebuild of the analytics stage: ids never repeat.
        self.event_ids = analytics.event_ids if analytics is not None else EventIds(run_id())
        self.include_tentative = include_tentative
        self.nonfinite = NonFiniteCounter(self.device)  # NaN/Inf detections dropped before the tracker
        self.stage = ""  # the stage running now, or the one that raised (doctor names it)

    @classmethod
    def build(cls, cfg: Config, engine: Engine, rows: int) -> BatchStep:
        """The stages for `cfg` on `engine`, with a tracker of `rows` camera rows.

        The preprocessor follows the model's own input conventions (`info.spec`: size, channel order, scale),
        the postprocessor its output layout; both are the engine's, never guessed from the input size.
        """
        info = engine.info
        dev = engine.device
        pre = Preprocessor(info.spec, cfg.batcher.max_batch, dev, engine.input_dtype)
        post = Postprocessor.for_model(cfg.detection, info, dev)
        tracker = IouTracker(cfg.tracker, rows, dev)
        # Lines and zones run on the host copy of the tracks (see analytics/events.py); None without any.
        analytics = Analytics.from_config(cfg, info.class_names)
        return cls(engine, pre, post, tracker, analytics, cfg.output.include_tentative)

    def cameras_changed(self, cfg: Config, cameras: Sequence[CameraConfig], rows: Sequence[CameraConfig | None]
                        ) -> None:
        """The cameras changed (`rows`: each batch row's camera, None when free): with lines or zones on any
        (or before), the analytics stage is rebuilt for them; event ids go on."""
        if self.analytics is not None or any(needs_analytics(c) for c in cameras):
            self.analytics = Analytics.for_rows(cfg, rows, self.class_names, self.analytics, self.event_ids)

    def __call__(self, frames: Sequence[Frame], cameras: Sequence[str], due: Sequence[bool] | None = None,
                 images: bool = False, still: Sequence[bool] | None = None) -> StepOutput:
        """Both halves at once: every frame inferred unless `due` says otherwise."""
        return self.finish(self.infer(frames, due, still=still), cameras, images)

    def infer(self, frames: Sequence[Frame], due: Sequence[bool] | None = None, own_output: bool = False,
              still: Sequence[bool] | None = None) -> Inferred:
        """First half: preprocess and run the engine on the frames due for inference.

        `own_output`: the result must survive the engine's next call. Engines with preallocated outputs
        (TensorRT slots) reuse them, so with two batches in flight a device copy is taken (on the same
        stream, so it is ordered before the next call's writes).
        """
        t0 = time.perf_counter()
        flags = [True] * len(frames) if due is None else list(due)
        rows = [i for i, f in enumerate(flags) if f]
        raw = letterbox = None
        t1 = t0
        if rows:
            self.stage = "preprocess"
            images, letterbox = self.preprocess([frames[i] for i in rows])
            t1 = time.perf_counter()
            self.stage = "engine"
            raw = self.engine.infer(images)
            if own_output and raw.is_cuda and not getattr(self.engine, "fresh_outputs", False):
                raw = raw.clone()
        return Inferred(frames, flags, None if still is None else list(still), rows, raw, letterbox, t0, t1,
                        time.perf_counter())

    def finish(self, inf: Inferred, cameras: Sequence[str], images: bool = False) -> StepOutput:
        """Second half: postprocess, track, analytics, pack (the one device-to-host copy), FrameResults.

        `cameras`: each frame's camera name; `images`: attach each frame's pixels (a sink wants them).
        """
        frames, rows = inf.frames, inf.rows
        dev = self.device
        t2 = time.perf_counter()
        meta = _batch_meta(frames, inf.due, rows, dev, inf.still)  # one host-to-device copy, no sync
        self.stage = "postprocess"
        if inf.raw is not None:
            dets = self.postprocess(inf.raw, inf.letterbox)  # type: ignore[arg-type]
            if len(rows) != len(frames):  # positions in the inferred subset -> positions in the batch
                row_map = meta[3, : len(rows)].long()
                dets = Detections(dets.boxes, dets.scores, dets.class_ids, row_map[dets.batch_index])
            dets, nonfinite = drop_nonfinite(dets)
            self.nonfinite.add(nonfinite)
        else:
            dets = Detections.empty(dev)
        t3 = time.perf_counter()
        self.stage = "tracker"
        # Stream time where known: right across dropped frames and for file sources decoded faster than real time.
        tracks = self.tracker.update(meta[0].long(), dets.to(dev), meta[1].bool(),
                                     include_tentative=self.include_tentative, timestamps=meta[2],
                                     still=meta[4].bool() if inf.still is not None else None)
        self.stage = "host copy"
        results = self._results(frames, cameras, tracks, images)
        self.stage = ""
        t4 = time.perf_counter()
        report = BatchReport(len(frames), len(rows), (inf.t1 - inf.t0) * 1e3, (inf.t2 - inf.t1) * 1e3,
                             (t3 - t2) * 1e3, (t4 - t3) * 1e3, tuple((r.camera, r.done_ts - r.ts) for r in results))
        return StepOutput(results, tracks, report, len(dets))

    def _results(self, frames: Sequence[Frame], cameras: Sequence[str], tracks: Tracks, images: bool
                 ) -> list[FrameResult]:
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
        pixels = [frame_rgb(f) for f in frames] if images else [None] * len(frames)
        events = [()] * len(frames)
        motion = None  # per frame: (rows, 3) world x, y, speed where a camera is calibrated
        if self.analytics is not None:
            t = torch.from_numpy(host)
            events = self.analytics.update(frames, t[:, 0].long(), t[:, 1].long(), t[:, 2].long(), t[:, 4:8])
            if self.analytics.ground.any:
                motion = np.split(self.analytics.kinematics, np.cumsum(counts)[:-1])
        out = []
        for i, (f, name, rows, img, ev) in enumerate(zip(frames, cameras, per_frame, pixels, events)):
            objects = tuple(
                TrackedObject(int(r[1]), int(r[2]), names[int(r[2])], float(r[3]), (r[4], r[5], r[6], r[7]))
                for r in rows.tolist()
            )
            if motion is not None:
                objects = _with_motion(objects, motion[i])
            out.append(FrameResult(camera=name, row=f.row, frame=f.seq, ts=f.ts, width=f.width, height=f.height,
                                   objects=objects, image=img, done_ts=done, events=tuple(ev)))
        return out


def _with_motion(objects: tuple[TrackedObject, ...], motion: np.ndarray) -> tuple[TrackedObject, ...]:
    """The objects with their world position and speed (a calibrated camera; NaN stays None)."""
    out = []
    for o, (x, y, v) in zip(objects, motion.tolist()):
        world = None if math.isnan(x) or math.isnan(y) else (x, y)
        out.append(TrackedObject(o.track_id, o.class_id, o.class_name, o.confidence, o.box, world,
                                 None if math.isnan(v) else v))
    return tuple(out)


def _batch_meta(frames: Sequence[Frame], due: Sequence[bool], rows: Sequence[int], device: torch.device,
                still: Sequence[bool] | None = None) -> torch.Tensor:
    """(5, B) float64 on `device`: each frame's row, due flag, timestamp, the inferred positions (padded),
    and the motion gate's still flag.

    Built on the host and copied once. On a GPU from pinned memory, non-blocking, on the current stream:
    `torch.tensor(list, device=cuda)` would copy from pageable memory and wait for the device, so the finish
    thread would wait for the next batch's inference. Rows, flags and positions are exact in float64.
    """
    n = len(frames)
    meta = torch.empty((5, n), dtype=torch.float64, pin_memory=device.type == "cuda")
    host = meta.numpy()
    host[0] = [f.row for f in frames]
    host[1] = due
    host[2] = [f.stream_time for f in frames]
    host[3, : len(rows)] = rows
    host[3, len(rows):] = 0
    host[4] = 0 if still is None else still
    return meta if device.type == "cpu" else meta.to(device, non_blocking=True)
