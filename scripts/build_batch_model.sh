#!/usr/bin/env bash
# Build a dynamic-batch FP16 TensorRT engine for this GPU from an ONNX in models/, and check it against
# ONNX Runtime (--validate: on the project's synthetic scene unless you pass --calib-data or --config).
#
#   scripts/build_batch_model.sh [MODEL.onnx] [MAX_BATCH] [more build-engine flags...]
#   scripts/build_batch_model.sh                                  # models/synth_det.onnx, batch 1..16
#   scripts/build_batch_model.sh models/yolov8n.onnx 8 --height 384 --width 640 --opt-batch 4
#
# Writes models/<name>.engine (plus models/trt_timing.cache, reused by the next build).
# Environment: PYTHON (default: .venv/bin/python if present, else python3).
set -euo pipefail

cd "$(dirname "$0")/.."
model="${1:-models/synth_det.onnx}"
max_batch="${2:-16}"
shift $(( $# < 2 ? $# : 2 ))

if [[ ! -f "$model" ]]; then
    echo "error: $model: no such ONNX model (export one into models/ first)" >&2
    exit 1
fi
if ! [[ "$max_batch" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: MAX_BATCH must be a positive integer, got '$max_batch'" >&2
    exit 1
fi
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

exec "$PYTHON" -m rtsp_worker.cli build-engine "$model" \
    --output "${model%.onnx}.engine" \
    --min-batch 1 --max-batch "$max_batch" \
    --precision fp16 \
    --validate \
    "$@"
