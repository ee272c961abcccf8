"""Unit tests of the analytics stage (rtsp_worker.analytics): lines, zones, their state per track, config errors.

Tracks are given by hand (no detector, no tracker): each case is a path of one or a few boxes.
"""

from __future__ import annotations

import pytest
import torch

from rtsp_worker.analytics.events import Analytics, EventIds
from rtsp_worker.config import CameraConfig, ConfigError, LineConfig, ZoneConfig, parse_config
from rtsp_worker.types import Frame

CLASSES = ("person", "car", "bike")
FPS = 15.0
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def camera(name: str = "c0", lines=(), zones=()) -> CameraConfig:
    return CameraConfig(name=name, url=f"rtsp://127.0.0.1/{name}", lines=list(lines), zones=list(zones))


def hline(y: float = 180.0, x0: float = 0.0, x1: float = 640.0, **kw) -> LineConfig:
    return LineConfig(name=kw.pop("name", "door"), points=((x0, y), (x1, y)), **kw)


def rect_zone(x0=200.0, y0=100.0, x1=440.0, y1=300.0, **kw) -> ZoneConfig:
    return ZoneConfig(name=kw.pop("name", "lobby"), polygon=[(x0, y0), (x1, y0), (x1, y1), (x0, y1)], **kw)


class Runner:
    """Feeds one analytics stage frame by frame; `frame(...)` takes per camera a list of (id, cls, x, y_bottom)."""

    def __init__(self, cams, device="cpu", expire=10, capacity=64) -> None:
        self.a = Analytics(cams, CLASSES, expire=[expire] * len(cams), capacity=capacity, device=device)
        self.seq = [0] * len(cams)
        self.events = []

    def frame(self, tracks_per_cam: dict[int, list[tuple[int, int, float, float]]], size=(640, 360)):
        frames, rows = [], []
        for b, (c, tracks) in enumerate(sorted(tracks_per_cam.items())):
            s = self.seq[c]
            self.seq[c] += 1
            frames.append(Frame(row=c, seq=s, ts=s / FPS, image=torch.zeros(1, dtype=torch.uint8),
                                height=size[1], width=size[0]))
            # A 20 x 40 box whose bottom centre is (x, y).
            rows += [(b, tid, cls, x - 10, y - 40, x + 10, y) for tid, cls, x, y in tracks]
        t = torch.tensor(rows, dtype=torch.float64).reshape(-1, 7)
        out = self.a.update(frames, t[:, 0].long(), t[:, 1].long(), t[:, 2].long(), t[:, 3:7])
        new = [e for per_frame in out for e in per_frame]
        self.events += new
        return new

    def path(self, ys, x=320.0, tid=1, cls=0, cam=0):
        for y in ys:
            self.frame({cam: [] if y is None else [(tid, cls, x, y)]})
        return self.events


def directions(events):
    return [e.direction for e in events]


@pytest.mark.parametrize("device", DEVICES)
def test_one_crossing_counted_once_with_direction(device):
    r = Runner([camera(lines=[hline()])], device)
    ev = r.path(range(100, 301, 20))  # walking down the image: arrives on the right of A->B (left to right)
    assert directions(ev) == ["in"]
    assert (ev[0].kind, ev[0].name, ev[0].track_id, ev[0].class_name) == ("line", "door", 1, "person")
    assert ev[0].frame == 5 and ev[0].point == (320.0, 200.0)  # y=180 (frame 4) is on the line
    r2 = Runner([camera(lines=[hline()])], device)
    assert directions(r2.path(range(300, 99, -20))) == ["out"]


def test_track_that_stops_on_the_line_is_counted_once():
    r = Runner([camera(lines=[hline(margin=3)])])
    # Walks down, stops on the line with +-2 px of jitter for 30 frames, then walks on.
    ys = [120, 140, 160, 175] + [180 + (2 if i % 2 else -2) for i in range(30)] + [200, 220, 240]
    assert directions(r.path(ys)) == ["in"]
    assert r.events[0].frame == 34  # when it left the line, not while it stood on it


def test_crossing_back_counts_each_direction_once_and_wobble_no_more():
    r = Runner([camera(lines=[hline()])])
    ev = r.path([150, 170, 190, 210, 190, 170, 150])  # down, then back up
    assert directions(ev) == ["in", "out"]
    r.path([170, 190, 170, 190, 170, 190, 210, 230])  # wobbles across the line well past the margin
    assert directions(r.events) == ["in", "out"]  # once per track and direction
    r.path([230], tid=2)
    r.path([150], tid=2)
    assert directions(r.events) == ["in", "out", "out"]  # another track counts on its own


def test_lost_and_found_again_on_the_other_side():
    r = Runner([camera(lines=[hline()])], expire=10)
    ev = r.path([120, 140, 160] + [None] * 6 + [220, 240])  # gone for 6 frames (< expire), back below
    assert directions(ev) == ["in"]
    assert ev[0].frame == 9


def test_jump_over_the_line_between_two_skipped_frames():
    r = Runner([camera(lines=[hline()])])
    assert directions(r.path([100, 150, 290])) == ["in"]  # 140 px in one step: nothing seen on the line


def test_passing_beside_a_segment_is_not_a_crossing():
    r = Runner([camera(lines=[hline(x0=200, x1=400)])])
    assert r.path(range(100, 301, 20), x=100) == []  # left of A
    assert directions(r.path(range(100, 301, 20), x=300, tid=2)) == ["in"]
    # Diagonal: from beside the segment to below it, the motion misses A-B -> not counted.
    r.path([150], x=150, tid=3)
    r.path([250], x=260, tid=3)
    assert [e.track_id for e in r.events] == [2]


def test_line_classes_and_anchor():
    line = hline(classes=["car", 2], anchor="TOP_CENTER")
    r = Runner([camera(lines=[line])])
    r.path(range(100, 301, 20), tid=1, cls=0)  # person: not counted
    r.path(range(100, 301, 20), tid=2, cls=1)
    assert [(e.track_id, e.class_name) for e in r.events] == [(2, "car")]
    assert r.events[0].point[1] > 180  # the top of the box crossed, 40 px after the bottom did
    assert r.events[0].point[1] - 40 > 180 - 40


@pytest.mark.parametrize("device", DEVICES)
def test_zone_enter_exit_dwell_and_occupancy(device):
    r = Runner([camera(zones=[rect_zone(classes=["person"])])], device)
    for i in range(40):  # moving right 10 px a frame along y = 200: inside for x in (200, 440)
        r.frame({0: [(1, 0, 100 + 10 * i, 200.0), (2, 1, 100 + 10 * i, 210.0)]})  # track 2 is a car
        if i == 20:
            assert r.a.occupancy(0)[0].tolist() == [1, 0, 0]
    assert [(e.direction, e.track_id, e.frame) for e in r.events] == [("enter", 1, 11), ("exit", 1, 35)]
    assert r.events[1].dwell_s == pytest.approx((35 - 11) / FPS)
    assert r.a.occupancy(0).sum() == 0
    assert r.a.summary(0) == "zones=lobby:0"


def test_zone_border_does_not_flicker_and_first_seen_inside_enters():
    r = Runner([camera(zones=[rect_zone(margin=3)])])
    r.path([300 + (2 if i % 2 else -2) for i in range(20)], x=300)  # jitters on the bottom edge
    assert r.events == []
    r.path([200], x=300, tid=2)  # appears in the middle
    assert [(e.direction, e.track_id) for e in r.events] == [("enter", 2)]


def test_zone_exit_when_the_track_is_lost():
    r = Runner([camera(zones=[rect_zone()])], expire=5)
    r.path([200, 200, 200], x=300)
    r.path([None] * 6)  # camera keeps delivering frames, the track is gone
    exits = [e for e in r.events if e.direction == "exit"]
    assert len(exits) == 1 and exits[0].lost and exits[0].frame == 8
    assert exits[0].dwell_s == pytest.approx(2 / FPS)  # enter at frame 0, last seen at frame 2
    assert r.a.occupancy(0).sum() == 0


def test_zone_in_fractions_survives_a_resolution_change():
    frac = rect_zone(0.25, 0.25, 0.75, 0.9, name="frac", units="fractions")
    pix = rect_zone(160, 90, 480, 324, name="pix")  # the same zone at 640x360, in pixels
    r = Runner([camera(zones=[frac, pix])])
    r.frame({0: [(1, 0, 400.0, 200.0)]}, size=(640, 360))  # inside both
    assert sorted(e.name for e in r.events) == ["frac", "pix"]
    r.events.clear()
    # The camera now sends 1280x720: x=600, y=500 is inside the fraction zone (320..960, 180..648) and
    # outside the old pixel numbers.
    r.frame({0: [(2, 0, 600.0, 500.0)]}, size=(1280, 720))
    assert [(e.name, e.direction) for e in r.events] == [("frac", "enter")]


def test_cameras_of_one_batch_keep_separate_state():
    cams = [camera("a", lines=[hline()]), camera("b", lines=[hline(y=100, name="gate", directions=("down", "up"))])]
    r = Runner(cams)
    for y in (80, 120, 160, 200):  # the same track id on both cameras
        r.frame({0: [(1, 0, 320.0, y)], 1: [(1, 0, 320.0, y)]})
    assert sorted((e.camera, e.name, e.direction, e.frame) for e in r.events) == [
        ("a", "door", "in", 3), ("b", "gate", "down", 1)]
    assert r.a.crossing_totals() == {("a", "door", "in", "person"): 1, ("b", "gate", "down", "person"): 1}
    assert r.a.summary(1) == "lines=gate:down=1,up=0"


def test_event_ids_count_per_camera_and_survive_rebuilds_of_the_stage():
    cams = [camera("a", lines=[hline()]), camera("b", zones=[rect_zone()])]
    cfg = parse_config({"cameras": [{"name": "x", "url": "rtsp://127.0.0.1/x"}], "model": {"path": "m.onnx"}})
    r = Runner(cams)
    r.a = Analytics(cams, CLASSES, expire=[10, 10], capacity=2 * cfg.tracker.max_tracks, event_ids=EventIds("RUN"))
    for y in (80, 120, 160, 200, 240):  # a: one crossing; b: enter (first seen inside)
        r.frame({0: [(1, 0, 320.0, y), (2, 0, 300.0, y)], 1: [(1, 0, 320.0, 250.0)]})
    assert sorted((e.camera, e.id) for e in r.events) == [("a", "RUN-a-1"), ("a", "RUN-a-2"), ("b", "RUN-b-1")]
    assert r.events[-1].to_json_dict()["id"] == r.events[-1].id
    # Camera a removed (its row freed), then added again on another row: its ids go on, never repeat.
    r.a = Analytics.for_rows(cfg, [None, cams[1]], CLASSES, r.a)
    r.a = Analytics.for_rows(cfg, [cams[0], cams[1]], CLASSES, r.a)
    for y in (80, 200):
        r.frame({0: [(7, 0, 320.0, y)]})
    assert r.events[-1].id == "RUN-a-3"


def test_full_table_skips_new_tracks_and_counts_them():
    r = Runner([camera(lines=[hline()])], capacity=2)
    for y in (150, 210):
        r.frame({0: [(1, 0, 100.0, y), (2, 0, 300.0, y), (3, 0, 500.0, y)]})
    assert sorted(e.track_id for e in r.events) == [1, 2]
    assert int(r.a.overflow) == 2


# -- config -----------------------------------------------------------------------------------------------


def _cfg(cam: dict) -> dict:
    return {"cameras": [{"name": "cam0", "url": "rtsp://h/x", **cam}], "model": {"path": "m.onnx"}}


@pytest.mark.parametrize(
    ("cam", "expected"),
    [
        ({"lines": [{"name": "door", "points": [[10, 10], [10, 10]]}]},
         "cams.yaml: camera 'cam0', field 'lines.0': line 'door' has zero length"),
        ({"zones": [{"name": "z", "polygon": [[0, 0], [100, 100], [100, 0], [0, 100]]}]},
         "cams.yaml: camera 'cam0', field 'zones.0': zone 'z' polygon is self-intersecting"),
        ({"zones": [{"name": "z", "polygon": [[0, 0], [1, 1], [2, 2]]}]}, "zone 'z': polygon has zero area"),
        ({"lines": [{"name": "d", "points": [[0, 0.5], [1.5, 0.5]], "units": "fractions"}]},
         "field 'lines.0': units: fractions needs every coordinate in [0, 1]"),
        ({"lines": [{"name": "d", "points": [[0, 0], [1, 1]], "anchor": "MIDDLE"}]}, "field 'lines.0.anchor'"),
        ({"lines": [{"name": "d", "points": [[0, 0], [1, 1]]}, {"name": "d", "points": [[0, 1], [1, 1]]}]},
         "duplicate name 'd'"),
    ],
)
def test_config_errors_name_file_camera_and_field(cam, expected):
    with pytest.raises(ConfigError) as err:
        parse_config(_cfg(cam), source="cams.yaml")
    assert expected.replace("zone 'z' polygon", "zone 'z': polygon") in str(err.value)
    assert str(err.value).startswith("cams.yaml: ")


def test_unknown_class_name_names_file_camera_and_field():
    cfg = parse_config(_cfg({"zones": [{"name": "z", "polygon": [[0, 0], [9, 0], [9, 9]], "classes": ["dog"]}]}),
                       source="cams.yaml")
    with pytest.raises(ConfigError, match=r"^cams.yaml: camera 'cam0', field 'zones.0.classes': unknown class "
                                          r"'dog' \(the model's classes: person, car, bike\)"):
        Analytics.from_config(cfg, CLASSES)


def test_lines_and_zones_from_defaults_and_none_without_them():
    raw = _cfg({})
    raw["cameras"].append({"name": "cam1", "url": "rtsp://h/y", "lines": []})
    raw["defaults"] = {"lines": [{"name": "d", "points": [[0, 0.5], [1, 0.5]], "units": "fractions"}]}
    cfg = parse_config(raw, source="cams.yaml")
    assert [len(c.lines) for c in cfg.cameras] == [1, 0]  # a camera's own list replaces the default
    a = Analytics.from_config(cfg, CLASSES)
    assert a is not None and a.names == ["cam0", "cam1"]
    assert Analytics.from_config(parse_config(_cfg({})), CLASSES) is None


def test_cli_exits_with_config_error_for_an_unknown_class(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    model = Path(__file__).resolve().parents[2] / "models" / "synth_det.onnx"
    if not model.exists():
        pytest.skip(f"{model} is missing")
    cfg = tmp_path / "cameras.yaml"
    cfg.write_text(yaml.safe_dump({
        "cameras": [{"name": "gate", "url": "rtsp://127.0.0.1:9/x",
                     "lines": [{"name": "door", "points": [[0, 10], [100, 10]], "classes": ["person", "dog"]}]}],
        "model": {"path": str(model)}, "output": {"dir": str(tmp_path / "out")},
    }))
    proc = subprocess.run([sys.executable, "-m", "rtsp_worker.cli", "run", str(cfg), "--duration", "1"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{cfg}: camera 'gate', field 'lines.0.classes': unknown class 'dog'" in proc.stderr
