"""Evidence for events: clips (clips.py) and best snapshots (snapshots.py) of the cameras that ask for them.

The pipeline calls `annotate` with each finished batch before the sinks get it: matching events are given
their `clip` and `snapshot` paths at once (never delayed: the clip is still being written, the snapshot may
wait for its encode a few batches), and `clip` records of the clips finalized since the last batch come back
to be sent as events of their own. Camera changes (`configure`, `remove`) and the stop (`close`) finalize
clips the same way, between two batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rtsp_worker.config import CameraConfig
from rtsp_worker.config.evidence import EvidenceRules, SnapshotsConfig
from rtsp_worker.detection.preprocess import frame_rgb
from rtsp_worker.evidence.clips import ClipRecord, ClipRecorder
from rtsp_worker.evidence.disk import DiskGuard, EvidenceCounters, EvidenceStatus, enforce
from rtsp_worker.evidence.snapshots import TrackBests
from rtsp_worker.sources.packets import TAPS, PacketTaps
from rtsp_worker.types import Event, Frame, FrameResult

if TYPE_CHECKING:
    from rtsp_worker.status import BatchOutput

log = logging.getLogger(__name__)

ENCODES_PER_BATCH = 4  # JPEG encodes per batch at most; the rest wait for the next batches
FORGET_S = 60.0  # a track not reported for this long loses its best crop
SWEEP_S = 10.0  # retention runs at most this often per camera (and after each clip)


def matches(rules: EvidenceRules, e: Event) -> bool:
    if e.trigger not in rules.on:
        return False
    if rules.classes is not None and e.class_name not in rules.classes:
        return False
    if e.kind == "line" and rules.lines is not None and e.name not in rules.lines:
        return False
    return not (e.kind == "zone" and rules.zones is not None and e.name not in rules.zones)


@dataclass(slots=True)
class _Encode:
    camera: str
    rel: str
    image: Tensor  # (3, h, w) uint8, on the frame's device
    quality: int
    box: tuple[float, float, float, float] | None = None  # full frame: the box to draw


class Evidence:
    """Clips and snapshots of every camera that has `clips:` or `snapshots:`."""

    def __init__(self, root: Path, next_id: Callable[[str], str], taps: PacketTaps = TAPS,
                 encodes_per_batch: int = ENCODES_PER_BATCH) -> None:
        self.root = Path(root)
        self.next_id = next_id
        self.taps = taps
        self.encodes_per_batch = encodes_per_batch
        self.counters = EvidenceCounters()
        self.guard = DiskGuard()
        self.recorders: dict[str, ClipRecorder] = {}
        self.snapshots: dict[str, SnapshotsConfig] = {}
        self.bests: dict[str, TrackBests] = {}
        self.pending: deque[_Encode] = deque()
        self._finished: list[ClipRecord] = []
        self._lock = threading.Lock()
        self._swept = 0.0

    @property
    def active(self) -> bool:
        return bool(self.recorders or self.snapshots or self.pending or self._finished)

    def status(self) -> EvidenceStatus:
        return self.counters.status(self.guard.full, len(self.pending))

    # -- cameras (inference thread, between batches) ------------------------------------------------------
    def configure(self, cfg: CameraConfig) -> list[Event]:
        """A camera added or edited: its recorder and snapshot rules follow its config (new clips only)."""
        name = cfg.name
        rec = self.recorders.get(name)
        if cfg.clips is None:
            if rec is not None:
                self._drop_recorder(name, "config")
            self.taps.detach(name)  # and any left by an earlier pipeline of this process that never stopped
        elif cfg.clips is not None and rec is None:
            rec = self.recorders[name] = ClipRecorder(name, self.root, cfg.clips, self.guard, self.counters,
                                                      self._clip_done)
            self.taps.attach(name, rec)
        elif rec is not None and cfg.clips is not None:
            rec.reconfigure(cfg.clips)
        if cfg.snapshots is None:
            self.snapshots.pop(name, None)
            self.bests.pop(name, None)
        else:
            self.snapshots[name] = cfg.snapshots
            if name not in self.bests:
                self.bests[name] = TrackBests(cfg.snapshots.margin)
            self.bests[name].margin = cfg.snapshots.margin
        return self._drain()

    def camera_changed(self, event: str, name: str, cfg: CameraConfig | None) -> list[Event]:
        """The pipeline's camera listener (`cfg`: the camera's config now, None when gone): returns the clip
        records to hand the sinks, before a removed camera's close marker."""
        if event == "removed":
            return self.remove(name)
        if event in ("added", "updated", "reconnected") and cfg is not None:
            return self.configure(cfg)
        return []

    def remove(self, name: str) -> list[Event]:
        """A camera removed: its open clip is finalized (its `clip` record comes back), its crops forgotten."""
        if name in self.recorders:
            self._drop_recorder(name, "removed")
        self.snapshots.pop(name, None)
        self.bests.pop(name, None)
        self._encode(len(self.pending))  # its queued snapshots still get written
        return self._drain()

    def close(self) -> list[Event]:
        """The worker stops: every clip finalized, every queued snapshot written."""
        for name in list(self.recorders):
            self._drop_recorder(name, "stopped")
        self._encode(len(self.pending))
        return self._drain()

    def _drop_recorder(self, name: str, reason: str) -> None:
        rec = self.recorders.pop(name)
        self.taps.detach(name, rec)
        rec.finalize(reason)

    def _clip_done(self, record: ClipRecord) -> None:  # any thread
        with self._lock:
            self._finished.append(record)

    # -- batches (finish thread) --------------------------------------------------------------------------
    def before_sinks(self, batch: BatchOutput) -> tuple[BatchOutput, list[Event]]:
        """The pipeline's one hook before the sinks: `batch` with `clip` / `snapshot` on matching events, and
        the records of clips finalized since the last batch (events are never held back)."""
        annotated, finished = self.annotate(batch)
        events = tuple(e for res in annotated for e in res.events)
        return replace(batch, results=tuple(annotated), events=events), finished

    def annotate(self, batch: BatchOutput) -> tuple[Sequence[FrameResult], list[Event]]:
        """The batch's results with `clip` / `snapshot` on matching events, and the `clip` records of clips
        finalized since the last call. `batch` is what `Pipeline.on_batch` subscribers get, before the sinks
        got it: the frames still on their device, the host results made from the one copy of the batch."""
        frames, results = batch.frames, batch.results
        mono = time.monotonic()
        if self.bests:
            for f, res in zip(frames, results):
                bests = self.bests.get(res.camera)
                if bests is not None and res.objects:
                    bests.update(f, res.objects, mono)
        if any(res.events for res in results):
            results = [self._annotate_frame(f, res) if res.events else res for f, res in zip(frames, results)]
        now = time.time()
        for rec in list(self.recorders.values()):
            rec.expire(now)
        self._encode(self.encodes_per_batch)
        if mono - self._swept >= SWEEP_S:
            self._swept = mono
            self._sweep(mono)
        return results, self._drain()

    def _annotate_frame(self, frame: Frame, res: FrameResult) -> FrameResult:
        rec = self.recorders.get(res.camera)
        snap = self.snapshots.get(res.camera)
        if rec is None and snap is None:
            return res
        events = []
        for e in res.events:
            clip = rec.trigger(e.id, e.ts) if rec is not None and matches(rec.cfg, e) else None
            path = self._snapshot(frame, res, e, snap) if snap is not None and matches(snap, e) else None
            events.append(replace(e, clip=clip, snapshot=path) if clip or path else e)
        return replace(res, events=tuple(events))

    def _snapshot(self, frame: Frame, res: FrameResult, e: Event, cfg: SnapshotsConfig) -> str | None:
        best = self.bests[res.camera].tracks.get(e.track_id)
        if best is None:
            self.counters.drop("no_detection")  # the track was never reported (a tentative one)
            return None
        if best.path is not None:
            return best.path  # the track's first matching event saved it
        if not self.guard.ok():
            self.counters.drop("disk_full")
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(e.ts))
        best.path = f"{res.camera}/snapshots/{stamp}_{e.id}.jpg"
        self.pending.append(_Encode(res.camera, best.path, best.crop, cfg.quality))
        if cfg.full_frame:
            box = next((o.box for o in res.objects if o.track_id == e.track_id), None)
            full = frame_rgb(frame).permute(2, 0, 1)
            self.pending.append(_Encode(res.camera, best.path[:-4] + "_full.jpg", full, cfg.quality, box))
        return best.path

    def _encode(self, n: int) -> None:
        if not self.pending:
            return
        from torchvision.io import encode_jpeg  # only once a snapshot is due (the package takes ~2 s to import)

        for _ in range(min(n, len(self.pending))):
            job = self.pending.popleft()
            if not self.guard.ok():
                self.counters.drop("disk_full")
                continue
            t0 = time.perf_counter()
            image = job.image
            if job.box is not None:
                from torchvision.utils import draw_bounding_boxes

                box = torch.tensor([job.box], dtype=torch.float32)
                image = draw_bounding_boxes(image.cpu(), box, colors="red", width=3)
            data = encode_jpeg(image, quality=job.quality).cpu().numpy().tobytes()
            path = self.root / job.rel
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            except OSError as e:
                self.guard.failed(e)
                self.counters.drop("disk_full" if self.guard.is_space_error(e) else "write_error")
                path.unlink(missing_ok=True)  # a truncated JPEG is worse than none
                continue
            self.guard.succeeded()
            self.counters.snapshot_written(len(data), (time.perf_counter() - t0) * 1e3)

    def _sweep(self, _mono: float) -> None:
        for name, rec in list(self.recorders.items()):
            clip = rec.clip
            self.counters.removed(enforce(rec.folder, rec.cfg, keep=clip.file if clip is not None else None))
        for name, cfg in list(self.snapshots.items()):
            self.counters.removed(enforce(self.root / name / "snapshots", cfg))
            self.bests[name].forget(_mono - FORGET_S)

    def _drain(self) -> list[Event]:
        with self._lock:
            done, self._finished = self._finished, []
        out = []
        for r in done:
            rec = self.recorders.get(r.camera)
            if rec is not None:
                clip = rec.clip
                self.counters.removed(enforce(rec.folder, rec.cfg, keep=clip.file if clip is not None else None))
            out.append(Event(r.camera, -1, r.end_ts, -1, -1, "", "clip", r.path, "", (0.0, 0.0),
                             id=self.next_id(r.camera),
                             clip={"path": r.path, "start_ts": round(r.start_ts, 6), "end_ts": round(r.end_ts, 6),
                                   "events": list(r.events), "pre_roll_s": round(r.pre_roll_s, 3),
                                   "reason": r.reason, "bytes": r.bytes}))
        return out
