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
from pathlib import Path

import typer

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


def install_signal_handlers(stop: Callable[[], None], on_hup: Callable[[], None] | None = None) -> None:
    """First SIGINT/SIGTERM: stop, drain and flush. Second: exit at once. SIGHUP: `on_hup` (reload)."""
    state = {"count": 0}

    def handler(signum: int, _frame: object) -> None:
        state["count"] += 1
        if state["count"] > 1:
            os._exit(130)
        log.info("received %s: stopping (send again to exit at once)", signal.Signals(signum).name)
        stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)

    def hup(_signum: int, _frame: object) -> None:
        if on_hup is None:
            log.info("received SIGHUP: ignored (no config file to reload)")
        else:
            log.info("received SIGHUP: reloading the cameras")
            on_hup()  # only wakes the reload thread: a handler must not block the inference thread

    signal.signal(signal.SIGHUP, hup)


def run_pipeline(cfg, duration: float | None, config_path: Path | None = None) -> None:  # noqa: ANN001 - Config
    """Build, run and drain a pipeline, mapping failures to exit codes.

    With `config_path`, SIGHUP (and `watch_config`) reload its cameras, and the control API is served
    on the metrics port (service/reload.py, service/control.py).
    """
    from rtsp_worker.config import ConfigError
    from rtsp_worker.engines import ModelError
    from rtsp_worker.pipeline import Pipeline

    try:
        pipeline = Pipeline(cfg)
    except ModelError as e:
        raise fail(str(e), EXIT_MODEL) from None
    except ConfigError as e:  # found once the model's classes are known (lines/zones classes)
        raise fail(str(e), EXIT_CONFIG) from None
    except (RuntimeError, ValueError) as e:
        raise fail(str(e), EXIT_RUNTIME) from None
    metrics = None
    if cfg.metrics.port is not None:
        from rtsp_worker.service.metrics import serve_metrics

        try:
            metrics = serve_metrics(pipeline, cfg.metrics.host, cfg.metrics.port)
        except OSError as e:
            pipeline.shutdown()
            raise fail(f"metrics: cannot listen on {cfg.metrics.host}:{cfg.metrics.port}: {e.strerror or e}",
                       EXIT_RUNTIME) from None
    reloader = None
    if config_path is not None:
        from rtsp_worker.service.reload import Reloader

        reloader = Reloader(pipeline, config_path, watch=cfg.watch_config).start()
        if metrics is not None:
            from rtsp_worker.service.control import ControlApi

            ControlApi(metrics.http, reloader)
        elif cfg.control.token is not None:
            log.warning("control.token is set but metrics.port is not: no control API (SIGHUP still reloads)")
    install_signal_handlers(pipeline.stop, on_hup=reloader.request if reloader is not None else None)
    log.info("running %d cameras on %s, model %s (input %dx%d, %d classes), outputs in %s",
             len(pipeline.cameras), pipeline.work_device, cfg.model.path, *pipeline.engine.info.input_size,
             len(pipeline.class_names), cfg.output.dir)
    try:
        pipeline.run(duration=duration)  # drains and closes the sinks even when it raises
    except Exception as e:  # noqa: BLE001 - a broken install (no libnvinfer, no driver) raises others
        log.exception("pipeline failed")
        raise fail(f"pipeline failed: {type(e).__name__}: {e}", EXIT_RUNTIME) from None
    finally:
        if reloader is not None:
            reloader.close()
        if metrics is not None:
            metrics.close()
    log.info("stopped cleanly")
