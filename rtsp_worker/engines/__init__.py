"""Inference backends behind one protocol (`Engine`), chosen by config and file suffix."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from rtsp_worker.config import ModelConfig
from rtsp_worker.engines.base import Engine, ModelError, ModelInfo

log = logging.getLogger(__name__)

__all__ = ["Engine", "ModelError", "ModelInfo", "choose_backend", "load_engine"]

TORCH_SUFFIXES = (".pt2", ".torchscript", ".pt", ".ts")
TENSORRT_SUFFIXES = (".engine", ".plan", ".trt")


def choose_backend(cfg: ModelConfig, device: torch.device) -> str:
    """`auto` picks by file suffix: TensorRT plans -> tensorrt, TorchScript -> torch, ONNX -> onnxruntime
    (or tensorrt when `build_engine` asks for an engine built from it on a GPU)."""
    if cfg.backend != "auto":
        return cfg.backend
    suffix = cfg.path.suffix.lower()
    if suffix in TENSORRT_SUFFIXES:
        return "tensorrt"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    if suffix == ".onnx" and cfg.build_engine and device.type == "cuda":
        return "tensorrt"
    return "onnxruntime"


def load_engine(cfg: ModelConfig, device: torch.device, max_batch: int,
                build: Callable[[ModelConfig, torch.device, int], Path] | None = None) -> Engine:
    """Load the configured model on `device`; raises ModelError naming the file on any problem.

    `build`: turns an ONNX into a TensorRT plan for `model.build_engine` (the builder lives above the
    engines, so the caller passes it in).
    """
    backend = choose_backend(cfg, device)
    if backend in ("onnxruntime", "torch") and not cfg.path.exists():
        raise ModelError(f"{cfg.path}: model file not found")
    if backend == "onnxruntime":
        from rtsp_worker.engines.onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(cfg, device=device, max_batch=max_batch)
    if backend == "torch":
        from rtsp_worker.engines.torchscript import TorchScriptEngine

        return TorchScriptEngine(cfg, device=device, max_batch=max_batch)
    if backend == "tensorrt":
        from rtsp_worker.engines.tensorrt import load_tensorrt_engine

        return load_tensorrt_engine(cfg, device=device, max_batch=max_batch, build=build)
    raise ModelError(f"{cfg.path}: unknown backend {backend!r}")
