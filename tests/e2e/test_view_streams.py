"""The live view's MJPEG streams and latest.jpg against a real worker (command line) on the real RTSP server:
zero encodes without a viewer, one encode per frame for two viewers, a viewer that stops reading dropped
while another keeps receiving, the viewer bound, /events and /media on a loopback bind without a token."""

from __future__ import annotations

import json

import cv2
import numpy as np
from ops_support import stop_worker
from redis_fixture import free_port
from view_support import MjpegClient, get, metric, start_worker, wait_until, write_config

FRACTION_ZONE = {"name": "all", "units": "fractions", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]]}


def test_mjpeg_streams_encode_once_and_drop_a_stalled_viewer(tmp_path, rtsp_server_factory, small_clip,
                                                             tiny_model):
    srv = rtsp_server_factory({"a": f"file:{small_clip}", "b": f"file:{small_clip}"})
    port = free_port()
    cfg = write_config(tmp_path, [{"name": "a", "url": srv.url("a"), "zones": [FRACTION_ZONE]},
                                  {"name": "b", "url": srv.url("b")}], tiny_model, port,
                       view={"fps": 15, "jpeg_quality": 95, "max_viewers": 3})
    proc, log = start_worker(cfg, tmp_path)
    base = f"http://127.0.0.1:{port}"
    clients: list[MjpegClient] = []
    try:
        def state() -> dict:
            status, _, body = get(f"{base}/view/api/state")
            return {c["name"]: c for c in json.loads(body)["cameras"]} if status == 200 else {}

        wait_until(lambda: proc.poll() is None and all(state().get(n, {}).get("processed", 0) > 10 for n in "ab"),
                   90, f"both cameras processing (log: {log})")
        # Nobody watches: frames flow, nothing is drawn or encoded.
        before = state()["a"]["processed"]
        wait_until(lambda: state()["a"]["processed"] > before + 10, 60, "more frames processed")
        assert metric(port, "rtsp_worker_view_frames_encoded_total") == 0

        # Behind a proxy on the same box (forwarding headers): refused without a token, like any remote client.
        for header in ({"Forwarded": "for=203.0.113.9"}, {"X-Forwarded-For": "203.0.113.9"}):
            for path in ("/", "/cameras/a/latest.jpg", "/cameras/a/stream.mjpeg", "/events", "/media/a/frames.jsonl"):
                assert get(base + path, header)[0] == 401, (path, header)

        # Two viewers of one camera: valid JPEG parts, and one encode per frame for both.
        encoded0 = metric(port, "rtsp_worker_view_frames_encoded_total", 'camera="a"')
        stalled = MjpegClient(port, "/cameras/a/stream.mjpeg", rcvbuf=4096)
        steady = MjpegClient(port, "/cameras/a/stream.mjpeg")
        clients += [stalled, steady]
        wait_until(lambda: len(stalled.parts) >= 8 and len(steady.parts) >= 8, 60, "both viewers receiving")
        assert stalled.status == steady.status == 200
        assert steady.content_type.startswith("multipart/x-mixed-replace")
        for _, jpeg in steady.parts[:8]:
            assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"
            img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert img is not None and img.shape == (240, 320, 3)
        stalled.stall()
        seen = {s for s, _ in steady.parts} | {s for s, _ in stalled.parts}
        encoded = metric(port, "rtsp_worker_view_frames_encoded_total", 'camera="a"') - encoded0
        # Each frame encoded once whatever the number of viewers (a per-viewer encode would be ~twice `seen`);
        # a few may have been encoded after the last part was read.
        assert len(seen) <= encoded <= len(seen) + 6, (encoded, len(seen))
        assert metric(port, "rtsp_worker_view_frames_encoded_total", 'camera="b"') == 0  # not watched

        # The stalled viewer is dropped; the other keeps receiving meanwhile and after.
        wait_until(lambda: metric(port, "rtsp_worker_view_viewers", 'camera="a"') == 1, 90,
                   "the stalled viewer dropped")
        received = len(steady.parts)
        wait_until(lambda: len(steady.parts) > received + 5, 60, "the steady viewer still receiving")

        # The bound: 3 streams at most (view.max_viewers); the 4th gets 503 + Retry-After.
        more = [MjpegClient(port, "/cameras/b/stream.mjpeg") for _ in range(2)]
        clients += more
        wait_until(lambda: all(c.parts for c in more), 60, "two more viewers")
        status, headers, _ = get(f"{base}/cameras/b/stream.mjpeg")
        assert status == 503 and int(headers["retry-after"]) > 0
        for c in more:
            c.close()
        wait_until(lambda: metric(port, "rtsp_worker_view_viewers", 'camera="b"') == 0, 30, "viewers of b gone")

        # latest.jpg: 503 until a picture is drawn (asking makes the camera watched), then the picture.
        def latest() -> int:
            status, _, body = get(f"{base}/cameras/b/latest.jpg")
            return status if status != 200 or body[:2] == b"\xff\xd8" else -1
        wait_until(lambda: latest() == 200, 30, "latest.jpg of b")

        # Events of the zone (every track enters it) from memory, bounded; the camera's files under /media.
        def events(query: str) -> list[dict]:
            status, _, body = get(f"{base}/events?{query}")
            assert status == 200
            return json.loads(body)["events"]
        wait_until(lambda: len(events("camera=a")) >= 2, 60, "zone events of a")
        got = events("camera=a&limit=1")
        assert len(got) == 1 and got[0]["kind"] == "zone" and got[0]["zone"] == "all"
        # `since` is exclusive: the newest event is not returned again (newer ones may have come meanwhile).
        later = events(f"camera=a&since={got[0]['ts']}")
        assert got[0]["id"] not in {e["id"] for e in later} and all(e["ts"] > got[0]["ts"] for e in later)
        assert all(e["camera"] == "a" for e in events("camera=a"))
        status, headers, body = get(f"{base}/media/a/frames.jsonl")
        assert status == 200 and json.loads(body.splitlines()[0])["camera"] == "a"
        assert get(f"{base}/media/a/..%2Fb%2Fframes.jsonl")[0] == 404
    finally:
        for c in clients:
            c.close()
        stop_worker(proc)
    assert proc.returncode == 0, log.read_text()[-3000:]
