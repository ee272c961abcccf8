"""Measured capacity, admission and priorities (rtsp_worker/capacity.py): a fixed-batch model takes a second
camera at run time; a camera over the measured headroom is refused with the numbers and accepted with force;
under overload high-priority cameras keep their rate and low ones get the larger interval, and rates come
back when cameras leave (a fake engine of fixed cost, an injected clock: order and counts, no rates)."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
import torch
from fake_source import FakeSources
from ops_support import PipelineThread, make_config, tiny_model, wait_for
from sink_support import RecordingSink
from tiny_models import export_tiny

from rtsp_worker.batcher import Batcher
from rtsp_worker.camera_set import CapacityError
from rtsp_worker.capacity import BatchCost, Priorities, admission, allocate
from rtsp_worker.config import CameraConfig
from rtsp_worker.engines import load_engine
from rtsp_worker.pipeline import build_pipeline
from rtsp_worker.scheduling import interval_due, next_due, slowed_period
from rtsp_worker.sources.state import CameraState, CameraStats, FrameSlot
from rtsp_worker.types import Frame

FIXTURES = (tiny_model,)
BOUND_S = 60.0


class SlowEngine:
    """The tiny ONNX engine plus a fixed cost per frame (a sleep): a box of known capacity."""

    def __init__(self, inner, ms_per_frame: float) -> None:
        self.inner, self.ms = inner, ms_per_frame
        self.device, self.info, self.input_dtype = inner.device, inner.info, inner.input_dtype
        self.warmup_ms = {1: 2 * self.ms}  # an estimate that would refuse nothing here: only real batches may

    def infer(self, images: torch.Tensor) -> torch.Tensor:
        time.sleep(self.ms * images.shape[0] / 1000)
        return self.inner.infer(images)

    def close(self) -> None:
        self.inner.close()


def _cam(name: str, **kw) -> dict:
    return {"name": name, "url": f"rtsp://fake.invalid/{name}", **kw}


def test_batch_cost_learns_sizes_and_reads_the_rest_off_a_line() -> None:
    cost = BatchCost()
    assert cost.capacity_fps(8) is None and not cost.known
    for _ in range(3):
        cost.observe(1, 12.0)  # 2 ms fixed + 10 ms per frame
        cost.observe(4, 42.0)
    assert cost.estimate(1) == pytest.approx(12.0) and cost.estimate(2) == pytest.approx(22.0)
    assert cost.estimate(8) == pytest.approx(82.0)
    assert cost.capacity_fps(8) == pytest.approx(8000 / 82.0)
    assert [m for _, _, m in cost.table(4)] == [True, False, False, True]


def test_the_engines_warm_up_is_the_estimate_until_the_first_real_batch(tiny_model: Path, tmp_path: Path) -> None:
    engine = load_engine(make_config([_cam("a")], tiny_model, tmp_path).model, torch.device("cpu"), 4)
    assert set(engine.warmup_ms) == {1} and engine.warmup_ms[1] > 0  # its probe at load, timed
    cost = BatchCost()
    cost.seed({1: 10.0, 4: 22.0, 0: 5.0, 9999: 1.0})  # sizes out of range are ignored
    assert cost.source == "warm-up" and not cost.known
    assert cost.estimate(2) == pytest.approx(14.0) and cost.capacity_fps(4) == pytest.approx(4000 / 22.0)
    cost.observe(2, 40.0)  # the first real batch replaces the whole warm-up estimate
    assert cost.source == "batches" and cost.known
    assert cost.estimate(1) == pytest.approx(20.0) and cost.capacity_fps(4) == pytest.approx(50.0)
    assert [m for _, _, m in cost.table(3)] == [False, True, False]
    assert BatchCost().source is None


def test_admission_counts_full_targets_and_gives_the_numbers() -> None:
    assert admission(None, [30.0] * 10, [("x", 30.0)]) is None  # nothing measured yet: admitted
    assert admission(100.0, [30.0, 30.0], [("x", 30.0)]) is None
    why = admission(100.0, [30.0, 30.0, 30.0], [("x", 15.0)])
    assert why is not None and "x (15.0 fps)" in why and "90.0" in why and "100.0" in why and "force=1" in why


def test_priorities_high_first_low_slower_and_recovery_with_a_fixed_cost_and_clock() -> None:
    now = [0.0]
    cost = BatchCost()
    cost.observe(4, 40.0)  # 10 ms a frame: 100 frames/s, 90 planned (SAFETY)
    cams = [(f"h{i}", "high", 25.0) for i in range(2)] + [(f"n{i}", "normal", 25.0) for i in range(4)] + [
        (f"l{i}", "low", 25.0) for i in range(2)]
    assert allocate(cost.capacity_fps(4), cams) == {"h0": 1, "h1": 1, "n0": 3, "n1": 3, "n2": 3, "n3": 3,
                                                    "l0": 8, "l1": 8}
    pr = Priorities(period_s=2.0, clock=lambda: now[0])
    assert not pr.due()
    now[0] = 2.0
    assert pr.due()
    counters = [(n, p, t, 0, 0, 0) for n, p, t in cams]
    assert pr.update(cost.capacity_fps(4), counters) == dict.fromkeys((n for n, *_ in cams), 1)  # no drops yet
    now[0] = 3.0
    counters = [(n, p, t, 0, 0, 5) for n, p, t in cams]  # frames dropped: the pipeline does not keep up
    first = pr.update(cost.capacity_fps(4), counters)
    assert first["h0"] == 1 and first["n0"] == 3 and first["l0"] == 8 and not pr.due()
    # The normal cameras leave: 50 + 50 > 90 still slows the low ones, less; one more leaves: full rate.
    left = [c for c in counters if not c[0].startswith("n")]
    now[0] = 4.0
    assert pr.update(cost.capacity_fps(4), left) == {"h0": 1, "h1": 1, "l0": 2, "l1": 2}
    now[0] = 6.0
    assert pr.update(cost.capacity_fps(4), left[:-1]) == {"h0": 1, "h1": 1, "l0": 1}
    # Motion gating is headroom for priorities: normal cameras gated 3 frames in 4 ask a quarter.
    now[0] = 8.0
    pr.update(cost.capacity_fps(4), [(n, p, t, 100, 0, 10) for n, p, t in cams])
    quiet = [(n, p, t, 200, 75 if p == "normal" else 0, 20) for n, p, t in cams]
    now[0] = 10.0
    after = pr.update(cost.capacity_fps(4), quiet)
    # 50 (high) + 4 x 6.25 (normal) fit in 90 (and in 15% less: the normal ones come back to x1); the low
    # ones would share the last 15 (x4), but with 15% less capacity only 1.5: hysteresis keeps them at x8.
    assert after == {"h0": 1, "h1": 1, "n0": 1, "n1": 1, "n2": 1, "n3": 1, "l0": 8, "l1": 8}


def test_the_batcher_takes_high_priority_cameras_first() -> None:
    cond = threading.Condition()
    stats = [CameraStats() for _ in range(4)]
    slots = [FrameSlot(cond, st) for st in stats]
    for st in stats:
        st.set_state(CameraState.STREAMING)
    b = Batcher(slots, stats, cond, max_batch=2, max_wait_s=0.0)
    b.ranks = [2, 1, 0, 0]  # low, normal, high, high
    for row in range(4):  # the low camera's frame is the oldest
        slots[row].put(Frame(row=row, seq=0, ts=100.0 + row, image=None, height=1, width=1))
    first = b.next_batch(threading.Event())
    assert first is not None and sorted(first.rows) == [2, 3]
    second = b.next_batch(threading.Event())
    assert second is not None and second.rows == [1, 0]


def test_a_fixed_batch_model_accepts_a_second_camera_at_run_time(tmp_path: Path) -> None:
    model = export_tiny(tmp_path / "fixed.onnx", dynamic_batch=False)  # batch 1, as ultralytics exports by default
    sources, sink = FakeSources(fps=15), RecordingSink()
    p = build_pipeline(make_config([_cam("a")], model, tmp_path), sinks=[sink], source_factory=sources)
    assert not p.engine.info.dynamic_batch
    runner = PipelineThread(p)
    try:
        wait_for(lambda: p.status().camera("a").processed >= 3, BOUND_S, "frames of a")
        p.add_camera(CameraConfig(name="b", url="rtsp://fake.invalid/b"))
        wait_for(lambda: p.status().camera("b").processed >= 3, BOUND_S, "frames of b")
    finally:
        runner.stop()


def test_a_camera_over_measured_headroom_is_refused_with_numbers_and_accepted_with_force(
        tmp_path: Path, tiny_model: Path) -> None:
    engine = SlowEngine(load_engine(make_config([_cam("a")], tiny_model, tmp_path).model, torch.device("cpu"), 4),
                        ms_per_frame=50.0)  # at most 20 inferred frames/s
    sources = FakeSources(fps=4)
    cfg = make_config([_cam("a", frame_rate=4), _cam("b", frame_rate=4)], tiny_model, tmp_path,
                      batcher={"max_batch": 4})
    p = build_pipeline(cfg, engine=engine, sinks=[RecordingSink()], source_factory=sources)
    # Before any batch: the engine's warm-up at load (100 ms at batch 1) is the estimate, and never refuses.
    s = p.status()
    assert s.capacity_source == "warm-up" and s.capacity_fps == pytest.approx(10.0)
    p.check_headroom([CameraConfig(name="c", url="rtsp://fake.invalid/c", target_fps=500)])
    runner = PipelineThread(p)
    try:
        wait_for(lambda: p.status().capacity_source == "batches", BOUND_S, "a measured batch")
        s = p.status()
        assert s.capacity_fps <= 20.0 and s.demand_fps == pytest.approx(8.0)
        p.add_camera(CameraConfig(name="d", url="rtsp://fake.invalid/d", frame_rate=4))  # fits: not refused
        with pytest.raises(CapacityError, match=r"c \(500.0 fps\).*ask 12.0 inferred frames/s") as err:
            p.add_camera(CameraConfig(name="c", url="rtsp://fake.invalid/c", target_fps=500))
        assert "force=1" in str(err.value) and p.status().camera("c") is None
        p.add_camera(CameraConfig(name="c", url="rtsp://fake.invalid/c", target_fps=500), force=True)
        assert {c.name for c in p.status().cameras} == {"a", "b", "c", "d"}
        assert p.status().headroom_fps < 0
    finally:
        runner.stop()


def test_a_slowed_camera_gets_target_over_k_even_when_the_pipeline_takes_only_some_frames() -> None:
    # A 15 fps camera slowed to x3 asks 5 inferred frames/s. An overloaded pipeline takes a random 60% of
    # its frames: on its stream-time schedule it still infers about 5 a second; by frame number (seq % 3) it
    # would infer 3.
    assert slowed_period(1, 1, 15.0) is None and slowed_period(3, 1, 0.0) is None
    slowed = slowed_period(3, 1, 15.0)
    assert slowed == pytest.approx((0.2, 1 / 30))
    rng = random.Random(7)
    taken = [seq for seq in range(15 * 60) if rng.random() < 0.6]
    by_time, nxt = 0, None
    for seq in taken:
        t = seq / 15
        if interval_due(seq, t, 1, slowed, nxt):
            by_time, nxt = by_time + 1, next_due(nxt, t, slowed[0])
    by_number = sum(1 for seq in taken if seq % 3 == 0)
    assert 4.5 <= by_time / 60 <= 5.05 and by_number / 60 < 3.3, (by_time / 60, by_number / 60)
    # At its target the camera keeps the frame-number rule; a stream clock that went back is due at once.
    assert [interval_due(s, s / 15, 2, None, None) for s in range(4)] == [True, False, True, False]
    assert interval_due(10, 1.0, 1, slowed, 5.0) and not interval_due(10, 4.9, 1, slowed, 5.0)
    assert next_due(5.0, 5.0, 0.2) == pytest.approx(5.2)  # on time: one period on
    assert next_due(5.0, 5.15, 0.2) == pytest.approx(5.25)  # late: never sooner than half a period after
    assert next_due(5.0, 1.0, 0.2) == pytest.approx(1.2)  # the clock went back: a new schedule
