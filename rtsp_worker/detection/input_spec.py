"""How a model wants its pixels: size, channel order, value range, mean/std, letterbox placement, pad.

These are part of the model (its family and exporter), not of the camera. Every preprocessing path
(torch on CPU and GPU, the fused GPU kernel) takes an `InputSpec` and applies it in the same pass that
resizes, so a model family with other conventions costs no extra pass over the pixels.

The per-channel mapping from a source pixel value v in [0, 255] (in the model's channel order) is

    out[c] = (v * scale - mean[c]) / std[c]  =  v * mul[c] + add[c]

and the letterbox pad is `pad_value` (0-255 units) through the same mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ChannelOrder = Literal["rgb", "bgr"]
Placement = Literal["center", "topleft"]


@dataclass(frozen=True, slots=True)
class InputSpec:
    size: tuple[int, int]  # (height, width) of the model input, pixels
    channels: ChannelOrder = "rgb"  # order of the model's three input planes
    scale: float = 1 / 255  # 0-255 pixel values are multiplied by this first (1.0: the model wants 0-255)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # subtracted after scaling, per model channel
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)  # divided after subtracting, per model channel
    letterbox: Placement = "center"  # where the resized frame sits in the input (YOLOX: top-left)
    pad_value: float = 114.0  # letterbox fill, 0-255 units (ultralytics' grey)

    def __post_init__(self) -> None:
        h, w = self.size
        if h <= 0 or w <= 0:
            raise ValueError(f"input size {list(self.size)} must be positive")
        if self.channels not in ("rgb", "bgr"):
            raise ValueError(f"channel order {self.channels!r} must be rgb or bgr")
        if self.letterbox not in ("center", "topleft"):
            raise ValueError(f"letterbox placement {self.letterbox!r} must be center or topleft")
        if any(s == 0 for s in self.std):
            raise ValueError(f"std {list(self.std)} must not contain 0")

    @property
    def mul(self) -> tuple[float, float, float]:
        """Per model channel: multiplier on the 0-255 pixel value."""
        return tuple(self.scale / s for s in self.std)  # type: ignore[return-value]

    @property
    def add(self) -> tuple[float, float, float]:
        """Per model channel: offset added after the multiplier."""
        return tuple(-m / s for m, s in zip(self.mean, self.std))  # type: ignore[return-value]

    @property
    def pad(self) -> tuple[float, float, float]:
        """The letterbox fill per model channel, already mapped."""
        return tuple(self.pad_value * m + a for m, a in zip(self.mul, self.add))  # type: ignore[return-value]
