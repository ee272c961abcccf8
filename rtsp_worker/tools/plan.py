"""`rtsp-worker plan cameras.yaml`: what this box would give each camera, without running the pipeline.

1. Each enabled camera is probed briefly, in parallel (as `probe` does): codec, resolution, frame rate. One
   that cannot be reached is listed as unknown (and not counted), or taken as `--assume 1920x1080@30`.
2. The model is measured on the configured device at batch sizes 1, 2, 4, ... up to batcher.max_batch (one
   warm-up run, then the median of at least MIN_RUNS timed runs each, more while they are quick: a busy
   core makes single runs scatter), into the same `BatchCost` the running worker learns from real batches;
   the sizes between are read off its line.
3. The CPU decode cost of each (codec, resolution) is measured on a few seconds of a generated clip in
   core-seconds per frame: for H.264 a synthetic street scene (rtsp_worker/sim/synthetic.py: texture, sensor
   noise, moving objects: what camera footage costs to decode), for HEVC the simple test pattern
   (rtsp_worker/sim/clips.py; the scene encoder writes H.264 only), which decodes faster than camera content.
4. On a CPU device decoding and inference share the cores: the engine keeps the share decoding leaves.
   The capacity is then shared by priority exactly as the worker does under overload (capacity.allocate):
   each camera's predicted rate is its target / its multiplier.

Predictions against real runs: OPTIMIZATION_SUMMARY.md, "Priorities and `plan` vs a real run"
(benchmarks/bench_capacity.py).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from rtsp_worker.capacity import PRIORITY_RANK, BatchCost, allocate
from rtsp_worker.config import CameraConfig, Config

_ASSUME = re.compile(r"^(\d+)x(\d+)@(\d+(?:\.\d+)?)$")


@dataclass(frozen=True, slots=True)
class Stream:
    codec: str
    width: int
    height: int
    fps: float
    how: str  # probed | assumed | unknown


@dataclass(frozen=True, slots=True)
class CameraPlan:
    name: str
    priority: str
    how: str
    codec: str
    width: int
    height: int
    stream_fps: float | None
    target_fps: float | None
    predicted_fps: float | None
    multiplier: int | None
    decode_ms: float | None  # CPU core-milliseconds to decode one frame


def parse_assume(text: str | None) -> Stream | None:
    if text is None:
        return None
    m = _ASSUME.match(text.strip())
    if not m:
        raise ValueError(f"--assume {text!r}: expected WIDTHxHEIGHT@FPS, e.g. 1920x1080@30")
    return Stream("h264", int(m.group(1)), int(m.group(2)), float(m.group(3)), "assumed")


def probe_cameras(cams: list[CameraConfig], timeout: float, assume: Stream | None) -> dict[str, Stream]:
    """Each camera's stream, probed in parallel."""
    from rtsp_worker.sources.probe import probe_stream

    def one(cam: CameraConfig) -> Stream:
        r = probe_stream(cam.url, timeout)
        if not r.error and r.width and r.height:
            return Stream(r.codec, r.width, r.height, r.fps or cam.frame_rate or 0.0, "probed")
        if assume is not None:
            return assume
        return Stream("", 0, 0, 0.0, "unknown")

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(cams)))) as pool:
        return dict(zip((c.name for c in cams), pool.map(one, cams)))


MIN_RUNS, MAX_RUNS = 5, 25  # timed runs per batch size: at least MIN_RUNS, more until SIZE_BUDGET_S is spent
SIZE_BUDGET_S = 0.5


def batch_sizes(top: int) -> list[int]:
    """1, 2, 4, ... and `top`: the line through them gives the sizes between."""
    sizes = {top}
    b = 1
    while b < top:
        sizes.add(b)
        b *= 2
    return sorted(sizes)


def measure_model(cfg: Config, device: torch.device) -> tuple[BatchCost, int]:
    """The engine's milliseconds per batch at `batch_sizes` of the max batch (warm-up, then the median of
    MIN_RUNS..MAX_RUNS timed calls each)."""
    from rtsp_worker.engines import load_engine

    engine = load_engine(cfg.model, device, cfg.batcher.max_batch)
    try:
        info = engine.info
        top = cfg.batcher.max_batch
        if info.dynamic_batch and info.max_batch:
            top = min(top, info.max_batch)
        h, w = info.input_size
        cost = BatchCost()
        for b in batch_sizes(top):
            x = torch.rand((b, 3, h, w), device=engine.device).to(engine.input_dtype)
            engine.infer(x)  # warm-up: allocations, kernels for this shape
            times: list[float] = []
            start = time.perf_counter()
            while len(times) < MIN_RUNS or (len(times) < MAX_RUNS and time.perf_counter() - start < SIZE_BUDGET_S):
                if engine.device.type == "cuda":
                    torch.cuda.synchronize(engine.device)
                t0 = time.perf_counter()
                out = engine.infer(x)
                if out.is_cuda:
                    torch.cuda.synchronize(engine.device)
                times.append((time.perf_counter() - t0) * 1e3)
            cost.observe(b, statistics.median(times))
        return cost, top
    finally:
        engine.close()


def _camera_like_clip(path: Path, codec: str, width: int, height: int, seconds: float) -> Path:
    """A clip that costs what camera footage costs to decode (H.264: a synthetic scene; see the docstring)."""
    if codec != "h264":
        from rtsp_worker.sim.clips import write_test_clip

        return write_test_clip(path, seconds=seconds, fps=15, size=(width, height), codec=codec)
    from rtsp_worker.sim.synthetic import encode_mp4, make_scene, render

    scene = make_scene(1, frames=max(1, int(seconds * 15)), width=max(width, 64), height=max(height, 64), fps=15)
    encode_mp4((img for img, _gt in render(scene)), path, 15, scene.width, scene.height)
    return path


def measure_decode(streams: list[Stream], seconds: float = 2.0) -> dict[tuple[str, int, int], float]:
    """CPU core-ms to decode one frame, per (codec, width, height), on a generated clip of that kind."""
    import av

    out: dict[tuple[str, int, int], float] = {}
    with tempfile.TemporaryDirectory(prefix="rtsp-worker-plan-") as tmp:
        for s in streams:
            key = (s.codec, s.width, s.height)
            if s.how == "unknown" or key in out:
                continue
            codec = "hevc" if s.codec in ("hevc", "h265") else "h264"
            clip = _camera_like_clip(Path(tmp) / f"{codec}_{s.width}x{s.height}.mp4", codec,
                                     s.width - s.width % 2, s.height - s.height % 2, seconds)
            with av.open(str(clip)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                c0 = time.process_time()  # core-seconds: decoder threads included
                n = sum(1 for _ in container.decode(stream))
                cpu = time.process_time() - c0
            out[key] = cpu * 1e3 / max(n, 1)
    return out


def make_plan(cfg: Config, streams: dict[str, Stream], cost: BatchCost, max_batch: int,
              decode_ms: dict[tuple[str, int, int], float], device: torch.device, cores: int) -> dict:
    """The plan as a dict (what --json prints)."""
    cams = cfg.enabled_cameras
    engine_fps = cost.capacity_fps(max_batch) or 0.0
    targets: dict[str, float] = {}
    decode_load = 0.0  # cores busy decoding
    for c in cams:
        s = streams[c.name]
        if s.how == "unknown":
            continue
        rate = c.frame_rate or s.fps or 0.0
        targets[c.name] = c.target_fps if c.target_fps is not None else rate / c.infer_interval
        decode_load += rate * decode_ms.get((s.codec, s.width, s.height), 0.0) / 1e3
    # CPU device: the engine measured alone had every core; decoding takes its share first.
    share = max(0.0, 1.0 - decode_load / cores) if device.type == "cpu" else 1.0
    capacity = engine_fps * share
    mult = allocate(capacity, [(c.name, c.priority, targets[c.name]) for c in cams if c.name in targets])
    rows = []
    for c in cams:
        s = streams[c.name]
        known = c.name in targets
        k = mult.get(c.name) if known else None
        rows.append(CameraPlan(
            c.name, c.priority, s.how, s.codec, s.width, s.height, (c.frame_rate or s.fps) if known else None,
            targets.get(c.name), targets[c.name] / k if known and k else None, k,
            decode_ms.get((s.codec, s.width, s.height)) if known else None))
    degraded = [r.name for r in sorted(rows, key=lambda r: (-PRIORITY_RANK[r.priority], r.name))
                if r.multiplier is not None]
    demand = sum(targets.values())
    return {
        "device": str(device), "cores": cores, "max_batch": max_batch,
        "engine_ms": {str(b): round(ms, 2) for b, ms, _ in cost.table(max_batch) if ms is not None},
        "engine_fps": round(engine_fps, 1), "decode_cores": round(decode_load, 2),
        "capacity_fps": round(capacity, 1), "demand_fps": round(demand, 1),
        "headroom_fps": round(capacity - demand, 1), "degraded_first": degraded,
        "cameras": [asdict(r) for r in rows],
    }


def format_plan(plan: dict) -> str:
    lines = [f"{'camera':<20} {'prio':<6} {'stream':<24} {'target':>7} {'would get':>9}  note"]
    for r in plan["cameras"]:
        if r["how"] == "unknown":
            lines.append(f"{r['name']:<20} {r['priority']:<6} {'unknown (unreachable)':<24} {'-':>7} {'-':>9}  "
                         "not counted: probe failed (use --assume WxH@FPS)")
            continue
        stream = f"{r['codec']} {r['width']}x{r['height']}@{r['stream_fps']:.0f}"
        note = "full rate" if r["multiplier"] == 1 else f"degraded: interval x{r['multiplier']}"
        if r["how"] == "assumed":
            note += " (assumed stream)"
        lines.append(f"{r['name']:<20} {r['priority']:<6} {stream:<24} {r['target_fps']:>7.1f} "
                     f"{r['predicted_fps']:>9.1f}  {note}")
    lines.append(f"engine: {plan['engine_fps']:.1f} inferred frames/s on {plan['device']} (max batch "
                 f"{plan['max_batch']}); decoding takes {plan['decode_cores']:.2f} of {plan['cores']} cores")
    lines.append(f"capacity {plan['capacity_fps']:.1f} fps, demand {plan['demand_fps']:.1f} fps, headroom "
                 f"{plan['headroom_fps']:.1f} fps")
    lines.append("degraded first under overload: " + (", ".join(plan["degraded_first"]) or "-"))
    return "\n".join(lines)


def plan(cfg: Config, assume: str | None = None, probe_timeout: float = 3.0, as_json: bool = False) -> str:
    """Probe, measure, and return the plan as text (or JSON)."""
    from rtsp_worker.devices import resolve_device

    stand_in = parse_assume(assume)
    device = resolve_device(cfg.device)
    streams = probe_cameras(cfg.enabled_cameras, probe_timeout, stand_in)
    cost, max_batch = measure_model(cfg, device)
    decode = measure_decode(list(streams.values()))
    result = make_plan(cfg, streams, cost, max_batch, decode, device, os.cpu_count() or 1)
    return json.dumps(result, indent=2) if as_json else format_plan(result)
