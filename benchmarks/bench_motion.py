"""Motion gate: 16 synthetic cameras whose objects are present a quarter of the time, with and without the
gate, side by side in one run (issue 30).

    python benchmarks/bench_motion.py [--frames 160] [--cameras 16] [--json FILE] [--smoke]

Each camera is a synthetic scene (rtsp_worker/sim/synthetic.py, busy=0.25: objects only in the first 2 s of
every 8 s; lighting drift and sensor noise all the time), rendered once and held as the CPU decoder holds
frames (native yuv420p av.VideoFrames). Both variants run the same batches of one frame per camera through
the same BatchStep (trained models/synth_det.onnx unless --model) and tracker; the gated variant asks the
motion gate (default settings) which frames are inferred. Reported per variant: detector runs, process CPU
seconds per camera per stream second (a core share at the stream's rate), processed frames per second of
wall time, and MOTA / IDF1 / ID switches against the scenes' ground truth.
"""

from __future__ import annotations

import time

import av
import numpy as np
from common import RESULTS, metadata, model_keys, parser, pick_model, print_table, setup, write_json

from rtsp_worker.config import MotionConfig, parse_config
from rtsp_worker.detection.motion_gate import MotionGate
from rtsp_worker.engines import load_engine
from rtsp_worker.sim.synthetic import make_scene, render
from rtsp_worker.step import BatchStep
from rtsp_worker.tracking.evaluation import score_many
from rtsp_worker.types import NATIVE, Frame

FPS = 10.0


def scenes(n_cams: int, frames: int, size: tuple[int, int]) -> tuple[list[list[Frame]], list[np.ndarray]]:
    """Per camera: its frames (native yuv420p) and its MOT ground truth."""
    all_frames, gts = [], []
    w, h = size
    for cam in range(n_cams):
        scene = make_scene(1000 + cam, frames=frames, width=w, height=h, fps=FPS, busy=0.25, busy_period_s=8.0)
        fr, gt = [], []
        for i, (img, rows) in enumerate(render(scene)):
            vf = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            fr.append(Frame(row=cam, seq=i, ts=i / FPS, image=vf, height=h, width=w, pixel_format=NATIVE,
                            pts=i / FPS))
            gt.append(rows)
        all_frames.append(fr)
        gts.append(np.concatenate(gt) if gt else np.zeros((0, 10)))
    return all_frames, gts


def run(cfg, engine, frames: list[list[Frame]], gate: MotionGate | None) -> tuple[dict, list[np.ndarray]]:
    n_cams, n = len(frames), len(frames[0])
    step = BatchStep.build(cfg, engine, n_cams)
    names = [c.name for c in cfg.cameras]
    hyps: list[list[tuple]] = [[] for _ in range(n_cams)]
    inferred = 0
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        batch = [frames[c][i] for c in range(n_cams)]
        due, still = [True] * n_cams, None
        if gate is not None:
            decision = gate(batch, due)
            due, still = decision.due, decision.still
        inferred += sum(due)
        out = step(batch, names, due, still=still)
        for c, res in enumerate(out.results):
            for o in res.objects:
                x0, y0, x1, y1 = o.box
                hyps[c].append((i + 1, o.track_id, x0, y0, x1 - x0, y1 - y0))
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    stream_s = n / FPS
    return ({"detector_runs": inferred, "frames": n * n_cams,
             "cpu_per_camera": cpu / n_cams / stream_s, "processed_fps": n * n_cams / wall, "wall_s": wall},
            [np.array(h, dtype=np.float64).reshape(-1, 6) for h in hyps])


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--frames", type=int, default=160, help="frames per camera (10 fps)")
    ap.add_argument("--cameras", type=int, default=16)
    ap.add_argument("--min-area", type=float, default=None, help="motion.min_area (default: the config default)")
    args = ap.parse_args()
    setup(args)
    frames_n, cams = (40, 4) if args.smoke else (args.frames, args.cameras)
    choice = pick_model(args.model, args.smoke)
    size = (640, 360)
    t = time.perf_counter()
    frames, gts = scenes(cams, frames_n, size)
    print(f"rendered {cams} x {frames_n} frames in {time.perf_counter() - t:.1f} s")
    raw = {"cameras": [{"name": f"cam{i}", "url": f"rtsp://bench.invalid/{i}"} for i in range(cams)],
           "model": model_keys(choice.path), "device": "cpu", "batcher": {"max_batch": cams}}
    cfg = parse_config(raw, source="<bench_motion>")
    import torch

    torch.set_num_threads(1)  # as the worker does on the CPU
    engine = load_engine(cfg.model, torch.device("cpu"), cams)
    rows, scores = [], {}
    for variant in ("without gate", "with gate"):
        gate = None
        if variant == "with gate":
            gate = MotionGate("cpu")
            for r in range(cams):
                gate.configure(r, MotionConfig(enabled=True, **({} if args.min_area is None else
                                                                 {"min_area": args.min_area})))
        stats, hyps = run(cfg, engine, frames, gate)
        sc = score_many({f"cam{c}": (gts[c], hyps[c]) for c in range(cams)})["OVERALL"]
        scores[variant] = sc
        rows.append({"variant": variant, **stats, "MOTA": sc["mota"], "IDF1": sc["idf1"],
                     "id_switches": sc["id_switches"]})
    print_table(f"motion gate, {cams} synthetic cameras, objects a quarter of the time ({choice.description})", rows)
    base, gated = rows
    ratio = base["detector_runs"] / max(gated["detector_runs"], 1)
    d_mota = gated["MOTA"] - base["MOTA"]
    print(f"detector runs {ratio:.2f}x fewer with the gate; MOTA {d_mota:+.2f} points "
          f"(target: >= 2x fewer at MOTA within 1 point: {'met' if ratio >= 2 and abs(d_mota) <= 1 else 'NOT met'})")
    write_json(args.json or (None if args.smoke else RESULTS / "motion.json"),
               {**metadata(args, model=choice.description, cameras=cams, frames_per_camera=frames_n, fps=FPS,
                           busy=0.25, busy_period_s=8.0, min_area=args.min_area),
                "rows": rows, "detector_run_ratio": ratio, "mota_delta": d_mota})


if __name__ == "__main__":
    main()
