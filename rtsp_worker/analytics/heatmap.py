"""Heatmaps: where tracks go, per camera, accumulated on a coarse grid on the work device.

One `add` per batch: the frames' metadata (grid slot, cell size, grid shape, decay factor) is built on the
host and copied once, every track's anchor becomes a flat cell index, and one `index_add_` adds the whole
batch; no per-track Python and no host read. A half-life decays a camera's grid by 0.5 ** (dt / half_life)
of its stream time at each of its frames. Reading a grid (`counts`, for a PNG) copies it to the host; that
happens on request, never per batch. `render_png` turns counts into an image without extra dependencies.
"""

from __future__ import annotations

import math
import struct
import threading
import zlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from rtsp_worker.config import HeatmapConfig
from rtsp_worker.devices import normalize_device


class HeatmapStore:
    """Grids of every camera with a heatmap, padded to one (slots, rows, cols) tensor on `device`."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = normalize_device(device)
        self.configs: dict[str, HeatmapConfig] = {}
        self.slot: dict[str, int] = {}  # camera -> grid slot
        self.shape: dict[str, tuple[int, int]] = {}  # camera -> (rows, cols) of its frames' grid
        self.frame_size: dict[str, tuple[int, int]] = {}  # camera -> (width, height) last seen
        self.last_t: dict[str, float] = {}  # camera -> stream time of its last frame (decay)
        self.grids = torch.zeros((0, 1, 1), dtype=torch.float32, device=self.device)
        self._lock = threading.Lock()  # add (finish thread) against reset/counts (HTTP, writer)

    def configure(self, cameras: dict[str, HeatmapConfig | None]) -> None:
        """The cameras with a heatmap now; a camera dropped or given another cell size starts over."""
        with self._lock:
            for name in list(self.configs):
                new = cameras.get(name)
                if new is None or new.cell != self.configs[name].cell:
                    self._drop(name)
            for name, cfg in cameras.items():
                if cfg is not None:
                    self.configs[name] = cfg

    def _drop(self, name: str) -> None:
        slot = self.slot.pop(name, None)
        if slot is not None:
            self.grids[slot] = 0
        for d in (self.configs, self.shape, self.frame_size, self.last_t):
            d.pop(name, None)

    def _ensure(self, name: str, width: int, height: int) -> int:
        """The camera's slot, its grid sized for this frame (a new size starts the grid over)."""
        cell = self.configs[name].cell
        shape = (math.ceil(height / cell), math.ceil(width / cell))
        if name in self.slot and self.shape[name] == shape:
            return self.slot[name]
        used = set(self.slot.values())
        slot = self.slot.get(name, next(i for i in range(len(used) + 1) if i not in used))
        n, rows, cols = self.grids.shape
        if slot >= n or shape[0] > rows or shape[1] > cols:  # rare: grow the padded tensor
            grown = torch.zeros((max(n, slot + 1), max(rows, shape[0]), max(cols, shape[1])),
                                dtype=torch.float32, device=self.device)
            grown[:n, :rows, :cols] = self.grids
            self.grids = grown
        self.grids[slot] = 0
        self.slot[name], self.shape[name], self.frame_size[name] = slot, shape, (width, height)
        return slot

    def add(self, cameras: Sequence[str], sizes: Sequence[tuple[int, int]], times: Sequence[float],
            batch_index: Tensor, boxes: Tensor) -> None:
        """One batch: `cameras`, `sizes` (width, height) and stream `times` per frame; the tracks'
        `batch_index` (M,) and `boxes` (M, 4) xyxy pixels, on any device."""
        with self._lock:
            # Per frame: slot, cell, rows, cols, on (camera has a heatmap), anchor at the box centre; then the
            # decay factor of every grid slot. One host buffer, one copy.
            slots = [self._ensure(n, w, h) if n in self.configs else -1 for n, (w, h) in zip(cameras, sizes)]
            n_frames = max(len(cameras), 1)
            host = np.zeros(6 * n_frames + self.grids.shape[0] + len(cameras), dtype=np.float32)
            meta = host[: 6 * n_frames].reshape(6, n_frames)
            decay_slots = host[6 * n_frames:]
            decay_slots[:] = 1.0
            meta[1:4] = 1.0  # frames of cameras without a heatmap: cell 0 of slot 0, with weight 0
            for b, (name, slot, t) in enumerate(zip(cameras, slots, times)):
                if slot < 0:
                    continue
                cfg = self.configs[name]
                last = self.last_t.get(name)
                if cfg.half_life_s is not None and last is not None and t > last:
                    decay_slots[slot] = 0.5 ** ((t - last) / cfg.half_life_s)
                self.last_t[name] = t
                meta[:, b] = (slot, cfg.cell, *self.shape[name], 1.0, cfg.anchor == "CENTER")
            if not meta[4].any():
                return
            m = torch.from_numpy(host)
            if self.device.type == "cuda":
                m = m.pin_memory().to(self.device, non_blocking=True)
            slot, cell, rows, cols, on, centre = m[: 6 * n_frames].view(6, n_frames)
            n_slots = self.grids.shape[0]
            self.grids *= m[6 * n_frames: 6 * n_frames + n_slots][:, None, None]
            s = slot.long()
            bi = batch_index.to(self.device).long()
            b = boxes.to(self.device, torch.float32)
            anchor_x = (b[:, 0] + b[:, 2]) * 0.5
            anchor_y = torch.where(centre[bi] > 0, (b[:, 1] + b[:, 3]) * 0.5, b[:, 3])
            c = cell[bi]
            # A bottom edge exactly on the frame's last row belongs to the last cell.
            cy = torch.minimum((anchor_y / c).floor().clamp(min=0), rows[bi] - 1).long()
            cx = torch.minimum((anchor_x / c).floor().clamp(min=0), cols[bi] - 1).long()
            _, grid_rows, grid_cols = self.grids.shape
            flat = (s[bi] * grid_rows + cy) * grid_cols + cx
            self.grids.view(-1).index_add_(0, flat, on[bi])

    def reset(self, name: str) -> bool:
        """Empty the camera's grid; False when the camera has no heatmap."""
        with self._lock:
            if name not in self.configs:
                return False
            slot = self.slot.get(name)
            if slot is not None:
                self.grids[slot] = 0
            return True

    def counts(self, name: str) -> np.ndarray | None:
        """(rows, cols) float32 host copy of the camera's grid (zeros before its first frame); None: no heatmap."""
        with self._lock:
            if name not in self.configs:
                return None
            if name not in self.slot:
                return np.zeros((1, 1), dtype=np.float32)
            rows, cols = self.shape[name]
            return self.grids[self.slot[name], :rows, :cols].cpu().numpy()


# A dark-blue -> red -> yellow -> white ramp ("hot"-like), 5 stops.
_STOPS = np.array([[0, 0, 40], [30, 0, 140], [220, 30, 30], [255, 200, 0], [255, 255, 255]], dtype=np.float64)


def colorize(counts: np.ndarray) -> np.ndarray:
    """(rows, cols, 3) uint8: counts scaled by their maximum (square root: sparse paths stay visible)."""
    peak = float(counts.max()) if counts.size else 0.0
    v = np.sqrt(np.clip(counts, 0, None) / peak) if peak > 0 else np.zeros_like(counts, dtype=np.float64)
    pos = v * (len(_STOPS) - 1)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, len(_STOPS) - 2)
    frac = (pos - lo)[..., None]
    return (_STOPS[lo] * (1 - frac) + _STOPS[lo + 1] * frac).round().astype(np.uint8)


def render_png(counts: np.ndarray, scale: int = 1) -> bytes:
    """A PNG (RGB, 8 bit) of the counts, each cell `scale` x `scale` pixels (the cell size: frame scale)."""
    rgb = colorize(counts)
    if scale > 1:
        rgb = rgb.repeat(scale, 0).repeat(scale, 1)
    return encode_png(rgb)


def encode_png(rgb: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes (zlib and struct only)."""
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
