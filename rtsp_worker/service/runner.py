"""Running a pipeline from the command line: logging set-up, exit codes, signals, failures -> exit codes.

Below both `cli` and `sim.demo`, which use it (neither imports the other).
Exit codes: 0 clean stop, 2 config error, 3 model error, 4 runtime/device error, 130 second signal.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable

import typer

EXIT_CONFIG = 2
EXIT_MODEL = 3
EXIT_RUNTIME = 4

log = logging.getLogger("rtsp_worker")


def setup_logging(level: str = "INFO", worker: str | int | None = None) -> None:
    tag = f" worker={worker}" if worker is not None else ""  # several workers share one stderr (supervisor)
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s{tag} %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    logging.getLogger("libav").setLevel(logging.CRITICAL)  # FFmpeg's own chatter; our lines say what failed


def fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def install_signal_handlers(stop: Callable[[], None]) -> None:
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

    http, health = _serve_health(cfg)  # before the engine loads: /healthz and /readyz answer "starting"
    try:
        pipeline = Pipeline(cfg)
    except ModelError as e:
        _close(http)
        raise fail(str(e), EXIT_MODEL) from None
    except (RuntimeError, ValueError) as e:
        _close(http)
        raise fail(str(e), EXIT_RUNTIME) from None
    if health is not None:
        health.attach(pipeline)
    metrics = None
    if cfg.metrics.port is not None:
        from rtsp_worker.service.metrics import serve_metrics

        try:
            metrics = serve_metrics(pipeline, cfg.metrics.host, cfg.metrics.port, http=http)
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
    except Exception as e:  # noqa: BLE001 - a broken install (no libnvinfer, no driver) raises others
        log.exception("pipeline failed")
        raise fail(f"pipeline failed: {type(e).__name__}: {e}", EXIT_RUNTIME) from None
    finally:
        if metrics is not None:
            metrics.close()
    log.info("stopped cleanly")


def _serve_health(cfg):  # Config -> (HttpServer | None, Health | None)
    """The worker's one HTTP server with /healthz and /readyz, started early; /metrics joins it later."""
    if cfg.metrics.port is None:
        return None, None
    from rtsp_worker.service.health import Health
    from rtsp_worker.service.server import HttpServer

    health = Health(cfg.metrics.health_max_silence_s)
    try:
        http = health.register(HttpServer(cfg.metrics.host, cfg.metrics.port)).start()
    except OSError as e:
        raise fail(f"metrics: cannot listen on {cfg.metrics.host}:{cfg.metrics.port}: {e.strerror or e}",
                   EXIT_RUNTIME) from None
    return http, health


def _close(http) -> None:  # HttpServer | None
    if http is not None:
        http.close()
