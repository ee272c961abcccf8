"""Rules on hand-made tracks (issue 31): loiter, per-class thresholds, crowding with hysteresis, stream time,
the ground-plane calibration (homography round trip, speed of a known motion) and speeding events."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from rtsp_worker.analytics.events import Analytics
from rtsp_worker.config import CalibrationConfig, CameraConfig, ConfigError, LineConfig, ZoneConfig
from rtsp_worker.config.calibration import apply_homography
from rtsp_worker.types import Event, Frame

CLASSES = ("person", "car", "bike")
FPS = 10.0
SIZE = (640, 360)
# A road seen at an angle: a 10 m x 40 m rectangle of ground.
CAL = {"image": [[100, 350], [540, 350], [400, 100], [240, 100]], "world": [[0, 0], [10, 0], [10, 40], [0, 40]]}


def zone(**kw) -> ZoneConfig:
    return ZoneConfig(name=kw.pop("name", "lobby"), polygon=[(200, 100), (440, 100), (440, 300), (200, 300)], **kw)


class Runner:
    """One camera; `frame(tracks)` takes (id, cls, x, y_bottom) and advances stream time by 1/FPS.

    `wall_scale` < 1 compresses the decode wall-clock (a file played faster than real time): the rules must
    follow the pts all the same."""

    def __init__(self, cam: CameraConfig, wall_scale: float = 1.0, pts: bool = True) -> None:
        self.a = Analytics([cam], CLASSES, expire=[5], capacity=32)
        self.seq, self.wall_scale, self.pts = 0, wall_scale, pts
        self.events: list[Event] = []
        self.objects: np.ndarray = np.zeros((0, 3))

    def frame(self, tracks, boxes=None) -> list[Event]:
        s = self.seq
        self.seq += 1
        f = Frame(row=0, seq=s, ts=1000.0 + s / FPS * self.wall_scale, image=torch.zeros(1), height=SIZE[1],
                  width=SIZE[0], pts=(5.0 + s / FPS) if self.pts else None)
        rows = [(0, tid, cls, x - 10, y - 40, x + 10, y) for tid, cls, x, y in tracks]
        if boxes is not None:
            rows = boxes
        t = torch.tensor(rows, dtype=torch.float64).reshape(-1, 7)
        new = self.a.update([f], t[:, 0].long(), t[:, 1].long(), t[:, 2].long(), t[:, 3:7])[0]
        self.objects = self.a.kinematics
        self.events += new
        return new

    def hold(self, seconds: float, tracks) -> None:
        for _ in range(round(seconds * FPS)):
            self.frame(tracks)


def of(events, rule):
    return [e for e in events if e.trigger == rule]


@pytest.mark.parametrize("wall_scale", [1.0, 0.1])
def test_loiter_fires_once_while_inside_then_again_on_a_new_visit(wall_scale):
    r = Runner(CameraConfig(name="c0", url="rtsp://h/c0", zones=[zone(loiter_s=2.0)]), wall_scale=wall_scale)
    r.hold(1.0, [(1, 0, 100, 200)])  # outside
    r.hold(1.9, [(1, 0, 320, 200)])  # inside, not yet 2 s
    assert of(r.events, "loiter") == [] and len(of(r.events, "zone_enter")) == 1
    r.hold(3.0, [(1, 0, 320, 200)])
    loiter = of(r.events, "loiter")
    assert len(loiter) == 1, "once per visit"
    e = loiter[0]
    assert e.kind == "zone" and e.name == "lobby" and e.direction == "loiter" and e.track_id == 1
    assert e.dwell_s == pytest.approx(2.0, abs=0.05)  # stream time, whatever the wall-clock did
    assert e.to_json_dict()["rule"] == "loiter" and e.id
    r.hold(0.5, [(1, 0, 100, 200)])  # leaves: exit with the whole dwell
    exits = of(r.events, "zone_exit")
    assert len(exits) == 1 and exits[0].dwell_s == pytest.approx(4.9, abs=0.05)
    r.hold(2.5, [(1, 0, 320, 200)])  # back again: a new visit may loiter again
    assert len(of(r.events, "loiter")) == 2


def test_per_class_loiter_thresholds_and_unlisted_classes_never_loiter():
    r = Runner(CameraConfig(name="c0", url="rtsp://h/c0", zones=[zone(loiter_s={"person": 1.0, "car": 3.0})]))
    r.hold(4.0, [(1, 0, 300, 200), (2, 1, 340, 200), (3, 2, 380, 200)])
    loiter = {e.track_id: e.dwell_s for e in of(r.events, "loiter")}
    assert set(loiter) == {1, 2}
    assert loiter[1] == pytest.approx(1.0, abs=0.05) and loiter[2] == pytest.approx(3.0, abs=0.05)


def test_loiter_unknown_class_is_a_config_error_naming_the_field():
    cam = CameraConfig(name="c0", url="rtsp://h/c0", zones=[zone(loiter_s={"dog": 3})])
    with pytest.raises(ConfigError, match=r"camera 'c0', field 'zones.0.loiter_s': unknown class 'dog'"):
        Analytics([cam], CLASSES, expire=[5])


def test_crowded_after_min_duration_and_cleared_with_hysteresis():
    r = Runner(CameraConfig(name="c0", url="rtsp://h/c0",
                            zones=[zone(max_objects=2, min_duration_s=1.0, clear_below=1)]))
    three = [(i, 0, 260 + 40 * i, 200) for i in range(1, 4)]
    two = three[:2] + [(3, 0, 100, 200)]  # track 3 stands outside the zone
    one = three[:1] + [(2, 0, 100, 150), (3, 0, 100, 200)]
    r.hold(0.5, three)  # over the limit, but not for min_duration_s
    r.hold(0.3, two)  # back to 2: the clock starts over
    r.hold(0.8, three)
    assert of(r.events, "crowded") == []
    r.hold(0.5, three)  # now 1.3 s over
    crowded = of(r.events, "crowded")
    assert len(crowded) == 1 and crowded[0].count == 3 and crowded[0].track_id == -1
    assert crowded[0].point == (320.0, 200.0)  # the zone's centre
    r.hold(1.0, two)  # 2 is not <= clear_below (1): still crowded, no flicker
    assert of(r.events, "cleared") == []
    r.hold(2.0, three)
    assert len(of(r.events, "crowded")) == 1
    r.hold(0.2, one)
    cleared = of(r.events, "cleared")
    assert len(cleared) == 1 and cleared[0].count == 1
    assert r.a.rule_totals() == {("c0", "lobby", "crowded"): 1, ("c0", "lobby", "cleared"): 1}
    assert "rules=lobby:cleared=1,crowded=1" in r.a.summary(0)


def test_stream_clock_bridges_a_pts_jump_back_with_wall_clock():
    r = Runner(CameraConfig(name="c0", url="rtsp://h/c0", zones=[zone(loiter_s=100.0)]))
    times = r.a.clock.times([Frame(0, 0, 50.0, None, 1, 1, pts=10.0), Frame(0, 1, 50.1, None, 1, 1, pts=10.1),
                             Frame(0, 2, 50.3, None, 1, 1, pts=0.0), Frame(0, 3, 50.4, None, 1, 1, pts=0.1)])
    assert times == pytest.approx([10.0, 10.1, 10.3, 10.4])
    no_pts = r.a.clock.times([Frame(1 - 1, 4, 50.9, None, 1, 1)])
    assert no_pts == pytest.approx([10.9])


# -- calibration ----------------------------------------------------------------------------------------------
def test_homography_round_trip_of_the_four_points():
    cal = CalibrationConfig(**CAL)
    h = cal.matrix()
    assert np.allclose(apply_homography(h, np.array(cal.image)), np.array(cal.world), atol=1e-6)
    assert np.allclose(apply_homography(np.linalg.inv(h), np.array(cal.world)), np.array(cal.image), atol=1e-6)


@pytest.mark.parametrize("bad, match", [
    ({"image": [[0, 0], [100, 100], [200, 200], [0, 300]]}, r"calibration.image: points \[0, 1, 2\] lie on one line"),
    ({"world": [[0, 0], [5, 0], [10, 0], [0, 4]]}, r"calibration.world: points \[0, 1, 2\] lie on one line"),
    ({"image": [[0, 0], [100, 0], [100, 1e-3], [0, 1.2e-3]]}, "lie on one line|ill-conditioned"),
    ({"units": "fractions"}, r"calibration.image: units: fractions"),
])
def test_calibration_errors_name_the_field(bad, match):
    with pytest.raises(ValidationError, match=match):
        CalibrationConfig(**(CAL | bad))


def test_speed_over_without_calibration_is_refused():
    with pytest.raises(ValidationError, match=r"zones.0.speed_over \('lobby'\) needs a calibration"):
        CameraConfig(name="c0", url="rtsp://h/c0", zones=[zone(speed_over=20)])
    with pytest.raises(ValidationError, match="clear_below .* must be at most max_objects"):
        zone(max_objects=2, clear_below=3)


def _world_path(cal: CalibrationConfig, start, velocity, seconds):
    """Bottom-centre pixels of an object moving on the ground in a straight line at constant velocity."""
    hinv = np.linalg.inv(cal.matrix())
    ts = np.arange(round(seconds * FPS)) / FPS
    world = np.asarray(start) + ts[:, None] * np.asarray(velocity)
    return apply_homography(hinv, world)


@pytest.mark.parametrize("unit, factor", [("km/h", 3.6), ("m/s", 1.0)])
def test_known_straight_line_motion_gives_its_speed_within_2_percent(unit, factor):
    cal = CalibrationConfig(**CAL, speed_unit=unit)
    r = Runner(CameraConfig(name="c0", url="rtsp://h/c0", calibration=cal))
    velocity = np.array([1.5, 8.0])  # m/s, diagonal, away from the camera (perspective shrinks it)
    true = float(np.hypot(*velocity)) * factor
    speeds = []
    for x, y in _world_path(cal, (2.0, 2.0), velocity, 4.0):
        r.frame([(7, 1, x, y)])
        speeds.append(r.objects[0, 2])
    assert math.isnan(speeds[0])  # one sighting: no speed yet
    assert speeds[-1] == pytest.approx(true, rel=0.02)
    assert np.allclose(r.objects[0, :2], (2.0 + 1.5 * 3.9, 2.0 + 8.0 * 3.9), atol=0.05)


def test_line_crossing_carries_speed_and_speeding_fires_on_lines_and_zones_once():
    cal = CalibrationConfig(**CAL)  # km/h
    road_zone = ZoneConfig(name="road", polygon=[(100, 350), (540, 350), (400, 100), (240, 100)], speed_over=30)
    cam = CameraConfig(name="c0", url="rtsp://h/c0", calibration=cal, zones=[road_zone],
                       lines=[LineConfig(name="gate", points=((0, 220), (640, 220)), speed_over=50)])
    r = Runner(cam)
    for x, y in _world_path(cal, (5.0, 1.0), (0.0, 12.0), 3.0):  # 43.2 km/h
        r.frame([(3, 1, x, y)])
    crossings = of(r.events, "line")
    assert len(crossings) == 1 and crossings[0].speed == pytest.approx(43.2, rel=0.02)
    assert [e.name for e in of(r.events, "speeding")] == ["road"]  # over 30 in the zone, under 50 at the line
    fast = Runner(cam)
    for x, y in _world_path(cal, (5.0, 1.0), (0.0, 20.0), 1.8):  # 72 km/h
        fast.frame([(4, 1, x, y)])
    sp = of(fast.events, "speeding")
    assert sorted(e.kind for e in sp) == ["line", "zone"]
    assert all(e.speed == pytest.approx(72.0, rel=0.02) for e in sp)
    assert fast.a.rule_totals() == {("c0", "gate", "speeding"): 1, ("c0", "road", "speeding"): 1}


def test_uncalibrated_camera_reports_no_world_or_speed():
    r = Runner(CameraConfig(name="c0", url="rtsp://h/c0", zones=[zone()]))
    r.hold(0.3, [(1, 0, 320, 200)])
    assert not r.a.ground.any and np.isnan(r.objects).all()
    assert all(e.speed is None and "speed" not in e.to_json_dict() for e in r.events)


# -- warnings for likely mistakes -----------------------------------------------------------------------------
def test_pixel_units_with_coordinates_all_at_most_1_warn(caplog):
    with caplog.at_level("WARNING"):
        CameraConfig(name="c0", url="rtsp://h/c0", lines=[LineConfig(name="door", points=((0.1, 0.5), (0.9, 0.5)))],
                     zones=[ZoneConfig(name="ok", polygon=[(10, 10), (100, 10), (100, 100)]),
                            ZoneConfig(name="tiny", polygon=[(0, 0), (1, 0), (1, 1)])])
    msgs = [r.getMessage() for r in caplog.records]
    assert any("field 'lines.0' ('door')" in m and "units: fractions" in m for m in msgs)
    assert any("field 'zones.1' ('tiny')" in m for m in msgs)
    assert not any("'ok'" in m for m in msgs)
    caplog.clear()
    with caplog.at_level("WARNING"):
        CameraConfig(name="c0", url="rtsp://h/c0",
                     lines=[LineConfig(name="door", points=((0.1, 0.5), (0.9, 0.5)), units="fractions")])
    assert not caplog.records


def test_zone_or_line_outside_the_frame_warns_once_at_the_first_frame(caplog):
    cam = CameraConfig(name="c0", url="rtsp://h/c0", lines=[LineConfig(name="far", points=((700, 10), (900, 10)))],
                       zones=[zone(), ZoneConfig(name="below", polygon=[(0, 400), (100, 400), (100, 500)])])
    r = Runner(cam)
    with caplog.at_level("WARNING"):
        r.hold(0.3, [(1, 0, 320, 200)])
    msgs = [m.getMessage() for m in caplog.records if "outside" in m.getMessage()]
    assert len(msgs) == 2
    assert "field 'lines.0' ('far'): entirely outside the 640x360 frame" in msgs[0]
    assert "field 'zones.1' ('below')" in msgs[1]


def test_rule_event_kinds_are_what_on_lists_name():
    from typing import get_args

    from rtsp_worker.config import EventKind

    assert {"loiter", "crowded", "cleared", "speeding"} <= set(get_args(EventKind))
    r = Runner(CameraConfig(name="c0", url="rtsp://h/c0", zones=[zone(loiter_s=0.5, max_objects=0)]))
    r.hold(1.0, [(1, 0, 320, 200)])
    r.hold(0.2, [(1, 0, 100, 200)])
    assert [e.trigger for e in r.events] == ["zone_enter", "crowded", "loiter", "zone_exit", "cleared"]
    assert set(get_args(EventKind)) >= {e.trigger for e in r.events}
