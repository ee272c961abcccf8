"""Command line: `rtsp-worker run | demo | probe | build-engine`. Thin: parsing, logging and exit codes.

Exit codes: 0 clean stop, 2 config error, 3 model error, 4 runtime/device error, 130 second signal.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

EXIT_CONFIG = 2
EXIT_MODEL = 3
EXIT_RUNTIME = 4

log = logging.getLogger("rtsp_worker")


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("libav").setLevel(logging.CRITICAL)  # FFmpeg's own chatter; our lines say what failed


def fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def install_signal_handlers(stop: callable) -> None:  # type: ignore[valid-type]
    """First SIGINT/SIGTERM: stop, drain and flush. Second: exit at once."""
    state = {"count": 0}

    def handler(signum: int, _frame: object) -> None:
        state["count"] += 1
        if state["count"] > 1:
            os._exit(130)
        log.info("received %s: stopping (send again to exit at once)", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def run_pipeline(cfg, duration: float | None) -> None:  # noqa: ANN001 - Config
    """Build, run and drain a pipeline, mapping failures to exit codes."""
    from rtsp_worker.engines import ModelError
    from rtsp_worker.pipeline import Pipeline

    try:
        pipeline = Pipeline(cfg)
    except ModelError as e:
        raise fail(str(e), EXIT_MODEL) from None
    except (RuntimeError, ValueError) as e:
        raise fail(str(e), EXIT_RUNTIME) from None
    metrics = None
    if cfg.metrics.port is not None:
        from rtsp_worker.metrics import serve_metrics

        try:
            metrics = serve_metrics(pipeline, cfg.metrics.host, cfg.metrics.port)
        except OSError as e:
            pipeline.shutdown()
            raise fail(f"metrics: cannot listen on {cfg.metrics.host}:{cfg.metrics.port}: {e.strerror or e}",
                       EXIT_RUNTIME) from None
    install_signal_handlers(pipeline.stop)
    log.info("running %d cameras on %s, model %s (input %dx%d, %d classes), outputs in %s",
             len(pipeline.cameras), pipeline.work_device, cfg.model.path, *pipeline.engine.info.input_size,
             len(pipeline.class_names), cfg.output.dir)
    try:
        pipeline.run(duration=duration)  # drains and closes the sinks even when it raises
    except Exception as e:
        log.exception("pipeline failed")
        raise fail(f"pipeline failed: {type(e).__name__}: {e}", EXIT_RUNTIME) from None
    finally:
        if metrics is not None:
            metrics.close()
    log.info("stopped cleanly")


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="cameras.yaml")],
    duration: Annotated[Optional[float], typer.Option(help="Stop after this many seconds.")] = None,
    device: Annotated[Optional[str], typer.Option(help="Override `device:` (auto, cpu, cuda:N).")] = None,
    video: Annotated[bool, typer.Option(help="Also write an annotated MP4 per camera.")] = False,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """Run detection and tracking on the cameras of CONFIG until SIGINT/SIGTERM (or --duration)."""
    from rtsp_worker.config import ConfigError, load_config

    setup_logging(log_level)
    try:
        cfg = load_config(config)
    except ConfigError as e:
        raise fail(str(e), EXIT_CONFIG) from None
    updates = {}
    if device is not None:
        updates["device"] = device
    if video:
        updates["output"] = cfg.output.model_copy(update={"video": True})
    if updates:
        cfg = cfg.model_copy(update=updates)
    run_pipeline(cfg, duration)


@app.command()
def probe(
    url: Annotated[str, typer.Argument(help="rtsp://... or file://... URL")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for connection and first frame.")] = 10.0,
) -> None:
    """Connect to a stream and print codec, resolution, fps and time to first frame, or why it fails."""
    from rtsp_worker.probe import probe_stream

    setup_logging("WARNING")
    result = probe_stream(url, timeout)
    if result.error:
        raise fail(f"{result.url}: {result.error}", 1)
    typer.echo(result.describe())


def _register_build_engine() -> None:
    from rtsp_worker.build_engine import build_engine_cli

    app.command("build-engine")(build_engine_cli)


def _register_demo() -> None:
    from rtsp_worker.demo import demo

    app.command("demo")(demo)


_register_build_engine()
_register_demo()

if __name__ == "__main__":
    app()
