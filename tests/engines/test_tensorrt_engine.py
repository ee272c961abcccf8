"""TensorRT build + runtime on a real GPU (marked `tensorrt`; skipped without TensorRT or CUDA)."""

from __future__ import annotations

import threading

import pytest
import torch
from typer.testing import CliRunner

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu]
trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed")
if not torch.cuda.is_available():
    pytest.skip("TensorRT tests need a CUDA GPU", allow_module_level=True)

from tiny_models import export_tiny

from rtsp_worker.cli import app
from rtsp_worker.config import ModelConfig
from rtsp_worker.detection.layouts import LAYOUTS
from rtsp_worker.engine_build.validate import compare_raw, run_onnxruntime
from rtsp_worker.engines import ModelError, load_engine
from rtsp_worker.engines.trt_plan import read_plan, write_plan
from rtsp_worker.sim.layout_models import export_layout_model

CUDA = torch.device("cuda")
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("trt") / "tiny.onnx", size=(64, 96), names=["a", "b", "c"])


def build(onnx_path, out, *extra):
    result = runner.invoke(app, ["build-engine", str(onnx_path), "-o", str(out), "--max-batch", "4",
                                 "--opt-batch", "2", "-q", *extra])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("precision, tol", [("fp32", (2e-3, 0.05)), ("fp16", (2e-2, 1.0))])
def test_built_engine_matches_onnxruntime_for_every_batch(tiny, tmp_path, precision, tol):
    engine_path = build(tiny, tmp_path / f"tiny_{precision}.engine", "-p", precision)
    meta, _ = read_plan(engine_path)
    assert meta.precision == precision and meta.max_batch == 4 and meta.class_names == ("a", "b", "c")
    assert meta.tensorrt_version == trt.__version__
    assert (tmp_path / "trt_timing.cache").is_file()
    eng = load_engine(ModelConfig(path=engine_path, contexts=2), CUDA, max_batch=4)
    try:
        assert eng.info.input_size == (64, 96) and eng.info.max_batch == 4 and eng.info.dynamic_batch
        x = torch.rand(4, 3, 64, 96)
        ref = run_onnxruntime(tiny, x, batch=4)
        for b in (1, 2, 3, 4):
            out = eng.infer(x[:b].to(CUDA, eng.input_dtype))
            assert out.dtype == torch.float32 and out.device.type == "cuda" and out.shape == ref[:b].shape
            assert compare_raw(ref[:b], out, conf=0.25).within(*tol)
        with pytest.raises(ModelError, match="exceeds the engine's max batch 4"):
            eng.infer(torch.rand(5, 3, 64, 96, device=CUDA))
    finally:
        eng.close()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_engine_of_every_layout_reads_and_runs_like_onnxruntime(tmp_path, layout):
    onnx_path = export_layout_model(tmp_path / f"{layout}.onnx", layout, (64, 96))
    eng = load_engine(ModelConfig(path=build(onnx_path, tmp_path / f"{layout}.engine", "-p", "fp16")), CUDA, 4)
    ort = load_engine(ModelConfig(path=onnx_path), torch.device("cpu"), 4)
    try:
        assert (eng.info.layout, eng.info.spec, eng.info.class_names) == (ort.info.layout, ort.info.spec,
                                                                          ort.info.class_names)
        x = torch.rand(3, 3, 64, 96)
        diff = compare_raw(ort.infer(x), eng.infer(x.to(CUDA, eng.input_dtype)), 0.25, eng.info.layout, (64, 96))
        assert diff.within(2e-2, 1.0), diff
    finally:
        eng.close()


def test_validate_flag_passes_on_fp32(tiny, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    from rtsp_worker.sim.clips import write_test_clip

    write_test_clip(frames / "a.mp4", seconds=1, fps=10, size=(192, 128))
    build(tiny, tmp_path / "v.engine", "-p", "fp32", "--validate", "--calib-data", str(frames))
    assert (tmp_path / "v.engine").is_file()


def test_engine_from_another_tensorrt_version_asks_for_rebuild(tiny, tmp_path):
    engine_path = build(tiny, tmp_path / "m.engine", "-p", "fp32")
    meta, plan = read_plan(engine_path)
    from dataclasses import replace

    write_plan(engine_path, replace(meta, tensorrt_version="9.9.9"), plan)
    with pytest.raises(ModelError, match=r"built with TensorRT 9.9.9.*rebuild it on this machine: rtsp-worker build-engine"):
        load_engine(ModelConfig(path=engine_path), CUDA, max_batch=4)


def test_build_on_first_start_then_reuse(tmp_path):
    onnx_path = export_tiny(tmp_path / "auto.onnx", size=(64, 96))
    cfg = ModelConfig(path=onnx_path, build_engine=True, fp16=False)
    eng = load_engine(cfg, CUDA, max_batch=2)
    eng.close()
    engine_path = tmp_path / "auto.engine"
    first = engine_path.stat().st_mtime_ns
    load_engine(cfg, CUDA, max_batch=2).close()
    assert engine_path.stat().st_mtime_ns == first  # reused
    load_engine(cfg, CUDA, max_batch=4).close()  # needs a bigger batch: rebuilt
    assert read_plan(engine_path)[0].max_batch == 4


def test_two_threads_on_their_own_streams_get_their_own_results(tiny, tmp_path):
    eng = load_engine(ModelConfig(path=build(tiny, tmp_path / "t.engine", "-p", "fp32", "--contexts", "2"), contexts=2),
                      CUDA, 4)
    assert eng.contexts == 2  # --contexts 2: one profile per context
    xs = [torch.rand(3, 3, 64, 96, device=CUDA) for _ in range(2)]
    expected = [eng.infer(x).clone() for x in xs]
    results: list = [None, None]
    default = torch.cuda.default_stream(CUDA)  # xs were written there

    def work(i: int) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(default)  # read xs only once the default stream has written them
        with torch.cuda.stream(stream):
            for _ in range(20):
                out = eng.infer(xs[i])
            results[i] = out.clone()
        stream.synchronize()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    try:
        for i in range(2):
            assert torch.allclose(results[i], expected[i], atol=1e-4)
    finally:
        eng.close()
