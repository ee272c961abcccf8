"""What every decoder shares: the decoded-image type, the decoder protocol, supported codecs and errors.

Both decoder modules (`decoders` for FFmpeg, `nvdec` for NVDEC) import this one and not each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import av
import torch
from torch import Tensor

# Codecs the worker accepts; anything else is reported as unsupported instead of half-working.
SUPPORTED_CODECS = ("h264", "hevc")


# FFmpeg AVColorSpace / AVColorRange codes (frame.colorspace, frame.color_range in PyAV).
_BT709_SPACES = {1}  # AVCOL_SPC_BT709; 5 BT470BG and 6 SMPTE170M are BT.601
UNTAGGED_SPACES = (None, 2)  # AVCOL_SPC_UNSPECIFIED (2), or no tag read at all
_FULL_RANGE = 2  # AVCOL_RANGE_JPEG
# From this height up an untagged stream is read as BT.709: HD video is BT.709 by its standard (ITU-R
# BT.709, SMPTE 274M/296M) and nearly every 720p/1080p camera encodes it so, while FFmpeg's default for
# an untagged stream is BT.601 at any size (a visible hue shift on HD: reds and greens off by ~10 levels).
HD_MIN_HEIGHT = 720


def colorimetry_from_tags(colorspace: int | None, color_range: int | None, height: int = 0) -> str:
    """The colorimetry name ("bt709-full", ...) for a stream's colour tags.

    Tagged streams: as the tags say (BT.709, else BT.601). Untagged streams: BT.709 from `HD_MIN_HEIGHT`
    lines up, BT.601 below (SD). Range: full only when tagged so. Both decoder paths use this one rule:
    NVDEC's NV12 is converted with it, and the CPU path passes it to FFmpeg's conversion for untagged HD
    frames (`detection.preprocess.native_to_hwc`), since FFmpeg alone would use BT.601.
    """
    if colorspace in _BT709_SPACES or (colorspace in UNTAGGED_SPACES and height >= HD_MIN_HEIGHT):
        matrix = "bt709"
    else:
        matrix = "bt601"
    return f"{matrix}-{'full' if color_range == _FULL_RANGE else 'limited'}"


def swscale_colorspace(frame: Any, colorimetry: str) -> str | None:
    """The `src_colorspace` to give FFmpeg's conversion of `frame` (an av.VideoFrame): BT.709 for an untagged
    frame whose colorimetry is BT.709 (HD), else None (FFmpeg reads the frame's own tags)."""
    if colorimetry.startswith("bt709") and getattr(frame, "colorspace", None) in UNTAGGED_SPACES:
        return "itu709"
    return None


class DecodeError(RuntimeError):
    """One packet could not be decoded (a corrupt or truncated frame); the stream goes on.

    The NVDEC decoder raises it for PyNvVideoCodec's errors, so a camera counts it as a decode error
    like FFmpeg's `InvalidDataError` instead of ending the connection.
    """


class UnsupportedCodec(RuntimeError):
    """The stream's codec is not one the worker decodes."""


@dataclass(frozen=True, slots=True)
class DecodedImage:
    image: Tensor | Any  # RGB (H, W, 3) or NV12 (H*3/2, W) uint8 on the decoder's device, or (NATIVE) the av.VideoFrame
    pixel_format: str
    height: int
    width: int
    pts: float | None  # seconds
    colorimetry: str = "bt601-limited"  # YUV matrix and range (colorimetry_from_tags): NV12 is converted with it;
    # NATIVE frames carry their own tags, which FFmpeg's conversion reads, except for untagged HD (see above)


class VideoDecoder(Protocol):
    """Turns demuxed packets of one video stream into images.

    A decoder that can skip non-reference frames (which nothing else is decoded from, so the reference chain
    holds) also has `skip_nonref(on: bool) -> None`; the camera turns it on while most frames are dropped anyway.
    """

    name: str  # "cpu" or "nvdec"
    device: torch.device

    def decode(self, packet: av.Packet) -> list[DecodedImage]: ...

    def flush(self) -> list[DecodedImage]: ...

    def close(self) -> None: ...
