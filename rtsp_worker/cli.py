"""Command line: `rtsp-worker run | shards | demo | probe | inspect | build-engine | doctor`.

Exit codes (rtsp_worker/exitcodes.py): 0 clean stop, 2 config error, 3 model error, 4 runtime/device error,
130 second signal. The commands below return an `ExitCode`; this module alone turns it into the exit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from rtsp_worker.exitcodes import ExitCode
from rtsp_worker.service.runner import fail, raise_open_files_limit, run_pipeline, setup_logging

HELP = (
    "Multi-camera object detection and tracking: RTSP cameras in, one JSON line per frame (and annotated "
    "video, Redis streams, Prometheus metrics) out.\n\n"
    "Start with `rtsp-worker run cameras.yaml`; `rtsp-worker doctor` checks the machine, `rtsp-worker probe URL` "
    "a camera, `rtsp-worker demo` runs without cameras.\n\n"
    "Exit codes: 0 clean stop, 2 config error, 3 model error, 4 runtime/device error, 130 second signal."
)

app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP)

log = logging.getLogger("rtsp_worker")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="cameras.yaml")],
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds (0: until stopped).")] = None,
    device: Annotated[str | None, typer.Option(help="Override `device:` (auto, cpu, cuda:N).")] = None,
    video: Annotated[bool, typer.Option(help="Also write an annotated MP4 per camera.")] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")] = "INFO",
    shard: Annotated[str | None, typer.Option(help="Run only shard K/N of the cameras (auto: K from the "
                                                 "pod name's ordinal, N from $RTSP_WORKER_SHARDS).")] = None,
    workers: Annotated[int | None, typer.Option(help="Run N worker processes, one shard each, under a "
                                                   "supervisor (overrides `workers:`).", min=1)] = None,
    metrics_host: Annotated[str | None, typer.Option(help="Override `metrics.host`.")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Override `metrics.port` (0-65535).", min=0,
                                                     max=65535)] = None,
) -> None:
    """Run detection and tracking on the cameras of CONFIG until SIGINT/SIGTERM (or --duration)."""
    from rtsp_worker.config import ConfigError, load_config
    from rtsp_worker.service import sharding, supervisor

    try:
        the_shard = sharding.parse_shard(shard) if shard is not None else None
    except ValueError as e:
        raise typer.Exit(fail(str(e), ExitCode.CONFIG))
    setup_logging(log_level, worker=None if the_shard is None else the_shard.index)
    raise_open_files_limit()  # the supervisor too: it serves the box's endpoint and holds its workers' pipes
    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise typer.Exit(fail(str(e), ExitCode.CONFIG))
    updates = {}
    if device is not None:
        updates["device"] = device
    if video:
        updates["output"] = cfg.output.model_copy(update={"video": True})
    if metrics_host is not None or metrics_port is not None:
        m = {"host": metrics_host, "port": metrics_port}
        updates["metrics"] = cfg.metrics.model_copy(update={k: v for k, v in m.items() if v is not None})
    if updates:
        cfg = cfg.model_copy(update=updates)
    try:
        if the_shard is None and supervisor.wants_supervisor(cfg, workers):
            setup_logging(log_level, worker="sup")
            args = ["--log-level", log_level] + (["--video"] if video else [])
            raise typer.Exit(supervisor.supervise(config, cfg, workers, device, args, duration))
        if the_shard is not None:
            cfg = sharding.shard_config(cfg, the_shard)
    except ValueError as e:
        raise typer.Exit(fail(f"{config}: {e}", ExitCode.CONFIG))
    code = run_pipeline(cfg, duration, config_path=config, shard=the_shard)
    if code != ExitCode.OK:
        raise typer.Exit(code)


@app.command()
def shards(
    config: Annotated[Path, typer.Argument(help="cameras.yaml")],
    count: Annotated[int, typer.Argument(help="Number of shards (workers).", min=1)],
) -> None:
    """Print which cameras each of COUNT shards runs, and each shard's share of the load.

    A shard with no cameras gets a warning line on stderr and the exit code is 2 (configuration error):
    `run --shard K/N` and `run --workers N` refuse that N the same way.
    """
    from rtsp_worker.config import ConfigError, load_config
    from rtsp_worker.service.sharding import config_assignment, describe

    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise typer.Exit(fail(str(e), ExitCode.CONFIG))
    typer.echo(describe(cfg, count))
    owner = config_assignment(cfg, count)
    empty = [k for k in range(count) if k not in owner.values()]
    for k in empty:
        typer.echo(f"warning: shard {k}/{count} has no cameras ({len(owner)} enabled cameras over {count} "
                   f"shards): `run --shard {k}/{count}` and `run --workers {count}` refuse it; use fewer shards",
                   err=True)
    if empty:
        raise typer.Exit(ExitCode.CONFIG)


@app.command()
def probe(
    url: Annotated[str, typer.Argument(help="rtsp://... or file://... URL")],
    timeout: Annotated[float, typer.Option(min=0.1, max=120.0,
                                           help="Seconds to wait for connection and first frame (0.1-120).")] = 10.0,
) -> None:
    """Connect to a stream and print codec, resolution, fps and time to first frame, or why it fails."""
    from rtsp_worker.sources.probe import probe_stream

    setup_logging("WARNING")
    result = probe_stream(url, timeout)
    if result.error:
        raise typer.Exit(fail(f"{result.url}: {result.error}", ExitCode.FAILED))
    typer.echo(result.describe())


@app.command()
def plan(
    config: Annotated[Path, typer.Argument(help="cameras.yaml")],
    assume: Annotated[str | None, typer.Option(help="Take unreachable cameras as WIDTHxHEIGHT@FPS "
                                               "(e.g. 1920x1080@30) instead of unknown.")] = None,
    probe_timeout: Annotated[float, typer.Option(min=0.1, max=120.0, help="Seconds per camera probe.")] = 3.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Without running the pipeline: probe each camera, measure the model and decoding here, print the rate
    each camera would get, the box's headroom and which cameras are degraded first."""
    from rtsp_worker.config import ConfigError, load_config
    from rtsp_worker.tools.plan import plan as make_plan

    setup_logging("WARNING")
    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise typer.Exit(fail(str(e), ExitCode.CONFIG))
    try:
        typer.echo(make_plan(cfg, assume, probe_timeout, json_out))
    except ValueError as e:
        raise typer.Exit(fail(str(e), ExitCode.CONFIG))


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="ONNX, TorchScript or TensorRT model")],
    layout: Annotated[str, typer.Option(help="Try a `model.layout` value (default: auto).")] = "auto",
    device: Annotated[str, typer.Option(help="Device to load it on.")] = "cpu",
) -> None:
    """Print what the worker will do with MODEL: layout, input size and conventions, classes, batch."""
    from rtsp_worker.engines import ModelError
    from rtsp_worker.engines.inspect import inspect_model

    setup_logging("WARNING")
    try:
        typer.echo(inspect_model(model, layout, device))
    except (ModelError, ValueError) as e:
        raise typer.Exit(fail(str(e), ExitCode.MODEL))


def _register_build_engine() -> None:
    from rtsp_worker.engine_build.cli import build_engine_cli

    app.command("build-engine")(build_engine_cli)


def _register_demo() -> None:
    from rtsp_worker.tools.demo import demo

    app.command("demo")(demo)


def _register_doctor() -> None:
    from rtsp_worker.tools.doctor import doctor

    app.command("doctor")(doctor)


_register_build_engine()
_register_demo()
_register_doctor()

if __name__ == "__main__":
    app()
