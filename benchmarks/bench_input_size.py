"""Model input size: square 640x640 vs the camera's aspect rounded to multiples of 32 (384x640 for 16:9).

    .venv/bin/python benchmarks/bench_input_size.py [--frames 60] [--smoke] [--json FILE]

A 640x360 camera frame letterboxed into 640x640 is 44% grey padding; into 384x640 only 6%. Same
weights at both sizes, same clip, batch of one (one camera): preprocess + inference + postprocess per
frame, the two sizes alternating frame by frame. Detection counts (conf 0.25) show whether the smaller
input loses anything. Weights: the project's trained model (its TorchScript state re-exported at both
sizes, since the shipped ONNX has a fixed 384x640 input) when models/synth_det.pt2 exists, else
untrained YOLOv8n (counts then only say how many boxes noise produces).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import common
import torch

from rtsp_worker.detection.postprocess import postprocess  # noqa: E402
from rtsp_worker.detection.preprocess import Preprocessor

SIZES = ((640, 640), (384, 640))
CONF, IOU = 0.25, 0.45


def trained_at(size: tuple[int, int]) -> Path | None:
    """The trained detector re-exported at `size` (ONNX, dynamic batch), or None when it is not there."""
    ts = common.ROOT / "models" / "synth_det.pt2"
    if not ts.exists():
        return None
    out = common.CACHE / "models" / f"synth_det_{size[0]}x{size[1]}_{int(ts.stat().st_mtime)}.onnx"
    if out.exists():
        return out
    sys.path.insert(0, str(common.ROOT / "scripts"))
    try:
        from train_detector import SynthDet  # the architecture; weights come from the .pt2 file
    except Exception as e:  # noqa: BLE001 - any import problem means: fall back to the untrained model
        print(f"cannot import scripts/train_detector.py ({e}); using the untrained model")
        return None
    model = SynthDet().eval()
    try:
        model.load_state_dict(torch.export.load(str(ts)).state_dict)
    except Exception as e:  # noqa: BLE001
        print(f"trained weights do not fit SynthDet() ({str(e).splitlines()[0]}); using the untrained model")
        return None
    from rtsp_worker.engines.export import export_onnx
    from rtsp_worker.sim.synthetic import CLASS_NAMES

    return export_onnx(model, out, size, {"names": str(dict(enumerate(CLASS_NAMES))), "imgsz": str(list(size))})


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--frames", type=int, default=60)
    args = ap.parse_args()
    common.setup(args)
    n_frames = 6 if args.smoke else args.frames
    clip = common.synthetic_clip(1, seconds=max(2.0, n_frames / 15))
    images = common.decode_clip(clip, max_frames=n_frames)
    sizes = ((192, 192), (128, 192)) if args.smoke else SIZES

    models: dict[tuple[int, int], Path] = {}
    description = ""
    if not args.smoke and args.model == "auto":
        for size in sizes:
            path = trained_at(size)
            if path is None:
                break
            models[size] = path
        description = "trained synth_det (same weights, re-exported per size)" if len(models) == len(sizes) else ""
    if not description:
        choices = {size: common.untrained_model(size, smoke=args.smoke) for size in sizes}
        models = {size: c.path for size, c in choices.items()}
        description = choices[sizes[0]].description.rsplit(" ", 1)[0] + " (untrained: counts are noise)"

    engines = {size: common.load_engine(path, 1) for size, path in models.items()}
    pres = {size: Preprocessor(size, 1, torch.device("cpu")) for size in sizes}
    times: dict[tuple[int, int], list[float]] = {s: [] for s in sizes}
    counts: dict[tuple[int, int], int] = {s: 0 for s in sizes}

    def run(size: tuple[int, int], frame) -> int:
        x, lb = pres[size]([frame])
        raw = engines[size].infer(x)
        return len(postprocess(raw, lb, CONF, IOU))

    for i, img in enumerate([images[0], *images]):  # the first frame twice: warm-up
        frame = common.make_frame(0, i, img)
        for size in sizes if i % 2 else sizes[::-1]:  # alternate which size goes first
            t0 = time.perf_counter()
            n = run(size, frame)
            if i:
                times[size].append((time.perf_counter() - t0) * 1e3)
                counts[size] += n
    rows = []
    for (h, w) in sizes:
        t = common.summarize_ms(times[(h, w)])
        pad = 100 * (1 - min(h / 360, w / 640) ** 2 * 640 * 360 / (h * w))
        rows.append({"input": f"{h}x{w}", "padding_%": pad, "ms_per_frame": t.median_ms,
                     "fps": 1e3 / t.median_ms, "detections": counts[(h, w)],
                     "detections_per_frame": counts[(h, w)] / len(times[(h, w)])})
    rows[1]["speedup_vs_square"] = rows[0]["ms_per_frame"] / rows[1]["ms_per_frame"]
    rows[0]["speedup_vs_square"] = 1.0
    common.print_table(f"Input size on a 640x360 clip, batch 1 ({description})", rows)
    for e in engines.values():
        e.close()
    common.write_json(args.json, {
        "benchmark": "input_size", **common.metadata(args), "model": description, "frames": len(images),
        "conf": CONF, "rows": rows, "speedup": rows[1]["speedup_vs_square"],
    })


if __name__ == "__main__":
    main()
