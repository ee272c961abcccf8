"""Unattended operation with real parts: the GStreamer RTSP server killed, frozen and restarted, broken
cameras, Redis going away, SIGTERM to a real `rtsp-worker run`, and config errors at the command line.

Rates are compared within one run (outage windows against the run's own baseline) with generous bounds.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ops_support import (
    FAST_SOURCE,
    RECOVERY_BOUND_S,
    REPO,
    PipelineThread,
    make_config,
    rate,
    read_jsonl,
    small_clip,
    tiny_model,
    wait_for,
    write_size_change_clip,
)
from redis_fixture import free_port, redis_server_factory
from sink_support import RecordingSink

from rtsp_worker.pipeline import build_pipeline
from rtsp_worker.sim.clips import write_test_clip
from rtsp_worker.sinks.jsonl import JsonlSink
from rtsp_worker.sources.state import CameraState

pytestmark = [pytest.mark.rtsp, pytest.mark.slow]

FIXTURES = (small_clip, tiny_model, redis_server_factory)  # pytest finds fixtures by module-level name
DOWN = (CameraState.BACKOFF, CameraState.CONNECTING, CameraState.STALLED)


def test_server_killed_frozen_restarted_recovers_and_others_keep_their_rate(
    tmp_path, rtsp_server_factory, small_clip, tiny_model, caplog
):
    caplog.set_level(logging.INFO)
    victim = rtsp_server_factory({"v": f"file:{small_clip}"})
    healthy = rtsp_server_factory({"a": f"file:{small_clip}", "b": f"file:{small_clip}"})
    # The victim comes back from its restart with another codec and size: its decoder must be rebuilt.
    hevc_clip = write_test_clip(tmp_path / "hevc.mp4", seconds=2, fps=15, size=(640, 360), codec="hevc")
    out = tmp_path / "out"
    cfg = make_config([{"name": "v", "url": victim.url("v")}, {"name": "a", "url": healthy.url("a")},
                       {"name": "b", "url": healthy.url("b")}], tiny_model, out)
    recorder = RecordingSink()
    pipeline = build_pipeline(cfg, sinks=[JsonlSink(out), recorder])
    st = {c.name: s for c, s in zip(pipeline.cameras, pipeline.stats)}
    runner = PipelineThread(pipeline)
    marks: dict[str, float] = {}
    try:
        wait_for(lambda: min(s.processed for s in st.values()) >= 5, 30, "all cameras to stream")
        marks["baseline"] = time.time()
        time.sleep(3)

        # 1. Crash: SIGKILL, no RTSP teardown.
        marks["kill"] = time.time()
        victim.kill()
        wait_for(lambda: st["v"].state in DOWN and st["v"].last_error, 10, "the outage to be noticed")
        time.sleep(2.5)
        victim.mounts["v"] = f"file:{hevc_clip}"
        marks["restart"] = time.time()
        victim.restart()
        before = st["v"].processed
        took = wait_for(lambda: st["v"].processed >= before + 3, RECOVERY_BOUND_S + 3, "recovery after restart")
        assert took <= RECOVERY_BOUND_S + 3
        assert st["v"].codec == "hevc" and (st["v"].width, st["v"].height) == (640, 360)

        # 2. Hang: SIGSTOP keeps the socket open and silent. The watchdog flags the camera STALLED while
        # its read blocks, then the read timeout forces a reconnect.
        marks["freeze"] = time.time()
        victim.freeze()
        wait_for(lambda: st["v"].state == CameraState.STALLED, FAST_SOURCE["stall_timeout_s"] + 3,
                 "the STALLED state")
        wait_for(lambda: st["v"].state in (CameraState.BACKOFF, CameraState.CONNECTING), 10,
                 "the reconnect after the read timeout")
        time.sleep(max(0.0, marks["freeze"] + 4 - time.time()))
        marks["thaw"] = time.time()
        victim.thaw()
        before = st["v"].processed
        took = wait_for(lambda: st["v"].processed >= before + 3, RECOVERY_BOUND_S + 3, "recovery after thaw")
        assert took <= RECOVERY_BOUND_S + 3
        marks["end"] = time.time()
        assert runner.thread.is_alive()
    finally:
        runner.stop()

    assert st["v"].reconnects >= 2 and st["v"].stalls >= 1
    log = caplog.text
    assert re.search(r"camera v \(rtsp://127\.0\.0\.1:\d+/v\): (stream ended|connection refused|timeout)", log)
    assert "camera v: stalled: no frame for" in log
    assert re.search(r"camera v \(.*\): stalled: no frame for [\d.]+ s \(read timed out\); reconnecting", log)
    assert re.search(r"camera v \(.*\): reconnected, codec hevc, 640x360, decoder cpu", log)
    sizes = {(w, h) for cam, _, w, h in recorder.seen if cam == "v"}
    assert sizes == {(320, 240), (640, 360)}

    # The healthy cameras' processed rate, from the JSONL decode timestamps: never below half the baseline.
    for cam in ("a", "b"):
        ts = [r["ts"] for r in read_jsonl(out / cam / "frames.jsonl")]
        base = rate(ts, marks["baseline"], marks["kill"])
        assert base > 1.0, f"{cam}: baseline rate {base:.1f} fps is too low to compare"
        for window in (("kill", "restart"), ("freeze", "thaw")):
            during = rate(ts, marks[window[0]], marks[window[1]])
            assert during >= 0.5 * base, f"{cam}: {during:.1f} fps during {window[0]} vs {base:.1f} fps before"
        frames = [r["frame"] for r in read_jsonl(out / cam / "frames.jsonl")]
        assert frames == sorted(set(frames))


def test_broken_cameras_are_reported_and_do_not_disturb_the_good_ones(
    tmp_path, rtsp_server_factory, small_clip, tiny_model, caplog
):
    caplog.set_level(logging.INFO)
    srv = rtsp_server_factory({"good": f"file:{small_clip}", "mj": "mjpeg:320x240@10"})
    secret = "s3cr3t-pw"
    locked = rtsp_server_factory({"sec": f"file:{small_clip}"}, auth=("op", secret))
    cams = {
        "good": srv.url("good"),
        "authed": locked.url("sec", with_auth=True),
        "mj": srv.url("mj"),
        "nf": srv.url("no-such-mount"),
        "refused": f"rtsp://op:{secret}@127.0.0.1:{free_port()}/x",
        "dns": "rtsp://camera.invalid:554/stream",
        "noauth": locked.url("sec"),
    }
    expected = {
        "mj": "unsupported codec: codec 'mjpeg' is not supported",
        "nf": "404 not found",
        "refused": "connection refused",
        "dns": "host cannot be resolved: camera.invalid",
        "noauth": "401 unauthorized",
    }
    out = tmp_path / "out"
    pipeline = build_pipeline(make_config([{"name": n, "url": u} for n, u in cams.items()], tiny_model, out))
    st = {c.name: s for c, s in zip(pipeline.cameras, pipeline.stats)}
    runner = PipelineThread(pipeline)
    try:
        wait_for(lambda: all(expected[n] in st[n].last_error for n in expected), 20, "every reason",
                 interval=0.1)
        wait_for(lambda: st["good"].processed >= 10 and st["authed"].processed >= 10, 20, "the good cameras")
        t0, decoded0 = time.monotonic(), st["good"].decoded
        time.sleep(2)
        good_decode_fps = (st["good"].decoded - decoded0) / (time.monotonic() - t0)
        assert runner.thread.is_alive()
    finally:
        runner.stop()
    # The good cameras decode at the clip's rate (15 fps): nothing else held their threads.
    assert good_decode_fps >= 0.7 * 15, good_decode_fps
    for name, reason in expected.items():
        assert st[name].processed == 0 and st[name].failures >= 1
        line = re.search(rf"WARNING .*camera {name} \((rtsp://[^)]*)\): ([^;]+); reconnecting in", caplog.text)
        assert line and reason in line.group(2), f"no clear log line for {name}"
    assert "camera refused (rtsp://op:***@127.0.0.1:" in caplog.text
    assert secret not in caplog.text, "a password reached the log"
    assert len(read_jsonl(out / "authed" / "frames.jsonl")) >= 10
    assert not (out / "mj" / "frames.jsonl").exists()


def test_resolution_change_within_a_stream(tmp_path, tiny_model, caplog):
    caplog.set_level(logging.INFO)
    clip = write_size_change_clip(tmp_path / "switch.ts")
    recorder = RecordingSink()
    cfg = make_config([{"name": "cam", "url": clip.as_uri(), "loop": False}], tiny_model, tmp_path / "out")
    pipeline = build_pipeline(cfg, sinks=[recorder])
    runner = PipelineThread(pipeline)
    try:
        wait_for(lambda: pipeline.stats[0].state == CameraState.STOPPED, 30, "the end of the clip")
    finally:
        runner.stop()
    sizes = [(w, h) for _, _, w, h in recorder.seen]
    assert (320, 240) in sizes and (640, 360) in sizes
    first_big = sizes.index((640, 360))
    assert set(sizes[:first_big]) == {(320, 240)} and set(sizes[first_big:]) == {(640, 360)}
    assert "camera cam: resolution changed 320x240 -> 640x360" in caplog.text
    assert pipeline.stats[0].decode_errors == 0


@pytest.mark.redis
def test_redis_outage_loses_nothing_within_the_buffer(
    tmp_path, rtsp_server_factory, redis_server_factory, small_clip, tiny_model, caplog
):
    caplog.set_level(logging.INFO)
    redis_srv = redis_server_factory()
    srv = rtsp_server_factory({"a": f"file:{small_clip}", "b": f"file:{small_clip}"})
    out = tmp_path / "out"
    cfg = make_config([{"name": n, "url": srv.url(n)} for n in ("a", "b")], tiny_model, out,
                      output={"redis": {"url": redis_srv.url, "stream_prefix": "cams:", "buffer": 5000}})
    pipeline = build_pipeline(cfg)
    redis_sink = next(s for s in pipeline.sinks.sinks if s.name == "redis")
    runner = PipelineThread(pipeline)
    try:
        wait_for(lambda: min(s.processed for s in pipeline.stats) >= 5, 30, "both cameras")
        # SHUTDOWN SAVE: what Redis acknowledged survives its restart (persistence is otherwise off).
        redis_srv.stop(save=True)
        wait_for(lambda: not redis_sink.connected, 10, "the sink to notice")
        down_from = pipeline.stats[0].processed
        wait_for(lambda: pipeline.stats[0].processed >= down_from + 10, 20, "results while Redis is down")
        assert redis_sink.buffered > 0
        redis_srv.start()
        wait_for(lambda: redis_sink.connected and redis_sink.buffered == 0, 20, "the backlog to be sent")
        time.sleep(0.5)
    finally:
        runner.stop()
    assert redis_sink.dropped == 0
    r = redis_srv.client()
    for cam in ("a", "b"):
        jsonl = [(d["frame"], d["ts"]) for d in read_jsonl(out / cam / "frames.jsonl")]
        entries = r.xrange(f"cams:{cam}")
        in_redis = [(int(f["frame"]), float(f["ts"])) for _, f in entries]
        # Delivery is at-least-once (README): a pipelined send cut by the shutdown may be stored twice. Nothing
        # may be missing, and a duplicate can only repeat an entry right where the connection broke.
        unique = list(dict.fromkeys(in_redis))
        assert len(unique) == len(jsonl) == pipeline.stats[[c.name for c in pipeline.cameras].index(cam)].processed
        assert [f for f, _ in unique] == [f for f, _ in jsonl], f"{cam}: Redis and JSONL disagree"
        assert len(in_redis) - len(unique) <= 500, f"{cam}: more duplicates than one pipelined chunk (_CHUNK)"
    assert "redis" in caplog.text and "unreachable" in caplog.text and "reconnected after" in caplog.text


# -- the real command line -----------------------------------------------------------------------------------
def _cli(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "rtsp_worker.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=kw.pop("stderr", subprocess.PIPE), text=True, **kw)


def _run_config(tmp_path: Path, cameras: list[dict], model: Path, **source) -> Path:
    cfg = {
        "cameras": cameras,
        "model": {"path": str(model)},
        "device": "cpu",
        "detection": {"confidence": 0.5, "max_detections": 8, "max_candidates": 64},
        "tracker": {"max_tracks": 32, "min_hits": 1},
        "output": {"dir": str(tmp_path / "out")},
        "source": {**FAST_SOURCE, **source},
        "log_interval": 1.0,
    }
    path = tmp_path / "cameras.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_sigterm_drains_and_exits_0_with_complete_outputs(tmp_path, rtsp_server_factory, small_clip, tiny_model):
    srv = rtsp_server_factory({"a": f"file:{small_clip}", "b": f"file:{small_clip}"})
    hung = rtsp_server_factory({"h": f"file:{small_clip}"})
    hung.freeze()  # this camera's connect blocks for the 30 s timeouts: shutdown must not wait for it
    cfg = _run_config(tmp_path, [{"name": "a", "url": srv.url("a")}, {"name": "b", "url": srv.url("b")},
                                 {"name": "h", "url": hung.url("h")}], tiny_model, open_timeout_s=30,
                      read_timeout_s=30)
    proc = _cli(["run", str(cfg)], tmp_path)
    try:
        out = tmp_path / "out"

        def lines(cam: str) -> int:
            p = out / cam / "frames.jsonl"
            return len(p.read_bytes().splitlines()) if p.exists() else 0

        wait_for(lambda: min(lines("a"), lines("b")) >= 20 or proc.poll() is not None, 60, "outputs", 0.2)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert "received SIGTERM: stopping" in stderr and "stopped cleanly" in stderr
    assert "camera h: thread did not stop within 5 s" in stderr
    for cam in ("a", "b", "h"):
        finals = re.findall(rf"camera={cam} state=\w+ .* processed=(\d+)", stderr)
        assert finals, f"no periodic line for {cam}"
        path = out / cam / "frames.jsonl"
        records = read_jsonl(path) if path.exists() else []  # every line is complete JSON
        assert path.read_bytes().endswith(b"\n") if records else True
        assert len(records) == int(finals[-1]), f"{cam}: JSONL has {len(records)}, log says {finals[-1]}"
    assert int(re.findall(r"camera=a state=\w+ .* processed=(\d+)", stderr)[-1]) >= 20


def test_second_signal_exits_at_once_with_130(tmp_path, rtsp_server_factory, small_clip, tiny_model):
    hung = rtsp_server_factory({"h": f"file:{small_clip}"})
    hung.freeze()  # keeps the first shutdown busy (5 s join) so the second signal lands during it
    cfg = _run_config(tmp_path, [{"name": "h", "url": hung.url("h")}], tiny_model, open_timeout_s=30,
                      read_timeout_s=30)
    err = tmp_path / "stderr.txt"
    with err.open("w") as errf:
        proc = _cli(["run", str(cfg)], tmp_path, stderr=errf)
        try:
            wait_for(lambda: "running 1 cameras" in err.read_text(), 60, "start-up", 0.2)
            proc.send_signal(signal.SIGTERM)
            wait_for(lambda: "received SIGTERM: stopping" in err.read_text(), 10, "the first signal", 0.1)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 130, err.read_text()[-2000:]
    assert "stopped cleanly" not in err.read_text()


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("corrupt", "cameras: [\n  - name: a\n    url: rtsp://x/y\n  model: {", r"malformed YAML at line \d+"),
        ("unknown", "cameras:\n  - {name: a, url: 'rtsp://h/s', fps: 5}\nmodel: {path: m.onnx}\n",
         r"camera 'a', field 'fps': unknown key"),
        ("scheme", "cameras:\n  - {name: a, url: 'http://h/s'}\nmodel: {path: m.onnx}\n",
         r"camera 'a', field 'url': unsupported URL scheme 'http'"),
        ("duplicate", ("cameras:\n  - {name: a, url: 'rtsp://h/1'}\n  - {name: a, url: 'rtsp://h/2'}\n"
                       "model: {path: m.onnx}\n"), r"duplicate camera name 'a'"),
    ],
)
def test_config_errors_exit_2_with_a_message(tmp_path, name, text, message):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    proc = _cli(["run", str(path)], tmp_path)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {path}: "), line
    assert re.search(message, line), line
