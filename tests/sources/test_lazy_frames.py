"""Lazy colour conversion: decoded frames stay in the decoder's YUV until a batch takes them.

The CPU decoder hands over its av.VideoFrame (NATIVE) and the GPU path NVDEC's NV12; the batched preprocessing
converts only the frames it is given. These tests check that converting late changes nothing: the same model
input and the same detections as the eager path (RGB converted at decode time) on the same frames, for both
pixel formats, in a batch of mixed frame sizes, for RGB and BGR models; and that a frame the slot replaces was
never converted.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from media_support import decode_with as decode  # the GPU path's tests decode the same way

from rtsp_worker.config import ModelConfig
from rtsp_worker.detection.input_spec import InputSpec
from rtsp_worker.detection.postprocess import postprocess
from rtsp_worker.detection.preprocess import Preprocessor, frame_rgb
from rtsp_worker.engines import load_engine
from rtsp_worker.sim import synthetic
from rtsp_worker.sources.decoders import CpuDecoder
from rtsp_worker.sources.state import CameraStats, FrameSlot
from rtsp_worker.types import NATIVE, NV12, RGB, Frame

MODEL = Path(__file__).resolve().parents[2] / "models" / "synth_det.onnx"
CPU = torch.device("cpu")


def clip(width: int, height: int, frames: int = 6, seed: int = 3) -> bytes:
    scene = synthetic.make_scene(seed=seed, frames=frames, width=width, height=height)
    buf = io.BytesIO()
    synthetic.encode_mp4((rgb for rgb, _ in synthetic.render(scene)), buf, scene.fps, width, height)
    return buf.getvalue()


def frames_of(images: list, camera0: int = 0) -> list[Frame]:
    return [Frame(camera0 + i, i, 0.0, d.image, d.height, d.width, d.pixel_format, d.pts, d.colorimetry)
            for i, d in enumerate(images)]


@pytest.fixture(scope="module")
def mixed() -> dict[str, list[Frame]]:
    """Frames of two clips of different sizes (one batch), decoded eagerly (rgb24), natively and as NV12."""
    clips = [clip(640, 360), clip(320, 240, seed=5)]
    out = {}
    for fmt in (NATIVE, "rgb24", "nv12"):
        a, b = (decode(c, fmt)[:4] for c in clips)
        out[fmt] = frames_of([a[0], b[0], a[1], b[1], a[2], b[2]])
    return out


def test_native_frames_are_not_converted_at_decode(mixed):
    for f in mixed[NATIVE]:
        assert f.pixel_format == NATIVE and isinstance(f.image, av.VideoFrame)
        assert f.image.format.name == "yuv420p" and (f.image.height, f.image.width) == (f.height, f.width)


@pytest.mark.parametrize("channels", ["rgb", "bgr"])
def test_native_input_equals_eager_rgb(mixed, channels):
    spec = InputSpec((384, 640), channels=channels)
    eager, _ = Preprocessor(spec, 6, CPU)(mixed["rgb24"])
    eager = eager.clone()
    lazy, lb = Preprocessor(spec, 6, CPU)(mixed[NATIVE])
    # Same swscale conversion, only later: bit-identical model input, BGR included (no flip on either).
    assert torch.equal(lazy, eager)
    assert lb.pad.tolist()[1] != lb.pad.tolist()[0]  # the batch really mixes two frame sizes


def test_frame_rgb_is_the_eager_image(mixed):
    for native, eager in zip(mixed[NATIVE], mixed["rgb24"]):
        assert torch.equal(frame_rgb(native), eager.image)  # what the video sink gets


@pytest.mark.skipif(not MODEL.is_file(), reason="models/synth_det.onnx not trained yet")
def test_same_detections_on_both_pixel_formats(mixed):
    engine = load_engine(ModelConfig(path=MODEL), CPU, 6)
    try:
        results = {}
        for fmt in (NATIVE, "rgb24", "nv12"):
            x, lb = Preprocessor(engine.info.spec, 6, CPU)(mixed[fmt])
            results[fmt] = postprocess(engine.infer(x), lb, 0.25, 0.45)
    finally:
        engine.close()
    eager, native, nv12 = results["rgb24"], results[NATIVE], results["nv12"]
    assert len(eager) > 0
    for name, t in ("boxes", eager.boxes), ("scores", eager.scores), ("class_ids", eager.class_ids):
        assert torch.equal(getattr(native, name), t), name
    # NV12 is converted by the project's own YUV matrix in torch, not by swscale: the same objects, boxes within
    # a pixel (the GPU path's conversion, here on the CPU).
    assert torch.equal(nv12.batch_index, eager.batch_index) and torch.equal(nv12.class_ids, eager.class_ids)
    assert (nv12.boxes - eager.boxes).abs().max().item() <= 1.0
    assert (nv12.scores - eager.scores).abs().max().item() <= 0.02


def test_a_replaced_frame_is_never_converted():
    """The slot keeps only the newest frame: the replaced ones are dropped as decoded, never turned into RGB."""
    converted: list[int] = []

    class Watched:
        def __init__(self, i: int) -> None:
            self.i = i

        def to_ndarray(self, format: str) -> np.ndarray:
            converted.append(self.i)
            return np.full((16, 16, 3), self.i, dtype=np.uint8)

    stats = CameraStats()
    cond = threading.Condition()
    slot = FrameSlot(cond, stats)
    for i in range(5):
        slot.put(Frame(0, i, 0.0, Watched(i), 16, 16, NATIVE))
    with slot.cond:
        frame = slot.take()
    x, _ = Preprocessor((16, 16), 1, CPU)([frame])
    assert stats.dropped == 4 and converted == [4]
    assert x[0, 0, 0, 0].item() == pytest.approx(4 / 255)


def test_decoder_formats_are_checked(mixed):
    data = clip(128, 96, frames=1)
    with av.open(io.BytesIO(data)) as c, pytest.raises(ValueError, match="native, rgb24 or nv12"):
        CpuDecoder(c.streams.video[0], pixel_format="yuv444p")
    assert {f.pixel_format for f in mixed["rgb24"]} == {RGB} and {f.pixel_format for f in mixed["nv12"]} == {NV12}


# -- skipping non-reference frames while most frames are dropped anyway ------------------------------------


def test_skip_policy_hysteresis():
    from rtsp_worker.sources.camera import SkipPolicy

    p = SkipPolicy(window=10)
    assert p.update(9, 9, False) is None  # not a whole window yet
    assert p.update(10, 9, False) is True  # 1 in 10 taken: skip
    assert p.update(20, 15, True) is None  # 1 in 2 taken: not more than half, keep skipping
    assert p.update(30, 19, True) is False  # 6 in 10 taken: decode everything again
    assert p.update(40, 26, False) is None  # 3 in 10 taken: above 1 in 4, keep decoding


@pytest.mark.rtsp
def test_camera_skips_nonref_frames_only_while_frames_are_dropped(rtsp_server_factory, tmp_path):
    """Over the real RTSP server, a 30 fps stream with B-frames: nobody takes frames -> the decoder skips the
    non-reference ones (fewer frames decoded, the stream goes on); a consumer that takes every frame -> all
    frames are decoded again."""
    import time

    from rtsp_worker.config import CameraConfig, SourceOptions
    from rtsp_worker.sim.clips import write_test_clip
    from rtsp_worker.sources.camera import CameraSource

    clip_path = write_test_clip(tmp_path / "b.mp4", seconds=2, fps=30, size=(320, 180), b_frames=3)
    server = rtsp_server_factory({"cam0": f"file:{clip_path}"})

    def start(skip: bool = True):
        cond, stats, stop = threading.Condition(), CameraStats(), threading.Event()
        slot = FrameSlot(cond, stats)
        src = CameraSource(0, CameraConfig(name="cam0", url=server.url("cam0")), SourceOptions(skip_nonref=skip),
                           slot, stats, stop, CPU)
        src.start()
        return src, slot, stats, stop, cond

    def rate(stats, seconds=1.5):
        d0, t0 = stats.decoded, time.monotonic()
        time.sleep(seconds)
        return (stats.decoded - d0) / (time.monotonic() - t0)

    src, slot, stats, stop, _cond = start(True)
    try:
        deadline = time.monotonic() + 15
        while not stats.skipping_nonref and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stats.skipping_nonref, "nobody took a frame, yet the decoder never started skipping"
        skipped_rate = rate(stats)
        assert 5 < skipped_rate < 0.8 * 30, skipped_rate  # 3 B-frames in 4 are not references

        taken: list[Frame] = []
        done = threading.Event()

        def consume():
            while not done.is_set():
                with slot.cond:
                    slot.cond.wait(0.05)
                    f = slot.take()
                if f is not None:
                    taken.append(f)

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        deadline = time.monotonic() + 15
        while stats.skipping_nonref and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not stats.skipping_nonref, "every frame was taken, yet the decoder kept skipping"
        full_rate = rate(stats)
        done.set()
        t.join(2)
        assert full_rate > 0.85 * 30 and full_rate > skipped_rate * 1.3, (full_rate, skipped_rate)
    finally:
        stop.set()
        src.join(10)

