"""Shared pieces of the operations tests: a tiny model, small clips, small configs, a pipeline in a thread."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from tiny_models import export_tiny

from rtsp_worker.config import Config, parse_config
from rtsp_worker.pipeline import Pipeline
from rtsp_worker.sim.clips import write_test_clip

REPO = Path(__file__).resolve().parent.parent

# Short waits everywhere so that failures and recoveries happen within seconds.
FAST_SOURCE = {
    "open_timeout_s": 2.0,
    "read_timeout_s": 1.5,
    "stall_timeout_s": 1.0,  # below the read timeout: the watchdog flags STALLED before the read gives up
    "backoff_initial_s": 0.2,
    "backoff_max_s": 1.0,
    "backoff_jitter": 0.2,
}
# A camera is back within: the longest backoff wait, one connect attempt that may be in flight, and
# slack for the first key frame (1 s GOP in the clips) on two busy cores.
RECOVERY_BOUND_S = (FAST_SOURCE["backoff_max_s"] * (1 + FAST_SOURCE["backoff_jitter"])
                    + FAST_SOURCE["open_timeout_s"] + 4.0)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64x96-input, 3-class detector: outputs are meaningless but shaped like the real one's."""
    return export_tiny(tmp_path_factory.mktemp("models") / "tiny.onnx", size=(64, 96),
                       names=["person", "car", "bike"])


@pytest.fixture(scope="session")
def small_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s, 320x240, 15 fps H.264 (gop 15): cheap to serve and decode."""
    return write_test_clip(tmp_path_factory.mktemp("opclips") / "small.mp4", seconds=3, fps=15, size=(320, 240))


def make_config(cameras: list[dict[str, Any]], model: Path, out: Path, **extra: Any) -> Config:
    """A config for tests: CPU, fast reconnects, few detections (the tiny model scores everything ~0.5)."""
    raw: dict[str, Any] = {
        "cameras": cameras,
        "model": {"path": str(model)},
        "device": "cpu",
        "detection": {"confidence": 0.5, "max_detections": 8, "max_candidates": 64},
        "tracker": {"max_tracks": 32, "min_hits": 1},
        "output": {"dir": str(out)},
        "source": dict(FAST_SOURCE),
        "log_interval": 1.0,
    }
    for key, value in extra.items():
        raw[key] = {**raw[key], **value} if isinstance(raw.get(key), dict) else value
    return parse_config(raw)


class PipelineThread:
    """Runs `Pipeline.run()` on a thread (the calling thread stays free to break things)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.pipeline.run()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            self.error = e

    def stop(self, timeout: float = 30.0) -> None:
        self.pipeline.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "pipeline did not stop"
        if self.error is not None:
            raise self.error


def wait_for(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll `cond` until true; returns the seconds it took, fails the test with `what` after `timeout`."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - t0


def stop_worker(proc: subprocess.Popen) -> None:
    """SIGTERM a worker process that is still running and wait for it (30 s), then kill it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def control_request(port: int, method: str, path: str, body: Any = None, token: str | None = None,
                    raw: bytes | None = None) -> tuple[int, Any, str]:
    """One call to a worker's control API on 127.0.0.1:`port`: (status, the JSON answer or else its text, the text).

    `body` is sent as JSON, `raw` as it is; `token` as a bearer token.
    """
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, text = resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read().decode()
    try:
        return status, json.loads(text), text
    except ValueError:
        return status, text, text


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def rate(timestamps: list[float], t0: float, t1: float) -> float:
    """Frames per second with a timestamp in [t0, t1)."""
    return sum(1 for t in timestamps if t0 <= t < t1) / (t1 - t0)


def write_size_change_clip(path: Path, fps: int = 15, seconds_each: float = 2.0) -> Path:
    """One MPEG-TS file whose H.264 stream switches from 320x240 to 640x360 halfway, with continuous
    timestamps: two TS segments (each with its own SPS) concatenated, as a camera that changes
    resolution in place sends it."""
    n = int(fps * seconds_each)
    parts = []
    for k, (w, h) in enumerate(((320, 240), (640, 360))):
        part = path.with_name(f"{path.stem}.part{k}.ts")
        with av.open(str(part), mode="w", format="mpegts") as c:
            s = c.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "tune": "zerolatency"})
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            s.codec_context.gop_size = fps
            for i in range(n):
                img = np.full((h, w, 3), (40 * i) % 256, dtype=np.uint8)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                frame.pts = k * n + i
                frame.time_base = Fraction(1, fps)
                c.mux(s.encode(frame))
            c.mux(s.encode(None))
        parts.append(part.read_bytes())
    path.write_bytes(b"".join(parts))
    return path


def python_json(code: str) -> dict:
    """Run `code` (dedented) in a fresh interpreter, which has imported nothing of this one's; it prints one
    JSON line last, returned parsed."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
