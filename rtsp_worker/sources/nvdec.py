"""NVDEC decoding with PyNvVideoCodec: PyAV packets in, NV12 CUDA tensors out.

PyAV keeps the demuxing (RTSP over TCP, timeouts, reconnects: PyNvVideoCodec's own demuxer can set none
of these); only the compressed packets go to PyNvVideoCodec's core decoder (`CreateDecoder` + `Decode`).
NVDEC's parser wants Annex-B access units, so packets from MP4-style containers (avcC/hvcC extradata,
length-prefixed NAL units) pass through FFmpeg's `*_mp4toannexb` bitstream filter first.

Decoded surfaces reach torch through DLPack (no host round trip) and are copied at once, because the
decoder reuses its output buffers on the next `Decode` call. The decoder runs in torch's CUDA context
(the device's primary context) on a stream of its own.

`AnnexBConverter` needs no GPU and is tested on the CPU; `NvdecDecoder` needs a GPU, a driver and
PyNvVideoCodec (the `gpu` extra), imported only when a decoder is built.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

import av
import av.bitstream
import torch

from rtsp_worker.devices import normalize_device, same_device
from rtsp_worker.sources.base import (
    SUPPORTED_CODECS,
    DecodedImage,
    DecodeError,
    UnsupportedCodec,
    colorimetry_from_tags,
)
from rtsp_worker.types import NV12

log = logging.getLogger(__name__)

# Pixel formats NVDEC turns into 8-bit NV12; others (10-bit, 4:2:2, 4:4:4) would come out as P016/YUV444.
NV12_SOURCE_FORMATS = ("yuv420p", "yuvj420p", "nv12")


def is_length_prefixed(extradata: bytes | None) -> bool:
    """True for avcC/hvcC configuration records (MP4, MKV): they start with configurationVersion 1,
    while Annex-B extradata starts with a 00 00 01 start code."""
    return bool(extradata) and extradata[0] == 1


class AnnexBConverter:
    """Turns one stream's packets into Annex-B access units for NVDEC.

    - avcC/hvcC extradata: FFmpeg's `h264_mp4toannexb` / `hevc_mp4toannexb` filter rewrites the length
      prefixes into start codes and puts the parameter sets in front of each key frame.
    - Annex-B already (RTSP, MPEG-TS, raw streams): packets pass unchanged; parameter sets that only
      exist in the extradata (RTSP's `sprop-parameter-sets`) are put in front of the first packet,
      since NVDEC never sees the extradata otherwise.
    """

    def __init__(self, stream: av.video.stream.VideoStream) -> None:
        ctx = stream.codec_context
        if ctx.name not in SUPPORTED_CODECS:
            raise UnsupportedCodec(
                f"codec {ctx.name!r} is not supported (supported: {', '.join(SUPPORTED_CODECS)})"
            )
        extradata = bytes(ctx.extradata or b"")
        self._bsf: av.bitstream.BitStreamFilterContext | None = None
        self._prefix = b""
        if is_length_prefixed(extradata):
            self._bsf = av.bitstream.BitStreamFilterContext(f"{ctx.name}_mp4toannexb", stream)
            self.mode = f"{ctx.name}_mp4toannexb"
        else:
            self._prefix = extradata
            self.mode = "passthrough"

    def convert(self, packet: av.Packet) -> list[av.Packet]:
        """Annex-B packets for one demuxed packet (none while a filter buffers, rarely several)."""
        if self._bsf is not None:
            return list(self._bsf.filter(packet))
        if self._prefix and packet.size:
            merged = av.Packet(self._prefix + bytes(packet))
            merged.pts, merged.dts = packet.pts, packet.dts
            if packet.time_base is not None:
                merged.time_base = packet.time_base
            self._prefix = b""
            return [merged]
        return [packet]

    def flush(self) -> list[av.Packet]:
        """Whatever the filter still holds at end of stream."""
        if self._bsf is None:
            return []
        try:
            return list(self._bsf.filter(None))
        except av.error.EOFError:
            return []


def nv_codec(nvc: Any, codec_name: str) -> Any:
    """PyNvVideoCodec's `cudaVideoCodec` member for an FFmpeg codec name."""
    member = {"h264": "H264", "hevc": "HEVC"}.get(codec_name)
    if member is None:
        raise UnsupportedCodec(f"codec {codec_name!r} is not supported by the NVDEC path")
    return getattr(nvc.cudaVideoCodec, member)


def decoder_caps(codec_name: str, device_index: int = 0) -> dict[str, int]:
    """NVDEC capabilities for 8-bit 4:2:0 `codec_name` on a GPU (`num_decoder_engines`, max sizes...)."""
    import PyNvVideoCodec as nvc

    chroma_420 = nvc.cudaVideoChromaFormat.__members__["420"]
    return dict(
        nvc.GetDecoderCaps(gpuid=device_index, codec=nv_codec(nvc, codec_name), chromaformat=chroma_420, bitdepth=8)
    )


def is_packet_error(nvc: Any, error: BaseException) -> bool:
    """True for PyNvVideoCodec's per-packet error (`PyNvVCException`), False for an unsupported stream
    (`PyNvVCExceptionUnsupported`) and for anything else (a CUDA failure, a bug: those end the connection)."""
    unsupported = getattr(nvc, "PyNvVCExceptionUnsupported", None)
    generic = getattr(nvc, "PyNvVCException", None)
    if isinstance(unsupported, type) and isinstance(error, unsupported):
        return False
    return isinstance(generic, type) and isinstance(error, generic)


def surface_images(frames: list[Any], device: torch.device, time_base: Any, tags: tuple[Any, Any],
                   nvc: Any = None) -> list[DecodedImage]:
    """Copies of PyNvVideoCodec's decoded surfaces as NV12 images on `device`.

    `time_base`: the stream's, or None while no packet carried a timestamp (the images get no pts); `tags`:
    the stream's (colorspace, color_range), read with each surface's own height; `nvc`: the PyNvVideoCodec
    module, named in the error for a surface on the wrong device. Needs no GPU: DLPack objects on the CPU work.
    """
    out = []
    for frame in frames:
        view = torch.from_dlpack(frame)  # the decoder's surface; torch hands __dlpack__ our stream
        if not same_device(view.device, device):
            # Older PyNvVideoCodec reported device 0 in __dlpack_device__ whatever GPU decoded: the
            # tensor would name the wrong device for memory on this one.
            raise RuntimeError(
                f"NVDEC on {device} returned a surface that DLPack places on {view.device}; "
                f"PyNvVideoCodec {getattr(nvc, '__version__', '?')} mislabels devices other than "
                "cuda:0: upgrade it (pip install 'rtsp-worker[gpu]') or decode on cuda:0"
            )
        if view.ndim == 3 and view.shape[-1] == 1:
            view = view[..., 0]
        if view.ndim != 2 or view.dtype != torch.uint8 or view.shape[0] % 3:
            raise RuntimeError(
                f"NVDEC returned a {view.dtype} surface of shape {list(view.shape)}, expected NV12 (H*3/2, W) uint8"
            )
        image = view.clone(memory_format=torch.contiguous_format)  # before the next Decode reuses it
        height, width = view.shape[0] * 2 // 3, view.shape[1]
        ts = getattr(frame, "timestamp", None)
        if ts is None and hasattr(frame, "getPTS"):  # versions without the `timestamp` attribute
            ts = frame.getPTS()
        pts = float(ts * time_base) if time_base and ts is not None else None
        out.append(DecodedImage(image, NV12, height, width, pts, colorimetry_from_tags(*tags, height)))
    return out


def decode_packet(decoder: Any, nvc: Any, packet_data: Any) -> list[Any]:
    """`decoder.Decode(packet_data)`: PyNvVideoCodec's frames for one packet; its errors on a bad packet
    become `DecodeError`.

    PyNvVideoCodec 2.2 raises `PyNvVCException` (pybind11-registered, an `Exception` subclass) when the
    parser or decoder refuses a packet, and `PyNvVCExceptionUnsupported` for a stream it cannot decode
    at all: the first is one bad frame (the camera counts it and goes on, as with FFmpeg's
    InvalidDataError), the second ends the connection as before.
    """
    try:
        return decoder.Decode(packet_data)
    except Exception as e:
        if not is_packet_error(nvc, e):
            raise
        raise DecodeError(f"NVDEC: {type(e).__name__}: {e}") from e


class _PrimaryContext:
    """Holds a reference on a device's primary CUDA context (the one torch uses) and knows its handle."""

    def __init__(self, device_index: int) -> None:
        self.handle = 0
        self._lib: Any = None
        self._dev = ctypes.c_int(0)
        try:
            lib = ctypes.CDLL("libcuda.so.1")
        except OSError as e:
            # PyNvVideoCodec documents 0 as "the device's primary context", so sharing still holds.
            log.debug("libcuda.so.1 not loadable (%s); passing context 0 (primary) to PyNvVideoCodec", e)
            return
        ctx = ctypes.c_void_p()
        if lib.cuInit(0) != 0 or lib.cuDeviceGet(ctypes.byref(self._dev), device_index) != 0:
            raise RuntimeError(f"cuda:{device_index}: cannot get the CUDA device from the driver")
        if lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), self._dev) != 0:
            raise RuntimeError(f"cuda:{device_index}: cannot retain the primary CUDA context")
        self._lib = lib
        self.handle = int(ctx.value or 0)

    def release(self) -> None:
        if self._lib is not None:
            self._lib.cuDevicePrimaryCtxRelease(self._dev)
            self._lib = None


class NvdecDecoder:
    """NVDEC decoding of one H.264/HEVC stream into NV12 (H*3/2, W) uint8 CUDA tensors.

    Each returned image is a private copy, complete when `decode`/`flush` returns (the decoder's stream
    is synchronized once per call that produced frames, in the decoder's thread), so another thread on
    another stream can read it directly. `low_latency` asks NVDEC for zero-frame output delay: only for
    streams without B-frames (NVIDIA's `DisplayDecodeLatencyType.LOW`).
    """

    name = "nvdec"

    def __init__(
        self, stream: av.video.stream.VideoStream, device: torch.device, *, low_latency: bool = False
    ) -> None:
        ctx = stream.codec_context
        if ctx.name not in SUPPORTED_CODECS:
            raise UnsupportedCodec(
                f"codec {ctx.name!r} is not supported (supported: {', '.join(SUPPORTED_CODECS)})"
            )
        if device.type != "cuda":
            raise ValueError(f"NVDEC needs a CUDA device, got {device}")
        pix_fmt = ctx.format.name if ctx.format is not None else None
        if pix_fmt is not None and pix_fmt not in NV12_SOURCE_FORMATS:
            # Not UnsupportedCodec: the CPU decoder handles these, so make_decoder falls back to it.
            raise ValueError(f"pixel format {pix_fmt!r} does not decode to 8-bit NV12 on NVDEC")

        import PyNvVideoCodec as nvc

        self._nvc = nvc
        self.device = normalize_device(device)  # `cuda` -> `cuda:<current>`: what the surfaces will report
        index = self.device.index
        self._converter = AnnexBConverter(stream)
        self._time_base = stream.time_base
        self._low_latency = low_latency
        self._seen_pts = False
        # The surfaces keep the stream's YUV values: preprocessing converts them with the stream's tags.
        # (the rule depends on the height, read from each decoded surface: a stream may not tell it at open)
        self._tags = (ctx.colorspace, ctx.color_range)
        self._stream = torch.cuda.Stream(device=self.device)
        self._context = _PrimaryContext(index)
        latency = nvc.DisplayDecodeLatencyType.LOW if low_latency else nvc.DisplayDecodeLatencyType.NATIVE
        try:
            self._decoder = nvc.CreateDecoder(
                gpuid=index,
                codec=nv_codec(nvc, ctx.name),
                cudacontext=self._context.handle,
                cudastream=self._stream.cuda_stream,
                usedevicememory=True,
                outputColorType=nvc.OutputColorType.NATIVE,
                latency=latency,
            )
        except Exception:
            self._context.release()
            raise
        log.debug("nvdec %s on %s: packets %s", ctx.name, self.device, self._converter.mode)

    def _packet_data(self, packet: av.Packet | None) -> Any:
        pd = self._nvc.PacketData()
        if packet is None:  # an empty packet tells the parser the stream ended: it drains its queue
            return pd
        # Zero-copy: NVDEC's parser reads the packet's own buffer during Decode(); `packet` outlives it.
        pd.bsl_data = packet.buffer_ptr
        pd.bsl = packet.size
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is not None:
            pd.pts = int(ts)
            self._seen_pts = True
        if self._low_latency:
            pd.decode_flag = self._nvc.VideoPacketFlag.ENDOFPICTURE
        return pd

    def _to_images(self, frames: list[Any]) -> list[DecodedImage]:
        return surface_images(frames, self.device, self._time_base if self._seen_pts else None,
                              getattr(self, "_tags", (None, None)), self._nvc)

    def _decode_packet(self, packet: av.Packet | None) -> list[Any]:
        return decode_packet(self._decoder, self._nvc, self._packet_data(packet))

    def _decode(self, packets: list[av.Packet | None]) -> list[DecodedImage]:
        images: list[DecodedImage] = []
        with torch.cuda.stream(self._stream):
            for packet in packets:
                if packet is not None and packet.size == 0:
                    continue
                images.extend(self._to_images(self._decode_packet(packet)))
        if images:
            self._stream.synchronize()  # in this camera's thread: consumers on other streams get finished copies
        return images

    def decode(self, packet: av.Packet) -> list[DecodedImage]:
        return self._decode(list(self._converter.convert(packet)))

    def flush(self) -> list[DecodedImage]:
        return self._decode([*self._converter.flush(), None])

    def close(self) -> None:
        self._decoder = None
        self._context.release()
