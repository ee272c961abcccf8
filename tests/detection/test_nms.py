"""NMS from torchvision's operator library, loaded without the torchvision package (detection/nms.py)."""

from __future__ import annotations

import torch
from ops_support import python_json
from torchvision.ops import batched_nms
from torchvision.ops import nms as package_nms

from rtsp_worker.detection.nms import nms, nms_per_group


def test_without_the_library_file_the_package_is_imported_instead():
    got = python_json("""
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
