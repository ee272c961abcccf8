"""Prometheus endpoint of a real pipeline (file camera + a camera that cannot connect), scraped over HTTP."""

from __future__ import annotations

import urllib.request

import prometheus_client
from ops_support import PipelineThread, make_config, small_clip, tiny_model, wait_for
from prometheus_client.parser import text_string_to_metric_families
from redis_fixture import free_port

from rtsp_worker.pipeline import build_pipeline
from rtsp_worker.service.metrics import PipelineMetrics, serve_metrics

FIXTURES = (small_clip, tiny_model)  # pytest finds fixtures by their module-level name


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_metrics_endpoint_reports_cameras_stages_and_latency(tmp_path, small_clip, tiny_model) -> None:
    cfg = make_config([{"name": "lobby", "url": small_clip.as_uri()},
                       {"name": "gate", "url": f"rtsp://127.0.0.1:{free_port()}/x"}], tiny_model, tmp_path / "out")
    pipeline = build_pipeline(cfg)
    server = serve_metrics(pipeline, "127.0.0.1", 0)
    try:
        assert server.port > 0
        before = scrape(server.url)  # no batch yet: the capacity is the engine's warm-up estimate
        assert before[("rtsp_worker_capacity_fps", ())] > 0 and before[("rtsp_worker_capacity_measured", ())] == 0
        runner = PipelineThread(pipeline)
        wait_for(lambda: pipeline.stats[0].processed >= 20 and pipeline.stats[1].failures >= 2, 30, "frames")
        live = scrape(server.url)
        assert live[("rtsp_worker_camera_state", (("camera", "lobby"), ("state", "streaming")))] == 1
        assert live[("rtsp_worker_camera_state", (("camera", "lobby"), ("state", "backoff")))] == 0
        runner.stop()
        m = scrape(server.url)
    finally:
        server.close()

    lobby, gate = pipeline.stats
    for name, st in (("lobby", lobby), ("gate", gate)):
        key = (("camera", name),)
        assert m[("rtsp_worker_frames_decoded_total", key)] == st.decoded
        assert m[("rtsp_worker_frames_processed_total", key)] == st.processed
        assert m[("rtsp_worker_frames_dropped_total", key)] == st.dropped
        assert m[("rtsp_worker_reconnects_total", key)] == st.reconnects
        assert m[("rtsp_worker_stalls_total", key)] == st.stalls
        assert m[("rtsp_worker_decode_errors_total", key)] == st.decode_errors
        # Exactly one state is current.
        states = {k[1][1][1]: v for k, v in m.items() if k[0] == "rtsp_worker_camera_state" and k[1][0] == key[0]}
        assert sorted(states.values()).count(1.0) == 1 and states[st.state.value] == 1
    assert m[("rtsp_worker_camera_consecutive_failures", (("camera", "gate"),))] == gate.failures >= 2
    assert gate.processed == 0 and lobby.processed >= 20
    assert m[("rtsp_worker_batches_total", ())] == pipeline.batches
    # Every processed frame of the lobby ran the detector (infer_interval 1, no gate, no overload multiplier).
    assert m[("rtsp_worker_frames_inferred_total", (("camera", "lobby"),))] == lobby.inferred == lobby.processed
    assert m[("rtsp_worker_capacity_measured", ())] == 1 and m[("rtsp_worker_capacity_fps", ())] > 0

    # Histograms: one latency observation per processed frame, one batch-size observation per batch.
    assert m[("rtsp_worker_end_to_end_latency_seconds_count", (("camera", "lobby"),))] == lobby.processed
    assert m[("rtsp_worker_end_to_end_latency_seconds_count", (("camera", "gate"),))] == 0
    assert 0 < m[("rtsp_worker_end_to_end_latency_seconds_sum", (("camera", "lobby"),))] / lobby.processed < 5
    assert m[("rtsp_worker_batch_size_count", ())] == pipeline.batches
    assert m[("rtsp_worker_batch_size_sum", ())] == pipeline.frames_out
    for stage in ("preprocess", "inference", "postprocess", "tracker"):
        assert m[("rtsp_worker_stage_seconds_count", (("stage", stage),))] > 0, stage
    assert m[("rtsp_worker_sink_dropped_total", (("sink", "jsonl"), ("where", "queue")))] == 0
    assert m[("rtsp_worker_sink_errors_total", (("sink", "jsonl"),))] == 0
    # No GPU here: the NVML series are left out rather than reported as zeros.
    assert not any(k[0].startswith("rtsp_worker_gpu_") for k in m)
    # Closing detached the listener and freed the port.
    assert server.metrics.on_batch not in pipeline.batch_listeners


def test_metrics_use_their_own_registry(tmp_path, small_clip, tiny_model) -> None:
    cfg = make_config([{"name": "lobby", "url": small_clip.as_uri()}], tiny_model, tmp_path / "out")
    pipeline = build_pipeline(cfg)
    try:
        # Two sets side by side (e.g. two pipelines in one process) do not collide, and the global
        # registry stays clean.
        a, b = PipelineMetrics(pipeline), PipelineMetrics(pipeline)
        assert a.registry is not b.registry
        names = {m.name for m in prometheus_client.REGISTRY.collect()}
        assert not any(n.startswith("rtsp_worker") for n in names)
    finally:
        pipeline.shutdown()
