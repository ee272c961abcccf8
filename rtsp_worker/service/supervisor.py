"""Several worker processes on one box: one shard and one device each, restarted when they die.

`rtsp-worker run cameras.yaml --workers N` (or `workers: N` in the config) starts this supervisor instead
of a pipeline. It runs N children `rtsp-worker run cameras.yaml --shard K/N --device D`, each a complete
worker with its own decoders, engine and sinks (cameras are independent, so nothing is shared but the
output folder, where each camera has its own files). The supervisor:

- restarts a worker that dies, after a backoff that doubles per quick death (1 s .. 30 s; a worker that
  ran a minute starts over at 1 s), logging its exit code or signal;
- stops everything and exits with the worker's code when a worker reports a configuration or model error
  (2, 3): a restart cannot fix those;
- forwards SIGINT/SIGTERM to every worker (they are in their own sessions, so a terminal's Ctrl-C reaches
  them only once, through here) and waits for them to flush their sinks;
- serves one HTTP endpoint for the box on `metrics.port`: `/metrics` scrapes each worker's loopback
  endpoint and adds a `worker` label to every series (plus `rtsp_worker_worker_up` and
  `rtsp_worker_worker_restarts_total`), `/healthz` and `/readyz` answer with every worker's own answer.

Why scrape-and-relabel rather than prometheus_client's multiprocess mode: the workers' metrics are
collected at scrape time from live objects (service/metrics.py), which multiprocess files cannot hold,
and a worker killed with -9 must simply disappear from the answer, not leave stale files behind.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from rtsp_worker.exitcodes import ExitCode
from rtsp_worker.service.server import HttpServer, Request, Response
from rtsp_worker.service.sharding import Shard

if TYPE_CHECKING:
    from rtsp_worker.config import Config

log = logging.getLogger(__name__)

BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # a worker that ran this long before dying starts its backoff over
STOP_TIMEOUT_S = 60.0  # after SIGTERM: cameras 5 s + sinks 10 s + slack, then SIGKILL
SCRAPE_TIMEOUT_S = 2.0


def visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no torch CUDA at all: no GPUs
        return 0


def worker_count(cfg: Config, override: int | None = None) -> int:
    n = override if override is not None else cfg.workers
    if n == "auto":
        return max(1, visible_gpus()) * cfg.workers_per_gpu
    return int(n)


def worker_devices(cfg: Config, count: int, override: str | None = None) -> list[str]:
    """The device of each worker: `--device` for all, else `devices:` round robin, else `device:`.

    `workers: auto` without `devices:` means one worker per GPU, so the GPUs are dealt round robin too.
    """
    if override is not None:
        devices: Sequence[str] = [override]
    elif cfg.devices == "auto" or (cfg.devices is None and cfg.workers == "auto"):
        devices = [f"cuda:{i}" for i in range(visible_gpus())] or ["cpu"]
    elif cfg.devices:
        devices = cfg.devices
    else:
        devices = [cfg.device]
    return [devices[k % len(devices)] for k in range(count)]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # The workers are in their own sessions (no terminal signals); PR_SET_PDEATHSIG makes sure a
    # supervisor killed with -9 does not leave them running with nobody to stop them.
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


@dataclass(slots=True)
class WorkerProcess:
    """One worker slot: its shard and device, the current process (if any) and its restart history."""

    index: int
    shard: Shard
    device: str
    proc: subprocess.Popen[bytes] | None = None
    port: int | None = None
    restarts: int = 0
    backoff_s: float = BACKOFF_INITIAL_S
    started_at: float = 0.0
    next_start: float = 0.0  # monotonic
    done: bool = False  # exited 0 by itself (its --duration ran out): not restarted
    exit_codes: list[int] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Starts, watches and stops the worker processes of one box; `run()` returns the exit code."""

    def __init__(self, config_path: Path, cfg: Config, count: int, devices: Sequence[str],
                 worker_args: Sequence[str] = (), python: str = sys.executable) -> None:
        self.config_path = Path(config_path)
        self.cfg = cfg
        self.worker_args = list(worker_args)
        self.python = python
        self.workers = [WorkerProcess(k, Shard(k, count), devices[k]) for k in range(count)]
        self.stop_event = threading.Event()
        self._signals = 0
        self.http: HttpServer | None = None
        self.loop_ts = time.monotonic()

    # -- processes ------------------------------------------------------------------------------------
    def command(self, w: WorkerProcess) -> list[str]:
        return [self.python, "-m", "rtsp_worker.cli", "run", str(self.config_path), "--shard", str(w.shard),
                "--device", w.device, "--metrics-host", "127.0.0.1", "--metrics-port", str(w.port),
                *self.worker_args]

    def _spawn(self, w: WorkerProcess) -> None:
        w.port = free_port()
        w.proc = subprocess.Popen(self.command(w), start_new_session=True, preexec_fn=_die_with_parent)  # noqa: PLW1509
        w.started_at = time.monotonic()
        log.info("worker %d started: pid %d, shard %s, device %s, metrics 127.0.0.1:%d",
                 w.index, w.proc.pid, w.shard, w.device, w.port)

    def _reap(self, w: WorkerProcess, code: int) -> int | None:
        """Handle a worker that exited; returns an exit code for the whole box when it must stop."""
        w.exit_codes.append(code)
        pid = w.proc.pid if w.proc is not None else -1
        w.proc = None
        if self.stop_event.is_set():
            return None
        if code == ExitCode.OK:
            w.done = True
            log.info("worker %d (pid %d) finished", w.index, pid)
            return None
        if code in (ExitCode.CONFIG, ExitCode.MODEL):  # restarting cannot help
            log.error("worker %d (pid %d, shard %s) exited with %s (configuration or model error): stopping "
                      "every worker", w.index, pid, w.shard, describe_exit(code))
            return code
        ran = time.monotonic() - w.started_at
        if ran >= STABLE_AFTER_S:
            w.backoff_s = BACKOFF_INITIAL_S
        w.restarts += 1
        w.next_start = time.monotonic() + w.backoff_s
        log.warning("worker %d (pid %d, shard %s) exited with %s after %.1f s; restarting in %.1f s (restart %d)",
                    w.index, pid, w.shard, describe_exit(code), ran, w.backoff_s, w.restarts)
        w.backoff_s = min(w.backoff_s * 2, BACKOFF_MAX_S)
        return None

    def run(self, duration: float | None = None) -> ExitCode:
        """Run until a signal (or every worker finished, or `duration`); returns the box's exit code."""
        self._install_signals()
        self._serve()
        end = None if duration is None else time.monotonic() + duration
        code = ExitCode.OK
        try:
            while not self.stop_event.is_set():
                now = self.loop_ts = time.monotonic()
                if end is not None and now >= end:
                    break
                for w in self.workers:
                    if w.proc is not None:
                        rc = w.proc.poll()
                        if rc is not None and (fatal := self._reap(w, rc)) is not None:
                            code = ExitCode(fatal)
                            self.stop_event.set()
                            break
                    elif not w.done and now >= w.next_start:
                        self._spawn(w)
                if all(w.done for w in self.workers):
                    break
                self.stop_event.wait(0.2)
        finally:
            self._stop_all()
            if self.http is not None:
                self.http.close()
        log.info("supervisor stopped (exit %d)", code)
        return code

    def _stop_all(self) -> None:
        """SIGTERM every live worker (each drains and flushes its sinks), SIGKILL any still there after
        STOP_TIMEOUT_S."""
        self.stop_event.set()
        live = [w for w in self.workers if w.alive]
        for w in live:
            w.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for w in live:
            proc = w.proc
            assert proc is not None
            try:
                rc = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) did not stop within %.0f s: killing it", w.index, proc.pid,
                          STOP_TIMEOUT_S)
                proc.kill()
                rc = proc.wait()
            log.info("worker %d (pid %d) stopped with %s", w.index, proc.pid, describe_exit(rc))
            w.exit_codes.append(rc)
            w.proc = None

    def _install_signals(self) -> None:
        def handler(signum: int, _frame: object) -> None:
            self._signals += 1
            if self._signals == 1:
                log.info("received %s: stopping the workers", signal.Signals(signum).name)
                self.stop_event.set()
                return
            # Second signal: pass it on, so the workers exit at once too (their own second-signal rule).
            for w in self.workers:
                if w.alive:
                    w.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]

        def forward(signum: int, _frame: object) -> None:
            # SIGHUP (reload the cameras: each worker re-reads the file and applies its own shard) and
            # SIGUSR1 (reopen output files) mean the same to the box as to one worker; never the default
            # action, which would kill the supervisor and orphan its workers.
            name = signal.Signals(signum).name
            alive = [w for w in self.workers if w.alive]
            log.info("received %s: passing it to %d worker(s)", name, len(alive))
            for w in alive:
                w.proc.send_signal(signum)  # type: ignore[union-attr]

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGHUP, forward)
        signal.signal(signal.SIGUSR1, forward)

    # -- the box's endpoint ----------------------------------------------------------------------------
    def _serve(self) -> None:
        m = self.cfg.metrics
        if m.port is None:
            return
        http = HttpServer(m.host, m.port, max_connections=m.max_connections)
        http.route("GET", "/metrics", self._metrics)
        http.route("GET", "/healthz", lambda _r: self._aggregate("/healthz"))
        http.route("GET", "/readyz", lambda _r: self._aggregate("/readyz"))
        self.http = http.start()
        log.info("box endpoint on http://%s:%d (/metrics, /healthz, /readyz for %d workers)", m.host,
                 http.port, len(self.workers))

    def _get(self, w: WorkerProcess, path: str) -> tuple[int, bytes] | None:
        if not w.alive or w.port is None:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{w.port}{path}", timeout=SCRAPE_TIMEOUT_S) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (OSError, ValueError):
            return None  # not listening yet (starting) or gone

    def _metrics(self, _req: Request) -> Response:
        texts = {}
        for w in self.workers:
            got = self._get(w, "/metrics")
            if got is not None and got[0] == 200:
                texts[str(w.index)] = got[1].decode()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_BoxCollector(self, texts))
        return Response(200, generate_latest(registry), CONTENT_TYPE_LATEST)

    def _aggregate(self, path: str) -> Response:
        """Every worker's own answer; the box is healthy (ready) when every running worker is."""
        workers: dict[str, Any] = {}
        ok = True
        for w in self.workers:
            entry: dict[str, Any] = {"pid": w.proc.pid if w.alive else None, "shard": str(w.shard),
                                     "device": w.device, "restarts": w.restarts}
            got = self._get(w, path)
            if got is None:
                entry["status"] = "finished" if w.done else "restarting" if w.restarts else "starting"
                # A worker between restarts is not "unhealthy" (the supervisor is fixing it), but not ready.
                ok = ok and path == "/healthz"
            else:
                status, body = got
                entry["code"] = status
                try:
                    entry["body"] = json.loads(body)
                except ValueError:
                    entry["body"] = body.decode(errors="replace")[:200]
                ok = ok and status == 200
            workers[str(w.index)] = entry
        key = "healthy" if path == "/healthz" else "ready"
        return Response.json(200 if ok else 503, {key: ok, "workers": workers})


class _BoxCollector(Collector):
    """The workers' series with a `worker` label, merged by family, plus the supervisor's own."""

    def __init__(self, sup: Supervisor, texts: dict[str, str]) -> None:
        self.sup = sup
        self.texts = texts

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for worker, text in self.texts.items():
            for fam in text_string_to_metric_families(text):
                out = merged.get(fam.name)
                if out is None:
                    out = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                for s in fam.samples:
                    out.add_sample(s.name, {"worker": worker, **s.labels}, s.value, s.timestamp, s.exemplar)
        yield from merged.values()
        up = GaugeMetricFamily("rtsp_worker_worker_up", "1 while the worker process runs.", labels=["worker"])
        restarts = CounterMetricFamily("rtsp_worker_worker_restarts", "Times the supervisor restarted the worker.",
                                       labels=["worker"])
        for w in self.sup.workers:
            up.add_metric([str(w.index)], 1.0 if w.alive else 0.0)
            restarts.add_metric([str(w.index)], w.restarts)
        yield up
        yield restarts


def wants_supervisor(cfg: Config, workers: int | None) -> bool:
    return workers is not None or cfg.workers != 1


def supervise(config_path: Path, cfg: Config, workers: int | None, device: str | None,
              worker_args: Sequence[str], duration: float | None) -> ExitCode:
    """`rtsp-worker run --workers N`: validate the sharding up front, then run the supervisor."""
    from rtsp_worker.service.sharding import shard_config

    count = worker_count(cfg, workers)
    for k in range(count):  # an empty shard is a configuration error: say so before starting anything
        shard_config(cfg, Shard(k, count))
    devices = worker_devices(cfg, count, device)
    log.info("supervising %d workers (devices %s) for %d cameras", count, ", ".join(devices),
             len(cfg.enabled_cameras))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return Supervisor(config_path, cfg, count, devices, worker_args).run(duration)
