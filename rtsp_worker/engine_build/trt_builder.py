"""The TensorRT builder, kept thin: parse ONNX, one optimization profile, precision, timing cache, build.

Precision differs by TensorRT major version (`plan_precision`, tested without TensorRT):
- TensorRT 10: weakly typed network; FP16 and INT8 are builder flags; INT8 without Q/DQ nodes is
  calibrated with an entropy calibrator fed with real frames (cache file reused).
- TensorRT 11+: the precision flags and implicit calibration are gone and every network is strongly
  typed: FP16 means building from an FP16 ONNX (`engine_build.fp16`), INT8 means an ONNX that already
  carries QuantizeLinear/DequantizeLinear nodes.
`tensorrt` is imported inside functions only; without it the build fails with one line saying how to
install it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtsp_worker.engine_build import BuildError
from rtsp_worker.engine_build.profile import ProfileShape
from rtsp_worker.engines.trt_plan import MIN_TRT_MAJOR, TRT_MISSING  # noqa: F401 - TRT_MISSING re-exported
from rtsp_worker.engines.trt_plan import import_tensorrt as _import_tensorrt

log = logging.getLogger(__name__)

def import_tensorrt(error: type[Exception] = BuildError) -> Any:
    """`import tensorrt`, or BuildError with the install hint."""
    return _import_tensorrt(error)


def trt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise BuildError(f"unrecognised TensorRT version {version!r}") from None


@dataclass(frozen=True, slots=True)
class PrecisionPlan:
    """How one precision is obtained on one TensorRT version."""

    precision: str  # "fp32", "fp16", "int8"
    builder_flags: tuple[str, ...]  # trt.BuilderFlag member names
    strongly_typed: bool  # create the network with NetworkDefinitionCreationFlag.STRONGLY_TYPED
    convert_onnx_fp16: bool  # build from an FP16 copy of the ONNX
    calibrate: bool  # needs an INT8 calibrator (and frames)
    # Flags to clear: TF32 is on by default, so an "fp32" engine would round matmul/conv inputs to
    # 10-bit mantissas unless it is cleared.
    clear_flags: tuple[str, ...] = ()

    def describe(self, tensorrt_version: str) -> str:
        """The build path, for `build-engine` output: which TensorRT major, which way to the precision."""
        major = trt_major(tensorrt_version)
        if self.strongly_typed:
            how = "strongly typed network (TensorRT 11 path): precision from the ONNX's own types"
            if self.convert_onnx_fp16:
                how += ", built from an FP16 copy of the ONNX"
        else:
            how = "weakly typed network (TensorRT 10 path): builder flags " + (
                "+".join(self.builder_flags) if self.builder_flags else "none")
            if self.calibrate:
                how += ", entropy calibration on real frames"
        if self.clear_flags:
            how += ", " + "+".join(self.clear_flags) + " cleared"
        return f"TensorRT {tensorrt_version} (major {major}): {self.precision} via {how}"


def plan_precision(precision: str, tensorrt_version: str, onnx_has_qdq: bool = False) -> PrecisionPlan:
    """What `precision` takes on `tensorrt_version`; BuildError for what that version cannot do."""
    major = trt_major(tensorrt_version)
    if major < MIN_TRT_MAJOR:
        raise BuildError(f"TensorRT {tensorrt_version} is too old: rtsp-worker needs TensorRT {MIN_TRT_MAJOR} or newer")
    strong = major >= 11
    if precision == "fp32":
        return PrecisionPlan("fp32", (), strong, False, False, clear_flags=("TF32",))
    if precision == "fp16":
        if strong:
            return PrecisionPlan("fp16", (), True, True, False)
        return PrecisionPlan("fp16", ("FP16",), False, False, False)
    if precision == "int8":
        if onnx_has_qdq:  # explicit quantization: the scales are in the model
            return PrecisionPlan("int8", (), True, False, False) if strong else \
                PrecisionPlan("int8", ("INT8", "FP16"), False, False, False)
        if strong:
            raise BuildError(
                f"TensorRT {tensorrt_version} removed INT8 calibration: INT8 needs an explicitly quantized ONNX "
                "(QuantizeLinear/DequantizeLinear nodes, e.g. from NVIDIA ModelOpt `python -m "
                "modelopt.onnx.quantization`); this model has none. Use --precision fp16, or TensorRT 10")
        return PrecisionPlan("int8", ("INT8", "FP16"), False, False, True)
    raise BuildError(f"--precision {precision!r}: must be fp32, fp16 or int8")


@dataclass(frozen=True, slots=True)
class BuildRequest:
    """Everything `build_serialized` needs."""

    onnx_path: Path  # the ONNX TensorRT parses (already FP16 when the plan says so)
    input_name: str
    profile: ProfileShape
    plan: PrecisionPlan
    workspace_gib: float | None = None
    timing_cache: Path | None = None
    calib_frames: Any = None  # (N, 3, H, W) float32 CPU tensor when plan.calibrate
    calib_cache: Path | None = None
    calib_batch: int = 8
    progress: bool = True
    profiles: int = 2  # identical optimization profiles, one per execution context the runtime may use


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def make_progress_monitor(trt: Any, echo: Callable[[str], None]) -> Any:
    """A trt.IProgressMonitor that prints phases as they start and a step count at most once a second."""

    class _Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()  # TensorRT may call from several threads
            self._depth: dict[str, int] = {}
            self._steps: dict[str, int] = {}
            self._last = 0.0

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                depth = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
                self._depth[phase_name] = depth
                self._steps[phase_name] = num_steps
                echo(f"{'  ' * depth}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            now = time.monotonic()
            with self._lock:
                if now - self._last >= 1.0:
                    self._last = now
                    depth = self._depth.get(phase_name, 0)
                    echo(f"{'  ' * depth}  {phase_name}: {step + 1}/{self._steps.get(phase_name, '?')}")
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                self._depth.pop(phase_name, None)
                self._steps.pop(phase_name, None)

    return _Progress()


def make_calibrator(trt: Any, frames: Any, batch: int, cache: Path | None) -> Any:
    """A trt.IInt8EntropyCalibrator2 over `frames`; reads/writes `cache` so a rebuild skips calibration."""
    import torch

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._next = 0
            self._device = torch.empty((batch, *frames.shape[1:]), dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self._next + batch > frames.shape[0]:
                return None
            self._device.copy_(frames[self._next:self._next + batch])
            # TensorRT reads the buffer on its own stream: the copy must be complete first.
            torch.cuda.synchronize()
            self._next += batch
            return [int(self._device.data_ptr())] * len(names)

        def read_calibration_cache(self) -> bytes | None:
            if cache is not None and cache.is_file():
                log.info("using INT8 calibration cache %s", cache)
                return cache.read_bytes()
            return None

        def write_calibration_cache(self, data: Any) -> None:
            if cache is not None:
                _write_atomic(cache, bytes(data))
                log.info("wrote INT8 calibration cache %s", cache)

    return _Calibrator()


def build_serialized(req: BuildRequest, echo: Callable[[str], None] = print) -> bytes:
    """Build and return the serialized plan (no rtsp-worker header)."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if req.plan.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(req.onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BuildError(f"{req.onnx_path}: TensorRT cannot parse the ONNX: {errors[0] if errors else 'unknown error'}")

    config = builder.create_builder_config()
    if req.workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(req.workspace_gib * (1 << 30)))
    for flag in req.plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    for flag in req.plan.clear_flags:
        if hasattr(trt.BuilderFlag, flag):
            config.clear_flag(getattr(trt.BuilderFlag, flag))

    for _ in range(max(1, req.profiles)):  # one per execution context: concurrent contexts cannot share one
        profile = builder.create_optimization_profile()
        profile.set_shape(req.input_name, *req.profile.shapes())
        config.add_optimization_profile(profile)

    if req.timing_cache is not None:
        data = req.timing_cache.read_bytes() if req.timing_cache.is_file() else b""
        if not config.set_timing_cache(config.create_timing_cache(data), False):
            log.warning("%s: timing cache is from another TensorRT version or GPU; starting a new one", req.timing_cache)
            config.set_timing_cache(config.create_timing_cache(b""), False)

    calibrator = None
    if req.plan.calibrate:
        if req.calib_frames is None:
            raise BuildError("INT8 calibration needs frames: pass --calib-data or --config")
        shape = (req.calib_batch, 3, req.profile.height, req.profile.width)
        calib_profile = builder.create_optimization_profile()
        calib_profile.set_shape(req.input_name, shape, shape, shape)
        config.set_calibration_profile(calib_profile)
        calibrator = make_calibrator(trt, req.calib_frames, req.calib_batch, req.calib_cache)
        config.int8_calibrator = calibrator  # keep `calibrator` referenced until the build is done

    monitor = None
    if req.progress and hasattr(trt, "IProgressMonitor"):
        monitor = make_progress_monitor(trt, echo)
        config.progress_monitor = monitor

    started = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"{req.onnx_path}: TensorRT build failed (see the TensorRT messages above)")
    echo(f"built in {time.monotonic() - started:.0f} s")
    if req.timing_cache is not None:
        _write_atomic(req.timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    del calibrator, monitor
    return bytes(memoryview(serialized))


def gpu_identity(device_index: int | None = None) -> tuple[str, tuple[int, int]]:
    """(name, compute capability) of the CUDA device (default: the current one), what a plan is tied to."""
    import torch

    if not torch.cuda.is_available():
        raise BuildError("building a TensorRT engine needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    if device_index is None:
        device_index = torch.cuda.current_device()
    return torch.cuda.get_device_name(device_index), tuple(torch.cuda.get_device_capability(device_index))  # type: ignore[return-value]
