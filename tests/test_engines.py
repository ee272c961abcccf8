"""ONNX Runtime engine: reads size and names from the model, runs whole batches, rejects bad models."""

import pytest
import torch
from tiny_models import export_tiny

from rtsp_worker.config import ModelConfig
from rtsp_worker.engines import ModelError, choose_backend, load_engine


def load(path, **kw):
    return load_engine(ModelConfig(path=path, **kw), torch.device("cpu"), max_batch=4)


def test_reads_input_size_and_names(tmp_path):
    eng = load(export_tiny(tmp_path / "m.onnx", size=(64, 96), names=["person", "car", "bike"]))
    assert eng.info.input_size == (64, 96)
    assert eng.info.class_names == ("person", "car", "bike")
    assert eng.info.dynamic_batch
    out = eng.infer(torch.rand(3, 3, 64, 96))
    assert out.shape == (3, 7, (64 // 8) * (96 // 8)) and out.dtype == torch.float32


def test_fixed_batch_one_model_still_runs_batches(tmp_path):
    dyn = load(export_tiny(tmp_path / "dyn.onnx", nc=2))
    fixed = load(export_tiny(tmp_path / "fixed.onnx", nc=2, dynamic_batch=False))
    assert not fixed.info.dynamic_batch and fixed.info.max_batch == 1
    assert fixed.info.class_names == ("0", "1")
    x = torch.rand(3, 3, 64, 96)
    assert torch.allclose(fixed.infer(x), dyn.infer(x), atol=1e-5)


def test_parallel_runs_split_a_batch_and_give_the_same_output(tmp_path):
    """model.parallel_runs: sub-batches at once on a single-threaded session; smaller batches one run."""
    path = export_tiny(tmp_path / "m.onnx", nc=2)
    one = load(path, parallel_runs=1)
    three = load_engine(ModelConfig(path=path, parallel_runs=3), torch.device("cpu"), max_batch=8)
    x = torch.rand(7, 3, 64, 96)
    try:
        assert one._single is None and three._single is not None and three._runs == 3
        assert torch.allclose(three.infer(x), one.infer(x), atol=1e-5)  # 7 images as 3 + 2 + 2, in order
        assert three._pool is not None and three._pool._max_workers == 2  # the caller runs one sub-batch
        assert torch.allclose(three.infer(x[:2]), one.infer(x[:2]), atol=1e-5)  # 2 < 3: one run
    finally:
        three.close()
    assert three._pool is None


def test_parallel_runs_threads_run_from_the_start(tmp_path):
    """The pool's threads exist once the engine is loaded: the first parallel batch adds none (an
    operator's thread count, and the leak tests that read it, see a steady number from the start)."""
    import threading

    def ort_threads() -> int:
        return sum(t.name.startswith("ort-run") for t in threading.enumerate())

    before = ort_threads()
    three = load_engine(ModelConfig(path=export_tiny(tmp_path / "m.onnx", nc=2), parallel_runs=3),
                        torch.device("cpu"), max_batch=8)
    try:
        assert ort_threads() == before + 2
        three.infer(torch.rand(1, 3, 64, 96))
        three.infer(torch.rand(6, 3, 64, 96))  # a parallel batch: the same threads
        assert ort_threads() == before + 2
    finally:
        three.close()
    assert ort_threads() == before


def test_parallel_runs_auto_is_one_per_usable_core():
    import os

    from rtsp_worker.engines.onnxruntime import parallel_runs

    assert parallel_runs(0) == len(os.sched_getaffinity(0)) and parallel_runs(5) == 5


def test_wrong_output_layout_is_rejected(tmp_path):
    path = export_tiny(tmp_path / "bad.onnx", bad_layout=True, names=["a", "b", "c"])
    with pytest.raises(ModelError, match=r"bad.onnx: cannot recognize the output layout from shape \[1, 96, 7\].*model.layout"):
        load(path)


def test_missing_model_and_garbage_file(tmp_path):
    with pytest.raises(ModelError, match="nope.onnx: model file not found"):
        load(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="junk.onnx: cannot load ONNX model"):
        load(junk)


def test_input_size_mismatch_and_names_count(tmp_path):
    path = export_tiny(tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="model input is 64x96 but model.input_size is 128x128"):
        load(path, input_size=(128, 128))
    with pytest.raises(ModelError, match="2 class names for 3 classes"):
        load(path, class_names=["a", "b"])


def test_backend_choice_by_suffix():
    cpu = torch.device("cpu")
    assert choose_backend(ModelConfig(path="m.onnx"), cpu) == "onnxruntime"
    assert choose_backend(ModelConfig(path="m.torchscript"), cpu) == "torch"
    assert choose_backend(ModelConfig(path="m.engine"), cpu) == "tensorrt"
    assert choose_backend(ModelConfig(path="m.onnx", build_engine=True), torch.device("cuda")) == "tensorrt"
    assert choose_backend(ModelConfig(path="m.onnx", build_engine=True), cpu) == "onnxruntime"


def test_build_engine_without_a_gpu_runs_the_onnx_on_onnxruntime_with_its_defaults(tmp_path):
    """`build_engine: true` picks the tensorrt section; on the CPU the ONNX runs on ONNX Runtime instead."""
    cfg = ModelConfig(path=export_tiny(tmp_path / "m.onnx", nc=2), build_engine=True, fp16=False)
    assert cfg.BACKEND == "tensorrt"
    eng = load_engine(cfg, torch.device("cpu"), max_batch=4)
    assert type(eng).__name__ == "OnnxRuntimeEngine" and eng.info.class_names == ("0", "1")
    assert eng.infer(torch.rand(2, 3, 64, 96)).shape[0] == 2
