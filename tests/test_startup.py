"""What a start of `rtsp-worker` imports: every command line start pays for it (~2 s of CPU per heavy package).

- `import rtsp_worker.cli` loads no torch: a config error, `--help` or `shards` answers without it (commands
  import what they need when they run).
- The worker's own path (pipeline, postprocess with NMS, the evidence step) loads no torchvision package and
  no torch._dynamo: torchvision's models import both, about 2 s of CPU, for one operator (detection/nms.py).
"""

from __future__ import annotations

import pytest
import yaml
from ops_support import python_json


def test_the_command_line_loads_without_torch_and_a_config_error_needs_none(tmp_path):
    config = tmp_path / "cameras.yaml"
    config.write_text(yaml.safe_dump({"cameras": [{"name": "a", "url": "rtsp://127.0.0.1:1/x", "enabled": False}],
                                      "model": {"path": "m.onnx"}}))
    got = python_json(f"""
        import json, sys
        from rtsp_worker.cli import app
        try:
            app(["run", {str(config)!r}])
        except SystemExit as e:
            code = e.code
        print(json.dumps({{"code": code, "torch": "torch" in sys.modules}}))
    """)
    assert got == {"code": 2, "torch": False}


def test_the_worker_starts_without_the_torchvision_package_and_nms_still_runs():
    # Importing torchvision costs ~2 s of CPU per worker start (its models import torch._dynamo and sympy).
    # Snapshots (torchvision.io.encode_jpeg) import it only once one is due.
    got = python_json("""
        import json, sys, tempfile
        from pathlib import Path
        import torch
        import rtsp_worker.cli, rtsp_worker.pipeline
        from rtsp_worker.detection.postprocess import decode_predictions
        raw = torch.zeros((1, 6, 8))  # yolov8 layout, 2 classes; anchors 3-7 score 0
        raw[0, :4, :3] = torch.tensor([[50.0, 52.0, 200.0], [50.0, 50.0, 200.0], [40.0, 40.0, 40.0], [40.0, 40.0, 40.0]])
        raw[0, 4:, :3] = torch.tensor([[0.9, 0.8, 0.0], [0.0, 0.0, 0.7]])  # two overlapping class-0 boxes, one class 1
        dets = decode_predictions(raw, conf=0.5, iou=0.5)
        from rtsp_worker.evidence.manager import Evidence  # every batch asks it to encode due snapshots
        Evidence(Path(tempfile.mkdtemp()), lambda camera: "id").close()
        print(json.dumps({"scores": dets.scores.tolist(), "classes": dets.class_ids.tolist(),
                          "torchvision": "torchvision" in sys.modules, "dynamo": "torch._dynamo" in sys.modules}))
    """)
    assert got["classes"] == [0, 1] and got["scores"] == pytest.approx([0.9, 0.7])
    assert not got["torchvision"] and not got["dynamo"]
