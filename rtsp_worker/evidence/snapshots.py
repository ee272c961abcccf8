"""Best snapshot per track: the crop of the object's box (with a margin) from the frame where its detection
was best so far (confidence x area), kept where the frame is (the GPU for NVDEC frames), JPEG-encoded when
the track's first matching event fires (`torchvision.io.encode_jpeg`, on CUDA the same call).

Only cameras with `snapshots:` are looked at; a crop is taken when a track's score beats its best by
`IMPROVE`: crop-sized work (a slice and, for YUV frames, the colour conversion of the crop only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rtsp_worker.detection.preprocess import frame_rgb, nv12_to_rgb
from rtsp_worker.types import NATIVE, NV12, RGB, Frame

IMPROVE = 1.1  # a new crop only when confidence x area beats the best by 10%: bounded crops per track


def crop_box(box: tuple[float, float, float, float], margin: float, width: int, height: int
             ) -> tuple[int, int, int, int]:
    """The box grown by `margin` of its size on each side, clipped to the frame, on even pixels (YUV 4:2:0)."""
    x0, y0, x1, y1 = box
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    a = max(0, int(x0 - mx)) & ~1
    b = max(0, int(y0 - my)) & ~1
    c = min(width, int(np.ceil(x1 + mx)))
    d = min(height, int(np.ceil(y1 + my)))
    c, d = max(a + 2, c + (c & 1)), max(b + 2, d + (d & 1))
    return a, b, min(c, width - (width & 1)), min(d, height - (height & 1))


def crop_rgb(frame: Frame, region: tuple[int, int, int, int]) -> Tensor:
    """(3, h, w) uint8 RGB of `region` (x0, y0, x1, y1) of `frame`, on the frame's device."""
    x0, y0, x1, y1 = region
    if frame.pixel_format == RGB:
        return frame.image[y0:y1, x0:x1].permute(2, 0, 1).contiguous()
    if frame.pixel_format == NV12:
        img, h = frame.image, frame.height
        nv12 = torch.cat([img[y0:y1, x0:x1], img[h + y0 // 2: h + y1 // 2, x0:x1]])
        return _nv12_crop(nv12, y1 - y0, x1 - x0, frame.colorimetry)
    if frame.pixel_format == NATIVE and frame.image.format.name in ("yuv420p", "yuvj420p"):
        planes = [np.frombuffer(p, np.uint8).reshape(-1, p.line_size) for p in frame.image.planes]
        y = planes[0][y0:y1, x0:x1]
        u = planes[1][y0 // 2: y1 // 2, x0 // 2: x1 // 2]
        v = planes[2][y0 // 2: y1 // 2, x0 // 2: x1 // 2]
        nv12 = np.concatenate([y, np.stack([u, v], axis=-1).reshape(u.shape[0], -1)])
        return _nv12_crop(torch.from_numpy(nv12), y1 - y0, x1 - x0, frame.colorimetry)
    return frame_rgb(frame)[y0:y1, x0:x1].permute(2, 0, 1).contiguous()  # any other format: whole frame


def _nv12_crop(nv12: Tensor, h: int, w: int, colorimetry: str) -> Tensor:
    rgb = nv12_to_rgb(nv12.unsqueeze(0), h, w, colorimetry)[0]
    return rgb.round().clamp(0, 255).to(torch.uint8)


@dataclass(slots=True)
class Best:
    score: float
    crop: Tensor  # (3, h, w) uint8 on the frame's device
    region: tuple[int, int, int, int]
    frame: int  # Frame.seq it came from
    seen: float  # time.monotonic() when the track was last reported
    path: str | None = None  # set when its first matching event fired


class TrackBests:
    """Per camera: each live track's best crop so far."""

    def __init__(self, margin: float) -> None:
        self.margin = margin
        self.tracks: dict[int, Best] = {}

    def update(self, frame: Frame, objects: tuple, now: float) -> None:
        """`objects`: the frame's TrackedObjects (host side, made by the step anyway)."""
        tracks = self.tracks
        for o in objects:
            x0, y0, x1, y1 = o.box
            score = o.confidence * max(0.0, x1 - x0) * max(0.0, y1 - y0)
            best = tracks.get(o.track_id)
            if best is not None:
                best.seen = now
                if best.path is not None or score <= best.score * IMPROVE:
                    continue  # already saved, or not better enough
            region = crop_box(o.box, self.margin, frame.width, frame.height)
            tracks[o.track_id] = Best(score, crop_rgb(frame, region), region, frame.seq, now)

    def forget(self, older_than: float) -> None:
        for tid in [t for t, b in self.tracks.items() if b.seen < older_than]:
            del self.tracks[tid]
