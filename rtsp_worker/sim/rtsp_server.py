#!/usr/bin/python3
"""A real RTSP server for tests and demos (GStreamer's GstRtspServer), run as a standalone script.

It imports only the standard library and `gi`, because `gi` exists only under Debian's /usr/bin/python3;
the worker's own code starts it as a child process through `rtsp_worker.sim.devserver.RtspServerProcess`.

    /usr/bin/python3 rtsp_worker/sim/rtsp_server.py --port 0 --mount cam0=file:clip.mp4 \
        --mount live=testsrc:640x360@15 --mount jpeg=mjpeg:320x240@10 [--auth user:pass]

Mount specs:
  file:/path/clip.mp4       replay an H.264/HEVC MP4 in a loop at its native rate, without re-encoding
  testsrc:WxH@FPS           live videotestsrc, x264 (zerolatency, ultrafast, a key frame every second)
  mjpeg:WxH@FPS             live Motion-JPEG stream (a codec the worker does not decode)

Prints exactly one line `READY port=<N>` on stdout once it listens on 127.0.0.1:<N>; exits 0 on
SIGTERM/SIGINT, 2 on bad arguments, 1 when it cannot start (message on stderr).
"""

from __future__ import annotations

import os
import sys

# Run as a script, Python puts this file's folder (the package) first on sys.path, where our `types.py`
# would shadow the standard library's; drop it before importing anything else.
_HERE = os.path.dirname(os.path.realpath(__file__))
sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.curdir) != _HERE]

import argparse
import re
import signal
import threading
from dataclasses import dataclass

_SIZE_RATE = re.compile(r"^(\d+)x(\d+)@(\d+)$")
_MOUNT_NAME = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
# Byte-stream H.264/HEVC parsed into access units: what the RTP payloaders want, one buffer per frame.
_PARSED = {
    "video/x-h264": ("h264parse", "rtph264pay"),
    "video/x-h265": ("h265parse", "rtph265pay"),
}


class StartError(RuntimeError):
    """The server cannot start (bad clip, missing plugin, port in use); the message says which."""


@dataclass(frozen=True, slots=True)
class MountSpec:
    name: str
    kind: str  # "file", "testsrc" or "mjpeg"
    path: str = ""
    width: int = 0
    height: int = 0
    fps: int = 0


def parse_mount(text: str) -> MountSpec:
    """Parse `NAME=SPEC`; raises ValueError with a one-line message naming the bad part."""
    name, sep, spec = text.partition("=")
    if not sep or not name or not spec:
        raise ValueError(f"--mount {text!r}: expected NAME=SPEC")
    if not _MOUNT_NAME.match(name):
        raise ValueError(
            f"--mount {text!r}: mount name {name!r} may use only letters, digits, '_', '-', '.', '/'"
        )
    kind, sep, arg = spec.partition(":")
    if kind == "file" and sep and arg:
        return MountSpec(name, kind, path=arg)
    if kind in ("testsrc", "mjpeg") and sep:
        m = _SIZE_RATE.match(arg)
        if not m:
            raise ValueError(f"--mount {text!r}: expected {kind}:WIDTHxHEIGHT@FPS, e.g. {kind}:640x360@15")
        w, h, fps = (int(g) for g in m.groups())
        if not (16 <= w <= 4096 and 16 <= h <= 4096 and 1 <= fps <= 120) or w % 2 or h % 2:
            raise ValueError(f"--mount {text!r}: size must be even, 16..4096, fps 1..120")
        if kind == "mjpeg" and (w > 2040 or h > 2040):
            raise ValueError(f"--mount {text!r}: RTP/JPEG allows at most 2040x2040")
        return MountSpec(name, kind, width=w, height=h, fps=fps)
    raise ValueError(f"--mount {text!r}: SPEC must be file:PATH, testsrc:WxH@FPS or mjpeg:WxH@FPS")


def _load_gi():
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    return GLib, Gst, GstRtspServer


@dataclass(frozen=True, slots=True)
class _AccessUnit:
    """One demuxed frame. Kept as bytes + times: a fresh Gst.Buffer is made per push, because Python's
    `Gst.Buffer.copy()` only adds a reference, so retiming it would rewrite the stored frame."""

    data: bytes
    pts: int | None  # ns
    dts: int | None
    duration: int | None
    delta: bool  # not a key frame

    @classmethod
    def from_buffer(cls, Gst, buf) -> _AccessUnit:
        ok, info = buf.map(Gst.MapFlags.READ)
        if not ok:
            raise StartError("cannot map a demuxed buffer")
        try:
            data = bytes(info.data)
        finally:
            buf.unmap(info)

        def opt(t: int) -> int | None:
            return None if t == Gst.CLOCK_TIME_NONE else t

        delta = bool(buf.get_flags() & Gst.BufferFlags.DELTA_UNIT)
        return cls(data, opt(buf.pts), opt(buf.dts), opt(buf.duration), delta)


class _Clip:
    """An MP4's video track demuxed once into memory, as parsed access units with their timestamps."""

    def __init__(self, Gst, path: str) -> None:
        self.frames: list[_AccessUnit] = []  # in decode order
        self.caps = None
        self.parser = self.payloader = ""
        self._Gst = Gst
        self._demux(path)
        pts = [f.pts for f in self.frames if f.pts is not None]
        if not pts:
            raise StartError(f"file {path!r}: no timestamped video frames")
        # t0 maps to "now" at the start of a replay; the earliest decode time, so that no shifted
        # timestamp falls before it (with B-frames the first DTS precedes the first PTS).
        self.t0 = min(pts + [f.dts for f in self.frames if f.dts is not None])
        # Loop period: the span of presentation times plus one frame, keeping the native spacing.
        self.period = max(pts) - min(pts) + self._frame_duration()

    def _frame_duration(self) -> int:
        Gst = self._Gst
        durs = [f.duration for f in self.frames if f.duration is not None and f.duration > 0]
        if durs:
            return min(durs)
        ok, num, den = self.caps.get_structure(0).get_fraction("framerate")
        return Gst.SECOND * den // num if ok and num > 0 else Gst.SECOND // 25

    def _demux(self, path: str) -> None:
        Gst = self._Gst
        pipe = Gst.Pipeline.new("demux")
        src = Gst.ElementFactory.make("filesrc")
        demux = Gst.ElementFactory.make("qtdemux")
        sink = Gst.ElementFactory.make("appsink")
        if not (src and demux and sink):
            raise StartError(
                "GStreamer elements filesrc/qtdemux/appsink are missing (gstreamer1.0-plugins-good)"
            )
        src.set_property("location", path)
        sink.set_property("sync", False)
        for e in (src, demux, sink):
            pipe.add(e)
        src.link(demux)
        linked: list[str] = []

        def on_pad(_demux, pad) -> None:
            caps = pad.get_current_caps() or pad.query_caps(None)
            kind = caps.get_structure(0).get_name()
            if linked or kind not in _PARSED:
                return
            parser_name, self.payloader = _PARSED[kind]
            parser = Gst.ElementFactory.make(parser_name)
            # config-interval=-1 repeats SPS/PPS before every key frame, so late joiners can start there.
            # (Only the parser does it: rtph264pay's config-interval inserts them before *each* IDR slice,
            # and FFmpeg then splits a multi-slice key frame into two frames.)
            parser.set_property("config-interval", -1)
            capsf = Gst.ElementFactory.make("capsfilter")
            capsf.set_property("caps", Gst.Caps.from_string(f"{kind},stream-format=byte-stream,alignment=au"))
            for e in (parser, capsf):
                pipe.add(e)
                e.sync_state_with_parent()
            parser.link(capsf)
            capsf.link(sink)
            pad.link(parser.get_static_pad("sink"))
            self.parser = parser_name
            linked.append(kind)

        demux.connect("pad-added", on_pad)
        if pipe.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
            pipe.set_state(Gst.State.NULL)
            raise StartError(f"file {path!r}: cannot open (missing or unreadable)")
        try:
            while True:
                sample = sink.emit("try-pull-sample", 5 * Gst.SECOND)
                if sample is None:
                    break
                if self.caps is None:
                    self.caps = sample.get_caps()
                self.frames.append(_AccessUnit.from_buffer(Gst, sample.get_buffer()))
            msg = pipe.get_bus().pop_filtered(Gst.MessageType.ERROR)
            if msg is not None and not self.frames:
                err, _dbg = msg.parse_error()
                raise StartError(f"file {path!r}: {err.message}")
        finally:
            pipe.set_state(Gst.State.NULL)
        if not linked:
            raise StartError(f"file {path!r}: no H.264 or HEVC video track (only those are replayed)")
        if not self.frames:
            raise StartError(f"file {path!r}: the video track has no frames")


class _Replay:
    """Feeds one media's appsrc from a `_Clip` in a loop, with timestamps shifted per loop.

    Timestamps start at the pipeline's running time when the first frame is pushed; the `clocksync`
    after the appsrc then releases each frame at its time, so the stream runs at native rate.
    """

    def __init__(self, Gst, clip: _Clip, appsrc) -> None:
        self._Gst, self._clip, self._src = Gst, clip, appsrc
        self._index = 0
        self._shift: int | None = None
        self._lock = threading.Lock()

    def _running_time(self) -> int:
        clock = self._src.get_clock()
        if clock is None:
            return 0
        return max(0, clock.get_time() - self._src.get_base_time())

    def on_need_data(self, _src, _length) -> None:
        Gst, clip = self._Gst, self._clip
        with self._lock:
            if self._shift is None:
                self._shift = self._running_time() - clip.t0
            if self._index == len(clip.frames):
                self._index = 0
                self._shift += clip.period
            frame = clip.frames[self._index]
            self._index += 1
            shift = self._shift
        buf = Gst.Buffer.new_wrapped(frame.data)
        if frame.pts is not None:
            buf.pts = frame.pts + shift
        if frame.dts is not None:
            buf.dts = max(0, frame.dts + shift)
        if frame.duration is not None:
            buf.duration = frame.duration
        if frame.delta:
            buf.set_flags(Gst.BufferFlags.DELTA_UNIT)
        self._src.emit("push-buffer", buf)


def _launch_line(spec: MountSpec, clip: _Clip | None) -> str:
    if spec.kind == "file":
        assert clip is not None
        # max-buffers keeps the appsrc queue (and so how far ahead timestamps are computed) short.
        return (
            f"( appsrc name=src is-live=true format=time do-timestamp=false block=false max-buffers=4 "
            f'caps="{clip.caps.to_string()}" ! clocksync ! {clip.parser} config-interval=-1 '
            f"! {clip.payloader} name=pay0 pt=96 )"
        )
    raw = f"video/x-raw,width={spec.width},height={spec.height},framerate={spec.fps}/1"
    if spec.kind == "testsrc":
        return (
            f"( videotestsrc is-live=true pattern=ball ! {raw} ! videoconvert ! video/x-raw,format=I420 "
            f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={spec.fps} bframes=0 "
            f"! video/x-h264,profile=constrained-baseline ! h264parse config-interval=-1 "
            f"! rtph264pay name=pay0 pt=96 )"
        )
    return (
        f"( videotestsrc is-live=true pattern=ball ! {raw} ! videoconvert ! video/x-raw,format=I420 "
        f"! jpegenc quality=70 ! rtpjpegpay name=pay0 pt=26 )"
    )


def _check_elements(Gst, specs: list[MountSpec]) -> None:
    needed = {"appsrc", "clocksync"} if any(s.kind == "file" for s in specs) else set()
    if any(s.kind in ("testsrc", "mjpeg") for s in specs):
        needed |= {"videotestsrc", "videoconvert"}
    if any(s.kind == "testsrc" for s in specs):
        needed |= {"x264enc", "rtph264pay"}
    if any(s.kind == "mjpeg" for s in specs):
        needed |= {"jpegenc", "rtpjpegpay"}
    missing = sorted(e for e in needed if Gst.ElementFactory.find(e) is None)
    if missing:
        raise StartError(f"missing GStreamer elements: {', '.join(missing)} (install gstreamer1.0-plugins-*)")


def build_server(specs: list[MountSpec], port: int, auth: tuple[str, str] | None):
    """Create the server with its mounts and attach it to the default main context; returns (server, loop)."""
    GLib, Gst, GstRtspServer = _load_gi()
    _check_elements(Gst, specs)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    mounts = server.get_mount_points()

    permissions = None
    if auth is not None:
        user, password = auth
        rtsp_auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", user)
        rtsp_auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(rtsp_auth)
        permissions = GstRtspServer.RTSPPermissions()
        permissions.add_permission_for_role(user, "media.factory.access", True)
        permissions.add_permission_for_role(user, "media.factory.construct", True)

    for spec in specs:
        clip = _Clip(Gst, spec.path) if spec.kind == "file" else None
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(_launch_line(spec, clip))
        # One pipeline per mount for all clients: cheap, and every client sees the same stream.
        factory.set_shared(True)
        if permissions is not None:
            factory.set_permissions(permissions)
        if clip is not None:

            def on_configure(_factory, media, clip=clip) -> None:
                appsrc = media.get_element().get_by_name("src")
                replay = _Replay(Gst, clip, appsrc)
                appsrc.connect("need-data", replay.on_need_data)
                media._replay = replay  # keep it alive as long as the media

            factory.connect("media-configure", on_configure)
        mounts.add_factory("/" + spec.name, factory)

    if server.attach(None) == 0:
        raise StartError(f"cannot listen on 127.0.0.1:{port} (port in use?)")
    loop = GLib.MainLoop()
    return server, loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=8554, help="TCP port on 127.0.0.1; 0 picks a free one")
    parser.add_argument("--mount", action="append", default=[], metavar="NAME=SPEC", help="repeatable")
    parser.add_argument("--auth", metavar="USER:PASS", help="require HTTP basic auth on every mount")
    args = parser.parse_args(argv)
    try:
        specs = [parse_mount(m) for m in args.mount]
        if not specs:
            raise ValueError("at least one --mount NAME=SPEC is needed")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"--mount: duplicate mount names in {names}")
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port {args.port}: must be 0..65535")
        auth = None
        if args.auth is not None:
            user, sep, password = args.auth.partition(":")
            if not sep or not user:
                raise ValueError("--auth: expected USER:PASS")
            auth = (user, password)
    except ValueError as e:
        print(f"rtsp_server: {e}", file=sys.stderr)
        return 2

    try:
        server, loop = build_server(specs, args.port, auth)
    except (StartError, ImportError, ValueError) as e:
        print(f"rtsp_server: {e}", file=sys.stderr)
        return 1

    from gi.repository import GLib

    def on_signal() -> bool:
        loop.quit()
        return GLib.SOURCE_REMOVE

    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, on_signal)

    print(f"READY port={server.get_bound_port()}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
