"""Unit tests of the service face's small parts: the exit-code enum and the runner returning it, the rate
meter, the Sink base class and the one place sink losses are added up."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from ops_support import make_config, tiny_model

from rtsp_worker.exitcodes import ExitCode
from rtsp_worker.service.runner import run_pipeline
from rtsp_worker.sinks import Sink, SinkCounters, SinkRunner
from rtsp_worker.status import RateMeter
from rtsp_worker.types import FrameResult

FIXTURES = (tiny_model,)


def test_exit_code_values_are_the_documented_ones() -> None:
    assert [int(c) for c in (ExitCode.OK, ExitCode.FAILED, ExitCode.CONFIG, ExitCode.MODEL, ExitCode.RUNTIME,
                             ExitCode.INTERRUPTED)] == [0, 1, 2, 3, 4, 130]


def test_run_pipeline_returns_the_model_error_code_and_says_why(tmp_path: Path, tiny_model: Path, capsys) -> None:
    cfg = make_config([{"name": "a", "url": "rtsp://127.0.0.1:1/a"}], tiny_model, tmp_path)
    missing = tmp_path / "nothing.onnx"
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"path": missing})})
    assert run_pipeline(cfg, 1.0) is ExitCode.MODEL  # returned, not raised: only the CLI exits
    assert f"error: {missing}: model file not found" in capsys.readouterr().err


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_rate_meter_windows_identity_and_from_zero() -> None:
    clock = _Clock()
    meter = RateMeter(1.0, clock=clock)
    a, b = object(), object()
    assert meter.read([("a", a, (10, 5))]) == {"a": None}  # no window yet
    clock.t += 0.5
    assert meter.read([("a", a, (20, 6))]) == {"a": None}
    clock.t += 0.5
    g = meter.read([("a", a, (40, 15))])["a"]
    assert g is not None and g.deltas == (30, 10) and g.rate(0) == pytest.approx(30.0)
    clock.t += 0.25  # inside the next window: the last window's growth
    assert meter.read([("a", a, (41, 15))])["a"] == g
    assert meter.read([("a", b, (0, 0))]) == {"a": None}  # a new camera under the old name starts over

    log = RateMeter(from_zero=True, clock=clock)  # the periodic log: a new camera counts from zero
    clock.t += 2.0
    g = log.read([("x", a, (8,))])["x"]
    assert g is not None and g.deltas == (8,) and g.seconds == pytest.approx(2.0)
    clock.t += 1.0
    assert log.read([("x", a, (10,))])["x"].deltas == (2,)
    log.restart()  # the final line: over the whole run
    assert log.read([("x", a, (10,))])["x"].seconds == pytest.approx(3.0)


class _Buffered(Sink):
    name = "buffered"

    def __init__(self) -> None:
        self.calls = 0
        self.closed = threading.Event()

    def write(self, results) -> None:
        self.calls += 1
        if self.calls == 2:
            raise OSError("disk full")

    def counters(self) -> SinkCounters:
        return SinkCounters(dropped=3, failed=2, errors=1, buffered=7)

    def close(self) -> None:
        self.closed.set()


class _Plain(Sink):
    name = "plain"

    def write(self, results) -> None:
        pass


def _result(i: int) -> FrameResult:
    return FrameResult(camera="cam", row=0, frame=i, ts=float(i), width=4, height=4)


def test_sink_base_defaults_and_one_place_for_losses() -> None:
    plain = _Plain()
    plain.write_events([])  # every optional method exists and does nothing
    plain.close_camera("cam")
    plain.reopen()
    plain.close()
    assert plain.counters() == SinkCounters() and not plain.wants_images
    with pytest.raises(NotImplementedError):
        Sink().write([])

    buffered = _Buffered()
    runner = SinkRunner([buffered, plain])
    for i in range(3):
        runner.submit([_result(2 * i), _result(2 * i + 1)])
    assert runner.close_camera("cam").wait(10)
    runner.close()
    b, p = runner.status()
    assert (b.name, b.written, b.queue_dropped, b.write_failed, b.buffer_dropped, b.errors, b.buffered) == (
        "buffered", 4, 0, 2 + 2, 3, 1 + 1, 7)  # the raising batch (2 results) + what the sink counted
    assert b.lost == 4 + 3 and runner.sink_status("plain") == p
    assert (p.written, p.lost, p.errors, p.buffered) == (6, 0, 0, None)
    assert buffered.closed.is_set()
