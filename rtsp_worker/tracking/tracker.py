"""IOU tracker with DeepStream / Bochinski et al. (2017) semantics, batched across cameras.

All cameras' tracks live in fixed slots of ``(C, T, ...)`` tensors on the pipeline's device
(``T = cfg.max_tracks``). One :meth:`IouTracker.update` call advances every camera in the batch:
the rows' state is gathered, associated with that batch's detections in one vectorized pass
(pairwise IoU of each detection with every slot of its own camera, masked, then greedy matching by
descending IoU), updated with ``torch.where`` and scattered back. Nothing on the hot path loops over
boxes or tracks in Python.

Rules, in the order they apply to a camera whose frame was inferred:

1. Prediction: every live track moves by the camera's time step (the motion model,
   ``cfg.motion``: Kalman filter, velocity EMA or none; see motion.py).
2. Detections below ``low_confidence`` are ignored (neither matched nor started).
3. Association: detections at or above ``min_confidence`` first: pairs with IoU >= ``iou_threshold``
   (and the same class when ``class_consistent``) are matched greedily, highest IoU first; ties go
   to the lower detection row, then the lower slot. Then detections in ``[low_confidence,
   min_confidence)`` the same way against the tracks still unmatched, at ``low_iou_threshold``
   (ByteTrack's second pass). Low-score detections never start tracks.
4. Matched tracks take the detection's score and class and the motion model's corrected box. A
   track is confirmed after ``min_hits`` consecutive matches and stays so.
5. Unmatched tentative tracks are dropped (DeepStream's early termination); unmatched confirmed
   tracks are shadow-tracked (state LOST) and dropped after more than ``max_age`` misses.
6. Unmatched detections start tentative tracks, unless they overlap a live track by IoU >=
   ``duplicate_iou`` (a second box on an object already tracked). Ids are per camera, from 1,
   increasing, never reused. When a camera has no free slot the lowest-score detections are not
   started (counted in :attr:`IouTracker.dropped_starts`).
7. Start-up grace (SORT's rule, ``startup_grace=True``): tracks started during a camera's first
   ``min_hits`` inferred frames (after creation or :meth:`IouTracker.reset_camera`) skip probation,
   since everything in view is new then and probation would only hide it for ``min_hits`` frames.

Reported boxes of matched tracks are the motion model's estimate (filtered for ``kalman`` and
``velocity``, the detection for ``none``); ``det_index`` gives the raw detection.

Frame skipping (``inferred[b] == False``): the camera's tracks only move by prediction. Skipped
frames are not misses (the detector did not look, so nothing was missed): ``max_age`` and the
probation count inferred frames only. Confirmed tracks that were matched on the camera's last
inferred frame are reported with their predicted box (state CONFIRMED, ``det_index`` -1).

Host syncs: on CUDA :meth:`update` syncs once, to size its output (``nonzero`` of the report mask),
which the pipeline needs anyway for its one device-to-host copy. The greedy matching runs a fixed
number of rounds there (``CUDA_GREEDY_ROUNDS``) instead of checking for convergence, and every slot
is looked at. On CPU, where reading a value costs nothing, the greedy runs to convergence (exactly
sequential greedy) and only the leading slots that can hold a live or new track are processed.

Time: with ``timestamps`` each camera's step is the time since its previous call, so frames the
batcher dropped or the detector skipped in between move its tracks further; without, every call is
one ``DEFAULT_DT_S`` step.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from rtsp_worker.config import TrackerConfig
from rtsp_worker.devices import normalize_device
from rtsp_worker.tracking.motion import make_motion
from rtsp_worker.types import CONFIRMED, LOST, TENTATIVE, Detections, Tracks

log = logging.getLogger(__name__)

# Rounds of mutual-best matching on CUDA. Each round takes every pair that is the best of both its
# detection and its track, which is exactly what sequential greedy would take; chains of conflicts
# longer than this (strictly increasing IoUs across 8+ overlapping boxes) are practically absent.
CUDA_GREEDY_ROUNDS = 8

# Time step (s) of a call without timestamps, and of a camera's first step; a step outside
# (0, MAX_DT_S] (a clock jump, a looping file's pts going back, a stall) reuses the camera's last good one.
DEFAULT_DT_S = 1 / 25
MAX_DT_S = 5.0

_FLOAT_FIELDS: dict[str, tuple[int, ...]] = {"boxes": (4,), "scores": ()}
_INT_FIELDS = ("classes", "ids", "age", "hits", "streak", "misses")
_BOOL_FIELDS = ("active", "confirmed")


def iou_with_slots(boxes: Tensor, slots: Tensor, row: Tensor) -> Tensor:
    """``(N, L)`` IoU of each xyxy box in ``boxes`` (``(N, 4)``) with the ``L`` slots of its row.

    ``slots`` is ``(B, L, 4)`` and ``row`` the ``(N,)`` row of each box. Computed on coordinate planes
    ``(N, 2, L)`` with each slot's area taken once per row: about 3x fewer element operations than
    gathering ``(N, L, 4)`` boxes (the tracker's largest ops); an empty box has IoU 0.
    """
    planes = slots.transpose(1, 2).contiguous().index_select(0, row)  # (N, 4, L)
    lt = torch.maximum(boxes[:, :2, None], planes[:, :2])
    rb = torch.minimum(boxes[:, 2:, None], planes[:, 2:])
    wh = (rb - lt).clamp_(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_box = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(-1)
    area_slot = (slots[..., 2:] - slots[..., :2]).clamp(min=0).prod(-1).index_select(0, row)
    union = area_box[:, None] + area_slot - inter
    return inter / union.clamp(min=1e-9)  # union <= 0 only where inter is 0


def greedy_match(
    iou: Tensor,
    candidate: Tensor,
    row: Tensor,
    num_rows: int,
    max_rounds: int | None = None,
    later: Tensor | None = None,
) -> Tensor:
    """Greedy assignment by descending IoU, vectorized over all cameras.

    ``iou`` and ``candidate`` are ``(N, T)``: detection ``n`` against slot ``t`` of the camera in batch
    row ``row[n]``; a slot is one column per row, so two detections of different rows never compete.
    Returns ``(N,)`` int64: the matched slot of each detection, -1 if none. The order is IoU
    descending, then detection index, then slot, the same as sorting all candidate pairs and taking
    them one by one. ``later`` (``(N, T)`` bool) adds pairs ranked after every ``candidate`` pair,
    in the same order among themselves: a second pass over what the first left (ByteTrack's).
    ``max_rounds=None`` runs until no candidate is left (needs one host read per round: use it on
    CPU only).
    """
    n_det, n_slots = iou.shape
    match = torch.full((n_det,), -1, dtype=torch.int64, device=iou.device)
    if n_det == 0 or n_slots == 0:
        return match
    if max_rounds is None:
        return _greedy_pairs(iou, candidate, row, num_rows, match, later)
    match = _greedy_dense(iou, candidate, row, num_rows, max_rounds, match)
    if later is None:
        return match
    taken = torch.zeros(num_rows * n_slots + 1, dtype=torch.bool, device=iou.device)
    taken.index_fill_(0, torch.where(match >= 0, row * n_slots + match, num_rows * n_slots), True)
    free = ~taken[:-1].view(num_rows, n_slots).index_select(0, row) & (match < 0)[:, None]
    second = _greedy_dense(iou, later & free, row, num_rows, max_rounds, torch.full_like(match, -1))
    return torch.where(match >= 0, match, second)


def _greedy_dense(
    iou: Tensor, candidate: Tensor, row: Tensor, num_rows: int, max_rounds: int, match: Tensor
) -> Tensor:
    """:func:`greedy_match`'s fixed-round form on the dense ``(N, T)`` matrix (no host reads: CUDA)."""
    n_det, n_slots = iou.shape
    device = iou.device
    # Candidates keep their IoU (> 0 because iou_threshold > 0); everything else is -1.
    w = torch.where(candidate, iou, torch.full_like(iou, -1.0))
    col = (row[:, None] * n_slots + torch.arange(n_slots, device=device)).reshape(-1)  # (N*T,)
    det_ids = torch.arange(n_det, device=device)
    n_cols = num_rows * n_slots
    for _ in range(max_rounds):
        best_t = w.argmax(dim=1)  # first maximum: lower slot wins ties
        best_w = w.gather(1, best_t[:, None]).squeeze(1)
        flat_w = w.reshape(-1)
        col_max = torch.full((n_cols,), -1.0, device=device).scatter_reduce(0, col, flat_w, "amax")
        # Among the detections reaching a column's maximum, the lowest index wins the tie.
        at_max = flat_w == col_max.index_select(0, col)
        key = torch.where(at_max, det_ids[:, None].expand(n_det, n_slots).reshape(-1), n_det)
        col_winner = torch.full((n_cols,), n_det, dtype=torch.int64, device=device).scatter_reduce(
            0, col, key, "amin"
        )
        best_col = row * n_slots + best_t
        take = (best_w > 0) & (col_winner.index_select(0, best_col) == det_ids)
        match = torch.where(take, best_t, match)
        col_taken = torch.zeros(n_cols + 1, dtype=torch.bool, device=device)
        col_taken.index_fill_(0, torch.where(take, best_col, n_cols), True)
        col_taken = col_taken[:-1]
        drop = take[:, None] | col_taken.index_select(0, col).view(n_det, n_slots)
        w = w.masked_fill(drop, -1.0)
    return match


def _greedy_pairs(
    iou: Tensor, candidate: Tensor, row: Tensor, num_rows: int, match: Tensor, later: Tensor | None
) -> Tensor:
    """:func:`greedy_match` to convergence on the list of candidate pairs (host reads: CPU only).

    The pairs are ranked once (first-pass pairs before ``later`` ones, then IoU descending, then
    detection, then slot: a stable sort of ``nonzero``'s row-major order); each round takes every
    pair that has the lowest live rank of both its detection and its slot, which sequential greedy
    would take too, and retires the pairs that share a detection or slot with a taken one. A few ops
    on ~N pairs per round instead of ~30 on the dense ``(N, T)`` matrix.
    """
    n_det, n_slots = iou.shape
    pairs = candidate if later is None else candidate | later
    det, slot = pairs.nonzero(as_tuple=True)
    n_pairs = int(det.shape[0])
    if n_pairs == 0:
        return match
    key = iou[det, slot]
    if later is not None:  # float64: iou + 2 keeps every float32 IoU distinct and exact
        key = key.double() + candidate[det, slot].double() * 2
    order = torch.sort(key, descending=True, stable=True).indices
    det, slot = det[order], slot[order]
    col = row.index_select(0, det) * n_slots + slot
    rank = torch.arange(n_pairs, device=iou.device)
    alive = torch.ones(n_pairs, dtype=torch.bool, device=iou.device)
    while True:
        live_rank = torch.where(alive, rank, n_pairs)
        det_min = torch.full((n_det,), n_pairs, device=iou.device).scatter_reduce(0, det, live_rank, "amin")
        col_min = torch.full((num_rows * n_slots,), n_pairs, device=iou.device).scatter_reduce(
            0, col, live_rank, "amin"
        )
        take = alive & (det_min.index_select(0, det) == rank) & (col_min.index_select(0, col) == rank)
        match.index_copy_(0, det[take], slot[take])
        det_done = match.index_select(0, det) >= 0
        col_done = torch.zeros(num_rows * n_slots, dtype=torch.bool, device=iou.device)
        col_done.index_fill_(0, col[take], True)
        alive &= ~det_done & ~col_done.index_select(0, col)
        if not bool(alive.any()):
            return match


class IouTracker:
    """Multi-camera IOU tracker; see the module docstring for the rules."""

    def __init__(
        self, cfg: TrackerConfig, num_cameras: int, device: torch.device | str, startup_grace: bool = True,
        host_reads: bool | None = None,
    ) -> None:
        if num_cameras < 0:
            raise ValueError(f"num_cameras must be >= 0, got {num_cameras}")
        self.cfg = cfg
        self.device = normalize_device(device)
        self.startup_grace = startup_grace
        self.motion = make_motion(cfg)
        self._layout = _Layout({**_FLOAT_FIELDS, **self.motion.fields})
        # Host reads of device values (window trimming, greedy convergence) are free on CPU only. None: on
        # CPU only; False on CPU runs the device path's code (its tests compare it with the CPU path).
        self._host_reads = self.device.type == "cpu" if host_reads is None else host_reads
        # Every slot's state, packed per dtype: group -> (C, T, width); see _Layout.
        self._state: dict[str, Tensor] = {}
        self._next_id = torch.ones((0,), dtype=torch.int64, device=self.device)
        self._frames = torch.zeros((0,), dtype=torch.int64, device=self.device)  # inferred frames seen
        # Per camera: timestamp of the last processed frame (float64: wall-clock seconds need it) and
        # the last good time step; NaN = no frame yet.
        self._last_ts = torch.zeros((0,), dtype=torch.float64, device=self.device)
        self._last_dt = torch.zeros((0,), dtype=torch.float64, device=self.device)
        # Detections not started because their camera had no free slot, per camera (device counter).
        self.dropped_starts = torch.zeros((0,), dtype=torch.int64, device=self.device)
        self._alloc(num_cameras)

    @property
    def num_cameras(self) -> int:
        return int(self._next_id.shape[0])

    def _alloc(self, n: int) -> None:
        t, dev = self.cfg.max_tracks, self.device
        new = {g: torch.zeros((n, t, w), dtype=dt, device=dev) for g, (dt, w) in self._layout.groups.items()}
        if self._state:
            self._state = {k: torch.cat([v, new[k]]) for k, v in self._state.items()}
        else:
            self._state = new
        self._next_id = torch.cat([self._next_id, torch.ones(n, dtype=torch.int64, device=dev)])
        self._frames = torch.cat([self._frames, torch.zeros(n, dtype=torch.int64, device=dev)])
        self.dropped_starts = torch.cat([self.dropped_starts, torch.zeros(n, dtype=torch.int64, device=dev)])
        nan = torch.full((n,), float("nan"), dtype=torch.float64, device=dev)
        self._last_ts = torch.cat([self._last_ts, nan])
        self._last_dt = torch.cat([self._last_dt, torch.full_like(nan, DEFAULT_DT_S)])

    def add_cameras(self, n: int) -> None:
        """Grow the state by ``n`` cameras (indices after the existing ones); existing tracks and ids stay."""
        if n < 0:
            raise ValueError(f"add_cameras: n must be >= 0, got {n}")
        self._alloc(n)

    def reset_camera(self, camera: int) -> None:
        """Drop a camera's tracks (e.g. after a reconnect); its ids keep counting up, never reused."""
        if not 0 <= camera < self.num_cameras:
            raise ValueError(f"reset_camera: camera {camera} out of range (have {self.num_cameras})")
        for name in _BOOL_FIELDS:  # active, confirmed
            self._layout.column(self._state, name)[camera] = False
        self._frames[camera] = 0
        self._last_ts[camera] = float("nan")
        self._last_dt[camera] = DEFAULT_DT_S

    def update(
        self,
        cameras: Tensor,
        dets: Detections,
        inferred: Tensor | None = None,
        include_tentative: bool = False,
        timestamps: Tensor | None = None,
        still: Tensor | None = None,
    ) -> Tracks:
        """Advance the cameras in ``cameras`` by one frame and return the tracks to report.

        ``cameras``: ``(B,)`` int64 camera index of each batch row, each camera at most once.
        ``dets``: the whole batch's detections (``batch_index`` = batch row).
        ``inferred``: ``(B,)`` bool, False for rows whose frame was not run through the detector
        (their detections, if any, are ignored); None means all True.
        ``include_tentative``: also report tracks still on probation (state TENTATIVE).
        ``timestamps``: ``(B,)`` seconds of each row's frame (any origin, per camera increasing);
        prediction moves a track by the time since its camera's previous call, so frames dropped or
        skipped in between count. None: every call is one step of ``DEFAULT_DT_S``.
        ``still``: ``(B,)`` bool, True for rows whose picture did not change (the motion gate skipped
        the detector): their tracks hold their boxes instead of moving by their velocity.
        """
        cfg, dev = self.cfg, self.device
        cams = cameras.to(dev, torch.int64)
        n_rows = int(cams.shape[0])
        if n_rows == 0:
            return Tracks.empty(dev)
        dets = dets.to(dev)
        inf = (
            torch.ones(n_rows, dtype=torch.bool, device=dev)
            if inferred is None
            else inferred.to(dev, torch.bool)
        )
        dt = self._step_times(cams, timestamps)  # (B, 1) float32 seconds
        if still is not None:  # nothing moved in the picture: prediction moves nothing
            dt = torch.where(still.to(dev, torch.bool)[:, None], torch.zeros_like(dt), dt)
        # Slots [0, n_live) may hold a live track (all of them on CUDA); new tracks may need more, below.
        n_live = self._window(cams)
        s = self._layout.unpack({g: v[:, :n_live].index_select(0, cams) for g, v in self._state.items()})
        active, inf_col = s["active"], inf[:, None]

        # 1. Prediction (every live track, inferred row or not).
        pred = self.motion.predict(s, active, dt)

        # 2-3. Association of each detection with the slots of its own camera: confident detections
        # first, then the low-score ones with the tracks the first pass left (ByteTrack's second pass).
        n_det = len(dets)
        row = dets.batch_index
        inf_det = inf.index_select(0, row)
        valid = (dets.scores >= cfg.min_confidence) & inf_det
        low = (dets.scores >= cfg.low_confidence) & (dets.scores < cfg.min_confidence) & inf_det
        iou = iou_with_slots(dets.boxes, pred, row)  # (N, L)
        cand = active.index_select(0, row)
        if cfg.class_consistent:
            cand = cand & (dets.class_ids[:, None] == s["classes"].index_select(0, row))
        rounds = None if self._host_reads else CUDA_GREEDY_ROUNDS
        second = (
            cand & low[:, None] & (iou >= cfg.low_iou_threshold) if cfg.low_confidence < cfg.min_confidence else None
        )
        first = cand & valid[:, None] & (iou >= cfg.iou_threshold)
        det_slot = greedy_match(iou, first, row, n_rows, rounds, later=second)

        # Detection row matched by each slot; row n_det is a dummy so empty batches need no branch.
        flat_slot = torch.where(det_slot >= 0, row * n_live + det_slot, n_rows * n_live)
        track_det = torch.full((n_rows * n_live + 1,), n_det, dtype=torch.int64, device=dev)
        track_det.index_copy_(0, flat_slot, torch.arange(n_det, device=dev))
        track_det = track_det[:-1].view(n_rows, n_live)
        matched = track_det < n_det
        # Each slot's detection (box, score, class; float32 holds class ids exactly) in one gather.
        det_fields = torch.cat([dets.boxes, dets.scores[:, None], dets.class_ids[:, None].float()], dim=1)
        det_fields = torch.cat([det_fields, det_fields.new_zeros(1, 6)]).index_select(0, track_det.reshape(-1))
        det_fields = det_fields.view(n_rows, n_live, 6)
        dbox, det_score, det_class = det_fields[..., :4], det_fields[..., 4], det_fields[..., 5].long()

        # 4. Matched tracks take the detection (through the motion model's correction).
        s["boxes"] = self.motion.correct(s, pred, matched, dbox)
        s["scores"] = torch.where(matched, det_score, s["scores"])
        s["classes"] = torch.where(matched, det_class, s["classes"])
        s["hits"] = s["hits"] + matched.long()
        missed = active & inf_col & ~matched
        s["streak"] = torch.where(matched, s["streak"] + 1, torch.where(missed, 0, s["streak"]))
        s["misses"] = torch.where(matched, 0, s["misses"] + missed.long())
        s["age"] = s["age"] + active.long()
        s["confirmed"] = s["confirmed"] | (active & (s["streak"] >= cfg.min_hits))

        # 5. Probation failures and expired shadow tracks end.
        dead = missed & (~s["confirmed"] | (s["misses"] > cfg.max_age))
        active = active & ~dead
        s["active"] = active
        s["confirmed"] = s["confirmed"] & active

        # 6. New tracks from unmatched detections that do not duplicate a live track.
        new = valid & (det_slot < 0)
        # On CPU only the unmatched detections are checked (most are matched); on CUDA all, sync-free.
        cand_new = new.nonzero().squeeze(1) if self._host_reads else torch.arange(n_det, device=dev)
        if cand_new.numel():
            row_new = row.index_select(0, cand_new)
            live_iou = iou_with_slots(dets.boxes.index_select(0, cand_new), s["boxes"], row_new)
            dup = active.index_select(0, row_new) & (live_iou >= cfg.duplicate_iou)
            if cfg.class_consistent:
                dup &= dets.class_ids.index_select(0, cand_new)[:, None] == s["classes"].index_select(0, row_new)
            new = new.index_copy(0, cand_new, new.index_select(0, cand_new) & ~dup.any(dim=1))
        packed = self._layout.pack(s)
        track_det = torch.where(matched, track_det, -1)
        n_slots = n_live
        if not self._host_reads or bool(new.any()):  # on CPU, a batch that starts no track skips this
            packed, track_det, n_slots = self._start_tracks(cams, dets, new, active, packed, track_det)
        for g, v in packed.items():
            self._state[g][:, :n_slots].index_copy_(0, cams, v)
        self._frames.index_add_(0, cams, inf.long())

        return self._report(packed, track_det, inf_col, include_tentative)

    def _start_tracks(
        self, cams: Tensor, dets: Detections, new: Tensor, active: Tensor, packed: dict[str, Tensor],
        track_det: Tensor,
    ) -> tuple[dict[str, Tensor], Tensor, int]:
        """Start tracks from the detections flagged in ``new``, in the lowest free slots of their rows.

        ``packed`` and ``track_det`` cover the batch's first ``n_live`` slots; returns them with the new
        tracks written in, widened (on CPU) by as many slots as the busiest row starts tracks, and that
        width. A row with more new detections than free slots starts its highest-score ones.
        """
        cfg, dev = self.cfg, self.device
        n_rows, n_live = active.shape
        n_det, row = len(dets), dets.batch_index
        n_new = torch.zeros(n_rows, dtype=torch.int64, device=dev).index_add_(0, row, new.long())
        # New tracks take the lowest free slots, so the busiest row's count past the live ones is enough.
        n_slots = cfg.max_tracks
        if self._host_reads:
            n_slots = max(1, min(n_slots, n_live + int(n_new.max())))
        extra = n_slots - n_live
        free = ~active if not extra else torch.cat([~active, active.new_ones(n_rows, extra)], dim=1)
        rank = self._rank_within_row(new, row, dets.scores, n_rows)
        n_free = free.sum(dim=1)
        free_slots = torch.argsort((~free).to(torch.int8), dim=1, stable=True)  # free slots first
        start = new & (rank < n_free.index_select(0, row))
        slot = free_slots.reshape(-1).index_select(0, row * n_slots + rank.clamp(0, n_slots - 1))
        n_start = torch.minimum(n_new, n_free)
        self.dropped_starts.index_add_(0, cams, n_new - n_start)
        target = torch.where(start, row * n_slots + slot, n_rows * n_slots)  # dummy for the rest
        next_id = self._next_id.index_select(0, cams)
        grace = cfg.min_hits if self.startup_grace else 0
        in_grace = (self._frames.index_select(0, cams) < grace).index_select(0, row)
        init: dict[str, Tensor] = {
            **self.motion.init(dets.boxes),
            "boxes": dets.boxes,
            "scores": dets.scores,
            "classes": dets.class_ids,
            "ids": next_id.index_select(0, row) + rank,
            "age": torch.zeros_like(rank),
            "hits": torch.ones_like(rank),
            "streak": torch.ones_like(rank),
            "misses": torch.zeros_like(rank),
            "active": torch.ones_like(start),
            "confirmed": in_grace | (cfg.min_hits <= 1),
        }
        if extra:  # the added slots are free: zeros (inactive) until a new track fills one
            packed = {g: torch.cat([v, v.new_zeros(n_rows, extra, v.shape[2])], dim=1) for g, v in packed.items()}
            track_det = torch.cat([track_det, track_det.new_full((n_rows, extra), -1)], dim=1)
        packed = {g: _scatter_rows(packed[g], target, v) for g, v in self._layout.pack(init).items()}
        track_det = _scatter_rows(track_det, target, torch.arange(n_det, device=dev))
        self._next_id.index_copy_(0, cams, next_id + n_start)
        return packed, track_det, n_slots

    def _step_times(self, cams: Tensor, timestamps: Tensor | None) -> Tensor:
        """``(B, 1)`` float32 seconds since each row's camera was last processed; remembers ``timestamps``."""
        last_dt = self._last_dt.index_select(0, cams)
        if timestamps is None:
            return last_dt.new_full((cams.shape[0], 1), DEFAULT_DT_S).float()
        ts = timestamps.to(self.device, torch.float64)
        dt = ts - self._last_ts.index_select(0, cams)  # NaN on a camera's first frame
        good = (dt > 0) & (dt <= MAX_DT_S)  # False for NaN too
        dt = torch.where(good, dt, last_dt)
        self._last_dt.index_copy_(0, cams, dt)
        self._last_ts.index_copy_(0, cams, ts)
        return dt.float()[:, None]

    def _window(self, cams: Tensor) -> int:
        """How many leading slots of the batch's cameras may hold a live track.

        New tracks take the lowest free slots, so live tracks sit at the front. On CPU, reading the
        last live slot costs nothing (no device to wait for), and working on ``last live`` slots (plus
        those new tracks need) instead of all ``max_tracks`` is several times faster. On CUDA the full
        width is used: reading it would be a host sync.
        """
        n_slots = self.cfg.max_tracks
        if not self._host_reads:
            return n_slots
        live = self._layout.column(self._state, "active").index_select(0, cams).any(dim=0)
        return int(torch.where(live, torch.arange(1, n_slots + 1), 0).max())

    @staticmethod
    def _rank_within_row(new: Tensor, row: Tensor, scores: Tensor, n_rows: int) -> Tensor:
        """Rank of each new detection among its row's new detections, highest score first."""
        # One stable sort by row, then score descending (float64 holds both exactly; scores are in [0, 1]).
        order = torch.argsort(row.double() * 2 - scores.double().clamp(0, 1), stable=True)
        new_sorted = new[order].long()
        counts = torch.zeros(n_rows, dtype=torch.int64, device=new.device).index_add_(0, row, new.long())
        row_start = torch.cumsum(counts, 0) - counts
        rank_sorted = torch.cumsum(new_sorted, 0) - 1 - row_start[row[order]]
        rank = torch.empty_like(rank_sorted)
        rank.index_copy_(0, order, rank_sorted)
        return rank

    def _report(
        self, packed: dict[str, Tensor], track_det: Tensor, inf_col: Tensor, tentative: bool
    ) -> Tracks:
        cfg, layout = self.cfg, self._layout
        s = layout.unpack(packed, ("active", "confirmed", "misses"))
        active, confirmed = s["active"], s["confirmed"]
        lost = confirmed & (s["misses"] > 0)
        now = (track_det >= 0) | (~inf_col & (s["misses"] == 0))
        report = active & confirmed & now
        if cfg.report_lost:
            report |= active & lost
        if tentative:
            report |= active & ~confirmed
        flat = report.reshape(-1).nonzero().squeeze(1)  # the one host sync: output size
        # The reported slots' rows of each packed group, then their fields as views of those rows.
        t = layout.unpack({g: v.reshape(-1, v.shape[-1]).index_select(0, flat) for g, v in packed.items()},
                          ("ids", "boxes", "scores", "classes", "age", "hits", "confirmed", "misses"))
        state = torch.where(
            t["confirmed"], torch.where(t["misses"] > 0, LOST, CONFIRMED), torch.full_like(t["misses"], TENTATIVE)
        )
        return Tracks(
            batch_index=torch.div(flat, report.shape[1], rounding_mode="floor"),
            track_ids=t["ids"],
            boxes=t["boxes"],
            scores=t["scores"],
            class_ids=t["classes"],
            det_index=track_det.reshape(-1).index_select(0, flat),
            age=t["age"],
            hits=t["hits"],
            state=state.to(torch.int8),
        )


class _Layout:
    """Where each per-slot field lives in the tracker's state, packed into one tensor per dtype.

    Groups ``f`` (float32), ``i`` (int64) and ``b`` (bool) are ``(..., width)``; a field is a slice of
    its group's last dimension. Gathering, scattering and writing back the state then take one op per
    group instead of one per field (the tracker's cost on CPU is mostly per-op overhead).
    """

    def __init__(self, float_fields: dict[str, tuple[int, ...]]) -> None:
        fields = [(name, "f", trailing) for name, trailing in float_fields.items()]
        fields += [(name, "i", ()) for name in _INT_FIELDS] + [(name, "b", ()) for name in _BOOL_FIELDS]
        dtypes = {"f": torch.float32, "i": torch.int64, "b": torch.bool}
        width = dict.fromkeys(dtypes, 0)
        self.fields: dict[str, tuple[str, int, tuple[int, ...]]] = {}  # name -> group, start, trailing
        for name, group, trailing in fields:
            self.fields[name] = (group, width[group], trailing)
            width[group] += math.prod(trailing)
        self.groups = {g: (dtypes[g], width[g]) for g in dtypes}

    def unpack(self, packed: dict[str, Tensor], names: tuple[str, ...] | None = None) -> dict[str, Tensor]:
        """Field name -> view of its slice of the packed group (``(..., *trailing)``); all fields or ``names``."""
        out = {}
        for name in self.fields if names is None else names:
            group, start, trailing = self.fields[name]
            v = packed[group]
            out[name] = v[..., start] if not trailing else v[..., start:start + math.prod(trailing)].unflatten(
                -1, trailing
            )
        return out

    def column(self, packed: dict[str, Tensor], name: str) -> Tensor:
        group, start, _ = self.fields[name]
        return packed[group][..., start]

    def pack(self, s: dict[str, Tensor]) -> dict[str, Tensor]:
        """The inverse of :meth:`unpack` for fields of shape ``(*lead, *trailing)``, every field given."""
        parts: dict[str, list[Tensor]] = {g: [] for g in self.groups}
        lead: tuple[int, ...] = ()
        for name, (group, _, trailing) in self.fields.items():
            v = s[name]
            lead = v.shape[: v.dim() - len(trailing)]
            v = v.reshape(*lead, math.prod(trailing))
            parts[group].append(v if v.dtype == self.groups[group][0] else v.to(self.groups[group][0]))
        return {g: torch.cat(p, dim=-1) for g, p in parts.items()}


def _scatter_rows(field: Tensor, target: Tensor, value: Tensor) -> Tensor:
    """Write ``value[i]`` into flat slot ``target[i]`` of a ``(B, T, ...)`` field; target B*T is a dummy."""
    b, t = field.shape[:2]
    flat = torch.cat([field.reshape(b * t, *field.shape[2:]), field.new_zeros(1, *field.shape[2:])])
    flat.index_copy_(0, target, value.to(flat.dtype))  # duplicates only hit the dummy
    return flat[:-1].view(field.shape)
