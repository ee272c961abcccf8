"""`rtsp-worker plan`: a row per camera (probed, unknown, or assumed), the headroom, and JSON that parses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from ops_support import tiny_model
from typer.testing import CliRunner

from rtsp_worker.capacity import BatchCost
from rtsp_worker.cli import app
from rtsp_worker.config import parse_config
from rtsp_worker.sim.clips import write_test_clip
from rtsp_worker.tools.plan import StepCost, Stream, cpu_capacity, make_plan

FIXTURES = (tiny_model,)


def test_plan_prints_a_row_per_camera_and_its_json_parses(tmp_path: Path, tiny_model: Path) -> None:
    clip = write_test_clip(tmp_path / "cam.mp4", seconds=1, fps=10, size=(160, 120))
    cfg = tmp_path / "cameras.yaml"
    cfg.write_text(yaml.safe_dump({
        "cameras": [{"name": "door", "url": f"file://{clip}", "priority": "high"},
                    {"name": "yard", "url": "rtsp://user:secret@127.0.0.1:1/x", "priority": "low"}],
        "model": {"path": str(tiny_model)}, "device": "cpu", "batcher": {"max_batch": 2},
    }))
    runner = CliRunner()
    out = runner.invoke(app, ["plan", str(cfg), "--probe-timeout", "1"])
    assert out.exit_code == 0, out.output
    rows = {line.split()[0]: line for line in out.output.splitlines() if line.split()[:1] in (["door"], ["yard"])}
    assert set(rows) == {"door", "yard"}
    assert "h264 160x120@10" in rows["door"] and "unknown" in rows["yard"]
    assert "headroom" in out.output and "secret" not in out.output

    out = runner.invoke(app, ["plan", str(cfg), "--probe-timeout", "1", "--assume", "320x240@15", "--json"])
    assert out.exit_code == 0, out.output
    plan = json.loads(out.output)
    cams = {c["name"]: c for c in plan["cameras"]}
    assert cams["door"]["how"] == "probed" and cams["yard"]["how"] == "assumed"
    assert cams["yard"]["target_fps"] == 15.0 and cams["door"]["target_fps"] == 10.0
    assert plan["engine_fps"] > 0 and set(plan["engine_ms"]) == {"1", "2"}
    assert plan["demand_fps"] == 25.0 and plan["degraded_first"] == ["yard", "door"]
    assert all(c["predicted_fps"] <= c["target_fps"] for c in cams.values())

    bad = runner.invoke(app, ["plan", str(cfg), "--assume", "big"])
    assert bad.exit_code != 0 and "WIDTHxHEIGHT@FPS" in bad.output


def test_cpu_capacity_and_the_single_priority_prediction() -> None:
    # 100 frames/s alone; decoding takes 0.5 of 2 cores and the other half 5 core-ms per frame:
    # C = 100 * 0.75 / (1 + 100 * 5 / 1000 / 2) = 60.
    assert cpu_capacity(100.0, 5.0, 0.5, 2) == pytest.approx(60.0)
    assert cpu_capacity(0.0, 5.0, 0.5, 2) == 0.0
    infer = BatchCost()
    infer.observe(1, 20.0)  # 50 inferred frames/s at any batch size
    cost = StepCost(infer, 0.0, 4)
    cams = [{"name": n, "url": f"rtsp://cam.invalid/{n}", "priority": p} for n, p in
            (("a", "normal"), ("b", "normal"), ("c", "normal"))]
    cfg = parse_config({"cameras": cams, "model": {"path": "m.onnx"}})
    streams = {n: Stream("h264", 640, 360, 25.0, "probed") for n in "abc"}
    plan = make_plan(cfg, streams, cost, {}, torch.device("cpu"), 2)
    # One priority: no multipliers; 75 asked of 50, so every camera gets 2/3 of its 25.
    assert plan["capacity_fps"] == 50.0 and plan["demand_fps"] == 75.0
    assert [(c["multiplier"], round(c["predicted_fps"], 2)) for c in plan["cameras"]] == [(1, 16.67)] * 3
    cams[0]["priority"] = "high"
    plan = make_plan(parse_config({"cameras": cams, "model": {"path": "m.onnx"}}), streams, cost, {},
                     torch.device("cpu"), 2)
    by = {c["name"]: c for c in plan["cameras"]}
    assert by["a"]["multiplier"] == 1 and by["a"]["predicted_fps"] == 25.0  # high first, at its full rate
    assert by["b"]["multiplier"] == by["c"]["multiplier"] > 1 and plan["degraded_first"][0] in ("b", "c")
