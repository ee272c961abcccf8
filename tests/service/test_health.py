"""/healthz and /readyz: before the engine is loaded, while streaming, with every camera down, and a stalled
inference loop. Real HTTP server, real RTSP server, real decoders and a real ONNX model."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from ops_support import PipelineThread, make_config, small_clip, tiny_model, wait_for

from rtsp_worker.pipeline import build_pipeline
from rtsp_worker.service.health import Health
from rtsp_worker.service.metrics import serve_metrics
from rtsp_worker.service.server import HttpServer
from rtsp_worker.sources.state import CameraState
from rtsp_worker.status import PipelineStatus

FIXTURES = (small_clip, tiny_model)


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.rtsp
@pytest.mark.slow
def test_health_before_load_while_streaming_and_with_every_camera_down(tmp_path, rtsp_server_factory, small_clip,
                                                                       tiny_model):
    server = rtsp_server_factory({"a": f"file:{small_clip}", "b": f"file:{small_clip}"})
    cfg = make_config([{"name": "a", "url": server.url("a")}, {"name": "b", "url": server.url("b")}],
                      tiny_model, tmp_path / "out")
    health = Health(max_silence_s=30)
    http = health.register(HttpServer("127.0.0.1", 0)).start()
    metrics = runner = None
    try:
        # 1. Before the engine is loaded: alive ("starting"), not ready.
        code, body = _get(f"{http.url}/healthz")
        assert (code, body["status"]) == (200, "starting")
        code, body = _get(f"{http.url}/readyz")
        assert code == 503 and body == {"ready": False, "reason": "engine not loaded yet"}

        pipeline = build_pipeline(cfg)
        health.attach(pipeline)
        metrics = serve_metrics(pipeline, http=http)  # /metrics on the same server: one port
        runner = PipelineThread(pipeline)
        st = dict(zip([c.name for c in pipeline.cameras], pipeline.stats))

        # 2. Streaming: both answer 200; readiness lists each camera's state.
        wait_for(lambda: all(s.processed >= 5 for s in st.values()), 60, "both cameras to stream")
        code, body = _get(f"{http.url}/healthz")
        assert code == 200 and body["status"] == "ok" and body["batches"] > 0
        code, body = _get(f"{http.url}/readyz")
        assert code == 200 and body["ready"] and body["streaming"] == 2
        assert body["cameras"] == {"a": {"state": "streaming"}, "b": {"state": "streaming"}}
        with urllib.request.urlopen(f"{http.url}/metrics", timeout=10) as r:
            assert b"rtsp_worker_frames_processed_total" in r.read()

        # 3. Every camera down: still alive (the loop goes round), not ready, and the body says why.
        server.kill()
        wait_for(lambda: all(s.state != CameraState.STREAMING for s in st.values()), 30, "the outage")
        wait_for(lambda: all(s.last_error for s in st.values()), 30, "the reasons")
        code, body = _get(f"{http.url}/readyz")
        assert code == 503 and not body["ready"] and body["reason"] == "no camera is streaming (0 of 2)"
        assert all(cam["state"] != "streaming" and cam["last_error"] for cam in body["cameras"].values())
        code, body = _get(f"{http.url}/healthz")
        assert code == 200 and body["status"] == "ok", body
        before = pipeline.loop_ts
        wait_for(lambda: pipeline.loop_ts != before, 10, "the loop to go round without frames")
    finally:
        if runner is not None:
            runner.stop()
        if metrics is not None:
            metrics.close()
        http.close()


class _Loop:
    """Just what Health reads from a pipeline (a unit test of the stall rule, with a fake clock)."""

    def __init__(self) -> None:
        import threading

        self.stop_event = threading.Event()
        self.loop_ts: float | None = None
        self.batches = 7

    def status(self) -> PipelineStatus:
        return PipelineStatus(cameras=(), sinks=(), analytics=None, batches=self.batches, frames=0, nonfinite=0,
                              loop_ts=self.loop_ts, stopping=self.stop_event.is_set(), capacity=16)


def test_healthz_fails_when_the_loop_makes_no_progress():
    now = [100.0]
    health = Health(max_silence_s=10, clock=lambda: now[0])
    loop = _Loop()
    health.attach(loop)  # type: ignore[arg-type]
    http = health.register(HttpServer())
    req = lambda: json.loads(http.dispatch(_request("/healthz")).body)
    assert req()["status"] == "starting"
    loop.loop_ts = 95.0
    assert http.dispatch(_request("/healthz")).status == 200
    now[0] = 106.0  # 11 s since the last round
    resp = http.dispatch(_request("/healthz"))
    assert resp.status == 503
    assert json.loads(resp.body) == {"status": "stalled", "batches": 7,
                                     "reason": "inference loop made no progress for 11.0 s (limit 10 s)"}
    loop.stop_event.set()  # draining on shutdown is not a stall
    assert http.dispatch(_request("/healthz")).status == 200
    assert http.dispatch(_request("/readyz")).status == 503


def _request(path: str):
    from rtsp_worker.service.server import Request

    return Request("GET", path, {}, {}, {}, b"")
