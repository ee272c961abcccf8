"""Inference backends behind one protocol (`Engine`), chosen by config and file suffix."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from rtsp_worker.config import (
    TENSORRT_SUFFIXES,  # noqa: F401 - re-exported: the suffixes each backend reads
    TORCH_SUFFIXES,  # noqa: F401
    ModelConfig,
    OnnxRuntimeModelConfig,
    TensorRTModelConfig,
    TorchModelConfig,
)
from rtsp_worker.devices import normalize_device
from rtsp_worker.engines.base import Engine, ModelError, ModelInfo

log = logging.getLogger(__name__)

__all__ = ["Engine", "ModelError", "ModelInfo", "choose_backend", "load_engine"]


def choose_backend(cfg: ModelConfig, device: torch.device) -> str:
    """The backend of the config's section (picked at load from `backend`, or for `auto` from the file suffix),
    except that `auto` on an ONNX file with `build_engine` runs it on ONNX Runtime where there is no CUDA GPU
    to build a TensorRT engine on."""
    if cfg.backend == "auto" and cfg.BACKEND == "tensorrt" and cfg.path.suffix.lower() == ".onnx" \
            and device.type != "cuda":
        return "onnxruntime"
    return cfg.BACKEND


def load_engine(cfg: ModelConfig, device: torch.device, max_batch: int,
                build: Callable[[TensorRTModelConfig, torch.device, int], Path] | None = None) -> Engine:
    """Load the configured model on `device`; raises ModelError naming the file on any problem.

    `build`: turns an ONNX into a TensorRT plan for `model.build_engine` (the builder lives above the
    engines, so the caller passes it in).
    """
    device = normalize_device(device)  # `cuda` -> `cuda:N`, `cpu:0` -> `cpu`: as the tensors will report it
    backend = choose_backend(cfg, device)
    if backend in ("onnxruntime", "torch") and not cfg.path.exists():
        raise ModelError(f"{cfg.path}: model file not found")
    if backend == "onnxruntime":
        from rtsp_worker.engines.onnxruntime import OnnxRuntimeEngine

        if not isinstance(cfg, OnnxRuntimeModelConfig):  # the CPU fallback of build_engine: ONNX Runtime's defaults
            cfg = OnnxRuntimeModelConfig(**cfg.shared())
        return OnnxRuntimeEngine(cfg, device=device, max_batch=max_batch)
    if backend == "torch" and isinstance(cfg, TorchModelConfig):
        from rtsp_worker.engines.torchscript import TorchScriptEngine

        return TorchScriptEngine(cfg, device=device, max_batch=max_batch)
    if backend == "tensorrt" and isinstance(cfg, TensorRTModelConfig):
        from rtsp_worker.engines.tensorrt import load_tensorrt_engine

        return load_tensorrt_engine(cfg, device=device, max_batch=max_batch, build=build)
    raise ModelError(f"{cfg.path}: unknown backend {backend!r}")
