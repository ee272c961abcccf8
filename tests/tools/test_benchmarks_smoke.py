"""Every benchmark runs once in `--smoke` mode, as CI would, and writes a JSON with sensible numbers.

No speed is asserted here (speed lives in benchmarks/ as ratios within one run); these tests check that
each benchmark still runs end to end against the current code and measures something: the keys it
promises exist and the times and rates are finite and positive.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, skip_or_fail

from rtsp_worker.sim.devserver import available

BENCH = REPO_ROOT / "benchmarks"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Clips and models the benchmarks make, shared by this module's tests only (never a stale global cache)."""
    return tmp_path_factory.mktemp("bench-cache")


def run_smoke(script: str, tmp_path: Path, cache: Path, timeout: float = 240) -> tuple[dict, str]:
    out = tmp_path / f"{script}.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--smoke", "--json", str(out)],
        check=False, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT,
        env={**os.environ, "RTSP_WORKER_BENCH_CACHE": str(cache)},
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text()), proc.stdout


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def check_metadata(result: dict, name: str) -> None:
    assert result["benchmark"] == name
    assert result["smoke"] is True
    for key in ("command", "machine", "date", "versions"):
        assert result[key], key
    assert "--smoke" in result["command"]


def require_rtsp() -> None:
    reason = available()
    if reason is not None:
        skip_or_fail(reason)


@pytest.mark.slow
def test_bench_stages(tmp_path: Path, cache: Path) -> None:
    result, stdout = run_smoke("bench_stages.py", tmp_path, cache)
    check_metadata(result, "stages")
    assert "Per-frame cost by stage" in stdout
    assert set(result["cases"]) >= {"1 cam", "2 cam"}
    for label, costs in result["ms_per_frame"].items():
        for stage in ("decode", "preprocess", "inference", "postprocess", "tracker", "sinks", "total"):
            assert positive(costs[stage]), (label, stage, costs[stage])
        assert costs["total"] >= costs["inference"]


@pytest.mark.slow
def test_bench_postprocess(tmp_path: Path, cache: Path) -> None:
    result, _ = run_smoke("bench_postprocess.py", tmp_path, cache)
    check_metadata(result, "postprocess")
    assert result["cases"], "no case measured"
    for case in result["cases"]:
        for key in ("loop_ms_per_batch", "vectorized_ms_per_batch", "ratio", "previous_ms_per_batch",
                    "candidates_per_image"):
            assert positive(case[key]), (key, case[key])
        # The loop is the reference: the vectorized version must compute the same detections.
        assert case["same_detections"] is True, case
        assert case["previous_same"] is True, case
    assert positive(result["min_ratio"])


@pytest.mark.slow
def test_bench_batching(tmp_path: Path, cache: Path) -> None:
    result, _ = run_smoke("bench_batching.py", tmp_path, cache)
    check_metadata(result, "batching")
    assert [r["cameras"] for r in result["rows"]] == [1, 2]
    for row in result["rows"]:
        for key in ("sequential_fps", "batched_fps", "sequential_fps_per_camera", "batched_fps_per_camera",
                    "batched_over_sequential"):
            assert positive(row[key]), (key, row)
        assert row["batched_fps_per_camera"] == pytest.approx(row["batched_fps"] / row["cameras"])


@pytest.mark.slow
def test_bench_input_size(tmp_path: Path, cache: Path) -> None:
    result, _ = run_smoke("bench_input_size.py", tmp_path, cache)
    check_metadata(result, "input_size")
    assert len(result["rows"]) == 2
    square, wide = result["rows"]
    assert square["padding_%"] > wide["padding_%"]
    for row in result["rows"]:
        assert positive(row["ms_per_frame"]) and positive(row["fps"]), row
        assert row["detections"] >= 0
    assert positive(result["speedup"])


@pytest.mark.slow
@pytest.mark.rtsp
def test_bench_scaling(tmp_path: Path, cache: Path) -> None:
    require_rtsp()
    result, _ = run_smoke("bench_scaling.py", tmp_path, cache)
    check_metadata(result, "scaling")
    assert [r["cameras"] for r in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert row["streaming"] == row["cameras"], row
        for key in ("aggregate_fps", "fps_per_camera_min", "decoded_fps", "latency_ms_p50", "cpu_cores_total",
                    "inference_ms_per_frame"):
            assert positive(row[key]), (key, row)
        assert row["bottleneck"]
    assert positive(result["peak_aggregate_fps"])


@pytest.mark.slow
@pytest.mark.rtsp
def test_bench_vs_ultralytics(tmp_path: Path, cache: Path) -> None:
    result, stdout = run_smoke("bench_vs_ultralytics.py", tmp_path, cache)
    check_metadata(result, "vs_ultralytics")
    missing = [m for m in ("ultralytics", "lap") if importlib.util.find_spec(m) is None]
    if missing:
        # Optional dependencies: the benchmark must degrade to a message and exit 0.
        assert "not installed: skipping" in stdout
        assert result["skipped"] == f"{' and '.join(missing)} not installed"
        return
    require_rtsp()
    assert {r["contender"] for r in result["runs"]} == {"worker", "ultralytics"}
    for run in result["runs"]:
        for key in ("aggregate_fps", "cpu_cores", "cpu_ms_per_frame", "latency_ms_p50"):
            assert positive(run[key]), (key, run)
        assert len(run["fps_per_camera"]) == run["cameras"] == result["cameras"][0]
        if run["contender"] == "worker":  # the per-thread profile names the worker's own threads
            assert {"camera", "inference"} <= set(run["thread_ms_per_frame"]), run["thread_ms_per_frame"]
            assert positive(run["decoded_fps"])
    assert positive(result["fps_ratio"]) and positive(result["cpu_per_frame_ratio"])
    assert [s["cameras"] for s in result["series"]] == result["cameras"]


@pytest.mark.slow
@pytest.mark.rtsp
def test_bench_scale_out(tmp_path: Path, cache: Path) -> None:
    require_rtsp()
    result, stdout = run_smoke("bench_scale_out.py", tmp_path, cache)
    check_metadata(result, "scale_out")
    assert result["mode"] == "ceiling" and "scale-out (ceiling)" in stdout
    # 2 cameras through 1 process, then through 2 (one shard each): every camera streams in both.
    assert [(r["cameras"], r["processes"]) for r in result["rows"]] == [(2, 1), (2, 2)]
    for row in result["rows"]:
        assert row["streaming"] == row["cameras"], row
        for key in ("fps", "cpu_ms_per_frame_workers", "latency_p50_ms", "fps_vs_first"):
            assert positive(row[key]), (key, row)
        assert len(row["per_process_fps"]) == row["processes"]
        assert all(positive(f) for f in row["per_process_fps"]), row
        assert row["server_cores"] >= 0
        assert row["thread_ms_per_frame"] and all(positive(v) for v in row["thread_ms_per_frame"].values())
    assert result["rows"][0]["fps_vs_first"] == 1.0


@pytest.mark.slow
def test_bench_http(tmp_path: Path, cache: Path) -> None:
    result, stdout = run_smoke("bench_http.py", tmp_path, cache)
    check_metadata(result, "http")
    variants = {row["variant"] for row in result["rows"]}
    assert "after" in variants and "idle connections open" in stdout
    for row in result["rows"]:
        assert positive(row["requests_per_s"]) and row["errors"] == 0, row
    # The old server holds a thread per idle connection, the new one none.
    after = result["summary"]["after"]
    assert after["server_threads_idle"] < 50
    if "before" in variants:
        assert result["summary"]["before"]["server_threads_idle"] >= 50
