"""Tiny ONNX models exported on the fly, for unit tests of the engine contract (not of accuracy)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rtsp_worker.engines.export import export_onnx


class TinyYolo(nn.Module):
    """A conv net with the ultralytics output layout (B, 4 + nc, N): boxes in input pixels, sigmoid scores."""

    def __init__(self, nc: int = 3, bad_layout: bool = False) -> None:
        super().__init__()
        self.nc, self.bad = nc, bad_layout
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU(),
                                  nn.Conv2d(8, 4 + nc, 3, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)  # (B, 4 + nc, H/8, W/8)
        b, _, h, w = y.shape
        gy, gx = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
        cx = (gx.reshape(1, -1) + 0.5) * 8 + y[:, 0].reshape(b, -1)
        cy = (gy.reshape(1, -1) + 0.5) * 8 + y[:, 1].reshape(b, -1)
        wh = torch.exp(y[:, 2:4].reshape(b, 2, -1).clamp(max=4)) * 16
        scores = torch.sigmoid(y[:, 4:].reshape(b, self.nc, -1))
        out = torch.cat([cx.unsqueeze(1), cy.unsqueeze(1), wh, scores], dim=1)
        return out.transpose(1, 2) if self.bad else out


def export_tiny(path: Path, size=(64, 96), nc: int = 3, dynamic_batch: bool = True, names: list[str] | None = None,
                bad_layout: bool = False, fixed_batch: int = 1) -> Path:
    torch.manual_seed(0)
    model = TinyYolo(nc, bad_layout).eval()
    meta = {"names": str(dict(enumerate(names)))} if names is not None else None
    return export_onnx(model, path, size, meta, dynamic_batch=dynamic_batch,
                       example_batch=fixed_batch if not dynamic_batch else 2)
