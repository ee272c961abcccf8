"""CPU path vs GPU path on the same clip: decoded-frame PSNR, input PSNR, matched-box IoU, score diffs, track ids.

    python benchmarks/parity.py [--frames 60] [--model PATH] [--fp32] [--json FILE]

CPU path: PyAV/FFmpeg decode to RGB -> torch preprocessing on the CPU -> TorchScript FP32 on the CPU.
GPU path: NVDEC decode to NV12 -> NV12->RGB + preprocessing on the GPU -> TorchScript (FP16 + CUDA graphs
unless --fp32) on the GPU. Both postprocess with the same thresholds. The clip is a synthetic scene with
objects (rtsp_worker.sim.synthetic); the model defaults to models/synth_det.pt2.
Prints "needs CUDA" and exits 0 where CUDA or PyNvVideoCodec is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _gpu_common import decode_file, gpu_unavailable_reason, model_path, nv12_decoder

from rtsp_worker.config import ModelConfig
from rtsp_worker.detection.postprocess import postprocess
from rtsp_worker.detection.preprocess import Preprocessor, nv12_to_rgb
from rtsp_worker.devices import normalize_device
from rtsp_worker.engines.torchscript import TorchScriptEngine
from rtsp_worker.sim import synthetic
from rtsp_worker.sources.decoders import CpuDecoder
from rtsp_worker.types import Detections, Frame

RESULTS = Path(__file__).resolve().parent / "results" / "gpu-parity.json"
BATCH = 8


def psnr(a: torch.Tensor, b: torch.Tensor, peak: float) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else float(10 * torch.log10(torch.tensor(peak**2 / mse)))


def run_path(frames_src: list, device: torch.device, engine: TorchScriptEngine, conf: float, iou: float):
    """Batches of frames -> (model inputs on CPU, detections on CPU) for the whole clip."""
    # The model's conventions (channel order, value range, letterbox placement), not only its size.
    pre = Preprocessor(engine.info.spec, BATCH, device, dtype=engine.input_dtype)
    inputs, dets = [], []
    for start in range(0, len(frames_src), BATCH):
        chunk = frames_src[start : start + BATCH]
        frames = [Frame(0, start + i, 0.0, d.image, d.height, d.width, d.pixel_format,
                        colorimetry=d.colorimetry) for i, d in enumerate(chunk)]
        x, letterbox = pre(frames)
        d = postprocess(engine.infer(x), letterbox, conf=conf, iou=iou).to("cpu")
        dets.append(Detections(d.boxes, d.scores, d.class_ids, d.batch_index + start))
        inputs.append(x.float().cpu())
    return torch.cat(inputs), Detections(*(torch.cat([getattr(d, f) for d in dets]) for f in
                                           ("boxes", "scores", "class_ids", "batch_index")))


def match(cpu: Detections, gpu: Detections, min_iou: float = 0.5) -> dict:
    """Best same-image, same-class GPU box for each CPU box (vectorized over all boxes of the clip)."""
    if len(cpu) == 0 or len(gpu) == 0:
        return {"cpu_boxes": len(cpu), "gpu_boxes": len(gpu), "matched": 0}
    iou = box_iou(cpu.boxes, gpu.boxes)
    same = (cpu.batch_index[:, None] == gpu.batch_index[None, :]) & (cpu.class_ids[:, None] == gpu.class_ids[None, :])
    best, idx = (iou * same).max(1)
    ok = best >= min_iou
    score_diff = (cpu.scores[ok] - gpu.scores[idx[ok]]).abs()
    matched_iou = best[ok]
    return {
        "cpu_boxes": len(cpu), "gpu_boxes": len(gpu), "matched": int(ok.sum()),
        "unmatched_cpu": int((~ok).sum()), "unmatched_gpu": len(gpu) - int(torch.unique(idx[ok]).numel()),
        "iou_mean": float(matched_iou.mean()) if ok.any() else None,
        "iou_median": float(matched_iou.median()) if ok.any() else None,
        "iou_min": float(matched_iou.min()) if ok.any() else None,
        "score_diff_mean": float(score_diff.mean()) if ok.any() else None,
        "score_diff_max": float(score_diff.max()) if ok.any() else None,
    }


def track_ids(dets: Detections, frames: int) -> list[list[int]]:
    """Per frame, the sorted ids of the confirmed tracks an IouTracker (defaults) reports for one camera."""
    from rtsp_worker.config import TrackerConfig
    from rtsp_worker.tracking.tracker import IouTracker

    tracker = IouTracker(TrackerConfig(), 1, torch.device("cpu"))
    cam, inferred = torch.zeros(1, dtype=torch.int64), torch.ones(1, dtype=torch.bool)
    out = []
    for i in range(frames):  # one frame at a time, as a camera delivers them (a benchmark, not the hot path)
        d = dets.select(dets.batch_index == i)
        d = Detections(d.boxes, d.scores, d.class_ids, torch.zeros_like(d.batch_index))
        out.append(sorted(tracker.update(cam, d, inferred).track_ids.tolist()))
    return out


def same_frames(a: list[list[int]], b: list[list[int]]) -> float:
    """Fraction of frames whose track id lists are identical."""
    return sum(x == y for x, y in zip(a, b)) / max(1, len(a))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--fp32", action="store_true", help="GPU engine in FP32 (isolates decode/preprocess)")
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--iou", type=float, default=0.45)
    ap.add_argument("--json", type=Path, default=None, help=f"results file (default {RESULTS} on a GPU)")
    ap.add_argument("--simulate-on-cpu", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    simulate = args.simulate_on_cpu
    reason = gpu_unavailable_reason()
    if reason is not None and not simulate:
        print(f"parity: needs CUDA and PyNvVideoCodec ({reason}); nothing to compare here")
        sys.exit(0)
    # `cuda` normalized to `cuda:<current>`: what the engine's and the decoder's tensors report.
    gpu = normalize_device("cpu" if simulate else "cuda")
    cpu = normalize_device("cpu")
    if simulate:
        print("SIMULATION: 'GPU path' on the CPU with PyAV NV12 standing in for NVDEC; not a GPU result")

    with tempfile.TemporaryDirectory() as tmp:
        scene = synthetic.make_scene(seed=7, frames=args.frames, width=640, height=360)
        clip = Path(tmp) / "scene.mp4"
        synthetic.encode_mp4((rgb for rgb, _ in synthetic.render(scene)), clip, scene.fps, scene.width, scene.height)
        path, label = model_path(args.model, Path(tmp))

        cpu_frames = decode_file(clip, lambda s: CpuDecoder(s, pixel_format="rgb24"))
        gpu_frames = decode_file(clip, lambda s: nv12_decoder(s, gpu, simulate))
        if len(cpu_frames) != len(gpu_frames):
            raise SystemExit(f"parity: CPU decoded {len(cpu_frames)} frames, GPU {len(gpu_frames)}")

        # Decoded-frame parity: the GPU path's NV12 -> RGB against FFmpeg's rgb24.
        frame_psnr = []
        for c, g in zip(cpu_frames, gpu_frames):
            rgb = nv12_to_rgb(g.image[None], g.height, g.width, g.colorimetry)[0].round().permute(1, 2, 0).cpu()
            frame_psnr.append(psnr(rgb, c.image, 255.0))

        eng_cpu = TorchScriptEngine(ModelConfig(path=path), cpu, BATCH)
        eng_gpu = TorchScriptEngine(ModelConfig(path=path, fp16=not args.fp32, cuda_graphs=True), gpu, BATCH)
        x_cpu, d_cpu = run_path(cpu_frames, cpu, eng_cpu, args.conf, args.iou)
        x_gpu, d_gpu = run_path(gpu_frames, gpu, eng_gpu, args.conf, args.iou)

    results = {
        "device": "SIMULATION on CPU" if simulate else torch.cuda.get_device_name(gpu),
        "model": label, "frames": len(cpu_frames), "gpu_engine": "fp32" if args.fp32 or simulate else "fp16+graphs",
        "decoded_psnr_db": {"min": min(frame_psnr), "mean": sum(frame_psnr) / len(frame_psnr)},
        # Peak: the model input's own range (1 for [0, 1] models, 255 for 0-255 ones, more once normalized).
        "input_psnr_db": psnr(x_gpu, x_cpu, float(x_cpu.max() - x_cpu.min()) or 1.0),
        "detections": match(d_cpu, d_gpu),
        "track_ids_same_frames": same_frames(track_ids(d_cpu, len(cpu_frames)), track_ids(d_gpu, len(gpu_frames))),
        "thresholds": {"conf": args.conf, "iou": args.iou},
    }
    print(json.dumps(results, indent=2))
    out = args.json if args.json is not None else (None if simulate else RESULTS)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
