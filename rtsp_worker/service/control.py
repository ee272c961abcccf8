"""The camera control API, as routes on the worker's one HTTP server (`metrics.port`, `metrics.host`).

    GET    /cameras          state, fps and counters of every camera (JSON); no token needed
    PUT    /cameras/{name}   add or replace a camera: the body is one cameras.yaml entry, as JSON
    DELETE /cameras/{name}   remove a camera
    POST   /reload           re-read cameras.yaml (as SIGHUP does)

Security model: every write needs `Authorization: Bearer <control.token>`; with no token configured the API
is read-only (writes answer 403). The server listens on loopback unless `metrics.host` says otherwise. A
write is validated against the whole file before anything changes, written back to cameras.yaml atomically
(temporary file, fsync, rename) so that a restart keeps it, then applied like a reload. Camera names are
checked (the one rule of config.check_name: no "/", no ".", ".." or leading dot); answers never echo
the token, and camera URLs are shown with passwords and every value from the environment masked.

A body that contains `${` anywhere is refused (400 naming the field): an `${ENV}` reference would be
expanded by the worker, at once or at a later reload, and the environment (the control token, other
cameras' passwords) sent inside a URL to whatever host the body named and shown by `GET /cameras`. A
`file://` camera is accepted only under a folder of `control.allow_file_dirs` (none by default).
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

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
        return refuse_write(req, self.reloader.token)

    @staticmethod
    def _name(req: Request) -> str | Response:
        name = req.params.get("name", "")
        try:
            return check_name(name)
        except ValueError as e:
            return Response.json(400, {"error": str(e)})

    def _check_body(self, name: str, body: dict[str, Any]) -> Response | None:
        """None when the entry may be written; otherwise the 400 that says which field and why."""
        field = _env_reference(body)
        if field is not None:
            where = f"camera {name!r}, field {field!r}"
            log.warning("http PUT /cameras/%s refused: %s holds '${'", name, where)
            return Response.json(400, {"error": f"{where}: '${{' is not accepted through the API (environment "
                                                "references are expanded only in a file the operator writes); "
                                                "give the value itself"})
        url = body.get("url")
        if isinstance(url, str) and urlsplit(url).scheme.lower() == "file":
            refused = _file_refusal(url, self.reloader.baseline.control.allow_file_dirs)
            if refused is not None:
                log.warning("http PUT /cameras/%s refused: %s", name, refused)
                return Response.json(400, {"error": f"camera {name!r}, field 'url': {refused}"})
        return None

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
                "infer_interval": c.infer_interval, "inferred": c.inferred, "gated": c.gated, "motion": c.motion,
                "priority": c.priority, "effective_interval": c.infer_interval * c.multiplier,
            })
        room: dict[str, object] = {k: None if v is None else round(v, 1) for k, v in (
            ("capacity_fps", status.capacity_fps), ("demand_fps", status.demand_fps),
            ("headroom_fps", status.headroom_fps))}
        room["capacity_source"] = status.capacity_source  # "batches", or "warm-up" before the first batch
        return Response.json(200, {"cameras": cams, "capacity": status.capacity, "headroom": room})

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
        if (refused := self._check_body(name, body)) is not None:
            return refused
        if "name" in body and body["name"] != name:
            return Response.json(400, {"error": f"body names camera {body['name']!r}, the path {name!r}"})
        try:
            force = req.query.get("force", ["0"])[-1] in ("1", "true", "yes")
            created, changes = self.reloader.put_camera(name, body, force=force)
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


def refuse_write(req: Request, token: str | None) -> Response | None:
    """The control API's rule for a write (also the heatmap reset): None when `req` carries `token` as a
    bearer token; otherwise the refusal (403 without a configured token, 401 with a wrong or no token)."""
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


def _env_reference(value: Any, path: tuple[str, ...] = ()) -> str | None:
    """The dotted field (`url`, `lines.0.name`) of the first key or string holding `${`, or None."""
    if isinstance(value, str):
        return ".".join(path) if "${" in value else None
    items: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, list):
        items = [(str(i), v) for i, v in enumerate(value)]
    for key, v in items:
        if "${" in key:
            return ".".join((*path, key))
        if (found := _env_reference(v, (*path, key))) is not None:
            return found
    return None


def _file_refusal(url: str, allowed: list[Path]) -> str | None:
    """Why a file:// URL given through the API is refused, or None when it is under an allowed folder."""
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        return "a file:// URL names a local file (file:///path or file://localhost/path)"
    if not allowed:
        return ("file:// cameras are not accepted through the API (control.allow_file_dirs lists none); "
                "add it to cameras.yaml, or list its folder in control.allow_file_dirs")
    # Symlinks and `..` resolved first: the allowed folder must hold the file that would really be opened.
    path = Path(os.path.realpath(unquote(parts.path)))
    for folder in allowed:
        if path.is_relative_to(Path(os.path.realpath(folder))):
            return None
    return f"file:// path is not under a folder of control.allow_file_dirs ({', '.join(map(str, allowed))})"
def _round(fps: float | None) -> float | None:
    return round(fps, 2) if fps is not None else None
