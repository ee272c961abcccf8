"""The camera control API, as routes on the worker's one HTTP server (`metrics.port`, `metrics.host`).

    GET    /cameras          state, fps and counters of every camera (JSON); no token needed
    PUT    /cameras/{name}   add or replace a camera: the body is one cameras.yaml entry, as JSON
    DELETE /cameras/{name}   remove a camera
    POST   /reload           re-read cameras.yaml (as SIGHUP does)

Security model: every write needs `Authorization: Bearer <control.token>`; with no token configured the API
is read-only (writes answer 403). The server listens on loopback unless `metrics.host` says otherwise. A
write is validated against the whole file before anything changes, written back to cameras.yaml atomically
(temporary file, fsync, rename) so that a restart keeps it, then applied like a reload. Camera names follow
the config's one rule (`config.check_name`: no "/", no "..", no leading dot); answers never echo the token,
and camera URLs are shown with passwords masked.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from rtsp_worker.config import check_name
from rtsp_worker.service.reload import Reloader, ReloadError
from rtsp_worker.service.server import HttpServer, Request, Response

log = logging.getLogger(__name__)


class ControlApi:
    """Serves the routes above on `http` for `reloader`'s pipeline."""

    def __init__(self, http: HttpServer, reloader: Reloader) -> None:
        self.reloader = reloader
        self.pipeline = reloader.p
        http.route("GET", "/cameras", self.get_cameras)
        http.route("PUT", "/cameras/{name}", self.put_camera)
        http.route("DELETE", "/cameras/{name}", self.delete_camera)
        http.route("POST", "/reload", self.post_reload)

    # -- checks -----------------------------------------------------------------------------------------
    def _refuse(self, req: Request) -> Response | None:
        """None when the request carries the configured token; otherwise the refusal."""
        token = self.reloader.token
        if token is None:
            log.warning("http %s %s refused: writes are disabled (no control.token)", req.method, req.path)
            return Response.json(403, {"error": "writes are disabled: set control.token in cameras.yaml"})
        scheme, _, given = req.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            log.warning("http %s %s refused: %s bearer token", req.method, req.path,
                        "wrong" if scheme.lower() == "bearer" else "no")
            return Response(401, '{"error": "a valid bearer token is required"}', "application/json",
                            {"WWW-Authenticate": "Bearer"})
        return None

    @staticmethod
    def _name(req: Request) -> str | Response:
        try:
            return check_name(req.params.get("name", ""))
        except ValueError as e:
            return Response.json(400, {"error": str(e)})

    @staticmethod
    def _error(e: ReloadError) -> Response:
        return Response.json(e.status, {"error": str(e)})

    # -- routes -----------------------------------------------------------------------------------------
    def get_cameras(self, _req: Request) -> Response:
        status = self.pipeline.status()
        cams = []
        for c in status.cameras:
            cams.append({
                "name": c.name, "url": c.url, "state": c.state.value,
                "decode_fps": _round(c.decode_fps), "processed_fps": _round(c.processed_fps),
                "decoded": c.decoded, "processed": c.processed, "dropped": c.dropped,
                "reconnects": c.reconnects, "stalls": c.stalls, "decode_errors": c.decode_errors,
                "failures": c.failures, "last_error": c.last_error or None, "codec": c.codec or None,
                "decoder": c.decoder or None, "width": c.width, "height": c.height,
                "infer_interval": c.infer_interval,
            })
        return Response.json(200, {"cameras": cams, "capacity": status.capacity})

    def put_camera(self, req: Request) -> Response:
        if (refused := self._refuse(req)) is not None:
            return refused
        name = self._name(req)
        if isinstance(name, Response):
            return name
        try:
            body: Any = req.json()
        except ValueError as e:
            return Response.json(400, {"error": str(e)})
        if not isinstance(body, dict):
            return Response.json(400, {"error": "body must be a JSON object: one cameras.yaml camera entry"})
        if "name" in body and body["name"] != name:
            return Response.json(400, {"error": f"body names camera {body['name']!r}, the path {name!r}"})
        try:
            created, changes = self.reloader.put_camera(name, body)
        except ReloadError as e:
            return self._error(e)
        return Response.json(201 if created else 200, {"camera": name, "created": created, "changes": changes})

    def delete_camera(self, req: Request) -> Response:
        if (refused := self._refuse(req)) is not None:
            return refused
        name = self._name(req)
        if isinstance(name, Response):
            return name
        try:
            changes = self.reloader.delete_camera(name)
        except ReloadError as e:
            return self._error(e)
        return Response.json(200, {"camera": name, "changes": changes})

    def post_reload(self, req: Request) -> Response:
        if (refused := self._refuse(req)) is not None:
            return refused
        try:
            changes = self.reloader.reload("POST /reload")
        except ReloadError as e:
            return self._error(e)
        return Response.json(200, {"changes": changes})


def _round(fps: float | None) -> float | None:
    return round(fps, 2) if fps is not None else None
