"""TensorRT backend (extra `tensorrt`): a dynamic-batch plan run from preallocated torch CUDA tensors.

How a call flows, and why nothing waits on the host:

- Each of `ModelConfig.contexts` slots owns an execution context on an optimization profile of its own
  (TensorRT: contexts in concurrent use must not share one; `build-engine --contexts` adds them), a
  non-default CUDA stream, and input
  and output tensors allocated once for the largest batch. Tensor addresses are bound once: a batch of
  b uses the first b rows of each buffer, which start at the same address, so a call only sets the
  input shape and enqueues `execute_async_v3` on the slot's stream.
- Ordering is done with CUDA events (torch's `Stream.wait_stream` records an event on one stream and
  makes the other wait for it on the GPU; the host never blocks):
  1. the slot's stream waits for the caller's current stream, so the caller's preprocessing has
     written `images` before the engine copies it in (and the previous reader of this slot's output on
     that stream has been enqueued before we overwrite it);
  2. the caller's current stream waits for the slot's stream, so postprocessing enqueued on the
     caller's stream after `infer` returns sees the finished output.
  `images.record_stream(slot stream)` tells torch's allocator the input is still in use there.
- A calling stream keeps the slot it first got (slots are handed out round-robin to new streams), so
  the output tensor returned, a view of that slot's buffer, stays valid until the next `infer` from
  the same stream; consume it (enqueue postprocessing or a copy) before then. One caller stream gets
  no overlap from more contexts (its work is ordered anyway); two threads, each inside its own
  `torch.cuda.stream(...)`, get two slots and two batches in flight. With more calling streams than
  contexts, streams share slots and the slot also waits for the previous caller's stream.
  The pipeline calls `infer` from its one loop thread on one stream (`batcher.overlap` overlaps the
  postprocessing of batch N with the inference of N+1, not two inferences), so `model.contexts` and
  `build-engine --contexts` default to 1: a second context would only hold a second copy of the
  activation memory and an optimization profile that nothing uses.
- FP16 engine outputs are converted to float32 on the slot's stream into a preallocated buffer.
- What the output holds (layout, class names, input conventions) is read like the ONNX it was built from:
  from the output shape of the probe run at load and the ONNX metadata `build-engine` stored with the
  plan (`plan_model_info`), through the function every backend uses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rtsp_worker.config import ModelConfig, TensorRTModelConfig
from rtsp_worker.devices import normalize_device
from rtsp_worker.engines.base import ModelError, ModelInfo, model_info
from rtsp_worker.engines.trt_plan import EngineMetadata, check_compatible, import_tensorrt, read_plan

log = logging.getLogger(__name__)

_TRT_LOGGER: Any = None  # TensorRT wants one logger per process
_TORCH_DTYPE = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
                "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8}


def _import_trt() -> Any:
    return import_tensorrt(ModelError)


def _logger(trt: Any) -> Any:
    global _TRT_LOGGER
    if _TRT_LOGGER is None:
        _TRT_LOGGER = trt.Logger(trt.Logger.WARNING)
    return _TRT_LOGGER


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    """trt.DataType -> torch dtype (by member name, so no TensorRT import is needed to test it)."""
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    if name not in _TORCH_DTYPE:
        raise ModelError(f"TensorRT tensor type {name} is not supported")
    return _TORCH_DTYPE[name]


def context_profiles(contexts: int, num_profiles: int, source: str = "") -> list[int]:
    """The optimization profile each execution context uses: one of its own each.

    TensorRT forbids two contexts in concurrent use on one profile (they share its shape state), so
    contexts beyond the engine's profiles are dropped, with a warning naming the file.
    """
    if num_profiles < 1:
        raise ModelError(f"{source}: engine has no optimization profile")
    if contexts > num_profiles:
        log.warning("%s: %d execution contexts asked for but the engine has %d optimization profile(s): "
                    "using %d; rebuild it with `rtsp-worker build-engine --contexts %d`",
                    source, contexts, num_profiles, num_profiles, contexts)
    return list(range(min(contexts, num_profiles)))


def plan_model_info(
    cfg: ModelConfig, meta: EngineMetadata | None, output_shape: tuple[int, ...], input_size: tuple[int, int],
    source: str, *, max_batch: int, dynamic_batch: bool,
) -> ModelInfo:
    """The engine's ModelInfo from its output shape and the class names and ONNX metadata stored with the
    plan (none for a plain plan: the shape decides), read as ONNX Runtime reads the ONNX."""
    names = tuple(cfg.class_names) if cfg.class_names else (meta.class_names if meta is not None else None)
    props = meta.model_metadata if meta is not None else {}
    return model_info(cfg, output_shape, input_size, names, props, source, max_batch=max_batch,
                      dynamic_batch=dynamic_batch)


@dataclass(slots=True)
class _Slot:
    """One execution context with its stream and buffers (mutable: remembers its last consumer stream)."""

    context: Any  # trt.IExecutionContext
    stream: torch.cuda.Stream
    input: Tensor  # (max_batch, 3, H, W), engine input dtype
    output: Tensor  # (max_batch, rows, columns) in the engine's layout, engine output dtype
    output_f32: Tensor | None  # float32 copy target when the engine outputs fp16
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_consumer: torch.cuda.Stream | None = None


class TensorRTEngine:
    """A TensorRT plan behind the `Engine` protocol; see the module docstring for streams and buffers."""

    def __init__(self, cfg: TensorRTModelConfig, device: torch.device, max_batch: int, plan_path: Path | None = None) -> None:
        trt = _import_trt()
        self.path = Path(plan_path or cfg.path)
        src = str(self.path)
        if device.type != "cuda" or not torch.cuda.is_available():
            raise ModelError(f"{src}: the TensorRT backend needs a CUDA GPU (device is {device})")
        self.device = normalize_device(device)
        index = self.device.index
        meta, plan = read_plan(self.path)
        gpu_name = torch.cuda.get_device_name(index)
        cc = tuple(torch.cuda.get_device_capability(index))
        if meta is not None:
            for warning in check_compatible(meta, src, trt.__version__, cc, gpu_name):  # raises on mismatch
                log.warning(warning)
        else:
            log.warning("%s: plain TensorRT plan without rtsp-worker metadata: TensorRT version and GPU not checked", src)

        with torch.cuda.device(index):
            self._runtime = trt.Runtime(_logger(trt))
            engine = self._runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise ModelError(f"{src}: TensorRT {trt.__version__} cannot load this engine (built by another TensorRT "
                             "version or for another GPU, or corrupt); rebuild it with `rtsp-worker build-engine`")
        self._engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{src}: expected one input and one output, got inputs {inputs}, outputs {outputs}")
        self._in, self._out = inputs[0], outputs[0]
        lo, _, hi = (tuple(s) for s in engine.get_tensor_profile_shape(self._in, 0))
        if len(hi) != 4 or lo[1:] != hi[1:] or hi[1] != 3:
            raise ModelError(f"{src}: input profile {lo}..{hi}: expected (B, 3, H, W) with fixed H and W")
        if lo[0] > 1:
            raise ModelError(f"{src}: engine's smallest batch is {lo[0]}; rebuild it with --min-batch 1")
        height, width = int(hi[2]), int(hi[3])
        self._size = (height, width)
        if cfg.input_size is not None and tuple(cfg.input_size) != (height, width):
            raise ModelError(f"{src}: engine input is {height}x{width} but model.input_size is "
                             f"{cfg.input_size[0]}x{cfg.input_size[1]}; rebuild it with --height/--width")
        self._cap = min(max_batch, int(hi[0]))
        if max_batch > hi[0]:
            log.warning("%s: engine's max batch is %d (asked for %d): batches are capped at %d", src, hi[0], max_batch, hi[0])

        self.input_dtype = torch_dtype(engine.get_tensor_dtype(self._in))
        if self.input_dtype not in (torch.float32, torch.float16):
            raise ModelError(f"{src}: engine input is {self.input_dtype}, expected float32 or float16")
        out_dtype = torch_dtype(engine.get_tensor_dtype(self._out))
        with torch.cuda.device(index):  # contexts allocate their memory on the current device
            profiles = context_profiles(cfg.contexts, engine.num_optimization_profiles, src)
            self._slots = [self._make_slot(trt, out_dtype, height, width, p) for p in profiles]
        self._out_shape = tuple(self._slots[0].output.shape[1:])
        self._by_stream: dict[int, _Slot] = {}
        self._rr = threading.Lock()
        # Fail at start-up rather than on the first camera frame (a sync here costs nothing): the probe's
        # output shape decides the layout.
        t0 = time.perf_counter()
        probe = self.infer(torch.zeros((1, 3, height, width), dtype=self.input_dtype, device=self.device))
        torch.cuda.synchronize(self.device)
        self.warmup_ms = {1: (time.perf_counter() - t0) * 1000}
        self.info = plan_model_info(cfg, meta, tuple(probe.shape), self._size, src, max_batch=self._cap,
                                    dynamic_batch=hi[0] > lo[0])
        log.info("%s: TensorRT %s, input %dx%d %s, batch 1..%d, %d contexts, layout %s", src, trt.__version__,
                 height, width, self.input_dtype, self._cap, len(self._slots), self.info.output_layout.name)

    def _make_slot(self, trt: Any, out_dtype: torch.dtype, height: int, width: int, profile: int) -> _Slot:
        ctx = self._engine.create_execution_context()
        if ctx is None:
            raise ModelError(f"{self.path}: cannot create a TensorRT execution context (GPU memory?); "
                             "lower model.contexts or the engine's max batch")
        stream = torch.cuda.Stream(self.device)
        if profile and not ctx.set_optimization_profile_async(profile, stream.cuda_stream):
            raise ModelError(f"{self.path}: cannot select optimization profile {profile} for a context")
        full = (self._cap, 3, height, width)
        ctx.set_input_shape(self._in, full)
        out_shape = tuple(ctx.get_tensor_shape(self._out))
        if len(out_shape) != 3 or min(out_shape) < 1:
            raise ModelError(f"{self.path}: output shape {out_shape} at batch {self._cap} is not "
                             "(B, rows, columns)")
        inp = torch.empty(full, dtype=self.input_dtype, device=self.device)
        out = torch.empty(out_shape, dtype=out_dtype, device=self.device)
        # Bound once: a batch of b uses the first b rows, which start at the same addresses.
        ctx.set_tensor_address(self._in, inp.data_ptr())
        ctx.set_tensor_address(self._out, out.data_ptr())
        out32 = None if out_dtype == torch.float32 else torch.empty(out_shape, dtype=torch.float32, device=self.device)
        return _Slot(ctx, stream, inp, out, out32)

    @property
    def contexts(self) -> int:
        """Execution contexts in use: one per optimization profile taken (`model.contexts`, at most the
        engine's profiles)."""
        return len(self._slots)

    def infer(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) on this GPU -> the raw output in `info.layout`, float32 on this GPU, ordered on the
        caller's stream.

        The result is a view of this stream's slot buffer, valid until this stream's next `infer`.
        """
        h, w = self._size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, h, w):
            raise ModelError(f"{self.path}: input batch {tuple(images.shape)} does not match the engine's (B, 3, {h}, {w})")
        b = images.shape[0]
        if b > self._cap:
            raise ModelError(f"{self.path}: batch of {b} exceeds the engine's max batch {self._cap}")
        if b == 0:
            return torch.empty((0, *self._out_shape), dtype=torch.float32, device=self.device)
        images = images.to(self.device, non_blocking=True)
        caller = torch.cuda.current_stream(self.device)
        with self._rr:
            slot = self._by_stream.get(caller.cuda_stream)
            if slot is None:
                if len(self._by_stream) >= 64:  # callers that create streams per call: start over
                    self._by_stream.clear()
                slot = self._slots[len(self._by_stream) % len(self._slots)]
                self._by_stream[caller.cuda_stream] = slot
        with slot.lock, torch.cuda.device(self.device):
            slot.stream.wait_stream(caller)  # event: inputs written, previous readers of this slot enqueued
            if slot.last_consumer is not None and slot.last_consumer != caller:
                slot.stream.wait_stream(slot.last_consumer)
            with torch.cuda.stream(slot.stream):
                slot.input[:b].copy_(images, non_blocking=True)  # casts to the engine's dtype if needed
                slot.context.set_input_shape(self._in, (b, 3, h, w))
                if not slot.context.execute_async_v3(slot.stream.cuda_stream):
                    raise ModelError(f"{self.path}: TensorRT execution failed (see TensorRT messages)")
                out = slot.output[:b]
                if slot.output_f32 is not None:
                    out = slot.output_f32[:b].copy_(out, non_blocking=True)
            images.record_stream(slot.stream)
            caller.wait_stream(slot.stream)  # event: the caller's later work sees the finished output
            slot.last_consumer = caller
        return out

    def close(self) -> None:
        """Release contexts, engine and buffers now (not left to garbage collection)."""
        for slot in getattr(self, "_slots", []):
            slot.stream.synchronize()
        self._slots = []
        self._engine = None
        self._runtime = None


def engine_path_for(onnx_path: Path) -> Path:
    """Where build-on-start keeps the engine built from an ONNX: next to it, suffix `.engine`."""
    return onnx_path.with_suffix(".engine")


# Builds (or reuses) `<onnx>.engine` for a config and returns its path. The runtime never imports the
# builder: whoever loads the engine hands one in (`engine_build.on_start.ensure_engine`).
BuildFn = Callable[[TensorRTModelConfig, torch.device, int], Path]


def load_tensorrt_engine(cfg: TensorRTModelConfig, device: torch.device, max_batch: int,
                         build: BuildFn | None = None) -> TensorRTEngine:
    """The factory `engines.load_engine` calls: a plan, or an ONNX with `build_engine: true` (built by `build`)."""
    path = cfg.path
    if path.suffix.lower() == ".onnx":
        if cfg.build_engine:
            if device.type != "cuda" or not torch.cuda.is_available():
                raise ModelError(f"{path}: model.build_engine needs a CUDA GPU (device is {device})")
            if build is None:
                raise ModelError(f"{path}: model.build_engine is set but no engine builder was provided")
            return TensorRTEngine(cfg, device, max_batch, plan_path=build(cfg, device, max_batch))
        built = engine_path_for(path)
        if not built.is_file():
            raise ModelError(f"{path}: the TensorRT backend runs engines, not ONNX: run `rtsp-worker build-engine "
                             f"{path}` or set model.build_engine: true")
        return TensorRTEngine(cfg, device, max_batch, plan_path=built)
    if not path.is_file():
        raise ModelError(f"{path}: engine file not found; build it with `rtsp-worker build-engine <model.onnx> -o {path}`")
    return TensorRTEngine(cfg, device, max_batch)
