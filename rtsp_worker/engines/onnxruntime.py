"""ONNX Runtime backend: the CPU twin of the GPU engines (also the reference for their parity checks)."""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from rtsp_worker.config import OnnxRuntimeModelConfig
from rtsp_worker.engines.base import ModelError, model_info, parse_names

log = logging.getLogger(__name__)


def _static_dim(d: object) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def _parse_imgsz(value: str | None) -> tuple[int, int] | None:
    names = parse_names(value)  # "[384, 640]" parses as a list
    if not names:
        return None
    try:
        dims = [int(x) for x in names]
    except ValueError:
        return None
    if len(dims) == 1:
        return dims[0], dims[0]
    return (dims[0], dims[1]) if len(dims) == 2 else None


def _started_pool(n: int) -> ThreadPoolExecutor:
    """A pool of `n` threads, all running when it returns (a ThreadPoolExecutor starts its threads on demand,
    so a pool made lazily adds a thread in the middle of a run, which reads like a leak in thread counts)."""
    pool = ThreadPoolExecutor(n, thread_name_prefix="ort-run")
    barrier = threading.Barrier(n + 1)
    for _ in range(n):  # each task waits for the others, so each needs a thread of its own
        pool.submit(barrier.wait, 10.0)
    try:
        barrier.wait(10.0)
    except threading.BrokenBarrierError:  # a thread did not start in time: the pool still works, on demand
        pass
    return pool


def parallel_runs(configured: int) -> int:
    """`model.parallel_runs`, 0 (auto) being the number of cores this process may use."""
    if configured:
        return configured
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class OnnxRuntimeEngine:
    """Runs an ONNX detector with ONNX Runtime on host memory.

    Dynamic-batch models run a whole batch in one call; models exported with a fixed batch (often 1) run
    in chunks of that size, so any model works.
    """

    def __init__(self, cfg: OnnxRuntimeModelConfig, device: torch.device, max_batch: int) -> None:
        import onnxruntime as ort

        self.path = cfg.path
        self._pool: ThreadPoolExecutor | None = None  # threads of model.parallel_runs
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self._runs = parallel_runs(cfg.parallel_runs) if providers == ["CPUExecutionProvider"] else 1

        def session(threads: int):
            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            if not cfg.spin:  # idle pool threads sleep instead of busy-waiting for the next batch
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
                opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
            return ort.InferenceSession(str(cfg.path), sess_options=opts, providers=providers)

        try:
            self.session = session(cfg.threads)  # batches smaller than parallel_runs: one run, all its threads
            # parallel_runs: sub-batches at once on a single-threaded session of their own
            self._single = session(1) if self._runs > 1 else None
        except Exception as e:  # noqa: BLE001 - no package, no driver, no such device: the GPU series are left out
            raise ModelError(f"{cfg.path}: cannot load ONNX model: {str(e).splitlines()[0]}") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ModelError(f"{cfg.path}: expected one image input (B, 3, H, W), got "
                             f"{[(i.name, i.shape) for i in inputs]}")
        self._input = inputs[0].name
        if self._single is not None:  # started now: the process's thread count is the same from the start
            self._pool = _started_pool(self._runs - 1)
        shape = inputs[0].shape
        if _static_dim(shape[1]) not in (None, 3):
            raise ModelError(f"{cfg.path}: input {self._input} has {shape[1]} channels, expected 3")
        meta = self.session.get_modelmeta().custom_metadata_map
        h, w = _static_dim(shape[2]), _static_dim(shape[3])
        size = cfg.input_size or ((h, w) if h and w else None) or _parse_imgsz(meta.get("imgsz"))
        if size is None:
            raise ModelError(f"{cfg.path}: input size is dynamic and not in metadata: set model.input_size")
        if (h and h != size[0]) or (w and w != size[1]):
            raise ModelError(f"{cfg.path}: model input is {h}x{w} but model.input_size is {size[0]}x{size[1]}")
        if size[0] % 32 or size[1] % 32:
            raise ModelError(f"{cfg.path}: input size {size[0]}x{size[1]} is not a multiple of 32")
        fixed = _static_dim(shape[0])
        outputs = self.session.get_outputs()
        if len(outputs) != 1 or len(outputs[0].shape) != 3:
            raise ModelError(f"{cfg.path}: expected one output (B, rows, columns), got "
                             f"{[(o.name, o.shape) for o in outputs]}; layouts: yolov8 [B, 4 + nc, N], "
                             "yolov5/yolox [B, N, 5 + nc], end2end [B, K, 6], rtdetr [B, Q, 4 + nc]")
        names = tuple(cfg.class_names) if cfg.class_names else parse_names(meta.get("names"))
        self.device = torch.device("cpu")
        self.input_dtype = torch.float32
        self._chunk = fixed
        # Fail at start-up, not on the first camera frame, if the model's output is not what we decode:
        # the probe's real shape (dynamic dims resolved) decides the layout.
        t0 = time.perf_counter()
        probe = self.infer(torch.zeros((fixed or 1, 3, *size), dtype=torch.float32))
        self.warmup_ms = {fixed or 1: (time.perf_counter() - t0) * 1000}
        self.info = model_info(cfg, tuple(probe.shape), size, names, meta, str(cfg.path),
                               max_batch=fixed or max_batch, dynamic_batch=fixed is None)
        if fixed is not None and fixed < max_batch:
            log.info("%s: model has a fixed batch of %d; batches run in chunks of that size", cfg.path, fixed)

    def infer(self, images: Tensor) -> Tensor:
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        if self._chunk is None and self._single is not None and x.shape[0] >= self._runs:
            out = self._run_parallel(x)
        elif self._chunk is None or x.shape[0] == self._chunk:
            out = self.session.run(None, {self._input: x})[0]
        else:
            parts = []
            for start in range(0, x.shape[0], self._chunk):  # loop over images of a fixed-batch model
                part = x[start : start + self._chunk]
                n = part.shape[0]
                if n < self._chunk:
                    part = np.concatenate([part, np.zeros((self._chunk - n, *part.shape[1:]), part.dtype)])
                parts.append(self.session.run(None, {self._input: part})[0][:n])
            out = np.concatenate(parts)
        return torch.from_numpy(out)

    def _run_parallel(self, x: np.ndarray) -> np.ndarray:
        """Sub-batches run at once (ONNX Runtime's run is thread-safe and releases the GIL); the caller runs the
        first, pool threads the others."""
        run = self._single.run  # type: ignore[union-attr]
        parts = np.array_split(x, self._runs)
        futures = [self._pool.submit(run, None, {self._input: p}) for p in parts[1:]]  # type: ignore[union-attr]
        outs = [run(None, {self._input: parts[0]})[0]] + [f.result()[0] for f in futures]
        return np.concatenate(outs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.session = self._single = None  # type: ignore[assignment]
