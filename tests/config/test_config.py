from pathlib import Path

import pytest

from rtsp_worker.config import ConfigError, load_config, mask_url

MINIMAL = """
cameras:
  - name: cam0
    url: rtsp://127.0.0.1:8554/cam0
  - name: lobby
    url: file:///path/to/clip.mp4
model:
  path: models/some-detector.onnx
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cameras.yaml"
    p.write_text(text)
    return p


def test_minimal_file_is_enough(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert [c.name for c in cfg.cameras] == ["cam0", "lobby"]
    assert cfg.model.path == Path("models/some-detector.onnx")
    assert cfg.device == "auto" and cfg.batcher.max_batch >= 1 and cfg.tracker.min_hits >= 1


def test_defaults_merge_and_camera_override(tmp_path):
    text = MINIMAL.replace("cameras:", "defaults:\n  infer_interval: 3\n  decoder: cpu\ncameras:", 1)
    text = text.replace("url: file:///path/to/clip.mp4", "url: file:///path/to/clip.mp4\n    infer_interval: 1")
    cfg = load_config(write(tmp_path, text))
    assert cfg.cameras[0].infer_interval == 3 and cfg.cameras[0].decoder == "cpu"
    assert cfg.cameras[1].infer_interval == 1


def test_env_expansion_and_masking(tmp_path, monkeypatch):
    monkeypatch.setenv("CAM_PASS", "s3cret")
    text = MINIMAL.replace("rtsp://127.0.0.1", "rtsp://admin:${CAM_PASS}@127.0.0.1")
    cfg = load_config(write(tmp_path, text))
    assert cfg.cameras[0].url == "rtsp://admin:s3cret@127.0.0.1:8554/cam0"
    assert "s3cret" not in mask_url(cfg.cameras[0].url)
    assert mask_url(cfg.cameras[0].url) == "rtsp://admin:***@127.0.0.1:8554/cam0"


def test_disabled_camera(tmp_path):
    text = MINIMAL.replace("name: lobby", "name: lobby\n    enabled: false")
    cfg = load_config(write(tmp_path, text))
    assert [c.name for c in cfg.enabled_cameras] == ["cam0"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda t: t.replace("name: lobby", "name: lobby\n    fps_limit: 3"), ["cameras.yaml", "camera 'lobby'", "fps_limit", "unknown key"]),
        (lambda t: t.replace("name: lobby", "name: cam0"), ["cameras.yaml", "duplicate camera name 'cam0'"]),
        (lambda t: t.replace("file:///path", "http://path"), ["camera 'lobby'", "url", "unsupported URL scheme 'http'"]),
        (lambda t: t + "detection:\n  iou: 2\n", ["detection.iou"]),
        (lambda t: t + "batcher:\n  max_batch: 0\n", ["batcher.max_batch"]),
        (lambda t: t + "colour: red\n", ["colour", "unknown key"]),
        (lambda t: t.replace("  path: models/some-detector.onnx", "  file: x.onnx"), ["model.path", "missing"]),
        (lambda t: t + "device: gpu7\n", ["device", "gpu7"]),
        (lambda t: t + "model2: [\n", ["malformed YAML", "line"]),
        (lambda t: t.replace("rtsp://127", "rtsp://${NOPE_NOT_SET}127"), ["NOPE_NOT_SET", "not set"]),
        (lambda t: "defaults:\n  url: rtsp://x\n" + t, ["defaults.url"]),
        (lambda t: t.replace("  path: models/some-detector.onnx", "  path: a.onnx\n  input_size: [380, 640]"),
         ["multiples of 32"]),
        (lambda t: t.replace("8554/cam0", "99999/cam0"), ["camera 'cam0'", "url", "port '99999'"]),
        (lambda t: t + "output:\n  redis: {url: 'redis://h:70000/0'}\n", ["output.redis.url", "port '70000'"]),
        (lambda t: t + "output:\n  redis: {url: 'http://h/0'}\n", ["output.redis.url", "unsupported scheme"]),
        (lambda t: t + "output:\n  redis: {url: 'redis://h/zero'}\n", ["output.redis.url", "database 'zero'"]),
        # Duplicate keys at any level, with both lines: PyYAML would keep the last one silently.
        (lambda t: t + "cameras:\n  - {name: x, url: 'rtsp://h/x'}\n", ["cameras.yaml", "duplicate key 'cameras'",
                                                                      "line 9 (first at line 2)"]),
        (lambda t: t.replace("  path: models/some-detector.onnx", "  path: a.onnx\n  path: b.onnx"),
         ["duplicate key 'path' at line 9 (first at line 8)"]),
        (lambda t: t.replace("    url: file:///path/to/clip.mp4", "    url: file:///a.mp4\n    url: file:///b.mp4"),
         ["duplicate key 'url' at line 7"]),
    ],
)
def test_bad_config_names_the_culprit(tmp_path, mutate, expected):
    path = write(tmp_path, mutate(MINIMAL))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, message


def test_unset_env_names_the_file_and_field(tmp_path):
    path = write(tmp_path, MINIMAL.replace("rtsp://127", "rtsp://u:${NOPE_NOT_SET}@127"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: cameras[0].url: environment variable NOPE_NOT_SET is not set"


def test_yaml_anchors_and_merge_keys_still_work(tmp_path):
    text = MINIMAL.replace("  - name: cam0\n", "  - &base\n    name: cam0\n").replace(
        "  - name: lobby\n    url: file:///path/to/clip.mp4", "  - <<: *base\n    name: lobby")
    cfg = load_config(write(tmp_path, text))
    assert [c.url for c in cfg.cameras] == ["rtsp://127.0.0.1:8554/cam0"] * 2


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("pw", ["Zq#9xwLm", "Zq/9xwLm", "Zq?9xwLm", "1234#9xw", "a/b?c#de"])
def test_password_with_an_unencoded_url_delimiter_is_refused_without_showing_it(tmp_path, monkeypatch, pw):
    monkeypatch.setenv("CAM_PASS", pw)
    path = write(tmp_path, MINIMAL.replace("rtsp://127.0.0.1", "rtsp://admin:${CAM_PASS}@127.0.0.1"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}: camera 'cam0', field 'url': the password (or user name) holds an unencoded")
    assert "percent-encode the password: # as %23, ? as %3F, / as %2F" in message
    assert pw not in message and "Zq" not in message and "9xw" not in message and "\n" not in message


@pytest.mark.parametrize("url", [
    "rtsp://admin:Zq%239xw%2F%3F@127.0.0.1:8554/cam0",  # the same password, percent-encoded
    "rtsp://admin:p@ss@127.0.0.1:8554/cam0",  # FFmpeg takes the last '@' as the end of the credentials
    "rtsp://127.0.0.1:8554/stream@main",  # an '@' in a path, no credentials
    "rtsp://cam.local/live?user=a@b",
    "rtsp://admin:pw@[::1]:8554/cam0",
])
def test_urls_that_ffmpeg_reads_right_are_accepted(tmp_path, url):
    cfg = load_config(write(tmp_path, MINIMAL.replace("rtsp://127.0.0.1:8554/cam0", url)))
    assert cfg.cameras[0].url == url


def test_every_camera_disabled_is_a_config_error(tmp_path):
    text = MINIMAL.replace("name: lobby", "name: lobby\n    enabled: false").replace(
        "name: cam0", "name: cam0\n    enabled: false")
    with pytest.raises(ConfigError, match=r"cameras\.yaml: no camera is enabled$"):
        load_config(write(tmp_path, text))
