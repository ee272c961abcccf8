"""Shared pieces of the decoding tests: decode an in-memory clip with the CPU decoder."""

from __future__ import annotations

import io

import av

from rtsp_worker.sources.decoders import CpuDecoder


def decode_with(data: bytes, fmt: str) -> list:
    """Every frame of the clip `data`, decoded by `CpuDecoder` to pixel format `fmt` (flushed at the end)."""
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        dec = CpuDecoder(stream, pixel_format=fmt)
        out = [img for p in c.demux(stream) if p.size for img in dec.decode(p)]
        return out + dec.flush()
