"""Event clips: a camera's packet ring plus the packets until `post_s` after the last matching event,
remuxed into a fragmented MP4 (no re-encoding), so that a crash leaves a playable file.

`ClipRecorder` is the camera's `PacketTap`: the camera thread hands it every video packet; the finish thread
(`trigger`, `expire`) and the inference thread (`finalize` on removal or stop) reach it too, under its lock.
Muxing writes a few hundred bytes to a few hundred KB per packet into the page cache: cheap next to decoding.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import av

from rtsp_worker.config.evidence import ClipsConfig
from rtsp_worker.evidence.disk import DiskGuard, EvidenceCounters
from rtsp_worker.sources.packets import Packet, PacketRing, StreamInfo

log = logging.getLogger(__name__)

# Codecs FFmpeg's MP4 muxer takes as they come from a camera.
MP4_CODECS = frozenset({"h264", "hevc", "mpeg4", "av1", "vp9", "mjpeg"})
MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"
RING_SLACK_S = 3.0  # the ring keeps this much more than pre_s: events reach it after decode and batching


def clip_name(ts: float, event_id: str) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(ts)) + f"_{event_id}.mp4"


@dataclass(slots=True)
class ClipRecord:
    """A finalized clip, for its `clip` event (times in the events' `ts` clock, paths relative to output.dir)."""

    camera: str
    path: str
    start_ts: float
    end_ts: float
    events: list[str]
    pre_roll_s: float  # seconds of the clip before its first event
    reason: str  # post_s, reconnected, removed, stopped, disk_full, ...
    bytes: int


@dataclass(slots=True)
class _Open:
    file: Path
    rel: str
    out: av.container.OutputContainer
    stream: av.video.stream.VideoStream
    start_ts: float
    first_event_ts: float
    until: float
    events: list[str] = field(default_factory=list)
    dts0: int | None = None
    last_dts: int | None = None
    end_ts: float = 0.0


class ClipRecorder:
    """One camera's packet ring and the clip it writes (at most one open: close events extend it)."""

    def __init__(self, camera: str, root: Path, cfg: ClipsConfig, guard: DiskGuard, counters: EvidenceCounters,
                 done: Callable[[ClipRecord], None]) -> None:
        self.camera = camera
        self.root = root  # output.dir
        self.cfg = cfg  # replaced on reload: applies to the next clip
        self.guard = guard
        self.counters = counters
        self.done = done  # a finalized clip's record (any thread)
        self.lock = threading.Lock()
        self.ring = PacketRing(cfg.pre_s + RING_SLACK_S, cfg.buffer_bytes)
        self.info: StreamInfo | None = None
        self.clip: _Open | None = None
        self._warned_codec = False

    @property
    def folder(self) -> Path:
        return self.root / self.camera / "clips"

    def reconfigure(self, cfg: ClipsConfig) -> None:
        """A reload: the next clip follows `cfg` (an open one keeps its post_s); the ring resizes now."""
        with self.lock:
            self.cfg = cfg
            self.ring.seconds, self.ring.max_bytes = cfg.pre_s + RING_SLACK_S, cfg.buffer_bytes

    # -- PacketTap (camera thread) ----------------------------------------------------------------------
    def open(self, info: StreamInfo, reason: str = "reconnected") -> None:
        with self.lock:
            self._finalize(reason)
            self.ring.clear()
            self.info = info
            self.ring.seconds, self.ring.max_bytes = self.cfg.pre_s + RING_SLACK_S, self.cfg.buffer_bytes
            if info.codec not in MP4_CODECS and not self._warned_codec:
                self._warned_codec = True
                log.warning("camera %s: codec %s cannot go into an MP4 without re-encoding: no event clips for "
                            "this camera", self.camera, info.codec)

    def packet(self, pkt: Packet) -> None:
        with self.lock:
            if self.info is None or self.info.codec not in MP4_CODECS:
                return
            self.ring.append(pkt)
            clip = self.clip
            if clip is not None:
                self._write(clip, pkt)
                if self.clip is not None and pkt.wall >= clip.until:
                    self._finalize("post_s")

    def close(self) -> None:
        # The connection ended (a stop, a stall, the file's end). An open clip stays open: the next
        # connection (`open`: reconnected), its post_s (`expire`), a removal or the stop finalizes it, with
        # the reason that is true then (a removal stops the source before the pipeline detaches the camera).
        with self.lock:
            self.info = None
            self.ring.clear()

    # -- events (finish thread) -------------------------------------------------------------------------
    def trigger(self, event_id: str, ts: float) -> dict | None:
        """A matching event at `ts`: extend the open clip or start one. Its `clip` field, or None (no clip)."""
        with self.lock:
            until = ts + self.cfg.post_s
            if self.clip is not None:
                self.clip.until = max(self.clip.until, until)
                self.clip.events.append(event_id)
                return {"path": self.clip.rel, "start_ts": round(self.clip.start_ts, 6)}
            info = self.info
            if info is None:
                self.counters.drop("no_stream")
                return None
            if info.codec not in MP4_CODECS:
                self.counters.drop("codec")
                return None
            if not self.guard.ok():
                self.counters.drop("disk_full")
                return None
            packets = self.ring.since(ts - self.cfg.pre_s)
            if not packets:
                self.counters.drop("no_keyframe")  # the stream's first keyframe has not come yet
                return None
            name = clip_name(packets[0].wall, event_id)
            rel = f"{self.camera}/clips/{name}"
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                out = av.open(str(self.root / rel), "w", format="mp4",
                              options={"movflags": MOVFLAGS, "flush_packets": "1"})
                stream = out.add_stream_from_template(info.template)
                stream.time_base = info.time_base
            except (OSError, av.error.FFmpegError, ValueError) as e:
                self._failed(e, None)
                return None
            clip = _Open(self.root / rel, rel, out, stream, packets[0].wall, ts, until, [event_id])
            self.clip = clip
            for p in packets:
                self._write(clip, p)
                if self.clip is None:  # a write failed
                    return None
            return {"path": rel, "start_ts": round(clip.start_ts, 6)}

    def expire(self, now: float) -> None:
        """Finalize a clip whose `post_s` passed while no packet came (a silent camera)."""
        with self.lock:
            if self.clip is not None and now >= self.clip.until + 1.0:
                self._finalize("post_s")

    def finalize(self, reason: str) -> None:
        with self.lock:
            self._finalize(reason)

    # -- under the lock -----------------------------------------------------------------------------------
    def _write(self, clip: _Open, pkt: Packet) -> None:
        dts = pkt.dts if pkt.dts is not None else pkt.pts
        if dts is None:
            return  # no timestamp at all: cannot be placed (rare: a parser's leftover)
        if clip.dts0 is None:
            clip.dts0 = dts
        if clip.last_dts is not None and dts <= clip.last_dts:
            return  # the muxer wants increasing dts; a repeated or reordered one is dropped
        p = av.Packet(pkt.data)
        p.dts = dts - clip.dts0
        p.pts = (pkt.pts if pkt.pts is not None else dts) - clip.dts0
        p.time_base = clip.stream.time_base
        p.is_keyframe = pkt.keyframe
        p.stream = clip.stream
        try:
            clip.out.mux(p)
        except (OSError, av.error.FFmpegError, ValueError) as e:
            self._failed(e, clip)
            return
        clip.last_dts = dts
        clip.end_ts = pkt.wall

    def _failed(self, e: Exception, clip: _Open | None) -> None:
        self.guard.failed(e)
        self.counters.drop("disk_full" if self.guard.is_space_error(e) else "write_error")
        if clip is not None:
            self._finalize("write_error")

    def _finalize(self, reason: str) -> None:
        clip, self.clip = self.clip, None
        if clip is None:
            return
        try:
            clip.out.close()
        except (OSError, av.error.FFmpegError, ValueError) as e:
            self.guard.failed(e)
            reason = "write_error"
        size = clip.file.stat().st_size if clip.file.exists() else 0
        if reason != "write_error":
            self.counters.clip_written(size)
            self.guard.succeeded()
        self.done(ClipRecord(self.camera, clip.rel, clip.start_ts, clip.end_ts or clip.start_ts, clip.events,
                             max(0.0, clip.first_event_ts - clip.start_ts), reason, size))
