"""Representative frames for INT8 calibration and for the ONNX-vs-engine accuracy check.

Frames come from a video file, a folder (images and/or videos) or the configured cameras, spread over
the source rather than taken from its first second, and are letterboxed exactly as the worker does it
(`rtsp_worker.detection.preprocess.Preprocessor`), so calibration sees the pixels inference will see.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch
from torch import Tensor

from rtsp_worker.config import Config, mask_url
from rtsp_worker.detection.preprocess import Preprocessor
from rtsp_worker.engine_build import BuildError
from rtsp_worker.types import Frame

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".avi", ".mov", ".ts", ".webm", ".h264", ".hevc", ".264", ".265"})


def _open(target: str, timeout_s: float):
    import av

    options = {}
    if urlsplit(target).scheme.lower() in ("rtsp", "rtsps"):
        options = {"rtsp_transport": "tcp", "timeout": str(int(timeout_s * 1e6))}
    return av.open(target, options=options, timeout=(timeout_s, timeout_s))


def sample_video(target: str | Path, count: int, stride: int | None = None, timeout_s: float = 5.0) -> list[np.ndarray]:
    """Up to `count` RGB (H, W, 3) uint8 frames spread over a clip (or every `stride`-th frame of a live URL)."""
    target = str(target)
    if urlsplit(target).scheme.lower() == "file":
        target = urlsplit(target).path
    out: list[np.ndarray] = []
    try:
        with _open(target, timeout_s) as container:
            if not container.streams.video:
                raise BuildError(f"{mask_url(target)}: no video stream")
            stream = container.streams.video[0]
            if stride is None:
                # Known length: spread evenly over the clip; unknown (live): every frame.
                stride = max(1, stream.frames // count) if stream.frames else 1
            for i, frame in enumerate(container.decode(stream)):
                if i % stride == 0:
                    out.append(frame.to_ndarray(format="rgb24"))
                    if len(out) >= count:
                        break
    except BuildError:
        raise
    except Exception as e:  # noqa: BLE001 - av.error.*, OSError...: one message naming the source
        raise BuildError(f"{mask_url(target)}: cannot read frames: {str(e).splitlines()[0] or type(e).__name__}") from None
    if not out:
        raise BuildError(f"{mask_url(target)}: no frames decoded")
    return out


def sample_folder(folder: str | Path, count: int) -> list[np.ndarray]:
    """Up to `count` frames from the images and videos in `folder` (sorted by name, spread evenly)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
    if not files:
        raise BuildError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) or videos in the folder")
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    videos = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
    out: list[np.ndarray] = []
    if images:
        want = count if not videos else max(1, count * len(images) // len(files))
        picks = np.unique(np.linspace(0, len(images) - 1, min(want, len(images))).round().astype(int))
        for i in picks:
            out.extend(sample_video(images[i], 1))
    left = count - len(out)
    for k, video in enumerate(videos):
        share = left // (len(videos) - k)
        if share > 0:
            frames = sample_video(video, share)
            out.extend(frames)
            left -= len(frames)
    return out[:count]


def sample_cameras(config: Config, count: int, stride: int = 10) -> list[np.ndarray]:
    """`count` frames split over the enabled cameras, every `stride`-th frame so they differ."""
    cams = config.enabled_cameras
    out: list[np.ndarray] = []
    for k, cam in enumerate(cams):
        share = (count - len(out)) // (len(cams) - k)
        if share <= 0:
            continue
        if urlsplit(cam.url).scheme.lower() not in ("rtsp", "rtsps", "file"):
            raise BuildError(f"camera {cam.name!r}: cannot sample frames from {urlsplit(cam.url).scheme}://; "
                             "pass --calib-data with a video or folder")
        try:
            out.extend(sample_video(cam.url, share, stride=stride, timeout_s=config.source.open_timeout_s))
        except BuildError as e:
            raise BuildError(f"camera {cam.name!r}: {e}") from None
    return out


def letterbox_frames(images: list[np.ndarray], input_size: tuple[int, int]) -> Tensor:
    """RGB uint8 images -> (N, 3, H, W) float32 in [0, 1], letterboxed like the worker's preprocessing."""
    if not images:
        raise BuildError("no frames to letterbox")
    frames = [Frame(row=0, seq=i, ts=0.0, image=torch.from_numpy(np.ascontiguousarray(img)),
                    height=img.shape[0], width=img.shape[1]) for i, img in enumerate(images)]
    pre = Preprocessor(input_size, max_batch=len(frames), device=torch.device("cpu"))
    batch, _ = pre(frames)
    return batch.clone()


def load_frames(
    source: str | Path | None, config: Config | None, count: int, input_size: tuple[int, int]
) -> Tensor:
    """Frames from `source` (video file/URL or folder), else from the config's cameras, letterboxed."""
    if count < 1:
        raise BuildError(f"--calib-frames must be >= 1, got {count}")
    if source is not None:
        path = Path(source)
        if path.is_dir():
            images = sample_folder(path, count)
        elif path.is_file() or "://" in str(source):
            live = urlsplit(str(source)).scheme.lower() in ("rtsp", "rtsps")
            images = sample_video(source, count, stride=10 if live else None)  # live: frames that differ
        else:
            raise BuildError(f"{source}: no such file or folder")
    elif config is not None:
        images = sample_cameras(config, count)
    else:
        raise BuildError("calibration/validation frames need --calib-data (video or folder) or --config (cameras)")
    log.info("sampled %d frames from %s", len(images), source if source is not None else "the cameras")
    return letterbox_frames(images, input_size)
