"""What `rtsp-worker build-engine` does (engine_build/cli.py is its command line): ONNX -> TensorRT plan
for this GPU, with its metadata in front.

The steps (each in its own module under `rtsp_worker.engine_build`): read the ONNX (`profile`), derive the
batch range and input size from flags or `cameras.yaml` (`profile`), pick how this TensorRT version gets
the precision (`trt_builder.plan_precision`), convert to FP16 ONNX when it needs that (`fp16`), sample
calibration frames for INT8 (`calibration`), build (`trt_builder`), write plan + metadata
(`engines.trt_plan`), and optionally check the engine against ONNX Runtime (`validate`).
TensorRT is imported only when a build starts.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from rtsp_worker.config import Config, ModelConfig
from rtsp_worker.detection.layouts import OutputLayout
from rtsp_worker.engine_build import TIMING_CACHE_NAME, BuildError
from rtsp_worker.engine_build.profile import (
    OnnxModelInfo,
    ProfileShape,
    derive_profile,
    inspect_onnx,
    output_shape_at,
)
from rtsp_worker.engine_build.validate import OutputDiff, compare_raw, run_chunked, run_onnxruntime
from rtsp_worker.engines.base import default_class_names, model_layout
from rtsp_worker.engines.trt_plan import EngineMetadata, file_sha256, write_plan

log = logging.getLogger(__name__)

# Accuracy-guard defaults per precision: (max class-score difference, max box difference in pixels).
DEFAULT_TOLERANCE = {"fp32": (0.005, 1.0), "fp16": (0.03, 3.0), "int8": (0.15, 12.0)}


@dataclass(frozen=True, slots=True)
class BuildOptions:
    """One build, as the CLI (or the worker's build-on-start) asks for it."""

    onnx: Path
    output: Path | None = None  # default: the ONNX path with suffix .engine
    config: Config | None = None
    min_batch: int = 1
    opt_batch: int | None = None
    max_batch: int | None = None
    height: int | None = None
    width: int | None = None
    precision: str = "fp16"
    workspace_gib: float | None = None
    timing_cache: Path | None = None  # default: trt_timing.cache next to the engine
    calib_data: str | None = None  # video file/URL or folder; default: the config's cameras
    calib_frames: int = 64
    calib_batch: int = 8
    calib_cache: Path | None = None  # default: the engine path with suffix .calib
    validate: bool = False
    validate_frames: int = 8
    score_tol: float | None = None
    box_tol: float | None = None
    conf: float = 0.25  # boxes compared by the accuracy guard: reference score >= conf
    progress: bool = True
    contexts: int = 1  # execution contexts the engine will serve at once (one optimization profile each)
    model: ModelConfig | None = None  # model.layout / class_names to read the ONNX with (default: config's)

    @property
    def engine_path(self) -> Path:
        return self.output or self.onnx.with_suffix(".engine")


@dataclass(frozen=True, slots=True)
class BuildPlan:
    """What is decided before TensorRT is needed."""

    onnx: OnnxModelInfo
    profile: ProfileShape
    class_names: tuple[str, ...]
    layout: OutputLayout  # the output read at the profile's input size, as the runtime reads it

    @property
    def model_metadata(self) -> dict[str, str]:
        """What the engine carries to be read like its ONNX (`EngineMetadata.model_metadata`)."""
        return {**self.onnx.metadata, "layout": self.layout.name}


def plan_build(opts: BuildOptions) -> BuildPlan:
    """Read the ONNX, derive the profile, layout and class names, check the options. Raises BuildError
    (ModelError for an output that fits no layout, with the `model.layout` values that would fit)."""
    info = inspect_onnx(opts.onnx)
    profile = derive_profile(info, opts.config, min_batch=opts.min_batch, opt_batch=opts.opt_batch,
                             max_batch=opts.max_batch, height=opts.height, width=opts.width)
    if opts.precision not in DEFAULT_TOLERANCE:
        raise BuildError(f"--precision {opts.precision!r}: must be fp32, fp16 or int8")
    if opts.workspace_gib is not None and opts.workspace_gib <= 0:
        raise BuildError(f"--workspace {opts.workspace_gib}: must be > 0 GiB")
    if opts.calib_batch < 1 or opts.calib_frames < opts.calib_batch:
        raise BuildError(f"--calib-frames ({opts.calib_frames}) must be >= --calib-batch ({opts.calib_batch}) >= 1")
    # The config's model.layout / model.class_names override the model's, as they do at run time.
    model_cfg = opts.model or (opts.config.model if opts.config is not None else ModelConfig(path=opts.onnx))
    names = tuple(model_cfg.class_names) if model_cfg.class_names else info.class_names
    size = (profile.height, profile.width)
    layout = model_layout(model_cfg, output_shape_at(info, size), size, names, info.metadata, str(opts.onnx))
    return BuildPlan(info, profile, names if names is not None else default_class_names(layout.num_classes), layout)


def build_engine(opts: BuildOptions, echo: Callable[[str], None] = print) -> EngineMetadata:
    """Build, write and (optionally) validate one engine; returns its metadata. Raises BuildError."""
    from rtsp_worker.engine_build.trt_builder import (
        BuildRequest,
        build_serialized,
        gpu_identity,
        import_tensorrt,
        plan_precision,
    )

    decided = plan_build(opts)
    info, profile, names = decided.onnx, decided.profile, decided.class_names
    trt = import_tensorrt()
    gpu_name, cc = gpu_identity()
    plan = plan_precision(opts.precision, trt.__version__, info.has_qdq)
    out = opts.engine_path
    echo(f"building {out} from {opts.onnx}: TensorRT {trt.__version__}, {gpu_name} (sm_{cc[0]}{cc[1]}), "
         f"{plan.precision}, batch {profile.min_batch}/{profile.opt_batch}/{profile.max_batch}, "
         f"input {profile.height}x{profile.width}")
    echo(plan.describe(trt.__version__))

    calib_frames = None
    calib_cache = opts.calib_cache or out.with_suffix(".calib")
    if plan.calibrate and not calib_cache.is_file():
        from rtsp_worker.engine_build.calibration import load_frames

        calib_frames = load_frames(opts.calib_data, opts.config, opts.calib_frames, (profile.height, profile.width))
    elif plan.calibrate:
        calib_frames = torch.empty((0, 3, profile.height, profile.width))  # the cache answers; no frames read

    with tempfile.TemporaryDirectory(prefix="rtsp-worker-build-") as tmp:
        onnx_for_trt = opts.onnx
        if plan.convert_onnx_fp16:
            from rtsp_worker.engine_build.fp16 import convert_file_to_fp16

            onnx_for_trt = convert_file_to_fp16(opts.onnx, Path(tmp) / "model_fp16.onnx")
            echo(f"converted the ONNX to FP16 for a strongly typed build ({onnx_for_trt.stat().st_size >> 20} MiB)")
        request = BuildRequest(
            onnx_path=onnx_for_trt, input_name=info.input_name, profile=profile, plan=plan,
            workspace_gib=opts.workspace_gib, timing_cache=opts.timing_cache or out.parent / TIMING_CACHE_NAME,
            calib_frames=calib_frames, calib_cache=calib_cache, calib_batch=opts.calib_batch,
            progress=opts.progress, profiles=opts.contexts)
        serialized = build_serialized(request, echo)

    shapes = profile.shapes()
    meta = EngineMetadata(
        input_name=info.input_name, min_shape=shapes[0], opt_shape=shapes[1], max_shape=shapes[2],
        class_names=tuple(names), precision=plan.precision, tensorrt_version=trt.__version__,
        gpu_name=gpu_name, compute_capability=cc, onnx_sha256=file_sha256(opts.onnx),
        onnx_path=str(opts.onnx), output_name=info.output_name,
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model_metadata=decided.model_metadata)
    write_plan(out, meta, serialized)
    echo(f"wrote {out} ({out.stat().st_size >> 20} MiB)")
    if opts.validate:
        validate_engine(opts, meta, echo)
    return meta


def synthetic_frames(count: int, input_size: tuple[int, int]) -> torch.Tensor:
    """Frames of the project's synthetic scene (objects on textured backgrounds), letterboxed: the
    accuracy guard's default when neither --calib-data nor --config gives real frames."""
    from rtsp_worker.engine_build.calibration import letterbox_frames
    from rtsp_worker.sim.synthetic import make_scene, render_frame

    scene = make_scene(seed=7, frames=max(2, count * 10), width=640, height=360)
    return letterbox_frames([render_frame(scene, i * 10)[0] for i in range(count)], input_size)


def tolerances(opts: BuildOptions, precision: str) -> tuple[float, float]:
    """(score, box px) tolerance of the accuracy guard: flags, else the precision's default."""
    score_tol, box_tol = DEFAULT_TOLERANCE[precision]
    return (opts.score_tol if opts.score_tol is not None else score_tol,
            opts.box_tol if opts.box_tol is not None else box_tol)


def check_accuracy(
    reference_onnx: Path, infer: Callable[[torch.Tensor], torch.Tensor], frames: torch.Tensor, max_batch: int,
    tol: tuple[float, float], conf: float = 0.25, layout: OutputLayout | None = None,
) -> OutputDiff:
    """Raw outputs of `infer` vs ONNX Runtime FP32 on `frames`, read as `layout` (default yolov8);
    BuildError above `tol` (score, box px)."""
    ref = run_onnxruntime(reference_onnx, frames, batch=min(max_batch, frames.shape[0]))
    got = run_chunked(infer, frames, max_batch)
    diff = compare_raw(ref, got, conf, layout, (frames.shape[2], frames.shape[3]))
    if not diff.within(*tol):
        raise BuildError(f"engine differs from {reference_onnx} beyond tolerance (score {tol[0]}, box {tol[1]} px): "
                         f"{diff}. Try --precision fp16/fp32, more calibration frames, or raise --score-tol/--box-tol")
    return diff


def validate_engine(opts: BuildOptions, meta: EngineMetadata, echo: Callable[[str], None] = print) -> OutputDiff:
    """--validate: the built engine against ONNX Runtime; the engine is deleted when it fails."""
    from rtsp_worker.config import ModelConfig
    from rtsp_worker.engine_build.calibration import load_frames
    from rtsp_worker.engines.tensorrt import TensorRTEngine

    out = opts.engine_path
    if opts.calib_data is None and opts.config is None:
        frames = synthetic_frames(opts.validate_frames, meta.input_size)
    else:
        frames = load_frames(opts.calib_data, opts.config, opts.validate_frames, meta.input_size)
    engine = TensorRTEngine(ModelConfig(path=out, backend="tensorrt", contexts=1), torch.device("cuda"),
                            max_batch=meta.max_batch)
    tol = tolerances(opts, meta.precision)
    try:
        diff = check_accuracy(opts.onnx, lambda x: engine.infer(x.to("cuda", engine.input_dtype)), frames,
                              meta.max_batch, tol, opts.conf, engine.info.output_layout)
    except BuildError as e:
        out.unlink(missing_ok=True)
        raise BuildError(f"{out}: {e} (engine deleted)") from None
    finally:
        engine.close()
    echo(f"validation on {frames.shape[0]} frames vs ONNX Runtime FP32: {diff} "
         f"(tolerance: score {tol[0]}, box {tol[1]} px)")
    return diff
