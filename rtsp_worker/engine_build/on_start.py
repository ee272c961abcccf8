"""Build-on-start (`model.build_engine: true`): build `<onnx>.engine` when it is missing or stale.

The pipeline hands `ensure_engine` to the TensorRT runtime, which never imports the builder itself.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from rtsp_worker.config import TensorRTModelConfig
from rtsp_worker.devices import normalize_device
from rtsp_worker.engine_build import BuildError
from rtsp_worker.engines.base import ModelError
from rtsp_worker.engines.tensorrt import engine_path_for
from rtsp_worker.engines.trt_plan import file_sha256, import_tensorrt, read_plan, stale_reasons

log = logging.getLogger(__name__)


def ensure_engine(cfg: TensorRTModelConfig, device: torch.device, max_batch: int) -> Path:
    """Build `<onnx>.engine` when it is missing or stale (other TensorRT/GPU, changed ONNX, too small)."""
    from rtsp_worker.engine_build.build import BuildOptions, build_engine

    trt = import_tensorrt(ModelError)
    onnx_path = cfg.path
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path}: model file not found")
    engine_path = engine_path_for(onnx_path)
    index = normalize_device(device).index
    cc = tuple(torch.cuda.get_device_capability(index))
    if engine_path.is_file():
        try:
            meta = read_plan(engine_path)[0]
        except ModelError as e:
            meta, why = None, [str(e)]
        else:
            why = stale_reasons(meta, file_sha256(onnx_path), trt.__version__, cc, max_batch, cfg.input_size)
        if not why:
            return engine_path
        log.warning("%s: rebuilding (%s)", engine_path, "; ".join(why))
    else:
        log.warning("%s: no engine yet; building it from %s (this takes minutes, once)", engine_path, onnx_path)
    size = cfg.input_size
    opts = BuildOptions(onnx=onnx_path, output=engine_path, max_batch=max_batch, opt_batch=max_batch,
                        height=size[0] if size else None, width=size[1] if size else None,
                        precision="fp16" if cfg.fp16 else "fp32", progress=False,
                        contexts=cfg.contexts, model=cfg)
    try:
        with torch.cuda.device(index):
            build_engine(opts, echo=log.info)
    except BuildError as e:
        raise ModelError(f"{onnx_path}: building the TensorRT engine failed: {e}") from None
    return engine_path
