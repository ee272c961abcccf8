"""How a model wants its pixels: size, channel order, value range, mean/std, letterbox placement, pad.

These are part of the model (its family and exporter), not of the camera. Every preprocessing path
(torch on CPU and GPU, the fused GPU kernel) takes an `InputSpec` and applies it in the same pass that
resizes, so a model family with other conventions costs no extra pass over the pixels.

The per-channel mapping from a source pixel value v in [0, 255] (in the model's channel order) is

    out[c] = (v * scale - mean[c]) / std[c]  =  v * mul[c] + add[c]

and the letterbox pad is `pad_value` (0-255 units) through the same mapping.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

ChannelOrder = Literal["rgb", "bgr"]
Placement = Literal["center", "topleft", "stretch"]  # stretch: no letterbox, each axis scaled (RT-DETR)


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
        if self.letterbox not in ("center", "topleft", "stretch"):
            raise ValueError(f"letterbox placement {self.letterbox!r} must be center, topleft or stretch")
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


# Each family's conventions as its reference exporter and predictor use them.
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "yolov8": {},
    "yolov5": {},
    "end2end": {},
    # Megvii's YOLOX since 0.2: BGR, 0-255, no mean/std, the frame at the top-left corner.
    "yolox": {"channels": "bgr", "scale": 1.0, "letterbox": "topleft"},
    "yolox-decoded": {"channels": "bgr", "scale": 1.0, "letterbox": "topleft"},
    # ultralytics' RT-DETR predictor resizes without keeping the aspect ratio.
    "rtdetr": {"letterbox": "stretch"},
    "rtdetr-topk": {"letterbox": "stretch"},
}
# Metadata keys an exporter may write (ours does); values are strings, lists as JSON.
META_KEYS = {"input_channels": "channels", "input_scale": "scale", "input_mean": "mean", "input_std": "std",
             "input_letterbox": "letterbox", "input_pad_value": "pad_value"}


def _meta_value(field_name: str, text: str) -> Any:
    if field_name in ("channels", "letterbox"):
        return text.strip().lower()
    value = json.loads(text)
    return tuple(float(v) for v in value) if isinstance(value, list) else float(value)


def spec_for(
    size: tuple[int, int], layout: str, meta: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> InputSpec:
    """The InputSpec of a model: `overrides` (config) over metadata over the layout's family default."""
    values: dict[str, Any] = dict(FAMILY_DEFAULTS.get(layout, {}))
    for key, name in META_KEYS.items():
        if meta and key in meta:
            try:
                values[name] = _meta_value(name, meta[key])
            except (ValueError, TypeError):
                raise ValueError(f"metadata {key}={meta[key]!r} is not a valid {name}") from None
    known = {f.name for f in fields(InputSpec)}
    values.update({k: tuple(v) if isinstance(v, list) else v for k, v in (overrides or {}).items() if k in known})
    return replace(InputSpec(size), **values)
