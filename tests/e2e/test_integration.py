"""End to end on CPU: the real GStreamer RTSP server, real decoders, the project's ONNX model, JSONL outputs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import skip_or_fail

from rtsp_worker.config import parse_config
from rtsp_worker.pipeline import build_pipeline

pytestmark = pytest.mark.rtsp
REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "synth_det.onnx"


@pytest.fixture(scope="module")
def model() -> Path:
    if not MODEL.exists():
        skip_or_fail(f"{MODEL} is missing (scripts/train_detector.py makes it)")
    return MODEL


@pytest.fixture(scope="module")
def scene_clip(tmp_path_factory) -> Path:
    from rtsp_worker.sim.synthetic import write_sequence

    seq = write_sequence(tmp_path_factory.mktemp("scenes"), "scene", seed=4242, frames=90, size=(640, 360), fps=15)
    return seq / "video.mp4"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_four_rtsp_cameras_and_a_file_camera(tmp_path, rtsp_server_factory, scene_clip, model):
    mounts = {f"cam{i}": f"file:{scene_clip}" for i in range(4)}
    server = rtsp_server_factory(mounts)
    cameras = [{"name": name, "url": server.url(name)} for name in mounts]
    cameras.append({"name": "lobby", "url": scene_clip.as_uri()})
    cfg_path = tmp_path / "cameras.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "cameras": cameras,
        "model": {"path": str(model)},
        "output": {"dir": str(tmp_path / "out")},
        "log_interval": 2.0,
    }))
    proc = subprocess.run(
        [sys.executable, "-m", "rtsp_worker.cli", "run", str(cfg_path), "--duration", "10"],
        check=False, capture_output=True, text=True, timeout=90, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr
    total_objects = 0
    for cam in [c["name"] for c in cameras]:
        fps_lines = re.findall(rf"camera={cam} state=\w+ decode_fps=([\d.]+) processed_fps=([\d.]+)", log)
        assert fps_lines, f"no FPS log line for {cam}:\n{log[-2000:]}"
        assert max(float(p) for _, p in fps_lines) > 0
        records = read_jsonl(tmp_path / "out" / cam / "frames.jsonl")
        assert len(records) >= 10, (cam, len(records))
        frames = [r["frame"] for r in records]
        assert frames == sorted(frames) and len(set(frames)) == len(frames), f"{cam}: frame numbers not increasing"
        for r in records:
            assert r["camera"] == cam and r["ts"] > 0
            for o in r["objects"]:
                x1, y1, x2, y2 = o["box"]
                assert 0 <= x1 <= x2 <= 640 and 0 <= y1 <= y2 <= 360, o
                assert 0 < o["confidence"] <= 1 and o["class_name"] in ("person", "car", "bike")
                total_objects += 1
    assert total_objects > 0, "the detector found nothing on a synthetic scene"
    assert re.search(r"pipeline: fps=[\d.]+ batches=\d+ mean_batch=[\d.]+", log)


def test_server_killed_and_restarted(tmp_path, rtsp_server_factory, scene_clip, model):
    server = rtsp_server_factory({"cam0": f"file:{scene_clip}", "cam1": f"file:{scene_clip}"})
    cfg = parse_config({
        "cameras": [{"name": "cam0", "url": server.url("cam0")}, {"name": "cam1", "url": server.url("cam1")},
                    {"name": "lobby", "url": scene_clip.as_uri()}],
        "model": {"path": str(model)},
        "output": {"dir": str(tmp_path / "out")},
        "source": {"open_timeout_s": 2, "read_timeout_s": 2, "backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        "log_interval": 1.0,
    })
    pipeline = build_pipeline(cfg)
    worker = threading.Thread(target=pipeline.run, daemon=True)
    worker.start()
    try:
        def processed(i: int) -> int:
            return pipeline.stats[i].processed

        deadline = time.monotonic() + 20
        while min(processed(0), processed(1), processed(2)) < 5:
            assert time.monotonic() < deadline, [s.state for s in pipeline.stats]
            time.sleep(0.1)
        server.kill()
        time.sleep(0.5)
        lobby_before, rtsp_before = processed(2), processed(0)
        time.sleep(3)
        assert processed(2) > lobby_before + 5, "the file camera stalled while the RTSP server was down"
        assert processed(0) - rtsp_before <= 3, "frames arrived from a dead server"
        assert pipeline.stats[0].last_error, "the outage left no reason"
        server.restart()
        restarted = time.monotonic()
        resumed = {0: processed(0), 1: processed(1)}
        while any(processed(i) < resumed[i] + 5 for i in (0, 1)):
            assert time.monotonic() - restarted < 20, [(s.state, s.last_error) for s in pipeline.stats]
            time.sleep(0.1)
        assert worker.is_alive()
        assert pipeline.stats[0].reconnects >= 1 and pipeline.stats[1].reconnects >= 1
    finally:
        pipeline.stop()
        worker.join(30)
    assert not worker.is_alive()
    for cam in ("cam0", "cam1", "lobby"):
        frames = [r["frame"] for r in read_jsonl(tmp_path / "out" / cam / "frames.jsonl")]
        assert frames == sorted(frames) and len(frames) == len(set(frames))
