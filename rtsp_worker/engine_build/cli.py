"""`rtsp-worker build-engine`: the command line of engine_build/build.py (ONNX -> TensorRT plan for this GPU).

Light on purpose: rtsp_worker/cli.py registers this command at start, so what the build needs (torch, ONNX
Runtime, TensorRT) is imported only when `build-engine` runs, and `probe`, a config error or `--help` answer
without it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from rtsp_worker.config import ConfigError, load_config
from rtsp_worker.engine_build import TIMING_CACHE_NAME, BuildError
from rtsp_worker.exitcodes import ExitCode


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


def _fail(msg: str) -> typer.Exit:
    typer.echo(f"error: {msg}", err=True)
    return typer.Exit(ExitCode.FAILED)


Opt = typer.Option


def build_engine_cli(
    onnx: Annotated[Path, typer.Argument(help="ONNX detector in any layout the worker reads (model.layout; "
                                         "its metadata is stored with the engine), exported with a dynamic "
                                         "batch axis (ultralytics: dynamic=True) or the project's own.")],
    output: Annotated[Path | None, Opt("--output", "-o", help="Engine file (default: the ONNX path with .engine).")] = None,
    config: Annotated[Path | None, Opt(
        "--config", "-c", help="cameras.yaml: opt batch = enabled cameras, max batch = batcher.max_batch; input "
        "size from model.input_size or the cameras' resolution (probed) rounded up to 32; INT8 calibration and "
        "--validate frames from the cameras.")] = None,
    min_batch: Annotated[int, Opt("--min-batch", min=1, help="Smallest batch of the optimization profile.")] = 1,
    opt_batch: Annotated[int | None, Opt("--opt-batch", min=1, help="Batch TensorRT tunes for "
                                         "(default: enabled cameras, else --max-batch).")] = None,
    max_batch: Annotated[int | None, Opt("--max-batch", min=1, help="Largest batch "
                                         "(default: batcher.max_batch from --config).")] = None,
    height: Annotated[int | None, Opt("--height", min=32, help="Input height, multiple of 32 (with --width; "
                                      "default: fixed by the ONNX, else from --config).")] = None,
    width: Annotated[int | None, Opt("--width", min=32, help="Input width, multiple of 32.")] = None,
    precision: Annotated[Precision, Opt(
        "--precision", "-p", case_sensitive=False,
        help="fp32 | fp16 | int8. TensorRT 10: builder flags (int8 calibrated with an entropy calibrator on "
        "real frames unless the ONNX has Q/DQ nodes). TensorRT 11+: strongly typed; fp16 converts the "
        "ONNX to FP16 first; int8 needs an ONNX with Q/DQ nodes.")] = Precision.fp16,
    workspace: Annotated[float | None, Opt("--workspace", help="Builder workspace limit in GiB "
                                           "(default: TensorRT's, the GPU's memory).")] = None,
    timing_cache: Annotated[Path | None, Opt("--timing-cache", help="Timing cache file, reused and updated "
                                             f"across builds (default: {TIMING_CACHE_NAME} next to the engine).")] = None,
    calib_data: Annotated[str | None, Opt("--calib-data", help="INT8 calibration / validation frames: a video "
                                          "file or URL, or a folder of images/videos (default: the cameras).")] = None,
    calib_frames: Annotated[int, Opt("--calib-frames", min=1, help="Frames sampled for INT8 calibration.")] = 64,
    calib_batch: Annotated[int, Opt("--calib-batch", min=1, help="Calibration batch size.")] = 8,
    calib_cache: Annotated[Path | None, Opt("--calib-cache", help="INT8 calibration cache, reused when present "
                                            "(default: the engine path with .calib).")] = None,
    validate: Annotated[bool, Opt("--validate/--no-validate", help="Run frames (from --calib-data, else the "
                                  "cameras of --config, else the project's synthetic scene) through ONNX Runtime "
                                  "and the engine, report max box/score differences, fail (and delete the engine) "
                                  "above the tolerance.")] = False,
    validate_frames: Annotated[int, Opt("--validate-frames", min=1, help="Frames used by --validate.")] = 8,
    score_tol: Annotated[float | None, Opt("--score-tol", min=0, help="Max class-score difference for --validate "
                                           "(default: fp32 0.005, fp16 0.03, int8 0.15).")] = None,
    box_tol: Annotated[float | None, Opt("--box-tol", min=0, help="Max box difference in input pixels for "
                                         "--validate, on boxes scoring >= 0.25 (default: fp32 1, fp16 3, "
                                         "int8 12).")] = None,
    contexts: Annotated[int, Opt("--contexts", min=1, max=8, help="Execution contexts the worker may run at "
                                 "once (model.contexts): one optimization profile each.")] = 1,
    dry_run: Annotated[bool, Opt("--dry-run", help="Print the profile and settings that would be built, then "
                                 "stop (no TensorRT needed).")] = False,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="No build progress.")] = False,
) -> None:
    """Build a TensorRT engine for this GPU from an ONNX detector.

    One optimization profile over the batch axis (min/opt/max) at a fixed input size, repeated once per
    execution context (--contexts). The output says which TensorRT major it found and which path it takes.
    Metadata stored with the plan: input shapes, class names, precision, TensorRT version, GPU, ONNX hash,
    and the ONNX's metadata with the output layout, which the worker reads as it reads the ONNX.
    Progress is printed while TensorRT builds; the timing cache makes rebuilds faster.

    An engine runs only on the TensorRT version and GPU architecture that built it.
    The worker refuses a mismatched engine and says how to rebuild it; with model.path set to the ONNX
    and model.build_engine: true it builds (and rebuilds when stale) the engine itself on first start.

    Examples: `rtsp-worker build-engine models/yolo.onnx -c cameras.yaml --validate`;
    `rtsp-worker build-engine models/yolo.onnx --max-batch 8 --height 384 --width 640 -p fp16`.
    """
    from rtsp_worker.engine_build.build import BuildOptions, build_engine, plan_build
    from rtsp_worker.engines.base import ModelError

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        cfg = load_config(config) if config is not None else None
    except ConfigError as e:
        raise _fail(str(e)) from None
    opts = BuildOptions(
        onnx=onnx, output=output, config=cfg, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
        height=height, width=width, precision=precision.value, workspace_gib=workspace, timing_cache=timing_cache,
        calib_data=calib_data, calib_frames=calib_frames, calib_batch=calib_batch, calib_cache=calib_cache,
        validate=validate, validate_frames=validate_frames, score_tol=score_tol, box_tol=box_tol,
        progress=not quiet, contexts=contexts)
    echo_err: Callable[[str], None] = (lambda _m: None) if quiet else (lambda m: typer.echo(m, err=True))
    try:
        decided = plan_build(opts)
        profile, names = decided.profile, decided.class_names
        if dry_run:
            typer.echo(f"engine: {opts.engine_path}\ninput: {profile.height}x{profile.width}\n"
                       f"layout: {decided.layout.name} {decided.layout.expected_shape()}\n"
                       f"batch: min {profile.min_batch}, opt {profile.opt_batch}, max {profile.max_batch}\n"
                       f"precision: {opts.precision}\nclasses: {len(names)} ({', '.join(names[:8])}"
                       f"{', ...' if len(names) > 8 else ''})")
            return
        meta = build_engine(opts, echo_err)
    except (BuildError, ModelError) as e:
        raise _fail(str(e)) from None
    typer.echo(f"{opts.engine_path}: {meta.precision}, batch {meta.min_shape[0]}..{meta.max_batch}, "
               f"input {meta.input_size[0]}x{meta.input_size[1]}, TensorRT {meta.tensorrt_version}, {meta.gpu_name}")
