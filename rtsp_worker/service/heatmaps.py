"""Heatmaps of a running pipeline: the batch subscriber, the periodic PNG writer and the HTTP routes.

    GET  /cameras/{name}/heatmap.png     the camera's heatmap (the view's access rule, see below)
    POST /cameras/{name}/heatmap/reset   empty it (control token, as every write)

The grids themselves are rtsp_worker/analytics/heatmap.py (on the work device, one scatter-add per batch).
This module only subscribes to `Pipeline.on_batch` / `on_camera`; it never reaches into the pipeline.

`register_heatmap_routes(http, heatmaps, write_token, view_access)`: `view_access` is the rule that decides
who may read what the view serves (service/access.py); until it is wired, the runner passes None, which
means "the control token is required" (never less than that: a heatmap shows where people go).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from rtsp_worker.analytics.heatmap import HeatmapStore, render_png
from rtsp_worker.config import check_name
from rtsp_worker.pipeline import Pipeline
from rtsp_worker.service.control import refuse_write
from rtsp_worker.service.server import HttpServer, Request, Response
from rtsp_worker.sinks.lines import camera_dir
from rtsp_worker.status import BatchOutput

log = logging.getLogger(__name__)

AccessRule = Callable[[Request], "Response | None"]  # None: allowed; else the refusal to send


class Heatmaps:
    """Every camera's heatmap, fed by the pipeline's batches; PNGs written every `write_every_s` when set."""

    def __init__(self, pipeline: Pipeline, output_dir: str | Path, poll_s: float = 0.5) -> None:
        self.pipeline = pipeline
        self.output_dir = Path(output_dir)
        self.store = HeatmapStore(pipeline.work_device)
        self._configure()
        self._unsubscribe = [pipeline.on_batch(self._on_batch), pipeline.on_camera(self._on_camera)]
        self._written: dict[str, float] = {}  # camera -> monotonic time of its last PNG
        self._stop = threading.Event()
        self._poll_s = poll_s
        self._thread = threading.Thread(target=self._write_loop, name="heatmap-writer", daemon=True)
        self._thread.start()

    def _configure(self) -> None:
        self.store.configure({name: cfg.heatmap for name, cfg in self.pipeline.configs().items()})

    def _on_camera(self, _event: str, _name: str) -> None:
        self._configure()

    def _on_batch(self, out: BatchOutput) -> None:
        frames = out.frames
        times = [f.stream_time for f in frames]
        t = out.tracks
        self.store.add(out.cameras, [(f.width, f.height) for f in frames], times, t.batch_index, t.boxes)

    def png(self, camera: str) -> bytes | None:
        counts = self.store.counts(camera)
        if counts is None:
            return None
        cfg = self.store.configs.get(camera)
        return render_png(counts, scale=max(1, min(cfg.cell if cfg else 1, 16)))

    # -- the periodic writer ----------------------------------------------------------------------------
    def _write_loop(self) -> None:
        while not self._stop.wait(self._poll_s):
            self.write_due()

    def write_due(self, force: bool = False) -> list[Path]:
        """Write the heatmap of every camera whose `write_every_s` passed (all with one, when `force`)."""
        written = []
        now = time.monotonic()
        for name, cfg in list(self.store.configs.items()):
            if cfg.write_every_s is None:
                continue
            last = self._written.setdefault(name, now)
            if not force and now - last < cfg.write_every_s:
                continue
            self._written[name] = now
            try:
                written.append(self._write(name))
            except OSError as e:  # a full disk must not stop the others
                log.warning("heatmap: cannot write %s's heatmap: %s", name, e.strerror or e)
        return written

    def _write(self, camera: str) -> Path:
        data = self.png(camera) or b""
        folder = camera_dir(self.output_dir, camera) / "heatmaps"
        folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = folder / f"heatmap-{stamp}.png"
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def close(self) -> None:
        """Stop writing; one last PNG of every camera that writes them (nothing accumulated is lost)."""
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._stop.set()
        self._thread.join(timeout=5)
        self.write_due(force=True)


def register_heatmap_routes(http: HttpServer, heatmaps: Heatmaps, write_token: Callable[[], str | None],
                            view_access: AccessRule | None) -> None:
    """The two routes on `http`. `write_token()`: the control token now (it may change on reload).
    `view_access`: the view's access rule for the GET; None: the control token is required for it too."""

    def read_rule(req: Request) -> Response | None:
        return view_access(req) if view_access is not None else refuse_write(req, write_token())

    def camera(req: Request) -> str | Response:
        name = req.params.get("name", "")
        try:
            check_name(name, "camera")
        except ValueError as e:
            return Response.json(400, {"error": str(e)})
        if heatmaps.store.configs.get(name) is None:
            return Response.json(404, {"error": f"camera {name!r} has no heatmap (add `heatmap:` to it)"})
        return name

    def get_png(req: Request) -> Response:
        if (refused := read_rule(req)) is not None:
            return refused
        name = camera(req)
        if isinstance(name, Response):
            return name
        return Response(200, heatmaps.png(name) or b"", "image/png", {"Cache-Control": "no-store"})

    def post_reset(req: Request) -> Response:
        if (refused := refuse_write(req, write_token())) is not None:
            return refused
        name = camera(req)
        if isinstance(name, Response):
            return name
        heatmaps.store.reset(name)
        log.info("heatmap of camera %s reset", name)
        return Response.json(200, {"camera": name, "reset": True})

    http.route("GET", "/cameras/{name}/heatmap.png", get_png)
    http.route("POST", "/cameras/{name}/heatmap/reset", post_reset)
