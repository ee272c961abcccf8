"""Motion gate: the stage between the batcher and the batch step that skips the detector for still pictures.

Not to be confused with rtsp_worker/tracking/motion.py (the tracker's motion models). Each camera with
`motion.enabled` keeps a running background of a small luma grid (GRID_H x GRID_W cells). The newest frame's
luma is taken from the decoder's own YUV without a colour conversion (the CPU decoder's native frame scaled
to the grid by swscale straight to gray; NVDEC's NV12 Y plane area-pooled on the GPU; RGB frames weighted),
compared with the background in one vectorized pass over the whole batch on the gate's device, and a frame
whose changed cells cover less than `min_area` of the unmasked picture is not sent to the detector: the
tracker predicts its tracks as it does for `infer_interval` frames. The detector still runs when motion
starts (at once, whatever `infer_interval` says), at least every `max_skip_s` of stream time, and for the
first frame of a camera. The per-batch decision needs the motion flags on the host: one small
device-to-host copy per batch (B booleans), only when a camera of the batch has the gate on.

Cost on the CPU: a swscale of each frame to 96x54 gray (~0.1 ms at 640x360) and a few element-wise ops
on B x 5184 cells (benchmarks/bench_motion.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rtsp_worker.analytics.geometry import point_in_polygon
from rtsp_worker.config import MotionConfig
from rtsp_worker.types import NATIVE, NV12, Frame

log = logging.getLogger(__name__)

GRID_H, GRID_W = 54, 96  # the luma grid: 16:9, ~7 px cells at 640x360, 20 px at 1080p
HANGOVER_S = 1.0
BACKGROUND_ALPHA = 0.1  # running-average weight of the newest frame: a stopped object fades in after ~20 frames
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True, slots=True)
class GateDecision:
    """The gate's word on one batch, per frame."""

    due: list[bool]  # run the detector on this frame
    gated: list[bool]  # the camera's infer_interval wanted this frame, the gate skipped it
    motion: list[bool]  # the frame differs from its camera's background (False for cameras without the gate)
    still: list[bool]  # not inferred and its picture did not change: the tracker holds its tracks still


def luma_grid(frames: Sequence[Frame], device: torch.device) -> Tensor:
    """(N, GRID_H, GRID_W) float32 luma (0-255) of each frame on `device`.

    NATIVE frames: swscale scales and converts to gray in one pass per frame on the host (the Y plane is
    what it reads for YUV input); the N small planes are copied to `device` once. Tensor frames (NV12 on
    their device, RGB) are area-pooled in torch, one `interpolate` per distinct frame size.
    """
    out = torch.empty((len(frames), GRID_H, GRID_W), dtype=torch.float32, device=device)
    native = [i for i, f in enumerate(frames) if f.pixel_format == NATIVE]
    if native:
        host = np.empty((len(native), GRID_H, GRID_W), dtype=np.uint8)
        for k, i in enumerate(native):
            host[k] = frames[i].image.to_ndarray(width=GRID_W, height=GRID_H, format="gray",
                                                 interpolation="AREA")
        out[native] = torch.from_numpy(host).to(device, non_blocking=True).float()
    rest = [i for i, f in enumerate(frames) if f.pixel_format != NATIVE]
    sizes: dict[tuple[int, int, str], list[int]] = {}
    for i in rest:
        f = frames[i]
        sizes.setdefault((f.height, f.width, f.pixel_format), []).append(i)
    for (h, _w, fmt), idx in sizes.items():
        imgs = torch.stack([frames[i].image for i in idx]).to(device, non_blocking=True)
        if fmt == NV12:
            # Limited-range Y (16-235) stretched to 0-255, as swscale's gray is for the CPU decoder's frames:
            # one threshold means the same on both decoders.
            limited = torch.tensor([frames[i].colorimetry.endswith("limited") for i in idx], device=device)
            y = imgs[:, :h].float()
            y = torch.where(limited[:, None, None], ((y - 16.0) * (255.0 / 219.0)).clamp_(0, 255), y)
        else:  # RGB (H, W, 3)
            y = (imgs.float() * torch.tensor(_LUMA, device=device)).sum(-1)
        out[idx] = F.interpolate(y[:, None], size=(GRID_H, GRID_W), mode="area")[:, 0]
    return out


def mask_grid(cfg: MotionConfig, width: int, height: int) -> Tensor:
    """(GRID_H, GRID_W) bool on the CPU: True where a cell counts for motion (its centre is in no mask polygon)."""
    counts = torch.ones((GRID_H, GRID_W), dtype=torch.bool)
    if not cfg.mask:
        return counts
    ys, xs = torch.meshgrid(torch.arange(GRID_H), torch.arange(GRID_W), indexing="ij")
    # Cell centres in the mask's units.
    cx = (xs.float() + 0.5) / GRID_W
    cy = (ys.float() + 0.5) / GRID_H
    if cfg.units == "pixels":
        cx, cy = cx * width, cy * height
    centres = torch.stack([cx, cy], -1)
    for poly in cfg.mask:
        verts = torch.tensor(poly, dtype=torch.float32)
        counts &= ~point_in_polygon(centres, verts)
    return counts


class MotionGate:
    """Per-camera-row motion state; `__call__(frames, due)` decides which frames of a batch are inferred."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.rows = 0
        self.configs: list[MotionConfig | None] = []
        self.sizes: list[tuple[int, int] | None] = []  # frame size each row's mask was drawn for
        self.background = torch.zeros((0, GRID_H, GRID_W), dtype=torch.float32, device=self.device)
        self.counts = torch.zeros((0, GRID_H, GRID_W), dtype=torch.bool, device=self.device)
        self.threshold = torch.zeros(0, device=self.device)
        self.min_cells = torch.zeros(0, device=self.device)
        self.enabled = np.zeros(0, dtype=bool)
        self.has_background = np.zeros(0, dtype=bool)
        self.max_skip = np.zeros(0)
        self.last_run = np.zeros(0)
        self.last_motion = np.full(0, -np.inf)  # stream time of each row's last frame with motion
        self.moving = np.zeros(0, dtype=bool)  # motion state of each row's newest frame
        self.gated_total = np.zeros(0, dtype=np.int64)

    def _grow(self, rows: int) -> None:
        if rows <= self.rows:
            return
        extra = rows - self.rows
        dev = self.device
        self.configs += [None] * extra
        self.sizes += [None] * extra
        self.background = torch.cat([self.background, torch.zeros((extra, GRID_H, GRID_W), device=dev)])
        self.counts = torch.cat([self.counts, torch.ones((extra, GRID_H, GRID_W), dtype=torch.bool, device=dev)])
        self.threshold = torch.cat([self.threshold, torch.zeros(extra, device=dev)])
        self.min_cells = torch.cat([self.min_cells, torch.zeros(extra, device=dev)])
        self.enabled = np.concatenate([self.enabled, np.zeros(extra, dtype=bool)])
        self.has_background = np.concatenate([self.has_background, np.zeros(extra, dtype=bool)])
        self.max_skip = np.concatenate([self.max_skip, np.zeros(extra)])
        self.last_run = np.concatenate([self.last_run, np.zeros(extra)])
        self.last_motion = np.concatenate([self.last_motion, np.full(extra, -np.inf)])
        self.moving = np.concatenate([self.moving, np.zeros(extra, dtype=bool)])
        self.gated_total = np.concatenate([self.gated_total, np.zeros(extra, dtype=np.int64)])
        self.rows = rows

    def configure(self, row: int, cfg: MotionConfig | None) -> None:
        """Set (or, with None / disabled, clear) the gate of camera row `row`; a new camera starts afresh."""
        self._grow(row + 1)
        old = self.configs[row]
        self.configs[row] = cfg if cfg is not None and cfg.enabled else None
        self.enabled[row] = self.configs[row] is not None
        if old != self.configs[row]:
            self.reset(row)

    def reset(self, row: int) -> None:
        """Forget row `row`'s background (a removed camera, a new URL): its next frame is inferred."""
        self._grow(row + 1)
        self.has_background[row] = False
        self.moving[row] = False
        self.last_motion[row] = -np.inf
        self.sizes[row] = None
        self.gated_total[row] = 0

    def _fit_masks(self, rows: np.ndarray, frames: Sequence[Frame]) -> None:
        """Redraw each row's mask and per-row limits when its frame size changed (rare: first frame, new URL)."""
        for r, f in zip(rows.tolist(), frames):
            size = (f.width, f.height)
            if self.sizes[r] == size:
                continue
            cfg = self.configs[r]
            assert cfg is not None
            counts = mask_grid(cfg, f.width, f.height)
            self.counts[r] = counts.to(self.device)
            self.threshold[r] = cfg.threshold
            self.min_cells[r] = cfg.min_area * max(int(counts.sum()), 1)
            self.max_skip[r] = cfg.max_skip_s
            self.sizes[r] = size

    def __call__(self, frames: Sequence[Frame], due: Sequence[bool]) -> GateDecision:
        """`due`: what `infer_interval` says for each frame. Returns the gate's decision for the batch."""
        n = len(frames)
        due_in = np.asarray(due, dtype=bool).reshape(n)
        if n == 0 or self.rows == 0:
            return GateDecision(due_in.tolist(), [False] * n, [False] * n, [False] * n)
        rows = np.array([f.row for f in frames], dtype=np.int64)
        known = rows < self.rows
        on = np.zeros(n, dtype=bool)
        on[known] = self.enabled[rows[known]]
        if not on.any():
            return GateDecision(due_in.tolist(), [False] * n, [False] * n, [False] * n)
        idx = np.flatnonzero(on)
        gframes = [frames[i] for i in idx]
        grows = rows[idx]
        self._fit_masks(grows, gframes)
        motion = self._measure(gframes, grows)
        times = np.array([f.stream_time for f in gframes], dtype=np.float64)
        first = ~self.has_background[grows]
        since = times - self.last_run[grows]
        stale = first | (since >= self.max_skip[grows]) | (since < 0)  # < 0: a file source started over
        onset = motion & ~self.moving[grows]
        self.last_motion[grows[motion]] = times[motion]
        # Hangover: the detector goes on for HANGOVER_S after motion ends, so that the tracker sees the scene
        # settle (tracks of what left are lost) before its tracks are carried over gated frames.
        settling = (times - self.last_motion[grows]) < HANGOVER_S
        run = (due_in[idx] & (motion | stale | settling)) | onset
        self.last_run[grows[run]] = times[run]
        self.moving[grows] = motion
        self.has_background[grows] = True
        out_due = due_in.copy()
        out_due[idx] = run
        gated = np.zeros(n, dtype=bool)
        gated[idx] = due_in[idx] & ~run
        np.add.at(self.gated_total, rows[gated], 1)
        moving = np.zeros(n, dtype=bool)
        moving[idx] = motion
        still = np.zeros(n, dtype=bool)
        still[idx] = ~motion & ~run
        return GateDecision(out_due.tolist(), gated.tolist(), moving.tolist(), still.tolist())

    def _measure(self, frames: Sequence[Frame], rows: np.ndarray) -> np.ndarray:
        """Motion flag of each frame (host bool array); updates the rows' backgrounds. One pass over the batch."""
        r = torch.from_numpy(rows).to(self.device)
        cur = luma_grid(frames, self.device)
        fresh = torch.from_numpy(~self.has_background[rows]).to(self.device)
        bg = torch.where(fresh[:, None, None], cur, self.background[r])
        changed = ((cur - bg).abs() > self.threshold[r][:, None, None]) & self.counts[r]
        motion = changed.flatten(1).sum(1).float() > self.min_cells[r]
        self.background[r] = bg + BACKGROUND_ALPHA * (cur - bg)
        return motion.cpu().numpy()  # the batch's one device-to-host copy of the gate
