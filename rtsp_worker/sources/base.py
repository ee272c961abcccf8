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
_BT709_SPACES = {1}  # AVCOL_SPC_BT709; 5 BT470BG and 6 SMPTE170M are BT.601; 2 unspecified -> BT.601
_FULL_RANGE = 2  # AVCOL_RANGE_JPEG


def colorimetry_from_tags(colorspace: int | None, color_range: int | None) -> str:
    """The colorimetry name ("bt709-full", ...) for a stream's colour tags, read as FFmpeg's rgb24
    conversion reads them (untagged: BT.601 limited range)."""
    matrix = "bt709" if colorspace in _BT709_SPACES else "bt601"
    return f"{matrix}-{'full' if color_range == _FULL_RANGE else 'limited'}"


class UnsupportedCodec(RuntimeError):
    """The stream's codec is not one the worker decodes."""


@dataclass(frozen=True, slots=True)
class DecodedImage:
    image: Tensor | Any  # RGB (H, W, 3) or NV12 (H*3/2, W) uint8 on the decoder's device, or (NATIVE) the av.VideoFrame
    pixel_format: str
    height: int
    width: int
    pts: float | None  # seconds
    colorimetry: str = "bt601-limited"  # NV12: YUV matrix and range from the stream's colour tags (NATIVE frames
    # carry their own tags, which FFmpeg's conversion reads)


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
