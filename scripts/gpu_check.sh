#!/usr/bin/env bash
# Everything a short stay on an NVIDIA GPU machine must run, in one script, under 8 minutes on one GPU, on a
# machine without network (docs/gpu-check.md).
#
#   scripts/device_bundle.sh DIR                    # where there is network: what the GPU machine lacks
#   scripts/gpu_check.sh OUTDIR --deps DIR          # on the GPU machine: install DIR offline, run the steps
#   scripts/gpu_check.sh OUTDIR --smoke [--deps D]  # CI / no GPU: the same steps, small, on the CPU
#
# Steps, each with its own time limit (the limits add up to under 8 minutes, and a step never runs past the
# overall deadline):
#   install          the bundle's wheels into a temporary folder on PYTHONPATH (no pip, no network)
#   environment      driver, NVDEC/NVENC libraries, versions (env.json)
#   doctor           rtsp-worker doctor --device cuda:0: capabilities + a 10 s self-test of 8 cameras
#   pytest_gpu       the GPU tests of an explicit list of test files (their imports are all on the machine);
#                    no GPU test may skip; module skips are listed apart, with their reason
#   pytest_tensorrt  the TensorRT tests, or "not available" when TensorRT (NVIDIA's index) is not installed
#   parity           CPU vs GPU path: decoded frames, model input, boxes, track ids
#   bench_gpu        NVDEC 1/8/32/64 1080p streams, engine ms per batch 1/8/32/64 with and without CUDA
#                    graphs, the fused preprocess kernel, peak GPU memory, end to end with 8 and 64 cameras
#   run              rtsp-worker run, 60 s, 16 file:// 1080p cameras, device auto (the production path)
# GPU_CHECK_CAMERAS / GPU_CHECK_RUN_SECONDS change the run step's 16 cameras / 60 s (a shorter slot).
# Writes OUTDIR/report.json and OUTDIR/report.md (and each step's log and JSON) even when steps fail; exit 0
# only when every step passed or is "not available".
set -u

OUT="${1:?usage: scripts/gpu_check.sh OUTDIR [--smoke] [--deps DIR]}"
shift
SMOKE="${GPU_CHECK_SMOKE:-0}"
DEPS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --deps) DEPS="${2:?--deps needs a folder made by scripts/device_bundle.sh}"; shift ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export GPU_CHECK_OUT="$OUT"
cd "$ROOT" || exit 1
: > "$OUT/steps.tsv"
START=$(date +%s)
BUDGET=$([ "$SMOKE" = 1 ] && echo 300 || echo 470)  # whole run; 8 minutes less the report's few seconds

# The GPU test files: each imports only what the GPU machine has (tests/tools/test_gpu_check.py runs this list
# with every other package blocked). A GPU test in another file is not run here: add its file.
GPU_TESTS="tests/engines/test_gpu_path.py tests/detection/test_kernels.py tests/detection/test_layouts.py tests/tracking/test_tracking.py
  tests/detection/test_gpu_fixes.py"

# step NAME LIMIT_S COMMAND...: runs with min(limit, time left), logs to OUT/NAME.log, records name, rc, seconds.
step() {
  local name="$1" limit="$2" left t0 rc
  shift 2
  left=$(( START + BUDGET - $(date +%s) ))
  if [ "$left" -lt 5 ]; then
    printf '%s\t%s\t%s\t%s\n' "$name" "-1" "0" "skipped: no time left" >> "$OUT/steps.tsv"
    echo "== $name: skipped (no time left)"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "" >> "$OUT/steps.tsv"
  tail -n 12 "$OUT/$name.log"
  echo "== $name: rc=$rc"
}

# not_available NAME WHY: a step that cannot run on this machine and is not a failure (TensorRT).
not_available() {
  printf '%s\t%s\t%s\t%s\n' "$1" "0" "0" "not available: $2" >> "$OUT/steps.tsv"
  echo "== $1: not available ($2)"
}

if [ -n "$DEPS" ]; then
  SITE="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-site.XXXXXX")"
  step install 30 "$PY" scripts/device_bundle.py install "$DEPS" "$SITE"
  export PYTHONPATH="$PYTHONPATH:$SITE"  # after the tree (and after a blocker, when a test puts one first)
fi

step environment "$([ "$SMOKE" = 1 ] && echo 45 || echo 20)" "$PY" scripts/gpu_check_env.py --json "$OUT/env.json"
# Our plugin only: the GPU test files need no other, and a plugin installed there must not change the run.
PLUGIN=(env "PYTHONPATH=$ROOT/scripts:$PYTHONPATH" PYTEST_DISABLE_PLUGIN_AUTOLOAD=1)
if [ "$SMOKE" = 1 ]; then
  step doctor 90 "$PY" -m rtsp_worker.cli doctor --device cpu:0 --seconds 1 --cameras 1 --width 320 \
    --height 192 --json "$OUT/doctor.json"
  # No GPU here: every GPU test skips; the step proves that the files import and the tests are collected.
  step pytest_gpu 90 "${PLUGIN[@]}" GPU_CHECK_PYTEST_JSON="$OUT/pytest_gpu.json" "$PY" -m pytest -q -o addopts= -m gpu -rs \
    -p gpu_check_pytest -p no:cacheprovider $GPU_TESTS
else
  step doctor 60 "$PY" -m rtsp_worker.cli doctor --device cuda:0 --seconds 10 --cameras 8 --json "$OUT/doctor.json"
  step pytest_gpu 100 "${PLUGIN[@]}" GPU_CHECK_PYTEST_JSON="$OUT/pytest_gpu.json" "$PY" -m pytest -q -o addopts= -m gpu -rs \
    -p gpu_check_pytest -p no:cacheprovider $GPU_TESTS
fi
# TensorRT's libraries are not on PyPI (NVIDIA's index), and its tests build engines from ONNX files.
if "$PY" -c "import tensorrt, onnx" > /dev/null 2>&1 && [ "$SMOKE" != 1 ]; then
  step pytest_tensorrt 35 "${PLUGIN[@]}" GPU_CHECK_PYTEST_JSON="$OUT/pytest_tensorrt.json" "$PY" -m pytest -q -o addopts= \
    -m tensorrt -rs -p gpu_check_pytest -p no:cacheprovider tests/engines/test_tensorrt_engine.py
else
  not_available pytest_tensorrt "TensorRT (pip install tensorrt-cu13 --extra-index-url https://pypi.nvidia.com) and onnx are not both importable"
fi
if [ "$SMOKE" = 1 ]; then
  # Without a GPU both benchmarks say so and exit 0 (their CPU simulations are tests/tools/test_benchmarks_smoke.py's).
  step parity 60 "$PY" benchmarks/parity.py --frames 8 --json "$OUT/parity.json"
  step bench_gpu 30 "$PY" benchmarks/bench_gpu.py --smoke --json "$OUT/bench_gpu.json"
  step run 60 "$PY" scripts/gpu_check_run.py --json "$OUT/run.json" --log "$OUT/run_worker.log" --cameras 2 \
    --seconds 2 --width 320 --height 240 --clip-seconds 1
else
  step parity 45 "$PY" benchmarks/parity.py --frames 60 --json "$OUT/parity.json"
  step bench_gpu 100 "$PY" benchmarks/bench_gpu.py --seconds 4 --streams 1,8,32,64 --batches 1,8,32,64 \
    --e2e-streams 8,64 --json "$OUT/bench_gpu.json"
  step run 80 "$PY" scripts/gpu_check_run.py --json "$OUT/run.json" --log "$OUT/run_worker.log" \
    --cameras "${GPU_CHECK_CAMERAS:-16}" --seconds "${GPU_CHECK_RUN_SECONDS:-60}"
fi
[ -n "${SITE:-}" ] && rm -rf "$SITE"

exec "$PY" scripts/gpu_check_report.py "$OUT" "$SMOKE"
