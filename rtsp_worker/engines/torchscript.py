"""Torch detector (`.pt2` from torch.export, or TorchScript): FP32 eager on the CPU; FP16 and one CUDA
graph per batch-size bucket on a GPU.

`.pt2` is the format the project exports (`engine_build.export.export_program`): the program is moved to
the engine's device as a whole, so a model exported on the CPU runs on `cuda:N`. TorchScript (deprecated
in torch, still what ultralytics exports) is read too, but a trace keeps the device it was traced on in
its graph; such a file is refused for another device with the reason, before the first forward fails.

Metadata comes from the file's extra files when it has them: ultralytics' TorchScript export stores
`config.txt` (JSON with `names`, `imgsz`, `stride`, `end2end`, ...), and so does the project's
`export_program`; `metadata.json` of the same shape is read too. Its keys are the ONNX metadata keys, read
the way the other backends read them (`engines.base.model_info`): `imgsz`, `names`, the layout (`layout`,
ultralytics' `head` / `end2end`) and the pixel conventions (`input_*`), with the probe run's output shape
deciding the layout where they do not. `model.input_size`, `model.class_names`, `model.layout` and
`model.input` in the config override them.

CUDA graphs: a batch of B images runs in the graph of the smallest bucket (1, 2, 4, ... up to max_batch)
that holds it; the static input buffer's spare rows keep whatever they held (each image is independent in
a detector) and the output rows of real images are sliced off. Every bucket's graph is captured when the
engine loads, after warm-up runs on a side stream (thread-local capture, so decoder threads may keep
using CUDA meanwhile): no capture, with its device sync, happens mid-stream.
"""

from __future__ import annotations

import ast
import json
import logging
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from rtsp_worker.config import TorchModelConfig
from rtsp_worker.devices import normalize_device, same_device
from rtsp_worker.engines.base import ModelError, model_info, parse_names

log = logging.getLogger(__name__)

METADATA_FILES = ("config.txt", "metadata.json")
WARMUP_RUNS = 3  # TorchScript's profiling executor specializes the graph on its first runs


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two below `max_batch`, then `max_batch` itself: (1, 2, 4, 8, 12) for 12."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    buckets = []
    b = 1
    while b < max_batch:
        buckets.append(b)
        b *= 2
    buckets.append(max_batch)
    return tuple(buckets)


def pick_bucket(batch: int, buckets: tuple[int, ...]) -> int:
    """Smallest bucket that holds `batch` images."""
    for b in buckets:
        if b >= batch:
            return b
    raise ValueError(f"batch of {batch} exceeds the largest bucket {buckets[-1]}")


def read_metadata(extra_files: dict[str, Any], source: str) -> dict[str, Any]:
    """The first JSON object found among the extra files (ultralytics' `config.txt`), else {}."""
    for name in METADATA_FILES:
        raw = extra_files.get(name)
        if not raw:
            continue
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        try:
            meta = json.loads(text)
        except ValueError:
            log.warning("%s: extra file %s is not JSON; ignoring it", source, name)
            continue
        if isinstance(meta, dict):
            return meta
    return {}


def _literal(value: Any) -> Any:
    """Metadata values may be stored as strings (ONNX-style props: "[384, 640]", "{0: 'car'}")."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value


def metadata_input_size(meta: dict[str, Any], source: str) -> tuple[int, int] | None:
    """(height, width) from `imgsz` (an int or [h, w], possibly as a string), if present."""
    imgsz = _literal(meta.get("imgsz"))
    if imgsz is None:
        return None
    if isinstance(imgsz, tuple):
        imgsz = list(imgsz)
    if isinstance(imgsz, int):
        imgsz = [imgsz, imgsz]
    if isinstance(imgsz, list) and len(imgsz) == 1:
        imgsz = imgsz * 2
    if not (isinstance(imgsz, list) and len(imgsz) == 2 and all(isinstance(v, int) and v > 0 for v in imgsz)):
        raise ModelError(f"{source}: metadata imgsz {imgsz!r} is not an int or [height, width]")
    return int(imgsz[0]), int(imgsz[1])


def metadata_props(meta: dict[str, Any]) -> dict[str, str]:
    """The JSON metadata as the string map ONNX metadata is (what `model_info` reads): strings as they
    are, other values as JSON (`True` -> "true", lists as "[...]")."""
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def _first_tensor(output: Any) -> Tensor:
    # ultralytics models may return (predictions, features) — the predictions come first.
    while isinstance(output, (tuple, list)):
        output = output[0]
    return output


@dataclass(slots=True)
class CapturedGraph:
    """One batch-size bucket's CUDA graph and the static tensors it reads and writes."""

    graph: torch.cuda.CUDAGraph
    inputs: Tensor  # (bucket, 3, H, W) in the engine's input dtype
    outputs: Tensor  # (bucket, ...) raw output in the model's layout and output dtype


def device_literals(program: torch.export.ExportedProgram) -> dict[str, str]:
    """Every place an exported program names a device -> that device: weights, buffers, constants, and
    the `device=` arguments the graph's factory calls (arange, full, ...) were traced with."""
    found: dict[str, str] = {}
    for kind, tensors in (("state", program.state_dict), ("constant", program.constants)):
        for name, t in tensors.items():
            if isinstance(t, Tensor):
                found[f"{kind} {name}"] = str(t.device)
    for node in program.graph.nodes:
        if node.op == "call_function" and "device" in node.kwargs and node.kwargs["device"] is not None:
            found[f"node {node.name} ({node.target})"] = str(node.kwargs["device"])
    return found


def device_copies(program: torch.export.ExportedProgram) -> list[str]:
    """Graph nodes that move a tensor to a device: a `.to(x.device)` in forward, a copy on every call."""
    copy_ops = {torch.ops.aten.to.device, torch.ops.aten._to_copy.default, torch.ops.aten.to.dtype_layout}
    return [
        f"{node.name} ({node.target})"
        for node in program.graph.nodes
        if node.op == "call_function" and node.target in copy_ops
        and (node.target is torch.ops.aten.to.device or node.kwargs.get("device") is not None)
    ]


def torchscript_device_constants(module: torch.jit.ScriptModule) -> list[str]:
    """Device constants baked into a TorchScript graph (`Device = prim::Constant[value="cpu"]`)."""
    try:
        graph = str(module.inlined_graph)
    except Exception:  # noqa: BLE001 - scripted modules without a forward graph: nothing to inspect
        return []
    return sorted({line.split('value="')[1].split('"')[0] for line in graph.splitlines()
                   if "Device = prim::Constant[value=" in line})


def load_module(path: Path, device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model of a `.pt2` (torch.export) or TorchScript file on `device`, and its metadata extra files.

    `.pt2` programs are moved whole (`move_to_device_pass`: weights, buffers and the graph's device
    literals). TorchScript files traced on one device keep that device in their graph, which no
    `map_location` changes: loading one for another device is refused with the reason.
    """
    device = normalize_device(device)  # `cuda` names no index, the moved weights say `cuda:0`
    extra: dict[str, Any] = {name: "" for name in METADATA_FILES}
    if path.suffix.lower() == ".pt2":
        from torch.export.passes import move_to_device_pass

        try:
            program = torch.export.load(str(path), extra_files=extra)
        except Exception as e:  # noqa: BLE001 - any load failure becomes one ModelError naming the file
            raise ModelError(f"{path}: cannot load as a torch.export program: {type(e).__name__}: {e}") from None
        program = move_to_device_pass(program, device)
        stray = {k: v for k, v in device_literals(program).items() if not same_device(v, device)}
        if stray:
            raise ModelError(f"{path}: after moving to {device}, the graph still names other devices: "
                             + ", ".join(f"{k} on {v}" for k, v in list(stray.items())[:5]))
        return program.module(), extra
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still supported
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as e:  # noqa: BLE001 - any load failure becomes one ModelError naming the file
        raise ModelError(f"{path}: cannot load as TorchScript: {type(e).__name__}: {e}") from None
    baked = [d for d in torchscript_device_constants(module) if not same_device(d, device)]
    if baked:
        raise ModelError(
            f"{path}: TorchScript graph was traced with tensors on {', '.join(baked)} and cannot run on "
            f"{device}; export it with torch.export (.pt2, see rtsp_worker.engines.export) or trace it "
            f"on {device}"
        )
    return module.eval(), extra


class TorchScriptEngine:
    """Runs a detector of any layout (detection/layouts.py) from a `.pt2` (torch.export) or TorchScript
    file (see `Engine`) on the CPU or a CUDA device."""

    fresh_outputs = True  # every `infer` returns a new tensor (graph outputs are copied out): no clone needed

    def __init__(self, cfg: TorchModelConfig, device: torch.device, max_batch: int) -> None:
        device = self.device = normalize_device(device)
        self._source = str(cfg.path)
        module, extra = load_module(Path(cfg.path), device)
        meta = read_metadata(extra, self._source)
        props = metadata_props(meta)

        input_size = cfg.input_size or metadata_input_size(meta, self._source)
        if input_size is None:
            raise ModelError(f"{cfg.path}: no input size in the model's metadata; set model.input_size")
        if input_size[0] % 32 or input_size[1] % 32:
            raise ModelError(f"{cfg.path}: input size {list(input_size)} is not a multiple of 32")
        names = tuple(cfg.class_names) if cfg.class_names else parse_names(props.get("names"))

        self._half = device.type == "cuda" and cfg.fp16
        # Inference only: parameters that require grad (torch.export keeps them so) would give every output a
        # grad_fn and make a CUDA graph keep its activations; frozen here and run under inference_mode.
        self._module = module.float()
        for p in self._module.parameters():  # (ScriptModules refuse Module.requires_grad_; parameters do not)
            p.requires_grad_(False)
        input_size = (int(input_size[0]), int(input_size[1]))
        self.warmup_ms: dict[int, float] = {}  # the loading runs below, timed (Engine.warmup_ms)
        probe = self._probe(input_size)
        dynamic = self._accepts_batch(input_size)
        # Fail at start-up, not on the first camera frame: the probe's output shape decides the layout.
        self.info = model_info(cfg, tuple(probe.shape), input_size, names, props, self._source,
                               max_batch=None if dynamic else 1, dynamic_batch=dynamic)
        if self._half:
            self._half = self._try_half(input_size, probe)
        self.input_dtype = torch.float16 if self._half else torch.float32
        self._max_batch = max_batch if dynamic else 1
        self._buckets = batch_buckets(self._max_batch)
        self._use_graphs = device.type == "cuda" and cfg.cuda_graphs
        self._graphs: dict[int, CapturedGraph] = {}
        self._pool: Any = None
        if self._use_graphs:
            # Every bucket now, at load: a capture synchronizes the device and empties caches, which
            # mid-stream would stall every camera on the first batch of each new size.
            for bucket in self._buckets:
                self._graphs[bucket] = self._capture(bucket)
        log.info(
            "%s: TorchScript on %s, input %s, layout %s, %d classes, %s, %s",
            self._source, device, list(self.info.input_size), self.info.output_layout.name,
            len(self.info.class_names), "fp16" if self._half else "fp32",
            f"CUDA graphs for batches {list(self._buckets)}" if self._use_graphs else "eager",
        )

    @property
    def module(self) -> torch.nn.Module:
        """The loaded model, frozen (no parameter requires grad); `infer` runs it (or its CUDA graphs)."""
        return self._module

    @property
    def graphs(self) -> Mapping[int, CapturedGraph]:
        """The captured CUDA graphs by batch-size bucket (empty on the CPU or with `cuda_graphs: false`)."""
        return MappingProxyType(self._graphs)

    # -- loading checks ------------------------------------------------------------------------------------

    def _forward(self, images: Tensor) -> Tensor:
        return _first_tensor(self._module(images))

    def _timed(self, images: Tensor) -> Tensor:
        """A loading run, timed into `warmup_ms` (a sync at load costs nothing)."""
        t0 = time.perf_counter()
        out = self._forward(images)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.warmup_ms[images.shape[0]] = (time.perf_counter() - t0) * 1000
        return out

    def _probe(self, input_size: tuple[int, int]) -> Tensor:
        x = torch.zeros((1, 3, *input_size), device=self.device)
        try:
            with torch.inference_mode():
                out = self._timed(x)
        except Exception as e:  # noqa: BLE001 - whatever the model raises, report it against the file
            raise ModelError(
                f"{self._source}: running the model on a (1, 3, {input_size[0]}, {input_size[1]}) input on "
                f"{self.device} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from None
        if not isinstance(out, Tensor):
            raise ModelError(f"{self._source}: model returned {type(out).__name__}, expected a tensor")
        if out.shape[0] != 1:
            raise ModelError(f"{self._source}: batch-1 input gave an output batch of {out.shape[0]}")
        return out

    def _accepts_batch(self, input_size: tuple[int, int]) -> bool:
        """Traced models often bake their batch size in; a batch-2 run tells."""
        try:
            with torch.inference_mode():
                out = self._timed(torch.zeros((2, 3, *input_size), device=self.device))
        except Exception as e:  # noqa: BLE001 - any failure means "not batch-dynamic"
            log.info("%s: model does not accept batch 2 (%s); running it one image at a time",
                     self._source, type(e).__name__)
            return False
        return out.shape[0] == 2

    def _try_half(self, input_size: tuple[int, int], reference: Tensor) -> bool:
        """Convert to FP16 unless the graph has FP32 constants that break (then stay FP32, with a warning)."""
        self._module.half()
        try:
            with torch.inference_mode():
                out = self._forward(torch.zeros((1, 3, *input_size), device=self.device, dtype=torch.float16))
            if out.shape != reference.shape or not torch.isfinite(out.float()).all():
                raise ValueError("FP16 output differs in shape or is not finite")
        except Exception as e:  # noqa: BLE001 - any FP16 failure falls back to FP32
            log.warning("%s: FP16 run failed (%s: %s); using FP32", self._source, type(e).__name__, e)
            self._module.float()
            return False
        return True

    # -- inference -----------------------------------------------------------------------------------------

    def infer(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) prepared as `info.spec` says, on `self.device` -> the raw output in `info.layout`,
        float32 on `self.device`."""
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != self.info.input_size:
            raise ValueError(
                f"{self._source}: input of shape {list(images.shape)}, expected [B, 3, "
                f"{self.info.input_size[0]}, {self.info.input_size[1]}]"
            )
        images = images.to(self.device, self.input_dtype, non_blocking=True)
        with torch.inference_mode():
            if self._use_graphs:
                return self._infer_graphs(images)
            if self.info.dynamic_batch:
                return self._forward(images).float()
            # Fixed-batch model: one image per call (no loop over boxes; the batch is small).
            return torch.cat([self._forward(images[i : i + 1]).float() for i in range(images.shape[0])])

    def _infer_graphs(self, images: Tensor) -> Tensor:
        bsz = images.shape[0]
        outputs = []
        for start in range(0, bsz, self._max_batch):  # more than max_batch: in max_batch chunks
            chunk = images[start : start + self._max_batch]
            g = self._graph_for(pick_bucket(chunk.shape[0], self._buckets))
            g.inputs[: chunk.shape[0]].copy_(chunk)
            g.graph.replay()
            # A fresh float32 tensor: the static output is overwritten by the next replay.
            outputs.append(g.outputs[: chunk.shape[0]].to(torch.float32, copy=True))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _graph_for(self, bucket: int) -> CapturedGraph:
        return self._graphs[bucket]  # all captured at load

    def _capture(self, bucket: int) -> CapturedGraph:
        # Under inference_mode, as `infer` replays it: no autograd state, no activations kept for a backward.
        with torch.inference_mode():
            return self._capture_graph(bucket)

    def _capture_graph(self, bucket: int) -> CapturedGraph:
        inputs = torch.zeros((bucket, 3, *self.info.input_size), device=self.device, dtype=self.input_dtype)
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS - 1):
                self._forward(inputs)
            side.synchronize()
            self._timed(inputs)  # the last warm-up, past the first runs' specialization: the steady cost
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # One memory pool for all buckets; outputs are copied out right after each replay, so a later
        # bucket reusing an earlier one's freed capture memory cannot clobber a result anyone holds.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            outputs = self._forward(inputs)
        self._pool = graph.pool()
        log.info("%s: captured CUDA graph for batch %d", self._source, bucket)
        return CapturedGraph(graph, inputs, outputs)

    def close(self) -> None:
        self._graphs.clear()
        self._pool = None
