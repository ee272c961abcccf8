"""TensorRT plan files with their build metadata, and the checks that a plan fits this machine.

A serialized TensorRT engine only runs on the TensorRT version that built it and on GPUs of the same
compute capability, and it does not remember which ONNX file, class names, batch range, output layout or
input conventions it came from. We therefore write one small JSON header in front of the plan:

    b"RTSPWTRT" | uint32 little-endian header length | UTF-8 JSON header | TensorRT plan bytes

Plain plans (trtexec, other tools) load too, without the checks. Nothing here imports TensorRT at module
level (`import_tensorrt` does, when called), so all of it is tested on machines without a GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rtsp_worker.engines.base import ModelError

MAGIC = b"RTSPWTRT"
FORMAT_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
_HEADER_LIMIT = 16 * 1024 * 1024  # a header larger than this is a corrupt file, not metadata
TRT_MISSING = ("TensorRT is not installed: pip install 'rtsp-worker[tensorrt]' --extra-index-url "
               "https://pypi.nvidia.com (TensorRT 10 or 11 for CUDA 13)")
MIN_TRT_MAJOR = 10


def import_tensorrt(error: type[Exception] = ModelError) -> Any:
    """`import tensorrt`, or `error` with the install hint (ModelError for the runtime, BuildError for builds)."""
    try:
        import tensorrt as trt
    except ImportError:
        raise error(TRT_MISSING) from None
    except Exception as e:  # noqa: BLE001 - a broken install (driver, CUDA libs) raises others: said clearly
        raise error(f"TensorRT cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0]}); "
                    "check the CUDA driver and pip install 'rtsp-worker[tensorrt]'") from None
    return trt


@dataclass(frozen=True, slots=True)
class EngineMetadata:
    """What a plan was built from and for; stored in front of the plan bytes."""

    input_name: str
    min_shape: tuple[int, int, int, int]  # (B, 3, H, W) of the optimization profile
    opt_shape: tuple[int, int, int, int]
    max_shape: tuple[int, int, int, int]
    class_names: tuple[str, ...]  # index = class id
    precision: str  # "fp32", "fp16" or "int8"
    tensorrt_version: str  # trt.__version__ of the builder, e.g. "10.13.3.9"
    gpu_name: str  # e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: tuple[int, int]  # e.g. (9, 0)
    onnx_sha256: str  # hash of the ONNX file the plan was built from
    onnx_path: str = ""  # where that ONNX was, for the rebuild hint
    output_name: str = ""
    built_at: str = ""  # ISO time, informational
    extra: dict[str, str] = field(default_factory=dict)
    # The ONNX's metadata props (`layout`, ultralytics' `head` / `end2end`, `input_*`, ...), `layout` set to
    # what the build read the output as: the engine resolves its layout and input conventions from them and
    # its output shape exactly as ONNX Runtime does from the ONNX (`engines.base.model_info`).
    model_metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        for name in ("min_shape", "opt_shape", "max_shape"):
            if len(getattr(self, name)) != 4:
                raise ValueError(f"{name} must be (B, 3, H, W), got {getattr(self, name)}")
        if not self.min_shape[0] <= self.opt_shape[0] <= self.max_shape[0]:
            raise ValueError(f"batch range must satisfy min <= opt <= max, got "
                             f"{self.min_shape[0]}, {self.opt_shape[0]}, {self.max_shape[0]}")

    @property
    def input_size(self) -> tuple[int, int]:
        return self.opt_shape[2], self.opt_shape[3]

    @property
    def max_batch(self) -> int:
        return self.max_shape[0]

    def to_json(self) -> str:
        d = asdict(self)
        d["format_version"] = FORMAT_VERSION
        return json.dumps(d, sort_keys=True)

    @staticmethod
    def from_json(text: str, source: str = "<engine>") -> EngineMetadata:
        try:
            d = json.loads(text)
            d.pop("format_version", None)
            for key in ("min_shape", "opt_shape", "max_shape", "compute_capability", "class_names"):
                d[key] = tuple(d[key])
            return EngineMetadata(**d)
        except (ValueError, TypeError, KeyError) as e:
            raise ModelError(f"{source}: engine metadata is unreadable ({e}); rebuild the engine with "
                             "`rtsp-worker build-engine`") from None


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_plan(path: str | Path, meta: EngineMetadata, plan: bytes | memoryview) -> Path:
    """Write header + plan atomically (a half-written engine must never be picked up by a worker)."""
    path = Path(path)
    header = meta.to_json().encode()
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<I", len(header)))
        f.write(header)
        f.write(plan)
    os.replace(tmp, path)
    return path


def read_plan(path: str | Path) -> tuple[EngineMetadata | None, bytes]:
    """(metadata, plan bytes); metadata is None for a plain plan written by another tool."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{path}: engine file not found") from None
    except OSError as e:
        raise ModelError(f"{path}: cannot read engine: {e.strerror}") from None
    if not data.startswith(MAGIC):
        return None, data
    start = len(MAGIC) + 4
    if len(data) < start:
        raise ModelError(f"{path}: engine file is truncated; rebuild it with `rtsp-worker build-engine`")
    (n,) = struct.unpack("<I", data[len(MAGIC):start])
    if n > _HEADER_LIMIT or len(data) < start + n:
        raise ModelError(f"{path}: engine file is truncated; rebuild it with `rtsp-worker build-engine`")
    meta = EngineMetadata.from_json(data[start:start + n].decode("utf-8", "replace"), str(path))
    plan = data[start + n:]
    if not plan:
        raise ModelError(f"{path}: engine file holds metadata but no plan; rebuild it")
    return meta, plan


def _rebuild_hint(meta: EngineMetadata) -> str:
    onnx = meta.onnx_path or "<model.onnx>"
    return (f"rebuild it on this machine: rtsp-worker build-engine {onnx} --precision {meta.precision} "
            f"--max-batch {meta.max_batch} --height {meta.input_size[0]} --width {meta.input_size[1]}")


def check_compatible(
    meta: EngineMetadata,
    source: str,
    tensorrt_version: str,
    compute_capability: tuple[int, int],
    gpu_name: str = "",
) -> list[str]:
    """Raise ModelError when the plan cannot run here; return warnings for what merely runs slower.

    TensorRT refuses plans from any other version (even a patch release), and kernels are compiled per
    compute capability. The same capability on another GPU model runs, but was tuned for the other one.
    """
    if meta.tensorrt_version != tensorrt_version:
        raise ModelError(f"{source}: engine was built with TensorRT {meta.tensorrt_version}, this machine has "
                         f"TensorRT {tensorrt_version}; {_rebuild_hint(meta)}")
    if tuple(meta.compute_capability) != tuple(compute_capability):
        cc_have = ".".join(map(str, compute_capability))
        cc_built = ".".join(map(str, meta.compute_capability))
        raise ModelError(f"{source}: engine was built for {meta.gpu_name} (compute capability {cc_built}), this GPU "
                         f"is {gpu_name or 'different'} (compute capability {cc_have}); {_rebuild_hint(meta)}")
    warnings = []
    if gpu_name and meta.gpu_name and gpu_name != meta.gpu_name:
        warnings.append(f"{source}: engine was tuned on {meta.gpu_name}, running on {gpu_name}; it works, but "
                        f"{_rebuild_hint(meta)} for best speed")
    return warnings


def stale_reasons(
    meta: EngineMetadata | None,
    onnx_sha256: str | None,
    tensorrt_version: str,
    compute_capability: tuple[int, int],
    max_batch: int,
    input_size: tuple[int, int] | None,
) -> list[str]:
    """Why an engine built earlier from an ONNX no longer fits (empty: reuse it). Used by build-on-start."""
    if meta is None:
        return ["the engine has no rtsp-worker metadata"]
    reasons = []
    if meta.tensorrt_version != tensorrt_version:
        reasons.append(f"TensorRT {meta.tensorrt_version} -> {tensorrt_version}")
    if tuple(meta.compute_capability) != tuple(compute_capability):
        reasons.append(f"compute capability {meta.compute_capability} -> {compute_capability}")
    if onnx_sha256 is not None and meta.onnx_sha256 != onnx_sha256:
        reasons.append("the ONNX file changed")
    if meta.max_batch < max_batch:
        reasons.append(f"max batch {meta.max_batch} < {max_batch}")
    if input_size is not None and tuple(meta.input_size) != tuple(input_size):
        reasons.append(f"input size {meta.input_size} -> {tuple(input_size)}")
    return reasons
