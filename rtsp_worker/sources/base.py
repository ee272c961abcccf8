"""What every decoder shares: the decoded-image type, the decoder protocol, supported codecs and errors.

Both decoder modules (`decoders` for FFmpeg, `nvdec` for NVDEC) import this one and not each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import av
import torch
from torch import Tensor

# Codecs the worker accepts; anything else is reported as unsupported instead of half-working.
SUPPORTED_CODECS = ("h264", "hevc")


class UnsupportedCodec(RuntimeError):
    """The stream's codec is not one the worker decodes."""


@dataclass(frozen=True, slots=True)
class DecodedImage:
    image: Tensor  # RGB (H, W, 3) uint8 or NV12 (H*3/2, W) uint8, on the decoder's device
    pixel_format: str
    height: int
    width: int
    pts: float | None  # seconds


class VideoDecoder(Protocol):
    """Turns demuxed packets of one video stream into images."""

    name: str  # "cpu" or "nvdec"
    device: torch.device

    def decode(self, packet: av.Packet) -> list[DecodedImage]: ...

    def flush(self) -> list[DecodedImage]: ...

    def close(self) -> None: ...
