"""Issue 31 end to end: a synthetic scene with ground truth over the real RTSP server, through the worker
(the shipped model, tracker, analytics with lines, a loiter zone and the scene's ground-plane calibration,
heatmap), scored by rtsp_worker/sim/accuracy.py with loose bounds: a change that breaks counting, loitering
or speeds fails here. The heatmap routes and its PNG writer are checked on the same run.

Loose bounds, not targets: one 20 s scene on a shared 2-core machine processes frames at whatever rate it
can; the benchmark (benchmarks/bench_analytics_accuracy.py) measures the accuracy itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml
from conftest import skip_or_fail
from redis_fixture import free_port
from test_e2e_tracking import MODEL

from rtsp_worker.sim.accuracy import camera_config, score_scene, summarize

pytestmark = [pytest.mark.rtsp, pytest.mark.slow]
FPS = 15.0
SECONDS = 20
TOKEN = "heat-token-31"  # the control token: resets
VIEW_TOKEN = "heat-view-31"  # the view token: pictures, the heatmap among them


def _get(url: str, token: str | None = None, method: str = "GET") -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError):  # not listening yet
        return 0, b""


def test_rules_calibration_and_heatmap_end_to_end(tmp_path, rtsp_server_factory):
    from rtsp_worker.sim.synthetic import write_sequence

    if not MODEL.exists():
        skip_or_fail(f"{MODEL} is missing")
    seq = write_sequence(tmp_path / "scenes", "seq0", seed=3100, frames=int(SECONDS * FPS), size=(640, 360), fps=FPS)
    server = rtsp_server_factory({"seq0": f"file:{seq / 'video.mp4'}"})
    port = free_port()
    cam = camera_config("seq0", server.url("seq0")) | {"heatmap": {"cell": 16, "write_every_s": 5}}
    cfg_path = tmp_path / "cameras.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "cameras": [cam], "model": {"path": str(MODEL)}, "tracker": {"max_age": 15},
        "output": {"dir": str(tmp_path / "out")}, "metrics": {"port": port}, "control": {"token": TOKEN},
        "view": {"token": VIEW_TOKEN},
    }))
    proc = subprocess.Popen([sys.executable, "-m", "rtsp_worker.cli", "run", str(cfg_path), "--duration",
                             str(SECONDS - 3)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        png = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            status, png = _get(f"{base}/cameras/seq0/heatmap.png", VIEW_TOKEN)
            if status == 200 and len(png) > 100:
                break
            time.sleep(0.5)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        assert _get(f"{base}/cameras/seq0/heatmap.png")[0] == 401  # the view's rule: no token, refused
        assert _get(f"{base}/cameras/seq0/heatmap.png", TOKEN)[0] == 401  # the control token is not the view's
        assert _get(f"{base}/cameras/seq0/heatmap/reset", method="POST")[0] == 401
        assert _get(f"{base}/cameras/nope/heatmap/reset", TOKEN, method="POST")[0] == 404
        status, body = _get(f"{base}/cameras/seq0/heatmap/reset", TOKEN, method="POST")
        assert status == 200 and json.loads(body) == {"camera": "seq0", "reset": True}
        _, metrics = _get(f"{base}/metrics")
        _, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    assert b"rtsp_worker_rule_events" in metrics
    assert list((tmp_path / "out" / "seq0" / "heatmaps").glob("heatmap-*.png"))

    result = summarize([score_scene(seq, tmp_path / "out" / "seq0", 3100, int(SECONDS * FPS), FPS, 17)])
    print(json.dumps(result, indent=1))
    truth_lines = sum(v["truth"] for v in result["line_counts"].values())
    assert truth_lines >= 3, result  # the scene has crossings to count
    assert result["line_count_error_pct"] <= 60, result
    assert result["loiter"]["tp"] >= 1 and (result["loiter"]["recall"] or 0) >= 0.5, result
    assert (result["loiter"]["precision"] or 0) >= 0.5, result
    assert result["speed_error"]["n"] >= 50 and result["speed_error"]["median_pct"] <= 25, result
    assert result["dwell_error_s"]["n"] >= 1 and result["dwell_error_s"]["median"] <= 4.0, result
    frames = (tmp_path / "out" / "seq0" / "frames.jsonl").read_text().splitlines()
    assert any('"speed"' in line and '"world"' in line for line in frames)
