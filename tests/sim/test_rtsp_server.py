"""The real GStreamer RTSP server (rtsp_worker/sim/rtsp_server.py via RtspServerProcess), read with PyAV."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import av
import av.error
import pytest

from rtsp_worker.sim.clips import write_test_clip
from rtsp_worker.sim.devserver import RtspServerError, RtspServerProcess

pytestmark = pytest.mark.rtsp

# PyAV as an RTSP client, per the project notes on RTSP (rtsp-lab.md): TCP (FFmpeg tries UDP first), small probing
# (open in ~0.2 s instead of ~1 s), and the rtsp demuxer's own `timeout` (microseconds), the only read
# bound that holds when a server freezes mid-stream (it raises after about twice the value).
CLIENT_OPTIONS = {
    "rtsp_transport": "tcp",
    "analyzeduration": "200000",
    "probesize": "65536",
    "timeout": "1000000",
}
# Bound on a whole read in a helper thread, so a regression fails the test instead of hanging the suite.
WATCHDOG_S = 15.0


def open_rtsp(url: str) -> av.container.InputContainer:
    return av.open(url, options=CLIENT_OPTIONS, timeout=(3.0, 3.0))


def read_frames(url: str, n: int) -> list[av.VideoFrame]:
    """Open `url`, decode `n` video frames, close."""
    with open_rtsp(url) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(frame)
            if len(frames) == n:
                break
    return frames


def run_bounded(fn, *args) -> object:
    """Run fn(*args) in a thread and return or raise what it did; fail if it outlives WATCHDOG_S."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 (re-raised in the test thread)
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(WATCHDOG_S)
    assert not thread.is_alive(), f"{fn.__name__} still blocked after {WATCHDOG_S} s"
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box.get("result")


@pytest.mark.parametrize("codec, b_frames", [("h264", 0), ("hevc", 0), ("h264", 2)])
def test_file_mount_replays_clip_in_a_loop(
    rtsp_server_factory, tmp_path: Path, codec: str, b_frames: int
) -> None:
    clip = write_test_clip(
        tmp_path / "c.mp4", seconds=1, fps=15, size=(320, 180), codec=codec, b_frames=b_frames
    )
    server = rtsp_server_factory({"cam0": f"file:{clip}"})
    with open_rtsp(server.url("cam0")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == codec
        frames = []
        for frame in container.decode(stream):
            frames.append(frame)
            if len(frames) == 20:  # past the end of the 15-frame clip: the replay loops
                break
    assert len(frames) == 20
    assert {(f.width, f.height) for f in frames} == {(320, 180)}
    pts = [f.pts for f in frames if f.pts is not None]  # FFmpeg may leave the very first pts unset
    # One frame per RTP timestamp (a multi-slice key frame must not come out as two frames), exactly one
    # frame interval apart (90 kHz / 15 fps), across the loop's wrap too.
    assert len(pts) >= 19
    assert {b - a for a, b in itertools.pairwise(pts)} == {90000 // 15}


def test_testsrc_mount_is_live_h264(rtsp_server_factory) -> None:
    server = rtsp_server_factory({"live": "testsrc:320x240@15"})
    frames = read_frames(server.url("live"), 5)
    assert [(f.width, f.height) for f in frames] == [(320, 240)] * 5


def test_mjpeg_mount_reports_its_codec(rtsp_server_factory) -> None:
    server = rtsp_server_factory({"jpeg": "mjpeg:320x240@10"})
    with open_rtsp(server.url("jpeg")) as container:
        ctx = container.streams.video[0].codec_context
        assert (ctx.name, ctx.width, ctx.height) == ("mjpeg", 320, 240)


def test_two_clients_share_a_mount(rtsp_server_factory, test_clip: Path) -> None:
    server = rtsp_server_factory({"cam0": f"file:{test_clip}"})
    url = server.url("cam0")
    results: dict[str, list] = {}
    first_started = threading.Event()

    def client(name: str, wait_for: threading.Event | None) -> None:
        if wait_for is not None:
            wait_for.wait(WATCHDOG_S)  # join while the other client is streaming
        with open_rtsp(url) as container:
            frames = []
            for frame in container.decode(video=0):
                frames.append(frame)
                first_started.set()
                if len(frames) == 10:
                    break
        results[name] = frames

    late = threading.Thread(target=client, args=("late", first_started), daemon=True)
    late.start()
    run_bounded(client, "first", None)
    late.join(WATCHDOG_S)
    assert not late.is_alive()
    assert {name: len(frames) for name, frames in results.items()} == {"first": 10, "late": 10}
    assert {(f.width, f.height) for f in results["late"]} == {(640, 360)}


def test_unknown_mount_is_404(rtsp_server_factory, test_clip: Path) -> None:
    server = rtsp_server_factory({"cam0": f"file:{test_clip}"})
    with pytest.raises(av.error.HTTPNotFoundError):
        open_rtsp(server.url("nope"))


def test_wrong_credentials_are_401(rtsp_server_factory, test_clip: Path) -> None:
    server = rtsp_server_factory({"cam0": f"file:{test_clip}"}, auth="viewer:s3cret")
    with pytest.raises(av.error.HTTPUnauthorizedError):
        open_rtsp(server.url("cam0"))  # no credentials
    with pytest.raises(av.error.HTTPUnauthorizedError):
        open_rtsp(f"rtsp://viewer:wrong@127.0.0.1:{server.port}/cam0")
    frames = read_frames(server.url("cam0", with_auth=True), 3)
    assert len(frames) == 3


def test_kill_ends_the_stream_and_restart_serves_on_the_same_port(
    rtsp_server_factory, test_clip: Path
) -> None:
    server = rtsp_server_factory({"cam0": f"file:{test_clip}"})
    port = server.port
    container = open_rtsp(server.url("cam0"))
    try:
        stream = container.streams.video[0]
        packets = container.demux(stream)
        decoded = 0
        while decoded < 3:
            decoded += len(next(packets).decode())
        server.kill()

        def drain() -> str:
            # A dead server raises nothing from the demuxer: it just ends, at once (not after the read
            # timeout), which is why the worker treats an ended live stream as a disconnect. The packet
            # cut short by the kill may fail to decode (InvalidDataError); the worker counts and skips
            # such a packet, and so does this drain.
            try:
                for packet in packets:
                    try:
                        packet.decode()
                    except av.error.InvalidDataError:
                        pass
            except av.error.FFmpegError as e:
                return type(e).__name__
            return "ended"

        assert run_bounded(drain) == "ended"
    finally:
        container.close()
    with pytest.raises(ConnectionRefusedError):
        open_rtsp(server.url("cam0"))  # nothing listens until the restart

    server.restart()
    assert server.port == port
    frames_after = run_bounded(read_frames, server.url("cam0"), 3)
    assert [(f.width, f.height) for f in frames_after] == [(640, 360)] * 3


def test_frozen_server_makes_a_bounded_read_raise(rtsp_server_factory, test_clip: Path) -> None:
    server = rtsp_server_factory({"cam0": f"file:{test_clip}"})
    container = open_rtsp(server.url("cam0"))
    try:
        packets = container.demux(video=0)
        while not next(packets).decode():
            pass
        server.freeze()

        def drain() -> None:
            # A few packets may still be buffered; then the read times out. The packet the freeze cut
            # in two can fail to decode (InvalidDataError), as the worker's decoder also allows for.
            for packet in packets:
                try:
                    packet.decode()
                except av.error.InvalidDataError:
                    pass

        with pytest.raises(av.error.TimeoutError):
            run_bounded(drain)
    finally:
        container.close()
    server.thaw()
    assert len(run_bounded(read_frames, server.url("cam0"), 2)) == 2


def test_bad_mount_spec_fails_start_with_the_servers_message(rtsp_server_factory, tmp_path: Path) -> None:
    missing = tmp_path / "missing.mp4"
    with pytest.raises(RtspServerError, match="missing.mp4"):
        rtsp_server_factory({"cam0": f"file:{missing}"})
    with pytest.raises(RtspServerError, match="testsrc:WIDTHxHEIGHT@FPS"):
        rtsp_server_factory({"cam0": "testsrc:640x360"})


def test_port_in_use_fails_start(rtsp_server_factory, test_clip: Path) -> None:
    server = rtsp_server_factory({"cam0": f"file:{test_clip}"})
    with pytest.raises(RtspServerError, match=f"127.0.0.1:{server.port}"):
        rtsp_server_factory({"cam0": f"file:{test_clip}"}, port=server.port)


def test_stop_is_clean_and_idempotent(rtsp_server_factory, test_clip: Path) -> None:
    server: RtspServerProcess = rtsp_server_factory({"cam0": f"file:{test_clip}"})
    assert server.running
    server.freeze()  # stop() must still work on a frozen server
    server.stop()
    assert not server.running and server.returncode == 0
    server.stop()
