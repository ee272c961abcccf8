"""Per-frame cost of every pipeline stage, for 1 camera and for N cameras, on the current device.

    .venv/bin/python benchmarks/bench_stages.py [--cameras 4] [--steps 30] [--smoke] [--json FILE]

Stages: demux and decode (the project's CpuDecoder, one thread per camera, local H.264 files, so no
network), then the real `Pipeline.step` on batches of the decoded frames (its own timings: preprocess,
inference, postprocess, tracker + result packing), then the JSONL sink writing those results. Per-frame
cost = stage time / frames in the batch. With N cameras the decode threads run at the same time, as in the
worker, so their per-frame time includes the contention for the cores.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import common
import torch

from rtsp_worker.pipeline import build_pipeline
from rtsp_worker.sinks.jsonl import JsonlSink
from rtsp_worker.status import BatchReport
from rtsp_worker.types import Batch

STAGES = ("demux", "decode", "preprocess", "inference", "postprocess", "tracker", "sinks")


def decode_costs(clips: list[Path], frames: int) -> dict[str, float]:
    """Decode `frames` frames of each clip, one thread per clip, all at once; ms per frame per stage."""
    import av

    from rtsp_worker.sources.decoders import CpuDecoder

    results: list[tuple[float, float, int]] = [(0.0, 0.0, 0)] * len(clips)

    def work(i: int) -> None:
        demux_s = decode_s = 0.0
        n = 0
        with av.open(str(clips[i])) as container:
            stream = container.streams.video[0]
            dec = CpuDecoder(stream)
            packets = container.demux(stream)
            while n < frames:
                t0 = time.perf_counter()
                packet = next(packets, None)
                t1 = time.perf_counter()
                if packet is None:
                    break
                images = dec.decode(packet) if packet.size else []
                decode_s += time.perf_counter() - t1
                demux_s += t1 - t0
                n += len(images)
        results[i] = (demux_s, decode_s, n)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(clips))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    total = sum(r[2] for r in results)
    return {
        "demux": 1e3 * sum(r[0] for r in results) / total,
        "decode": 1e3 * sum(r[1] for r in results) / total,
        "decode_wall_ms_per_frame": 1e3 * wall / total,  # all threads together: the aggregate rate
    }


def pipeline_costs(cameras: int, images: list, model: Path, steps: int, out_dir: Path) -> dict[str, float]:
    """Run `steps` batches of `cameras` frames through Pipeline.step and the JSONL sink; ms per frame."""
    cfg = common.pipeline_config([f"file:///nonexistent/cam{i}.mp4" for i in range(cameras)], model, None,
                                 max_batch=cameras)
    pipe = build_pipeline(cfg, sinks=[])  # sources are built but never started: we feed the batches
    reports: list[BatchReport] = []
    pipe.on_batch(lambda out: reports.append(out.report))
    sink = JsonlSink(out_dir)
    sink_ms: list[float] = []
    warmup = 2
    try:
        for k in range(warmup + steps):
            frames = tuple(common.make_frame(c, k, images[(k + 7 * c) % len(images)]) for c in range(cameras))
            results = pipe.step(Batch(frames))
            t0 = time.perf_counter()
            sink.write(results)
            sink_ms.append((time.perf_counter() - t0) * 1e3)
    finally:
        sink.close()
        pipe.sinks.close()
        pipe.engine.close()
    reports, sink_ms = reports[warmup:], sink_ms[warmup:]
    per = 1.0 / cameras

    def med(values: list[float]) -> float:
        return common.summarize_ms(values).median_ms * per

    return {
        "preprocess": med([r.preprocess_ms for r in reports]),
        "inference": med([r.infer_ms for r in reports]),
        "postprocess": med([r.postprocess_ms for r in reports]),
        "tracker": med([r.track_ms for r in reports]),
        "sinks": med(sink_ms),
    }


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--cameras", type=int, default=4, help="N, the multi-camera case")
    ap.add_argument("--steps", type=int, default=30, help="batches timed per case")
    ap.add_argument("--frames", type=int, default=120, help="frames decoded per camera")
    args = ap.parse_args()
    common.setup(args)
    cams = 2 if args.smoke else args.cameras
    steps = 3 if args.smoke else args.steps
    frames = 10 if args.smoke else args.frames
    model = common.pick_model(args.model, args.smoke)
    clips = [common.synthetic_clip(i, seconds=max(2.0, frames / 15)) for i in range(cams)]
    images = common.decode_clip(clips[0], max_frames=frames)

    default_threads = torch.get_num_threads()
    # The N-camera case runs twice more with torch limited to one intra-op thread: on a loaded CPU, torch's
    # OpenMP pool competes with ONNX Runtime's pool and the decode threads for the same cores.
    plan = [(f"{n} cam", n, default_threads) for n in sorted({1, cams})]
    if default_threads > 1:
        plan.append((f"{cams} cam torch1", cams, 1))
    cases: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-stages-") as tmp:
        for label, n, threads in plan:
            torch.set_num_threads(threads)
            costs = {**decode_costs(clips[:n], frames),
                     **pipeline_costs(n, images, model.path, steps, Path(tmp) / label.replace(" ", "_"))}
            costs["total"] = sum(costs[s] for s in STAGES)
            costs["cameras"], costs["torch_threads"] = n, threads
            cases[label] = costs
        torch.set_num_threads(default_threads)
    rows = []
    for stage in (*STAGES, "total"):
        row: dict[str, object] = {"stage": stage}
        for label, costs in cases.items():
            row[f"ms/frame {label}"] = costs[stage]
            row[f"% {label}"] = 100 * costs[stage] / costs["total"]
        rows.append(row)
    common.print_table(f"Per-frame cost by stage ({model.description}; CPU, torch threads {default_threads} "
                       "unless 'torch1'; decode from local files)", rows)
    for label, costs in cases.items():
        print(f"{label}: decode threads together {costs['decode_wall_ms_per_frame']:.2f} ms/frame wall; "
              f"inference-side stages {sum(costs[s] for s in STAGES[2:]):.2f} ms/frame")
    common.write_json(args.json, {
        "benchmark": "stages", **common.metadata(args), "model": model.description, "steps": steps,
        "frames_decoded_per_camera": frames, "cases": list(cases), "ms_per_frame": cases,
    })


if __name__ == "__main__":
    main()
