"""The engine's input shapes: what the ONNX allows, what flags ask for, what the cameras need.

One optimization profile over the batch axis: min 1, opt = cameras that run (every batch is usually
that big), max = the batcher's cap. Height and width are fixed per engine; from flags, from the ONNX
when it fixes them, from `model.input_size`, or from the cameras' resolution rounded up to 32.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from rtsp_worker.config import Config, mask_url
from rtsp_worker.engine_build import BuildError
from rtsp_worker.engines.base import parse_names

log = logging.getLogger(__name__)

Dims = tuple[int | None, ...]  # None: a dynamic (named or unknown) dimension


@dataclass(frozen=True, slots=True)
class OnnxModelInfo:
    """The parts of an ONNX detector the builder needs."""

    path: Path
    input_name: str
    input_shape: Dims  # (B, 3, H, W)
    input_is_fp16: bool
    output_name: str
    output_shape: Dims  # (B, rows, columns) in one of the layouts of detection/layouts.py
    class_names: tuple[str, ...] | None  # from metadata `names`
    imgsz: tuple[int, int] | None  # from metadata `imgsz` (ultralytics)
    has_qdq: bool  # explicitly quantized (QuantizeLinear/DequantizeLinear nodes)
    metadata: dict[str, str]  # the model's metadata props, as the exporter wrote them


def _dims(value_info) -> Dims:
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in value_info.type.tensor_type.shape.dim)


def inspect_onnx(path: str | Path) -> OnnxModelInfo:
    """Read input/output shapes and metadata of a single-input, single-output detector."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise BuildError(f"{path}: ONNX model not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError, protobuf errors, OSError...
        raise BuildError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1 or len(_dims(inputs[0])) != 4:
        raise BuildError(f"{path}: expected one image input (B, 3, H, W), got "
                         f"{[(i.name, _dims(i)) for i in inputs]}")
    outputs = list(model.graph.output)
    if len(outputs) != 1 or len(_dims(outputs[0])) != 3:
        raise BuildError(f"{path}: expected one output (B, rows, columns) (a layout of model.layout), got "
                         f"{[(o.name, _dims(o)) for o in outputs]}")
    meta = {p.key: p.value for p in model.metadata_props}
    imgsz = None
    size = parse_names(meta.get("imgsz"))
    if size:
        try:
            dims = [int(x) for x in size]
            imgsz = (dims[0], dims[-1]) if len(dims) in (1, 2) else None
        except ValueError:
            imgsz = None
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    return OnnxModelInfo(
        path=path,
        input_name=inputs[0].name,
        input_shape=_dims(inputs[0]),
        input_is_fp16=inputs[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16,
        output_name=outputs[0].name,
        output_shape=_dims(outputs[0]),
        class_names=parse_names(meta.get("names")),
        imgsz=imgsz,
        has_qdq=has_qdq,
        metadata=meta,
    )


def output_shape_at(onnx: OnnxModelInfo, input_size: tuple[int, int]) -> Dims:
    """The output shape at `input_size`: as declared where it is static, else from one ONNX Runtime run
    (an export with dynamic height and width declares its anchor count dynamic too)."""
    if all(d is not None for d in onnx.output_shape[1:]):
        return onnx.output_shape
    import torch

    from rtsp_worker.engine_build.validate import run_onnxruntime

    try:
        return tuple(run_onnxruntime(onnx.path, torch.zeros(1, 3, *input_size)).shape)
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BuildError(f"{onnx.path}: cannot run the model at {input_size[0]}x{input_size[1]} to read its "
                         f"output shape ({why})") from None


@dataclass(frozen=True, slots=True)
class ProfileShape:
    """One optimization profile: batch range and the fixed input height and width."""

    min_batch: int
    opt_batch: int
    max_batch: int
    height: int
    width: int

    def shapes(self) -> tuple[tuple[int, int, int, int], ...]:
        """(min, opt, max) input shapes as TensorRT's profile wants them."""
        return tuple((b, 3, self.height, self.width) for b in (self.min_batch, self.opt_batch, self.max_batch))


def round_up_32(n: int) -> int:
    return int(math.ceil(n / 32) * 32)


def input_size_for(height: int, width: int) -> tuple[int, int]:
    """A camera resolution -> the smallest model input (multiples of 32) that holds it: 720x1280 -> 736x1280."""
    return round_up_32(height), round_up_32(width)


def probe_resolution(url: str, timeout_s: float = 5.0) -> tuple[int, int]:
    """(height, width) of a camera's video stream, opening it with PyAV with bounded waits."""
    import av

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        target, options = parts.path, {}
    elif scheme in ("rtsp", "rtsps"):
        target = url
        # TCP: FFmpeg's UDP-first attempt costs seconds; `timeout` (microseconds) bounds a frozen server.
        options = {"rtsp_transport": "tcp", "timeout": str(int(timeout_s * 1e6)),
                   "analyzeduration": "500000", "probesize": "500000"}
    else:
        raise BuildError(f"{mask_url(url)}: cannot probe a {scheme}:// source; pass --height and --width")
    try:
        with av.open(target, options=options, timeout=(timeout_s, timeout_s)) as container:
            if not container.streams.video:
                raise BuildError(f"{mask_url(url)}: no video stream")
            stream = container.streams.video[0]
            h, w = stream.codec_context.height, stream.codec_context.width
            if not (h and w):  # some servers only tell in the first decoded frame
                for frame in container.decode(stream):
                    h, w = frame.height, frame.width
                    break
    except BuildError:
        raise
    except Exception as e:  # noqa: BLE001 - av.error.*, OSError, ConnectionRefusedError...
        raise BuildError(f"{mask_url(url)}: cannot probe resolution: {str(e).splitlines()[0] or type(e).__name__}; "
                         "pass --height and --width") from None
    if not (h and w):
        raise BuildError(f"{mask_url(url)}: stream reports no resolution; pass --height and --width")
    return int(h), int(w)


def derive_profile(
    onnx: OnnxModelInfo,
    config: Config | None = None,
    *,
    min_batch: int = 1,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    height: int | None = None,
    width: int | None = None,
    probe: Callable[[str, float], tuple[int, int]] = probe_resolution,
) -> ProfileShape:
    """Flags win; then the ONNX's fixed dimensions; then `cameras.yaml`; then ONNX metadata."""
    src = str(onnx.path)
    # --- batch range
    fixed_batch = onnx.input_shape[0]
    if fixed_batch is not None:
        asked = {b for b in (opt_batch, max_batch) if b is not None}
        # The worker sends batches from 1 up: only a fixed batch of 1 makes a usable engine.
        if fixed_batch != 1 or asked - {1} or min_batch != 1:
            raise BuildError(f"{src}: model has a fixed batch of {fixed_batch}; re-export it with a dynamic batch "
                             "axis (ultralytics: dynamic=True) to build a batch range")
        min_batch = opt_batch = max_batch = fixed_batch
    if max_batch is None:
        if config is None:
            raise BuildError("--max-batch is required without --config (it comes from batcher.max_batch)")
        max_batch = config.batcher.max_batch
    if opt_batch is None:
        opt_batch = len(config.enabled_cameras) if config is not None else max_batch
        if opt_batch > max_batch:
            log.warning("%d enabled cameras but batcher.max_batch is %d: opt batch = %d",
                        opt_batch, max_batch, max_batch)
        opt_batch = max(min_batch, min(opt_batch, max_batch))
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise BuildError(f"batch range must satisfy 1 <= min ({min_batch}) <= opt ({opt_batch}) <= max ({max_batch})")

    # --- input size
    if (height is None) != (width is None):
        raise BuildError("--height and --width go together: pass both or neither")
    onnx_h, onnx_w = onnx.input_shape[2], onnx.input_shape[3]
    if height is not None and width is not None:
        if height % 32 or width % 32 or height <= 0 or width <= 0:
            raise BuildError(f"--height {height} --width {width}: must be positive multiples of 32 "
                             f"(e.g. {round_up_32(max(height, 1))}x{round_up_32(max(width, 1))})")
        if (onnx_h and onnx_h != height) or (onnx_w and onnx_w != width):
            raise BuildError(f"{src}: model input is fixed at {onnx_h}x{onnx_w}; --height/--width ask for "
                             f"{height}x{width} (re-export the model or drop the flags)")
        size = (height, width)
    elif onnx_h and onnx_w:
        size = (onnx_h, onnx_w)
    elif config is not None and config.model.input_size is not None:
        size = tuple(config.model.input_size)
    elif config is not None:
        timeout = config.source.open_timeout_s
        res = []
        for cam in config.enabled_cameras:
            try:
                res.append(probe(cam.url, timeout))
            except BuildError as e:
                raise BuildError(f"camera {cam.name!r}: {e}") from None
        size = input_size_for(max(h for h, _ in res), max(w for _, w in res))
        log.info("input size %dx%d from the cameras' resolutions %s", size[0], size[1],
                 sorted({f"{w}x{h}" for h, w in res}))
    elif onnx.imgsz is not None:
        size = input_size_for(*onnx.imgsz)
    else:
        raise BuildError(f"{src}: input height/width are dynamic: pass --height and --width, or --config to "
                         "derive them from the cameras")
    if (onnx_h and onnx_h != size[0]) or (onnx_w and onnx_w != size[1]):
        raise BuildError(f"{src}: model input is fixed at {onnx_h}x{onnx_w}, the config asks for {size[0]}x{size[1]}")
    return ProfileShape(min_batch, opt_batch, max_batch, int(size[0]), int(size[1]))
