"""An untrained YOLOv8-like detector written here, for benchmarks on machines without ultralytics.

Same building blocks and widths as YOLOv8n/s (conv-BN-SiLU, C2f, SPPF, a PAN neck, decoupled heads with
distribution-focal box regression over strides 8/16/32), so its cost per image is close to the real
architecture, and the same output layout (B, 4 + nc, N): cx, cy, w, h in input pixels, then sigmoid class
scores. With PyTorch's default initialisation the class scores sit near 0.5, so nearly every anchor is a
candidate: the worst case for postprocessing. `scripts/make_benchmark_models.py` makes the real
ultralytics architecture when ultralytics is installed; the benchmarks prefer that one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

# widths of the five stages and repeats of the four C2f blocks of the backbone
SCALES = {
    "tiny": ((8, 16, 16, 32, 32), (1, 1, 1, 1)),
    "n": ((16, 32, 64, 128, 256), (1, 2, 2, 1)),
    "s": ((32, 64, 128, 256, 512), (1, 2, 2, 1)),
}
REG_MAX = 16
STRIDES = (8, 16, 32)


class Conv(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1, self.cv2, self.add = Conv(c, c, 3), Conv(c, c, 3), shortcut

    def forward(self, x: Tensor) -> Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """Split, a chain of bottlenecks whose every output is kept, concatenate, fuse."""

    def __init__(self, cin: int, cout: int, n: int, shortcut: bool) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1 = Conv(cin, 2 * self.c)
        self.cv2 = Conv((2 + n) * self.c, cout)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: Tensor) -> Tensor:
        ys = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            ys.append(m(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class SPPF(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = Conv(c, c // 2), Conv(c // 2 * 4, c)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv2(torch.cat(y, 1))


class YoloLike(nn.Module):
    """YOLOv8-style backbone, PAN neck and decoupled DFL head; forward returns (B, 4 + nc, N)."""

    def __init__(self, nc: int = 80, scale: str = "n") -> None:
        super().__init__()
        (w0, w1, w2, w3, w4), (d0, d1, d2, d3) = SCALES[scale]
        self.nc = nc
        self.stem = nn.Sequential(Conv(3, w0, 3, 2), Conv(w0, w1, 3, 2), C2f(w1, w1, d0, True))
        self.p3 = nn.Sequential(Conv(w1, w2, 3, 2), C2f(w2, w2, d1, True))
        self.p4 = nn.Sequential(Conv(w2, w3, 3, 2), C2f(w3, w3, d2, True))
        self.p5 = nn.Sequential(Conv(w3, w4, 3, 2), C2f(w4, w4, d3, True), SPPF(w4))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n4 = C2f(w4 + w3, w3, d0, False)
        self.n3 = C2f(w3 + w2, w2, d0, False)
        self.down3 = Conv(w2, w2, 3, 2)
        self.o4 = C2f(w2 + w3, w3, d0, False)
        self.down4 = Conv(w3, w3, 3, 2)
        self.o5 = C2f(w3 + w4, w4, d0, False)
        c2, c3 = max(16, w2 // 4, REG_MAX * 4), max(w2, min(nc, 100))
        self.box = nn.ModuleList(
            nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * REG_MAX, 1)) for c in (w2, w3, w4)
        )
        self.cls = nn.ModuleList(
            nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for c in (w2, w3, w4)
        )
        self.register_buffer("proj", torch.arange(REG_MAX, dtype=torch.float32), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        p5 = self.p5(p4)
        n4 = self.n4(torch.cat((self.up(p5), p4), 1))
        o3 = self.n3(torch.cat((self.up(n4), p3), 1))
        o4 = self.o4(torch.cat((self.down3(o3), n4), 1))
        o5 = self.o5(torch.cat((self.down4(o4), p5), 1))
        boxes, scores = [], []
        for i, (f, stride) in enumerate(zip((o3, o4, o5), STRIDES)):
            b, _, h, w = f.shape
            dist = self.box[i](f).view(b, 4, REG_MAX, h * w).softmax(2)
            ltrb = (dist * self.proj.view(1, 1, REG_MAX, 1)).sum(2)  # (B, 4, HW) in grid cells
            gy, gx = torch.meshgrid(torch.arange(h, dtype=f.dtype), torch.arange(w, dtype=f.dtype), indexing="ij")
            anchor = torch.stack((gx.reshape(-1), gy.reshape(-1))) + 0.5  # (2, HW)
            xy1, xy2 = anchor - ltrb[:, :2], anchor + ltrb[:, 2:]
            boxes.append(torch.cat(((xy1 + xy2) / 2, xy2 - xy1), 1) * stride)
            scores.append(self.cls[i](f).view(b, self.nc, h * w).sigmoid())
        return torch.cat((torch.cat(boxes, 2), torch.cat(scores, 2)), 1)


def export_yolo_like(path: Path, input_size: tuple[int, int], scale: str = "n", nc: int = 80, seed: int = 0) -> Path:
    """Export an untrained YoloLike to ONNX: dynamic batch, fixed input size, class names in metadata."""
    from rtsp_worker.engines.export import export_onnx

    torch.manual_seed(seed)
    model = YoloLike(nc, scale).eval()
    props = {"names": str({i: str(i) for i in range(nc)}), "imgsz": str(list(input_size)), "stride": "32",
             "task": "detect", "batch": "1", "description": f"untrained YOLOv8{scale}-like (benchmarks/yolo_like.py)"}
    return export_onnx(model, path, input_size, props)
