"""`GET /events` (recent events from memory) and `GET /media/<camera>/<path>` (files of a camera's output
folder: clips, snapshots, heatmaps), on the worker's one HTTP server, under the access rule (access.py).

    GET /events?camera=<name>&since=<ts>&limit=<n>   newest last; `since`: events with ts > since
    GET /media/<camera>/<path>                       a file under <output.dir>/<camera>/

Events come from a bounded ring (`view.events` records) fed by the pipeline's batch hook: nothing is read
back from disk, and a burst of events pushes the oldest out. Records are the sinks' JSON (`Event.to_json_dict`),
with `snapshot` / `clip` (paths relative to output.dir) when the evidence feature attached them.

Media paths are checked before anything is opened: the camera name by the one name rule, every segment of the
rest (no empty, `.`, `..` or hidden segment, no backslash or NUL), then the real path (symlinks resolved) must
lie inside the camera's real folder, which must lie inside output.dir's real folder: a symlink never leads out
of the camera's folder, and nothing outside output.dir can be read. Only regular files are served.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
import os
import threading
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from rtsp_worker.config import check_name
from rtsp_worker.service.access import Access
from rtsp_worker.service.server import HttpServer, Request, Response

if TYPE_CHECKING:
    from rtsp_worker.status import BatchOutput

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
WHOLE_FILE = 16 << 20  # bytes; larger files are streamed in chunks
CHUNK = 1 << 20


class EventLog:
    """The last `size` events of every camera, in arrival order; `listen` is a `Pipeline.on_batch` listener."""

    def __init__(self, size: int = 1000) -> None:
        self._ring: deque[dict[str, Any]] = deque(maxlen=size)
        self._lock = threading.Lock()

    def listen(self, out: BatchOutput) -> None:
        if not out.events:
            return
        records = [event_record(e) for e in out.events]
        with self._lock:
            self._ring.extend(records)

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._ring.append(record)

    def recent(self, camera: str | None = None, since: float | None = None,
               limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._ring)
        if camera is not None:
            items = [r for r in items if r.get("camera") == camera]
        if since is not None:
            items = [r for r in items if r.get("ts", 0.0) > since]
        return items[-limit:] if limit > 0 else []


def event_record(event: Any) -> dict[str, Any]:
    """An event as the sinks write it, with its evidence paths when it has them."""
    d = event.to_json_dict()
    for key in ("snapshot", "clip"):
        value = getattr(event, key, None)
        if value and key not in d:
            d[key] = value
    return d


class EvidenceHttp:
    """Serves /events and /media/... for `output_dir`, behind `access`."""

    def __init__(self, http: HttpServer, access: Access, events: EventLog, output_dir: Path) -> None:
        self.access = access
        self.events = events
        self.root = Path(output_dir)
        http.route("GET", "/events", self.get_events)
        http.route("GET", "/media/{camera}/{path*}", self.get_media)

    def get_events(self, req: Request) -> Response:
        if (refused := self.access.check(req)) is not None:
            return refused
        camera = req.query.get("camera", [None])[0]
        try:
            since = float(req.query["since"][0]) if "since" in req.query else None
            limit = int(req.query.get("limit", [DEFAULT_LIMIT])[0])
        except ValueError:
            return Response.json(400, {"error": "since must be a number (seconds since the epoch), limit an "
                                                "integer"})
        limit = max(0, min(limit, MAX_LIMIT))
        records = self.events.recent(camera, since, limit)
        return Response(200, json.dumps({"events": records}, allow_nan=False), "application/json",
                        {"Cache-Control": "no-store"})

    def get_media(self, req: Request) -> Response:
        if (refused := self.access.check(req)) is not None:
            return refused
        found = media_path(self.root, req.params.get("camera", ""), req.params.get("path", ""))
        if isinstance(found, str):
            return Response.json(404, {"error": found})
        try:
            fd = os.open(found, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return Response.json(404, {"error": "no such file"})
        f = os.fdopen(fd, "rb")
        size = os.fstat(fd).st_size
        ctype = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "private, max-age=60",
                   "Content-Security-Policy": "sandbox"}
        if size <= WHOLE_FILE:
            with f:
                return Response(200, f.read(), ctype, headers)
        return Response(200, b"", ctype, {**headers, "Content-Length": str(size)}, stream=_chunks(f))


async def _chunks(f: Any) -> AsyncIterator[bytes]:
    with f:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk


def media_path(root: Path, camera: str, rest: str) -> Path | str:
    """The real path of `<root>/<camera>/<rest>` when it may be served, else why not (a short reason)."""
    try:
        check_name(unquote(camera))
    except ValueError:
        return "no such camera folder"
    parts = unquote(rest).split("/")
    for p in parts:
        if p in ("", ".", "..") or p.startswith(".") or "\\" in p or "\x00" in p:
            return "bad path"
    real_root = Path(os.path.realpath(root))
    folder = Path(os.path.realpath(real_root / unquote(camera)))
    if not folder.is_relative_to(real_root) or folder == real_root:
        return "no such camera folder"
    target = Path(os.path.realpath(folder.joinpath(*parts)))
    if not target.is_relative_to(folder) or not target.is_file():
        return "no such file"
    return target
