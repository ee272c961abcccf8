"""The whole pipeline on fake camera sources (tests/fake_source.py) and a tiny ONNX model: the status
snapshot and the subscriptions, cameras added / edited / reconnected / removed at run time, reload,
health, metrics, with and without the overlap thread. Fast unit tests: no RTSP server, no decoder; the
end-to-end tests (test_reload.py, test_health.py, test_operations.py) run the same paths on real streams."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml
from fake_source import FakeSources
from ops_support import PipelineThread, make_config, tiny_model, wait_for
from prometheus_client import generate_latest
from sink_support import RecordingSink

from rtsp_worker.config import CameraConfig, load_config
from rtsp_worker.pipeline import build_pipeline
from rtsp_worker.service.health import Health
from rtsp_worker.service.metrics import PipelineMetrics
from rtsp_worker.service.reload import Reloader
from rtsp_worker.sources.state import CameraState
from rtsp_worker.status import BatchOutput

FIXTURES = (tiny_model,)
BOUND_S = 60.0  # generous: two busy cores


def _cams(*names: str) -> list[dict]:
    return [{"name": n, "url": f"rtsp://user:secret@fake.invalid/{n}"} for n in names]


@pytest.mark.parametrize("overlap", [True, False])
def test_status_subscriptions_and_outputs_on_fake_cameras(tmp_path: Path, tiny_model: Path, overlap: bool) -> None:
    sources, sink = FakeSources(fps=30), RecordingSink()
    cfg = make_config(_cams("a", "b"), tiny_model, tmp_path, batcher={"overlap": overlap})
    p = build_pipeline(cfg, sinks=[sink], source_factory=sources)
    batches: list[BatchOutput] = []
    unsubscribe = p.on_batch(batches.append)
    metrics = PipelineMetrics(p)
    runner = PipelineThread(p)
    try:
        wait_for(lambda: all(c.processed >= 10 for c in p.status().cameras), BOUND_S, "10 frames of each camera")
        wait_for(lambda: all(c.decode_fps for c in p.status().cameras), BOUND_S, "a rate window to pass")
        s = p.status()
        assert [(c.name, c.row) for c in s.cameras] == [("a", 0), ("b", 1)]
        assert all(c.state is CameraState.STREAMING and c.decoder == "fake" for c in s.cameras)
        assert all(c.processed_fps and c.processed_fps > 0 for c in s.cameras)
        assert "secret" not in s.camera("b").url and s.camera("b").url.endswith("fake.invalid/b")
        assert s.batches > 0 and s.frames >= 20 and s.loop_ts is not None and not s.stopping
        assert s.streaming == 2 and s.capacity == cfg.batcher.max_batch and s.analytics is None
        assert [x.name for x in s.sinks] == ["recording"] and s.sink_lost == 0
        out = batches[0]
        assert len(out.frames) == len(out.cameras) == len(out.results) >= 1
        assert set(out.cameras) <= {"a", "b"}
        assert all(f.image.shape == (96, 128, 3) for f in out.frames)  # the frames themselves, not copies
        assert [r.camera for r in out.results] == list(out.cameras)
        assert [r.row for r in out.results] == [f.row for f in out.frames]
        assert len(out.tracks) == sum(len(r.objects) for r in out.results)
        scraped = generate_latest(metrics.registry).decode()
        assert 'rtsp_worker_frames_processed_total{camera="a"}' in scraped
    finally:
        unsubscribe()
        metrics.close()
        runner.stop()
    final = p.status()
    assert final.stopping
    # Nothing produced is lost: every processed frame reached the sink, in order per camera.
    seen = Counter(cam for cam, *_ in sink.seen)
    assert seen == {c.name: c.processed for c in final.cameras}
    assert final.sinks[0].written == len(sink.seen) and final.frames == len(sink.seen)
    for name in ("a", "b"):
        frames = [f for cam, f, *_ in sink.seen if cam == name]
        assert frames == sorted(frames)
    assert p.batch_listeners == []  # unsubscribed


def test_cameras_added_edited_reconnected_and_removed_at_run_time(tmp_path: Path, tiny_model: Path) -> None:
    sources, sink = FakeSources(fps=30), RecordingSink()
    cfg = make_config(_cams("a"), tiny_model, tmp_path, batcher={"max_batch": 3})
    p = build_pipeline(cfg, sinks=[sink], source_factory=sources)
    events: list[tuple[str, str]] = []
    p.on_camera(lambda event, name: events.append((event, name)))
    runner = PipelineThread(p)
    try:
        processed = lambda name: (p.status().camera(name) or pytest.fail(f"no camera {name}")).processed
        wait_for(lambda: processed("a") >= 3, BOUND_S, "frames of a")
        p.add_camera(CameraConfig(name="c", url="rtsp://fake.invalid/c"))
        wait_for(lambda: processed("c") >= 3, BOUND_S, "frames of c")
        assert p.status().camera("c").row == 1
        with pytest.raises(ValueError, match="exists already"):
            p.add_camera(CameraConfig(name="a", url="rtsp://fake.invalid/a2"))

        # A live edit keeps the connection; a new URL reconnects and goes on with the frame numbers.
        assert p.update_camera(CameraConfig(name="a", url=cfg.cameras[0].url, infer_interval=2)) == [
            "infer_interval 1 -> 2"]
        assert p.status().camera("a").infer_interval == 2 and len(sources.made) == 2
        old = sources.by_name["c"]
        p.update_camera(CameraConfig(name="c", url="rtsp://fake.invalid/c2"))
        new = sources.by_name["c"]
        assert new is not old and new.first_seq >= 3 and p.status().camera("c").reconnects == 1
        wait_for(lambda: new.next_seq > new.first_seq + 2, BOUND_S, "frames of the new connection")

        count_c = p.remove_camera("c")
        assert p.status().camera("c") is None
        assert sum(1 for cam, *_ in sink.seen if cam == "c") == count_c  # flushed before remove returned
        p.add_camera(CameraConfig(name="d", url="rtsp://fake.invalid/d"))
        assert p.status().camera("d").row == 1  # the removed camera's row, reused
        p.add_camera(CameraConfig(name="e", url="rtsp://fake.invalid/e"))
        # More cameras than batcher.max_batch (3): batches take turns, never refused for the batch size.
        p.add_camera(CameraConfig(name="f", url="rtsp://fake.invalid/f"))
        wait_for(lambda: min(processed(n) for n in "def") >= 2, BOUND_S, "frames of d, e and f")
    finally:
        runner.stop()
    assert events == [("added", "c"), ("updated", "a"), ("reconnected", "c"), ("removed", "c"), ("added", "d"),
                      ("added", "e"), ("added", "f")]
    assert Counter(cam for cam, *_ in sink.seen) == {c.name: c.processed for c in p.status().cameras} | {
        "c": count_c}


def test_reload_applies_the_difference_to_fake_cameras(tmp_path: Path, tiny_model: Path) -> None:
    path = tmp_path / "cameras.yaml"
    raw = {"cameras": _cams("a", "b"), "model": {"path": str(tiny_model)}, "device": "cpu",
           "output": {"dir": str(tmp_path / "out")}, "detection": {"max_detections": 8, "max_candidates": 64}}
    path.write_text(yaml.safe_dump(raw))
    sources = FakeSources(fps=30)
    p = build_pipeline(load_config(path), sinks=[RecordingSink()], source_factory=sources)
    reloader = Reloader(p, path)
    runner = PipelineThread(p)
    try:
        wait_for(lambda: all(c.processed >= 2 for c in p.status().cameras), BOUND_S, "frames of a and b")
        raw["cameras"] = _cams("a", "c")
        raw["cameras"][0]["infer_interval"] = 3
        path.write_text(yaml.safe_dump(raw))
        changes = reloader.reload("test")
        assert len(changes) == 3 and any("b" in c for c in changes) and any("c" in c for c in changes)
        assert set(p.configs()) == {"a", "c"} and p.configs()["a"].infer_interval == 3
        wait_for(lambda: p.status().camera("c") is not None and p.status().camera("c").processed >= 2, BOUND_S,
                 "frames of c")
    finally:
        reloader.close()
        runner.stop()


def test_health_follows_fake_cameras_down_and_up(tmp_path: Path, tiny_model: Path) -> None:
    sources = FakeSources(fps=30)
    p = build_pipeline(make_config(_cams("a", "b"), tiny_model, tmp_path), sinks=[], source_factory=sources)
    health = Health(max_silence_s=30)
    assert health.readyz() == (False, {"ready": False, "reason": "engine not loaded yet"})
    health.attach(p)
    runner = PipelineThread(p)
    try:
        wait_for(lambda: health.readyz()[1]["streaming"] == 2, BOUND_S, "both cameras streaming")
        assert health.readyz()[0] and health.readyz()[1]["cameras"] == {"a": {"state": "streaming"}, "b": {"state": "streaming"}}
        sources.fail("b", "connection refused")
        wait_for(lambda: health.readyz()[1]["streaming"] == 1, BOUND_S, "b down")
        assert health.readyz()[1]["cameras"]["b"] == {"state": "backoff", "last_error": "connection refused"}
        sources.fail("a", "no route to host")
        wait_for(lambda: not health.readyz()[0], BOUND_S, "every camera down")
        assert health.readyz()[1]["reason"] == "no camera is streaming (0 of 2)"
        ok, body = health.healthz()
        assert ok and body["status"] == "ok"  # cameras down: alive, the loop goes round
        sources.recover("a")
        wait_for(lambda: health.readyz()[0], BOUND_S, "a back")
        assert p.status().camera("a").reconnects == 1
    finally:
        runner.stop()
    ok, body = health.healthz()
    assert ok and body["status"] == "stopping"


def test_motion_gate_in_the_pipeline_counts_gated_frames(tmp_path: Path, tiny_model: Path) -> None:
    """Still fake cameras: with `motion.enabled` the gate keeps frames from the detector (counted apart, still
    processed and written); the camera without it is inferred every frame."""
    sources, sink = FakeSources(fps=30, still=True), RecordingSink()
    cams = _cams("gated", "plain")
    cams[0]["motion"] = {"enabled": True, "max_skip_s": 1000}
    p = build_pipeline(make_config(cams, tiny_model, tmp_path), sinks=[sink], source_factory=sources)
    metrics = PipelineMetrics(p)
    runner = PipelineThread(p)
    try:
        wait_for(lambda: all(c.processed >= 20 for c in p.status().cameras), BOUND_S, "20 frames of each camera")
        s = p.status()
        g, n = s.camera("gated"), s.camera("plain")
        assert g.gated >= g.processed - 2 and g.gated > 0 and not g.motion
        assert n.gated == 0
        scraped = generate_latest(metrics.registry).decode()
        assert 'rtsp_worker_frames_gated_total{camera="gated"}' in scraped
        assert 'rtsp_worker_camera_motion{camera="gated"} 0.0' in scraped
    finally:
        metrics.close()
        runner.stop()
    final = p.status()
    seen = Counter(cam for cam, *_ in sink.seen)
    assert seen == {c.name: c.processed for c in final.cameras}  # gated frames are written too
