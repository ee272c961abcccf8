"""The analytics stage: tracks of a batch in, line-crossing and zone events out, for all cameras at once.

State lives in fixed tables of `(C, S + 1)` slots per camera (`S = capacity`), keyed by track id: one
(tracks x slots) comparison finds each track's slot, new tracks take free slots by rank, and the last slot
is a sink for rows that found none (a full table), so every step is fixed-shape tensor work without a
host read. Tracks not reported for `expire` processed frames of their camera are forgotten; one that was
inside a zone then gets an exit event marked `lost`.

The pipeline runs this on the host copy of the tracks it makes anyway (the one device-to-host copy per
batch): the events are few and of data-dependent number, so on the device they would cost a sync and a
second copy per batch, while the work here is a few (tracks x lines) element-wise ops. The code is
device-agnostic all the same (the tests run it on CUDA tensors where a GPU exists).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rtsp_worker.analytics.lines import NO_CROSSING, LineSet
from rtsp_worker.analytics.rules import (
    CrowdState,
    GroundPlane,
    StreamClock,
    loiter_thresholds,
    outside_frame,
    speed_limits,
)
from rtsp_worker.analytics.zones import ZoneSet, ZoneStep
from rtsp_worker.config import CameraConfig, Config, ConfigError
from rtsp_worker.devices import normalize_device
from rtsp_worker.sinks.run import run_id
from rtsp_worker.types import Event, Frame

log = logging.getLogger(__name__)


class EventIds:
    """Event ids `<run>-<camera>-<n>`, n counting from 1 per camera for the whole run.

    Owned by the pipeline, not by one `Analytics`: the stage is rebuilt whenever the camera set changes (or
    dropped while no camera has a line or zone), and a camera removed and added again must not reuse ids.
    Called from the one thread that runs the analytics.
    """

    def __init__(self, run: str) -> None:
        self.run = run
        self._counts: dict[str, int] = {}

    def next(self, camera: str) -> str:
        n = self._counts[camera] = self._counts.get(camera, 0) + 1
        return f"{self.run}-{camera}-{n}"


def class_masks(cameras: Sequence[CameraConfig], kind: str, class_names: Sequence[str],
                origin: str) -> Tensor:
    """(C, K, classes) bool: which classes count on each camera's lines or zones (`kind`: lines | zones).

    Unknown names and out-of-range ids are a ConfigError naming the file, camera and field.
    """
    n = max((len(getattr(c, kind)) for c in cameras), default=0)
    out = torch.zeros((len(cameras), max(n, 1), len(class_names)), dtype=torch.bool)
    for c, cam in enumerate(cameras):
        for i, item in enumerate(getattr(cam, kind)):
            if item.classes is None:
                out[c, i] = True
                continue
            for k in item.classes:
                if isinstance(k, str) and k in class_names:
                    out[c, i, class_names.index(k)] = True
                elif isinstance(k, int) and 0 <= k < len(class_names):
                    out[c, i, k] = True
                else:
                    raise ConfigError(
                        f"{origin}: camera {cam.name!r}, field '{kind}.{i}.classes': unknown class {k!r} "
                        f"(the model's classes: {', '.join(class_names)})"
                    )
    return out


def needs_analytics(cam: CameraConfig) -> bool:
    """Whether the camera needs the analytics stage: lines, zones, or a calibration (world positions, speeds)."""
    return bool(cam.lines or cam.zones or cam.calibration is not None)


class Analytics:
    """Counting lines and zones of every camera; `update` once per batch, after the tracker.

    Times (dwell, loitering, speed) are stream time (`StreamClock`: the frames' pts, wall-clock where a
    stream has none), so batching jitter does not enter them and a file played faster than real time gives
    the same results. Rules: `loiter` per visit while inside, `crowded`/`cleared` per zone with hysteresis,
    `speeding` on lines and zones of calibrated cameras.

    Host-side counters for metrics and logs: `crossings[(camera, line, direction, class)]` (totals) and
    `occupancy(row)` (tracks inside each zone now, per class). Both are read from other threads.
    """

    def __init__(self, cameras: Sequence[CameraConfig], class_names: Sequence[str], *, expire: Sequence[int],
                 capacity: int = 512, device: torch.device | str = "cpu", origin: str = "<config>",
                 event_ids: EventIds | None = None) -> None:
        device = normalize_device(device)
        self.event_ids = event_ids if event_ids is not None else EventIds(run_id())
        self.cameras = list(cameras)
        self.names = [c.name for c in cameras]
        self.class_names = list(class_names)
        self.device = device
        self.lines = LineSet([c.lines for c in cameras], class_masks(cameras, "lines", class_names, origin),
                             device)
        self.zones = ZoneSet([c.zones for c in cameras], class_masks(cameras, "zones", class_names, origin),
                             device)
        n_cams, slots = len(cameras), capacity + 1  # the last slot takes rows that found no free one
        n_lines, n_zones = max(self.lines.size, 1), max(self.zones.size, 1)
        self.capacity = capacity
        self.expire = torch.tensor(list(expire), dtype=torch.int64, device=device)
        self.steps = torch.zeros(n_cams, dtype=torch.int64, device=device)  # processed frames per camera
        self.ids = torch.full((n_cams, slots), -1, dtype=torch.int64, device=device)
        self.cls = torch.zeros((n_cams, slots), dtype=torch.int64, device=device)
        self.last_step = torch.zeros((n_cams, slots), dtype=torch.int64, device=device)
        self.side = torch.zeros((n_cams, slots, n_lines), dtype=torch.int8, device=device)
        self.pos = torch.zeros((n_cams, slots, n_lines, 2), dtype=torch.float32, device=device)
        self.counted = torch.zeros((n_cams, slots, n_lines, 2), dtype=torch.bool, device=device)
        self.inside = torch.zeros((n_cams, slots, n_zones), dtype=torch.bool, device=device)
        self.enter_ts = torch.zeros((n_cams, slots, n_zones), dtype=torch.float64, device=device)
        self.last_ts = torch.zeros((n_cams, slots), dtype=torch.float64, device=device)
        self.zone_anchor = torch.zeros((n_cams, slots, n_zones, 2), dtype=torch.float32, device=device)
        # Track-frames not analysed because the camera's table was full.
        self.overflow = torch.zeros((), dtype=torch.int64, device=device)
        self._lock = threading.Lock()
        self.crossings: dict[tuple[str, str, str, str], int] = {}
        self._occupancy = np.zeros((n_cams, n_zones, len(class_names)), dtype=np.int64)
        # Rules (issue 31): thresholds per camera, zone (and class); state per slot and zone.
        self.loiter_thr = loiter_thresholds(cameras, class_names, origin).to(device)  # (C, Z, K) s, inf: none
        self.zone_speed, self.line_speed = (t.to(device) for t in speed_limits(cameras))  # (C, Z), (C, L) m/s
        self.loitered = torch.zeros((n_cams, slots, n_zones), dtype=torch.bool, device=device)
        self.sped = torch.zeros((n_cams, slots, n_zones), dtype=torch.bool, device=device)
        self.ground = GroundPlane(cameras, slots, device)
        self.clock = StreamClock(n_cams)
        self.crowd = CrowdState(cameras)
        self.rule_counts: dict[tuple[str, str, str], int] = {}  # (camera, zone or line, rule) -> events
        # (M, 3) float64 of the last batch, in the order update() got its rows: world x, y (m) and speed
        # (calibration.speed_unit); NaN where the camera has no calibration or the track was seen once.
        self.kinematics = np.zeros((0, 3))
        self.checked_rows: set[int] = set()  # rows whose first frame was checked against their geometry

    @classmethod
    def from_config(cls, cfg: Config, class_names: Sequence[str], device: torch.device | str = "cpu",
                    event_ids: EventIds | None = None) -> Analytics | None:
        """The stage for `cfg`'s enabled cameras, or None when none has a line or zone."""
        cams = cfg.enabled_cameras
        if not any(needs_analytics(c) for c in cams):
            return None
        # Forget a track a little after the tracker would: max_age counts inferred frames only.
        expire = [(cfg.tracker.max_age + 2) * c.infer_interval for c in cams]
        return cls(cams, class_names, expire=expire, capacity=2 * cfg.tracker.max_tracks, device=device,
                   origin=cfg.origin, event_ids=event_ids)

    @classmethod
    def for_rows(cls, cfg: Config, rows: Sequence[CameraConfig | None], class_names: Sequence[str],
                 previous: Analytics | None = None, event_ids: EventIds | None = None) -> Analytics | None:
        """The stage after the camera set changed at run time (rows = tracker rows, None where free).

        A camera whose row, name, lines and zones are unchanged keeps its state (track sides, zone presence,
        counted crossings, totals); a new, edited or removed camera starts over. None when no camera has a
        line or zone.
        """
        if not any(c is not None and needs_analytics(c) for c in rows):
            return None
        # A free row never gets frames; a placeholder without lines or zones keeps the tensors indexed by row.
        cams = [c if c is not None else CameraConfig(name=f"_free{r}", url="file:///free-row")
                for r, c in enumerate(rows)]
        expire = [(cfg.tracker.max_age + 2) * c.infer_interval for c in cams]
        new = cls(cams, class_names, expire=expire, capacity=2 * cfg.tracker.max_tracks,
                  device=previous.device if previous is not None else "cpu", origin=cfg.origin,
                  event_ids=event_ids or (previous.event_ids if previous is not None else None))
        if previous is not None:
            new._keep_from(previous)
        return new

    def _keep_from(self, old: Analytics) -> None:
        """Copy the state of every camera that is the same camera with the same lines and zones."""
        kept = set()
        for r, cam in enumerate(self.cameras[: len(old.cameras)]):
            was = old.cameras[r]
            if (was.name != cam.name or was.lines != cam.lines or was.zones != cam.zones
                    or was.calibration != cam.calibration):
                continue
            kept.add(cam.name)
            nl = min(self.side.shape[2], old.side.shape[2])
            nz = min(self.inside.shape[2], old.inside.shape[2])
            self.steps[r] = old.steps[r]
            for name in ("ids", "cls", "last_step", "last_ts"):
                getattr(self, name)[r] = getattr(old, name)[r]
            for name in ("side", "pos", "counted"):
                getattr(self, name)[r, :, :nl] = getattr(old, name)[r, :, :nl]
            for name in ("inside", "enter_ts", "zone_anchor", "loitered", "sped"):
                getattr(self, name)[r, :, :nz] = getattr(old, name)[r, :, :nz]
            self.ground.keep_row(r, old.ground)
            if r in old.checked_rows:
                self.checked_rows.add(r)
            self.clock.keep_row(r, old.clock)
            self.crowd.keep_row(r, old.crowd)
        self.crossings = {k: v for k, v in old.crossing_totals().items() if k[0] in kept}
        self.rule_counts = {k: v for k, v in old.rule_totals().items() if k[0] in kept}
        self._update_occupancy()

    # -- one batch --------------------------------------------------------------------------------------
    def update(self, frames: Sequence[Frame], batch_index: Tensor, track_ids: Tensor, class_ids: Tensor,
               boxes: Tensor) -> list[list[Event]]:
        """Advance every camera of the batch by one frame; returns the events of each batch row.

        `batch_index`, `track_ids`, `class_ids` (M,) int64 and `boxes` (M, 4) xyxy source-frame pixels: the
        reported tracks of the batch (one frame per camera).
        """
        dev = self.device
        batch_index, track_ids = batch_index.to(dev), track_ids.to(dev)
        class_ids, boxes = class_ids.to(dev), boxes.to(dev, torch.float32)
        n_rows = len(frames)
        frame_cam = torch.tensor([f.row for f in frames], dtype=torch.int64, device=dev)
        for f in frames:
            if f.row not in self.checked_rows:
                self.checked_rows.add(f.row)
                for warning in outside_frame(self.cameras[f.row], f.width, f.height):
                    log.warning("%s", warning)
        stream_ts = self.clock.times(frames)  # host floats, one per frame
        frame_ts = torch.tensor(stream_ts, dtype=torch.float64, device=dev)
        frame_size = torch.tensor([(f.width, f.height) for f in frames], dtype=torch.float32, device=dev)
        self.steps[frame_cam] += 1
        cam, ts, sizes = frame_cam[batch_index], frame_ts[batch_index], frame_size[batch_index]
        slot, known = self._slots(cam, track_ids)

        flat = cam * self.ids.shape[1] + slot  # row -> flat slot index
        lines = self.lines.step(cam, boxes, class_ids, sizes, known, self._rows(self.side, flat),
                                self._rows(self.pos, flat), self._rows(self.counted, flat))
        zones = self.zones.step(cam, boxes, class_ids, sizes, known, self._rows(self.inside, flat))
        prev_enter = torch.where(known[:, None], self._rows(self.enter_ts, flat), ts[:, None])
        enter_ts = torch.where(zones.entered, ts[:, None], prev_enter)
        dwell = ts[:, None] - prev_enter
        world, speed = self.ground.step(cam, flat, known, boxes, sizes, ts)  # (M, 2) m, (M,) m/s (NaN: none)
        # Loiter and zone speeding fire once per visit: the flags clear on entering and on leaving.
        so_far = ts[:, None] - enter_ts
        thr = self.loiter_thr[cam, :, class_ids]  # (M, Z)
        was_loitered = self._rows(self.loitered, flat) & known[:, None] & ~zones.entered
        loiter = zones.inside & ~was_loitered & (so_far >= thr)
        was_sped = self._rows(self.sped, flat) & known[:, None] & ~zones.entered
        sped = zones.inside & ~was_sped & (speed[:, None] > self.zone_speed[cam])
        line_fast = speed[:, None] > self.line_speed[cam]

        self._store(self.ids, flat, track_ids)
        self._store(self.cls, flat, class_ids)
        self._store(self.last_step, flat, self.steps[cam])
        self._store(self.last_ts, flat, ts)
        self._store(self.side, flat, lines.side)
        self._store(self.pos, flat, lines.pos)
        self._store(self.counted, flat, lines.counted)
        self._store(self.inside, flat, zones.inside)
        self._store(self.enter_ts, flat, enter_ts)
        self._store(self.zone_anchor, flat, zones.anchor)
        self._store(self.loitered, flat, (was_loitered | loiter) & zones.inside)
        self._store(self.sped, flat, (was_sped | sped) & zones.inside)
        self._reset_trash()
        self.kinematics = self.ground.report(cam, world, speed)

        events: list[list[Event]] = [[] for _ in range(n_rows)]
        spd = speed * self.ground.factor[cam]  # the configured unit
        self._line_events(events, frames, batch_index, track_ids, class_ids, lines.crossing, lines.anchor, spd,
                          line_fast)
        self._zone_events(events, frames, batch_index, track_ids, class_ids, zones, dwell, spd)
        self._rule_events(events, frames, batch_index, track_ids, class_ids, zones.anchor, loiter, so_far, sped,
                          spd)
        expired = self._stale(frame_cam)
        self._lost_events(events, frames, frame_cam, expired)
        self.ids.masked_fill_(expired, -1)
        self.inside.masked_fill_(expired[:, :, None], False)
        self.loitered.masked_fill_(expired[:, :, None], False)
        self.sped.masked_fill_(expired[:, :, None], False)
        self.ground.forget(expired)
        self._update_occupancy()
        self._crowd_events(events, frames, stream_ts)
        return events

    def _slots(self, cam: Tensor, track_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Each row's slot in its camera's table (a free one for new tracks) and whether it was known."""
        n_cams, slots = self.ids.shape
        trash = slots - 1
        match = self.ids[cam] == track_ids[:, None]  # (M, S+1)
        known = match.any(1)
        found = match.to(torch.int8).argmax(1)
        new = ~known
        # The r-th new track of a camera takes that camera's r-th free slot.
        onehot = F.one_hot(cam, n_cams) & new[:, None]
        rank = onehot.cumsum(0).gather(1, cam[:, None])[:, 0] - 1
        free = self.ids == -1
        free[:, trash] = False
        free_rank = free.to(torch.int64).cumsum(1)  # (C, S+1) non-decreasing
        taken = torch.searchsorted(free_rank[cam], (rank + 1)[:, None])[:, 0].clamp(max=trash)
        slot = torch.where(known, found, taken)
        self.overflow += (new & (slot == trash)).sum()
        return slot, known

    @staticmethod
    def _rows(table: Tensor, flat: Tensor) -> Tensor:
        return table.reshape(-1, *table.shape[2:])[flat]

    @staticmethod
    def _store(table: Tensor, flat: Tensor, values: Tensor) -> None:
        table.reshape(-1, *table.shape[2:])[flat] = values.to(table.dtype)

    def _reset_trash(self) -> None:
        # Rows that found no slot wrote here; the slot must look free and empty to the next batch.
        self.ids[:, -1] = -1
        self.inside[:, -1] = False

    def _stale(self, frame_cam: Tensor) -> Tensor:
        """(C, S+1) bool: tracks of the batch's cameras unseen for longer than `expire` processed frames."""
        in_batch = torch.zeros(self.ids.shape[0], dtype=torch.bool, device=self.device)
        in_batch[frame_cam] = True
        stale = (self.steps[:, None] - self.last_step) > self.expire[:, None]
        return (self.ids >= 0) & stale & in_batch[:, None]

    # -- host side: events are few, so a loop over them (never over tracks) is fine ----------------------
    def _event(self, frame: Frame, track_id: int, class_id: int, kind: str, name: str, direction: str,
               point: Sequence[float], dwell: float | None = None, lost: bool = False, rule: str = "",
               speed: float | None = None, count: int | None = None) -> Event:
        camera = self.names[frame.row]
        if rule:
            key = (camera, name, rule)
            with self._lock:
                self.rule_counts[key] = self.rule_counts.get(key, 0) + 1
        return Event(camera=camera, frame=frame.seq, ts=frame.ts, track_id=track_id, class_id=class_id,
                     class_name=self.class_names[class_id] if class_id >= 0 else "", kind=kind, name=name,
                     direction=direction, point=(float(point[0]), float(point[1])), dwell_s=dwell, lost=lost,
                     id=self.event_ids.next(camera), rule=rule,
                     speed=None if speed is None or math.isnan(speed) else speed, count=count)

    def _line_events(self, events: list[list[Event]], frames: Sequence[Frame], batch_index: Tensor,
                     track_ids: Tensor, class_ids: Tensor, crossing: Tensor, anchor: Tensor, speed: Tensor,
                     fast: Tensor) -> None:
        hits = (crossing != NO_CROSSING).nonzero()
        if not len(hits):
            return
        hits = hits.cpu()
        rows, cols = hits[:, 0], hits[:, 1]
        dirs = crossing.cpu()[rows, cols].tolist()
        pts = anchor.cpu()[rows, cols].tolist()
        over = fast.cpu()[rows, cols].tolist()
        bi, tid, cl, sp = (t.cpu()[rows].tolist() for t in (batch_index, track_ids, class_ids, speed))
        for b, t, c, line_i, d, pt, v, o in zip(bi, tid, cl, cols.tolist(), dirs, pts, sp, over):
            frame = frames[b]
            line = self.lines.configs[frame.row][line_i]
            ev = self._event(frame, t, c, "line", line.name, line.directions[d], pt, speed=v)
            events[b].append(ev)
            key = (ev.camera, line.name, ev.direction, ev.class_name)
            with self._lock:
                self.crossings[key] = self.crossings.get(key, 0) + 1
            if o:
                events[b].append(self._event(frame, t, c, "line", line.name, line.directions[d], pt,
                                             rule="speeding", speed=v))

    def _zone_events(self, events: list[list[Event]], frames: Sequence[Frame], batch_index: Tensor,
                     track_ids: Tensor, class_ids: Tensor, zones: ZoneStep, dwell: Tensor, speed: Tensor) -> None:
        changed = (zones.entered | zones.exited).nonzero()
        if not len(changed):
            return
        changed = changed.cpu()
        rows, cols = changed[:, 0], changed[:, 1]
        entered = zones.entered.cpu()[rows, cols].tolist()
        pts = zones.anchor.cpu()[rows, cols].tolist()
        dw = dwell.cpu()[rows, cols].tolist()
        bi, tid, cl, sp = (t.cpu()[rows].tolist() for t in (batch_index, track_ids, class_ids, speed))
        for b, t, c, zone_i, enter, pt, d, v in zip(bi, tid, cl, cols.tolist(), entered, pts, dw, sp):
            frame = frames[b]
            zone = self.zones.configs[frame.row][zone_i]
            events[b].append(self._event(frame, t, c, "zone", zone.name, "enter" if enter else "exit", pt,
                                         dwell=None if enter else d, speed=v))

    def _rule_events(self, events: list[list[Event]], frames: Sequence[Frame], batch_index: Tensor,
                     track_ids: Tensor, class_ids: Tensor, anchor: Tensor, loiter: Tensor, so_far: Tensor,
                     sped: Tensor, speed: Tensor) -> None:
        """`loiter` (dwell so far) and zone `speeding` events of this batch's tracks."""
        fired = (loiter | sped).nonzero()
        if not len(fired):
            return
        fired = fired.cpu()
        rows, cols = fired[:, 0], fired[:, 1]
        is_loiter = loiter.cpu()[rows, cols].tolist()
        is_sped = sped.cpu()[rows, cols].tolist()
        dw = so_far.cpu()[rows, cols].tolist()
        pts = anchor.cpu()[rows, cols].tolist()
        bi, tid, cl, sp = (t.cpu()[rows].tolist() for t in (batch_index, track_ids, class_ids, speed))
        for b, t, c, zone_i, lo, fast, d, pt, v in zip(bi, tid, cl, cols.tolist(), is_loiter, is_sped, dw, pts, sp):
            frame = frames[b]
            zone = self.zones.configs[frame.row][zone_i]
            if lo:
                events[b].append(self._event(frame, t, c, "zone", zone.name, "loiter", pt, dwell=d, rule="loiter",
                                             speed=v))
            if fast:
                events[b].append(self._event(frame, t, c, "zone", zone.name, "speeding", pt, rule="speeding",
                                             speed=v))

    def _crowd_events(self, events: list[list[Event]], frames: Sequence[Frame], times: Sequence[float]) -> None:
        """`crowded` / `cleared` per zone of the batch's cameras, from the occupancy just computed (host)."""
        with self._lock:
            occ = self._occupancy.sum(2)  # (C, Z)
        for b, frame in enumerate(frames):
            for zone_i, rule, count in self.crowd.step(frame.row, occ[frame.row], times[b]):
                zone = self.zones.configs[frame.row][zone_i]
                centre = self.zones.centre(frame.row, zone_i, frame.width, frame.height)
                events[b].append(self._event(frame, -1, -1, "zone", zone.name, rule, centre, rule=rule,
                                             count=count))

    def _lost_events(self, events: list[list[Event]], frames: Sequence[Frame], frame_cam: Tensor,
                     expired: Tensor) -> None:
        """Exit events (marked lost) for forgotten tracks that were inside a zone; dwell up to last seen."""
        gone = (self.inside & expired[:, :, None]).nonzero()
        if not len(gone):
            return
        gone = gone.cpu()
        c_i, s_i, z_i = gone[:, 0], gone[:, 1], gone[:, 2]
        row_of = {c: b for b, c in enumerate(frame_cam.tolist())}
        tid = self.ids.cpu()[c_i, s_i].tolist()
        cl = self.cls.cpu()[c_i, s_i].tolist()
        dwell = (self.last_ts.cpu()[c_i, s_i] - self.enter_ts.cpu()[c_i, s_i, z_i]).tolist()
        pts = self.zone_anchor.cpu()[c_i, s_i, z_i].tolist()
        for c, t, k, z, d, pt in zip(c_i.tolist(), tid, cl, z_i.tolist(), dwell, pts):
            b = row_of[c]
            zone = self.zones.configs[c][z]
            events[b].append(self._event(frames[b], t, k, "zone", zone.name, "exit", pt, dwell=d, lost=True))

    def _update_occupancy(self) -> None:
        live = self.inside & (self.ids >= 0)[:, :, None]  # (C, S+1, Z)
        per_class = F.one_hot(self.cls, len(self.class_names)).to(torch.int64)  # (C, S+1, K)
        occ = torch.einsum("csz,csk->czk", live.to(torch.int64), per_class).cpu().numpy()
        with self._lock:
            self._occupancy = occ

    # -- for metrics and logs (any thread) ------------------------------------------------------------------
    def occupancy(self, camera: int) -> np.ndarray:
        """(Z, classes) int64: tracks inside each of the camera's zones now (padded zones are zero)."""
        with self._lock:
            return self._occupancy[camera].copy()

    def crossing_totals(self) -> dict[tuple[str, str, str, str], int]:
        with self._lock:
            return dict(self.crossings)

    def rule_totals(self) -> dict[tuple[str, str, str], int]:
        """(camera, zone or line, rule) -> events so far (loiter, crowded, cleared, speeding)."""
        with self._lock:
            return dict(self.rule_counts)

    def crowded(self) -> list[tuple[str, str, bool]]:
        """(camera, zone, crowded now) for every zone with `max_objects`."""
        return [(self.names[c], self.zones.configs[c][z].name, on) for c, z, on in self.crowd.states()]

    def summary(self, camera: int) -> str:
        """`lines=door:in=3,out=1 zones=lobby:2` for the periodic log line ('' without lines and zones)."""
        name = self.names[camera]
        totals = self.crossing_totals()
        parts = []
        lines = []
        for line in self.lines.configs[camera]:
            counts = [sum(v for (c, n, d, _), v in totals.items()
                          if c == name and n == line.name and d == dname) for dname in line.directions]
            lines.append(f"{line.name}:{line.directions[0]}={counts[0]},{line.directions[1]}={counts[1]}")
        if lines:
            parts.append("lines=" + ";".join(lines))
        occ = self.occupancy(camera).sum(1)
        zones = [f"{z.name}:{int(occ[i])}" for i, z in enumerate(self.zones.configs[camera])]
        if zones:
            parts.append("zones=" + ";".join(zones))
        rules: dict[str, list[str]] = {}
        for (c, n, rule), v in sorted(self.rule_totals().items()):
            if c == name:
                rules.setdefault(n, []).append(f"{rule}={v}")
        if rules:
            parts.append("rules=" + ";".join(f"{n}:{','.join(v)}" for n, v in rules.items()))
        return " ".join(parts)
