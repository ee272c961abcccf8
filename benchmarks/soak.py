"""Soak: N cameras from the real RTSP server for T minutes; memory, rates and latency sampled over time.

An edge box runs for months; what a short benchmark cannot show is drift: resident memory that keeps
growing, a processed rate that sags, latency that creeps up, threads or file descriptors that leak across
reconnects. Every `--interval` seconds this samples the process (RSS, threads, open fds) and the pipeline
(per-camera decode/processed fps, drops, reconnects, end-to-end latency percentiles of that window), then
reports the samples as a table and JSON with a least-squares RSS slope over the run after warm-up.

`--chaos` kills and restarts the RTSP server every few minutes, so that reconnect paths are soaked too.
`--redis` adds the Redis Streams sink against a local `redis-server` this script starts, and
`--redis-restart-at M` stops that server M minutes in and starts it again `--redis-down-s` (30) later (buffering,
reconnect and backlog paths); the summary then has Redis entries sent, buffered and dropped.

The issue-16 soak (2 hours, 8 cameras, chaos every 15 minutes, a Redis restart in the middle):

    .venv/bin/python benchmarks/soak.py --cameras 8 --minutes 120 --chaos 15 --redis --redis-restart-at 60 \
        --json benchmarks/results/soak_2h.json

    .venv/bin/python benchmarks/soak.py --cameras 4 --minutes 30 --json benchmarks/results/soak.json
    .venv/bin/python benchmarks/soak.py --smoke          # a few seconds, for CI
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common  # puts the repo on sys.path: keep it first

from rtsp_worker.config import parse_config
from rtsp_worker.pipeline import Pipeline, build_pipeline
from rtsp_worker.status import BatchReport


def proc_status() -> dict[str, float]:
    """RSS and peak RSS (MiB), threads and open fds of this process, from /proc (no psutil needed)."""
    fields: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
        elif key == "Threads":
            fields[key] = int(value)
    fields["fds"] = len(os.listdir("/proc/self/fd"))
    return fields


def slope_per_hour(ts: list[float], values: list[float], min_span_s: float = 300.0) -> float:
    """Least-squares slope of values over ts (seconds), per hour; NaN over less than `min_span_s`, where
    allocator warm-up dominates and an hourly extrapolation would mislead."""
    if len(ts) < 3 or ts[-1] - ts[0] < min_span_s:
        return float("nan")
    mt, mv = statistics.fmean(ts), statistics.fmean(values)
    var = sum((t - mt) ** 2 for t in ts)
    return 3600 * sum((t - mt) * (v - mv) for t, v in zip(ts, values)) / var if var else float("nan")


class RedisProcess:
    """A throwaway redis-server on a free loopback port (persistence off), stoppable and restartable."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Sampler:
    """Collects end-to-end latencies from the batch listener and takes one sample per interval."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        self._lat: list[float] = []
        self._sizes: list[int] = []
        self._lock = threading.Lock()
        self._prev = [(s.decoded, s.processed, s.dropped) for s in pipeline.stats]
        self._t = time.monotonic()
        self.t0 = self._t
        pipeline.on_batch(lambda out: self.on_batch(out.report))

    def on_batch(self, r: BatchReport) -> None:
        with self._lock:  # cheap: one append per frame of the batch
            self._lat.extend(sec for _, sec in r.latencies)
            self._sizes.append(r.size)

    def sample(self) -> dict[str, Any]:
        now = time.monotonic()
        dt = max(now - self._t, 1e-6)
        with self._lock:
            lat, self._lat = self._lat, []
            sizes, self._sizes = self._sizes, []
        cams = []
        for i, (cam, st) in enumerate(zip(self.p.cameras, self.p.stats)):
            d0, p0, x0 = self._prev[i]
            cams.append({"camera": cam.name, "state": st.state.value, "decode_fps": (st.decoded - d0) / dt,
                         "processed_fps": (st.processed - p0) / dt, "dropped": st.dropped - x0,
                         "reconnects": st.reconnects, "stalls": st.stalls})
            self._prev[i] = (st.decoded, st.processed, st.dropped)
        self._t = now
        ps = proc_status()
        processed = [c["processed_fps"] for c in cams]
        return {
            "t_s": round(now - self.t0, 1),
            "rss_mib": round(ps["VmRSS"], 1),
            "peak_rss_mib": round(ps["VmHWM"], 1),
            "threads": ps["Threads"],
            "fds": ps["fds"],
            "processed_fps_total": sum(processed),
            "processed_fps_min_camera": min(processed) if processed else 0.0,
            "latency_p50_ms": common.percentile(lat, 50) * 1e3,
            "latency_p95_ms": common.percentile(lat, 95) * 1e3,
            "latency_max_ms": max(lat) * 1e3 if lat else float("nan"),
            "mean_batch": statistics.fmean(sizes) if sizes else 0.0,
            "reconnects": sum(c["reconnects"] for c in cams),
            "sink_drops": self.p.status().sink_lost,
            "sink_errors": self.p.status().sink_errors,
            "cameras": cams,
        }


def _redis_summary(pipeline: Pipeline, events: list[str]) -> dict[str, Any] | None:
    sink = next((s for s in pipeline.sinks.sinks if s.name == "redis"), None)
    if sink is None:
        return None
    return {"sent": sink.sent, "buffered_at_end": sink.buffered, "dropped": sink.dropped, "rejected": sink.failed,
            "events": events}


def main() -> int:
    ap = common.parser(__doc__)
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds left out of the RSS slope")
    ap.add_argument("--size", default="640x360", help="camera resolution WxH")
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--device", default="cpu", help="auto, cpu, cuda")
    ap.add_argument("--chaos", type=float, default=0.0,
                    help="kill and restart the RTSP server every this many minutes (0: never)")
    ap.add_argument("--redis", action="store_true", help="also write to Redis Streams (a local redis-server)")
    ap.add_argument("--redis-restart-at", type=float, default=None,
                    help="with --redis: stop Redis this many minutes in, start it again --redis-down-s later")
    ap.add_argument("--redis-down-s", type=float, default=30.0, help="seconds Redis stays down")
    args = ap.parse_args()
    if args.smoke:
        args.cameras, args.minutes, args.interval, args.warmup = 2, 0.15, 2.0, 2.0
        args.size = "320x240"
    common.setup(args)
    w, h = (int(v) for v in args.size.split("x"))
    model = common.pick_model(args.model, args.smoke)
    clip_s = 4.0 if args.smoke else 20.0
    clips = {f"cam{i}": common.synthetic_clip(i, clip_s, size=(w, h), fps=args.fps) for i in range(args.cameras)}
    out_dir = Path(tempfile.mkdtemp(prefix="soak-"))
    samples: list[dict[str, Any]] = []
    redis_srv = None
    if args.redis or args.redis_restart_at is not None:
        redis_srv = RedisProcess(out_dir)
        redis_srv.start()
    redis_events: list[str] = []
    with common.rtsp_server(clips) as server:
        cfg = parse_config({
            "cameras": [{"name": n, "url": server.url(n)} for n in clips],
            "model": {"path": str(model.path)},
            "device": args.device,
            "batcher": {"max_batch": max(1, args.cameras)},
            # JSONL on (rotated) so the sink path is soaked too.
            "output": {"dir": str(out_dir), "jsonl_max_bytes": 64 << 20, "jsonl_backups": 1,
                       "redis": {"url": redis_srv.url} if redis_srv else None},
            "log_interval": 3600,
        }, source="<soak>")
        pipeline = build_pipeline(cfg)
        sampler = Sampler(pipeline)
        worker = threading.Thread(target=pipeline.run, name="pipeline", daemon=True)
        worker.start()
        end = time.monotonic() + args.minutes * 60
        next_chaos = time.monotonic() + args.chaos * 60 if args.chaos else float("inf")
        start = time.monotonic()
        redis_stop_at = start + args.redis_restart_at * 60 if redis_srv and args.redis_restart_at is not None \
            else float("inf")
        redis_start_at = float("inf")
        try:
            while time.monotonic() < end and worker.is_alive():
                time.sleep(max(0.0, min(args.interval, end - time.monotonic())))
                if time.monotonic() >= next_chaos:
                    server.kill()
                    time.sleep(2)
                    server.restart()
                    next_chaos = time.monotonic() + args.chaos * 60
                if redis_srv is not None and time.monotonic() >= redis_stop_at:
                    redis_srv.stop()
                    redis_events.append(f"redis stopped at {time.monotonic() - start:.0f} s")
                    redis_stop_at, redis_start_at = float("inf"), time.monotonic() + args.redis_down_s
                if redis_srv is not None and time.monotonic() >= redis_start_at:
                    redis_srv.start()
                    redis_events.append(f"redis started at {time.monotonic() - start:.0f} s")
                    redis_start_at = float("inf")
                s = sampler.sample()
                samples.append(s)
                print(f"t={s['t_s']:.0f}s rss={s['rss_mib']:.0f}MiB threads={s['threads']} fds={s['fds']} "
                      f"fps={s['processed_fps_total']:.1f} p95={s['latency_p95_ms']:.0f}ms", file=sys.stderr)
        finally:
            pipeline.stop()
            worker.join(60)
            if redis_srv is not None:
                redis_srv.stop()

    steady = [s for s in samples if s["t_s"] >= args.warmup] or samples
    summary = {
        "cameras": args.cameras,
        "minutes": args.minutes,
        "model": model.description,
        "samples": len(samples),
        "rss_start_mib": steady[0]["rss_mib"] if steady else None,
        "rss_end_mib": steady[-1]["rss_mib"] if steady else None,
        "rss_slope_mib_per_hour": slope_per_hour([s["t_s"] for s in steady], [s["rss_mib"] for s in steady]),
        "peak_rss_mib": max((s["peak_rss_mib"] for s in samples), default=None),
        "threads_min_max": [min(s["threads"] for s in samples), max(s["threads"] for s in samples)] if samples
        else None,
        "fds_min_max": [min(s["fds"] for s in samples), max(s["fds"] for s in samples)] if samples else None,
        "processed_fps_mean": statistics.fmean(s["processed_fps_total"] for s in steady) if steady else 0.0,
        "processed_fps_min": min((s["processed_fps_total"] for s in steady), default=0.0),
        "latency_p95_ms_max": max((s["latency_p95_ms"] for s in steady), default=None),
        "frames_processed": [st.processed for st in pipeline.stats],
        "reconnects": [st.reconnects for st in pipeline.stats],
        "sink_drops": {s.name: s.lost for s in pipeline.status().sinks},
        "sink_errors": {s.name: s.errors for s in pipeline.status().sinks},
        "redis": _redis_summary(pipeline, redis_events),
    }
    common.print_table(f"soak: {args.cameras} cameras, {args.minutes:g} min, {model.description}",
                       [{k: v for k, v in s.items() if k != "cameras"} for s in samples], digits=1)
    common.print_table("summary", [{k: v for k, v in summary.items() if not isinstance(v, (list, dict))}],
                       digits=2)
    common.write_json(args.json, {"meta": common.metadata(args), "summary": summary, "samples": samples})
    ok = all(n > 0 for n in summary["frames_processed"])
    if not ok:
        print("FAIL: a camera processed no frames", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
