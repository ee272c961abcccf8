import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from rtsp_worker.config import (
    BatcherConfig,
    CalibrationConfig,
    CameraConfig,
    Config,
    ConfigError,
    ControlConfig,
    DetectionConfig,
    HeatmapConfig,
    LineConfig,
    MetricsConfig,
    ModelConfig,
    ModelInputConfig,
    MotionConfig,
    MqttConfig,
    MqttTlsConfig,
    OnnxRuntimeModelConfig,
    OutputConfig,
    RedisConfig,
    SourceOptions,
    TensorRTModelConfig,
    TorchModelConfig,
    TrackerConfig,
    ViewConfig,
    WebhookConfig,
    ZoneConfig,
    check_name,
    dotted_keys,
    field_docs,
    load_config,
    mask_url,
)
from rtsp_worker.config.evidence import ClipsConfig, SnapshotsConfig

SECTION_TYPES = [CameraConfig, LineConfig, ZoneConfig, ModelInputConfig, DetectionConfig, BatcherConfig, TrackerConfig,
                 OutputConfig, RedisConfig, SourceOptions, MetricsConfig, ControlConfig, ClipsConfig, SnapshotsConfig,
                 CalibrationConfig, HeatmapConfig, MqttConfig, MqttTlsConfig, WebhookConfig, ViewConfig, MotionConfig]

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


# -- model: one section per backend ------------------------------------------------------------------------


def with_model(text: str, model: str) -> str:
    return text.replace("  path: models/some-detector.onnx", model)


@pytest.mark.parametrize(("model", "section"), [
    ("  path: m.onnx", OnnxRuntimeModelConfig),
    ("  path: m.ONNX\n  threads: 2", OnnxRuntimeModelConfig),
    ("  path: m.pt2\n  cuda_graphs: false", TorchModelConfig),
    ("  path: m.torchscript", TorchModelConfig),
    ("  path: m.engine\n  contexts: 1", TensorRTModelConfig),
    ("  path: m.plan", TensorRTModelConfig),
    ("  path: m.onnx\n  build_engine: true\n  fp16: false", TensorRTModelConfig),  # built from the ONNX
    ("  path: m.onnx\n  backend: torch", TorchModelConfig),  # an explicit backend wins over the suffix
    ("  path: m.bin", OnnxRuntimeModelConfig),
])
def test_backend_auto_is_resolved_from_the_suffix_before_validation(tmp_path, model, section):
    cfg = load_config(write(tmp_path, with_model(MINIMAL, model)))
    assert type(cfg.model) is section and isinstance(cfg.model, ModelConfig)
    assert cfg.model.BACKEND == section.BACKEND


@pytest.mark.parametrize(("model", "expected"), [
    ("  path: m.onnx\n  contexts: 2",
     ("model.contexts applies to the tensorrt backend, not onnxruntime (backend: auto picks onnxruntime for a "
     ".onnx file; build_engine: true builds a TensorRT engine from it)")),
    ("  path: m.onnx\n  backend: onnxruntime\n  build_engine: true",
     "model.build_engine applies to the tensorrt backend, not onnxruntime"),
    ("  path: m.onnx\n  fp16: false", "model.fp16 applies to the torch and tensorrt backends, not onnxruntime"),
    ("  path: m.onnx\n  build_engine: false",
     ("model.build_engine applies to the tensorrt backend, not onnxruntime (backend: auto picks onnxruntime for a "
     ".onnx file unless build_engine is true)")),
    ("  path: m.pt2\n  threads: 4",
     "model.threads applies to the onnxruntime backend, not torch (backend: auto picks torch for a .pt2 file)"),
    ("  path: m.engine\n  cuda_graphs: true", "model.cuda_graphs applies to the torch backend, not tensorrt"),
])
def test_a_key_of_another_backend_is_an_error_naming_the_key_and_both_backends(tmp_path, model, expected):
    path = write(tmp_path, with_model(MINIMAL, model))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: {expected}"), str(err.value)


@pytest.mark.parametrize(("model", "expected"), [
    ("  path: m.onnx\n  colour: red", "field 'model.colour': unknown key"),
    ("  path: m.engine\n  input: {channels: rgb, hue: 1}", "field 'model.input.hue': unknown key"),
    ("  path: m.onnx\n  backend: tflite", "field 'model.backend': Input should be 'auto', 'onnxruntime'"),
    ("  path: m.pt2\n  fp16: maybe", "field 'model.fp16': Input should be a valid boolean"),
    ("  backend: torch", "field 'model.path': required field is missing"),
])
def test_model_errors_name_the_key_without_the_backend_section(tmp_path, model, expected):
    path = write(tmp_path, with_model(MINIMAL, model))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: {expected}"), str(err.value)
    assert "onnxruntime." not in str(err.value) and "torch." not in str(err.value)


def test_model_config_built_in_python_picks_its_section_as_a_file_does():
    assert type(ModelConfig(path="m.onnx", threads=1)) is OnnxRuntimeModelConfig
    assert type(ModelConfig(path=Path("m.pt2"), fp16=False)) is TorchModelConfig
    assert type(ModelConfig.model_validate({"path": "m.engine", "contexts": 1})) is TensorRTModelConfig
    with pytest.raises(ValidationError, match="model.contexts applies to the tensorrt backend, not onnxruntime"):
        ModelConfig(path="m.onnx", contexts=1)
    trt = ModelConfig(path="m.onnx", build_engine=True)
    assert OnnxRuntimeModelConfig(**trt.shared()).path == Path("m.onnx")  # what a CPU fallback runs with


# -- names ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cam_1", "cars.events", "a-b_c.d", "Gate_2", "-x", "x" * 64, "a.b.c"])
def test_good_names_are_accepted_everywhere(tmp_path, name):
    assert check_name(name) == name
    text = MINIMAL.replace("name: lobby", f"name: '{name}'\n    lines: [{{name: '{name}', points: [[0, 0], [9, 9]]}}]")
    cfg = load_config(write(tmp_path, text))
    assert cfg.cameras[1].name == name and cfg.cameras[1].lines[0].name == name


@pytest.mark.parametrize(("name", "why"), [
    (".", "must not start with a dot"),
    ("..", "must not start with a dot"),
    (".x", "must not start with a dot"),
    (".hidden.events", "must not start with a dot"),
    ("a..b", "must not contain '..'"),
    ("a/b", "must be 1-64 characters of A-Z a-z 0-9 _ . -"),
    ("a b", "must be 1-64 characters"),
    ("", "must be 1-64 characters"),
    ("x" * 65, "must be 1-64 characters"),
    ("caméra", "must be 1-64 characters"),
])
def test_bad_names_are_refused_with_the_rule_they_break(tmp_path, name, why):
    with pytest.raises(ValueError, match=why):
        check_name(name)
    path = write(tmp_path, MINIMAL.replace("name: lobby", f"name: '{name}'"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: cameras[1], field 'name': camera name ") \
        or str(err.value).startswith(f"{path}: camera "), str(err.value)
    assert why in str(err.value) and "\n" not in str(err.value)
    zone = MINIMAL.replace("name: lobby", f"name: lobby\n    zones: [{{name: '{name}', polygon: [[0, 0], [9, 0], [9, 9]]}}]")
    with pytest.raises(ConfigError, match=f"camera 'lobby', field 'zones.0.name': zone name .*{why}"):
        load_config(write(tmp_path, zone))


# -- devices ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["auto", "cpu", "cpu:0", "cuda", "cuda:0", "cuda:1"])
def test_device_forms_torch_accepts(tmp_path, device):
    assert load_config(write(tmp_path, MINIMAL + f"device: '{device}'\n")).device == device


@pytest.mark.parametrize("device", ["gpu", "gpu0", "cuda:", "cuda:x", "CPU", "cpu:-1", "mps", "auto:0", ""])
def test_other_device_names_are_refused(tmp_path, device):
    path = write(tmp_path, MINIMAL + f"device: '{device}'\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: field 'device': device {device!r} must be auto, cpu, cpu:N, cuda or cuda:N"


def test_devices_entries_take_the_same_forms(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + "workers: 3\ndevices: [cpu, 'cpu:0', 'cuda:1']\n"))
    assert cfg.devices == ["cpu", "cpu:0", "cuda:1"]
    assert load_config(write(tmp_path, MINIMAL + "devices: auto\n")).devices == "auto"
    for bad in ("[gpu]", "[auto]", "[]"):
        path = write(tmp_path, MINIMAL + f"devices: {bad}\n")
        with pytest.raises(ConfigError, match=r"cameras.yaml: field 'devices'"):
            load_config(path)


# -- unknown keys, descriptions, the key reference ------------------------------------------------------------


@pytest.mark.parametrize(("extra", "expected"), [
    ("source:\n  open_timeout: 3\n", "field 'source.open_timeout': unknown key"),
    ("output:\n  redis: {url: 'redis://h/0', stream: x}\n", "field 'output.redis.stream': unknown key"),
    ("tracker:\n  max_ages: 3\n", "field 'tracker.max_ages': unknown key"),
    ("metrics:\n  prot: 9100\n", "field 'metrics.prot': unknown key"),
    ("control:\n  tokens: x\n", "field 'control.tokens': unknown key"),
])
def test_unknown_keys_name_the_file_and_the_field(tmp_path, extra, expected):
    path = write(tmp_path, MINIMAL + extra)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: {expected}"


def test_unknown_key_of_a_line_names_the_camera_and_the_field(tmp_path):
    path = write(tmp_path, MINIMAL.replace("name: lobby", "name: lobby\n    lines: [{name: d, points: [[0, 0], [1, 1]], "
                                                          "colour: red}]"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: camera 'lobby', field 'lines.0.colour': unknown key"


def test_every_key_has_a_description_for_users():
    rows = field_docs()
    assert len({r.key for r in rows}) == len(rows)
    for row in rows:
        assert len(row.description) > 10, row
        assert not re.search(r"\bissue\b|TODO|XXX|\.py\b", row.description, re.IGNORECASE), row


def test_dotted_keys_cover_every_section_and_every_backend():
    keys = dotted_keys()
    assert {"cameras[].name", "cameras[].lines[].points", "cameras[].zones[].polygon", "model.path",
            "model.input.letterbox", "model.threads", "model.cuda_graphs", "model.contexts", "model.build_engine",
            "model.fp16", "output.redis.url", "device", "devices", "workers", "defaults"} <= keys
    assert {"cameras", "model", "output.redis", "model.input"} <= keys  # a section is a key too (it may be null)
    docs = {r.key: r for r in field_docs()}
    assert docs["model.contexts"].only == ("backend=tensorrt",) and docs["model.contexts"].default == "1"
    assert docs["model.fp16"].only == ("backend=torch", "backend=tensorrt")
    assert docs["model.path"].default == "required" and docs["model.path"].only == ()
    assert docs["cameras[].decoder"].type == "auto | nvdec | cpu"
    assert docs["cameras[].lines[].directions"].default == "[in, out]"
    # Every key of every model (sections and their keys), walked independently of field_docs.
    def leaves(model, prefix):
        for name, f in model.model_fields.items():
            sub = [m for m in SECTION_TYPES if m.__name__ in repr(f.annotation)]
            if name == "model":
                sub = [OnnxRuntimeModelConfig, TorchModelConfig, TensorRTModelConfig]
            yield prefix + name
            for m in sub:
                yield from leaves(m, prefix + name + ("[]." if "list[" in repr(f.annotation) else "."))
    assert set(leaves(Config, "")) == keys
