"""The demuxed, still-compressed packets of a camera, handed to whoever records them (event clips).

A camera thread demuxes every packet with PyAV before it decodes it, on both decode paths (FFmpeg on the
CPU and NVDEC, which takes PyAV's packets). `PacketTaps` is where a recorder registers for a camera by name;
the camera thread looks its tap up once per connection and hands it each video packet before decoding it:
a copy of its bytes and its timestamps, no decode. `PacketRing` keeps the last seconds of them, from a
keyframe, bounded in bytes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What a muxer needs of the stream the packets come from (one connection)."""

    codec: str  # FFmpeg's codec name (h264, hevc, ...)
    width: int
    height: int
    time_base: Fraction
    extradata: bytes | None  # avcC / hvcC or Annex-B parameter sets, as the demuxer gave them
    template: Any = None  # the demuxer's av.VideoStream, for `add_stream_from_template` (this connection only)


@dataclass(frozen=True, slots=True)
class Packet:
    data: bytes
    pts: int | None  # in the stream's time base
    dts: int | None
    keyframe: bool
    wall: float  # time.time() when demuxed: the events' `ts` clock (frames get theirs right after decoding)


class PacketTap(Protocol):
    def open(self, info: StreamInfo, reason: str = "reconnected") -> None:
        """A new connection, the clip played again, or the resolution changed (`reason`): packets before it
        belong to another stream."""

    def packet(self, pkt: Packet) -> None:
        """One video packet, on the camera thread; must be quick."""

    def close(self) -> None:
        """The connection ended."""


class PacketTaps:
    """Recorders by camera name; read by the camera threads once per connection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taps: dict[str, PacketTap] = {}

    def attach(self, camera: str, tap: PacketTap) -> None:
        with self._lock:
            self._taps[camera] = tap

    def detach(self, camera: str, tap: PacketTap | None = None) -> None:
        with self._lock:
            if tap is None or self._taps.get(camera) is tap:
                self._taps.pop(camera, None)

    def get(self, camera: str) -> PacketTap | None:
        with self._lock:
            return self._taps.get(camera)


# One per process: camera names are unique within a worker (the evidence of one pipeline attaches and
# detaches its cameras' taps).
TAPS = PacketTaps()


def packet_of(av_packet: Any) -> Packet:
    """A copy of a PyAV packet's bytes and timestamps (the PyAV packet itself goes on to the decoder)."""
    return Packet(bytes(av_packet), av_packet.pts, av_packet.dts, bool(av_packet.is_keyframe), time.time())


class PacketRing:
    """The packets of the last `seconds`, starting at a keyframe, at most `max_bytes` in all.

    Trimmed one GOP at a time from the front: a GOP is dropped once the next keyframe is itself at least
    `seconds` old (so what is kept still reaches `seconds` back), or when the bytes exceed the bound (then
    the ring may hold less than `seconds`: `pre_roll` says how much). Not thread-safe: its owner locks.
    """

    def __init__(self, seconds: float, max_bytes: int) -> None:
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.packets: deque[Packet] = deque()
        self.keyframes: deque[int] = deque()  # absolute indexes of the keyframes held
        self._first = 0  # absolute index of packets[0]
        self.bytes = 0

    def clear(self) -> None:
        self._first += len(self.packets)
        self.packets.clear()
        self.keyframes.clear()
        self.bytes = 0

    def append(self, pkt: Packet) -> None:
        if not self.packets and not pkt.keyframe:
            return  # a ring always starts at a keyframe (nothing before it decodes)
        if pkt.keyframe:
            self.keyframes.append(self._first + len(self.packets))
        self.packets.append(pkt)
        self.bytes += len(pkt.data)
        self._trim(pkt.wall)

    def _drop_to(self, index: int) -> None:
        while self._first < index:
            self.bytes -= len(self.packets.popleft().data)
            self._first += 1
        while self.keyframes and self.keyframes[0] < self._first:
            self.keyframes.popleft()

    def _trim(self, now: float) -> None:
        # Age: drop the oldest GOP while the next one alone still reaches back `seconds`.
        while len(self.keyframes) >= 2 and self.packets[self.keyframes[1] - self._first].wall <= now - self.seconds:
            self._drop_to(self.keyframes[1])
        # Bytes: drop the oldest GOP; the newest one is kept however large (its head is needed)...
        while self.bytes > self.max_bytes and len(self.keyframes) >= 2:
            self._drop_to(self.keyframes[1])
        # ...unless it alone exceeds the bound: then nothing is kept until the next keyframe.
        if self.bytes > self.max_bytes:
            self.clear()

    def since(self, t: float) -> list[Packet]:
        """The packets from the last keyframe at or before `t` (or the oldest keyframe kept) to the newest."""
        start = self._first
        for k in self.keyframes:
            if self.packets[k - self._first].wall > t:
                break
            start = k
        return list(self.packets)[start - self._first:]

    def __iter__(self) -> Iterator[Packet]:
        return iter(self.packets)

    def __len__(self) -> int:
        return len(self.packets)

    def pre_roll(self, now: float) -> float:
        """Seconds from the oldest packet kept to `now`."""
        return max(0.0, now - self.packets[0].wall) if self.packets else 0.0
