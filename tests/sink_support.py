"""Shared pieces of the sink tests: hand-made results to write, and sinks that record what they are given."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from rtsp_worker.sinks import Sink
from rtsp_worker.types import FrameResult, TrackedObject


def result(camera: str, frame: int, n_objects: int = 2, image: torch.Tensor | None = None,
           ts: float | None = None) -> FrameResult:
    """One camera's result for `frame` with `n_objects` tracked boxes moving right by one pixel a frame."""
    objects = tuple(
        TrackedObject(track_id=k + 1, class_id=k % 3, class_name=("person", "car", "bike")[k % 3],
                      confidence=0.5 + 0.1 * k, box=(10.0 + 30 * k + frame, 20.0, 40.0 + 30 * k + frame, 80.0))
        for k in range(n_objects)
    )
    return FrameResult(camera=camera, row=0, frame=frame, ts=ts if ts is not None else 1e9 + frame / 15,
                       width=320, height=240, objects=objects, image=image, done_ts=time.time())


class RecordingSink(Sink):
    """A sink that keeps (camera, frame, width, height) of every result: lets a test see frame sizes."""

    name = "recording"
    wants_images = False

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int, int]] = []

    def write(self, results: Sequence[FrameResult]) -> None:
        self.seen.extend((r.camera, r.frame, r.width, r.height) for r in results)

    def close(self) -> None:
        pass


class ListSink(Sink):
    """Keeps the frame number of every result, and whether it was closed."""

    name = "list"
    wants_images = False

    def __init__(self) -> None:
        self.written: list[int] = []
        self.closed = False

    def write(self, results: Sequence[FrameResult]) -> None:
        self.written.extend(r.frame for r in results)

    def close(self) -> None:
        self.closed = True
