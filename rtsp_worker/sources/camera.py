"""One thread per camera: PyAV demux (RTSP over TCP, bounded waits) -> decoder -> newest-frame slot.

A camera never blocks another: each has its own thread, its own reconnect loop with exponential backoff
and jitter, and hands frames over through a slot of size one that drops (and counts) stale frames.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import av
import torch

from rtsp_worker.config import CameraConfig, SourceOptions
from rtsp_worker.redact import mask_url, register_url, scrub, url_host
from rtsp_worker.sources.base import DecodeError
from rtsp_worker.sources.decoders import DecodedImage, UnsupportedCodec, VideoDecoder, make_decoder
from rtsp_worker.sources.packets import TAPS, PacketTap, StreamInfo, packet_of
from rtsp_worker.sources.state import CameraState, CameraStats, FrameSlot
from rtsp_worker.types import Frame

log = logging.getLogger(__name__)


class SkipPolicy:
    """Decides, every `window` decoded frames, whether a camera's decoder should skip non-reference frames.

    On when the pipeline took fewer than 1 in 4 of the frames decoded in the window (the rest were replaced in
    the slot unseen), off again when it took more than 1 in 2: a hysteresis, so it does not flap at the edge.
    Skipping never breaks the reference chain (only frames nothing refers to are skipped); streams without
    B-frames, the usual IP-camera setting, have nearly none to skip.
    """

    ON_BELOW, OFF_ABOVE = 0.25, 0.5

    def __init__(self, window: int = 30) -> None:
        self.window = window
        self._decoded = self._dropped = 0

    def update(self, decoded: int, dropped: int, skipping: bool) -> bool | None:
        """The new setting when it should change, else None."""
        n = decoded - self._decoded
        if n < self.window:
            return None
        taken = 1.0 - (dropped - self._dropped) / n
        self._decoded, self._dropped = decoded, dropped
        if not skipping and taken < self.ON_BELOW:
            return True
        if skipping and taken > self.OFF_ABOVE:
            return False
        return None


class StreamEnded(Exception):
    """A live stream's demux iteration ended: the server went away (FFmpeg raises nothing for that)."""


class Stalled(Exception):
    """Packets arrive but no frame was decoded for too long."""


class HostUnresolved(OSError):
    """The camera's host name does not resolve (FFmpeg only says "Input/output error")."""


class OpenTimeout(TimeoutError):
    """Connecting took the whole open timeout (FFmpeg then reports whatever the interruption broke)."""


def _is_timeout(exc: BaseException) -> bool:
    # PyAV's own timeouts interrupt FFmpeg, which then raises ExitError ("Immediate exit requested").
    return isinstance(exc, (TimeoutError, av.error.TimeoutError, av.error.ExitError, socket.timeout))


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
    if _is_timeout(exc):
        return f"timeout: {exc}" if isinstance(exc, OpenTimeout) else "timeout"
    if isinstance(exc, HostUnresolved):
        return f"host cannot be resolved: {exc}"
    if isinstance(exc, UnsupportedCodec):
        return f"unsupported codec: {exc}"
    if isinstance(exc, StreamEnded):
        return "stream ended (server closed the connection)"
    if isinstance(exc, Stalled):
        return f"stalled: {exc}"
    if isinstance(exc, av.error.InvalidDataError):
        return f"invalid data / decode error: {exc}"
    if isinstance(exc, (av.error.FileNotFoundError, FileNotFoundError)):
        return f"file not found: {getattr(exc, 'filename', '') or exc}"
    text = str(exc)
    if "resolve" in text.lower() or "name or service not known" in text.lower():
        return f"host cannot be resolved: {text}"
    return f"{type(exc).__name__}: {text}"


def _fatal(exc: BaseException) -> bool:
    """Errors that retrying cannot fix are still retried (a camera may be fixed remotely), but slower."""
    return isinstance(
        exc, (UnsupportedCodec, HostUnresolved, av.error.HTTPNotFoundError, av.error.HTTPUnauthorizedError)
    )


def _check_host(url: str) -> None:
    """Raise HostUnresolved when the URL's host does not resolve. Only called after a failed open."""
    host = url_host(url)  # not urlsplit: a password with '#' or '/' would be read as the host
    if not host:
        return
    try:
        socket.getaddrinfo(host, 554, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise HostUnresolved(f"{host}: {e.strerror}") from None


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
    t0 = time.monotonic()
    try:
        return av.open(url, options=opts, timeout=(options.open_timeout_s, options.read_timeout_s))
    except av.error.FFmpegError as e:
        # FFmpeg reports a failed name lookup as a bare EIO; say what it really is.
        if type(e) is av.error.OSError:
            _check_host(url)
        # A server that accepts the connection but never answers (hung) ends in whatever error the
        # interruption caused ("Invalid data", "Immediate exit"): call it what it is.
        # (The handshake's reads are bounded by the read timeout, the connection by the open timeout.)
        waited = time.monotonic() - t0
        bound = min(options.open_timeout_s, options.read_timeout_s)
        if waited >= 0.9 * bound and not isinstance(e, av.error.HTTPError):
            raise OpenTimeout(f"no answer within {waited:.1f} s") from e
        raise


def decode_counting(decoder: VideoDecoder, packet: av.Packet, stats: CameraStats, camera: str) -> list[DecodedImage]:
    """Decode one packet; a corrupt packet is counted in `stats.decode_errors` and skipped (the stall watchdog
    bounds a run of them). Any other error (a CUDA failure, a bug) is raised: it ends the connection."""
    try:
        return decoder.decode(packet)
    except (av.error.InvalidDataError, DecodeError) as e:  # FFmpeg's or NVDEC's: one bad packet
        stats.decode_errors += 1
        n = stats.decode_errors
        if n in (1, 10, 100) or n % 1000 == 0:
            log.warning("camera %s: decode error (%d so far): %s", camera, n, e)
        return []


class CameraSource(threading.Thread):
    """Decodes one camera into its slot until `stop` is set, reconnecting with backoff."""

    def __init__(
        self,
        row: int,
        cfg: CameraConfig,
        options: SourceOptions,
        slot: FrameSlot,
        stats: CameraStats,
        stop: threading.Event,
        device: torch.device,
        first_seq: int = 0,
    ) -> None:
        super().__init__(name=f"camera-{cfg.name}", daemon=True)
        self.row = row  # the camera's batch row (Frame.row)
        self.cfg = cfg
        self.options = options
        self.slot = slot
        self.stats = stats
        self.stop_event = stop
        self.device = device
        self._seq = first_seq  # a source that replaces another (new URL) goes on with its frame numbers
        self._conn_frames = 0  # frames decoded on the current connection
        self._rng = random.Random(hash(cfg.name))
        self._is_file = urlsplit(cfg.url).scheme == "file"
        self._skip = SkipPolicy() if options.skip_nonref else None
        self._decoder: VideoDecoder | None = None
        self._tap: PacketTap | None = None  # this connection's packet recorder, if any
        self._tap_info: StreamInfo | None = None
        register_url(cfg.url)  # FFmpeg's error texts quote the URL: its secret is scrubbed from them
        self.safe_url = mask_url(cfg.url)

    @property
    def next_seq(self) -> int:
        """The frame number the next decoded frame gets."""
        return self._seq

    def _open(self) -> av.container.InputContainer:
        return open_container(self.cfg.url, self.options)

    def _backoff(self) -> float:
        o = self.options
        n = max(0, self.stats.failures - 1)
        delay = min(o.backoff_max_s, o.backoff_initial_s * (2**n))
        return max(0.0, delay * (1 + self._rng.uniform(-o.backoff_jitter, o.backoff_jitter)))

    def run(self) -> None:
        first = True
        looped = False
        while not self.stop_event.is_set():
            self.stats.set_state(CameraState.CONNECTING)
            self._conn_frames = 0
            if not first and not looped:  # a file:// clip starting over is not a reconnect
                self.stats.reconnects += 1
            again, first, looped = looped, False, False
            try:
                self._stream_once(again)
                if self.stop_event.is_set():
                    break
                if self._is_file:
                    if not self.cfg.loop:
                        log.info("camera %s: end of file, not looping", self.cfg.name)
                        self.stats.set_state(CameraState.STOPPED)
                        return
                    self.stats.failures = 0
                    looped = True
                    continue  # loop the clip: reopen at once
                raise StreamEnded()
            except Exception as e:  # noqa: BLE001 - any failure of one camera stays inside its thread
                if self.stop_event.is_set():
                    break
                self.stats.failures += 1
                reason = describe_error(e)
                stalled = isinstance(e, Stalled) or (self._conn_frames > 0 and _is_timeout(e))
                if stalled:
                    # Counted once per episode (the watchdog may have flagged it already).
                    self.stats.mark_stalled(time.monotonic(), 0.0)
                    if not isinstance(e, Stalled):
                        silent = time.monotonic() - self.stats.last_frame_mono
                        reason = f"stalled: no frame for {silent:.1f} s (read timed out)"
                reason = scrub(reason)
                self.stats.last_error = reason
                limit = self.options.max_failures
                if limit is not None and self.stats.failures >= limit:
                    self.stats.set_state(CameraState.DISABLED)
                    log.error("camera %s (%s): %s; disabled after %d failures", self.cfg.name, self.safe_url,
                              reason, self.stats.failures)
                    return
                delay = self._backoff() * (4 if _fatal(e) else 1)
                delay = min(delay, self.options.backoff_max_s)
                log.warning("camera %s (%s): %s; reconnecting in %.1f s (attempt %d)", self.cfg.name,
                            self.safe_url, reason, delay, self.stats.failures)
                # The wait after a stall shows as STALLED (why the camera is down); after a failed connect
                # as BACKOFF.
                self.stats.set_state(CameraState.STALLED if stalled else CameraState.BACKOFF)
                self.stop_event.wait(delay)
        self.stats.set_state(CameraState.STOPPED)

    def check_stall(self, now: float | None = None) -> bool:
        """Watchdog, called from the inference thread: flag a streaming camera that went silent.

        The camera thread may be blocked in a read that only the read timeout ends; until then the
        camera shows as STALLED (and the batcher stops waiting for it). Returns True on a new stall.
        """
        silent = self.stats.mark_stalled(time.monotonic() if now is None else now, self.options.stall_timeout_s)
        if silent is None:
            return False
        log.warning("camera %s: stalled: no frame for %.1f s; reconnecting when the read times out (%.1f s)",
                    self.cfg.name, silent, self.options.read_timeout_s)
        return True

    def _stream_once(self, looped: bool = False) -> None:
        container = self._open()
        decoder: VideoDecoder | None = None
        tap: PacketTap | None = None
        try:
            if not container.streams.video:
                raise UnsupportedCodec("no video stream")
            stream = container.streams.video[0]
            decoder = make_decoder(self.cfg.decoder, stream, self.device, self.cfg.name)
            self._decoder = decoder
            self.stats.skipping_nonref = False  # a new decoder decodes every frame
            self.stats.codec = stream.codec_context.name
            self.stats.decoder = decoder.name
            ctx = stream.codec_context
            if looped:  # the clip starts over: no reconnect, and no INFO line every few seconds
                log.debug("camera %s: end of the clip, playing it again", self.cfg.name)
            else:
                what = "opened" if self.stats.reconnects == 0 and self.stats.decoded == 0 else "reconnected"
                log.info("camera %s (%s): %s, codec %s, %dx%d, decoder %s", self.cfg.name, self.safe_url, what,
                         ctx.name, ctx.width, ctx.height, decoder.name)
            tap = self._tap = TAPS.get(self.cfg.name)  # event clips record this camera's packets (evidence)
            if tap is not None:
                self._tap_info = StreamInfo(ctx.name, ctx.width, ctx.height, stream.time_base, ctx.extradata, stream)
                tap.open(self._tap_info)
            self._pump(container, stream, decoder, tap)
        finally:
            self._tap = None
            if tap is not None:
                tap.close()
            if decoder is not None:
                decoder.close()
            container.close()

    def _pump(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
              decoder: VideoDecoder, tap: PacketTap | None = None) -> None:
        pace = self._is_file and self.cfg.realtime
        wall0: float | None = None
        pts0 = 0.0
        last_frame = time.monotonic()
        stall = self.options.stall_timeout_s
        # Every stream is demuxed (not only the video one) so that a camera whose video froze while
        # its audio goes on still reaches the stall check below.
        for packet in container.demux():
            if self.stop_event.is_set():
                return
            video = packet.stream.index == stream.index and packet.size
            if video and tap is not None:
                tap.packet(packet_of(packet))  # before decoding: the compressed bytes, as demuxed
            images = self._decode(decoder, packet) if video else []
            now = time.monotonic()
            if not images:
                if now - last_frame > stall:
                    errors = f", {self.stats.decode_errors} decode errors so far" if self.stats.decode_errors else ""
                    raise Stalled(f"no frame decoded for {now - last_frame:.1f} s{errors}")
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

    def _decode(self, decoder: VideoDecoder, packet: av.Packet) -> list[DecodedImage]:
        return decode_counting(decoder, packet, self.stats, self.cfg.name)

    def _emit(self, img: DecodedImage) -> None:
        st = self.stats
        st.last_frame_mono = time.monotonic()
        self._conn_frames += 1
        if st.state != CameraState.STREAMING:
            if st.set_state(CameraState.STREAMING) == CameraState.STALLED:
                log.info("camera %s: frames resumed after a stall", self.cfg.name)
            st.failures = 0
            st.last_error = ""  # recovered: the error is history (the log has it)
        if (img.width, img.height) != (st.width, st.height):
            if st.width:
                log.warning("camera %s: resolution changed %dx%d -> %dx%d", self.cfg.name, st.width, st.height,
                            img.width, img.height)
                if self._tap is not None and self._tap_info is not None:  # an open clip ends; the ring starts over
                    self._tap.open(self._tap_info, reason="resolution")
            st.width, st.height = img.width, img.height
        frame = Frame(row=self.row, seq=self._seq, ts=time.time(), image=img.image, height=img.height,
                      width=img.width, pixel_format=img.pixel_format, pts=img.pts, colorimetry=img.colorimetry)
        self._seq += 1
        st.decoded += 1
        self.slot.put(frame)
        if self._skip is not None:
            self._adapt_skip()

    def _adapt_skip(self) -> None:
        st = self.stats
        change = self._skip.update(st.decoded, st.dropped, st.skipping_nonref)  # type: ignore[union-attr]
        skip = getattr(self._decoder, "skip_nonref", None)
        if change is None or skip is None:
            return
        skip(change)
        st.skipping_nonref = change
        if change:
            log.info("camera %s: the pipeline takes under 1 in 4 of its frames: skipping non-reference frames",
                     self.cfg.name)
        else:
            log.info("camera %s: the pipeline takes over 1 in 2 of its frames: decoding every frame", self.cfg.name)
