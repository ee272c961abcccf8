"""Every output layout: recognized from shape/metadata, decoded for a whole batch, equal to a per-box reference."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import yaml

from rtsp_worker.config import ModelConfig
from rtsp_worker.detection.layouts import LAYOUTS, LayoutError, OutputLayout, anchor_count, resolve_layout
from rtsp_worker.detection.postprocess import class_mask, postprocess
from rtsp_worker.detection.preprocess import Preprocessor
from rtsp_worker.engines import ModelError, load_engine
from rtsp_worker.sim.layout_models import export_layout_model
from rtsp_worker.sim.layout_reference import reference_image, rows_of, to_source
from rtsp_worker.types import Frame

SIZE = (64, 96)
CONF, IOU, MAX_DET = 0.3, 0.5, 40
# Mixed frame sizes in one batch: wider, taller and smaller than the input.
FRAME_SIZES = [(360, 640), (200, 120), (64, 96), (50, 300)]


def frames(sizes=FRAME_SIZES, seed=1) -> list[Frame]:
    g = torch.Generator().manual_seed(seed)
    return [Frame(i, 0, 0.0, torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g), h, w)
            for i, (h, w) in enumerate(sizes)]


def load(path, **kw):
    return load_engine(ModelConfig(path=path, **kw), torch.device("cpu"), max_batch=8)


def reference(raw: torch.Tensor, layout: str, letterbox, classes=None) -> list[list]:
    out = []
    for i in range(raw.shape[0]):
        scale = letterbox.scale[i].tolist()
        scale = tuple(scale) if isinstance(scale, list) else scale
        src = tuple(letterbox.source_size[i].tolist())
        pad = tuple(letterbox.pad[i].tolist())
        dets = reference_image(rows_of(raw[i].tolist(), layout), layout, SIZE, CONF, IOU, MAX_DET, classes)
        out.append([to_source(d, scale, pad, src) for d in dets])
    return out


def assert_matches(dets, ref: list[list]) -> None:
    total = 0
    for i, expected in enumerate(ref):
        sel = dets.batch_index == i
        scores, order = dets.scores[sel].sort(descending=True)
        boxes, cls = dets.boxes[sel][order], dets.class_ids[sel][order]
        assert len(expected) == scores.shape[0], f"image {i}: {scores.shape[0]} boxes, reference {len(expected)}"
        if expected:
            assert torch.allclose(boxes, torch.tensor([d[0] for d in expected]), atol=1e-3), f"image {i}"
            assert torch.allclose(scores, torch.tensor([d[1] for d in expected]), atol=1e-5)
            assert cls.tolist() == [d[2] for d in expected]
        total += len(expected)
    assert total >= 4, "the tiny model should leave a few boxes above the threshold"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_is_recognized_and_decodes_like_the_reference(tmp_path, layout):
    eng = load(export_layout_model(tmp_path / f"{layout}.onnx", layout, SIZE))
    assert eng.info.layout == OutputLayout(layout, 3)
    pre = Preprocessor(eng.info.spec, 8, torch.device("cpu"))
    images, letterbox = pre(frames())
    raw = eng.infer(images)
    dets = postprocess(raw, letterbox, CONF, IOU, max_det=MAX_DET, layout=eng.info.layout, input_size=SIZE)
    assert_matches(dets, reference(raw, layout, letterbox))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_class_filter_and_fixed_batch_one(tmp_path, layout):
    eng = load(export_layout_model(tmp_path / f"{layout}.onnx", layout, SIZE, dynamic_batch=False))
    assert not eng.info.dynamic_batch and eng.info.max_batch == 1
    images, letterbox = Preprocessor(eng.info.spec, 8, torch.device("cpu"))(frames(seed=7))
    raw = eng.infer(images)  # 4 images through a batch-1 model
    assert raw.shape[0] == 4
    mask = class_mask([0, "c2"], eng.info.class_names, torch.device("cpu"))
    dets = postprocess(raw, letterbox, CONF, IOU, max_det=MAX_DET, classes=mask, layout=eng.info.layout,
                       input_size=SIZE)
    assert set(dets.class_ids.tolist()) <= {0, 2}
    assert_matches(dets, reference(raw, layout, letterbox, classes={0, 2}))


def test_family_input_conventions_come_with_the_layout(tmp_path):
    yolox = load(export_layout_model(tmp_path / "x.onnx", "yolox", SIZE)).info.spec
    assert (yolox.channels, yolox.scale, yolox.letterbox) == ("bgr", 1.0, "topleft")
    assert load(export_layout_model(tmp_path / "r.onnx", "rtdetr", SIZE)).info.spec.letterbox == "stretch"
    v8 = load(export_layout_model(tmp_path / "v8.onnx", "yolov8", SIZE)).info.spec
    assert (v8.channels, v8.letterbox, v8.pad_value) == ("rgb", "center", 114.0)
    # metadata over the family default, model.input over metadata
    path = export_layout_model(tmp_path / "m.onnx", "yolov5", SIZE,
                               metadata={"input_channels": "bgr", "input_mean": "[0.5, 0.5, 0.5]"})
    spec = load(path).info.spec
    assert (spec.channels, spec.mean) == ("bgr", (0.5, 0.5, 0.5))
    spec = load(path, input={"channels": "rgb", "letterbox": "topleft"}).info.spec
    assert (spec.channels, spec.mean, spec.letterbox) == ("rgb", (0.5, 0.5, 0.5), "topleft")


def test_override_must_fit_the_shape(tmp_path):
    path = export_layout_model(tmp_path / "v5.onnx", "yolov5", SIZE)
    assert load(path, layout="yolox-decoded").info.layout == OutputLayout("yolox-decoded", 3)
    with pytest.raises(ModelError, match=r"v5.onnx: output shape \[1, 378, 8\] does not fit layout 'yolov8' "
                                         r"\(from model.layout: yolov8\).*fit this shape: yolov5, yolox"):
        load(path, layout="yolov8")


def test_unrecognizable_shapes_name_the_shape_and_the_fitting_values():
    cells = anchor_count(SIZE)
    assert resolve_layout((1, 7, cells), SIZE, None).name == "yolov8"
    assert resolve_layout((1, cells, 85), SIZE, None) == OutputLayout("yolox", 80)
    assert resolve_layout((1, 3 * cells, 85), SIZE, None) == OutputLayout("yolov5", 80)
    assert resolve_layout((2, 300, 6), SIZE, 80) == OutputLayout("end2end", 80)
    assert resolve_layout((2, 300, 84), SIZE, None, {"head": "RTDETRDecoder"}) == OutputLayout("rtdetr", 80)
    # what ultralytics 8.4 writes: RT-DETR's top-k (B, 300, 6); YOLOv10/YOLO26 `end2end: True`
    assert resolve_layout((1, 300, 6), SIZE, 80, {"head": "RTDETRDecoder"}) == OutputLayout("rtdetr-topk", 80)
    assert resolve_layout((1, 300, 6), SIZE, 80, {"head": "v10Detect", "end2end": "True"}).name == "end2end"
    assert resolve_layout((1, 84, 2100), SIZE, 80, {"head": "v10Detect", "end2end": "False"}).name == "yolov8"
    with pytest.raises(LayoutError, match=r"cannot recognize the output layout from shape \[1, 3549, 85\] at "
                                          r"input 64x96; set model.layout \(.*: yolov5, yolox, yolox-decoded\)"):
        resolve_layout((1, 3549, 85), SIZE, None, source="m.onnx")
    with pytest.raises(LayoutError, match="does not say how many classes.*model.class_names"):
        resolve_layout((1, 300, 6), SIZE, None)
    with pytest.raises(LayoutError, match=r"shape \[1, 300\] .*fits none of the layouts"):
        resolve_layout((1, 300), SIZE, None, override="rtdetr")


class _Fixed(torch.nn.Module):
    """Output (B, 3549, 85) whatever the input: the YOLOX-at-416 shape, exported at another input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :1, :1, :1].reshape(-1, 1, 1) * 0 + torch.full((1, 3549, 85), 0.9))


def test_run_refuses_a_model_of_unknown_layout_with_exit_3(tmp_path):
    """Issue 16 item 2: this model used to be read as 3545 classes, detect nothing, and exit 0."""
    from rtsp_worker.engines.export import export_onnx

    model = export_onnx(_Fixed(), tmp_path / "odd.onnx", (64, 96), {"imgsz": "[64, 96]"})
    cfg = tmp_path / "cameras.yaml"
    cfg.write_text(yaml.safe_dump({"cameras": [{"name": "cam0", "url": "rtsp://127.0.0.1:9/none"}],
                                   "model": {"path": str(model)}, "output": {"dir": str(tmp_path / "out")}}))
    proc = subprocess.run([sys.executable, "-m", "rtsp_worker.cli", "run", str(cfg), "--duration", "3"],
                          check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "odd.onnx" in proc.stderr and "[1, 3549, 85]" in proc.stderr and "model.layout" in proc.stderr


def test_inspect_prints_layout_conventions_and_keys(tmp_path):
    path = export_layout_model(tmp_path / "x.onnx", "yolox", SIZE, dynamic_batch=False, names=["cat", "dog", "owl"])
    proc = subprocess.run([sys.executable, "-m", "rtsp_worker.cli", "inspect", str(path)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "layout:       yolox ([B, N, 8]; NMS)" in out and "64x96" in out and "fixed at 1" in out
    assert "BGR, value x 1," in out and "letterbox topleft" in out and "cat, dog, owl" in out
    assert "model.layout (" in out and "model.input.{channels" in out
    proc = subprocess.run([sys.executable, "-m", "rtsp_worker.cli", "inspect", str(path), "--layout", "end2end"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and "[1, 126, 8]" in proc.stderr and "yolox" in proc.stderr


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
def test_decoding_on_cuda_matches_cpu(tmp_path, layout):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    eng = load(export_layout_model(tmp_path / f"{layout}.onnx", layout, SIZE))
    images, letterbox = Preprocessor(eng.info.spec, 8, torch.device("cpu"))(frames())
    raw = eng.infer(images)
    cpu = postprocess(raw, letterbox, CONF, IOU, max_det=MAX_DET, layout=eng.info.layout, input_size=SIZE)
    dev = torch.device("cuda")
    lb = type(letterbox)(*(t.to(dev) for t in (letterbox.scale, letterbox.pad, letterbox.source_size)))
    gpu = postprocess(raw.to(dev), lb, CONF, IOU, max_det=MAX_DET, layout=eng.info.layout, input_size=SIZE).to("cpu")
    assert cpu.boxes.shape[0] > 0
    assert_matches(gpu, reference(raw, layout, letterbox))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_fp16_conversion_keeps_every_layout_working(tmp_path, layout):
    """build-engine's FP16 ONNX: float32 in and out, the decoding tail after the head convolutions still in
    float32, and --validate's accuracy guard (read as the layout) passes against the FP32 model."""
    import onnx

    from rtsp_worker.engine_build.build import DEFAULT_TOLERANCE, check_accuracy
    from rtsp_worker.engine_build.fp16 import convert_file_to_fp16

    src = export_layout_model(tmp_path / f"{layout}.onnx", layout, SIZE)
    half = convert_file_to_fp16(src, tmp_path / f"{layout}_fp16.onnx")
    graph = onnx.load(str(half)).graph
    producer = {out: n for n in graph.node for out in n.output}
    to_fp32 = [n for n in graph.node if n.name.endswith("__fp32__cast")]  # the converter's casts back to float32
    # Only convolution outputs are cast back, and nothing at the output: no op after them ran in float16.
    assert to_fp32 and {producer[n.input[0]].op_type for n in to_fp32} == {"Conv"}
    assert not any(n.name.endswith("__cast_out") for n in graph.node)
    e32, e16 = load(src), load(half)
    assert e16.info.layout == e32.info.layout and e16.info.spec == e32.info.spec
    images, _ = Preprocessor(e32.info.spec, 8, torch.device("cpu"))(frames())
    assert e16.infer(images).dtype == torch.float32
    diff = check_accuracy(src, e16.infer, images, max_batch=8, tol=DEFAULT_TOLERANCE["fp16"], conf=CONF,
                          layout=e32.info.layout)
    assert diff.boxes_compared >= 4, diff


# .pt2 (torch.export, the project's format) for some layouts, TorchScript (ultralytics') for the others:
# every layout and both formats are read once, at a fraction of the time seven exports of each would take.
TORCH_FORMATS = {"yolov8": ".torchscript", "yolov5": ".torchscript", "yolox": ".pt2",
                 "yolox-decoded": ".torchscript", "end2end": ".pt2", "rtdetr": ".torchscript", "rtdetr-topk": ".pt2"}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_torch_engine_reads_the_layout_and_detects_like_onnxruntime(tmp_path, layout):
    """The same tiny model as ONNX and as a torch file (metadata in config.txt): the torch engine reads the
    same layout, classes and input conventions as ONNX Runtime and finds the same boxes in the same frames."""
    ort = load(export_layout_model(tmp_path / f"{layout}.onnx", layout, SIZE))
    eng = load(export_layout_model(tmp_path / f"{layout}{TORCH_FORMATS[layout]}", layout, SIZE))
    assert (eng.info.layout, eng.info.spec, eng.info.class_names) == (ort.info.layout, ort.info.spec,
                                                                      ort.info.class_names)
    images, letterbox = Preprocessor(ort.info.spec, 8, torch.device("cpu"))(frames())
    ref, got = (postprocess(e.infer(images), letterbox, CONF, IOU, max_det=MAX_DET, layout=e.info.layout,
                            input_size=SIZE) for e in (ort, eng))
    assert ref.boxes.shape[0] >= 4 and got.batch_index.tolist() == ref.batch_index.tolist()
    assert got.class_ids.tolist() == ref.class_ids.tolist()
    torch.testing.assert_close(got.boxes, ref.boxes, atol=1e-2, rtol=0)  # source-frame pixels
    torch.testing.assert_close(got.scores, ref.scores, atol=1e-5, rtol=0)
