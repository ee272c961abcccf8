"""Video decoders behind one protocol: compressed packets from the PyAV demuxer in, frames out.

Demuxing always stays in PyAV (RTSP over TCP, bounded waits, reconnects); only the decoding step
changes: FFmpeg on the CPU (`CpuDecoder`) or NVDEC on the GPU (`rtsp_worker.sources.nvdec`).
"""

from __future__ import annotations

import logging

import av
import torch

from rtsp_worker.sources.base import (
    SUPPORTED_CODECS,
    DecodedImage,
    UnsupportedCodec,
    VideoDecoder,
    colorimetry_from_tags,
    swscale_colorspace,
)
from rtsp_worker.types import NATIVE, NV12, RGB

log = logging.getLogger(__name__)


class CpuDecoder:
    """FFmpeg (PyAV) decoding on the CPU; the decode call releases the GIL.

    Frames come out as FFmpeg decoded them (`native`: the av.VideoFrame itself, converted later only if a
    batch takes it, see `rtsp_worker.types.NATIVE`); `pixel_format="rgb24"` converts each frame at once (tools
    that want pixels), `"nv12"` gives NVDEC's layout (the GPU path's parity checks and its simulation on a CPU).
    """

    name = "cpu"

    def __init__(self, stream: av.video.stream.VideoStream, threads: int = 1, pixel_format: str = NATIVE) -> None:
        if pixel_format not in (NATIVE, "rgb24", "nv12"):
            raise ValueError(f"pixel_format must be {NATIVE}, rgb24 or nv12, not {pixel_format!r}")
        if stream.codec_context.name not in SUPPORTED_CODECS:
            raise UnsupportedCodec(
                f"codec {stream.codec_context.name!r} is not supported (supported: {', '.join(SUPPORTED_CODECS)})"
            )
        self.device = torch.device("cpu")
        self._ctx = av.CodecContext.create(stream.codec_context.name, "r")
        if stream.codec_context.extradata:
            self._ctx.extradata = stream.codec_context.extradata
        self._ctx.thread_count = threads
        self._time_base = stream.time_base
        self._format = pixel_format

    def _convert(self, frames: list[av.VideoFrame]) -> list[DecodedImage]:
        out = []
        tb = self._time_base
        for f in frames:
            pts = float(f.pts * tb) if f.pts is not None and tb else None
            # FFmpeg's conversion follows the frame's colour tags; for an untagged HD frame it is told BT.709
            # (colorimetry_from_tags), which NV12 frames carry along to the GPU path's conversion.
            color = colorimetry_from_tags(f.colorspace, f.color_range, f.height)
            if self._format == NATIVE:  # converted later, only if a batch takes it (preprocess.native_to_hwc)
                out.append(DecodedImage(f, NATIVE, f.height, f.width, pts, color))
                continue
            # NV12 keeps the stream's YUV as it is (no matrix): only the RGB conversion is told the colorspace.
            src = swscale_colorspace(f, color) if self._format == "rgb24" else None
            arr = torch.from_numpy(f.to_ndarray(format=self._format, **({"src_colorspace": src} if src else {})))
            out.append(DecodedImage(arr, RGB if self._format == "rgb24" else NV12, f.height, f.width, pts, color))
        return out

    def decode(self, packet: av.Packet) -> list[DecodedImage]:
        return self._convert(self._ctx.decode(packet))

    def skip_nonref(self, on: bool) -> None:
        """Skip (on) or decode (off) frames no other frame refers to; takes effect from the next packet."""
        self._ctx.skip_frame = "NONREF" if on else "DEFAULT"

    def flush(self) -> list[DecodedImage]:
        try:
            return self._convert(self._ctx.decode(None))
        except av.error.EOFError:
            return []

    def close(self) -> None:
        self._ctx = None  # type: ignore[assignment]


def nvdec_unavailable_reason() -> str | None:
    """None when NVDEC decoding can be used here, else why not (for the fallback log line)."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        import PyNvVideoCodec  # noqa: F401
    except Exception as e:  # noqa: BLE001 - RuntimeError without a driver, ImportError without the package
        return f"PyNvVideoCodec unavailable: {type(e).__name__}: {e}"
    return None


def make_decoder(kind: str, stream: av.video.stream.VideoStream, device: torch.device, camera: str) -> VideoDecoder:
    """`kind` is the camera's `decoder:` (auto | nvdec | cpu)."""
    if kind == "cpu" or (kind == "auto" and device.type != "cuda"):
        return CpuDecoder(stream)
    reason = nvdec_unavailable_reason()
    if reason is None:
        from rtsp_worker.sources.nvdec import NvdecDecoder

        try:
            # Zero-frame output delay where no frame is reordered; B-frame streams keep NVDEC's native
            # delay, which their display order needs.
            return NvdecDecoder(stream, device, low_latency=not stream.codec_context.has_b_frames)
        except UnsupportedCodec:
            raise
        except Exception as e:  # noqa: BLE001 - any failure to create NVDEC falls back to the CPU decoder
            reason = f"NVDEC decoder creation failed: {type(e).__name__}: {e}"
    if kind == "nvdec":
        log.warning("camera %s: decoder nvdec requested but %s; falling back to CPU decoding", camera, reason)
    else:
        log.info("camera %s: using CPU decoding (%s)", camera, reason)
    return CpuDecoder(stream)
