"""Shared helpers of bench_gpu.py and parity.py: clips, decoders, a stand-in model, timing.

`--simulate-on-cpu` (both scripts) runs the GPU code path on the CPU with PyAV's NV12 output standing in
for NVDEC's, so the scripts' own logic can be checked without a GPU; its numbers are not GPU numbers and
the scripts label them SIMULATION.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import av
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import decode_file  # noqa: E402, F401 - shared with the CPU benchmarks

from rtsp_worker.sources.decoders import CpuDecoder, nvdec_unavailable_reason  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "synth_det.pt2"


def gpu_unavailable_reason() -> str | None:
    """Why the GPU path cannot run here (None: it can)."""
    return nvdec_unavailable_reason()


def nv12_decoder(stream: av.video.stream.VideoStream, device: torch.device, simulate: bool):
    if simulate:  # PyAV decoding to NV12 on the CPU, shaped like NvdecDecoder's output
        return CpuDecoder(stream, pixel_format="nv12")
    from rtsp_worker.sources.nvdec import NvdecDecoder

    return NvdecDecoder(stream, device)


class StandInDetector(nn.Module):
    """A small untrained conv net with the ultralytics output layout, for when no trained model exists.

    The output grid is a buffer for one input size, so the exported program moves to any device whole.
    """

    def __init__(self, input_hw: tuple[int, int] = (384, 640), nc: int = 4) -> None:
        super().__init__()
        c = [3, 16, 32, 64, 64, 4 + nc]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(c[i], c[i + 1], 3, 2, 1), nn.BatchNorm2d(c[i + 1]), nn.SiLU()]
        layers.append(nn.Conv2d(c[4], c[5], 3, 2, 1))  # stride 32
        self.body = nn.Sequential(*layers)
        self.nc = nc
        h, w = -(-input_hw[0] // 32), -(-input_hw[1] // 32)
        gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                                indexing="ij")
        self.register_buffer("grid", torch.stack((gx.flatten(), gy.flatten())), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x).flatten(2)
        cxcy = (self.grid + 0.5 + y[:, :2].tanh()) * 32
        wh = y[:, 2:4].sigmoid() * 256
        return torch.cat((cxcy, wh, y[:, 4:].sigmoid()), 1)


def model_path(requested: Path | None, workdir: Path, input_hw: tuple[int, int] = (384, 640)) -> tuple[Path, str]:
    """The model to run and a label: the requested/project model, else a stand-in exported here (.pt2)."""
    from rtsp_worker.engines.export import export_program

    for p in (requested, DEFAULT_MODEL):
        if p is not None and p.exists():
            return p, p.name
    if requested is not None:
        raise SystemExit(f"{requested}: model file not found")
    torch.manual_seed(0)
    path = export_program(StandInDetector(input_hw).eval(), workdir / "stand_in.pt2", input_hw,
                          {"imgsz": str(list(input_hw))})
    return path, "stand-in (untrained, models/synth_det.pt2 missing)"


def time_ms(fn: Callable[[], object], device: torch.device, iters: int, warmup: int = 3) -> float:
    """Median wall time of `fn` in ms, synchronizing the device around each call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def print_table(title: str, header: list[str], rows: list[list[object]]) -> None:
    cells = [[str(h) for h in header]] + [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for j, r in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if j == 0:
            print("  " + "  ".join("-" * w for w in widths))
