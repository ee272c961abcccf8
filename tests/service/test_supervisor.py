"""`rtsp-worker run --workers 2 --device cpu` on 6 real RTSP cameras with a real Redis: the cameras split
between the workers as the sharding says, a worker killed with -9 is restarted and its cameras resume while
the other keeps going, SIGTERM to the supervisor flushes both, one box-wide /metrics with a `worker` label and
box-wide /healthz and /readyz with every worker's own answer."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from ops_support import FAST_SOURCE, REPO, small_clip, tiny_model, wait_for
from redis_fixture import free_port, redis_server_factory

from rtsp_worker.service.sharding import assign
from rtsp_worker.service.supervisor import Supervisor, describe_exit, worker_count, worker_devices

pytestmark = [pytest.mark.rtsp, pytest.mark.redis, pytest.mark.slow]
FIXTURES = (small_clip, tiny_model, redis_server_factory)
CAMERAS = [f"cam{i}" for i in range(6)]
START_S = 240  # two workers importing torch + ONNX Runtime on a shared two-core machine: be generous


def _records(path: Path) -> list[dict]:
    """JSONL records; a line cut by the kill -9 and glued to the next life's first line yields that one."""
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            start = line.rfind('{"camera"')
            if start > 0:
                out.append(json.loads(line[start:]))
    return out


def _last_life(records: list[dict]) -> list[dict]:
    """The records written by the newest process: frame numbers restart at 0 with each process."""
    start = 0
    for i in range(1, len(records)):
        if records[i]["frame"] < records[i - 1]["frame"]:
            start = i
    return records[start:]


def _lines(out: Path, cam: str) -> int:
    p = out / cam / "frames.jsonl"
    return len(p.read_bytes().splitlines()) if p.exists() else 0


def _finals(log: str, worker: int) -> dict[str, int]:
    """camera -> processed= from the worker's last periodic line for it (the final one after a stop)."""
    found = {}
    for cam, n in re.findall(rf"worker={worker} rtsp_worker\.pipeline: camera=(\S+) state=\S+ .* processed=(\d+)", log):
        found[cam] = int(n)
    return found


def test_two_workers_split_restart_and_flush(tmp_path, rtsp_server_factory, small_clip, tiny_model,
                                             redis_server_factory):
    server = rtsp_server_factory({c: f"file:{small_clip}" for c in CAMERAS})
    redis = redis_server_factory()
    out = tmp_path / "out"
    port = free_port()
    cfg = {
        "cameras": [{"name": c, "url": server.url(c)} for c in CAMERAS],
        "model": {"path": str(tiny_model), "threads": 1},
        "detection": {"confidence": 0.5, "max_detections": 8, "max_candidates": 64},
        "tracker": {"max_tracks": 32, "min_hits": 1},
        "output": {"dir": str(out), "redis": {"url": redis.url}},
        "source": dict(FAST_SOURCE),
        "metrics": {"port": port},
        "log_interval": 1.0,
    }
    path = tmp_path / "cameras.yaml"
    path.write_text(yaml.safe_dump(cfg))
    owner = assign(CAMERAS, 2)
    mine = {k: [c for c in CAMERAS if owner[c] == k] for k in (0, 1)}
    assert mine[0] and mine[1]
    err = tmp_path / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with err.open("w") as errf:
        sup = subprocess.Popen([sys.executable, "-m", "rtsp_worker.cli", "run", str(path), "--workers", "2",
                                "--device", "cpu"], cwd=tmp_path, env=env, stderr=errf)
        try:
            wait_for(lambda: min(_lines(out, c) for c in CAMERAS) >= 10 or sup.poll() is not None, START_S,
                     "every camera to write", 0.5)
            assert sup.poll() is None, err.read_text()[-3000:]

            # One box-wide endpoint: every worker's series with a worker label, and the workers' health.
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                text = r.read().decode()
            for k in (0, 1):
                for cam in mine[k]:
                    assert f'rtsp_worker_frames_processed_total{{camera="{cam}",worker="{k}"}}' in text or \
                        f'rtsp_worker_frames_processed_total{{worker="{k}",camera="{cam}"}}' in text, cam
                assert f'rtsp_worker_worker_up{{worker="{k}"}} 1.0' in text
            assert text.count("# TYPE rtsp_worker_frames_processed_total counter") == 1  # families merged
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as r:
                ready = json.loads(r.read())
            assert ready["ready"] and set(ready["workers"]) == {"0", "1"}
            assert all(w["body"]["ready"] for w in ready["workers"].values())
            # /healthz: 200 and every worker's own answer, keyed by its index, with its shard and pid.
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:
                assert r.status == 200 and r.headers.get_content_type() == "application/json"
                health = json.loads(r.read())
            assert health["healthy"] is True and set(health["workers"]) == {"0", "1"}
            for k in (0, 1):
                entry = health["workers"][str(k)]
                assert entry["shard"] == f"{k}/2" and entry["code"] == 200 and entry["restarts"] == 0, entry
                assert isinstance(entry["pid"], int) and entry["body"]["status"] == "ok", entry

            # kill -9 worker 1: the supervisor restarts it, its cameras resume, worker 0 never stops.
            pid = int(re.search(r"worker 1 started: pid (\d+)", err.read_text()).group(1))
            os.kill(pid, signal.SIGKILL)
            killed_at = {c: _lines(out, c) for c in mine[1]}
            other = [sum(_lines(out, c) for c in mine[0])]
            deadline = time.monotonic() + START_S
            while not all(_lines(out, c) >= killed_at[c] + 10 for c in mine[1]):
                assert time.monotonic() < deadline, "worker 1's cameras did not resume\n" + err.read_text()[-3000:]
                assert sup.poll() is None, err.read_text()[-3000:]
                time.sleep(2.0)
                other.append(sum(_lines(out, c) for c in mine[0]))
            steps = [b - a for a, b in itertools.pairwise(other)]
            assert steps and min(steps) > 0, f"worker 0 stalled during worker 1's restart: {steps}"
            log = err.read_text()
            assert re.search(rf"worker 1 \(pid {pid}, shard 1/2\) exited with signal SIGKILL after [\d.]+ s; "
                             r"restarting in 1\.0 s \(restart 1\)", log), log[-3000:]
            assert len(re.findall(r"worker 1 started: pid", log)) == 2
            assert len(re.findall(r"worker 0 started: pid", log)) == 1
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                assert 'rtsp_worker_worker_restarts_total{worker="1"} 1.0' in r.read().decode()

            # SIGHUP to the box reloads every worker's shard, as it would a single worker; it never
            # kills the supervisor (the default action) and orphans the workers.
            sup.send_signal(signal.SIGHUP)
            wait_for(lambda: len(re.findall(r"worker=\d rtsp_worker: received SIGHUP: reloading the cameras",
                                            err.read_text())) == 2, 60, "both workers reloading", 0.5)
            assert "received SIGHUP: passing it to 2 worker(s)" in err.read_text()
            assert sup.poll() is None, err.read_text()[-3000:]

            sup.send_signal(signal.SIGTERM)
            sup.wait(timeout=120)
        finally:
            if sup.poll() is None:
                sup.kill()
    log = err.read_text()
    assert sup.returncode == 0, log[-3000:]
    assert "received SIGTERM: stopping the workers" in log
    for k in (0, 1):
        assert f"worker {k} (pid" in log and re.search(rf"worker {k} \(pid \d+\) stopped with code 0", log), log[-3000:]
        assert len(re.findall(rf"worker={k} rtsp_worker: stopped cleanly", log)) == 1
        finals = _finals(log, k)
        assert sorted(finals) == sorted(mine[k]), f"worker {k} ran {sorted(finals)}, its shard is {mine[k]}"
    client = redis.client()
    for cam in CAMERAS:
        records = _records(out / cam / "frames.jsonl")
        k = owner[cam]
        # Worker 0 lived once: its JSONL is exactly what it processed. Worker 1's newest life likewise.
        life = records if k == 0 else _last_life(records)
        assert len(life) == _finals(log, k)[cam], f"{cam}: JSONL {len(life)} vs processed={_finals(log, k)[cam]}"
        assert len(life) < len(records) if k == 1 else True  # the first life's lines are still there
        if k == 0:  # the Redis stream got the same results (worker 1's first life may have lost a batch)
            assert client.xlen(f"rtsp-worker:{cam}") == len(records)


class _Cfg:
    def __init__(self, **kw) -> None:
        self.workers, self.devices, self.workers_per_gpu, self.device = 1, None, 1, "cpu"
        self.__dict__.update(kw)


def test_worker_count_and_devices_round_robin(monkeypatch):
    import rtsp_worker.service.supervisor as sup

    monkeypatch.setattr(sup, "visible_gpus", lambda: 2)
    cfg = _Cfg(workers="auto", workers_per_gpu=2, devices="auto")
    assert worker_count(cfg) == 4 and worker_count(cfg, 3) == 3
    assert worker_devices(cfg, 4) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert worker_devices(_Cfg(devices=["cuda:1", "cpu"]), 3) == ["cuda:1", "cpu", "cuda:1"]
    assert worker_devices(_Cfg(device="cuda:0"), 2) == ["cuda:0", "cuda:0"]
    assert worker_devices(cfg, 2, override="cpu") == ["cpu", "cpu"]
    assert worker_devices(_Cfg(workers="auto"), 2) == ["cuda:0", "cuda:1"]  # auto: one worker per GPU
    monkeypatch.setattr(sup, "visible_gpus", lambda: 0)
    assert worker_count(_Cfg(workers="auto")) == 1 and worker_devices(cfg, 1) == ["cpu"]
    assert describe_exit(-9) == "signal SIGKILL" and describe_exit(4) == "code 4"


@pytest.mark.parametrize(("error", "code"), [("model", 3), ("config", 2)])
def test_model_or_config_error_in_a_worker_stops_the_box_with_its_code(tmp_path, error, code):
    # A worker that exits with a model (3) or configuration (2) error is not restarted: a restart cannot fix
    # it, so the supervisor stops every worker and exits with that code.
    model = tmp_path / "m.onnx"
    path = tmp_path / "cameras.yaml"
    raw = {"cameras": [{"name": "a", "url": "rtsp://127.0.0.1:1/a"}, {"name": "b", "url": "rtsp://127.0.0.1:1/b"}],
           "model": {"path": str(model)}, "device": "cpu"}
    path.write_text(yaml.safe_dump(raw))
    from rtsp_worker.config import load_config

    cfg = load_config(path)
    supervisor = Supervisor(path, cfg, 2, ["cpu", "cpu"], ["--log-level", "WARNING"])
    assert supervisor.command(supervisor.workers[1])[3:8] == ["run", str(path), "--shard", "1/2", "--device"]
    if error == "config":  # the file edited after the supervisor read it: the workers cannot load it
        path.write_text(yaml.safe_dump({**raw, "detection": {"confidence": 2.0}}))
    # else: the model file does not exist, a model error
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        assert supervisor.run() == code
    finally:
        signal.signal(signal.SIGINT, saved[0])
        signal.signal(signal.SIGTERM, saved[1])
    assert all(w.restarts == 0 for w in supervisor.workers)
