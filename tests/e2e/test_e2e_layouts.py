"""End to end per layout: `rtsp-worker run` over the real RTSP server with a tiny model of each layout."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from rtsp_worker.detection.layouts import LAYOUTS
from rtsp_worker.sim.layout_models import export_layout_model

pytestmark = pytest.mark.rtsp


@pytest.mark.parametrize("layout", LAYOUTS)
def test_run_over_rtsp_with_each_layout(tmp_path, rtsp_server_factory, test_clip, layout):
    model = export_layout_model(tmp_path / f"{layout}.onnx", layout, (64, 96), names=["a", "b", "c"])
    server = rtsp_server_factory({"cam0": f"file:{test_clip}"})
    cfg = tmp_path / "cameras.yaml"
    cfg.write_text(yaml.safe_dump({
        "cameras": [{"name": "cam0", "url": server.url("cam0")}],
        "model": {"path": str(model)},
        "detection": {"confidence": 0.2},
        "tracker": {"min_hits": 1, "min_confidence": 0.2},
        "output": {"dir": str(tmp_path / "out")},
    }))
    proc = subprocess.run([sys.executable, "-m", "rtsp_worker.cli", "run", str(cfg), "--duration", "4"],
                          check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "out" / "cam0" / "frames.jsonl").read_text().splitlines()]
    assert len(records) >= 5, len(records)
    objects = [o for r in records for o in r["objects"]]
    assert objects, f"{layout}: nothing detected over {len(records)} frames"
    for o in objects:
        x1, y1, x2, y2 = o["box"]
        assert 0 <= x1 <= x2 <= 640 and 0 <= y1 <= y2 <= 360, o
        # > 0.2 before the JSON's 4-decimal rounding, so >= 0.2 after it
        assert o["class_name"] in ("a", "b", "c") and 0.2 <= o["confidence"] <= 1
