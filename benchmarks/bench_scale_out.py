"""Scale-out on one box: the same cameras through 1, 2, 4 worker processes, side by side in one run.

    .venv/bin/python benchmarks/bench_scale_out.py --mode ceiling [--cameras 64] [--processes 1 2 4]
    .venv/bin/python benchmarks/bench_scale_out.py --mode model --cameras 8 16 [--processes 1 2]
        [--seconds 15] [--smoke] [--json FILE]

`--mode ceiling`, the host-side ceiling of one process, measurable without a GPU: 1080p30 H.264 cameras
from the project's real RTSP server (replayed-file mounts), demuxed as the worker does (PyAV, RTSP over
TCP), with decoding replaced by a no-op that hands on one preallocated frame per video packet (what NVDEC
costs the host: a call and a wrap), preprocessing reduced to its host-side bookkeeping (letterbox
geometry; the pixels are the GPU's work), a null engine (preallocated output, nothing detected), and the
real batcher, postprocessing, tracker and JSONL sink. Frames/s this moves is the bound on what any GPU
can reach through this worker; 64 cameras at 30 fps need 1,920.

`--mode model`: real CPU decoding and the project's ONNX model (`models/synth_det.onnx`, 1 ONNX Runtime
thread per process) on 640x360 15 fps cameras.

Each process is a child of this script running one shard (service/sharding.py) of the cameras. All
children start, wait until their cameras stream, then measure the same window together. Reported per
point: aggregate fps, CPU seconds per frame (children + the RTSP server), median end-to-end latency.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import torch

from rtsp_worker.config import parse_config
from rtsp_worker.service.sharding import Shard, shard_config

NC = 1


class _NullDecoder:
    """One preallocated frame per video packet: the host-side cost of a hardware decoder."""

    name = "null"

    def __init__(self, stream, size: tuple[int, int]) -> None:
        from rtsp_worker.sources.base import DecodedImage

        ctx = stream.codec_context
        # The RTSP SDP does not always carry the size before the first decode: the clip's size is known.
        w, h = (ctx.width, ctx.height) if ctx.width and ctx.height else size
        self.device = torch.device("cpu")
        self._img = DecodedImage(torch.zeros((h, w, 3), dtype=torch.uint8), "rgb24", h, w, None)

    def decode(self, packet) -> list:
        return [self._img] if packet.size else []

    def flush(self) -> list:
        return []

    def close(self) -> None:
        pass


class _NullEngine:
    """A preallocated all-zero output in the YOLOv8 layout: postprocessing runs, nothing is detected."""

    def __init__(self, max_batch: int) -> None:
        from rtsp_worker.engines.base import ModelInfo

        self.info = ModelInfo((384, 640), ("object",), max_batch, True)
        self.device = torch.device("cpu")
        self.input_dtype = torch.float32
        self.warmup_ms: dict[int, float] = {}
        self._out = torch.zeros((max_batch, 4 + NC, 5040))

    def infer(self, images: torch.Tensor) -> torch.Tensor:
        return self._out[: images.shape[0]]

    def close(self) -> None:
        pass


class _HostPreprocess:
    """The letterbox bookkeeping of `Preprocessor` without the pixel work (done on the GPU there)."""

    def __init__(self, real) -> None:
        self.real = real

    def __call__(self, frames):
        from rtsp_worker.detection.preprocess import Letterbox, letterbox_geometry

        geo = [letterbox_geometry(f.height, f.width, self.real.input_size) for f in frames]
        box = Letterbox(scale=torch.tensor([g[0] for g in geo], dtype=torch.float32),
                        pad=torch.tensor([[g[3], g[4]] for g in geo], dtype=torch.float32),
                        source_size=torch.tensor([[f.width, f.height] for f in frames], dtype=torch.float32))
        return self.real._buffer[: len(frames)], box


def child(spec: dict) -> None:
    """One worker process: build its shard's pipeline, report ready, measure on "go", print JSON."""
    from rtsp_worker.pipeline import build_pipeline
    from rtsp_worker.sources import camera as camera_mod
    from rtsp_worker.sources.state import CameraState

    common.setup(common.parser(None).parse_args(["--log-level", "ERROR"]))
    cfg = parse_config(spec["config"])
    cfg = shard_config(cfg, Shard(spec["index"], spec["count"]))
    engine = None
    if spec["mode"] == "ceiling":
        size = tuple(spec["size"])
        camera_mod.make_decoder = lambda _kind, stream, _dev, _cam: _NullDecoder(stream, size)
        engine = _NullEngine(cfg.batcher.max_batch)
    pipe = build_pipeline(cfg, engine=engine)
    if spec["mode"] == "ceiling":
        pipe.batch_step.preprocess = _HostPreprocess(pipe.batch_step.preprocess)
    latencies: list[float] = []
    pipe.on_batch(lambda out: latencies.extend(s for _, s in out.report.latencies))
    import threading

    runner = threading.Thread(target=pipe.run, name="inference", daemon=True)
    runner.start()
    deadline = time.monotonic() + 120
    while any(s.state != CameraState.STREAMING for s in pipe.stats) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(spec["warmup"])
    print("ready", flush=True)
    sys.stdin.readline()  # "go": every child measures the same window
    p0, c0, n0, g0 = pipe.frames_out, _cpu(), len(latencies), common.thread_groups()
    t0 = time.monotonic()
    time.sleep(spec["seconds"])
    dt = time.monotonic() - t0
    p1, c1, g1 = pipe.frames_out, _cpu(), common.thread_groups()
    frames = max(p1 - p0, 1)
    # where the host time goes: CPU ms per frame of each thread role (decode threads, inference, finish, sinks)
    threads = {k: 1e3 * (v - g0.get(k, 0.0)) / frames for k, v in g1.items() if v - g0.get(k, 0.0) > 0.01}
    window = sorted(latencies[n0:])
    streaming = sum(s.state == CameraState.STREAMING for s in pipe.stats)
    pipe.stop()
    runner.join(30)
    print(json.dumps({"frames": p1 - p0, "seconds": dt, "cpu_s": c1 - c0, "cameras": len(pipe.cameras),
                      "streaming": streaming, "thread_ms_per_frame": threads,
                      "latency_p50_ms": 1e3 * window[len(window) // 2] if window else None}), flush=True)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def point(mode: str, urls: dict[str, str], processes: int, seconds: float, warmup: float, out: Path,
          server_pid: int | None, size: tuple[int, int], device: str = "cpu") -> dict:
    cams = [{"name": n, "url": u} for n, u in urls.items()]
    raw = {"cameras": cams, "model": {"path": str(common.TRAINED_MODEL), "threads": 1}, "device": device,
           "output": {"dir": str(out)}, "log_interval": 3600, "batcher": {"max_batch": 64 if mode == "ceiling"
                                                                          else 16}}
    procs = []
    for k in range(processes):
        spec = {"mode": mode, "config": raw, "index": k, "count": processes, "seconds": seconds, "warmup": warmup,
                "size": size}
        p = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
    for p in procs:
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise SystemExit(f"child failed to start: {line!r}")
    s0 = common.process_cpu_seconds(server_pid) if server_pid else 0.0
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [json.loads(p.stdout.readline()) for p in procs]
    s1 = common.process_cpu_seconds(server_pid) if server_pid else 0.0
    for p in procs:
        p.wait(60)
    frames = sum(r["frames"] for r in results)
    secs = max(r["seconds"] for r in results)
    lat = [r["latency_p50_ms"] for r in results if r["latency_p50_ms"] is not None]
    return {"mode": mode, "cameras": len(urls), "processes": processes, "fps": frames / secs,
            "cpu_ms_per_frame_workers": 1e3 * sum(r["cpu_s"] for r in results) / max(frames, 1),
            "server_cores": (s1 - s0) / secs, "latency_p50_ms": sum(lat) / len(lat) if lat else None,
            "streaming": sum(r["streaming"] for r in results), "per_process_fps": [r["frames"] / r["seconds"]
                                                                                   for r in results],
            # summed over the processes: each process's threads per frame it moved, weighted by its frames
            "thread_ms_per_frame": _merge_threads(results)}


def _merge_threads(results: list[dict]) -> dict[str, float]:
    total = max(sum(r["frames"] for r in results), 1)
    out: dict[str, float] = {}
    for r in results:
        for k, v in r.get("thread_ms_per_frame", {}).items():
            out[k] = out.get(k, 0.0) + v * max(r["frames"], 1) / total
    return out


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--mode", choices=("ceiling", "model"), default="ceiling")
    ap.add_argument("--cameras", type=int, nargs="+", default=None)
    ap.add_argument("--processes", type=int, nargs="+", default=None)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--device", default="cpu", help="--mode model: cpu or cuda:N (every process on it)")
    args = ap.parse_args()
    common.setup(args)
    ceiling = args.mode == "ceiling"
    # --smoke (tests/tools/test_benchmarks_smoke.py): 2 small cameras through 1 and 2 processes, a 2 s window.
    cameras = args.cameras or ([2] if args.smoke else [64] if ceiling else [8, 16])
    processes = args.processes or ([1, 2] if args.smoke or not ceiling else [1, 2, 4])
    seconds = 2.0 if args.smoke else args.seconds
    warmup = 1.0 if args.smoke else args.warmup
    size, fps = ((320, 240), 30) if args.smoke else ((1920, 1080), 30)
    if ceiling:
        from rtsp_worker.sim.clips import write_test_clip

        clip = common.CACHE / "clips" / f"pattern_{size[0]}x{size[1]}_{fps}fps.mp4"
        if not clip.exists():
            clip.parent.mkdir(parents=True, exist_ok=True)
            write_test_clip(clip, seconds=2, fps=fps, size=size)
        clips = [clip] * max(cameras)
    else:
        clips = [common.synthetic_clip(i % 4, 4.0) for i in range(max(cameras))]
    rows = []
    with common.rtsp_server({f"cam{i:02d}": c for i, c in enumerate(clips)}) as server, \
            tempfile.TemporaryDirectory() as tmp:
        for n in cameras:
            urls = {f"cam{i:02d}": server.url(f"cam{i:02d}") for i in range(n)}
            for p in processes:
                rows.append(point(args.mode, urls, p, seconds, warmup, Path(tmp) / f"{n}_{p}", server.pid,
                                  size, args.device if not ceiling else "cpu"))
                print(json.dumps(rows[-1]), flush=True)
    for r in rows:
        base = next(b for b in rows if b["cameras"] == r["cameras"] and b["processes"] == processes[0])
        r["fps_vs_first"] = r["fps"] / base["fps"] if base["fps"] else None
    common.print_table(f"scale-out ({args.mode})", rows, ["cameras", "processes", "fps", "fps_vs_first",
                                                          "cpu_ms_per_frame_workers", "server_cores",
                                                          "latency_p50_ms", "streaming"])
    profile = [{"cameras": r["cameras"], "processes": r["processes"], **r["thread_ms_per_frame"]} for r in rows]
    columns = ["cameras", "processes", *sorted({k for row in profile for k in row} - {"cameras", "processes"})]
    common.print_table("CPU ms per frame by thread role (all processes)", profile, columns)
    common.write_json(args.json, {"benchmark": "scale_out", **common.metadata(args), "mode": args.mode,
                                  "rows": rows})


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
    else:
        main()
