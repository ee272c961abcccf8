#!/usr/bin/env bash
# Run every benchmark once at its default size, one after the other, writing benchmarks/results/<name>.json
# and a log per benchmark. `benchmarks/run_all.sh --smoke` runs them all in smoke mode (into /tmp).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [[ "${1:-}" == "--smoke" ]]; then OUT=/tmp/rtsp-worker-bench-smoke; EXTRA=(--smoke); else OUT=benchmarks/results; EXTRA=(); fi
mkdir -p "$OUT"
status=0
for name in postprocess batching input_size stages scaling vs_ultralytics; do
    echo "=== bench_$name $(date -u +%H:%M:%S)"
    if ! $PY "benchmarks/bench_$name.py" "${EXTRA[@]}" --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.log"; then
        status=1
    fi
done
exit $status
