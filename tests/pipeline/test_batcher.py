"""Batcher: newest frame per camera, bounded wait, never waits for a stalled camera."""

import threading
import time

import torch

from rtsp_worker.batcher import Batcher
from rtsp_worker.sources.state import CameraState, CameraStats, FrameSlot
from rtsp_worker.types import Frame


def make(n, max_batch=8, max_wait_s=0.05):
    cond = threading.Condition()
    stats = [CameraStats(state=CameraState.STREAMING) for _ in range(n)]
    slots = [FrameSlot(cond, st) for st in stats]
    return Batcher(slots, stats, cond, max_batch, max_wait_s), slots, stats


def frame(cam, seq):
    return Frame(row=cam, seq=seq, ts=time.time(), image=torch.zeros((4, 4, 3), dtype=torch.uint8), height=4,
                 width=4)


def test_newest_frame_wins_and_stale_ones_are_counted():
    batcher, slots, stats = make(2)
    for seq in range(5):
        slots[0].put(frame(0, seq))
    slots[1].put(frame(1, 0))
    batch = batcher.next_batch(threading.Event(), timeout=1)
    assert sorted((f.row, f.seq) for f in batch.frames) == [(0, 4), (1, 0)]
    assert stats[0].dropped == 4 and stats[1].dropped == 0


def test_stalled_camera_does_not_hold_the_batch():
    batcher, slots, stats = make(3, max_wait_s=0.2)
    # camera 2 is marked streaming but never delivers: the batch goes out after max_wait with the others
    slots[0].put(frame(0, 0))
    slots[1].put(frame(1, 0))
    t0 = time.monotonic()
    batch = batcher.next_batch(threading.Event(), timeout=2)
    waited = time.monotonic() - t0
    assert sorted(batch.rows) == [0, 1]
    assert waited < 1.5  # bounded by max_wait (0.2 s) plus scheduling, far below the 2 s timeout
    # once it is known not to be streaming, it is not waited for at all: a wait for it would last a minute
    stats[2].state = CameraState.BACKOFF
    batcher.max_wait_s = 60.0
    slots[0].put(frame(0, 1))
    slots[1].put(frame(1, 1))
    assert batcher.target() == 2
    assert sorted(batcher.next_batch(threading.Event(), timeout=2).rows) == [0, 1]


def test_waits_for_late_frame_within_max_wait():
    batcher, slots, _ = make(2, max_wait_s=1.0)
    slots[0].put(frame(0, 0))
    threading.Timer(0.05, lambda: slots[1].put(frame(1, 0))).start()
    batch = batcher.next_batch(threading.Event(), timeout=2)
    assert sorted(batch.rows) == [0, 1]


def test_max_batch_serves_longest_waiting_first():
    batcher, slots, _ = make(4, max_batch=2, max_wait_s=0.0)
    for cam in (3, 1, 2, 0):  # put order = age order
        slots[cam].put(frame(cam, 0))
        time.sleep(0.002)
    first = batcher.next_batch(threading.Event(), timeout=1)
    second = batcher.next_batch(threading.Event(), timeout=1)
    assert first.rows == [3, 1] and second.rows == [2, 0]


def test_nothing_fresh_returns_none_after_timeout():
    batcher, _, _ = make(2)
    assert batcher.next_batch(threading.Event(), timeout=0.05) is None
    stop = threading.Event()
    stop.set()
    assert batcher.next_batch(stop, timeout=5) is None
