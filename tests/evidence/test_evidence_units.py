"""Evidence parts on real media without a pipeline: the packet ring, the clip recorder (remux of a real
H.264 file's packets) and the snapshot crop (compared with the decoded frame)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from fractions import Fraction
from itertools import pairwise
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from rtsp_worker.config.evidence import ClipsConfig
from rtsp_worker.evidence.clips import ClipRecord, ClipRecorder
from rtsp_worker.evidence.disk import DiskGuard, EvidenceCounters
from rtsp_worker.evidence.snapshots import TrackBests, crop_box
from rtsp_worker.sources.decoders import CpuDecoder
from rtsp_worker.sources.packets import Packet, PacketRing, StreamInfo
from rtsp_worker.types import NATIVE, NV12, RGB, Frame, TrackedObject


def fake(wall: float, key: bool, size: int = 100) -> Packet:
    return Packet(b"x" * size, int(wall * 90000), int(wall * 90000), key, wall)


def test_ring_keeps_pre_s_from_a_keyframe_and_is_bounded_in_bytes():
    ring = PacketRing(seconds=2.0, max_bytes=10_000)
    ring.append(fake(0.0, False))  # nothing before the first keyframe is kept
    assert len(ring) == 0
    for i in range(100):  # 10 s at 10 packets/s, a keyframe every second
        ring.append(fake(i / 10, i % 10 == 0))
    first = ring.packets[0]
    assert first.keyframe and first.wall <= 9.9 - 2.0  # reaches back pre_s, from a keyframe
    assert first.wall > 9.9 - 3.0 - 1e-9  # and not a whole GOP more
    assert ring.since(8.5)[0].wall == 8.0  # a clip for an event at 10.5 with pre_s=2 starts at 8.0
    # A GOP bigger than the bound: the ring empties and starts again at the next keyframe.
    small = PacketRing(seconds=10.0, max_bytes=1000)
    for i in range(30):
        small.append(fake(i / 10, i % 10 == 0))
    assert small.bytes <= 1000 and (len(small) == 0 or small.packets[0].keyframe)


def feed(clip: Path, rec: ClipRecorder, wall0: float = 1000.0) -> Iterator[Packet]:
    """Hand a real file's packets to `rec` as a camera thread would, with wall times = pts (seconds)."""
    with av.open(str(clip)) as c:
        s = c.streams.video[0]
        rec.open(StreamInfo(s.codec_context.name, s.codec_context.width, s.codec_context.height, s.time_base,
                            s.codec_context.extradata, s))
        for p in c.demux(s):
            if not p.size:
                continue
            pkt = Packet(bytes(p), p.pts, p.dts, bool(p.is_keyframe), wall0 + float(p.pts * s.time_base))
            rec.packet(pkt)
            yield pkt
        rec.close()


def decoded_times(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        return [f.time for f in c.decode(video=0)]


def test_two_close_events_make_one_clip_starting_at_a_keyframe(tmp_path, test_clip):
    done: list[ClipRecord] = []
    counters = EvidenceCounters()
    rec = ClipRecorder("cam", tmp_path, ClipsConfig(pre_s=1.0, post_s=0.5), DiskGuard(), counters, done.append)
    clips = []
    for pkt in feed(test_clip, rec):
        t = pkt.wall - 1000.0
        if abs(t - 1.6) < 1e-6 or abs(t - 2.0) < 1e-6:  # two events 0.4 s apart
            clips.append(rec.trigger(f"cam-{len(clips) + 1}", pkt.wall))
    assert len(clips) == 2 and clips[0] == clips[1], "the second event extends the first one's clip"
    assert len(done) == 1
    r = done[0]
    assert r.events == ["cam-1", "cam-2"] and r.reason == "post_s"
    assert r.start_ts <= 1000.0 + 1.6 - 1.0  # from the keyframe before pre_s (gop 15 at 15 fps: 0.0 s)
    assert r.end_ts >= 1000.0 + 2.0 + 0.5
    times = decoded_times(tmp_path / r.path)
    assert times and all(b > a for a, b in pairwise(times))
    assert times[-1] - times[0] >= (r.end_ts - r.start_ts) - 0.1  # every packet of the span is in it
    assert counters.status(False, 0).clips == 1


def test_a_codec_mp4_cannot_take_gives_one_warning_and_no_clip(tmp_path, caplog):
    counters = EvidenceCounters()
    rec = ClipRecorder("cam", tmp_path, ClipsConfig(), DiskGuard(), counters, lambda r: None)
    caplog.set_level(logging.WARNING)
    for _ in range(2):
        rec.open(StreamInfo("pcm_mulaw", 0, 0, Fraction(1, 8000), None))
        rec.packet(fake(1.0, True))
        assert rec.trigger("e1", 1.0) is None
    assert sum("cannot go into an MP4" in r.message for r in caplog.records) == 1
    assert dict(counters.status(False, 0).dropped) == {"codec": 2}
    assert not (tmp_path / "cam").exists()


@pytest.mark.parametrize("fmt", [NATIVE, NV12, RGB])
def test_snapshot_crop_matches_the_box_in_the_decoded_frame(test_clip, fmt):
    from torchvision.io import decode_jpeg, encode_jpeg

    with av.open(str(test_clip)) as c:
        s = c.streams.video[0]
        dec = CpuDecoder(s, pixel_format={NATIVE: NATIVE, NV12: "nv12", RGB: "rgb24"}[fmt])
        img = next(i for p in c.demux(s) for i in dec.decode(p))
    with av.open(str(test_clip)) as c:
        truth = next(c.decode(video=0)).to_ndarray(format="rgb24")  # FFmpeg's own conversion
    frame = Frame(0, 7, 0.0, img.image, img.height, img.width, img.pixel_format, colorimetry=img.colorimetry)
    box = (101.3, 57.8, 263.1, 201.4)
    bests = TrackBests(margin=0.1)
    bests.update(frame, (TrackedObject(5, 0, "person", 0.9, box),), now=1.0)
    best = bests.tracks[5]
    x0, y0, x1, y1 = crop_box(box, 0.1, frame.width, frame.height)
    assert best.region == (x0, y0, x1, y1) and best.frame == 7
    assert x0 <= box[0] and y0 <= box[1] and x1 >= box[2] and y1 >= box[3]
    got = decode_jpeg(encode_jpeg(best.crop, quality=95)).permute(1, 2, 0).numpy().astype(np.int16)
    want = truth[y0:y1, x0:x1].astype(np.int16)
    assert got.shape == want.shape
    assert np.abs(got - want).mean() < 6.0  # JPEG and YUV->RGB rounding only
    # Shifted by a few pixels the crop no longer matches: the comparison can fail.
    assert np.abs(got[:, :-8] - truth[y0:y1, x0 + 8:x1].astype(np.int16)).mean() > np.abs(got - want).mean()
    # A worse detection of the same track does not replace it; a much better one does.
    bests.update(frame, (TrackedObject(5, 0, "person", 0.5, box),), now=2.0)
    assert bests.tracks[5].score == pytest.approx(0.9 * (box[2] - box[0]) * (box[3] - box[1]))
    assert torch.equal(bests.tracks[5].crop, best.crop)


def test_retention_deletes_oldest_first_within_bytes_and_age_and_keeps_the_open_clip(tmp_path):
    from rtsp_worker.config.evidence import Retention
    from rtsp_worker.evidence.disk import enforce

    now = 1_000_000.0
    files = []
    for i in range(5):  # 1000 bytes each, a minute apart, oldest first
        p = tmp_path / f"c{i}.mp4"
        p.write_bytes(b"x" * 1000)
        os.utime(p, (now - 600 + 60 * i, now - 600 + 60 * i))
        files.append(p)
    assert enforce(tmp_path, Retention(max_bytes=2500), keep=files[0], now=now) == 3
    # The open clip stays (its bytes count): the three next oldest go.
    assert [p.exists() for p in files] == [True, False, False, False, True]
    assert enforce(tmp_path, Retention(max_age=450), now=now) == 1  # files[0]: 600 s old
    assert [p.exists() for p in files] == [False, False, False, False, True]
    assert enforce(tmp_path, Retention(), now=now) == 0  # no limits: nothing deleted
