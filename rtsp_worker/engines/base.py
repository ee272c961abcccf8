"""The engine protocol every inference backend implements, and the checks they share."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor

from rtsp_worker.detection.input_spec import InputSpec
from rtsp_worker.detection.layouts import LayoutError, OutputLayout, resolve_layout

if TYPE_CHECKING:
    from rtsp_worker.config import ModelConfig


log = logging.getLogger(__name__)


class ModelError(ValueError):
    """A model that cannot be used (missing, wrong layout, wrong shape); the message names the file."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the pipeline needs to know about a loaded model."""

    input_size: tuple[int, int]  # (height, width) of the model input, multiples of 32
    class_names: tuple[str, ...]  # index = class id
    max_batch: int | None  # largest batch one call accepts (None: any)
    dynamic_batch: bool  # False: the model itself is fixed at batch max_batch (usually 1)
    layout: OutputLayout | None = None  # how to read the raw output (None: yolov8, one score per class name)
    input_spec: InputSpec | None = field(default=None)  # pixel conventions (None: InputSpec(input_size))

    @property
    def output_layout(self) -> OutputLayout:
        return self.layout or OutputLayout("yolov8", len(self.class_names))

    @property
    def spec(self) -> InputSpec:
        return self.input_spec or InputSpec(self.input_size)


@runtime_checkable
class Engine(Protocol):
    """Runs a detector on a preprocessed batch.

    `infer` takes a (B, 3, H, W) float tensor prepared as `info.spec` says (default: RGB in [0, 1]) on
    `self.device` and returns the raw model output float32 on `self.device`, in the layout `info.layout`
    names (detection/layouts.py; default ultralytics YOLOv8's (B, 4 + nc, N)). It must not synchronize with the host
    where it can avoid it: postprocessing reads the output tensor directly.
    """

    info: ModelInfo
    device: torch.device
    input_dtype: torch.dtype  # dtype `infer` wants its input in (float32 or float16)
    # Milliseconds of the runs the engine did anyway while loading (its probe, CUDA-graph warm-ups), by batch
    # size: the capacity estimate until real batches are measured (capacity.py). Timed only, no extra run.
    warmup_ms: Mapping[int, float]

    def infer(self, images: Tensor) -> Tensor: ...

    def close(self) -> None: ...


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


def model_layout(
    cfg: ModelConfig, shape: Sequence[int | None], input_size: tuple[int, int], names: tuple[str, ...] | None,
    meta: Mapping[str, str], source: str,
) -> OutputLayout:
    """The output layout of a loaded model (`model.layout`, else metadata, else the shape), or a ModelError."""
    try:
        return resolve_layout(shape, input_size, len(names) if names is not None else None, meta,
                              cfg.layout, source)
    except LayoutError as e:
        raise ModelError(str(e)) from None


def model_input_spec(
    cfg: ModelConfig, input_size: tuple[int, int], layout: OutputLayout, meta: Mapping[str, str]
) -> InputSpec:
    """Pixel conventions: `model.input:` over the exporter's metadata over the layout's family default."""
    from rtsp_worker.detection.input_spec import spec_for

    overrides = cfg.input.model_dump(exclude_none=True) if cfg.input is not None else {}
    try:
        return spec_for(input_size, layout.name, meta, overrides)
    except ValueError as e:
        raise ModelError(f"{cfg.path}: model.input: {e}") from None


def model_info(
    cfg: ModelConfig, output_shape: Sequence[int | None], input_size: tuple[int, int],
    names: tuple[str, ...] | None, meta: Mapping[str, str], source: str, *, max_batch: int | None,
    dynamic_batch: bool,
) -> ModelInfo:
    """What a loaded model is, read the same way by every backend from the output shape of its probe run
    and its metadata: the layout (`model_layout`), the class names (given, else '0'..) and the pixel
    conventions (`model_input_spec`). A layout that does not fit is a ModelError naming `source`."""
    layout = model_layout(cfg, output_shape, input_size, names, meta, source)
    if names is None and layout.num_classes == 80:
        log.warning("%s: the model has 80 classes and no class names in its metadata: classes show as 0..79; "
                    "set `model.class_names: coco` if it was trained on COCO", source)
    return ModelInfo(input_size=input_size,
                     class_names=names if names is not None else default_class_names(layout.num_classes),
                     max_batch=max_batch, dynamic_batch=dynamic_batch, layout=layout,
                     input_spec=model_input_spec(cfg, input_size, layout, meta))
