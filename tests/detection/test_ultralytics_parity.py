"""Parity with ultralytics' own predictions (random weights, built from its yaml files, no downloads).

For YOLOv5u, YOLOv8, YOLOv10 (end2end export), YOLO11 and RT-DETR: ultralytics exports the model to ONNX,
ultralytics predicts on the frames through that ONNX file, and the worker's own path (InputSpec preprocessing
-> ONNX Runtime engine -> layout decoder -> NMS or top-k -> source pixels) runs on the same frames with the
same thresholds. Boxes must agree within 1 px with identical classes, one to one.

ultralytics (AGPL) is an optional test dependency, never imported by the package: `pip install .[parity]`.
Without it these tests skip (and fail in CI, which installs it). Frames are chosen so that no resampling is
needed (scale 1 into the 320x320 input; the short one letterboxed), because cv2's and torch's bilinear
kernels differ in the last bit and random weights would amplify that into different candidate sets.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import skip_or_fail

from rtsp_worker.config import ModelConfig
from rtsp_worker.detection.postprocess import postprocess
from rtsp_worker.detection.preprocess import Preprocessor
from rtsp_worker.engines import load_engine
from rtsp_worker.types import Frame

pytestmark = pytest.mark.slow
IMGSZ = 320
IOU = 0.45
# yaml -> (layout the worker must recognize from the export, frame sizes (h, w))
MODELS = {
    "yolov5n.yaml": ("yolov8", [(320, 320), (192, 320)]),  # ultralytics' YOLOv5u: anchor-free head
    "yolov8n.yaml": ("yolov8", [(320, 320), (192, 320)]),
    "yolov10n.yaml": ("end2end", [(320, 320), (192, 320)]),
    "yolo11n.yaml": ("yolov8", [(320, 320), (192, 320)]),
    # RT-DETR stretches frames to the input: square frames keep cv2 and torch out of resampling.
    "rtdetr-l.yaml": ("rtdetr-topk", [(320, 320), (320, 320)]),
}


@pytest.fixture(scope="module")
def ultralytics_env(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ultralytics")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="yolo-cfg-"))
    try:
        import ultralytics
    except ImportError:
        skip_or_fail("ultralytics is not installed (pip install .[parity])")
    ultralytics.settings.update({"sync": False})
    return workdir


def _export(yaml_name: str, workdir: Path) -> Path:
    from ultralytics import RTDETR, YOLO

    torch.manual_seed(0)
    model = (RTDETR if yaml_name.startswith("rtdetr") else YOLO)(yaml_name)
    _calibrate(model.model)
    cwd = os.getcwd()
    os.chdir(workdir)  # yaml-built models export into the current directory
    try:
        # nms=False asks for the NMS-free (end2end) branch where the head has one (YOLOv10, YOLO26)
        out = model.export(format="onnx", imgsz=IMGSZ, simplify=False, dynamic=False, batch=1, nms=False,
                           verbose=False)
    finally:
        os.chdir(cwd)
    return Path(workdir) / out if not Path(out).is_absolute() else Path(out)


def _calibrate(net: torch.nn.Module) -> None:
    """Random weights with BatchNorm's initial statistics shrink activations to nearly constant values (every
    score ties at the class bias). One train-mode pass over the test frames sets the statistics, as a first
    training step would; the weights stay random."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    x = torch.stack([f.image.permute(2, 0, 1) for f in _frames([(IMGSZ, IMGSZ)] * 2)]).float() / 255
    net.train()
    with torch.no_grad():
        net(x)
    net.eval()


def _frames(sizes) -> list[Frame]:
    g = torch.Generator().manual_seed(3)
    out = []
    for i, (h, w) in enumerate(sizes):
        # smooth blobs plus noise: structure for the random backbone to respond to
        base = torch.nn.functional.interpolate(torch.rand(1, 3, h // 16, w // 16, generator=g) * 255, size=(h, w),
                                               mode="bilinear", align_corners=False)[0]
        img = (base + torch.rand(3, h, w, generator=g) * 40).clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
        out.append(Frame(i, 0, 0.0, img.contiguous(), h, w))
    return out


def _threshold(raw: torch.Tensor, layout: str) -> float:
    """Random weights score low: a threshold in the widest gap between the 20th and 41st best scores, so some
    tens of boxes pass, and a score that ultralytics computes a few ulps apart (it runs each frame alone, the
    worker the batch) cannot land on the other side of it."""
    scores = raw[..., 4] if raw.shape[-1] == 6 and layout != "yolov8" else raw[:, 4:].amax(dim=1)
    top = scores.flatten().sort(descending=True).values[19:41]
    gaps = top[:-1] - top[1:]
    k = int(gaps.argmax())
    assert gaps[k] > 1e-4 * top[k].abs(), "tied scores around the threshold"
    return float((top[k] + top[k + 1]) / 2)


def _match(ours_boxes, ours_cls, theirs_boxes, theirs_cls) -> None:
    assert ours_boxes.shape[0] == theirs_boxes.shape[0], (ours_boxes.shape[0], theirs_boxes.shape[0])
    used = set()
    for box, cls in zip(theirs_boxes, theirs_cls):
        dist = (ours_boxes - box).abs().amax(dim=1)
        dist[ours_cls != cls] = float("inf")
        for j in used:
            dist[j] = float("inf")
        j = int(dist.argmin())
        assert dist[j] <= 1.0, f"no box of class {int(cls)} within 1 px of {box.tolist()} (nearest {float(dist[j])})"
        used.add(j)


@pytest.mark.parametrize("yaml_name", list(MODELS))
def test_same_boxes_and_classes_as_ultralytics(ultralytics_env, yaml_name):
    from ultralytics import RTDETR, YOLO

    layout, sizes = MODELS[yaml_name]
    path = _export(yaml_name, ultralytics_env)
    engine = load_engine(ModelConfig(path=path), torch.device("cpu"), max_batch=4)
    assert engine.info.layout is not None and engine.info.layout.name == layout
    frames = _frames(sizes)
    images, letterbox = Preprocessor(engine.info.spec, 4, torch.device("cpu"))(frames)
    raw = engine.infer(images)
    conf = _threshold(raw, layout)
    dets = postprocess(raw, letterbox, conf, IOU, max_det=300, layout=engine.info.layout,
                       input_size=engine.info.input_size)

    predictor = RTDETR(str(path)) if yaml_name.startswith("rtdetr") else YOLO(str(path), task="detect")
    total = 0
    for i, f in enumerate(frames):
        bgr = f.image.numpy()[:, :, ::-1].copy()
        res = predictor.predict([bgr], imgsz=IMGSZ, conf=conf, iou=IOU, max_det=300, verbose=False)[0]
        theirs_boxes, theirs_cls = res.boxes.xyxy.float(), res.boxes.cls.long()
        # ultralytics clips YOLO boxes to the frame but not RT-DETR's; the worker clips every box
        limits = torch.tensor([f.width, f.height, f.width, f.height], dtype=torch.float32)
        theirs_boxes = torch.minimum(theirs_boxes.clamp(min=0), limits)
        sel = dets.batch_index == i
        _match(dets.boxes[sel], dets.class_ids[sel], theirs_boxes, theirs_cls)
        total += theirs_boxes.shape[0]
    assert total >= 3, f"only {total} boxes compared at conf {conf}"
