"""What an operator is told (issue 27, smaller items): camera names that would be special folders, the
per-camera output folders, COCO names, stale temporaries, --help. (The fixed-batch model's run-time camera:
tests/pipeline/test_capacity.py.)"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
import torch
from sink_support import result
from tiny_models import export_tiny
from typer.testing import CliRunner

from rtsp_worker.config import ConfigError, parse_config
from rtsp_worker.sinks.jsonl import JsonlSink
from rtsp_worker.sinks.video import VideoSink


@pytest.mark.parametrize("name", [".", "..", ".hidden", "a/b", ""])
def test_camera_names_that_are_not_plain_folders_are_refused_at_load(name: str) -> None:
    with pytest.raises(ConfigError, match=r"field .name.: camera name .* must (be|not start with a dot)"):
        parse_config({"cameras": [{"name": name, "url": "rtsp://h/x"}], "model": {"path": "m.onnx"}})


def test_each_camera_writes_into_its_own_folder_and_old_flat_files_are_mentioned_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    (tmp_path / "cars.jsonl").write_text("")  # an earlier version's flat layout
    grey = torch.full((64, 96, 3), 60, dtype=torch.uint8)
    jsonl, video = JsonlSink(tmp_path), VideoSink(tmp_path)
    # Names that collided in the flat layout: `cars.events` wrote into camera `cars`'s events file.
    batch = [result(cam, 0, image=grey, ts=1e9) for cam in ("cars", "cars.events", "cars.1")]
    jsonl.write(batch)
    video.write(batch)
    jsonl.close()
    video.close()
    for cam in ("cars", "cars.events", "cars.1"):
        assert sorted(p.name for p in (tmp_path / cam).iterdir()) == ["frames.jsonl", "video.mp4"]
        assert len((tmp_path / cam / "frames.jsonl").read_text().splitlines()) == 1
    notes = [r for r in caplog.records if "old flat layout" in r.getMessage()]
    assert len(notes) == 1 and "cars.jsonl" in notes[0].getMessage() and notes[0].levelno == logging.INFO


def test_class_names_coco_and_a_nameless_80_class_model_is_mentioned_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from rtsp_worker.engines import load_engine

    cfg = parse_config({"cameras": [{"name": "a", "url": "rtsp://h/x"}],
                        "model": {"path": str(export_tiny(tmp_path / "m80.onnx", nc=80)), "class_names": "coco"}})
    assert len(cfg.model.class_names) == 80 and cfg.model.class_names[:3] == ["person", "bicycle", "car"]
    assert cfg.model.class_names[-1] == "toothbrush"
    with pytest.raises(ConfigError, match="class_names 'imagenet'"):
        parse_config({"cameras": [{"name": "a", "url": "rtsp://h/x"}],
                      "model": {"path": "m.onnx", "class_names": "imagenet"}})
    caplog.set_level(logging.INFO)
    named = load_engine(cfg.model, torch.device("cpu"), 2)
    assert named.info.class_names[0] == "person"
    assert "no class names" not in caplog.text
    bare = load_engine(cfg.model.model_copy(update={"class_names": None}), torch.device("cpu"), 2)
    assert bare.info.class_names[:2] == ("0", "1")
    assert caplog.text.count("80 classes and no class names") == 1 and "model.class_names: coco" in caplog.text
    named.close()
    bare.close()


def test_stale_write_back_temporaries_are_removed_but_a_live_writer_is_left_alone(tmp_path: Path) -> None:
    from rtsp_worker.service.reload import remove_stale_temporaries

    path = tmp_path / "cameras.yaml"
    path.write_text("cameras: []\n")
    dead = next(pid for pid in range(4_000_000, 3_000_000, -1) if not _exists(pid))
    stale = tmp_path / f".cameras.yaml.{dead}.1.tmp"
    live = tmp_path / f".cameras.yaml.{os.getppid()}.1.tmp"  # another process writing now
    other = tmp_path / ".other.yaml.1.1.tmp"
    for p in (stale, live, other):
        p.write_text("x")
    assert remove_stale_temporaries(path) == [stale]
    assert live.exists() and other.exists() and not stale.exists()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def test_help_begins_with_what_the_tool_does_for_users() -> None:
    from rtsp_worker.cli import app

    out = CliRunner().invoke(app, ["--help"], terminal_width=100).output
    text = " ".join(line.strip(" │") for line in out.splitlines() if line.strip(" │"))
    assert "Thin" not in text and "parsing, logging" not in text
    assert text.index("object detection and tracking") < text.index("Commands")
    assert "rtsp-worker run cameras.yaml" in text


def test_a_removed_cameras_source_that_does_not_stop_is_left_behind_and_counted() -> None:
    import threading

    import torch

    from rtsp_worker.camera_set import CameraSet
    from rtsp_worker.config import CameraConfig, SourceOptions, TrackerConfig
    from rtsp_worker.tracking.tracker import IouTracker

    release = threading.Event()

    class StuckSource(threading.Thread):
        """A source in a connect that does not return: it ignores its stop until the test releases it."""

        def __init__(self, cfg: CameraConfig, first_seq: int) -> None:
            super().__init__(target=release.wait, args=(30,), daemon=True)
            self.cfg, self.next_seq = cfg, first_seq

        def check_stall(self, now: float | None = None) -> bool:
            return False

    def factory(row, cfg, options, slot, stats, stop, device, first_seq=0):
        return StuckSource(cfg, first_seq)

    cpu = torch.device("cpu")
    camset = CameraSet([CameraConfig(name="gate", url="rtsp://127.0.0.1/gate")], SourceOptions(),
                       threading.Condition(), cpu, IouTracker(TrackerConfig(), 1, cpu), 4, threading.Event(),
                       factory)
    camset.start()
    try:
        camset.remove("gate", join_timeout=0.2)  # returns at once: joins in the background
        assert "gate" not in camset and camset.lingering_sources == 0
        deadline = time.monotonic() + 20
        while camset.lingering_sources == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert camset.lingering_sources == 1
    finally:
        release.set()
