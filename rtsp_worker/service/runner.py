"""Running a pipeline as a service: logging set-up, signals, the HTTP endpoints, failures -> exit codes.

Below both `cli` and `tools.demo`, which use it (neither imports the other). `run_pipeline` returns an
`ExitCode` (rtsp_worker/exitcodes.py); only the CLI turns it into the process's exit.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rtsp_worker.exitcodes import ExitCode
from rtsp_worker.redact import ScrubFilter, scrub

log = logging.getLogger("rtsp_worker")


def setup_logging(level: str = "INFO", worker: str | int | None = None) -> None:
    tag = f" worker={worker}" if worker is not None else ""  # several workers share one stderr (supervisor)
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s{tag} %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(ScrubFilter())  # secrets out of every line, from any logger or library
    logging.getLogger("libav").setLevel(logging.CRITICAL)  # FFmpeg's own chatter; our lines say what failed


def fail(message: str, code: ExitCode) -> ExitCode:
    """Print the one-line reason (secrets scrubbed) on stderr and return the code to exit with."""
    print(f"error: {scrub(message)}", file=sys.stderr, flush=True)
    return code


def install_signal_handlers(stop: Callable[[], None], on_hup: Callable[[], None] | None = None,
                            on_usr1: Callable[[], None] | None = None) -> None:
    """First SIGINT/SIGTERM: stop, drain and flush. Second: exit at once.

    SIGHUP: `on_hup` (e.g. reload the cameras); without one it is ignored with a log line, never the
    default action (which kills the process: a closed terminal or a careless `kill -HUP` must not).
    SIGUSR1: `on_usr1`, e.g. reopen output files after external log rotation.
    Hooks run in the main thread between bytecodes: they must only set flags or hand work over.
    """
    state = {"count": 0}

    def handler(signum: int, _frame: object) -> None:
        state["count"] += 1
        if state["count"] > 1:
            os._exit(ExitCode.INTERRUPTED)
        log.info("received %s: stopping (send again to exit at once)", signal.Signals(signum).name)
        stop()

    def hup(_signum: int, _frame: object) -> None:
        if on_hup is None:
            log.info("received SIGHUP: ignored (nothing to reload; stop with SIGTERM, reopen files with SIGUSR1)")
        else:
            log.info("received SIGHUP: reloading the cameras")
            on_hup()  # only wakes the reload thread: a handler must not block the inference thread

    def usr1(_signum: int, _frame: object) -> None:
        log.info("received SIGUSR1: reopening output files")
        if on_usr1 is not None:
            on_usr1()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, hup)
    signal.signal(signal.SIGUSR1, usr1)


def run_pipeline(cfg, duration: float | None, config_path: Path | None = None,
                 shard: Any = None) -> ExitCode:
    """Build, run and drain a pipeline, mapping failures to exit codes. `duration` 0 or None: until stopped.

    With `config_path`, SIGHUP (and `watch_config`) reload its cameras, and the control API is served
    on the metrics port (service/reload.py, service/control.py). With `shard` (sharding.Shard), a reload
    applies only the cameras of that shard.
    """
    from rtsp_worker.config import ConfigError
    from rtsp_worker.config.service import view_exposure
    from rtsp_worker.engines import ModelError
    from rtsp_worker.pipeline import build_pipeline

    if (exposed := view_exposure(cfg.metrics, cfg.view)) is not None:  # e.g. after a --metrics-host override
        return fail(exposed, ExitCode.CONFIG)
    raise_open_files_limit()
    served = _serve_health(cfg)  # before the engine loads: /healthz and /readyz answer "starting"
    if isinstance(served, ExitCode):
        return served
    http, health = served
    try:
        pipeline = build_pipeline(cfg, build_on_start=_build_on_start)
    except ModelError as e:
        _close(http)
        return fail(str(e), ExitCode.MODEL)
    except ConfigError as e:  # found once the model's classes are known (lines/zones classes)
        _close(http)
        return fail(str(e), ExitCode.CONFIG)
    except (RuntimeError, ValueError) as e:
        _close(http)
        return fail(str(e), ExitCode.RUNTIME)
    if health is not None:
        health.attach(pipeline)
    metrics = None
    if cfg.metrics.port is not None:
        from rtsp_worker.service.metrics import serve_metrics

        try:
            metrics = serve_metrics(pipeline, cfg.metrics.host, cfg.metrics.port, http=http)
        except OSError as e:
            pipeline.shutdown()
            return fail(f"metrics: cannot listen on {cfg.metrics.host}:{cfg.metrics.port}: {e.strerror or e}",
                       ExitCode.RUNTIME)
    reloader = None
    if config_path is not None:
        from rtsp_worker.service.reload import Reloader

        select = None
        if shard is not None:
            from rtsp_worker.service.sharding import shard_config

            def select(c):
                return shard_config(c, shard)

        reloader = Reloader(pipeline, config_path, watch=cfg.watch_config, select=select).start()
        if metrics is not None:
            from rtsp_worker.service.control import ControlApi

            ControlApi(metrics.http, reloader)
        elif cfg.control.token is not None:
            log.warning("control.token is set but metrics.port is not: no control API (SIGHUP still reloads)")
    view = access = None
    if metrics is not None:
        view, access = _serve_view(cfg, pipeline, metrics)
    from rtsp_worker.service.heatmaps import Heatmaps, register_heatmap_routes

    heatmaps = Heatmaps(pipeline, cfg.output.dir)
    if metrics is not None:
        def control_token() -> str | None:  # the reset needs the control token (it may change on reload)
            if reloader is not None:
                return reloader.token
            tok = cfg.control.token
            return tok.get_secret_value() or None if tok is not None else None

        # The PNG follows the view's access rule, like every other picture of a camera.
        register_heatmap_routes(metrics.http, heatmaps, control_token, view_access=access.check)
    install_signal_handlers(pipeline.stop, on_hup=reloader.request if reloader is not None else None,
                            on_usr1=pipeline.reopen_outputs)
    log.info("running %d cameras on %s, model %s (input %dx%d, %d classes), outputs in %s",
             len(pipeline.cameras), pipeline.work_device, cfg.model.path, *pipeline.engine.info.input_size,
             len(pipeline.class_names), cfg.output.dir)
    try:
        pipeline.run(duration=duration or None)  # drains and closes the sinks even when it raises
    except Exception as e:
        log.exception("pipeline failed")
        return fail(f"pipeline failed: {type(e).__name__}: {e}", ExitCode.RUNTIME)
    finally:
        heatmaps.close()
        if reloader is not None:
            reloader.close()
        if view is not None:
            view.close()
        if metrics is not None:
            metrics.close()
    if pipeline.failure:
        return fail(pipeline.failure, ExitCode.RUNTIME)
    log.info("stopped cleanly")
    return ExitCode.OK


def raise_open_files_limit() -> None:
    """Open-files soft limit up to the hard limit: many cameras, outputs and HTTP clients (viewers, scrapers)
    need more than the usual 1,024 descriptors; the hard limit is what the box allows without privileges."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.debug("open-files limit raised from %d to %d", soft, hard)
    except (ImportError, ValueError, OSError) as e:  # not on this OS, or refused: keep the current limit
        log.debug("open-files limit not raised: %s", e)


def _build_on_start(model, device, max_batch: int) -> Path:
    """`model.build_engine`: the builder is imported only when an engine has to be built or checked."""
    from rtsp_worker.engine_build.on_start import ensure_engine

    return ensure_engine(model, device, max_batch)


def _serve_health(cfg):  # Config -> (HttpServer | None, Health | None) | ExitCode
    """The worker's one HTTP server with /healthz and /readyz, started early; /metrics joins it later."""
    if cfg.metrics.port is None:
        return None, None
    from rtsp_worker.service.health import Health
    from rtsp_worker.service.server import HttpServer

    health = Health(cfg.metrics.health_max_silence_s)
    try:
        http = health.register(HttpServer(cfg.metrics.host, cfg.metrics.port,
                                          max_connections=cfg.metrics.max_connections)).start()
    except OSError as e:
        return fail(f"metrics: cannot listen on {cfg.metrics.host}:{cfg.metrics.port}: {e.strerror or e}",
                   ExitCode.RUNTIME)
    return http, health


def _serve_view(cfg, pipeline, metrics):  # -> (view hub | None, Access)
    """The access rule, /login, /events, /media and (unless view.enabled is false) the browser view; returns
    the view (to close) and the access rule (the heatmap PNG follows it too)."""
    from rtsp_worker.redact import register_secret
    from rtsp_worker.service.access import Access
    from rtsp_worker.service.evidence_http import EventLog, EvidenceHttp
    from rtsp_worker.service.view import serve_view

    token = cfg.view.token.get_secret_value() if cfg.view.token is not None else None
    if token:
        register_secret(token)  # never in a log line, whoever prints it
    access = Access.from_config(cfg)
    access.register(metrics.http)
    events = EventLog(cfg.view.events)
    pipeline.on_batch(events.listen)
    EvidenceHttp(metrics.http, access, events, cfg.output.dir)
    hub = serve_view(metrics.http, pipeline, cfg.view, access, events, metrics.metrics.registry)
    if hub is not None:
        log.info("view on http://%s:%d/ (%s)", cfg.metrics.host, metrics.port,
                 "token required" if token else "public" if cfg.view.public else "loopback only")
    return hub, access


def _close(http) -> None:  # HttpServer | None
    if http is not None:
        http.close()
