"""Devices named once, as tensors report them (rtsp_worker/devices.py), and `cpu:0` through every entry point.

`torch.device("cpu", 0) != torch.device("cpu")` while CPU tensors report `cpu`: the same class of bug as
`cuda` vs `cuda:0` on a GPU, so `device: "cpu:0"` catches on this machine what `device: cuda` would break
there (the `.pt2` loader's "still names other devices", the fused kernel silently off, doctor, inspect).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rtsp_worker.config import ConfigError, ModelConfig, parse_config
from rtsp_worker.detection.preprocess import Preprocessor
from rtsp_worker.devices import DEVICE_PATTERN, normalize_device, resolve_device, same_device
from rtsp_worker.engines import load_engine
from rtsp_worker.sim.clips import write_test_clip
from rtsp_worker.types import RGB, Frame

REPO = Path(__file__).resolve().parents[2]
PT2 = REPO / "models" / "synth_det.pt2"


# -- the helpers ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "expected"), [
    ("cpu", "cpu"), ("cpu:0", "cpu"), ("cpu:3", "cpu"), (torch.device("cpu", 0), "cpu"), ("cuda:1", "cuda:1"),
])
def test_normalize_names_a_device_as_its_tensors_report_it(name, expected):
    assert normalize_device(name) == torch.device(expected)
    assert str(normalize_device(name)) == expected


def test_normalize_gives_cuda_an_index():
    # Without a GPU torch reports index 0 for the current device as well: cuda -> cuda:0 either way.
    current = torch.cuda.current_device() if torch.cuda.is_available() else 0
    assert normalize_device("cuda") == torch.device("cuda", current)
    assert normalize_device("cuda").index is not None


def test_same_device_compares_normalized_forms():
    assert torch.device("cpu", 0) != torch.device("cpu")  # what the helper exists for
    assert same_device("cpu:0", torch.zeros(1).device) and same_device("cpu", "cpu:2")
    assert same_device("cuda", "cuda:0") == (not torch.cuda.is_available() or torch.cuda.current_device() == 0)
    assert not same_device("cpu", "cuda:0") and not same_device("cuda:0", "cuda:1")


def test_resolve_device():
    assert resolve_device("cpu:0") == torch.device("cpu")
    assert resolve_device("auto") == (normalize_device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="'cuda:1' requested but CUDA is not available"):
            resolve_device("cuda:1")


@pytest.mark.parametrize("good", ["auto", "cpu", "cpu:0", "cuda", "cuda:0", "cuda:12"])
def test_config_accepts_the_device_forms_torch_accepts(good, tmp_path):
    cfg = parse_config({"cameras": [{"name": "a", "url": "rtsp://h/x"}], "model": {"path": str(PT2)},
                        "device": good})
    assert cfg.device == good
    assert good == "auto" or DEVICE_PATTERN.fullmatch(good)


@pytest.mark.parametrize("bad", ["gpu", "cuda0", "cpu:", "cuda:-1", "mps", "CUDA"])
def test_config_refuses_other_device_names_naming_the_field(bad):
    with pytest.raises(ConfigError, match="device"):
        parse_config({"cameras": [{"name": "a", "url": "rtsp://h/x"}], "model": {"path": str(PT2)}, "device": bad})
    with pytest.raises(ConfigError, match="devices"):
        parse_config({"cameras": [{"name": "a", "url": "rtsp://h/x"}], "model": {"path": str(PT2)},
                      "devices": ["cpu:0", bad]})


# -- the parts, given `cpu:0` --------------------------------------------------------------------------------
def test_pt2_engine_and_preprocessor_on_cpu_0():
    # Before: move_to_device_pass put the weights on `cpu`, which != cpu:0 -> "still names other devices".
    engine = load_engine(ModelConfig(path=PT2), torch.device("cpu", 0), max_batch=2)
    try:
        assert engine.device == torch.device("cpu")
        pre = Preprocessor(engine.info.spec, 2, torch.device("cpu", 0), engine.input_dtype)
        assert pre.device == torch.device("cpu")
        image = torch.full((120, 160, 3), 128, dtype=torch.uint8)
        x, letterbox = pre([Frame(0, 0, 0.0, image, 120, 160, RGB)])
        assert x.device == engine.device and letterbox.scale.device == engine.device
        out = engine.infer(x)
        assert out.device == engine.device and out.shape[0] == 1 and torch.isfinite(out).all()
    finally:
        engine.close()


# -- the commands, given `cpu:0` -----------------------------------------------------------------------------
def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "rtsp_worker.cli", *args], capture_output=True, check=False,
                          text=True, timeout=timeout, env=env, cwd=REPO)


@pytest.mark.slow
def test_run_inspect_and_doctor_on_cpu_0(tmp_path):
    clip = write_test_clip(tmp_path / "clip.mp4", seconds=1, fps=10, size=(320, 240))
    out = tmp_path / "out"
    config = tmp_path / "cameras.yaml"
    config.write_text(yaml.safe_dump({
        "cameras": [{"name": "a", "url": clip.as_uri()}, {"name": "b", "url": clip.as_uri()}],
        "model": {"path": str(PT2)}, "device": "cpu:0", "output": {"dir": str(out)},
        "detection": {"confidence": 0.01}, "log_interval": 1.0,
    }))
    r = _cli("run", str(config), "--duration", "4")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    records = [json.loads(line) for p in sorted(out.rglob("*.jsonl")) for line in p.read_text().splitlines()]
    assert {rec.get("camera") for rec in records} == {"a", "b"}, sorted(p.name for p in out.rglob("*"))

    r = _cli("inspect", str(PT2), "--device", "cpu:0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "TorchScriptEngine on cpu," in r.stdout

    # Through the command line (doctor's module may move; its command stays).
    report = tmp_path / "doctor.json"
    r = _cli("doctor", "--device", "cpu:0", "--seconds", "1", "--cameras", "1", "--width", "320", "--height",
             "192", "--json", str(report))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = {c["name"]: c["ok"] for c in json.loads(report.read_text())["selftest"]}
    assert rows["engine"] is True and rows["preprocess"] is True and rows["tracker"] is True, rows
