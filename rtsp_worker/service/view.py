"""The live browser view: annotated pictures of every camera, on the worker's one HTTP server.

    GET /                              the page: a grid of every camera (view_page.py, inline, no build step)
    GET /view/{name}                   one camera, larger, with its MJPEG stream and recent events
    GET /view/api/state                cameras' state, fps, drops, reconnects, counts (JSON, for the page)
    GET /cameras/{name}/latest.jpg     the newest annotated picture (503 + Retry-After while there is none)
    GET /cameras/{name}/stream.mjpeg   multipart/x-mixed-replace JPEG stream, for browsers and VLC

Zero cost when nobody watches: `ViewHub.listen` (a `Pipeline.on_batch` listener, on the finish thread) only
looks a camera up in a dict unless that camera is watched (an open stream, or a latest.jpg asked within
`LEASE_S`). A watched camera's frame is taken at most `view.fps` times a second and handed to one render
thread, which draws it (supervision's annotators, imported on first use), scales it to `view.max_width`,
encodes it once and hands the same bytes to every viewer. Each stream client has its own "newest frame"
slot on the server's event loop: a slow client skips frames, and one that reads nothing is dropped by the
server (server.STREAM_WRITE_TIMEOUT_S) without slowing the others. Open streams are bounded by
`view.max_viewers` (beyond: 503 + Retry-After). Every route asks the access rule first (access.py).

The grid never holds one stream per camera (browsers open at most 6 connections per host): its tiles
refresh latest.jpg; only the camera page streams. A picture older than `STALE_S` is not served, so a camera
that goes down shows its state, never a frozen picture.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from rtsp_worker.config import check_name
from rtsp_worker.service.access import Access, page_headers
from rtsp_worker.service.evidence_http import EventLog
from rtsp_worker.service.server import HttpServer, Request, Response
from rtsp_worker.service.view_page import camera_page, grid_page

if TYPE_CHECKING:
    from rtsp_worker.config import CameraConfig, ViewConfig
    from rtsp_worker.pipeline import Pipeline
    from rtsp_worker.status import BatchOutput, PipelineStatus
    from rtsp_worker.types import Frame, FrameResult

log = logging.getLogger(__name__)

LEASE_S = 5.0  # a latest.jpg request keeps its camera drawn for this long
STALE_S = 3.0  # a picture older than this is not served (the camera is down or stalled)
BOUNDARY = "frame"
KEEPALIVE_S = 5.0  # a stream waits this long for a frame before looking again whether it should end


@dataclass(frozen=True, slots=True)
class Picture:
    jpeg: bytes
    seq: int  # the frame's per-camera number (Frame.seq)
    ts: float  # the frame's decode time (wall clock)
    made: float  # time.monotonic() when it was encoded


class _Client:
    """One stream viewer, on the event loop: woken when its camera has a new picture."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()


class Channel:
    """One camera's pictures and viewers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.picture: Picture | None = None
        self.clients: set[_Client] = set()  # touched on the event loop only
        self.streams = 0  # len(clients), readable from any thread
        self.lease_until = 0.0
        self.last_taken = 0.0
        self.encoded = 0
        self.closed = False

    def watched(self, now: float) -> bool:
        return self.streams > 0 or now < self.lease_until

    def viewers(self, now: float) -> int:
        return self.streams + (1 if now < self.lease_until else 0)

    def wake_all(self) -> None:  # on the event loop
        for c in self.clients:
            c.wake.set()


class ViewHub:
    """Takes frames of watched cameras from the batch hook, draws and encodes them once, serves them."""

    def __init__(self, pipeline: Pipeline, cfg: ViewConfig, loop: asyncio.AbstractEventLoop | None) -> None:
        self.pipeline = pipeline
        self.fps = cfg.fps
        self.max_width = cfg.max_width
        self.quality = cfg.jpeg_quality
        self.max_viewers = cfg.max_viewers
        self.loop = loop
        self._channels: dict[str, Channel] = {}
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[Frame, FrameResult]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self.encode_seconds = 0.0
        self.encode_count = 0
        self._status: tuple[float, PipelineStatus] | None = None
        self._thread = threading.Thread(target=self._render_loop, name="view-render", daemon=True)
        self._thread.start()
        self._unsubscribe = [pipeline.on_batch(self.listen), pipeline.on_camera(self._camera_event)]

    # -- channels ----------------------------------------------------------------------------------------
    def channel(self, name: str, create: bool = False) -> Channel | None:
        with self._lock:
            ch = self._channels.get(name)
            if ch is None and create:
                ch = self._channels[name] = Channel(name)
            return ch

    def channels(self) -> list[Channel]:
        with self._lock:
            return list(self._channels.values())

    def total_streams(self) -> int:
        return sum(ch.streams for ch in self.channels())

    def _camera_event(self, event: str, name: str) -> None:
        if event != "removed":
            return
        with self._lock:
            ch = self._channels.pop(name, None)
        if ch is not None:
            ch.closed = True
            if self.loop is not None:
                self.loop.call_soon_threadsafe(ch.wake_all)  # its streams end

    # -- the batch hook (finish thread): must stay cheap ---------------------------------------------------
    def listen(self, out: BatchOutput) -> None:
        if not self._channels:
            return
        now = time.monotonic()
        period = 1.0 / self.fps
        taken = []
        for i, name in enumerate(out.cameras):
            ch = self._channels.get(name)
            if ch is None or not ch.watched(now) or now - ch.last_taken < period:
                continue
            ch.last_taken = now
            frame = out.frames[i]
            image = frame.image
            if hasattr(image, "clone"):  # a decoder's tensor buffer may be reused: a copy on its device
                frame = replace(frame, image=image.clone())
            taken.append((name, frame, out.results[i]))
        if taken:
            with self._cond:
                for name, frame, result in taken:
                    self._pending[name] = (frame, result)  # a newer frame replaces one not drawn yet
                self._cond.notify()

    # -- the render thread -------------------------------------------------------------------------------
    def _render_loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                work, self._pending = self._pending, {}
            for name, (frame, result) in work.items():
                ch = self.channel(name)
                if ch is None:
                    continue
                try:
                    t0 = time.perf_counter()
                    jpeg = render_jpeg(frame, result, self._camera_config(name), self._counts(name),
                                       self.max_width, self.quality)
                    spent = time.perf_counter() - t0
                except Exception:
                    log.exception("view: drawing camera %s failed", name)
                    continue
                self.encode_seconds += spent
                self.encode_count += 1
                ch.encoded += 1
                ch.picture = Picture(jpeg, frame.seq, frame.ts, time.monotonic())
                if self.loop is not None and ch.streams:
                    try:
                        self.loop.call_soon_threadsafe(ch.wake_all)
                    except RuntimeError:  # the server's loop is closed: shutting down
                        pass

    def _camera_config(self, name: str) -> CameraConfig | None:
        return self.pipeline.configs().get(name)

    def status(self) -> PipelineStatus:
        """The pipeline's status, at most twice a second (drawing needs the counts of lines and zones)."""
        now = time.monotonic()
        cached = self._status
        if cached is None or now - cached[0] > 0.5:
            cached = self._status = (now, self.pipeline.status())
        return cached[1]

    def _counts(self, name: str) -> dict[str, str]:
        """`{line or zone name: "in 3 / out 1" or "2 inside"}` for one camera."""
        a = self.status().analytics
        if a is None:
            return {}
        lines: dict[str, dict[str, int]] = {}
        for (cam, line, direction, _cls), total in a.crossings:
            if cam == name:
                lines.setdefault(line, {}).setdefault(direction, 0)
                lines[line][direction] += total
        out = {k: " / ".join(f"{d} {n}" for d, n in v.items()) for k, v in lines.items()}
        zones: dict[str, int] = {}
        for z in a.zones:
            if z.camera == name:
                zones[z.zone] = zones.get(z.zone, 0) + z.objects
        out.update({k: f"{n} inside" for k, n in zones.items()})
        return out

    # -- streams (event loop) -----------------------------------------------------------------------------
    async def stream(self, ch: Channel) -> AsyncIterator[bytes]:
        client = _Client()
        ch.clients.add(client)
        ch.streams = len(ch.clients)
        sent = -1
        try:
            while not ch.closed and not self._closed:
                pic = ch.picture
                if pic is not None and pic.seq != sent and time.monotonic() - pic.made <= STALE_S:
                    sent = pic.seq
                    yield (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(pic.jpeg)}\r\n"
                           f"X-Frame-Seq: {pic.seq}\r\nX-Frame-Ts: {pic.ts:.6f}\r\n\r\n").encode() + pic.jpeg + b"\r\n"
                client.wake.clear()
                try:
                    await asyncio.wait_for(client.wake.wait(), KEEPALIVE_S)
                except asyncio.TimeoutError:
                    pass
        finally:
            ch.clients.discard(client)
            ch.streams = len(ch.clients)

    def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for ch in self.channels():
            ch.closed = True
            if self.loop is not None and not self.loop.is_closed():
                try:
                    self.loop.call_soon_threadsafe(ch.wake_all)
                except RuntimeError:
                    pass
        self._thread.join(5)


def render_jpeg(frame: Frame, result: FrameResult, cam: CameraConfig | None, counts: dict[str, str],
                max_width: int, quality: int) -> bytes:
    """One frame with its tracks, lines and zones drawn, scaled to `max_width`, as JPEG bytes."""
    import cv2  # with supervision: imported only once somebody watches
    import numpy as np
    import supervision as sv

    from rtsp_worker.detection.preprocess import frame_rgb

    rgb = frame_rgb(frame).numpy()
    h, w = rgb.shape[:2]
    scale = min(1.0, max_width / w)
    if scale < 1.0:
        rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    img = np.ascontiguousarray(rgb[:, :, ::-1])  # supervision draws on BGR images (OpenCV's order)
    objs = result.objects
    if objs:
        # A few dozen host-side objects at most view.fps times a second, only while watched: not the hot path.
        dets = sv.Detections(
            xyxy=np.asarray([o.box for o in objs], dtype=np.float32) * scale,
            confidence=np.asarray([o.confidence for o in objs], dtype=np.float32),
            class_id=np.asarray([o.class_id for o in objs], dtype=int),
            tracker_id=np.asarray([o.track_id for o in objs], dtype=int),
        )
        labels = [f"#{o.track_id} {o.class_name}" for o in objs]
        img = sv.BoxAnnotator(thickness=2, color_lookup=sv.ColorLookup.TRACK).annotate(img, dets)
        img = sv.LabelAnnotator(text_scale=0.45, text_padding=3, color_lookup=sv.ColorLookup.TRACK).annotate(
            img, dets, labels=labels)
    if cam is not None:
        fw, fh = w * scale, h * scale

        def px(p: tuple[float, float], units: str) -> tuple[int, int]:
            return (round(p[0] * fw), round(p[1] * fh)) if units == "fractions" else (round(p[0] * scale),
                                                                                    round(p[1] * scale))

        for zone in cam.zones:
            poly = np.asarray([px(p, zone.units) for p in zone.polygon], dtype=np.int32)
            img = sv.draw_polygon(img, poly, sv.Color.from_hex("#00c8ff"), thickness=2)
            x, y = poly.min(axis=0)
            img = sv.draw_text(img, f"{zone.name}: {counts.get(zone.name, '0 inside')}",
                               sv.Point(int(x) + 60, int(y) + 12), text_scale=0.45,
                               background_color=sv.Color.from_hex("#00c8ff"), text_color=sv.Color.BLACK)
        for line in cam.lines:
            a, b = (px(p, line.units) for p in line.points)
            img = sv.draw_line(img, sv.Point(*a), sv.Point(*b), sv.Color.from_hex("#ffd200"), thickness=2)
            text = f"{line.name}: {counts.get(line.name, ' / '.join(f'{d} 0' for d in line.directions))}"
            img = sv.draw_text(img, text, sv.Point((a[0] + b[0]) // 2, (a[1] + b[1]) // 2), text_scale=0.45,
                               background_color=sv.Color.from_hex("#ffd200"), text_color=sv.Color.BLACK)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


class ViewRoutes:
    """The view's routes on `http`, behind `access`."""

    def __init__(self, http: HttpServer, hub: ViewHub, access: Access, events: EventLog) -> None:
        self.hub = hub
        self.access = access
        self.events = events
        http.route("GET", "/", self.get_grid)
        http.route("GET", "/view/api/state", self.get_state)
        http.route("GET", "/view/{name}", self.get_camera_page)
        http.route("GET", "/cameras/{name}/latest.jpg", self.get_latest)
        http.route("GET", "/cameras/{name}/stream.mjpeg", self.get_stream)

    def _camera(self, req: Request) -> str | Response:
        name = req.params.get("name", "")
        try:
            check_name(name)
        except ValueError as e:
            return Response.json(400, {"error": str(e)})
        if self.hub.status().camera(name) is None and self.hub.pipeline.status().camera(name) is None:
            return Response.json(404, {"error": f"no camera {name!r}"})
        return name

    def get_grid(self, req: Request) -> Response:
        if (refused := self.access.check(req, page=True)) is not None:
            return refused
        return Response(200, grid_page(), "text/html; charset=utf-8", page_headers())

    def get_camera_page(self, req: Request) -> Response:
        if (refused := self.access.check(req, page=True)) is not None:
            return refused
        name = self._camera(req)
        if isinstance(name, Response):
            return name
        return Response(200, camera_page(name), "text/html; charset=utf-8", page_headers())

    def get_state(self, req: Request) -> Response:
        if (refused := self.access.check(req)) is not None:
            return refused
        p = self.hub.pipeline.status()
        now = time.monotonic()
        cams = []
        for c in p.cameras:
            ch = self.hub.channel(c.name)
            cams.append({
                "name": c.name, "state": c.state.value, "last_error": c.last_error or None,
                "decode_fps": _round(c.decode_fps), "processed_fps": _round(c.processed_fps),
                "decoded": c.decoded, "processed": c.processed, "dropped": c.dropped, "reconnects": c.reconnects,
                "width": c.width, "height": c.height, "analytics": c.analytics,
                "viewers": ch.viewers(now) if ch is not None else 0,
            })
        return Response.json(200, {"cameras": cams, "fps": self.hub.fps, "time": time.time()})

    def get_latest(self, req: Request) -> Response:
        if (refused := self.access.check(req)) is not None:
            return refused
        name = self._camera(req)
        if isinstance(name, Response):
            return name
        ch = self.hub.channel(name, create=True)
        assert ch is not None
        now = time.monotonic()
        ch.lease_until = now + LEASE_S
        pic = ch.picture
        if pic is None or now - pic.made > STALE_S:
            return Response(503, "no picture yet\n", headers={"Retry-After": "1", "Cache-Control": "no-store"})
        return Response(200, pic.jpeg, "image/jpeg", {"Cache-Control": "no-store", "X-Frame-Seq": str(pic.seq),
                                                       "X-Frame-Ts": f"{pic.ts:.6f}"})

    def get_stream(self, req: Request) -> Response:
        if (refused := self.access.check(req)) is not None:
            return refused
        name = self._camera(req)
        if isinstance(name, Response):
            return name
        if self.hub.total_streams() >= self.hub.max_viewers:
            log.info("view: %d streams open (view.max_viewers): refusing another", self.hub.max_viewers)
            return Response(503, "too many viewers\n", headers={"Retry-After": "5"})
        ch = self.hub.channel(name, create=True)
        assert ch is not None
        return Response(200, b"", f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                        {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
                        stream=self.hub.stream(ch))


class ViewCollector(Collector):
    """Viewers per camera, pictures encoded, encode time."""

    def __init__(self, hub: ViewHub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Any]:
        now = time.monotonic()
        viewers = GaugeMetricFamily("rtsp_worker_view_viewers", "Viewers of a camera's live view (open MJPEG "
                                    "streams, plus 1 while latest.jpg is polled).", labels=["camera"])
        encoded = CounterMetricFamily("rtsp_worker_view_frames_encoded", "Pictures drawn and JPEG-encoded for "
                                      "the view (once per frame, whatever the number of viewers).",
                                      labels=["camera"])
        for ch in self.hub.channels():
            viewers.add_metric([ch.name], ch.viewers(now))
            encoded.add_metric([ch.name], ch.encoded)
        yield viewers
        yield encoded
        yield SummaryMetricFamily("rtsp_worker_view_encode_seconds", "Time to draw, scale and encode one view "
                                  "picture.", count_value=self.hub.encode_count, sum_value=self.hub.encode_seconds)


def serve_view(http: HttpServer, pipeline: Pipeline, cfg: ViewConfig, access: Access, events: EventLog,
               registry: Any = None) -> ViewHub | None:
    """Registers the view's routes and metrics; None (nothing served) when `view.enabled` is false."""
    if not cfg.enabled:
        return None
    hub = ViewHub(pipeline, cfg, http.loop)
    ViewRoutes(http, hub, access, events)
    if registry is not None:
        registry.register(ViewCollector(hub))
    return hub


def _round(fps: float | None) -> float | None:
    return round(fps, 2) if fps is not None else None
