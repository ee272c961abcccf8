"""One thread per camera: PyAV demux (RTSP over TCP, bounded waits) -> decoder -> newest-frame slot.

A camera never blocks another: each has its own thread, its own reconnect loop with exponential backoff
and jitter, and hands frames over through a slot of size one that drops (and counts) stale frames.
"""

from __future__ import annotations

import enum
import logging
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import av
import torch

from rtsp_worker.config import CameraConfig, SourceOptions, mask_url
from rtsp_worker.sources.decoders import UnsupportedCodec, VideoDecoder, make_decoder
from rtsp_worker.types import Frame

log = logging.getLogger(__name__)


class CameraState(str, enum.Enum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    STALLED = "stalled"
    BACKOFF = "backoff"
    DISABLED = "disabled"
    STOPPED = "stopped"


STATE_CODES = {s: i for i, s in enumerate(CameraState)}  # numeric values for metrics


@dataclass
class CameraStats:
    """Counters a camera thread updates and the pipeline reads (ints: atomic enough under the GIL)."""

    decoded: int = 0  # frames decoded
    dropped: int = 0  # frames replaced in the slot before inference took them
    reconnects: int = 0  # connections (re)opened after the first
    failures: int = 0  # consecutive failed connects
    processed: int = 0  # frames that came out of the pipeline (updated by the pipeline)
    state: CameraState = CameraState.CONNECTING
    last_error: str = ""
    last_frame_wall: float = 0.0
    width: int = 0
    height: int = 0
    codec: str = ""
    decoder: str = ""


class FrameSlot:
    """Holds the newest frame of one camera. `put` replaces an untaken frame and counts it as dropped."""

    def __init__(self, cond: threading.Condition, stats: CameraStats) -> None:
        self._cond = cond
        self._stats = stats
        self._frame: Frame | None = None

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self._frame is not None:
                self._stats.dropped += 1
            self._frame = frame
            self._cond.notify_all()

    def peek(self) -> Frame | None:
        return self._frame

    def take(self) -> Frame | None:
        """Caller holds the condition's lock."""
        frame, self._frame = self._frame, None
        return frame


class StreamEnded(Exception):
    """A live stream's demux iteration ended: the server went away (FFmpeg raises nothing for that)."""


class Stalled(Exception):
    """Packets arrive but no frame was decoded for too long."""


def describe_error(exc: BaseException) -> str:
    """One short reason an operator can act on."""
    if isinstance(exc, av.error.HTTPUnauthorizedError):
        return "401 unauthorized (check credentials)"
    if isinstance(exc, av.error.HTTPNotFoundError):
        return "404 not found (check the stream path)"
    if isinstance(exc, av.error.HTTPForbiddenError):
        return "403 forbidden"
    if isinstance(exc, (ConnectionRefusedError, av.error.ConnectionRefusedError)):
        return "connection refused"
    if isinstance(exc, (TimeoutError, av.error.TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(exc, UnsupportedCodec):
        return f"unsupported codec: {exc}"
    if isinstance(exc, StreamEnded):
        return "stream ended (server closed the connection)"
    if isinstance(exc, Stalled):
        return f"stalled: {exc}"
    if isinstance(exc, av.error.InvalidDataError):
        return f"invalid data / decode error: {exc}"
    if isinstance(exc, av.error.FileNotFoundError) or isinstance(exc, FileNotFoundError):
        return f"file not found: {getattr(exc, 'filename', '') or exc}"
    text = str(exc)
    if "resolve" in text.lower() or "name or service not known" in text.lower():
        return f"host cannot be resolved: {text}"
    return f"{type(exc).__name__}: {text}"


def _fatal(exc: BaseException) -> bool:
    """Errors that retrying cannot fix are still retried (a camera may be fixed remotely), but slower."""
    return isinstance(exc, (UnsupportedCodec, av.error.HTTPNotFoundError, av.error.HTTPUnauthorizedError))


def open_container(url: str, options: SourceOptions) -> av.container.InputContainer:
    """Open a camera URL with bounded waits: RTSP over TCP, socket timeout, short probing."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        path = unquote(parts.netloc + parts.path)
        if not Path(path).exists():
            raise FileNotFoundError(path)
        return av.open(path)
    opts = {
        "rtsp_transport": "tcp",
        # rtsp demuxer socket timeout (microseconds): the only option that bounds a frozen server.
        "timeout": str(int(options.read_timeout_s * 1e6)),
        "analyzeduration": "500000",
        "probesize": "500000",
    }
    return av.open(url, options=opts, timeout=(options.open_timeout_s, options.read_timeout_s))


class CameraSource(threading.Thread):
    """Decodes one camera into its slot until `stop` is set, reconnecting with backoff."""

    def __init__(
        self,
        index: int,
        cfg: CameraConfig,
        options: SourceOptions,
        slot: FrameSlot,
        stats: CameraStats,
        stop: threading.Event,
        device: torch.device,
    ) -> None:
        super().__init__(name=f"camera-{cfg.name}", daemon=True)
        self.index = index
        self.cfg = cfg
        self.options = options
        self.slot = slot
        self.stats = stats
        self.stop_event = stop
        self.device = device
        self._seq = 0
        self._rng = random.Random(hash(cfg.name))
        self._is_file = urlsplit(cfg.url).scheme == "file"
        self.safe_url = mask_url(cfg.url)

    def _open(self) -> av.container.InputContainer:
        return open_container(self.cfg.url, self.options)

    def _backoff(self) -> float:
        o = self.options
        n = max(0, self.stats.failures - 1)
        delay = min(o.backoff_max_s, o.backoff_initial_s * (2**n))
        return max(0.0, delay * (1 + self._rng.uniform(-o.backoff_jitter, o.backoff_jitter)))

    def run(self) -> None:
        first = True
        while not self.stop_event.is_set():
            self.stats.state = CameraState.CONNECTING
            if not first:
                self.stats.reconnects += 1
            first = False
            try:
                self._stream_once()
                if self.stop_event.is_set():
                    break
                if self._is_file:
                    if not self.cfg.loop:
                        log.info("camera %s: end of file, not looping", self.cfg.name)
                        self.stats.state = CameraState.STOPPED
                        return
                    self.stats.failures = 0
                    continue  # loop the clip: reopen at once
                raise StreamEnded()
            except Exception as e:  # any failure of one camera stays inside its thread
                if self.stop_event.is_set():
                    break
                self.stats.failures += 1
                reason = describe_error(e)
                self.stats.last_error = reason
                limit = self.options.max_failures
                if limit is not None and self.stats.failures >= limit:
                    self.stats.state = CameraState.DISABLED
                    log.error("camera %s (%s): %s; disabled after %d failures", self.cfg.name, self.safe_url,
                              reason, self.stats.failures)
                    return
                delay = self._backoff() * (4 if _fatal(e) else 1)
                delay = min(delay, self.options.backoff_max_s)
                log.warning("camera %s (%s): %s; reconnecting in %.1f s (attempt %d)", self.cfg.name,
                            self.safe_url, reason, delay, self.stats.failures)
                self.stats.state = CameraState.BACKOFF
                self.stop_event.wait(delay)
        self.stats.state = CameraState.STOPPED

    def _stream_once(self) -> None:
        container = self._open()
        decoder: VideoDecoder | None = None
        try:
            if not container.streams.video:
                raise UnsupportedCodec("no video stream")
            stream = container.streams.video[0]
            decoder = make_decoder(self.cfg.decoder, stream, self.device, self.cfg.name)
            self.stats.codec = stream.codec_context.name
            self.stats.decoder = decoder.name
            if self.stats.reconnects == 0 and self.stats.decoded == 0:
                log.info("camera %s (%s): opened, codec %s, %dx%d, decoder %s", self.cfg.name, self.safe_url,
                         stream.codec_context.name, stream.codec_context.width, stream.codec_context.height,
                         decoder.name)
            else:
                log.info("camera %s: reconnected", self.cfg.name)
            self._pump(container, stream, decoder)
        finally:
            if decoder is not None:
                decoder.close()
            container.close()

    def _pump(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
              decoder: VideoDecoder) -> None:
        pace = self._is_file and self.cfg.realtime
        wall0: float | None = None
        pts0 = 0.0
        last_frame = time.monotonic()
        stall = self.options.stall_timeout_s
        for packet in container.demux(stream):
            if self.stop_event.is_set():
                return
            images = decoder.decode(packet) if packet.size else []
            now = time.monotonic()
            if not images:
                if now - last_frame > stall:
                    raise Stalled(f"no frame decoded for {now - last_frame:.1f} s")
                continue
            last_frame = now
            for img in images:
                if pace and img.pts is not None:
                    if wall0 is None:
                        wall0, pts0 = now, img.pts
                    delay = wall0 + (img.pts - pts0) - time.monotonic()
                    if delay > 0 and self.stop_event.wait(delay):
                        return
                self._emit(img)
        # End of demux: a file ended (loop) or a live server went away (the caller decides).

    def _emit(self, img) -> None:  # noqa: ANN001 - DecodedImage
        st = self.stats
        if st.state != CameraState.STREAMING:
            st.state = CameraState.STREAMING
            st.failures = 0
        if (img.width, img.height) != (st.width, st.height):
            if st.width:
                log.warning("camera %s: resolution changed %dx%d -> %dx%d", self.cfg.name, st.width, st.height,
                            img.width, img.height)
            st.width, st.height = img.width, img.height
        frame = Frame(camera=self.index, seq=self._seq, ts=time.time(), image=img.image, height=img.height,
                      width=img.width, pixel_format=img.pixel_format, pts=img.pts)
        self._seq += 1
        st.decoded += 1
        st.last_frame_wall = frame.ts
        self.slot.put(frame)
