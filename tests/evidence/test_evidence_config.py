"""`clips:` and `snapshots:` in cameras.yaml: on with `{}`, off when absent, a camera's own block replaces the
default whole, YAML's bare `on:` key, sizes and ages with units, errors naming the camera and field."""

from __future__ import annotations

import pytest

from rtsp_worker.config import ConfigError, load_config

BASE = """
model: {path: m.onnx}
defaults:
  clips: {pre_s: 2, on: [line], classes: [person]}
cameras:
  - {name: plain, url: "file:///x.mp4"}
  - name: own
    url: "file:///x.mp4"
    clips: {post_s: 3}
    snapshots:
      on: [zone_enter]
      max_bytes: 200MB
      max_age: 12h
"""


def load(tmp_path, text: str):
    path = tmp_path / "cameras.yaml"
    path.write_text(text)
    return load_config(path)


def test_defaults_apply_and_a_camera_block_replaces_them_whole(tmp_path):
    plain, own = load(tmp_path, BASE).cameras
    assert plain.clips.pre_s == 2 and plain.clips.on == ["line"] and plain.clips.classes == ["person"]
    assert plain.snapshots is None  # absent: off
    assert own.clips.post_s == 3 and own.clips.pre_s == 5 and own.clips.classes is None  # not merged
    assert own.snapshots.on == ["zone_enter"]  # the bare `on:` key YAML reads as True
    assert own.snapshots.max_bytes == 200 * 1024**2 and own.snapshots.max_age == 12 * 3600


def test_empty_block_turns_clips_on_with_the_defaults(tmp_path):
    (cam,) = load(tmp_path, 'model: {path: m.onnx}\ncameras:\n  - {name: c, url: "file:///x.mp4", clips: {}}\n').cameras
    assert cam.clips.pre_s == 5 and cam.clips.post_s == 5 and cam.clips.on == ["line", "zone_enter"]


@pytest.mark.parametrize(("block", "words"), [
    ("clips: {on: [loiter_forever]}", ["camera 'c'", "clips.on"]),
    ("clips: {max_bytes: lots}", ["camera 'c'", "clips.max_bytes", "not a size"]),
    ("snapshots: {max_age: soon}", ["camera 'c'", "snapshots.max_age", "not a duration"]),
    ("clips: {pre_s: -1}", ["camera 'c'", "clips.pre_s"]),
])
def test_bad_values_name_the_camera_and_the_field(tmp_path, block, words):
    with pytest.raises(ConfigError) as err:
        load(tmp_path, f'model: {{path: m.onnx}}\ncameras:\n  - {{name: c, url: "file:///x.mp4", {block}}}\n')
    for w in words:
        assert w in str(err.value)
