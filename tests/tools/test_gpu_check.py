"""scripts/gpu_check.sh in smoke mode (what CI can run): every step runs and both reports are written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="smoke mode is the no-GPU run")
def test_gpu_check_smoke_writes_json_and_markdown_reports(tmp_path):
    out = tmp_path / "report"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(out), "--smoke"], capture_output=True, check=False,
                       text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["steps"]] == ["doctor", "pytest_gpu", "bench_gpu", "parity"]
    assert all(s["rc"] == 0 for s in report["steps"]) and report["passed"] and report["smoke"]
    assert {c["name"] for c in report["doctor"]["selftest"]} >= {"decode", "engine", "tracker"}
    md = (out / "report.md").read_text()
    assert "| doctor | pass |" in md and "Overall: PASSED" in md
    # The GPU tests were collected (they import and exist) even though none can run here.
    assert "test_kernel_matches_its_twin_on_the_gpu" in (out / "pytest_gpu.log").read_text()

