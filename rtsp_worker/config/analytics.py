"""`cameras[].lines` and `cameras[].zones`: counting lines and zones, checked for shape when loaded.

The segment-crossing test below only validates a polygon once, at load, on a few Python floats; the
per-frame geometry (anchors, signed distances, point in polygon over every track of a batch) is
`rtsp_worker/analytics/geometry.py`, on tensors.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from rtsp_worker.config.base import StrictModel, check_name

# Box anchor names are supervision's `sv.Position` values (CENTER_OF_MASS needs a mask: not offered).
Anchor = Literal["CENTER", "CENTER_LEFT", "CENTER_RIGHT", "TOP_CENTER", "TOP_LEFT", "TOP_RIGHT", "BOTTOM_LEFT",
                 "BOTTOM_CENTER", "BOTTOM_RIGHT"]
Units = Literal["pixels", "fractions"]
Point = tuple[float, float]

_UNITS = "pixels: source-frame pixels; fractions: fractions of the frame's width and height (0 to 1)."
_CLASSES = "Only these class names or ids (null: every class)."


def _check_units(points: list[Point] | tuple[Point, ...], units: str) -> None:
    if units == "fractions" and any(not (0.0 <= v <= 1.0) for p in points for v in p):
        raise ValueError("units: fractions needs every coordinate in [0, 1]")


def _segments_cross(p: Point, q: Point, r: Point, s: Point) -> bool:
    """Whether segments pq and rs share a point (touching counts)."""

    def orient(a: Point, b: Point, c: Point) -> float:
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

    def on(a: Point, b: Point, c: Point) -> bool:  # c on segment ab, given collinear
        return min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])

    d1, d2, d3, d4 = orient(r, s, p), orient(r, s, q), orient(p, q, r), orient(p, q, s)
    if ((d1 > 0 > d2) or (d1 < 0 < d2)) and ((d3 > 0 > d4) or (d3 < 0 < d4)):
        return True
    return ((d1 == 0 and on(r, s, p)) or (d2 == 0 and on(r, s, q)) or (d3 == 0 and on(p, q, r))
            or (d4 == 0 and on(p, q, s)))


class LineConfig(StrictModel):
    """A counting line: a track's anchor crossing segment A->B is one event (once per track and direction)."""

    name: str = Field(..., description="The line's name in events and metrics (unique per camera; the "
                      "camera name rule applies).")
    points: tuple[Point, Point] = Field(..., description="A and B, in `units`.")
    units: Units = Field("pixels", description=_UNITS)
    directions: tuple[str, str] = Field(
        ("in", "out"), description="Names of a crossing from the left of A->B to its right (on screen, "
        "walking from A to B), and of the opposite crossing."
    )
    classes: list[int | str] | None = Field(None, description="Count only these class names or ids (null: all).")
    anchor: Anchor = Field("BOTTOM_CENTER", description="Point of the box that has to cross (a supervision "
                           "sv.Position name).")
    margin: float = Field(2.0, ge=0, le=1000, description="Hysteresis, source-frame pixels: the anchor must be "
                          "this far past the line to count (a track wobbling on it does not).")
    speed_over: float | None = Field(None, gt=0, description="A crossing faster than this (the camera's "
                                     "`calibration.speed_unit`) is also a `speeding` event; needs a calibration.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        return check_name(v, "line")

    @model_validator(mode="after")
    def _check(self) -> LineConfig:
        _check_units(self.points, self.units)
        (ax, ay), (bx, by) = self.points
        if ax == bx and ay == by:
            raise ValueError(f"line {self.name!r} has zero length (both points are {list(self.points[0])})")
        if self.directions[0] == self.directions[1]:
            raise ValueError(f"line {self.name!r}: the two direction names must differ")
        return self


class ZoneConfig(StrictModel):
    """A zone: enter/exit events per track, occupancy per class, dwell time per track."""

    name: str = Field(..., description="The zone's name in events and metrics (unique per camera; the "
                      "camera name rule applies).")
    polygon: list[Point] = Field(..., min_length=3, max_length=64, description="3 to 64 vertices in order, "
                                 "in `units`; the polygon must not cross itself.")
    units: Units = Field("pixels", description=_UNITS)
    classes: list[int | str] | None = Field(None, description=_CLASSES)
    anchor: Anchor = Field("BOTTOM_CENTER", description="Point of the box that decides inside (a supervision "
                           "sv.Position name).")
    margin: float = Field(2.0, ge=0, le=1000, description="Hysteresis, source-frame pixels: enter when this far "
                          "inside, exit when this far outside.")
    loiter_s: float | dict[str, float] | None = Field(
        None, description="A `loiter` event, once per visit, when a track has been inside this long (seconds of "
        "stream time), while it is still inside; a number for every class or per class name "
        "(`{person: 30, car: 300}`; classes not named never loiter)."
    )
    max_objects: int | None = Field(None, ge=0, description="A `crowded` event when more tracks than this are "
                                    "inside for `min_duration_s`.")
    min_duration_s: float = Field(0.0, ge=0, description="How long the zone must stay over `max_objects` before "
                                  "`crowded` fires, seconds of stream time.")
    clear_below: int | None = Field(None, ge=0, description="A `cleared` event once a crowded zone holds this many "
                                    "tracks or fewer (null: `max_objects`).")
    speed_over: float | None = Field(None, gt=0, description="A `speeding` event, once per visit, when a track "
                                     "inside moves faster than this (the camera's `calibration.speed_unit`); "
                                     "needs a calibration.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        return check_name(v, "zone")

    @model_validator(mode="after")
    def _check(self) -> ZoneConfig:
        pts = self.polygon
        _check_units(pts, self.units)
        n = len(pts)
        for i in range(n):
            for j in range(i + 1, n):
                if j == i + 1 or (i == 0 and j == n - 1):
                    continue  # neighbouring edges share a vertex
                if _segments_cross(pts[i], pts[(i + 1) % n], pts[j], pts[(j + 1) % n]):
                    raise ValueError(f"zone {self.name!r}: polygon is self-intersecting (edge {i}-{(i + 1) % n} "
                                     f"crosses edge {j}-{(j + 1) % n})")
        if isinstance(self.loiter_s, dict):
            bad = [k for k, v in self.loiter_s.items() if not v > 0]
            if bad:
                raise ValueError(f"zone {self.name!r}: loiter_s for {bad[0]!r} must be a positive number of seconds")
        elif self.loiter_s is not None and not self.loiter_s > 0:
            raise ValueError(f"zone {self.name!r}: loiter_s must be a positive number of seconds")
        if self.clear_below is not None:
            if self.max_objects is None:
                raise ValueError(f"zone {self.name!r}: clear_below needs max_objects")
            if self.clear_below > self.max_objects:
                raise ValueError(f"zone {self.name!r}: clear_below ({self.clear_below}) must be at most "
                                 f"max_objects ({self.max_objects})")
        area2 = sum(pts[i][0] * pts[(i + 1) % n][1] - pts[(i + 1) % n][0] * pts[i][1] for i in range(n))
        if area2 == 0:
            raise ValueError(f"zone {self.name!r}: polygon has zero area")
        return self
