"""An operator's bad day, with real parts: a full disk (a real small tmpfs), Redis refusing every write
(a real redis-server: wrong key type, a DB index it does not have), external log rotation, a restart on
the same folder, SIGKILL during a video, SIGHUP/SIGUSR1, an unwritable output folder, NaN boxes."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import pytest
import torch
import yaml
from ops_support import (
    FAST_SOURCE,
    REPO,
    PipelineThread,
    make_config,
    read_jsonl,
    small_clip,
    tiny_model,
    wait_for,
)
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis_fixture import free_port, redis_server_factory
from sink_support import ListSink, result

from rtsp_worker.config import RedisConfig
from rtsp_worker.detection.finite import drop_nonfinite
from rtsp_worker.engines.base import ModelInfo
from rtsp_worker.loop import PeriodicLog
from rtsp_worker.pipeline import build_pipeline
from rtsp_worker.service.metrics import PipelineMetrics
from rtsp_worker.sim.clips import write_test_clip
from rtsp_worker.sinks import SinkRunner
from rtsp_worker.sinks.jsonl import JsonlSink
from rtsp_worker.sinks.lines import OutputDirError
from rtsp_worker.sinks.video import VideoSink
from rtsp_worker.types import Batch, Detections, Frame

FIXTURES = (small_clip, tiny_model, redis_server_factory)


def strict_json(line: str) -> dict:
    def refuse(token: str) -> float:
        raise ValueError(f"non-JSON number {token}")

    return json.loads(line, parse_constant=refuse)


def mounted_tmpfs(mnt: Path, options: str, what: str) -> Iterator[Path]:
    """A real tmpfs mounted at `mnt` with `options` for the test, unmounted after it; skips when it cannot mount."""
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount {what} here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


# -- disk full --------------------------------------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs: writes fail with ENOSPC once it is full."""
    yield from mounted_tmpfs(tmp_path / "small", "size=64k", "a tmpfs (needs root)")


def test_disk_full_loses_whole_lines_counted_and_other_sinks_go_on(small_fs: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    jsonl, other = JsonlSink(small_fs), ListSink()
    runner = SinkRunner([jsonl, other], queue_size=1000)  # no queue drops: only the disk loses lines
    n = 600
    for i in range(n):
        runner.submit([result("cam", i, n_objects=3)])
    runner.close()
    data = (small_fs / "cam" / "frames.jsonl").read_bytes()
    assert data.endswith(b"\n"), "the file ends in half a record"
    on_disk = [strict_json(line) for line in data.decode().splitlines()]
    assert 0 < len(on_disk) < n
    assert jsonl.failed == n - len(on_disk) and jsonl.errors >= 1
    # What the operator sees: drops and errors that add up, one throttled error line.
    assert runner.sink_status("jsonl").lost == n - len(on_disk) and runner.sink_status("jsonl").errors >= 1
    assert other.written == list(range(n)), "another sink lost results because the disk was full"
    assert len(re.findall(r"jsonl .*cam/frames\.jsonl: write failed", caplog.text)) <= 3
    assert "No space left on device" in caplog.text


def test_restart_terminates_a_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "cam" / "frames.jsonl"
    path.parent.mkdir()
    path.write_bytes(b'{"camera":"cam","frame":0}\n{"camera":"cam","fra')  # a run killed mid-write
    sink = JsonlSink(tmp_path, run="run2")
    sink.write([result("cam", 0)])
    sink.close()
    lines = path.read_text().splitlines()
    assert lines[1] == '{"camera":"cam","fra'  # the broken record stays one (bad) line
    rec = strict_json(lines[2])
    assert rec["run"] == "run2" and rec["frame"] == 0


# -- Redis refusing writes ------------------------------------------------------------------------------
@pytest.mark.redis
def test_redis_rejections_are_counted_as_errors_and_drops_and_logged_throttled(redis_server_factory,
                                                                               caplog) -> None:
    from rtsp_worker.sinks.redis import RedisSink

    caplog.set_level(logging.INFO)
    server = redis_server_factory()
    server.client().set("t:bad", "a string, not a stream")  # wrong key type for XADD
    sink = RedisSink(RedisConfig(url=server.url, stream_prefix="t:"), error_interval_s=3600)
    runner = SinkRunner([sink])
    for i in range(50):
        runner.submit([result("bad", i), result("good", i)])
    runner.close()
    assert sink.failed == 50 and sink.sent == 50 and sink.errors >= 1
    assert runner.sink_status("redis").lost == 50 and runner.sink_status("redis").errors >= 1
    assert server.client().xlen("t:good") == 50, "one bad key cost the other camera's entries"
    lines = [r for r in caplog.records if "rejected" in r.getMessage() and "t:bad" in r.getMessage()]
    assert 1 <= len(lines) <= 2, [r.getMessage() for r in lines]  # first one, then one summary at close
    assert "WRONGTYPE" in lines[0].getMessage()

    caplog.clear()
    bad_db = RedisSink(RedisConfig(url=server.url.rsplit("/", 1)[0] + "/99"), error_interval_s=3600)
    for i in range(20):
        bad_db.write([result("a", i)])
    bad_db.close()
    assert bad_db.failed == 20 and bad_db.sent == 0
    assert "DB index is out of range" in caplog.text
    assert caplog.text.count("DB index is out of range") <= 3


# -- rotation, restart, video ---------------------------------------------------------------------------
def test_external_rotation_is_followed(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path, check_interval_s=0.0)  # check on every write
    path = tmp_path / "cam" / "frames.jsonl"
    sink.write([result("cam", 0)])
    path.rename(tmp_path / "cam" / "frames.jsonl.old")  # logrotate's `mv`
    sink.write([result("cam", 1)])
    path.unlink()  # `rm`
    sink.write([result("cam", 2)])
    sink.close()
    assert [r["frame"] for r in read_jsonl(tmp_path / "cam" / "frames.jsonl.old")] == [0]
    assert [r["frame"] for r in read_jsonl(path)] == [2]

    slow = JsonlSink(tmp_path / "b", check_interval_s=3600)  # only SIGUSR1 (reopen) makes it look
    slow.write([result("cam", 0)])
    (tmp_path / "b" / "cam" / "frames.jsonl").rename(tmp_path / "b" / "moved")
    slow.reopen()
    slow.write([result("cam", 1)])
    slow.close()
    assert [r["frame"] for r in read_jsonl(tmp_path / "b" / "cam" / "frames.jsonl")] == [1]


def test_restart_gets_a_new_run_id_and_never_overwrites_a_video(tmp_path: Path) -> None:
    grey = torch.full((240, 320, 3), 60, dtype=torch.uint8)
    for run in ("first", "second"):
        jsonl, video = JsonlSink(tmp_path, run=run), VideoSink(tmp_path)
        batch = [result("a", i, image=grey, ts=1e9 + i / 15) for i in range(10)]
        jsonl.write(batch)
        video.write(batch)
        jsonl.close()
        video.close()
    records = read_jsonl(tmp_path / "a" / "frames.jsonl")
    assert [(r["run"], r["frame"]) for r in records] == [("first", i) for i in range(10)] + [
        ("second", i) for i in range(10)]
    for name in ("video.mp4", "video.1.mp4"):
        with av.open(str(tmp_path / "a" / name)) as c:
            assert sum(1 for _ in c.decode(video=0)) == 10, name


def test_sigkill_keeps_the_annotated_video_written_so_far(tmp_path: Path) -> None:
    code = f"""
import os, sys, torch
sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]
from sink_support import result
from rtsp_worker.sinks.video import VideoSink
sink = VideoSink({str(tmp_path)!r})
grey = torch.full((240, 320, 3), 60, dtype=torch.uint8)
for i in range(150):
    sink.write([result("a", i, image=grey, ts=1e9 + i / 15)])
os.kill(os.getpid(), 9)  # no close(): as after SIGKILL, OOM or a second signal
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    with av.open(str(tmp_path / "a" / "video.mp4")) as c:
        frames = sum(1 for _ in c.decode(video=0))
    assert frames >= 150 - 2 * 30, frames  # at most the last fragment (gop 30) and the encoder's delay lost


# -- NaN ------------------------------------------------------------------------------------------------
def test_drop_nonfinite_neutralises_bad_rows_without_resizing() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [float("nan"), 0, 1, 1], [0, 0, float("inf"), 5], [1, 1, 2, 2.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, float("nan")])
    dets = Detections(boxes, scores, torch.zeros(4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64))
    out, count = drop_nonfinite(dets)
    assert int(count) == 3
    assert torch.isfinite(out.boxes).all() and torch.isfinite(out.scores).all()
    assert out.scores.tolist()[0] == pytest.approx(0.9) and (out.scores[1:] < 0).all()


class NanEngine:
    """An engine whose every output is NaN boxes with high scores: an FP16 overflow."""

    def __init__(self) -> None:
        self.info = ModelInfo(input_size=(64, 96), class_names=("person", "car", "bike"), max_batch=None,
                              dynamic_batch=True)
        self.device = torch.device("cpu")
        self.input_dtype = torch.float32
        self.warmup_ms: dict[int, float] = {}

    def infer(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.full((images.shape[0], 7, 20), 0.9)
        out[:, :4] = float("nan")
        return out

    def close(self) -> None:
        pass


def _grey_frame(seq: int) -> Frame:
    return Frame(row=0, seq=seq, ts=1e9 + seq, image=torch.zeros((240, 320, 3), dtype=torch.uint8), height=240,
                 width=320)


def test_nan_detections_never_reach_a_sink(tmp_path: Path, tiny_model: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    cfg = make_config([{"name": "cam", "url": "rtsp://127.0.0.1:1/x"}], tiny_model, tmp_path)
    pipeline = build_pipeline(cfg, engine=NanEngine())
    reporter = PeriodicLog(pipeline, 3600)
    for i in range(5):
        pipeline.step(Batch((_grey_frame(i),)))
    metrics = {s.name: s.value for fam in text_string_to_metric_families(
        generate_latest(PipelineMetrics(pipeline).registry).decode()) for s in fam.samples}
    pipeline.shutdown(reporter, join_timeout=0)
    lines = (tmp_path / "cam" / "frames.jsonl").read_text().splitlines()
    assert len(lines) == 5 and all(strict_json(line)["objects"] == [] for line in lines)
    assert pipeline.status().nonfinite == 5 * 8  # max_detections per frame, every one NaN
    # What the operator sees: the Prometheus counter and the pipeline line carry the same count.
    assert metrics["rtsp_worker_nonfinite_detections_total"] == 5 * 8
    final = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pipeline final:")]
    assert len(final) == 1 and final[0].endswith(" nonfinite_dropped=40"), final


class _Clock:
    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t


def test_final_line_rates_are_over_the_whole_run(tmp_path: Path, tiny_model: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="rtsp_worker.pipeline")
    cfg = make_config([{"name": "cam", "url": "rtsp://127.0.0.1:1/x"}], tiny_model, tmp_path)
    pipeline = build_pipeline(cfg)
    clock = _Clock()
    reporter = PeriodicLog(pipeline, 10.0, clock=clock)
    for i in range(30):
        pipeline.step(Batch((_grey_frame(i),)))
    clock.t += 10.0
    reporter.maybe_log()  # a periodic line: 30 frames in 10 s
    for i in range(30, 40):
        pipeline.step(Batch((_grey_frame(i),)))
    clock.t += 0.004  # the stop comes 4 ms after that line
    pipeline.shutdown(reporter, join_timeout=0)
    lines = [r.getMessage() for r in caplog.records]
    pipe = [m for m in lines if m.startswith("pipeline")]
    cam = [m for m in lines if m.startswith("camera=cam ")]
    assert len(pipe) == 2 and pipe[0].startswith("pipeline: fps=3.0 batches=30 ")
    # 40 frames in 10.004 s, not 10 frames in 4 ms (2500 fps).
    assert pipe[1].startswith("pipeline final: fps=4.0 batches=40 "), pipe[1]
    assert "processed_fps=3.0 " in cam[0] and "processed_fps=4.0 " in cam[1] and cam[1].endswith("processed=40")


# -- what the periodic lines say ----------------------------------------------------------------------------
def _camera_lines(caplog, cam: str) -> list[str]:
    return [r.getMessage() for r in list(caplog.records) if r.getMessage().startswith(f"camera={cam} state=")]


@pytest.mark.rtsp
@pytest.mark.slow
def test_last_error_leaves_the_periodic_line_once_the_camera_recovers(tmp_path, rtsp_server_factory, small_clip,
                                                                      tiny_model, caplog) -> None:
    caplog.set_level(logging.INFO, logger="rtsp_worker.pipeline")
    srv = rtsp_server_factory({"a": f"file:{small_clip}"})
    srv.kill()  # down when the worker starts
    cfg = make_config([{"name": "a", "url": srv.url("a")}], tiny_model, tmp_path / "out", log_interval=0.5)
    pipeline = build_pipeline(cfg)
    st = pipeline.stats[0]
    runner = PipelineThread(pipeline)
    try:
        wait_for(lambda: any("last_error=" in m for m in _camera_lines(caplog, "a")), 20, "a line with the error")
        srv.restart()
        wait_for(lambda: st.processed >= 5, 30, "the camera to stream again")
        seen = len(_camera_lines(caplog, "a"))
        wait_for(lambda: sum("state=streaming" in m for m in _camera_lines(caplog, "a")[seen:]) >= 2, 20,
                 "periodic lines after the recovery")
    finally:
        runner.stop()
    lines = _camera_lines(caplog, "a")
    first_ok = next(i for i, m in enumerate(lines) if "state=streaming" in m)
    assert all("last_error=" in m for m in lines[:first_ok] if "state=backoff" in m)
    after = lines[first_ok:]  # the streaming lines and the final one (state=stopped)
    assert len(after) >= 3 and not [m for m in after if "last_error=" in m], after
    assert st.last_error == "" and st.reconnects >= 1


def test_a_looping_file_camera_does_not_count_reconnects(tmp_path, tiny_model, caplog) -> None:
    caplog.set_level(logging.INFO)
    clip = write_test_clip(tmp_path / "second.mp4", seconds=1, fps=15, size=(160, 128))  # 15 frames
    cfg = make_config([{"name": "f", "url": clip.as_uri()}], tiny_model, tmp_path / "out", log_interval=0.5)
    pipeline = build_pipeline(cfg)
    st = pipeline.stats[0]
    metrics = PipelineMetrics(pipeline)
    runner = PipelineThread(pipeline)
    try:
        wait_for(lambda: st.decoded >= 3 * 15 + 3, 30, "the clip to start over twice")
        before = st.processed
        wait_for(lambda: st.processed >= before + 5, 10, "frames after the loops")
        scraped = {(s.name, tuple(s.labels.items())): s.value for fam in text_string_to_metric_families(
            generate_latest(metrics.registry).decode()) for s in fam.samples}
    finally:
        runner.stop()
    assert st.reconnects == 0 and st.state.value == "stopped"
    assert scraped[("rtsp_worker_reconnects_total", (("camera", "f"),))] == 0
    lines = _camera_lines(caplog, "f")
    assert len(lines) >= 2 and all(" reconnects=0 " in m for m in lines), lines
    assert "reconnected" not in caplog.text and caplog.text.count("camera f (file://") == 1  # the one "opened"


# -- the command line: signals, an unwritable folder, every camera disabled ----------------------------------
def _cli(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    env = kw.pop("env", None) or {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "rtsp_worker.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=kw.pop("stderr", subprocess.PIPE), text=True, **kw)


def _write_config(tmp_path: Path, cameras: list[dict], model: Path, out: Path, **source) -> Path:
    cfg = {"cameras": cameras, "model": {"path": str(model)}, "device": "cpu",
           "detection": {"confidence": 0.5, "max_detections": 8, "max_candidates": 64},
           "tracker": {"max_tracks": 32, "min_hits": 1}, "output": {"dir": str(out)},
           "source": {**FAST_SOURCE, **source}, "log_interval": 1.0}
    path = tmp_path / "cameras.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.rtsp
@pytest.mark.slow
def test_sighup_does_not_kill_and_sigusr1_reopens_after_rotation(tmp_path, rtsp_server_factory, small_clip,
                                                              tiny_model) -> None:
    srv = rtsp_server_factory({"a": f"file:{small_clip}"})
    out = tmp_path / "out"
    cfg = _write_config(tmp_path, [{"name": "a", "url": srv.url("a")}], tiny_model, out)
    proc = _cli(["run", str(cfg)], tmp_path)
    path = out / "a" / "frames.jsonl"
    try:
        wait_for(lambda: path.exists() and len(path.read_bytes().splitlines()) >= 10 or proc.poll() is not None,
                 60, "outputs", 0.2)
        proc.send_signal(signal.SIGHUP)
        path.rename(out / "a" / "frames.jsonl.1")
        proc.send_signal(signal.SIGUSR1)
        wait_for(lambda: path.exists() and len(path.read_bytes().splitlines()) >= 5 or proc.poll() is not None,
                 30, "the reopened file", 0.2)
        assert proc.poll() is None, "SIGHUP killed the worker"
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    # `run` has a config file: SIGHUP reloads it (unchanged here: nothing to apply), never the default action.
    assert "received SIGHUP: reloading the cameras" in stderr and "received SIGUSR1: reopening output files" in stderr
    total = len(read_jsonl(out / "a" / "frames.jsonl.1")) + len(read_jsonl(path))
    final = re.findall(r"camera=a state=\w+ .* processed=(\d+)", stderr)[-1]
    assert total == int(final), (total, final)
    assert re.search(r"pipeline final: .* sink_drops=0 sink_errors=0", stderr)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    yield from mounted_tmpfs(tmp_path / "ro", "ro,size=16k", "a read-only tmpfs")


@pytest.mark.parametrize("where", ["read-only mount", "under a file"])
def test_unwritable_output_dir_is_one_line_and_exit_4(tmp_path, tiny_model, where, request) -> None:
    if where == "read-only mount":
        out = request.getfixturevalue("read_only_dir") / "out"
    else:
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "out"
    with pytest.raises(OutputDirError, match=r"output.dir .*: cannot write there"):
        JsonlSink(out)
    cfg = _write_config(tmp_path, [{"name": "a", "url": f"rtsp://127.0.0.1:{free_port()}/x"}], tiny_model, out)
    proc = _cli(["run", str(cfg), "--duration", "5"], tmp_path)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 4, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: output.dir {out}: cannot write there: "), last


@pytest.mark.slow
def test_every_camera_disabled_exits_4_with_a_message(tmp_path, tiny_model) -> None:
    cams = [{"name": n, "url": f"rtsp://127.0.0.1:{free_port()}/x"} for n in ("a", "b")]
    cfg = _write_config(tmp_path, cams, tiny_model, tmp_path / "out", max_failures=2)
    proc = _cli(["run", str(cfg)], tmp_path)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 4, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == (
        "error: every camera is disabled (source.max_failures reached); nothing to do")


@pytest.mark.parametrize(("case", "url", "enabled", "message"), [
    ("every camera disabled", "rtsp://127.0.0.1:1/x", False, "no camera is enabled"),
    ("raw # in the password", "rtsp://admin:${CAM_PW}@127.0.0.1:1/x", True,
     ("camera 'a', field 'url': the password (or user name) holds an unencoded '#', which ends the host part of "
      'a URL (FFmpeg refuses it: "Invalid argument"); percent-encode the password: # as %23, ? as %3F, / as %2F')),
])
def test_config_refused_at_start_is_one_line_and_exit_2(tmp_path, tiny_model, case, url, enabled, message) -> None:
    pw = "Hq7#zx/Pw?k"
    cfg = _write_config(tmp_path, [{"name": "a", "url": url, "enabled": enabled}], tiny_model, tmp_path / "out")
    proc = _cli(["run", str(cfg), "--duration", "5"], tmp_path, env={**os.environ, "PYTHONPATH": str(REPO),
                                                                    "CAM_PW": pw})
    out, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr and out == ""
    assert stderr.strip().splitlines() == [f"error: {cfg}: {message}"]
    assert "Hq7" not in stderr and "zx" not in stderr


@pytest.mark.parametrize("timeout", ["0", "300"])
def test_probe_timeout_out_of_range_is_a_usage_error(tmp_path, timeout) -> None:
    proc = _cli(["probe", "rtsp://127.0.0.1:1/x", "--timeout", timeout], tmp_path)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in stderr and "--timeout" in stderr, stderr


@pytest.mark.parametrize("port", ["65536", "99999"])
def test_metrics_port_out_of_range_is_a_usage_error(tmp_path, tiny_model, port) -> None:
    cfg = _write_config(tmp_path, [{"name": "a", "url": "rtsp://127.0.0.1:1/x"}], tiny_model, tmp_path / "out")
    proc = _cli(["run", str(cfg), "--metrics-port", port, "--duration", "1"], tmp_path)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "Traceback" not in stderr and "--metrics-port" in stderr, stderr


@pytest.mark.slow
def test_run_duration_0_means_until_stopped(tmp_path, tiny_model) -> None:
    cfg = _write_config(tmp_path, [{"name": "a", "url": f"rtsp://127.0.0.1:{free_port()}/x"}], tiny_model,
                        tmp_path / "out")
    err = tmp_path / "stderr.txt"
    with err.open("w") as errf:
        proc = _cli(["run", str(cfg), "--duration", "0"], tmp_path, stderr=errf)
        try:
            wait_for(lambda: "running 1 cameras" in err.read_text() or proc.poll() is not None, 90, "start-up", 0.2)
            time.sleep(3)
            assert proc.poll() is None, "--duration 0 stopped at once"
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err.read_text()[-2000:]
