"""TensorRT logic that needs no TensorRT: precision paths per major, TF32, one profile per context."""

from __future__ import annotations

import logging

import pytest

from rtsp_worker.engine_build.trt_builder import plan_precision
from rtsp_worker.engines.base import ModelError
from rtsp_worker.engines.tensorrt import context_profiles


@pytest.mark.parametrize("version", ["10.13.3.9", "11.4.0.106"])
def test_fp32_engines_clear_tf32(version):
    """TF32 is on by default in TensorRT: an "fp32" engine would round conv inputs to 10-bit mantissas."""
    assert plan_precision("fp32", version).clear_flags == ("TF32",)
    assert "TF32" not in plan_precision("fp16", version).clear_flags  # fp16 is reduced precision anyway


@pytest.mark.parametrize(("precision", "version", "text"), [
    ("fp16", "10.13.3.9", ("TensorRT 10.13.3.9 (major 10): fp16 via weakly typed network (TensorRT 10 path): "
                          "builder flags FP16")),
    ("fp32", "10.16.1.11", ("TensorRT 10.16.1.11 (major 10): fp32 via weakly typed network (TensorRT 10 path): "
                           "builder flags none, TF32 cleared")),
    ("fp16", "11.4.0.106", ("TensorRT 11.4.0.106 (major 11): fp16 via strongly typed network (TensorRT 11 path): "
                           "precision from the ONNX's own types, built from an FP16 copy of the ONNX")),
    ("int8", "10.13.3.9", "entropy calibration on real frames"),
])
def test_build_output_names_the_major_and_the_path(precision, version, text):
    assert text in plan_precision(precision, version).describe(version)


def test_each_context_gets_its_own_profile(caplog):
    assert context_profiles(2, 2) == [0, 1]
    assert context_profiles(3, 8) == [0, 1, 2]
    with caplog.at_level(logging.WARNING):
        assert context_profiles(2, 1, "old.engine") == [0]  # a plan built with one profile: one context
    assert any("old.engine" in r.message and "--contexts 2" in r.message for r in caplog.records)
    with pytest.raises(ModelError, match="x.engine: engine has no optimization profile"):
        context_profiles(1, 0, "x.engine")
