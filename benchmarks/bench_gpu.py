"""GPU data path benchmark: NVDEC decode, GPU preprocessing, torch engine, end to end.

    python benchmarks/bench_gpu.py [--smoke] [--json FILE] [--model PATH] [--streams 1,4,16]

Needs CUDA and PyNvVideoCodec (`pip install .[gpu]`). Without them it says why and exits 0 with --smoke
(CI), 1 otherwise. Measures, on a synthetic 1080p H.264 clip made here:
- NVDEC decode fps with 1, 8, 32 and 64 streams decoding at once (one thread each) and the GPU's NVDEC
  engine count (GetDecoderCaps);
- GPU letterbox preprocessing of NV12 frames (the fused kernel where cupy works), ms per batch 1/8/32/64;
- the torch engine, ms per batch 1/8/32/64, with CUDA graphs and eagerly (FP16 unless --fp32);
- end to end: N streams decoding into latest-frame slots, one loop batching the fresh frames through
  preprocess -> engine -> postprocess -> one device-to-host copy; processed fps.
Prints tables and writes JSON (default benchmarks/results/gpu-bench.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _gpu_common import (
    decode_file,
    gpu_unavailable_reason,
    model_path,
    nv12_decoder,
    print_table,
    time_ms,
)

from rtsp_worker.config import ModelConfig
from rtsp_worker.detection.postprocess import postprocess
from rtsp_worker.detection.preprocess import Preprocessor
from rtsp_worker.devices import normalize_device
from rtsp_worker.engines.torchscript import TorchScriptEngine
from rtsp_worker.sim.clips import write_test_clip
from rtsp_worker.types import Frame

RESULTS = Path(__file__).resolve().parent / "results" / "gpu-bench.json"


def bench_decode(clip: Path, streams: int, device: torch.device, simulate: bool) -> dict:
    """`streams` threads each decode the whole clip at once; total and per-stream fps."""
    counts = [0] * streams
    errors: list[Exception] = []

    def work(i: int) -> None:
        try:
            counts[i] = len(decode_file(clip, lambda s: nv12_decoder(s, device, simulate)))
        except Exception as e:  # noqa: BLE001 - re-raised in the main thread after join
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    total = sum(counts)
    return {"streams": streams, "frames": total, "seconds": wall, "fps": total / wall,
            "fps_per_stream": total / wall / streams}


def bench_end_to_end(clip: Path, streams: int, device: torch.device, simulate: bool, engine: TorchScriptEngine,
                     max_batch: int) -> dict:
    """Decoder threads fill latest-frame slots; this thread batches whatever is fresh through the model."""
    cond = threading.Condition()
    latest: dict[int, object] = {}
    decoded = [0] * streams
    finished = [False] * streams
    errors: list[Exception] = []

    def work(i: int) -> None:
        try:
            with av.open(str(clip)) as c:
                stream = c.streams.video[0]
                dec = nv12_decoder(stream, device, simulate)
                for p in c.demux(stream):
                    for img in dec.decode(p):
                        with cond:
                            latest[i] = img
                            decoded[i] += 1
                            cond.notify()
                dec.close()
        except Exception as e:  # noqa: BLE001 - re-raised in the main thread
            errors.append(e)
        finally:
            with cond:
                finished[i] = True
                cond.notify()

    # The model's conventions (channel order, value range, letterbox placement), not only its size.
    pre = Preprocessor(engine.info.spec, max_batch, device, dtype=engine.input_dtype)
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(streams)]
    processed = batches = 0
    seq = [0] * streams
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    while True:
        with cond:
            cond.wait_for(lambda: bool(latest) or all(finished), timeout=5.0)
            if not latest and all(finished):
                break
            fresh = list(latest.items())[:max_batch]
            for cam, _ in fresh:
                del latest[cam]
        frames = []
        for cam, img in fresh:
            frames.append(Frame(cam, seq[cam], time.time(), img.image, img.height, img.width, img.pixel_format,
                                colorimetry=img.colorimetry))
            seq[cam] += 1
        x, letterbox = pre(frames)
        dets = postprocess(engine.infer(x), letterbox, conf=0.25, iou=0.45)
        dets.to("cpu")  # the one device-to-host copy per batch
        processed += len(frames)
        batches += 1
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return {"streams": streams, "decoded": sum(decoded), "processed": processed, "batches": batches,
            "seconds": wall, "processed_fps": processed / wall, "decoded_fps": sum(decoded) / wall,
            "mean_batch": processed / max(1, batches)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="short run; exit 0 where no GPU exists")
    ap.add_argument("--json", type=Path, default=None, help=f"results file (default {RESULTS} on a GPU)")
    ap.add_argument("--model", type=Path, default=None, help=".pt2 or TorchScript model (default models/synth_det.pt2)")
    ap.add_argument("--streams", default="1,8,32,64", help="stream counts for the decode benchmark")
    ap.add_argument("--batches", default="1,8,32,64", help="batch sizes for the engine and preprocess benchmarks")
    ap.add_argument("--e2e-streams", default="8,64", help="camera counts for the end-to-end benchmark")
    ap.add_argument("--seconds", type=float, default=10.0, help="clip length (30 fps 1080p)")
    ap.add_argument("--fp32", action="store_true", help="run the engine in FP32 instead of FP16")
    ap.add_argument("--simulate-on-cpu", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    simulate = args.simulate_on_cpu
    reason = gpu_unavailable_reason()
    if reason is not None and not simulate:
        print(f"bench_gpu: cannot run here: {reason} (needs CUDA and PyNvVideoCodec)")
        sys.exit(0 if args.smoke else 1)
    # `cuda` normalized to `cuda:<current>`: what the engine's and the decoder's tensors report.
    device = normalize_device("cpu" if simulate else "cuda")
    streams = [int(s) for s in args.streams.split(",")]
    seconds = 2.0 if args.smoke else args.seconds
    size = (640, 360) if simulate else (1920, 1080)
    e2e_streams = [int(s) for s in args.e2e_streams.split(",")]
    batch_sizes = [int(b) for b in args.batches.split(",")]
    if args.smoke:
        streams = [s for s in streams if s <= 4] or [1]
        e2e_streams = [s for s in e2e_streams if s <= 4] or [2]
        batch_sizes = [b for b in batch_sizes if b <= 4] or [1]
    iters = 5 if args.smoke else 50

    results: dict = {
        "device": "SIMULATION on CPU (not GPU numbers)" if simulate else torch.cuda.get_device_name(device),
        "host": platform.node(), "torch": torch.__version__, "smoke": args.smoke,
    }
    if simulate:
        print("SIMULATION: GPU path on the CPU with PyAV NV12 for NVDEC; these are not GPU numbers")
    with tempfile.TemporaryDirectory() as tmp:
        clip = write_test_clip(Path(tmp) / "clip.mp4", seconds=seconds, fps=30, size=size)
        results["clip"] = {"width": size[0], "height": size[1], "fps": 30, "seconds": seconds, "codec": "h264"}
        if not simulate:
            from rtsp_worker.sources.nvdec import decoder_caps

            caps = decoder_caps("h264", device.index)
            results["nvdec_caps"] = caps
            print(f"{results['device']}: NVDEC engines {caps.get('num_decoder_engines', '?')}")

        # -- decode
        rows = []
        results["decode"] = []
        for n in streams:
            r = bench_decode(clip, n, device, simulate)
            results["decode"].append(r)
            rows.append([n, r["frames"], r["fps"], r["fps_per_stream"]])
        print_table(f"NVDEC decode, {size[0]}x{size[1]} H.264", ["streams", "frames", "fps total", "fps/stream"], rows)

        # -- engine
        path, label = model_path(args.model, Path(tmp))
        results["model"] = label
        max_batch = max(batch_sizes + e2e_streams)
        engines = {
            "graphs": TorchScriptEngine(ModelConfig(path=path, fp16=not args.fp32, cuda_graphs=True), device, max_batch),
            "eager": TorchScriptEngine(ModelConfig(path=path, fp16=not args.fp32, cuda_graphs=False), device, max_batch),
        }
        info = engines["graphs"].info
        rows = []
        results["engine"] = []
        for b in batch_sizes:
            x = torch.rand(b, 3, *info.input_size, device=device).to(engines["graphs"].input_dtype)
            row = {"batch": b}
            for name, eng in engines.items():
                row[f"{name}_ms"] = time_ms(lambda eng=eng, x=x: eng.infer(x), device, iters)
            results["engine"].append(row)
            rows.append([b, row["graphs_ms"], row["eager_ms"], b / row["graphs_ms"] * 1e3, row["eager_ms"] / row["graphs_ms"]])
        dtype = "fp32" if args.fp32 or simulate else "fp16"
        print_table(f"Torch engine {label}, input {list(info.input_size)}, {dtype}",
                    ["batch", "graphs ms", "eager ms", "img/s (graphs)", "eager/graphs"], rows)

        # -- preprocess
        frames_src = decode_file(clip, lambda s: nv12_decoder(s, device, simulate), max_frames=max(batch_sizes))
        rows = []
        results["preprocess"] = []
        for b in [b for b in batch_sizes if b <= len(frames_src)]:
            pre = Preprocessor(info.spec, b, device, dtype=engines["graphs"].input_dtype)
            frames = [Frame(i, 0, 0.0, d.image, d.height, d.width, d.pixel_format,
                        colorimetry=d.colorimetry) for i, d in enumerate(frames_src[:b])]
            ms = time_ms(lambda pre=pre, frames=frames: pre(frames), device, iters)
            results["preprocess"].append({"batch": b, "ms": ms, "fused_kernel": pre.fused_kernel})
            rows.append([b, ms, ms / b])
        print_table(f"Preprocess NV12 {size[0]}x{size[1]} -> {list(info.input_size)}", ["batch", "ms", "ms/frame"], rows)

        # -- end to end
        rows = []
        results["end_to_end"] = []
        for n in e2e_streams:
            r = bench_end_to_end(clip, n, device, simulate, engines["graphs"], max_batch)
            results["end_to_end"].append(r)
            rows.append([n, r["decoded_fps"], r["processed_fps"], r["mean_batch"]])
        print_table("End to end (decode -> preprocess -> engine -> postprocess -> host)",
                    ["streams", "decoded fps", "processed fps", "mean batch"], rows)
        if device.type == "cuda":
            # torch's own peak (engines, preprocess buffers, decoded frames) and the device-wide use now, which
            # also counts what PyNvVideoCodec and CUDA contexts hold outside torch's allocator.
            free, total = torch.cuda.mem_get_info(device)
            results["gpu_memory_mib"] = {"torch_peak": torch.cuda.max_memory_allocated(device) / 2**20,
                                         "device_used": (total - free) / 2**20, "device_total": total / 2**20}
            print(f"GPU memory: torch peak {results['gpu_memory_mib']['torch_peak']:.0f} MiB, device used "
                  f"{results['gpu_memory_mib']['device_used']:.0f} of {total / 2**20:.0f} MiB")
        for eng in engines.values():
            eng.close()

    out = args.json if args.json is not None else (None if simulate else RESULTS)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
