"""Two batches in flight (`batcher.overlap`): same results, same order as one batch at a time; errors surface.

Drives `Pipeline` batch by batch (no camera threads) with the project's trained model on rendered synthetic
frames of two cameras, so there are real detections and real tracks to compare.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from conftest import skip_or_fail

from rtsp_worker.config import parse_config
from rtsp_worker.pipeline import Pipeline, build_pipeline
from rtsp_worker.sim.synthetic import make_scene, render_frame
from rtsp_worker.sinks import Sink
from rtsp_worker.types import Batch, Frame

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "models" / "synth_det.onnx"


class Collect(Sink):
    """A sink that keeps everything it is given, in order."""

    name = "collect"
    wants_images = False

    def __init__(self) -> None:
        self.results: list = []
        self.closed = threading.Event()

    def write(self, results) -> None:
        self.results.extend(results)

    def close(self) -> None:
        self.closed.set()


def batches(count: int) -> list[Batch]:
    scenes = [make_scene(seed=31 + cam, frames=count, width=320, height=192) for cam in range(2)]
    out = []
    for i in range(count):
        frames = []
        for cam, scene in enumerate(scenes):
            if cam == 1 and i % 5 == 4:  # camera 1 misses a frame now and then: batches of 1 and 2
                continue
            img = torch.from_numpy(render_frame(scene, i)[0])
            frames.append(Frame(row=cam, seq=i, ts=1000.0 + i / 15, image=img, height=192, width=320))
        out.append(Batch(tuple(frames)))
    return out


def pipeline(tmp_path: Path, sink: Collect, overlap: bool) -> Pipeline:
    if not MODEL.exists():
        skip_or_fail(f"{MODEL} is missing")
    cfg = parse_config({
        "cameras": [{"name": "a", "url": "rtsp://127.0.0.1:1/a"}, {"name": "b", "url": "rtsp://127.0.0.1:1/b"}],
        "model": {"path": str(MODEL)}, "device": "cpu", "output": {"dir": str(tmp_path)},
        "batcher": {"overlap": overlap},
    })
    return build_pipeline(cfg, sinks=[sink])


def rows(results) -> list[tuple]:
    return [(r.camera, r.frame, tuple((o.track_id, o.class_id, round(o.confidence, 5),
                                       tuple(round(v, 3) for v in o.box)) for o in r.objects))
            for r in results]


def test_overlapped_steps_give_the_serial_results_in_order(tmp_path: Path) -> None:
    work = batches(40)
    serial_sink, overlap_sink = Collect(), Collect()
    serial = pipeline(tmp_path / "s", serial_sink, overlap=False)
    for b in work:
        serial.dispatch(b)
    assert serial.finisher is None
    serial.shutdown()

    overlapped = pipeline(tmp_path / "o", overlap_sink, overlap=True)
    for b in work:
        overlapped.dispatch(b)
    assert overlapped.finisher is not None  # two batches in flight
    overlapped.shutdown()  # drains the finisher, then closes the sinks

    assert overlap_sink.closed.is_set()
    expected = rows(serial_sink.results)
    assert len(expected) == sum(len(b.frames) for b in work)
    assert sum(len(objs) for *_, objs in expected) > 100  # real tracks to compare, not empty frames
    assert rows(overlap_sink.results) == expected
    assert overlapped.batches == serial.batches == len(work)


def test_a_failure_after_inference_stops_the_pipeline_and_is_raised(tmp_path: Path) -> None:
    sink = Collect()
    p = pipeline(tmp_path, sink, overlap=True)

    def broken(*args, **kwargs):
        raise ValueError("tracker exploded")

    p.batch_step.tracker.update = broken
    with pytest.raises(RuntimeError, match="tracker exploded"):
        for b in batches(6):
            p.dispatch(b)
        p.shutdown()
    assert p.stop_event.is_set()
    if p.finisher is not None:  # raised from dispatch: shutdown still closes everything
        with pytest.raises(RuntimeError, match="tracker exploded"):
            p.shutdown()
    assert sink.closed.is_set()
    assert sink.results == []
