"""report.json and report.md of scripts/gpu_check.sh, from whatever the steps left in OUTDIR.

    python scripts/gpu_check_report.py OUTDIR SMOKE(0|1)

A step passes on exit 0 and, outside smoke mode, with its results written; "not available" (TensorRT)
passes too. The GPU tests' step fails as well when a
GPU test skipped (on a GPU machine none may: a skip there hides a broken GPU path), failed, was not run, or
a listed test file did not import; modules skipped at collection (an importorskip) are listed apart with
their reason and are not GPU skips. Exit 0 only when every step passed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(out: Path, name: str) -> dict | None:
    p = out / name
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError as e:
        return {"error": f"{name}: {e}"}


def read_steps(out: Path) -> list[dict]:
    steps = []
    for line in (out / "steps.tsv").read_text().splitlines():
        name, rc, secs, note = (line.split("\t") + [""])[:4]
        rc_i = int(rc)
        if note.startswith("not available"):
            status = "not available"
        elif note.startswith("skipped"):
            status = "SKIPPED (no time left)"
        elif rc_i in (124, 137):
            status = "TIMEOUT"
        else:
            status = "pass" if rc_i == 0 else f"FAIL (rc {rc_i})"
        steps.append({"name": name, "rc": rc_i, "seconds": int(secs), "status": status, "note": note})
    return steps


def judge_pytest(step: dict, result: dict | None, smoke: bool) -> None:
    """Fail the step for GPU skips (not in smoke: no GPU there), failures, unrun tests, import errors."""
    if step["status"] != "pass":
        return
    if result is None:
        step.update(status="FAIL", note="no result file from the pytest plugin")
        return
    problems = []
    if result.get("collection_errors"):
        problems.append(f"{len(result['collection_errors'])} test files did not import")
    if not result.get("collected"):
        problems.append("no GPU test collected")
    if result.get("failed"):
        problems.append(f"{result['failed']} GPU tests failed")
    if result.get("not run"):
        problems.append(f"{result['not run']} GPU tests not run")
    if result.get("skipped") and not smoke:
        problems.append(f"{result['skipped']} GPU tests skipped (none allowed on a GPU machine)")
    if problems:
        step.update(status="FAIL", note="; ".join(problems))


def markdown(report: dict) -> str:
    smoke = report["smoke"]
    env = report.get("environment") or {}
    devices = ", ".join(d["name"] for d in env.get("devices", [])) or "no CUDA device"
    md = [f"# GPU check{' (smoke, CPU)' if smoke else ''}", "", (f"Device: {devices}; torch {env.get('torch')}, "
          f"CUDA {env.get('torch_cuda')}, Python {env.get('python')}"), "",
          "| step | result | seconds | note |", "|---|---|---|---|"]
    md += [f"| {s['name']} | {s['status']} | {s['seconds']} | {s['note'].replace('|', '/')} |"
           for s in report["steps"]]
    if env.get("libraries") or env.get("packages"):
        md += ["", "## Environment", ""]
        md += [f"- {k}: {v}" for k, v in {**env.get("libraries", {}), **env.get("packages", {})}.items()]
        md += [f"- nvidia-smi: {line}" for line in env.get("nvidia_smi", [])]
    doc = report.get("doctor") or {}
    if doc.get("selftest") or doc.get("capabilities"):
        md += ["", "## doctor", "", "| check | ok | detail |", "|---|---|---|"]
        md += [f"| {c['name']} | {c['ok']} | {str(c['detail']).replace('|', '/')} |"
               for c in doc.get("capabilities", []) + doc.get("selftest", [])]
    for key, title in (("pytest_gpu", "GPU tests"), ("pytest_tensorrt", "TensorRT tests")):
        t = report.get(key)
        if not t or "collected" not in t:
            continue
        md += ["", f"## {title}", "", (f"collected {t['collected']}: passed {t['passed']}, failed {t['failed']}, "
               f"skipped {t['skipped']}, not run {t['not run']}")]
        md += [f"- {n}: {r['outcome']} {r['reason']}" for n, r in t["tests"].items() if r["outcome"] != "passed"]
        if t.get("module_skips"):
            md += ["", "Modules skipped at collection (not GPU skips):"]
            md += [f"- {m['module']}: {m['reason']}" for m in t["module_skips"]]
        md += [f"- import error: {m['module']}: {m['error']}" for m in t.get("collection_errors", [])]
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
    if b.get("gpu_memory_mib"):
        m = b["gpu_memory_mib"]
        md += ["", (f"GPU memory: torch peak {m['torch_peak']:.0f} MiB, device used {m['device_used']:.0f} of "
               f"{m['device_total']:.0f} MiB")]
    p = report.get("parity") or {}
    if p.get("detections"):
        d = p["detections"]
        md += ["", "## CPU/GPU parity", "", (f"- decoded PSNR min {p['decoded_psnr_db']['min']:.1f} dB, input PSNR "
               f"{p['input_psnr_db']:.1f} dB"), (f"- boxes CPU {d['cpu_boxes']} / GPU {d['gpu_boxes']}, matched "
               f"{d['matched']}, IoU median {d.get('iou_median')}, max score diff {d.get('score_diff_max')}"),
               f"- frames with identical track ids: {p.get('track_ids_same_frames')}"]
    r = report.get("run") or {}
    if "records" in r:
        md += ["", "## rtsp-worker run", "", (f"{r['cameras']} cameras {r['size'][0]}x{r['size'][1]}, device "
               f"{r['device']}, {r['seconds']} s: exit {r['exit_code']}, {r['records']} frames written "
               f"({r['processed_fps']} per second), cameras with output {len(r['records_per_camera'])}")]
    md += ["", f"Overall: {'PASSED' if report['passed'] else 'FAILED'}", ""]
    return "\n".join(md)


def main(out: Path, smoke: bool) -> int:
    steps = read_steps(out)
    report: dict = {"smoke": smoke, "steps": steps}
    for key in ("environment", "doctor", "pytest_gpu", "pytest_tensorrt", "parity", "bench_gpu", "run"):
        report[key] = load(out, "env.json" if key == "environment" else f"{key}.json")
    for s in steps:
        if s["name"] in ("pytest_gpu", "pytest_tensorrt"):
            judge_pytest(s, report[s["name"]], smoke)
        elif s["name"] in ("doctor", "parity", "bench_gpu", "run") and not smoke and s["status"] == "pass" \
                and not report[s["name"]]:
            # parity.py and bench_gpu.py exit 0 where they cannot run (no CUDA, no PyNvVideoCodec): on the GPU
            # machine that is a failure, and it shows as a step that left no results.
            s.update(status="FAIL", note="exited 0 without results (see its log: GPU or NVDEC unavailable?)")
    report["passed"] = all(s["status"] in ("pass", "not available") for s in steps)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    print(f"wrote {out / 'report.json'} and {out / 'report.md'}: {'PASSED' if report['passed'] else 'FAILED'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2] == "1"))
