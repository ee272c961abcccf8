"""The generic test-clip writer (rtsp_worker.sim.clips)."""

from __future__ import annotations

import itertools
from pathlib import Path

import av
import numpy as np
import pytest

from rtsp_worker.sim.clips import write_test_clip


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_clip_has_the_asked_shape_gop_and_no_b_frames(tmp_path: Path, codec: str) -> None:
    path = write_test_clip(tmp_path / "c.mp4", seconds=2, fps=10, size=(160, 96), codec=codec)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == (codec, 160, 96)
        packets = [p for p in container.demux(stream) if p.size]
    assert len(packets) == 20
    # Key frame every `fps` frames; decode order == presentation order means no B-frames.
    assert [i for i, p in enumerate(packets) if p.is_keyframe] == [0, 10]
    assert [p.pts for p in packets] == sorted(p.pts for p in packets)
    assert all(p.pts == p.dts for p in packets)


def test_clip_frames_move(tmp_path: Path) -> None:
    path = write_test_clip(tmp_path / "c.mp4", seconds=1, fps=5, size=(64, 64))
    with av.open(str(path)) as container:
        images = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(images) == 5
    assert all(np.abs(a.astype(int) - b).mean() > 5 for a, b in itertools.pairwise(images))


def test_clip_with_b_frames_reorders(tmp_path: Path) -> None:
    path = write_test_clip(tmp_path / "c.mp4", seconds=1, fps=10, size=(160, 96), b_frames=2)
    with av.open(str(path)) as container:
        packets = [p for p in container.demux(video=0) if p.size]
    assert len(packets) == 10
    assert any(p.pts != p.dts for p in packets)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"codec": "vp9"}, "codec"),
        ({"pattern": "plaid"}, "pattern"),
        ({"size": (641, 360)}, "even"),
        ({"fps": 0}, "positive"),
        ({"b_frames": 7}, "b_frames"),
    ],
)
def test_bad_arguments_name_the_field(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_test_clip(tmp_path / "c.mp4", **kwargs)
