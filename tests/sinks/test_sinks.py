"""Sinks: JSONL rotation, SinkRunner isolation (slow and failing sinks), annotated video, Redis Streams."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from ops_support import PipelineThread, make_config, read_jsonl, small_clip, tiny_model, wait_for
from redis_fixture import redis_server_factory
from sink_support import ListSink, result

from rtsp_worker.config import RedisConfig
from rtsp_worker.pipeline import build_pipeline
from rtsp_worker.sinks import Sink, SinkRunner
from rtsp_worker.sinks.jsonl import JsonlSink
from rtsp_worker.sinks.throttle import ErrorThrottle
from rtsp_worker.sinks.video import VideoSink
from rtsp_worker.sources.state import CameraState
from rtsp_worker.types import FrameResult

FIXTURES = (redis_server_factory, small_clip, tiny_model)  # pytest finds fixtures by their module-level name


# -- JSONL ------------------------------------------------------------------------------------------------
def test_jsonl_rotates_by_size_and_keeps_every_line(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path, max_bytes=2048, backups=3, run="r1")
    for i in range(41):  # 8 lines fill a file: the 41st starts a fresh one
        sink.write([result("cam", i)] + ([result("other", i, n_objects=0)] if i < 20 else []))
    sink.close()
    base = tmp_path / "cam" / "frames.jsonl"
    files = [base.with_name(f"frames.jsonl.{k}") for k in (3, 2, 1)] + [base]
    assert all(f.exists() for f in files), sorted(p.name for p in base.parent.iterdir())
    assert not base.with_name("frames.jsonl.4").exists(), "more backups kept than configured"
    # Rotated files are closed near the limit (rotation happens after the batch that crossed it).
    for f in files[:-1]:
        assert 2048 <= f.stat().st_size < 2048 + 400, (f.name, f.stat().st_size)
    frames = [json.loads(line)["frame"] for f in files for line in f.read_text().splitlines()]
    # The oldest lines went with the backups that fell off the end; what is kept is contiguous and in order.
    assert frames == list(range(frames[0], 41)) and frames[0] > 0
    assert sink.lines["cam"] == 41
    # A camera that stays under the limit is never rotated.
    assert not (tmp_path / "other" / "frames.jsonl.1").exists()
    assert len((tmp_path / "other" / "frames.jsonl").read_text().splitlines()) == 20


def test_jsonl_with_zero_backups_starts_over(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path, max_bytes=1024, backups=0)
    path = tmp_path / "cam" / "frames.jsonl"
    restarts = 0
    for i in range(30):
        sink.write([result("cam", i)])
        assert [p.name for p in path.parent.iterdir()] in ([], ["frames.jsonl"]), "a backup was kept"
        if not path.exists():
            restarts += 1  # crossed the limit with this line: the file was dropped
            continue
        lines = path.read_text().splitlines()
        assert json.loads(lines[-1])["frame"] == i and path.stat().st_size < 1024
    sink.close()
    assert restarts >= 2


# -- SinkRunner -------------------------------------------------------------------------------------------
class SlowSink(Sink):
    """Blocks in write() until released: the worst case of a slow sink."""

    name = "slow"
    wants_images = False

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.written: list[int] = []
        self.closed = False

    def write(self, results: Sequence[FrameResult]) -> None:
        self.entered.set()
        self.release.wait(30)
        self.written.extend(r.frame for r in results)

    def close(self) -> None:
        self.closed = True


class FailingSink(Sink):
    name = "failing"
    wants_images = False

    def __init__(self) -> None:
        self.calls = 0

    def write(self, results: Sequence[FrameResult]) -> None:
        self.calls += 1
        raise OSError("disk full")

    def close(self) -> None:
        raise OSError("still full")


def test_slow_and_failing_sinks_do_not_block_or_starve_the_others(caplog: pytest.LogCaptureFixture) -> None:
    slow, failing, good = SlowSink(), FailingSink(), ListSink()
    runner = SinkRunner([slow, failing, good], queue_size=4)
    done = threading.Event()

    def caught_up(n: int) -> bool:
        deadline = time.monotonic() + 10
        while (len(good.written) < n or failing.calls < n) and time.monotonic() < deadline:
            time.sleep(0.001)
        return len(good.written) == n

    def produce() -> None:
        # Paced by the healthy sinks (as inference is by the cameras); the slow one never answers.
        for i in range(50):
            runner.submit([result("cam", i)])
            if i == 0:
                slow.entered.wait(10)
            if not caught_up(i + 1):
                return
        done.set()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    # submit() never waits for a sink: all 50 batches are handed over while `slow` is stuck in its first write.
    assert done.wait(10), "submit() blocked behind a slow sink"
    assert runner.sink_status("slow").queue_dropped == 50 - 1 - 4  # one in write(), four queued, the rest dropped and counted
    assert runner.sink_status("list").queue_dropped == 0 and runner.sink_status("failing").queue_dropped == 0
    slow.release.set()
    runner.close(timeout=10)
    assert good.written == list(range(50)) and good.closed
    assert slow.written == [0, 1, 2, 3, 4] and slow.closed
    assert failing.calls == 50 and runner.sink_status("failing").errors == 50
    assert "sink failing: write failed" in caplog.text and "disk full" in caplog.text
    assert "sink failing: close failed" in caplog.text
    assert "sink slow is too slow" in caplog.text


def test_close_is_bounded_when_a_sink_hangs(caplog: pytest.LogCaptureFixture) -> None:
    slow, good = SlowSink(), ListSink()
    runner = SinkRunner([slow, good], queue_size=8)
    for i in range(3):
        runner.submit([result("cam", i)])
    t0 = time.monotonic()
    runner.close(timeout=0.5)
    assert time.monotonic() - t0 < 5  # generous: the bound is 0.5 s
    assert good.written == [0, 1, 2] and good.closed
    assert not slow.closed, "a sink still inside write() must not be closed under it"
    assert "sink slow did not drain" in caplog.text
    slow.release.set()


class _Clock:
    """A controlled monotonic clock: the test moves it."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_error_throttle_logs_the_first_then_one_summary_per_interval() -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger, handler = logging.getLogger("test_sinks.throttle"), Keep()
    logger.addHandler(handler)
    clock = _Clock()
    throttle = ErrorThrottle(logger, interval_s=30.0, clock=clock)
    try:
        assert throttle.error("disk full") is True  # the first one at once
        assert throttle.error("other") is True  # another kind has its own count
        for _ in range(9):
            clock.t += 3.0  # 27 s: still inside the interval
            assert throttle.error("disk full") is False
        clock.t += 3.0  # 30 s after the first line
        assert throttle.error("disk full") is True
        clock.t += 1.0
        assert throttle.error("disk full") is False
        throttle.error("disk full")
        throttle.flush()
        throttle.flush()  # nothing pending: no line
    finally:
        logger.removeHandler(handler)
    assert records == [
        "disk full",
        "other",
        "disk full (repeated 10 times in the last 30 s, 11 in all)",
        "disk full (repeated 2 more times, 13 in all)",
    ]


class _GatedFailingSink(Sink):
    """Fails every write; the first write waits for `gate`, so the others fail while `close` drains."""

    name = "failing"
    wants_images = False

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls = 0

    def write(self, results: Sequence[FrameResult]) -> None:
        self.calls += 1
        if self.calls == 1:
            self.gate.wait(10)
        raise OSError("disk full")

    def close(self) -> None:
        pass


def test_close_logs_the_summary_of_errors_raised_while_draining(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="rtsp_worker.sinks")
    sink = _GatedFailingSink()
    runner = SinkRunner([sink], queue_size=100)
    n = 20
    for i in range(n):
        runner.submit([result("cam", i)])
    # Every write fails after close() has begun: only a summary logged after the drain can count them.
    threading.Timer(0.3, sink.gate.set).start()
    runner.close(timeout=10)
    assert sink.calls == n and runner.sink_status("failing").errors == n
    lines = [r.getMessage() for r in caplog.records if "sink failing: write failed" in r.getMessage()]
    assert lines == ["sink failing: write failed, batch dropped: disk full",
                     f"sink failing: write failed, batch dropped: disk full (repeated {n - 1} more times, {n} in all)"]


# -- Video ------------------------------------------------------------------------------------------------
def test_video_sink_writes_annotated_h264_per_camera(tmp_path: Path) -> None:
    grey = torch.full((240, 320, 3), 60, dtype=torch.uint8)
    sink = VideoSink(tmp_path)
    assert SinkRunner([sink]).wants_images
    t0 = 1.7e9
    for i in range(30):
        sink.write([result("a", i, image=grey, ts=t0 + i / 15), result("b", i, n_objects=0, image=grey,
                                                                        ts=t0 + i / 15)])
    # A new resolution mid-stream starts a second file for that camera.
    big = torch.full((360, 640, 3), 60, dtype=torch.uint8)
    r = result("a", 30, image=big, ts=t0 + 2)
    sink.write([FrameResult(r.camera, 0, 30, r.ts, 640, 360, r.objects, big, r.done_ts)])
    sink.close()
    assert [str(p.relative_to(tmp_path)) for p in sink.paths] == ["a/video.mp4", "b/video.mp4", "a/video.1.mp4"]

    def frames(path: Path) -> list[np.ndarray]:
        with av.open(str(path)) as c:
            assert c.streams.video[0].codec_context.name == "h264"
            return [(f.to_ndarray(format="rgb24"), f.time) for f in c.decode(video=0)]

    a, b = frames(tmp_path / "a" / "video.mp4"), frames(tmp_path / "b" / "video.mp4")
    assert len(a) == len(b) == 30
    assert a[0][0].shape == (240, 320, 3)
    assert abs(a[-1][1] - 29 / 15) < 0.01  # timed from the frames' own timestamps
    # Camera a had objects: box outlines drawn where the first track's box is (x 15..45, y 20..80 at
    # frame 5), on the left edge of the box; camera b had none, so only the fps text differs from grey.
    img_a, img_b = a[5][0].astype(int), b[5][0].astype(int)
    left_edge_a = np.abs(img_a[30:75, 14:17] - 60).max()
    left_edge_b = np.abs(img_b[30:75, 14:17] - 60).max()
    assert left_edge_a > 60 and left_edge_b < 20
    assert np.abs(img_b[:28, :200] - 60).max() > 100, "no fps text on camera b"
    assert np.abs(img_b[120:, :] - 60).max() < 20
    big_frames = frames(tmp_path / "a" / "video.1.mp4")
    assert len(big_frames) == 1 and big_frames[0][0].shape == (360, 640, 3)


# -- Redis ------------------------------------------------------------------------------------------------
pytest_redis = pytest.mark.redis


@pytest_redis
def test_redis_sink_stream_per_camera_with_trimming(redis_server_factory) -> None:
    from rtsp_worker.sinks.redis import RedisSink

    server = redis_server_factory()
    sink = RedisSink(RedisConfig(url=server.url, stream_prefix="t:", maxlen=100, buffer=1000))
    for i in range(300):
        sink.write([result("a", i), result("b", i, n_objects=0)])
    sink.close()
    r = server.client()
    assert sorted(r.keys("t:*")) == ["t:a", "t:b"]
    assert sink.sent == 600 and sink.dropped == 0
    # MAXLEN ~ trims in whole macro nodes: at least maxlen kept, far fewer than written.
    assert 100 <= r.xlen("t:a") < 300
    entries = r.xrange("t:a")
    _, last = entries[-1]
    assert last["camera"] == "a" and last["frame"] == "299" and float(last["ts"]) == pytest.approx(1e9 + 299 / 15)
    assert json.loads(last["data"]) == {"run": sink.run, **result("a", 299).to_json_dict()}
    assert last["run"] == sink.run
    frames = [int(e[1]["frame"]) for e in entries]
    assert frames == list(range(300 - len(frames), 300)), "entries out of order or missing"


@pytest_redis
def test_redis_sink_buffers_while_down_then_delivers_and_counts_drops(redis_server_factory, caplog) -> None:
    from rtsp_worker.sinks.redis import RedisSink

    caplog.set_level(logging.INFO)
    server = redis_server_factory()
    sink = RedisSink(RedisConfig(url=server.url, stream_prefix="t:", buffer=25), retry_initial_s=0.05,
                     retry_max_s=0.1)
    sink.write([result("a", i) for i in range(5)])
    assert sink.sent == 5 and sink.connected
    server.stop(save=True)
    for i in range(5, 45):  # 40 entries while down, the buffer holds 25
        sink.write([result("a", i)])
    assert not sink.connected and sink.buffered == 25 and sink.dropped == 15
    assert "unreachable" in caplog.text and "buffer full" in caplog.text
    server.start()
    time.sleep(0.15)  # past the retry delay
    sink.write([result("a", 45)])
    assert sink.connected and sink.buffered == 0
    sink.close()
    frames = [int(f["frame"]) for _, f in server.client().xrange("t:a")]
    # Before the outage, then the newest 25 entries at the time Redis came back (the new one included).
    assert frames == list(range(5)) + list(range(21, 46))
    assert sink.dropped == 16 and sink.sent + sink.dropped == 46
    assert "reconnected" in caplog.text


def test_pipeline_feeds_the_video_sink_every_processed_frame(tmp_path: Path, small_clip, tiny_model) -> None:
    cfg = make_config([{"name": "lobby", "url": small_clip.as_uri(), "loop": False}], tiny_model, tmp_path,
                      output={"video": True})
    pipeline = build_pipeline(cfg)
    assert [s.name for s in pipeline.sinks.sinks] == ["jsonl", "video"] and pipeline.sinks.wants_images
    runner = PipelineThread(pipeline)
    wait_for(lambda: pipeline.stats[0].state == CameraState.STOPPED, 30, "the end of the clip")
    runner.stop()
    records = read_jsonl(tmp_path / "lobby" / "frames.jsonl")
    with av.open(str(tmp_path / "lobby" / "video.mp4")) as c:
        frames = list(c.decode(video=0))
    assert len(frames) == len(records) == pipeline.stats[0].processed > 0
    assert (frames[0].width, frames[0].height) == (320, 240)
    assert sum(len(r["objects"]) for r in records) > 0  # so boxes were drawn too
