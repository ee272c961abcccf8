"""`rtsp-worker inspect MODEL`: what the worker will do with a model, and which config keys change it."""

from __future__ import annotations

from pathlib import Path

from rtsp_worker.config import ModelConfig
from rtsp_worker.detection.layouts import LAYOUTS
from rtsp_worker.devices import resolve_device
from rtsp_worker.engines import load_engine
from rtsp_worker.engines.base import Engine


def describe(engine: Engine, cfg: ModelConfig) -> str:
    """A few lines for a person: layout, input and conventions, classes, batch, and the keys that apply."""
    info = engine.info
    layout, spec = info.output_layout, info.spec
    names = ", ".join(info.class_names[:10]) + (f", ... ({len(info.class_names)})" if len(info.class_names) > 10
                                                 else "")
    batch = "dynamic" if info.dynamic_batch else f"fixed at {info.max_batch} (batches run in chunks)"
    layout_from = "model.layout" if cfg.layout != "auto" else "metadata / output shape"
    lines = [
        f"model:        {cfg.path}",
        f"backend:      {type(engine).__name__} on {engine.device}, input {engine.input_dtype}",
        (f"layout:       {layout.name} ({layout.expected_shape()}; "
         f"{'NMS' if layout.nms else 'no NMS: threshold + top-k'}) from {layout_from}"),
        f"input:        {spec.size[0]}x{spec.size[1]} (height x width), batch {batch}",
        (f"conventions:  {spec.channels.upper()}, value x {spec.scale:g}, mean {list(spec.mean)}, std "
         f"{list(spec.std)}, letterbox {spec.letterbox}, pad {spec.pad_value:g}"),
        f"classes:      {len(info.class_names)}: {names}",
        f"config keys:  model.layout ({', '.join(LAYOUTS)}),",
        "              model.input_size, model.class_names,",
        "              model.input.{channels, scale, mean, std, letterbox, pad_value},",
        "              detection.confidence / iou / classes / max_detections",
    ]
    return "\n".join(lines)


def inspect_model(path: Path, layout: str = "auto", device: str = "cpu") -> str:
    cfg = ModelConfig(path=path, layout=layout)  # type: ignore[arg-type]
    engine = load_engine(cfg, resolve_device(device), max_batch=1)  # auto, cpu, cpu:N, cuda, cuda:N
    try:
        return describe(engine, cfg)
    finally:
        engine.close()
