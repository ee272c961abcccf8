"""Event clips and snapshots end to end: the synthetic scene over the real RTSP server (and file:// cameras),
the real detector, real files checked with PyAV; a camera removed mid-clip, SIGKILL mid-clip, a full disk."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from itertools import pairwise
from pathlib import Path

import av
import pytest
from conftest import skip_or_fail
from ops_support import PipelineThread, wait_for

from rtsp_worker.config import parse_config

pytestmark = [pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "synth_det.onnx"
ZONE = {"name": "yard", "units": "fractions", "polygon": [[0.3, 0.35], [0.7, 0.35], [0.7, 0.9], [0.3, 0.9]]}
PRE_S, POST_S = 1.0, 1.0


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    from rtsp_worker.sim.synthetic import write_sequence

    if not MODEL.exists():
        skip_or_fail(f"{MODEL} is missing")
    return write_sequence(tmp_path_factory.mktemp("scene"), "yard", seed=9100, frames=150, size=(640, 360), fps=15)


def records(out: Path, camera: str) -> list[dict]:
    path = out / camera / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def check_playable(path: Path) -> list[float]:
    """Decode every frame; the first is a keyframe and the timestamps increase."""
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    assert frames, f"{path}: no frame"
    assert frames[0].key_frame
    times = [f.time for f in frames]
    assert all(b > a for a, b in pairwise(times)), f"{path}: timestamps not increasing"
    return times


def camera(name: str, url: str, **extra) -> dict:
    return {"name": name, "url": url, "zones": [ZONE], **extra}


def test_zone_enter_clip_snapshot_and_a_camera_removed_mid_clip(tmp_path, rtsp_server_factory, scene):
    from rtsp_worker.pipeline import build_pipeline

    server = rtsp_server_factory({"yard": f"file:{scene / 'video.mp4'}"})
    out = tmp_path / "out"
    cfg = parse_config({
        "cameras": [camera("live", server.url("yard"), clips={"pre_s": PRE_S, "post_s": POST_S, "on": ["zone_enter"]},
                           snapshots={"on": ["zone_enter"]}),
                    # Played once: the clip stays open after the file ends (a loop would finalize it, a new
                    # connection), until the removal.
                    camera("doomed", f"file://{scene / 'video.mp4'}", loop=False, clips={"post_s": 120})],
        "model": {"path": str(MODEL)},
        "output": {"dir": str(out)},
    }, source="evidence.yaml")
    pipeline = build_pipeline(cfg)
    t0 = time.time()
    runner = PipelineThread(pipeline)
    try:
        # A clip that started well after the stream did (its pre-roll is not cut by the stream's start).
        def settled() -> list[dict]:
            return [r for r in records(out, "live") if r["kind"] == "clip" and r["clip"]["start_ts"] > t0 + 3]
        wait_for(lambda: settled(), 120, "a finalized clip of the live camera")
        wait_for(lambda: any("clip" in r and r["kind"] == "zone" for r in records(out, "doomed")), 60,
                 "an open clip of the doomed camera")
        pipeline.remove_camera("doomed")
        doomed = [r for r in records(out, "doomed") if r["kind"] == "clip"]
        assert len(doomed) == 1 and doomed[0]["clip"]["reason"] == "removed"
        check_playable(out / doomed[0]["clip"]["path"])
    finally:
        runner.stop()

    recs = records(out, "live")
    by_id = {r["id"]: r for r in recs}
    clip = settled()[0]["clip"]
    first = by_id[clip["events"][0]]
    assert first["kind"] == "zone" and first["direction"] == "enter"
    for eid in clip["events"]:
        assert by_id[eid]["clip"] == {"path": clip["path"], "start_ts": clip["start_ts"]}  # named at once
    assert clip["path"].startswith("live/clips/") and clip["events"][0] in clip["path"]
    assert first["ts"] - clip["start_ts"] >= PRE_S and clip["pre_roll_s"] >= PRE_S
    last = max(by_id[e]["ts"] for e in clip["events"])
    assert clip["end_ts"] >= last + POST_S
    times = check_playable(out / clip["path"])
    assert times[-1] - times[0] >= PRE_S + POST_S - 0.2
    # Every zone enter names its snapshot, written by the time the worker stopped.
    enters = [r for r in recs if r["kind"] == "zone" and r["direction"] == "enter"]
    assert enters and all((out / r["snapshot"]).stat().st_size > 0 for r in enters)
    ev = pipeline.status().evidence
    assert ev.clips >= 2 and ev.snapshots >= 1 and ev.clip_bytes > 0


KILL_SCRIPT = """
import sys
from rtsp_worker.config import parse_config
from rtsp_worker.pipeline import build_pipeline
cfg = parse_config({{"cameras": [{camera}], "model": {{"path": {model!r}}}, "output": {{"dir": {out!r}}}}}, "kill.yaml")
build_pipeline(cfg).run()
"""


def test_sigkill_during_a_clip_leaves_a_playable_file(tmp_path, scene):
    out = tmp_path / "out"
    cam = camera("cam", f"file://{scene / 'video.mp4'}", loop=False, clips={"pre_s": PRE_S, "post_s": 120})
    script = KILL_SCRIPT.format(camera=cam, model=str(MODEL), out=str(out))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        def grown() -> bool:
            files = list((out / "cam" / "clips").glob("*.mp4"))
            return bool(files) and files[0].stat().st_size > 150_000  # the pre-roll and more
        wait_for(grown, 120, "a clip being written")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    (path,) = list((out / "cam" / "clips").glob("*.mp4"))  # one clip: the file plays once, post_s is long
    times = check_playable(path)
    assert times[-1] - times[0] >= PRE_S


def _mount_tmpfs(path: Path, size: str) -> bool:
    """A small tmpfs at `path` (True), or False where this machine cannot mount one (not root, no rights)."""
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       check=False)
    return r.returncode == 0


class _FullDisk:
    """Where no tmpfs can be mounted: clip writes fail with ENOSPC until `full` is cleared (an injected write
    error; everything else, the camera's own reads included, is real)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from rtsp_worker.evidence import clips

        self.full = True
        real = av.open
        guard = self

        class Failing:
            def __init__(self, container) -> None:
                self.container = container

            def __getattr__(self, name: str):
                return getattr(self.container, name)

            def mux(self, packet) -> None:
                if guard.full:
                    raise OSError(errno.ENOSPC, "No space left on device (injected)")
                self.container.mux(packet)

        def fake_open(file, mode="r", **kwargs):
            c = real(file, mode, **kwargs)
            return Failing(c) if mode == "w" else c

        monkeypatch.setattr(clips.av, "open", fake_open)


def test_disk_full_stops_evidence_only_and_recovers(tmp_path, scene, caplog, monkeypatch):
    from prometheus_client.parser import text_string_to_metric_families

    from rtsp_worker.evidence import disk
    from rtsp_worker.pipeline import build_pipeline
    from rtsp_worker.service.metrics import serve_metrics

    monkeypatch.setattr(disk, "RETRY_S", 0.5)
    out = tmp_path / "out"
    clips = out / "cam" / "clips"
    # The clips' folder fills (a 192 KiB tmpfs) while JSONL is on the test's disk.
    injected = None if _mount_tmpfs(clips, "192k") else _FullDisk(monkeypatch)
    try:
        cfg = parse_config({
            "cameras": [camera("cam", f"file://{scene / 'video.mp4'}", clips={"pre_s": 0.5, "post_s": 0.5})],
            "model": {"path": str(MODEL)},
            "output": {"dir": str(out)},
        }, source="full.yaml")
        caplog.set_level(logging.INFO, logger="rtsp_worker.evidence")
        pipeline = build_pipeline(cfg)
        metrics = serve_metrics(pipeline, "127.0.0.1", 0)
        runner = PipelineThread(pipeline)
        try:
            def full() -> int:
                ev = pipeline.status().evidence
                return dict(ev.dropped).get("disk_full", 0) if ev is not None else 0
            wait_for(lambda: full() >= 1, 120, "evidence stopped on the full disk")
            assert pipeline.status().evidence.disk_full
            with urllib.request.urlopen(metrics.url, timeout=10) as resp:
                scraped = {(m.name, tuple(sorted(m.labels.items()))): m.value
                           for fam in text_string_to_metric_families(resp.read().decode()) for m in fam.samples}
            assert scraped[("rtsp_worker_evidence_dropped_total", (("reason", "disk_full"),))] >= 1
            written = pipeline.status().evidence.clips
            for f in clips.iterdir():  # space returns
                f.unlink()
            if injected is not None:
                injected.full = False
            wait_for(lambda: pipeline.status().evidence.clips > written and any(clips.iterdir()), 120,
                     "a clip after space returned")
        finally:
            runner.stop()
            metrics.close()
        processed = pipeline.stats[0].processed if pipeline.stats else None
        full_lines = [r for r in caplog.records if "disk full" in r.getMessage()]
        assert len(full_lines) >= 1 and sum("space is back" in r.getMessage() for r in caplog.records) >= 1
        frames = (out / "cam" / "frames.jsonl").read_text().splitlines()
        assert processed is None or len(frames) == processed  # JSONL complete
        assert all(json.loads(line)["camera"] == "cam" for line in frames)
        assert any(r["kind"] == "zone" for r in records(out, "cam"))
    finally:
        subprocess.run(["umount", "-l", str(clips)], capture_output=True, check=False)
