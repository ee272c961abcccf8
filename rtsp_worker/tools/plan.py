"""`rtsp-worker plan cameras.yaml`: what this box would give each camera, without running the pipeline.

1. Each enabled camera is probed briefly, in parallel (as `probe` does): codec, resolution, frame rate. One
   that cannot be reached is listed as unknown (and not counted), or taken as `--assume 1920x1080@30`.
2. The CPU decode cost of each (codec, resolution) is measured on a few seconds of a generated clip in
   core-seconds per frame: for H.264 a synthetic street scene (rtsp_worker/sim/synthetic.py: texture, sensor
   noise, moving objects: what camera footage costs to decode), for HEVC the simple test pattern
   (rtsp_worker/sim/clips.py; the scene encoder writes H.264 only), which decodes faster than camera content.
3. The worker's own batch step (rtsp_worker/step.py: preprocess, engine, postprocess, tracker) runs on the
   frames decoded in 2 (the most common stream's) at batch sizes 1, 2, 4, ... up to batcher.max_batch: one
   warm-up batch, then the median of at least MIN_RUNS timed batches each, more while they are quick (a busy
   core makes single runs scatter). The inference half (preprocess + engine) goes into the same `BatchCost`
   the running worker learns from real batches (the sizes between are read off its line); the other half
   (postprocess, tracker, records) is kept per frame.
4. Capacity: on a CPU device decoding, the inference half and the other half share the cores, so the engine's
   rate is scaled down by what decoding and the other half take (`cpu_capacity`); on a GPU the other half
   runs beside it on its own thread (at most 1000 / its ms per frame). The capacity is then shared by
   priority exactly as the worker does under overload (capacity.allocate): each camera's predicted rate is
   its target / its multiplier. With one priority for every camera the worker sets no multipliers (each
   camera drops its stale frames alike), so each is predicted at its target x capacity / demand.

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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from rtsp_worker.capacity import PRIORITY_RANK, BatchCost, allocate
from rtsp_worker.config import CameraConfig, Config
from rtsp_worker.types import NATIVE, Frame

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


MIN_RUNS, MAX_RUNS = 5, 25  # timed batches per size: at least MIN_RUNS, more until SIZE_BUDGET_S is spent
SIZE_BUDGET_S = 0.5
SAMPLE_FRAMES = 30  # decoded frames kept for the batch step (cycled through for bigger batches)


@dataclass(frozen=True, slots=True)
class StepCost:
    """What the batch step costs on this device."""

    infer: BatchCost  # the inference half (preprocess + engine) by batch size: what the worker learns
    finish_ms: float  # the other half (postprocess, tracker, records) per frame, at the largest batch
    max_batch: int


def batch_sizes(top: int) -> list[int]:
    """1, 2, 4, ... and `top`: the line through them gives the sizes between."""
    sizes = {top}
    b = 1
    while b < top:
        sizes.add(b)
        b *= 2
    return sorted(sizes)


def measure_step(cfg: Config, device: torch.device, frames: Sequence[Frame]) -> StepCost:
    """The batch step's cost at `batch_sizes` of the max batch, on `frames` (cycled, one camera row each)."""
    from rtsp_worker.engines import load_engine
    from rtsp_worker.step import BatchStep

    engine = load_engine(cfg.model, device, cfg.batcher.max_batch)
    try:
        info = engine.info
        top = cfg.batcher.max_batch
        if info.dynamic_batch and info.max_batch:
            top = min(top, info.max_batch)
        step = BatchStep.build(cfg, engine, top)
        names = [f"plan{i}" for i in range(top)]
        cost, finish_ms, seq = BatchCost(), 0.0, 0

        def batch(b: int) -> list[Frame]:
            nonlocal seq
            seq += 1  # a new frame of every camera row, 1/15 s later
            return [replace(frames[(seq + i) % len(frames)], row=i, seq=seq, ts=seq / 15, pts=seq / 15)
                    for i in range(b)]

        for b in batch_sizes(top):
            step(batch(b), names[:b])  # warm-up: allocations, kernels for this shape
            infer, finish = [], []
            start = time.perf_counter()
            while len(infer) < MIN_RUNS or (len(infer) < MAX_RUNS and time.perf_counter() - start < SIZE_BUDGET_S):
                t0 = time.perf_counter()
                inferred = step.infer(batch(b))
                if inferred.raw is not None and inferred.raw.is_cuda:
                    torch.cuda.synchronize(engine.device)
                t1 = time.perf_counter()
                step.finish(inferred, names[:b])  # ends with the batch's device-to-host copy
                infer.append((t1 - t0) * 1e3)
                finish.append((time.perf_counter() - t1) * 1e3)
            cost.observe(b, statistics.median(infer))
            finish_ms = statistics.median(finish) / b
        return StepCost(cost, finish_ms, top)
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


def measure_decode(streams: list[Stream], seconds: float = 2.0
                   ) -> tuple[dict[tuple[str, int, int], float], list[Frame]]:
    """CPU core-ms to decode one frame, per (codec, width, height), on a generated clip of that kind; and up to
    SAMPLE_FRAMES of the decoded frames of the most common stream (a 640x360 scene when none is known), as the
    CPU decoder hands them to the pipeline."""
    import av

    known = [(s.codec, s.width, s.height) for s in streams if s.how != "unknown"]
    common = max(set(known), key=known.count) if known else ("h264", 640, 360)
    out: dict[tuple[str, int, int], float] = {}
    sample: list[Frame] = []
    with tempfile.TemporaryDirectory(prefix="rtsp-worker-plan-") as tmp:
        for key in dict.fromkeys([*known, common]):
            codec = "hevc" if key[0] in ("hevc", "h265") else "h264"
            w, h = key[1] - key[1] % 2, key[2] - key[2] % 2
            clip = _camera_like_clip(Path(tmp) / f"{codec}_{w}x{h}.mp4", codec, w, h, seconds)
            with av.open(str(clip)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                c0 = time.process_time()  # core-seconds: decoder threads included
                decoded = list(container.decode(stream))
                cpu = time.process_time() - c0
            if key in known:
                out[key] = cpu * 1e3 / max(len(decoded), 1)
            if key == common:
                sample = [Frame(0, i, 0.0, f, f.height, f.width, NATIVE) for i, f in enumerate(decoded[:SAMPLE_FRAMES])]
    return out, sample


def cpu_capacity(engine_fps: float, finish_ms: float, decode_cores: float, cores: int) -> float:
    """Inferred frames/s when decoding, the inference half and the other half share `cores` CPU cores.

    The engine's rate E was measured with every core to itself; decoding takes `decode_cores` of them and the
    other half `finish_ms` core-ms per inferred frame, so C = E * (1 - (decode_cores + C * finish_ms / 1000) /
    cores), solved for C.
    """
    if engine_fps <= 0:
        return 0.0
    free = max(0.0, 1.0 - decode_cores / cores)
    return engine_fps * free / (1.0 + engine_fps * finish_ms / 1000.0 / cores)


def make_plan(cfg: Config, streams: dict[str, Stream], cost: StepCost,
              decode_ms: dict[tuple[str, int, int], float], device: torch.device, cores: int) -> dict:
    """The plan as a dict (what --json prints)."""
    cams = cfg.enabled_cameras
    max_batch = cost.max_batch
    engine_fps = cost.infer.capacity_fps(max_batch) or 0.0
    targets: dict[str, float] = {}
    decode_load = 0.0  # cores busy decoding
    for c in cams:
        s = streams[c.name]
        if s.how == "unknown":
            continue
        rate = c.frame_rate or s.fps or 0.0
        targets[c.name] = c.target_fps if c.target_fps is not None else rate / c.infer_interval
        decode_load += rate * decode_ms.get((s.codec, s.width, s.height), 0.0) / 1e3
    if device.type == "cpu":  # the engine measured alone had every core: decoding and the other half share them
        capacity = cpu_capacity(engine_fps, cost.finish_ms, decode_load, cores)
    else:  # the other half runs beside the engine on its own thread
        capacity = min(engine_fps, 1000.0 / cost.finish_ms if cost.finish_ms > 0 else engine_fps)
    demand = sum(targets.values())
    counted = [c for c in cams if c.name in targets]
    if len({c.priority for c in counted}) > 1:  # priorities: the worker's multipliers (capacity.allocate)
        mult = allocate(capacity, [(c.name, c.priority, targets[c.name]) for c in counted])
        predicted = {n: targets[n] / k for n, k in mult.items()}
    else:  # one priority: no one to favour, every camera drops its stale frames alike (capacity.Priorities)
        mult = {c.name: 1 for c in counted}
        predicted = {n: t * min(1.0, capacity / demand) if demand > 0 else t for n, t in targets.items()}
    rows = []
    for c in cams:
        s = streams[c.name]
        known = c.name in targets
        rows.append(CameraPlan(
            c.name, c.priority, s.how, s.codec, s.width, s.height, (c.frame_rate or s.fps) if known else None,
            targets.get(c.name), predicted.get(c.name), mult.get(c.name),
            decode_ms.get((s.codec, s.width, s.height)) if known else None))
    degraded = [r.name for r in sorted(rows, key=lambda r: (-PRIORITY_RANK[r.priority], r.name))
                if r.multiplier is not None]
    return {
        "device": str(device), "cores": cores, "max_batch": max_batch,
        "engine_ms": {str(b): round(ms, 2) for b, ms, _ in cost.infer.table(max_batch) if ms is not None},
        "engine_fps": round(engine_fps, 1), "finish_ms_per_frame": round(cost.finish_ms, 2),
        "decode_cores": round(decode_load, 2),
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
        if r["multiplier"] != 1:
            note = f"degraded: interval x{r['multiplier']}"
        else:
            note = "full rate" if r["predicted_fps"] >= r["target_fps"] - 1e-9 else "degraded: drops frames"
        if r["how"] == "assumed":
            note += " (assumed stream)"
        lines.append(f"{r['name']:<20} {r['priority']:<6} {stream:<24} {r['target_fps']:>7.1f} "
                     f"{r['predicted_fps']:>9.1f}  {note}")
    lines.append(f"engine: {plan['engine_fps']:.1f} inferred frames/s on {plan['device']} (preprocess + model, "
                 f"max batch {plan['max_batch']}); postprocess + tracker {plan['finish_ms_per_frame']:.1f} ms per "
                 f"frame; decoding takes {plan['decode_cores']:.2f} of {plan['cores']} cores")
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
    decode, sample = measure_decode(list(streams.values()))
    cost = measure_step(cfg, device, sample)
    result = make_plan(cfg, streams, cost, decode, device, os.cpu_count() or 1)
    return json.dumps(result, indent=2) if as_json else format_plan(result)
