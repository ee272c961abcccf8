"""`rtsp-worker probe URL`: what a stream is, or the precise reason it cannot be read."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pydantic import ValidationError

from rtsp_worker.config import CameraConfig, SourceOptions
from rtsp_worker.redact import mask_url, register_url, scrub
from rtsp_worker.sources.camera import describe_error, open_container
from rtsp_worker.sources.decoders import CpuDecoder


@dataclass(frozen=True, slots=True)
class ProbeResult:
    url: str  # credentials masked
    codec: str = ""
    width: int = 0
    height: int = 0
    fps: float = 0.0
    open_s: float = 0.0
    first_frame_s: float = 0.0
    error: str = ""

    def __post_init__(self) -> None:
        # Every way out of a probe (error texts from FFmpeg, pydantic, the decoder) quotes the URL.
        object.__setattr__(self, "error", scrub(self.error))

    def describe(self) -> str:
        return (f"{self.url}: codec={self.codec} resolution={self.width}x{self.height} fps={self.fps:.2f} "
                f"open={self.open_s * 1e3:.0f}ms first_frame={self.first_frame_s * 1e3:.0f}ms")


def probe_stream(url: str, timeout: float = 10.0) -> ProbeResult:
    """Open `url` the way a camera thread does, decode one frame, and report."""
    import av

    register_url(url)
    safe = mask_url(url)
    try:
        cam = CameraConfig(name="probe", url=url)
    except ValidationError as e:
        return ProbeResult(url=safe, error=str(e.errors()[0]["msg"]).removeprefix("Value error, "))
    options = SourceOptions(open_timeout_s=timeout, read_timeout_s=timeout)
    t0 = time.monotonic()
    try:
        container = open_container(cam.url, options)
    except Exception as e:  # noqa: BLE001 - a probe reports every failure, never raises
        return ProbeResult(url=safe, error=describe_error(e))
    open_s = time.monotonic() - t0
    try:
        if not container.streams.video:
            return ProbeResult(url=safe, open_s=open_s, error="no video stream")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        rate = stream.average_rate or stream.guessed_rate
        base = ProbeResult(url=safe, codec=ctx.name, width=ctx.width, height=ctx.height,
                           fps=float(rate) if rate else 0.0, open_s=open_s)
        try:
            decoder = CpuDecoder(stream)
        except Exception as e:  # noqa: BLE001 - a probe reports every failure, never raises
            return _with(base, error=describe_error(e))
        for packet in container.demux(stream):
            if packet.size and decoder.decode(packet):
                return _with(base, first_frame_s=time.monotonic() - t0)
            if time.monotonic() - t0 > timeout:
                return _with(base, error=f"timeout: no frame decoded within {timeout:.0f} s")
        return _with(base, error="stream ended before a frame was decoded")
    except av.error.FFmpegError as e:
        return ProbeResult(url=safe, open_s=open_s, error=describe_error(e))
    finally:
        container.close()


def _with(r: ProbeResult, **kw: object) -> ProbeResult:
    from dataclasses import replace

    return replace(r, **kw)
