"""`rtsp-worker doctor`: runs here (CPU), says what is missing, self-tests the CPU path, exits non-zero when
a requested path cannot work. Real subprocess, real decoders and the shipped ONNX model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def doctor(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "rtsp_worker.cli", "doctor", *args], capture_output=True, check=False,
                          text=True, timeout=timeout, env=env, cwd=REPO)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without CUDA")
def test_doctor_on_a_cpu_machine_reports_what_is_missing_and_passes_the_cpu_path(tmp_path):
    out = tmp_path / "doctor.json"
    r = doctor("--seconds", "1", "--cameras", "2", "--width", "320", "--height", "192", "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no CUDA device usable" in r.stdout and "libnvcuvid.so.1 not loadable" in r.stdout
    assert "PASSED" in r.stdout
    report = json.loads(out.read_text())
    rows = {c["name"]: c for c in report["selftest"]}
    assert [rows[s]["ok"] for s in ("decode", "preprocess", "engine", "postprocess", "tracker", "host copy")] \
        == [True] * 6
    assert report["summary"]["selftest"]["decoded"] >= 2 and report["summary"]["selftest"]["decoders"] == ["cpu"]
    caps = {c["name"]: c for c in report["capabilities"]}
    assert caps["torch CUDA"]["ok"] is None and caps["ONNX Runtime"]["ok"] is True
    assert report["failed"] is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize(("args", "reason"), [
    (("--device", "cuda"), "--device cuda asked for, but torch sees no CUDA device"),
    (("--decoder", "nvdec"), "--decoder nvdec asked for, but no CUDA device"),
])
def test_doctor_fails_when_the_requested_path_cannot_work(args, reason):
    r = doctor(*args, "--seconds", "1", "--cameras", "1", "--width", "320", "--height", "192")
    assert r.returncode == 4, r.stdout + r.stderr
    assert reason in r.stdout and "FAILED" in r.stdout


def test_doctor_names_the_model_file_that_cannot_load(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not onnx")
    r = doctor("--device", "cpu", "--model", str(bad), "--seconds", "1", "--cameras", "1")
    assert r.returncode == 4 and "broken.onnx" in r.stdout and "FAIL" in r.stdout
