"""`cameras[].calibration`: a ground-plane homography from four image points and their world positions.

The homography is solved here, once at load, on 4 points in numpy (the direct linear transform with
Hartley's normalisation), so a bad calibration is refused with an error naming the field before any camera
opens; the analytics stage maps each track's ground anchor through the 3x3 matrix as one tensor op.
"""

from __future__ import annotations

import itertools
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from rtsp_worker.config.base import StrictModel

Point = tuple[float, float]
SpeedUnit = Literal["km/h", "m/s"]
SPEED_FACTOR = {"km/h": 3.6, "m/s": 1.0}  # metres per second -> the configured unit

# Refuse a homography whose normalised system is this badly conditioned: four points that almost lie on a
# line (or a world square measured as a sliver) give speeds that swing wildly with a pixel of box jitter.
# A steep road view converging to a near-vanishing point measures ~350; a 100 x 0.001 px sliver ~4e5.
MAX_CONDITION = 1e4


def _normalising(points: np.ndarray) -> np.ndarray:
    """Hartley's similarity: centroid to the origin, mean distance sqrt(2)."""
    c = points.mean(0)
    d = np.sqrt(((points - c) ** 2).sum(1)).mean()
    s = np.sqrt(2) / d if d > 0 else 1.0
    return np.array([[s, 0, -s * c[0]], [0, s, -s * c[1]], [0, 0, 1]], dtype=np.float64)


def solve_homography(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, float]:
    """(H, condition): the 3x3 H with dst ~ H @ src for 4 point pairs, and the condition number of the
    normalised 8x8 system (large: the points are nearly degenerate)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ts, td = _normalising(src), _normalising(dst)
    s = (ts @ np.c_[src, np.ones(4)].T).T
    d = (td @ np.c_[dst, np.ones(4)].T).T
    a = np.zeros((8, 8))
    b = np.zeros(8)
    for i in range(4):
        x, y = s[i, 0], s[i, 1]
        u, v = d[i, 0], d[i, 1]
        a[2 * i] = [x, y, 1, 0, 0, 0, -u * x, -u * y]
        a[2 * i + 1] = [0, 0, 0, x, y, 1, -v * x, -v * y]
        b[2 * i], b[2 * i + 1] = u, v
    cond = float(np.linalg.cond(a))
    if not np.isfinite(cond) or cond > 1e12:
        return np.full((3, 3), np.nan), float("inf")
    h = np.append(np.linalg.solve(a, b), 1.0).reshape(3, 3)
    h = np.linalg.inv(td) @ h @ ts
    return h / h[2, 2], cond


def apply_homography(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    p = np.c_[np.asarray(points, np.float64), np.ones(len(points))] @ h.T
    return p[:, :2] / p[:, 2:3]


def _collinear_triple(points: list[Point]) -> tuple[int, int, int] | None:
    pts = np.asarray(points, np.float64)
    scale = max(float(np.ptp(pts, 0).max()), 1e-12)
    for i, j, k in itertools.combinations(range(4), 3):
        a, b, c = pts[i], pts[j], pts[k]
        area2 = abs((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))
        if area2 <= 1e-6 * scale * scale:
            return i, j, k
    return None


class CalibrationConfig(StrictModel):
    """A ground-plane calibration: four points on the ground in the image and where they are in metres.

    With it every reported track gets a world position (metres, in the frame of `world`) and a speed.
    """

    image: tuple[Point, Point, Point, Point] = Field(..., description="Four points on the ground plane in the "
                                                     "image, in `units`; no three on one line.")
    world: tuple[Point, Point, Point, Point] = Field(..., description="The same four points on the ground, "
                                                     "in metres (any origin and axes; no three on one line).")
    units: Literal["pixels", "fractions"] = Field("pixels", description="Units of `image`: source-frame pixels, "
                                                  "or fractions of the frame's width and height (0 to 1).")
    speed_unit: SpeedUnit = Field("km/h", description="Unit of reported speeds and of `speed_over` thresholds "
                                  "on this camera's lines and zones.")
    smoothing_s: float = Field(0.5, gt=0, le=10, description="Time constant, seconds, of the exponential "
                               "smoothing of each track's ground velocity (longer: steadier, slower to react).")

    @model_validator(mode="after")
    def _check(self) -> CalibrationConfig:
        if self.units == "fractions" and any(not (0.0 <= v <= 1.0) for p in self.image for v in p):
            raise ValueError("calibration.image: units: fractions needs every coordinate in [0, 1]")
        for field in ("image", "world"):
            triple = _collinear_triple(list(getattr(self, field)))
            if triple is not None:
                raise ValueError(f"calibration.{field}: points {list(triple)} lie on one line (the four points "
                                 "must span an area of the ground)")
        _, cond = solve_homography(np.asarray(self.image), np.asarray(self.world))
        if cond > MAX_CONDITION:
            raise ValueError(f"calibration: the homography from 'image' to 'world' is ill-conditioned "
                             f"(condition {cond:.3g} > {MAX_CONDITION:.0g}): spread the four points over the "
                             "ground and check that image and world list them in the same order")
        return self

    def matrix(self) -> np.ndarray:
        """3x3 float64: `image` units -> world metres."""
        return solve_homography(np.asarray(self.image), np.asarray(self.world))[0]


class HeatmapConfig(StrictModel):
    """Where tracks go: their anchors accumulated on a coarse grid of the frame."""

    cell: int = Field(16, ge=2, le=512, description="Grid cell size, source-frame pixels.")
    half_life_s: float | None = Field(None, gt=0, description="Older counts fade with this half-life, seconds of "
                                      "stream time (null: they never fade).")
    write_every_s: float | None = Field(None, gt=0, description="Write the heatmap as PNG to "
                                        "`<output.dir>/<camera>/heatmaps/` this often, seconds (null: never).")
    anchor: Literal["CENTER", "BOTTOM_CENTER"] = Field("BOTTOM_CENTER", description="Point of each box counted.")
