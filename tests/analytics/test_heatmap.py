"""Heatmap grids (issue 31): counts at known cells, per camera, decay by half-life, reset, the PNG."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch

from rtsp_worker.analytics.heatmap import HeatmapStore, render_png
from rtsp_worker.config import HeatmapConfig

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def boxes_at(points):
    """20 x 40 boxes whose bottom centre is each (x, y)."""
    return torch.tensor([(x - 10, y - 40, x + 10, y) for x, y in points], dtype=torch.float32).reshape(-1, 4)


@pytest.mark.parametrize("device", DEVICES)
def test_counts_land_in_known_cells_per_camera(device):
    store = HeatmapStore(device)
    store.configure({"a": HeatmapConfig(cell=16), "b": HeatmapConfig(cell=32), "plain": None})
    for t in range(3):
        # a: two tracks at cells (row 2, col 1) and (row 10, col 39); b (wider cells): one at (row 1, col 0);
        # plain: no heatmap, ignored.
        store.add(["a", "b", "plain"], [(640, 360), (320, 240), (640, 360)], [t, t, t],
                  torch.tensor([0, 0, 1, 2]), boxes_at([(20, 40), (639, 170), (5, 63), (100, 100)]))
    a, b = store.counts("a"), store.counts("b")
    assert a.shape == (23, 40) and b.shape == (8, 10)
    assert a[2, 1] == 3 and a[10, 39] == 3 and a.sum() == 6
    assert b[1, 0] == 3 and b.sum() == 3
    assert store.counts("plain") is None
    assert store.reset("a") and store.counts("a").sum() == 0 and store.counts("b").sum() == 3
    assert not store.reset("plain")


def test_bottom_edge_on_the_last_row_and_outside_boxes_stay_in_the_grid():
    store = HeatmapStore()
    store.configure({"a": HeatmapConfig(cell=10)})
    store.add(["a"], [(100, 50)], [0.0], torch.tensor([0, 0]), boxes_at([(50, 50), (-30, 80)]))
    c = store.counts("a")
    assert c.shape == (5, 10) and c[4, 5] == 1 and c[4, 0] == 1


def test_half_life_decays_in_stream_time():
    store = HeatmapStore()
    store.configure({"a": HeatmapConfig(cell=16, half_life_s=2.0)})
    store.add(["a"], [(64, 64)], [10.0], torch.tensor([0]), boxes_at([(8, 8)]))
    store.add(["a"], [(64, 64)], [14.0], torch.tensor([0]), boxes_at([(40, 40)]))  # 2 half-lives later
    c = store.counts("a")
    assert c[0, 0] == pytest.approx(0.25) and c[2, 2] == pytest.approx(1.0)


def test_png_is_a_valid_rgb_image_of_the_grid():
    counts = np.zeros((3, 4), np.float32)
    counts[1, 2] = 5
    png = render_png(counts, scale=2)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    w, h, depth, color = struct.unpack(">IIBB", png[16:26])
    assert (w, h, depth, color) == (8, 6, 8, 2)
    idat = png[png.index(b"IDAT") + 4: png.index(b"IEND") - 8]
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(6, 1 + 8 * 3)[:, 1:].reshape(6, 8, 3)
    assert (rows[2, 4] == (255, 255, 255)).all() and (rows[0, 0] == (0, 0, 40)).all()
