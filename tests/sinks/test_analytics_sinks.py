"""Events in the sinks (issue 15): the SinkRunner hands them over, JSONL and Redis write them as their own
record type, the annotated video draws lines and zones with live counts."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from redis_fixture import redis_server_factory

from rtsp_worker.config import CameraConfig, LineConfig, RedisConfig, ZoneConfig
from rtsp_worker.sinks import SinkRunner
from rtsp_worker.sinks.jsonl import JsonlSink
from rtsp_worker.sinks.video import VideoSink
from rtsp_worker.types import Event, FrameResult

FIXTURES = (redis_server_factory,)


def event(camera: str, frame: int, direction: str = "in", kind: str = "line", name: str = "door",
          id: str = "") -> Event:
    return Event(camera=camera, frame=frame, ts=1e9 + frame / 15, track_id=3, class_id=0, class_name="person",
                 kind=kind, name=name, direction=direction, point=(10.0, 20.0),
                 dwell_s=1.5 if direction == "exit" else None, id=id)


def result(camera: str, frame: int, events=(), image=None, size=(320, 240)) -> FrameResult:
    return FrameResult(camera=camera, row=0, frame=frame, ts=1e9 + frame / 15, width=size[0],
                       height=size[1], image=image, events=tuple(events))


def test_runner_hands_events_to_jsonl_in_their_own_file(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path)
    runner = SinkRunner([sink])
    runner.submit([result("a", 0, [event("a", 0)]), result("b", 0)])
    runner.submit([result("a", 1, [event("a", 1, "exit", "zone", "lobby")]), result("b", 1, [event("b", 1, "out")])])
    runner.close()
    a = [json.loads(x) for x in (tmp_path / "a" / "events.jsonl").read_text().splitlines()]
    assert {r.pop("run") for r in a} == {sink.run}  # every event carries the worker's run id, like the frames
    assert a == [event("a", 0).to_json_dict(), event("a", 1, "exit", "zone", "lobby").to_json_dict()]
    assert a[0] == {"camera": "a", "frame": 0, "ts": 1e9, "track_id": 3, "class_id": 0, "class": "person",
                    "kind": "line", "line": "door", "direction": "in", "point": [10.0, 20.0]}
    assert a[1]["zone"] == "lobby" and a[1]["dwell_s"] == 1.5
    assert [json.loads(x)["direction"] for x in (tmp_path / "b" / "events.jsonl").read_text().splitlines()] == ["out"]
    assert len((tmp_path / "a" / "frames.jsonl").read_text().splitlines()) == 2  # the frame records are still written


@pytest.mark.redis
def test_redis_events_stream_per_camera(redis_server_factory) -> None:
    from rtsp_worker.sinks.redis import RedisSink

    server = redis_server_factory()
    sink = RedisSink(RedisConfig(url=server.url, stream_prefix="t:"))
    runner = SinkRunner([sink])
    runner.submit([result("a", i, [event("a", i, "in" if i % 2 else "out", id=f"R-a-{i}")] if i % 3 == 0 else [])
                   for i in range(10)])
    runner.close()
    r = server.client()
    assert sorted(r.keys("t:*")) == ["t:a", "t:a:events"]
    entries = r.xrange("t:a:events")
    assert [int(f["frame"]) for _, f in entries] == [0, 3, 6, 9]
    first = entries[0][1]
    assert (first["camera"], first["kind"], first["name"], first["direction"]) == ("a", "line", "door", "out")
    data = json.loads(first["data"])
    assert data.pop("run") == first["run"] == sink.run
    assert data == event("a", 0, "out", id="R-a-0").to_json_dict()
    assert data["id"] == first["id"] == "R-a-0"  # the event id, in the entry's fields and in its record
    assert r.xlen("t:a") == 10


def test_video_draws_lines_and_zones_with_live_counts(tmp_path: Path) -> None:
    cam = CameraConfig(name="a", url="rtsp://h/a",
                       lines=[LineConfig(name="door", points=((0.0, 0.5), (1.0, 0.5)), units="fractions")],
                       zones=[ZoneConfig(name="z", polygon=[(200, 20), (300, 20), (300, 80), (200, 80)])])
    sink = VideoSink(tmp_path, cameras=[cam])
    runner = SinkRunner([sink])
    grey = torch.full((240, 320, 3), 60, dtype=torch.uint8)
    runner.submit([result("a", i, [event("a", i)] if i == 5 else [], image=grey) for i in range(10)])
    runner.close()
    with av.open(str(tmp_path / "a" / "video.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24").astype(int) for f in c.decode(video=0)]
    assert len(frames) == 10
    last = frames[-1]
    # The line (red) across the frame at y = 120, away from its label in the middle.
    row = last[119:122, 10:60]
    assert (row[..., 0] - row[..., 2]).max() > 80
    # The zone outline (yellow: red and green high, blue low) on its left edge.
    edge = last[30:70, 199:202]
    assert (np.minimum(edge[..., 0], edge[..., 1]) - edge[..., 2]).max() > 80
    assert sink.counts == {("a", "door", "in"): 1}  # the live count drawn on the label
    # The label shows the count: the frames before and after the crossing differ around the line's middle.
    assert np.abs(frames[4][105:135, 120:200] - frames[6][105:135, 120:200]).max() > 60
