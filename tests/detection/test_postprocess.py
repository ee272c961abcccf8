"""Vectorized postprocessing against a straightforward per-box reference implementation."""

import pytest
import torch

from rtsp_worker.detection.postprocess import class_mask, decode_predictions, postprocess, to_source_pixels
from rtsp_worker.detection.preprocess import letterbox_geometry
from rtsp_worker.types import Detections, Letterbox


def iou(a, b):
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference(raw, conf, iou_thr, max_det):
    """Per image, per anchor, per class: the classic slow loop, written for clarity."""
    out = []
    for b in range(raw.shape[0]):
        cands = []
        for a in range(raw.shape[2]):
            col = raw[b, :, a].tolist()
            scores = col[4:]
            c = max(range(len(scores)), key=lambda i: scores[i])
            if scores[c] > conf:
                cx, cy, w, h = col[:4]
                cands.append((scores[c], c, [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]))
        cands.sort(key=lambda t: -t[0])
        kept = []
        for s, c, box in cands:
            if all(k[1] != c or iou(k[2], box) <= iou_thr for k in kept):
                kept.append((s, c, box))
        out.extend((b, s, c, box) for s, c, box in kept[:max_det])
    return out


def random_raw(bsz, nc, n, seed):
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand((bsz, 2, n), generator=g) * 300
    # cluster boxes so that NMS has real work to do
    centers = (centers / 40).round() * 40 + torch.randn((bsz, 2, n), generator=g) * 4
    wh = 20 + torch.rand((bsz, 2, n), generator=g) * 40
    scores = torch.rand((bsz, nc, n), generator=g)
    return torch.cat([centers, wh, scores], dim=1)


@pytest.mark.parametrize(("bsz", "nc", "n", "max_det"),
                         [(1, 1, 50, 300), (3, 4, 200, 300), (2, 3, 300, 5), (6, 80, 400, 300)])
def test_nms_matches_reference(bsz, nc, n, max_det):
    raw = random_raw(bsz, nc, n, seed=bsz * 100 + nc)
    got = decode_predictions(raw, conf=0.5, iou=0.45, max_det=max_det)
    ref = reference(raw, 0.5, 0.45, max_det)
    assert len(got) == len(ref) > 0
    key = lambda t: (t[0], -t[1], t[2], t[3])  # noqa: E731 - class and box break score ties (80 classes)
    ref_sorted = sorted(ref, key=key)
    got_rows = sorted(
        zip(got.batch_index.tolist(), got.scores.tolist(), got.class_ids.tolist(), got.boxes.tolist()), key=key
    )
    for (gb, gs, gc, gbox), (rb, rs, rc, rbox) in zip(got_rows, ref_sorted):
        assert gb == rb and gc == rc
        assert gs == pytest.approx(rs, abs=1e-6)
        assert gbox == pytest.approx(rbox, abs=1e-3)


def test_one_call_nms_matches_per_group_nms_at_scale():
    """64 images x 80 classes, 1280-px boxes, >1000 boxes: the coordinate offsets must not blur IoUs."""
    from torchvision.ops import batched_nms, nms

    from rtsp_worker.detection.postprocess import CPU_GROUPED_NMS_ABOVE, nms_per_image_and_class

    g = torch.Generator().manual_seed(3)
    m = 6000
    image = torch.randint(0, 64, (m,), generator=g)
    cls = torch.randint(0, 80, (m,), generator=g)
    xy = (torch.rand((m, 2), generator=g) * 1280 / 64).round() * 64 + torch.randn((m, 2), generator=g) * 3 - 20
    boxes = torch.cat([xy, xy + 10 + torch.rand((m, 2), generator=g) * 60], 1)
    scores = torch.rand(m, generator=g)
    got = nms_per_image_and_class(boxes, scores, image, cls, 0.45, 80)
    if torch.cuda.is_available():  # the one-call path with offsets (the CPU takes it up to 1000 boxes)
        on_gpu = nms_per_image_and_class(boxes.cuda(), scores.cuda(), image.cuda(), cls.cuda(), 0.45, 80)
        assert sorted(on_gpu.cpu().tolist()) == sorted(got.tolist())
    expected = []
    for grp in torch.unique(image * 80 + cls):  # the straightforward way: one nms per (image, class) group
        idx = ((image * 80 + cls) == grp).nonzero().squeeze(1)
        expected.append(idx[nms(boxes[idx], scores[idx], 0.45)])
    expected = torch.cat(expected)
    assert 1000 < len(got) < m  # NMS suppressed some boxes, and many survive
    assert sorted(got.tolist()) == sorted(expected.tolist())
    assert bool((scores[got][1:] <= scores[got][:-1]).all())  # decreasing score order
    assert len(nms_per_image_and_class(boxes[:0], scores[:0], image[:0], cls[:0], 0.45, 80)) == 0
    # The one-call path on the CPU, at its size limit, with the same large offsets.
    few = torch.arange(0, m, m // CPU_GROUPED_NMS_ABOVE)[:CPU_GROUPED_NMS_ABOVE]
    one_call = nms_per_image_and_class(boxes[few], scores[few], image[few], cls[few], 0.45, 80)
    grouped = batched_nms(boxes[few], scores[few], image[few] * 80 + cls[few], 0.45)
    assert sorted(one_call.tolist()) == sorted(grouped.tolist())


def test_max_det_caps_each_image_independently():
    raw = random_raw(4, 2, 400, seed=7)
    dets = decode_predictions(raw, conf=0.1, iou=0.9, max_det=3)
    counts = torch.bincount(dets.batch_index, minlength=4)
    assert counts.tolist() == [3, 3, 3, 3]


def test_class_filter_by_name_and_id():
    raw = random_raw(2, 3, 200, seed=3)
    names = ("person", "car", "bike")
    mask = class_mask(["car", 2], names, torch.device("cpu"))
    dets = decode_predictions(raw, conf=0.3, iou=0.5, classes=mask)
    assert len(dets) > 0 and set(dets.class_ids.tolist()) <= {1, 2}
    with pytest.raises(ValueError, match="unknown class name 'truck'"):
        class_mask(["truck"], names, torch.device("cpu"))


def test_empty_output():
    raw = torch.zeros((2, 7, 100))
    dets = decode_predictions(raw, conf=0.25, iou=0.45)
    assert len(dets) == 0 and dets.boxes.shape == (0, 4)


def test_to_source_pixels_inverts_letterbox_and_clips():
    # 1280x720 source into 384x640: scale 0.5, pad_y 12
    scale, nh, nw, px, py = letterbox_geometry(720, 1280, (384, 640))
    assert (scale, nh, nw, px, py) == (0.5, 360, 640, 0, 12)
    lb = Letterbox(scale=torch.tensor([scale]), pad=torch.tensor([[px, py]], dtype=torch.float32),
                   source_size=torch.tensor([[1280.0, 720.0]]))
    dets = Detections(boxes=torch.tensor([[10.0, 22.0, 110.0, 72.0], [600.0, 300.0, 700.0, 400.0]]),
                      scores=torch.tensor([0.9, 0.8]), class_ids=torch.tensor([0, 1]),
                      batch_index=torch.tensor([0, 0]))
    src = to_source_pixels(dets, lb)
    assert src.boxes[0].tolist() == pytest.approx([20.0, 20.0, 220.0, 120.0])
    assert src.boxes[1].tolist() == pytest.approx([1200.0, 576.0, 1280.0, 720.0])  # clipped to the frame


def test_postprocess_rejects_bad_layout():
    with pytest.raises(ValueError, match="expected raw output"):
        postprocess(torch.zeros((2, 100)), None, 0.25, 0.45)  # type: ignore[arg-type]
