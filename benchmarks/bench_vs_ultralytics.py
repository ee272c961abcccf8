"""rtsp-worker vs ultralytics `model.track(...)` on the same RTSP streams with the same ONNX model.

    .venv/bin/python benchmarks/bench_vs_ultralytics.py [--cameras 4] [--rounds 2] [--seconds 20]
        [--smoke] [--json FILE]

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
them this prints "... not installed: skipping" and exits 0. Target on a 2-core CPU, 4 cameras: rtsp-worker >= 2x the
aggregate fps of ultralytics, with per-camera spread < 10%.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import common
import yaml

HERE = Path(__file__).resolve().parent
TARGET_RATIO, TARGET_SPREAD = 2.0, 10.0


def run_contender(name: str, source: Path, model: Path, imgsz: tuple[int, int], warmup: float, seconds: float,
                  workdir: Path) -> dict:
    """`name`: "worker", "ultralytics", "worker-torchN" (the worker with N torch intra-op threads), or a
    `--worker-variant` name (the worker with `cameras-<name>.yaml` next to `source`)."""
    out = workdir / f"{name}-{len(list(workdir.glob(name + '-*')))}.json"
    kind, _, threads = name.partition("-torch")
    variant = source.with_name(f"cameras-{name}.yaml")
    if variant.exists():  # same worker, another config (see main)
        kind, threads, source = "worker", "", variant
    cmd = [sys.executable, str(HERE / "_contender.py"), kind, str(source), "--model", str(model),
           "--imgsz", str(imgsz[0]), str(imgsz[1]), "--warmup", str(warmup), "--seconds", str(seconds),
           "--out", str(out), "--torch-threads", threads or "0"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=warmup + seconds + 240, cwd=common.ROOT)
    if proc.returncode != 0 or not out.exists():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise SystemExit(f"{name} run failed (exit {proc.returncode}):\n{tail}")
    r = json.loads(out.read_text())
    fps = [c / r["window_s"] for c in r["counts"]]
    total = sum(r["counts"])
    lat = r["latencies_s"]
    return {
        "contender": name, "aggregate_fps": sum(fps), "fps_per_camera": fps, "spread_%": common.fps_spread(fps),
        "cpu_cores": r["cpu_cores"], "cpu_ms_per_frame": 1e3 * r["cpu_cores"] * r["window_s"] / max(total, 1),
        "latency_ms_p50": 1e3 * common.percentile(lat, 50), "latency_ms_p90": 1e3 * common.percentile(lat, 90),
        "latency_samples": len(lat), "startup_s": r["startup_s"], "complete": r["complete"],
    }


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
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="pairs of runs (each contender once per round)")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window per run")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--fps", type=float, default=30.0, help="frame rate of the replayed camera clips")
    ap.add_argument("--worker-torch-threads", type=int, default=0,
                    help="experiment: also run the worker with torch limited to this many intra-op threads")
    ap.add_argument("--worker-variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                    help="experiment: also run the worker with config keys changed, e.g. "
                         "`spin:model.spin=true` or `serial:batcher.overlap=false` (repeatable)")
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
    cams = 2 if args.smoke else args.cameras
    rounds = 1 if args.smoke else args.rounds
    seconds, warmup = (2.0, 1.0) if args.smoke else (args.seconds, args.warmup)
    model = common.pick_model(args.model, args.smoke)
    engine = common.load_engine(model.path, 1)
    imgsz = engine.info.input_size
    engine.close()
    clips = [common.synthetic_clip(i, seconds=2 if args.smoke else 20, fps=args.fps) for i in range(min(cams, 4))]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-vs-ultralytics-") as tmp:
        work = Path(tmp)
        with common.rtsp_server({f"cam{i}": clips[i % len(clips)] for i in range(cams)}) as server:
            urls = [server.url(f"cam{i}") for i in range(cams)]
            cfg = {
                "cameras": [{"name": f"cam{i}", "url": u} for i, u in enumerate(urls)],
                "model": {"path": str(model.path)},
                "detection": {"confidence": 0.25, "iou": 0.45},
                "output": {"dir": str(work / "outputs")},
                "device": "cpu", "log_interval": 3600,
            }
            cfg_path = work / "cameras.yaml"
            cfg_path.write_text(yaml.safe_dump(cfg))
            variants = []
            if args.worker_torch_threads:
                variants.append(f"worker-torch{args.worker_torch_threads}")
            for spec in args.worker_variant:
                name = "worker-" + spec.partition(":")[0]
                variants.append(name)
                (work / f"cameras-{name}.yaml").write_text(yaml.safe_dump(variant_config(cfg, spec)))
            streams = work / "cameras.streams"
            streams.write_text("\n".join(urls) + "\n")
            for r in range(rounds):
                order = ["worker", "ultralytics"] if r % 2 == 0 else ["ultralytics", "worker"]
                order[1:1] = variants
                for name in order:
                    res = run_contender(name, streams if name == "ultralytics" else cfg_path, model.path, imgsz,
                                        warmup, seconds, work)
                    res["round"] = r
                    runs.append(res)
                    print(f"round {r} {name:11s}: {res['aggregate_fps']:6.1f} fps, spread {res['spread_%']:5.1f}%, "
                          f"{res['cpu_cores']:.2f} cores, latency p50 {res['latency_ms_p50']:.0f} ms", flush=True)

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
    common.print_table("Runs", runs, ["round", "contender", "aggregate_fps", "spread_%", "cpu_cores", "cpu_ms_per_frame",
                                      "latency_ms_p50", "latency_ms_p90", "startup_s"])
    common.print_table(f"Mean over {rounds} round(s): {cams} RTSP cameras, {args.fps:g} fps 640x360, "
                       f"{model.description}", summary)
    spread = mean("worker", "spread_%")
    met = ratio >= TARGET_RATIO and spread < TARGET_SPREAD
    print(f"\nrtsp-worker / ultralytics aggregate fps: {ratio:.2f}x (per round {[round(x, 2) for x in ratios]}); "
          f"CPU per frame ultralytics / rtsp-worker: {cpu_ratio:.2f}x; rtsp-worker spread {spread:.1f}% -> "
          f"target (>= {TARGET_RATIO}x, < {TARGET_SPREAD}%) {'met' if met else 'NOT met'}")
    common.write_json(args.json, {
        "benchmark": "vs_ultralytics", **common.metadata(args), "model": model.description,
        "input_size": list(imgsz), "cameras": cams, "source_fps": args.fps, "rounds": rounds,
        "seconds_per_run": seconds, "ultralytics_method": "model.track(source=<file>.streams, stream=True, "
        "tracker='bytetrack.yaml')", "runs": runs, "summary": summary, "fps_ratio": ratio,
        "fps_ratio_per_round": ratios, "cpu_per_frame_ratio": cpu_ratio, "target_met": met,
        "experiment_ratios": {v: mean(v, "aggregate_fps") / mean("ultralytics", "aggregate_fps") for v in variants},
    })


if __name__ == "__main__":
    main()
