"""Data that flows between pipeline stages.

Every tensor field says its shape, dtype, device and box format. Batched results are flat
(one row per box) with a ``batch_index`` column rather than lists of per-image tensors, so that
every stage can work on the whole batch with vectorized ops and split per camera only at the end.

A camera has two identities, each with one name everywhere:
- `camera`: its name (cameras.yaml), what outputs, logs, metrics and the control API show.
- `row`: its batch row, the tracker and analytics row it owns while it runs (`Frame.row`, `FrameResult.row`,
  `CameraSource.row`, `LiveCamera.row`). Rows are not config positions: a removed camera's row is reset and
  reused by the next camera added (rtsp_worker/camera_set.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

# Pixel formats a decoder may hand over.
RGB = "rgb"  # image: (H, W, 3) uint8, RGB order
NV12 = "nv12"  # image: (H * 3 // 2, W) uint8, Y plane then interleaved UV plane (NVDEC's output)
# image: the CPU decoder's own av.VideoFrame, in the codec's native layout (planar YUV 4:2:0 for camera H.264 and
# HEVC), in host memory. Nothing is converted when it is decoded: the batched preprocessing converts the frames a
# batch takes, so that a frame the batcher drops costs its decode and nothing else (NVDEC's NV12 frames are kept
# the same way, on the GPU).
NATIVE = "native"


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame of one camera."""

    row: int  # the camera's batch row (see the module docstring); not its position in the config
    seq: int  # per-camera decoded-frame number, from 0, never reset by reconnects
    ts: float  # wall-clock time (time.time()) when the frame was decoded
    image: Tensor | Any  # RGB: (H, W, 3) uint8; NV12: (H*3/2, W) uint8, CPU or CUDA; NATIVE: av.VideoFrame
    height: int  # source-frame height in pixels
    width: int  # source-frame width in pixels
    pixel_format: str = RGB
    pts: float | None = None  # presentation time in seconds from the stream, when known
    colorimetry: str = "bt601-limited"  # NV12 only: YUV matrix and range from the stream's tags

    @property
    def stream_time(self) -> float:
        """Seconds on the stream's clock: its presentation time when the stream gives one, else the decode time."""
        return self.ts if self.pts is None else self.pts


@dataclass(frozen=True, slots=True)
class Batch:
    """The newest frame of each camera that had a fresh one, in one list."""

    frames: tuple[Frame, ...]

    @property
    def rows(self) -> list[int]:
        return [f.row for f in self.frames]

    def __len__(self) -> int:
        return len(self.frames)


@dataclass(frozen=True, slots=True)
class Letterbox:
    """How each batch image was mapped into the model input: input = source * scale + pad."""

    scale: Tensor  # (B,) float32, same device as the batch tensor; (B, 2) (sx, sy) when stretched (RT-DETR)
    pad: Tensor  # (B, 2) float32, (pad_x, pad_y) in input pixels
    source_size: Tensor  # (B, 2) float32, (width, height) of each source frame


@dataclass(frozen=True, slots=True)
class Detections:
    """Detections of a whole batch, one row per box."""

    boxes: Tensor  # (N, 4) float32 xyxy, source-frame pixels
    scores: Tensor  # (N,) float32 in [0, 1]
    class_ids: Tensor  # (N,) int64
    batch_index: Tensor  # (N,) int64, row of the batch (image) each box belongs to

    def __post_init__(self) -> None:
        n = self.boxes.shape[0]
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4), got {tuple(self.boxes.shape)}")
        for name in ("scores", "class_ids", "batch_index"):
            t = getattr(self, name)
            if t.shape != (n,):
                raise ValueError(f"{name} must be ({n},), got {tuple(t.shape)}")

    @staticmethod
    def empty(device: torch.device | str = "cpu") -> Detections:
        return Detections(
            boxes=torch.zeros((0, 4), dtype=torch.float32, device=device),
            scores=torch.zeros((0,), dtype=torch.float32, device=device),
            class_ids=torch.zeros((0,), dtype=torch.int64, device=device),
            batch_index=torch.zeros((0,), dtype=torch.int64, device=device),
        )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, mask_or_index: Tensor) -> Detections:
        return Detections(
            boxes=self.boxes[mask_or_index],
            scores=self.scores[mask_or_index],
            class_ids=self.class_ids[mask_or_index],
            batch_index=self.batch_index[mask_or_index],
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Detections:
        return Detections(
            boxes=self.boxes.to(device, non_blocking=non_blocking),
            scores=self.scores.to(device, non_blocking=non_blocking),
            class_ids=self.class_ids.to(device, non_blocking=non_blocking),
            batch_index=self.batch_index.to(device, non_blocking=non_blocking),
        )


# Track states (Tracks.state).
TENTATIVE = 0  # on probation: fewer than min_hits consecutive matches
CONFIRMED = 1  # matched in this frame (or predicted on a skipped frame) and past probation
LOST = 2  # shadow-tracked: unmatched for 1..max_age frames


@dataclass(frozen=True, slots=True)
class Tracks:
    """Tracks reported for a whole batch, one row per track."""

    batch_index: Tensor  # (M,) int64, row of the batch (image) the track belongs to
    track_ids: Tensor  # (M,) int64, unique per camera for the life of the process
    boxes: Tensor  # (M, 4) float32 xyxy, source-frame pixels
    scores: Tensor  # (M,) float32, confidence of the matched detection (last one if unmatched)
    class_ids: Tensor  # (M,) int64
    det_index: Tensor  # (M,) int64, row in this batch's Detections it matched, -1 if none
    age: Tensor  # (M,) int64, frames since the track was created
    hits: Tensor  # (M,) int64, number of matched frames
    state: Tensor  # (M,) int8, TENTATIVE / CONFIRMED / LOST

    @staticmethod
    def empty(device: torch.device | str = "cpu") -> Tracks:
        z = torch.zeros((0,), dtype=torch.int64, device=device)
        return Tracks(
            batch_index=z,
            track_ids=z,
            boxes=torch.zeros((0, 4), dtype=torch.float32, device=device),
            scores=torch.zeros((0,), dtype=torch.float32, device=device),
            class_ids=z,
            det_index=z,
            age=z,
            hits=z,
            state=torch.zeros((0,), dtype=torch.int8, device=device),
        )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Tracks:
        return Tracks(**{
            name: getattr(self, name).to(device, non_blocking=non_blocking)
            for name in self.__dataclass_fields__
        })


@dataclass(frozen=True, slots=True)
class TrackedObject:
    """One object in one frame, as the sinks write it."""

    track_id: int
    class_id: int
    class_name: str
    confidence: float
    box: tuple[float, float, float, float]  # xyxy, source-frame pixels
    world: tuple[float, float] | None = None  # ground position, metres (only with the camera's calibration)
    speed: float | None = None  # ground speed in the calibration's speed_unit (None until seen twice)


@dataclass(frozen=True, slots=True)
class FrameResult:
    """What the pipeline produced for one frame of one camera (host-side, ready for sinks)."""

    camera: str  # camera name
    row: int  # the camera's batch row when this frame was processed (Frame.row)
    frame: int  # Frame.seq
    ts: float  # Frame.ts (decode time)
    width: int
    height: int
    objects: tuple[TrackedObject, ...] = field(default_factory=tuple)
    image: Tensor | None = None  # (H, W, 3) uint8 RGB on CPU, only when a sink asked for pixels
    done_ts: float = 0.0  # wall-clock time the result was ready (end-to-end latency = done_ts - ts)
    events: tuple[Event, ...] = ()  # line crossings and zone enter/exit found in this frame (analytics)

    def to_json_dict(self) -> dict:
        return {
            "camera": self.camera,
            "frame": self.frame,
            "ts": round(self.ts, 6),
            "objects": [
                {
                    "track_id": o.track_id,
                    "class_id": o.class_id,
                    "class_name": o.class_name,
                    "confidence": round(o.confidence, 4),
                    "box": [round(v, 2) for v in o.box],
                    **({"world": [round(o.world[0], 3), round(o.world[1], 3)]} if o.world is not None else {}),
                    **({"speed": round(o.speed, 2)} if o.speed is not None else {}),
                }
                for o in self.objects
            ],
        }


@dataclass(frozen=True, slots=True)
class Event:
    """A line crossing, a zone enter/exit or a rule firing, in one frame (rtsp_worker.analytics).

    Rules (`rule` set): `loiter` (zone; `dwell_s` so far), `speeding` (zone or line; `speed`), and the zone-wide
    `crowded` / `cleared` (`count` tracks inside; no track: `track_id` and `class_id` are -1).
    """

    camera: str
    frame: int  # Frame.seq of the frame it was found in
    ts: float  # Frame.ts of that frame
    track_id: int
    class_id: int
    class_name: str
    kind: str  # "line" or "zone" (the thing the event belongs to; "clip": a finalized clip, see `clip`)
    name: str  # the line's or zone's name
    direction: str  # line: one of its direction names; zone: "enter", "exit", or the rule's name
    point: tuple[float, float]  # the anchor, source-frame pixels
    dwell_s: float | None = None  # zone exit: seconds between enter and exit (stream time); loiter: so far
    lost: bool = False  # zone exit because the track was lost (not seen for longer than the tracker keeps it)
    id: str = ""  # `<run>-<camera>-<n>`, unique within the run (analytics.events.EventIds); "" when made by hand
    rule: str = ""  # "", "loiter", "crowded", "cleared" or "speeding"
    speed: float | None = None  # the track's ground speed (calibration.speed_unit), where calibrated
    count: int | None = None  # crowded / cleared: tracks inside the zone
    # Evidence (rtsp_worker/evidence): filled in before the sinks get the event. `clip`: {path, start_ts} of a
    # clip being written (a `clip` record follows when it is finalized); `snapshot`: a JPEG path. Paths are
    # relative to output.dir.
    clip: dict | None = None
    snapshot: str | None = None

    @property
    def trigger(self) -> str:
        """The name an `on:` list matches (config EventKind): line, zone_enter, zone_exit or the rule's name."""
        if self.rule:
            return self.rule
        return f"zone_{self.direction}" if self.kind == "zone" else self.kind

    def to_json_dict(self) -> dict:
        if self.kind == "clip":  # a finalized clip (evidence): which events it covers, no track of its own
            return {"id": self.id, "camera": self.camera, "ts": round(self.ts, 6), "kind": "clip", "clip": self.clip}
        d = {"id": self.id} if self.id else {}
        d |= {"camera": self.camera, "frame": self.frame, "ts": round(self.ts, 6), "track_id": self.track_id,
              "class_id": self.class_id, "class": self.class_name, "kind": self.kind, self.kind: self.name,
              "direction": self.direction, "point": [round(self.point[0], 2), round(self.point[1], 2)]}
        if self.dwell_s is not None:
            d["dwell_s"] = round(self.dwell_s, 3)
        if self.lost:
            d["lost"] = True
        if self.clip is not None:
            d["clip"] = self.clip
        if self.snapshot is not None:
            d["snapshot"] = self.snapshot
        if self.rule:
            d["rule"] = self.rule
        if self.speed is not None:
            d["speed"] = round(self.speed, 2)
        if self.count is not None:
            d["count"] = self.count
        return d
