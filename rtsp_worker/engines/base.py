"""The engine protocol every inference backend implements, and the checks they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


class ModelError(ValueError):
    """A model that cannot be used (missing, wrong layout, wrong shape); the message names the file."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the pipeline needs to know about a loaded model."""

    input_size: tuple[int, int]  # (height, width) of the model input, multiples of 32
    class_names: tuple[str, ...]  # index = class id
    max_batch: int | None  # largest batch one call accepts (None: any)
    dynamic_batch: bool  # False: the model itself is fixed at batch max_batch (usually 1)


@runtime_checkable
class Engine(Protocol):
    """Runs a detector on a preprocessed batch.

    `infer` takes a (B, 3, H, W) float tensor in [0, 1] (RGB) on `self.device` and returns the raw
    model output (B, 4 + num_classes, N) float32 on `self.device`, ultralytics YOLOv8 layout: rows are
    cx, cy, w, h in input pixels, then one score per class. It must not synchronize with the host
    where it can avoid it: postprocessing reads the output tensor directly.
    """

    info: ModelInfo
    device: torch.device
    input_dtype: torch.dtype  # dtype `infer` wants its input in (float32 or float16)

    def infer(self, images: Tensor) -> Tensor: ...

    def close(self) -> None: ...


def check_output(output: Tensor, num_classes: int, source: str) -> None:
    """Reject a model whose output is not (B, 4 + nc, N)."""
    if output.ndim != 3 or output.shape[1] != 4 + num_classes:
        raise ModelError(
            f"{source}: model output has shape {list(output.shape)}, expected [B, 4 + num_classes, N] "
            f"(ultralytics YOLOv8 layout) with num_classes={num_classes}"
        )


def default_class_names(num_classes: int) -> tuple[str, ...]:
    return tuple(str(i) for i in range(num_classes))


def parse_names(value: str | None) -> tuple[str, ...] | None:
    """Class names as models store them in metadata: a JSON list, or ultralytics' `{0: 'person', ...}`."""
    if not value:
        return None
    import ast
    import json

    try:
        obj = json.loads(value)
    except ValueError:
        try:
            obj = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return None
    if isinstance(obj, dict):
        try:
            return tuple(str(obj[k]) for k in sorted(obj, key=lambda k: int(k)))
        except (ValueError, TypeError):
            return None
    if isinstance(obj, list):
        return tuple(str(x) for x in obj)
    return None
