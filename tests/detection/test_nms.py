"""NMS from torchvision's operator library, loaded without the torchvision package (detection/nms.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torchvision.ops import batched_nms
from torchvision.ops import nms as package_nms

from rtsp_worker.detection.nms import nms, nms_per_group


def _python(code: str) -> dict:
    """Run `code` in a fresh interpreter (this one has imported torchvision already); it prints one JSON line."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_worker_starts_without_the_torchvision_package_and_nms_still_runs():
    # Importing torchvision costs ~2 s of CPU per worker start (its models import torch._dynamo and sympy).
    # Snapshots (torchvision.io.encode_jpeg) import it only once one is due.
    got = _python("""
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


def test_without_the_library_file_the_package_is_imported_instead():
    got = _python("""
        import json, sys
        import torch
        from rtsp_worker.detection.nms import nms_operator
        op = nms_operator(("_no_such_library",))
        boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
        kept = op(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
        print(json.dumps({"module": op.__module__, "kept": kept.tolist(), "torchvision": "torchvision" in sys.modules}))
    """)
    assert got == {"module": "torchvision.ops.boxes", "kept": [0, 2], "torchvision": True}


def test_nms_and_nms_per_group_give_torchvisions_results():
    g = torch.Generator().manual_seed(5)
    m = 3000
    xy = torch.rand((m, 2), generator=g) * 600
    boxes = torch.cat([xy, xy + 8 + torch.rand((m, 2), generator=g) * 80], 1)
    scores = torch.rand(m, generator=g)
    groups = torch.randint(0, 40, (m,), generator=g)
    assert torch.equal(nms(boxes, scores, 0.45), package_nms(boxes, scores, 0.45))
    per_group = nms_per_group(boxes, scores, groups, 0.45)
    assert m // 4 < len(per_group) < m  # some suppressed, many kept
    assert torch.equal(per_group, batched_nms(boxes, scores, groups, 0.45))
    assert nms_per_group(boxes[:0], scores[:0], groups[:0], 0.45).tolist() == []
