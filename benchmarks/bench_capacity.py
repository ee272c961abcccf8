"""`rtsp-worker plan` vs a real run, and priorities under overload, over the real RTSP server (issue 30).

    python benchmarks/bench_capacity.py [--counts 4 8 16] [--high 4] [--seconds 20] [--json FILE] [--smoke]

For each camera count: N synthetic 640x360 15 fps H.264 clips served by the GStreamer RTSP server, the first
`--high` cameras `priority: high`, the rest normal except the last quarter `low`. First the plan
(rtsp_worker/tools/plan.py: probe, model and decode measured here), then the worker itself for `--seconds`
after a warm-up: per camera the inferred rate it got (`inferred` of its status: the frames the detector ran
on) next to the plan's prediction and its target.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import common
import torch
from common import RESULTS, metadata, parser, pick_model, print_table, setup, write_json

from rtsp_worker.pipeline import build_pipeline
from rtsp_worker.tools.plan import make_plan, measure_decode, measure_step, probe_cameras


def _priority(i: int, n: int, high: int) -> str:
    if i < high:
        return "high"
    return "low" if i >= n - n // 4 else "normal"


def measure(n: int, clips: list[Path], model: Path, high: int, warmup: float, seconds: float) -> dict:
    mounts = {f"cam{i}": clips[i % len(clips)] for i in range(n)}
    with common.rtsp_server(mounts) as server:
        cfg = common.pipeline_config([server.url(m) for m in mounts], model, None, max_batch=n)
        cams = [c.model_copy(update={"priority": _priority(i, n, high)}) for i, c in enumerate(cfg.cameras)]
        cfg = cfg.model_copy(update={"cameras": cams})
        t0 = time.perf_counter()
        streams = probe_cameras(cfg.enabled_cameras, 5.0, None)
        decode, sample = measure_decode(list(streams.values()))
        cost = measure_step(cfg, torch.device("cpu"), sample)
        plan = make_plan(cfg, streams, cost, decode, torch.device("cpu"), os.cpu_count() or 1)
        plan_s = time.perf_counter() - t0
        pipe = build_pipeline(cfg)
        runner = threading.Thread(target=pipe.run, name="inference", daemon=True)
        runner.start()
        try:
            common.wait_streaming(pipe, 30, 0.2)
            time.sleep(warmup)
            a = {c.name: (c.processed, c.inferred) for c in pipe.status().cameras}
            t_a = time.monotonic()
            time.sleep(seconds)
            st = pipe.status()
            dt = time.monotonic() - t_a
        finally:
            pipe.stop()
            runner.join(timeout=30)
    predicted = {c["name"]: c for c in plan["cameras"]}
    rows = []
    for c in st.cameras:
        p = predicted[c.name]
        rows.append({"cameras": n, "camera": c.name, "priority": c.priority, "target_fps": p["target_fps"],
                     "planned_fps": p["predicted_fps"], "planned_x": p["multiplier"],
                     "measured_fps": (c.inferred - a[c.name][1]) / dt, "measured_x": c.multiplier,
                     "processed_fps": (c.processed - a[c.name][0]) / dt})
    return {"cameras": n, "plan_seconds": plan_s, "plan": plan, "rows": rows,
            "measured_capacity_fps": st.capacity_fps, "loadavg": common.loadavg()}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--counts", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--high", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=8.0)
    args = ap.parse_args()
    setup(args)
    counts = [2] if args.smoke else args.counts
    seconds, warmup = (3.0, 2.0) if args.smoke else (args.seconds, args.warmup)
    choice = pick_model(args.model, args.smoke)
    clips = [common.synthetic_clip(i, 10.0) for i in range(4)]
    results = []
    for n in counts:
        r = measure(n, clips, choice.path, min(args.high, n), warmup, seconds)
        results.append(r)
        print_table(f"{n} cameras: plan vs run (inferred fps per camera), load {r['loadavg']}", r["rows"])
        by_prio: dict[str, list[dict]] = {}
        for row in r["rows"]:
            by_prio.setdefault(row["priority"], []).append(row)
        for prio, rs in by_prio.items():
            print(f"  {prio}: mean measured {sum(x['measured_fps'] for x in rs) / len(rs):.2f} fps, planned "
                  f"{sum(x['planned_fps'] or 0 for x in rs) / len(rs):.2f}, target "
                  f"{sum(x['target_fps'] or 0 for x in rs) / len(rs):.2f}")
    write_json(args.json or (None if args.smoke else RESULTS / "capacity.json"),
               {**metadata(args, model=choice.description, seconds=seconds, warmup=warmup), "results": results})


if __name__ == "__main__":
    main()
