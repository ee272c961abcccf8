"""rtsp-worker vs ultralytics `model.track(...)` on the same RTSP streams with the same ONNX model.

    .venv/bin/python benchmarks/bench_vs_ultralytics.py [--cameras 4 8 16] [--rounds 2] [--seconds 20]
        [--baseline-tree DIR] [--smoke] [--json FILE]

One real RTSP server (the project's GStreamer server) replays synthetic 640x360 clips, one mount per
camera, at 30 fps so that both contenders are saturated and the comparison is about capacity. The
contenders run one after the other, alternating which goes first every round, each in its own process
for the same measured window (after start-up and a warm-up):
- rtsp-worker: `rtsp-worker run cameras.yaml` (the same load_config -> Pipeline -> run path, plus a
  listener that records latencies), its defaults (IOU tracker, JSONL output);
- ultralytics: `YOLO(model).track(source="cameras.streams", stream=True, imgsz=..., conf, iou,
  tracker="bytetrack.yaml")`. A `.streams` file (one URL per line) is how ultralytics documents several
  streams: its LoadStreams opens one OpenCV reader thread per stream and batches the newest frame of
  each; ByteTrack is its cheaper tracker (the default BoT-SORT adds camera-motion compensation).
Same thresholds (conf 0.25, IoU 0.45), same input size, both on ONNX Runtime's CPU provider.
Reported per contender: aggregate fps, per-camera fps spread ((max - min) / mean), CPU cores used by
the process (and CPU ms per frame, the fair comparison on a shared machine), decode-to-result latency.
ultralytics and lap are optional (`.venv/bin/pip install ultralytics lap`, or the `bench` extra): without
them this prints "... not installed: skipping" and exits 0. Target on a 2-core CPU at every camera count:
rtsp-worker >= 1.5x the aggregate fps of ultralytics (YOLOv8n), with per-camera spread < 10%.
Also per contender: the CPU ms per processed frame of each thread role (decode threads, inference, finish,
sinks, ONNX Runtime's and torch's pools), from /proc over the same window: where the time goes as cameras
are added. `--baseline-tree DIR` adds the worker of another checkout as `worker-base`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common
import yaml

HERE = Path(__file__).resolve().parent
TARGET_RATIO, TARGET_SPREAD = 1.5, 10.0


def run_contender(name: str, source: Path, model: Path, imgsz: tuple[int, int], warmup: float, seconds: float,
                  workdir: Path, baseline: Path | None = None) -> dict:
    """`name`: "worker", "ultralytics", "worker-torchN" (the worker with N torch intra-op threads), a
    `--worker-variant` name (the worker with `cameras-<name>.yaml` next to `source`), or "worker-base" (the
    worker of another checkout, `baseline`, on the same config: a change measured side by side)."""
    out = workdir / f"{name}-{len(list(workdir.glob(name + '-*')))}.json"
    kind, _, threads = name.partition("-torch")
    variant = source.with_name(f"cameras-{name}.yaml")
    if variant.exists():  # same worker, another config (see main)
        kind, threads, source = "worker", "", variant
    root, env = common.ROOT, None
    if name == "worker-base":
        kind, root = "worker", baseline
        env = {**os.environ, "PYTHONPATH": str(baseline)}
    cmd = [sys.executable, str(root / "benchmarks" / "_contender.py"), kind, str(source), "--model", str(model),
           "--imgsz", str(imgsz[0]), str(imgsz[1]), "--warmup", str(warmup), "--seconds", str(seconds),
           "--out", str(out), "--torch-threads", threads or "0"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=warmup + seconds + 240, cwd=root,
                          env=env)
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise SystemExit(f"{name} run failed (exit {proc.returncode}):\n{tail}")
    r = json.loads(out.read_text())
    fps = [c / r["window_s"] for c in r["counts"]]
    total = sum(r["counts"])
    lat = r["latencies_s"]
    row = {
        "contender": name, "aggregate_fps": sum(fps), "fps_per_camera": fps, "spread_%": common.fps_spread(fps),
        "cpu_cores": r["cpu_cores"], "cpu_ms_per_frame": 1e3 * r["cpu_cores"] * r["window_s"] / max(total, 1),
        "latency_ms_p50": 1e3 * common.percentile(lat, 50), "latency_ms_p90": 1e3 * common.percentile(lat, 90),
        "latency_samples": len(lat), "startup_s": r["startup_s"], "complete": r["complete"],
    }
    if r.get("decoded") is not None:
        row["decoded_fps"] = r["decoded"] / r["window_s"]
    # Where the CPU goes: ms of each thread role per processed frame (the profile of issue 18).
    row["thread_ms_per_frame"] = {k: 1e3 * v / max(total, 1) for k, v in r.get("thread_cpu_s", {}).items()
                                  if v > 0.005 * r["window_s"]}
    return row


def variant_config(cfg: dict, spec: str) -> dict:
    """`NAME:a.b=v,c=w` -> a copy of `cfg` with those keys set (values parsed as YAML scalars)."""
    import copy

    name, _, changes = spec.partition(":")
    if not name or not changes:
        raise SystemExit(f"--worker-variant {spec!r}: expected NAME:KEY=VALUE[,KEY=VALUE]")
    out = copy.deepcopy(cfg)
    for change in changes.split(","):
        key, _, value = change.partition("=")
        *parents, leaf = key.strip().split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--cameras", type=int, nargs="+", default=[4], help="camera counts, e.g. 4 8 16 (one series each)")
    ap.add_argument("--rounds", type=int, default=2, help="pairs of runs (each contender once per round)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window per run")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--fps", type=float, default=30.0, help="frame rate of the replayed camera clips")
    ap.add_argument("--worker-torch-threads", type=int, default=0,
                    help="experiment: also run the worker with torch limited to this many intra-op threads")
    ap.add_argument("--worker-variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                    help="experiment: also run the worker with config keys changed, e.g. "
                         "`spin:model.spin=true` or `serial:batcher.overlap=false` (repeatable)")
    ap.add_argument("--baseline-tree", type=Path, metavar="DIR",
                    help="also run the worker of another checkout (e.g. `git worktree add /tmp/base main`) on the "
                         "same streams and config, as `worker-base`: a change against its parent in one run")
    args = ap.parse_args()
    common.setup(args)
    # ultralytics' trackers import `lap`, which it would otherwise try to pip-install at run time.
    missing = [m for m in ("ultralytics", "lap") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"{' and '.join(missing)} not installed: skipping (optional benchmark dependencies: "
              ".venv/bin/pip install ultralytics lap)")
        common.write_json(args.json, {"benchmark": "vs_ultralytics", **common.metadata(args),
                                      "skipped": f"{' and '.join(missing)} not installed"})
        return
    counts = [2] if args.smoke else args.cameras
    rounds = 1 if args.smoke else args.rounds
    seconds, warmup = (2.0, 1.0) if args.smoke else (args.seconds, args.warmup)
    model = common.pick_model(args.model, args.smoke)
    engine = common.load_engine(model.path, 1)
    imgsz = engine.info.input_size
    engine.close()
    most = max(counts)
    clips = [common.synthetic_clip(i, seconds=2 if args.smoke else 20, fps=args.fps) for i in range(min(most, 4))]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-vs-ultralytics-") as tmp:
        with common.rtsp_server({f"cam{i}": clips[i % len(clips)] for i in range(most)}) as server:
            for cams in counts:
                work = Path(tmp) / f"cams{cams}"
                work.mkdir()
                runs += run_series(args, server, cams, rounds, model, imgsz, warmup, seconds, work)
    series = [summarize(args, [r for r in runs if r["cameras"] == cams], cams, rounds, model) for cams in counts]
    if len(series) > 1:
        common.print_table("Per camera count", [{k: s[k] for k in ("cameras", "fps_ratio", "cpu_per_frame_ratio",
                                                                  "worker_cpu_ms_per_frame", "worker_spread_%",
                                                                  "target_met")} for s in series])
    common.write_json(args.json, {
        "benchmark": "vs_ultralytics", **common.metadata(args), "model": model.description,
        "input_size": list(imgsz), "cameras": counts, "source_fps": args.fps, "rounds": rounds,
        "seconds_per_run": seconds, "ultralytics_method": "model.track(source=<file>.streams, stream=True, "
        "tracker='bytetrack.yaml')", "baseline_tree": str(args.baseline_tree) if args.baseline_tree else None,
        "runs": runs, "series": series,
        # the single-count fields, as before
        **({k: series[0][k] for k in ("summary", "fps_ratio", "fps_ratio_per_round", "cpu_per_frame_ratio",
                                      "target_met", "experiment_ratios")} if len(series) == 1 else {}),
    })


def run_series(args, server, cams: int, rounds: int, model, imgsz: tuple[int, int], warmup: float, seconds: float,
               work: Path) -> list[dict]:
    """Every contender `rounds` times on the first `cams` mounts, alternating who goes first."""
    urls = [server.url(f"cam{i}") for i in range(cams)]
    cfg = {
        "cameras": [{"name": f"cam{i}", "url": u} for i, u in enumerate(urls)],
        "model": {"path": str(model.path.resolve())},
        "detection": {"confidence": 0.25, "iou": 0.45},
        "output": {"dir": str(work / "outputs")},
        "device": "cpu", "log_interval": 3600,
    }
    cfg_path = work / "cameras.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    variants = []
    if args.baseline_tree:
        variants.append("worker-base")
    if args.worker_torch_threads:
        variants.append(f"worker-torch{args.worker_torch_threads}")
    for spec in args.worker_variant:
        name = "worker-" + spec.partition(":")[0]
        variants.append(name)
        (work / f"cameras-{name}.yaml").write_text(yaml.safe_dump(variant_config(cfg, spec)))
    streams = work / "cameras.streams"
    streams.write_text("\n".join(urls) + "\n")
    runs = []
    for r in range(rounds):
        order = ["worker", "ultralytics"] if r % 2 == 0 else ["ultralytics", "worker"]
        order[1:1] = variants
        for name in order:
            res = run_contender(name, streams if name == "ultralytics" else cfg_path, model.path.resolve(), imgsz,
                                warmup, seconds, work, args.baseline_tree)
            res["round"], res["cameras"] = r, cams
            runs.append(res)
            print(f"{cams} cameras, round {r} {name:11s}: {res['aggregate_fps']:6.1f} fps, spread "
                  f"{res['spread_%']:5.1f}%, {res['cpu_cores']:.2f} cores, {res['cpu_ms_per_frame']:.0f} CPU ms/frame, "
                  f"latency p50 {res['latency_ms_p50']:.0f} ms", flush=True)
    return runs


def summarize(args, runs: list[dict], cams: int, rounds: int, model) -> dict:
    """Means over the rounds of one camera count, the ratios, and the per-thread CPU table."""
    def mean(name: str, key: str) -> float:
        return statistics.fmean(r[key] for r in runs if r["contender"] == name)

    keys = ("aggregate_fps", "spread_%", "cpu_cores", "cpu_ms_per_frame", "latency_ms_p50", "latency_ms_p90",
            "startup_s")
    names = list(dict.fromkeys(r["contender"] for r in sorted(runs, key=lambda r: r["contender"] != "worker")))
    summary = [{"contender": name, **{k: mean(name, k) for k in keys}} for name in names]
    ratios = []
    for r in range(rounds):
        w, u = (next(x for x in runs if x["round"] == r and x["contender"] == c) for c in ("worker", "ultralytics"))
        ratios.append(w["aggregate_fps"] / u["aggregate_fps"] if u["aggregate_fps"] > 0 else float("inf"))
    ratio = statistics.fmean(ratios)
    cpu_ratio = mean("ultralytics", "cpu_ms_per_frame") / mean("worker", "cpu_ms_per_frame")
    common.print_table(f"Runs, {cams} cameras", runs, ["round", "contender", "aggregate_fps", "decoded_fps", "spread_%",
                                                      "cpu_cores", "cpu_ms_per_frame", "latency_ms_p50",
                                                      "latency_ms_p90", "startup_s"])
    common.print_table(f"Mean over {rounds} round(s): {cams} RTSP cameras, {args.fps:g} fps 640x360, "
                       f"{model.description}", summary)
    profile = []
    for name in names:
        if name == "ultralytics":
            continue
        groups: dict[str, list[float]] = {}
        for r in runs:
            if r["contender"] == name:
                for k, v in r["thread_ms_per_frame"].items():
                    groups.setdefault(k, []).append(v)
        profile.append({"contender": name, **{k: sum(v) / rounds for k, v in sorted(groups.items())}})
    columns = ["contender", *sorted({k for row in profile for k in row} - {"contender"})]
    common.print_table(f"CPU ms per processed frame by thread, {cams} cameras (mean over rounds)", profile, columns,
                       digits=1)
    spread = mean("worker", "spread_%")
    met = ratio >= TARGET_RATIO and spread < TARGET_SPREAD
    print(f"\n{cams} cameras: rtsp-worker / ultralytics aggregate fps: {ratio:.2f}x (per round "
          f"{[round(x, 2) for x in ratios]}); CPU per frame ultralytics / rtsp-worker: {cpu_ratio:.2f}x; "
          f"rtsp-worker spread {spread:.1f}% -> target (>= {TARGET_RATIO}x, < {TARGET_SPREAD}%) "
          f"{'met' if met else 'NOT met'}")
    variants = [n for n in names if n not in ("worker", "ultralytics")]
    return {"cameras": cams, "summary": summary, "fps_ratio": ratio, "fps_ratio_per_round": ratios,
            "cpu_per_frame_ratio": cpu_ratio, "worker_cpu_ms_per_frame": mean("worker", "cpu_ms_per_frame"),
            "worker_spread_%": spread, "target_met": met, "thread_profile": profile,
            "experiment_ratios": {v: mean(v, "aggregate_fps") / mean("ultralytics", "aggregate_fps")
                                  for v in variants}}


if __name__ == "__main__":
    main()
