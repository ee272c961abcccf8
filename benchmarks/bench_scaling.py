"""End-to-end scaling: aggregate and per-camera fps against the number of RTSP cameras, until saturation.

    .venv/bin/python benchmarks/bench_scaling.py [--cameras 1 2 4 6 8 12 16] [--seconds 10] [--smoke]
        [--json FILE]

Each point starts the project's real GStreamer RTSP server replaying synthetic clips (640x360, 15 fps,
looping, one mount per camera) and the real `Pipeline` (RTSP demux over TCP, CPU decode threads,
batcher, ONNX Runtime, postprocess, tracker, JSONL sink), waits until every camera streams, lets it
warm up, then measures for `--seconds`. It stops adding cameras once the aggregate rate has not grown
(< 5% over the best so far) at two points in a row: the machine is saturated. Where the time goes, per
point: CPU cores used by the decode threads, by the inference thread (Python side), by everything else
in the process (ONNX Runtime's pool, the finish thread, sinks) and by the server; how busy the inference
thread (preprocess + inference) and the finish thread (postprocess + tracker) are; frames
dropped (a camera's newest frame replaced before inference took it).
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import common

from rtsp_worker.pipeline import Pipeline, build_pipeline
from rtsp_worker.sources.state import CameraState
from rtsp_worker.status import BatchReport

SOURCE_FPS = 15.0


def snapshot(pipe: Pipeline, infer_tid: int, server_pid: int | None, reports: list[BatchReport]) -> dict:
    cpu = common.thread_cpu_seconds()
    cams = set(common.named_thread_ids("camera-"))
    return {
        "t": time.monotonic(),
        "processed": [s.processed for s in pipe.stats],
        "decoded": [s.decoded for s in pipe.stats],
        "dropped": [s.dropped for s in pipe.stats],
        "cpu_decode": sum(v for k, v in cpu.items() if k in cams),
        "cpu_infer": cpu.get(infer_tid, 0.0),
        "cpu_total": sum(cpu.values()),
        "cpu_server": common.process_cpu_seconds(server_pid) if server_pid else 0.0,
        "reports": len(reports),
    }


def bottleneck(row: dict, cores: int) -> str:
    if row["fps_per_camera_min"] >= 0.95 * SOURCE_FPS:
        return "none: keeps up with every camera"
    if row["inference_busy_%"] >= 85:
        stage = max(("preprocess", "inference"), key=lambda s: row[f"{s}_ms_per_frame"])
        return f"inference thread ({stage} dominates)"
    if row["finish_busy_%"] >= 85:
        stage = max(("postprocess", "tracker"), key=lambda s: row[f"{s}_ms_per_frame"])
        return f"finish thread ({stage} dominates)"
    if row["cpu_cores_total"] >= 0.9 * cores:
        return "CPU: decode and inference compete for the cores"
    return "waiting (below CPU saturation)"


def measure_point(n: int, clips: list[Path], model: Path, warmup: float, seconds: float, out: Path) -> dict:
    mounts = {f"cam{i}": clips[i % len(clips)] for i in range(n)}
    with common.rtsp_server(mounts) as server:
        cfg = common.pipeline_config([server.url(m) for m in mounts], model, out, max_batch=max(n, 1))
        pipe = build_pipeline(cfg)
        reports: list[BatchReport] = []
        pipe.on_batch(lambda out: reports.append(out.report))
        runner = threading.Thread(target=pipe.run, name="inference", daemon=True)
        runner.start()
        try:
            common.wait_streaming(pipe, 20, 0.1)
            streaming = sum(s.state == CameraState.STREAMING for s in pipe.stats)
            time.sleep(warmup)
            a = snapshot(pipe, runner.native_id or 0, server.pid, reports)
            time.sleep(seconds)
            b = snapshot(pipe, runner.native_id or 0, server.pid, reports)
        finally:
            pipe.stop()
            runner.join(timeout=30)
    dt = b["t"] - a["t"]
    fps = [(pb - pa) / dt for pa, pb in zip(a["processed"], b["processed"])]
    decoded = sum(b["decoded"]) - sum(a["decoded"])
    dropped = sum(b["dropped"]) - sum(a["dropped"])
    window = reports[a["reports"]:b["reports"]]
    frames = sum(r.size for r in window) or 1
    latencies = [lat for r in window for _, lat in r.latencies]
    row = {
        "cameras": n, "streaming": streaming, "aggregate_fps": sum(fps), "fps_per_camera_mean": sum(fps) / n,
        "fps_per_camera_min": min(fps), "fps_per_camera_max": max(fps), "spread_%": common.fps_spread(fps),
        "decoded_fps": decoded / dt, "dropped_%": 100 * dropped / max(decoded, 1),
        "mean_batch": frames / max(len(window), 1),
        # With `batcher.overlap` postprocess and tracker run on the finish thread, beside the inference thread.
        "inference_busy_%": 100 * sum(r.preprocess_ms + r.infer_ms for r in window) / 1e3 / dt,
        "finish_busy_%": 100 * sum(r.postprocess_ms + r.track_ms for r in window) / 1e3 / dt,
        "latency_ms_p50": 1e3 * common.percentile(latencies, 50),
        "latency_ms_p90": 1e3 * common.percentile(latencies, 90),
        "cpu_cores_decode": (b["cpu_decode"] - a["cpu_decode"]) / dt,
        "cpu_cores_inference_thread": (b["cpu_infer"] - a["cpu_infer"]) / dt,
        "cpu_cores_total": (b["cpu_total"] - a["cpu_total"]) / dt,
        "cpu_cores_server": (b["cpu_server"] - a["cpu_server"]) / dt,
    }
    row["cpu_cores_other"] = row["cpu_cores_total"] - row["cpu_cores_decode"] - row["cpu_cores_inference_thread"]
    for stage, attr in (("preprocess", "preprocess_ms"), ("inference", "infer_ms"),
                        ("postprocess", "postprocess_ms"), ("tracker", "track_ms")):
        row[f"{stage}_ms_per_frame"] = sum(getattr(r, attr) for r in window) / frames
    return row


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4, 6, 8, 12, 16])
    ap.add_argument("--seconds", type=float, default=10.0, help="measured seconds per point")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds after every camera streams")
    ap.add_argument("--clip-seconds", type=float, default=20.0)
    args = ap.parse_args()
    common.setup(args)
    counts = [1, 2] if args.smoke else sorted(args.cameras)
    seconds, warmup = (2.0, 1.0) if args.smoke else (args.seconds, args.warmup)
    model = common.pick_model(args.model, args.smoke)
    clips = [common.synthetic_clip(i, seconds=2 if args.smoke else args.clip_seconds, fps=SOURCE_FPS)
             for i in range(1 if args.smoke else 4)]
    cores = common.os.cpu_count() or 1
    rows: list[dict] = []
    saturated_at = None
    flat = 0
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        for n in counts:
            row = measure_point(n, clips, model.path, warmup, seconds, Path(tmp) / f"n{n}")
            row["bottleneck"] = bottleneck(row, cores)
            rows.append(row)
            print(f"{n:3d} cameras: {row['aggregate_fps']:6.1f} fps aggregate, {row['fps_per_camera_mean']:5.1f} "
                  f"per camera, bottleneck: {row['bottleneck']}", flush=True)
            peak_before = max((r["aggregate_fps"] for r in rows[:-1]), default=0.0)
            if row["aggregate_fps"] < 1.05 * peak_before and row["fps_per_camera_min"] < 0.95 * SOURCE_FPS:
                saturated_at = saturated_at or n
                flat += 1
                if flat >= 2:  # two points in a row without growth: saturation confirmed
                    break
            else:
                saturated_at, flat = None, 0
    common.print_table(f"Scaling with RTSP cameras ({model.description}; {SOURCE_FPS:g} fps 640x360 sources)", rows,
                       ["cameras", "aggregate_fps", "fps_per_camera_mean", "spread_%", "dropped_%", "mean_batch",
                        "inference_busy_%", "finish_busy_%", "latency_ms_p50", "cpu_cores_decode", "cpu_cores_inference_thread",
                        "cpu_cores_other", "cpu_cores_server"])
    common.print_table("Per-frame stage times inside the pipeline (ms)", rows,
                       ["cameras", "preprocess_ms_per_frame", "inference_ms_per_frame", "postprocess_ms_per_frame",
                        "tracker_ms_per_frame", "bottleneck"])
    best = max(rows, key=lambda r: r["aggregate_fps"])
    print(f"\npeak {best['aggregate_fps']:.1f} fps aggregate at {best['cameras']} cameras; "
          f"saturated at {saturated_at or 'not reached'}")
    common.write_json(args.json, {
        "benchmark": "scaling", **common.metadata(args), "model": model.description, "source_fps": SOURCE_FPS,
        "source_size": [640, 360], "seconds_per_point": seconds, "rows": rows,
        "peak_aggregate_fps": best["aggregate_fps"], "peak_at_cameras": best["cameras"], "saturated_at": saturated_at,
    })


if __name__ == "__main__":
    main()
