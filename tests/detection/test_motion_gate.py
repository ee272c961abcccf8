"""The motion gate (rtsp_worker/detection/motion_gate.py) on synthetic scenes with idle periods: still frames
are gated, motion is not; masks; max_skip_s; the tracker keeps its ids across gated frames; the scene
generator's existing scenes are unchanged by the idle-period option."""

from __future__ import annotations

import hashlib
from functools import cache

import av
import numpy as np
import pytest
import torch

from rtsp_worker.config import MotionConfig, TrackerConfig
from rtsp_worker.detection.motion_gate import MotionGate, luma_grid
from rtsp_worker.sim.synthetic import make_scene, render
from rtsp_worker.tracking.tracker import IouTracker
from rtsp_worker.types import NATIVE, Detections, Frame

FPS = 10.0


def _rgb_frame(img: np.ndarray, seq: int, row: int = 0, fps: float = FPS) -> Frame:
    h, w = img.shape[:2]
    return Frame(row=row, seq=seq, ts=1000.0 + seq / fps, image=torch.from_numpy(img), height=h, width=w,
                 pts=seq / fps)


def _native_frame(img: np.ndarray, seq: int, row: int = 0) -> Frame:
    h, w = img.shape[:2]
    vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(format="yuv420p")
    return Frame(row=row, seq=seq, ts=1000.0 + seq / FPS, image=vf, height=h, width=w, pixel_format=NATIVE,
                 pts=seq / FPS)


def test_existing_scenes_are_unchanged_and_idle_periods_have_no_objects() -> None:
    # The ground truth of a scene made before idle periods existed (seed 7, 40 frames, 160x96 at 10 fps).
    scene = make_scene(7, frames=40, width=160, height=96, fps=10.0)
    h = hashlib.sha256()
    for _img, gt in render(scene):
        h.update(gt.tobytes())
    assert h.hexdigest() == "5eae61a39bcc2b1c1bbf9b40ff01f19e7fcd84d60f659b7a72d64db6a9eb14b0"
    same = make_scene(7, frames=40, width=160, height=96, fps=10.0, busy=1.0)
    for (a, ga), (b, gb) in zip(render(scene), render(same)):
        assert np.array_equal(a, b) and np.array_equal(ga, gb)
    idle = make_scene(7, frames=120, width=160, height=96, fps=FPS, busy=0.25, busy_period_s=4.0)
    period, window = 40, 10
    for i, (_img, gt) in enumerate(render(idle)):
        if i % period >= window:
            assert len(gt) == 0, f"frame {i} is in an idle period but has objects"
    with pytest.raises(ValueError, match="idle periods"):
        make_scene(7, busy=0.0)


@cache
def _idle_scene() -> list[tuple[np.ndarray, np.ndarray]]:
    """Rendered once for both decoders' tests: busy 2 s of every 8 s."""
    return list(render(make_scene(11, frames=160, width=320, height=180, fps=FPS, busy=0.25, busy_period_s=8.0,
                                  density=1.5)))


@pytest.mark.parametrize("native", [False, True])
def test_still_frames_are_gated_and_motion_is_not(native: bool) -> None:
    gate = MotionGate("cpu")
    gate.configure(0, MotionConfig(enabled=True, max_skip_s=100.0))
    make = _native_frame if native else _rgb_frame
    decisions, gts = [], []
    for i, (img, gt) in enumerate(_idle_scene()):
        decisions.append(gate([make(img, i)], [True]))
        gts.append(gt)
    due = np.array([d.due[0] for d in decisions])
    motion = np.array([d.motion[0] for d in decisions])
    gated = np.array([d.gated[0] for d in decisions])
    assert due[0] and not gated[0]  # a camera's first frame is always inferred
    assert np.array_equal(gated, ~due)  # every frame was due by its interval
    # Idle: no object in this frame nor in the 30 before (the background has long forgotten the last one).
    empty = np.array([len(g) == 0 for g in gts])
    idle = np.array([i > 30 and empty[i - 30: i + 1].all() for i in range(len(gts))])
    assert idle.sum() > 50
    assert not motion[idle].any(), f"motion on idle frames {np.flatnonzero(idle & motion)}"
    assert gated[idle].all()
    # Moving: an object of at least 1% of the picture whose box moved by 2 px or more since the last frame.
    moving = np.zeros(len(gts), dtype=bool)
    for i in range(1, len(gts)):
        prev = {int(r[1]): r[2:6] for r in gts[i - 1]}
        for r in gts[i]:
            p = prev.get(int(r[1]))
            if p is not None and r[4] * r[5] >= 0.01 * 320 * 180 and np.abs(r[2:6] - p).max() >= 2:
                moving[i] = True
    assert moving.sum() > 10
    assert motion[moving].mean() > 0.9, f"missed motion on {np.flatnonzero(moving & ~motion)}"
    # The first frame with motion after an idle period is inferred, never gated.
    onsets = [i for i in range(1, len(gts)) if motion[i] and not motion[i - 1]]
    assert onsets and all(due[i] for i in onsets)
    assert gate.gated_total[0] == gated.sum()


def test_native_and_tensor_luma_agree() -> None:
    img = next(render(make_scene(3, frames=1, width=320, height=180)))[0]
    a = luma_grid([_rgb_frame(img, 0)], torch.device("cpu"))
    b = luma_grid([_native_frame(img, 0)], torch.device("cpu"))
    # swscale's BT.601 limited-range Y vs full-range weights: same picture up to the range scaling.
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.99


def _blink_frames(n: int, size: tuple[int, int] = (180, 320)) -> list[np.ndarray]:
    """A still grey picture with light noise where a 'TV' (a box in the top left) blinks every frame."""
    rng = np.random.default_rng(0)
    h, w = size
    out = []
    for i in range(n):
        img = np.full((h, w, 3), 90, np.float32) + rng.normal(0, 2, (h, w, 1))
        if i % 2:
            img[10:60, 10:90] = 230
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def test_masked_changes_never_count_as_motion() -> None:
    frames = _blink_frames(12)
    plain, masked = MotionGate("cpu"), MotionGate("cpu")
    plain.configure(0, MotionConfig(enabled=True))
    masked.configure(0, MotionConfig(enabled=True, mask=[[(0, 0), (100, 0), (100, 70), (0, 70)]]))
    fractions = MotionGate("cpu")
    fractions.configure(0, MotionConfig(enabled=True, units="fractions",
                                        mask=[[(0, 0), (0.32, 0), (0.32, 0.4), (0, 0.4)]]))
    seen = {"plain": [], "masked": [], "fractions": []}
    for i, img in enumerate(frames):
        for name, gate in (("plain", plain), ("masked", masked), ("fractions", fractions)):
            seen[name].append(gate([_rgb_frame(img, i)], [True]).motion[0])
    assert all(seen["plain"][1:])
    assert not any(seen["masked"]) and not any(seen["fractions"])
    # Motion outside the mask still counts.
    img = frames[-1].copy()
    img[120:170, 200:300] = 10
    assert masked([_rgb_frame(img, len(frames))], [True]).motion[0]


def test_max_skip_s_holds_and_the_batch_is_vectorized_over_cameras() -> None:
    still = _blink_frames(1)[0]
    gate = MotionGate("cpu")
    gate.configure(0, MotionConfig(enabled=True, max_skip_s=1.0))
    gate.configure(1, None)  # a camera without the gate: its interval alone decides
    gate.configure(2, MotionConfig(enabled=True, max_skip_s=2.5))
    ran: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for i in range(60):  # 6 s at 10 fps
        batch = [_rgb_frame(still, i, row=r) for r in (0, 1, 2)]
        d = gate(batch, [True, i % 2 == 0, True])
        for r in (0, 1, 2):
            if d.due[r]:
                ran[r].append(i)
    assert ran[0] == [0, 10, 20, 30, 40, 50]
    assert ran[1] == list(range(0, 60, 2))
    assert ran[2] == [0, 25, 50]
    assert gate.gated_total.tolist() == [54, 0, 57]


def test_tracker_keeps_its_ids_across_gated_frames() -> None:
    """An object walks, stands still for 8 s (once the background took it in, gated: the tracker predicts),
    walks on: one id throughout."""
    h, w = 180, 320
    xs = [20 + 3 * i for i in range(20)] + [77] * 80 + [77 + 3 * i for i in range(1, 21)]
    gate = MotionGate("cpu")
    gate.configure(0, MotionConfig(enabled=True, max_skip_s=10.0))
    tracker = IouTracker(TrackerConfig(), 1, "cpu")
    ids: list[int] = []
    still_x: list[float] = []
    gated = 0
    for i, x in enumerate(xs):
        img = np.full((h, w, 3), 80, np.uint8)
        img[60:140, x:x + 40] = 220
        d = gate([_rgb_frame(img, i)], [True])
        gated += d.gated[0]
        box = torch.tensor([[x, 60, x + 40, 140]], dtype=torch.float32)
        dets = (Detections(box, torch.tensor([0.9]), torch.tensor([0]), torch.tensor([0])) if d.due[0]
                else Detections.empty())
        tracks = tracker.update(torch.tensor([0]), dets, torch.tensor([d.due[0]]),
                                timestamps=torch.tensor([i / FPS], dtype=torch.float64),
                                still=torch.tensor([d.still[0]]))
        ids += tracks.track_ids.tolist()
        if d.still[0]:  # the picture did not change: the track holds its box instead of walking on
            still_x.append(float(tracks.boxes[0, 0]))
    assert gated >= 40  # most of the still period skipped the detector
    assert len(still_x) == gated and max(still_x) - min(still_x) < 1.0 and abs(still_x[0] - 77) < 3
    assert len(ids) >= len(xs) - 3 and len(set(ids)) == 1


def _nv12(img: np.ndarray) -> torch.Tensor:
    """NVDEC's layout from an RGB picture: (H*3/2, W) uint8, Y plane then interleaved UV."""
    planes = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(
        format="yuv420p").to_ndarray()  # (H*3/2, W): Y, then U and V quarter planes
    h, w = img.shape[:2]
    y, u, v = planes[:h], planes[h:h + h // 4].reshape(-1), planes[h + h // 4:].reshape(-1)
    uv = np.stack([u, v], -1).reshape(h // 2, w)
    return torch.from_numpy(np.concatenate([y, uv]))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
def test_nv12_luma_is_the_y_plane_on_the_frames_device(device: str) -> None:
    img = next(render(make_scene(3, frames=1, width=320, height=180)))[0]
    nv12 = _nv12(img).to(device)
    frame = Frame(row=0, seq=0, ts=0.0, image=nv12, height=180, width=320, pixel_format="nv12")
    a = luma_grid([frame], torch.device(device))
    b = luma_grid([_native_frame(img, 0)], torch.device("cpu"))
    assert a.device.type == device
    assert (a.cpu() - b).abs().mean() < 2.0  # the same Y plane, pooled by torch vs by swscale
    gate = MotionGate(device)
    gate.configure(0, MotionConfig(enabled=True))
    assert gate([frame], [True]).due == [True] and gate([frame], [True]).gated == [True]
