"""`/healthz` and `/readyz` for one worker, as routes on its HTTP server, with JSON bodies saying why not.

- `/healthz` (liveness): the process answers and its inference loop went round within `max_silence_s`.
  The loop goes round every batcher timeout even when no camera sends anything, so cameras being down
  never make a worker "unhealthy" (restarting it would not bring them back); a loop stuck in a sink, an
  engine call or a deadlock does. While the engine loads (a TensorRT build at start can take minutes) the
  answer is 200 with `"status": "starting"`: a Kubernetes startupProbe, not this, bounds the load.
- `/readyz` (readiness): the engine is loaded and at least one camera is streaming; otherwise 503 with
  the reason and each camera's state and last error.

The server is started before the engine loads (service/runner.py), so both answer from the first second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from rtsp_worker.service.server import HttpServer, Request, Response

if TYPE_CHECKING:
    from rtsp_worker.status import CameraStatus, PipelineStatus


class HasStatus(Protocol):
    """What health reads: a pipeline's status snapshot."""

    def status(self) -> PipelineStatus: ...


class Health:
    """Liveness and readiness of one worker; `attach()` the pipeline once its engine is loaded."""

    def __init__(self, max_silence_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_silence_s = max_silence_s
        self.clock = clock  # the pipeline's loop stamps time.monotonic(); tests pass a fake clock
        self.pipeline: HasStatus | None = None

    def attach(self, pipeline: HasStatus) -> None:
        self.pipeline = pipeline

    def register(self, http: HttpServer) -> HttpServer:
        http.route("GET", "/healthz", self._healthz)
        http.route("GET", "/readyz", self._readyz)
        return http

    def healthz(self) -> tuple[bool, dict[str, Any]]:
        if self.pipeline is None:
            return True, {"status": "starting", "reason": "loading the engine"}
        p = self.pipeline.status()
        if p.stopping:
            return True, {"status": "stopping", "reason": "draining and flushing the sinks"}
        beat = p.loop_ts
        if beat is None:
            return True, {"status": "starting", "reason": "engine loaded, inference loop not started yet"}
        silent = self.clock() - beat
        if silent > self.max_silence_s:
            return False, {"status": "stalled", "reason": f"inference loop made no progress for {silent:.1f} s "
                           f"(limit {self.max_silence_s:g} s)", "batches": p.batches}
        return True, {"status": "ok", "last_progress_s": round(silent, 3), "batches": p.batches}

    def readyz(self) -> tuple[bool, dict[str, Any]]:
        if self.pipeline is None:
            return False, {"ready": False, "reason": "engine not loaded yet"}
        p = self.pipeline.status()
        cameras = {c.name: _camera(c) for c in p.cameras}
        streaming = p.streaming
        body: dict[str, Any] = {"ready": streaming > 0, "streaming": streaming, "cameras": cameras}
        if p.stopping:
            body.update(ready=False, reason="stopping")
        elif streaming == 0:
            body["reason"] = f"no camera is streaming (0 of {len(cameras)})"
        return body["ready"], body

    def _healthz(self, _req: Request) -> Response:
        ok, body = self.healthz()
        return Response.json(200 if ok else 503, body)

    def _readyz(self, _req: Request) -> Response:
        ok, body = self.readyz()
        return Response.json(200 if ok else 503, body)


def _camera(c: CameraStatus) -> dict[str, Any]:
    out: dict[str, Any] = {"state": c.state.value}
    if c.last_error:
        out["last_error"] = c.last_error  # a reason (as in the log lines), never a URL with credentials
    return out
