#!/usr/bin/env bash
# Everything a short stay on an NVIDIA GPU machine must run, in one script: < 8 minutes on one GPU.
#
#   scripts/gpu_check.sh OUTDIR            # on the GPU machine
#   scripts/gpu_check.sh OUTDIR --smoke    # CI / no GPU: the CPU-runnable parts, small (also GPU_CHECK_SMOKE=1)
#
# Writes OUTDIR/report.json and OUTDIR/report.md (plus each step's JSON and log) even when steps fail;
# exit status 0 only when every step passed. Steps, each with its own time limit:
#   1. rtsp-worker doctor --device cuda        capabilities + 10 s self-test, 8 cameras of 1080p
#   2. pytest -m gpu                           no skips allowed (a skip on a GPU machine is a failure);
#                                              the TensorRT tests separately (TensorRT is optional)
#   3. benchmarks/bench_gpu.py                 NVDEC decode fps for 1/8/32/64 1080p H.264 streams; preprocess
#                                              and engine ms per batch 1/8/32/64 (torch, FP16, CUDA graphs);
#                                              end-to-end aggregate fps with 8 and 64 cameras
#   4. benchmarks/parity.py                    CPU vs GPU path: decoded/input PSNR, boxes, scores, track ids
#
# A fresh GPU machine without network access: bring the wheels. On a machine with network and the same
# Python version and platform (manylinux x86_64):
#   pip download -d wheels '.[gpu,test]' --extra-index-url https://download.pytorch.org/whl/cu130
#   pip download -d wheels 'tensorrt-cu13>=10.13,<12' --extra-index-url https://pypi.nvidia.com  # optional
#   pip wheel --no-deps -w wheels .
# copy the repository and wheels/ over, then on the GPU machine:
#   python -m venv .venv && .venv/bin/pip install --no-index --find-links wheels 'rtsp-worker[gpu,test]'
#   (and 'tensorrt-cu13' the same way when you brought it)
# The machine needs the NVIDIA driver with its video libraries (libnvcuvid.so.1; in containers
# NVIDIA_DRIVER_CAPABILITIES=compute,utility,video). No data is downloaded: clips are generated here and
# the model is the repository's models/synth_det.pt2.
set -u

OUT="${1:?usage: scripts/gpu_check.sh OUTDIR [--smoke]}"
SMOKE="${GPU_CHECK_SMOKE:-0}"
[ "${2:-}" = "--smoke" ] && SMOKE=1
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT" || exit 1
: > "$OUT/steps.tsv"

# step NAME LIMIT_S COMMAND...: runs with a time limit, logs to OUT/NAME.log, records name, rc, seconds.
step() {
  local name="$1" limit="$2"
  shift 2
  local t0 rc
  t0=$(date +%s)
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" >> "$OUT/steps.tsv"
  tail -n 15 "$OUT/$name.log"
  echo "== $name: rc=$rc"
}

if [ "$SMOKE" = 1 ]; then
  step doctor 120 "$PY" -m rtsp_worker.cli doctor --seconds 1 --cameras 1 --width 320 --height 192 \
    --json "$OUT/doctor.json"
  # No GPU here: the GPU tests are only collected (they must exist and import).
  step pytest_gpu 120 "$PY" -m pytest -q -m gpu --collect-only -p no:cacheprovider tests/
  step bench_gpu 120 "$PY" benchmarks/bench_gpu.py --smoke --json "$OUT/bench_gpu.json"
  step parity 120 "$PY" benchmarks/parity.py --frames 8 --json "$OUT/parity.json"
else
  # Limits add up to 480 s: the whole script stays under 8 minutes even when every step runs out of time.
  step doctor 75 "$PY" -m rtsp_worker.cli doctor --device cuda --seconds 10 --cameras 8 --json "$OUT/doctor.json"
  step pytest_gpu 120 "$PY" -m pytest -q -n 0 -m "gpu and not tensorrt" -rs -p no:cacheprovider \
    --junitxml "$OUT/pytest_gpu.xml" tests/
  # TensorRT is optional (its own index): its tests may skip when it was not brought; they run when it was.
  step pytest_tensorrt 90 "$PY" -m pytest -q -n 0 -m tensorrt -rs -p no:cacheprovider tests/engines/test_tensorrt_engine.py
  step bench_gpu 150 "$PY" benchmarks/bench_gpu.py --seconds 4 --streams 1,8,32,64 --batches 1,8,32,64 \
    --e2e-streams 8,64 --json "$OUT/bench_gpu.json"
  step parity 45 "$PY" benchmarks/parity.py --frames 60 --json "$OUT/parity.json"
fi

"$PY" - "$OUT" "$SMOKE" <<'EOF'
"""Assemble report.json and report.md from the steps' status and JSON files (whatever exists)."""
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

out, smoke = Path(sys.argv[1]), sys.argv[2] == "1"
steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, secs = line.split("\t")
    steps.append({"name": name, "rc": int(rc), "seconds": int(secs), "timed_out": rc in ("124", "137")})


def load(name):
    p = out / name
    try:
        return json.loads(p.read_text()) if p.exists() else None
    except ValueError as e:
        return {"error": f"{name}: {e}"}


report = {"smoke": smoke, "steps": steps, "doctor": load("doctor.json"), "bench_gpu": load("bench_gpu.json"),
          "parity": load("parity.json")}
xml = out / "pytest_gpu.xml"
if xml.exists():
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    report["pytest_gpu"] = counts
    if counts["skipped"] and not smoke:  # on a GPU machine every GPU test must run
        for s in steps:
            if s["name"] == "pytest_gpu" and s["rc"] == 0:
                s["rc"], s["note"] = 1, f"{counts['skipped']} GPU tests skipped (none allowed)"
report["passed"] = all(s["rc"] == 0 for s in steps)
(out / "report.json").write_text(json.dumps(report, indent=2))

md = [f"# GPU check{' (smoke)' if smoke else ''}", ""]
dev = (report.get("bench_gpu") or {}).get("device") or "unknown device"
md += [f"Device: {dev}", "", "| step | result | seconds | note |", "|---|---|---|---|"]
for s in steps:
    result = "pass" if s["rc"] == 0 else ("TIMEOUT" if s["timed_out"] else f"FAIL (rc {s['rc']})")
    md.append(f"| {s['name']} | {result} | {s['seconds']} | {s.get('note', '')} |")
doc = report.get("doctor") or {}
if doc.get("selftest") or doc.get("capabilities"):
    md += ["", "## doctor", "", "| check | ok | detail |", "|---|---|---|"]
    for c in doc.get("capabilities", []) + doc.get("selftest", []):
        md.append(f"| {c['name']} | {c['ok']} | {c['detail'].replace('|', '/')} |")
b = report.get("bench_gpu") or {}
if b.get("decode"):
    md += ["", "## NVDEC decode", "", "| streams | fps total | fps/stream |", "|---|---|---|"]
    md += [f"| {r['streams']} | {r['fps']:.0f} | {r['fps_per_stream']:.1f} |" for r in b["decode"]]
if b.get("engine"):
    md += ["", "## Engine ms per batch", "", "| batch | CUDA graphs | eager |", "|---|---|---|"]
    md += [f"| {r['batch']} | {r['graphs_ms']:.2f} | {r['eager_ms']:.2f} |" for r in b["engine"]]
if b.get("preprocess"):
    md += ["", "## Preprocess ms per batch", "", "| batch | ms | fused kernel |", "|---|---|---|"]
    md += [f"| {r['batch']} | {r['ms']:.2f} | {r.get('fused_kernel')} |" for r in b["preprocess"]]
if b.get("end_to_end"):
    md += ["", "## End to end", "", "| cameras | processed fps | mean batch |", "|---|---|---|"]
    md += [f"| {r['streams']} | {r['processed_fps']:.0f} | {r['mean_batch']:.1f} |" for r in b["end_to_end"]]
p = report.get("parity") or {}
if p.get("detections"):
    d = p["detections"]
    md += ["", "## CPU/GPU parity", "", f"- decoded PSNR min {p['decoded_psnr_db']['min']:.1f} dB, input PSNR "
           f"{p['input_psnr_db']:.1f} dB", f"- boxes CPU {d['cpu_boxes']} / GPU {d['gpu_boxes']}, matched "
           f"{d['matched']}, IoU median {d.get('iou_median')}, max score diff {d.get('score_diff_max')}",
           f"- frames with identical track ids: {p.get('track_ids_same_frames')}"]
md += ["", f"Overall: {'PASSED' if report['passed'] else 'FAILED'}", ""]
(out / "report.md").write_text("\n".join(md))
print(f"wrote {out / 'report.json'} and {out / 'report.md'}: {'PASSED' if report['passed'] else 'FAILED'}")
sys.exit(0 if report["passed"] else 1)
EOF
