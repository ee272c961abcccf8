"""Small generic test clips: a moving pattern encoded with PyAV, for the RTSP server's `file:` mounts.

The clips are made for low replay latency: no B-frames and one key frame per second (gop = fps), so a
client that joins a looping replay waits at most one second for a picture.
For scenes with ground truth (objects to detect and track) see `rtsp_worker.sim.synthetic`.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

log = logging.getLogger(__name__)

# Our codec names -> PyAV/FFmpeg encoder names.
_ENCODERS = {"h264": "libx264", "hevc": "libx265"}
PATTERNS = ("box", "gradient")


def _frame_rgb(i: int, fps: int, width: int, height: int, pattern: str) -> np.ndarray:
    """Frame `i` of the pattern as (H, W, 3) uint8 RGB; every frame differs so decoders can't skip work."""
    t = i / fps
    ys = np.arange(height, dtype=np.int32)[:, None]
    xs = np.arange(width, dtype=np.int32)[None, :]
    shift = int(t * 60)
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[..., 0] = ((xs + shift) % 256).astype(np.uint8)
    img[..., 1] = ((ys + shift // 2) % 256).astype(np.uint8)
    img[..., 2] = 96
    if pattern == "box":
        side = max(8, min(width, height) // 5)
        x0 = int((width - side) * (0.5 + 0.5 * np.sin(2 * np.pi * t / 2.0)))
        y0 = int((height - side) * (0.5 + 0.5 * np.cos(2 * np.pi * t / 3.0)))
        img[y0 : y0 + side, x0 : x0 + side] = (240, 240, 240)
    return img


def write_test_clip(
    path: str | Path,
    seconds: float = 4,
    fps: int = 15,
    size: tuple[int, int] = (640, 360),
    codec: str = "h264",
    pattern: str = "box",
    b_frames: int = 0,
) -> Path:
    """Encode a `seconds`-long moving-pattern MP4 at `path` and return the path.

    `size` is (width, height); `codec` is "h264" or "hevc"; `pattern` is "box" (a square moving over a
    scrolling gradient) or "gradient". yuv420p, gop = fps, no B-frames unless `b_frames` > 0 (as some
    cameras' recordings have, to test reordering).
    """
    if codec not in _ENCODERS:
        raise ValueError(f"write_test_clip: codec {codec!r} is not one of {sorted(_ENCODERS)}")
    if pattern not in PATTERNS:
        raise ValueError(f"write_test_clip: pattern {pattern!r} is not one of {PATTERNS}")
    width, height = size
    if width % 2 or height % 2 or width <= 0 or height <= 0:
        raise ValueError(f"write_test_clip: size {size} must be positive and even (yuv420p)")
    if not 0 <= b_frames <= 4:
        raise ValueError(f"write_test_clip: b_frames ({b_frames}) must be 0..4")
    if fps <= 0 or seconds <= 0:
        raise ValueError(f"write_test_clip: fps ({fps}) and seconds ({seconds}) must be positive")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_frames = max(1, round(seconds * fps))
    # zerolatency turns B-frames off, so ask for it only when none are wanted.
    options = {"preset": "ultrafast", "tune": "zerolatency"} if b_frames == 0 else {"preset": "veryfast"}
    if codec == "hevc":
        # libx265 is chatty on stderr; keep the key-frame interval and B-frame settings explicit.
        options["x265-params"] = f"log-level=error:keyint={fps}:min-keyint={fps}:bframes={b_frames}"
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(_ENCODERS[codec], rate=Fraction(fps, 1), options=options)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = fps
        stream.codec_context.max_b_frames = b_frames
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(_frame_rgb(i, fps, width, height, pattern), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    log.debug("wrote test clip %s (%s, %dx%d@%d, %d frames)", path, codec, width, height, fps, n_frames)
    return path
