"""`rtsp-worker probe URL` against the real RTSP server: what a stream is, or exactly why it cannot be read."""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import quote

import pytest
from ops_support import REPO, small_clip
from redis_fixture import free_port

from rtsp_worker.sources.probe import probe_stream

pytestmark = pytest.mark.rtsp
FIXTURES = (small_clip,)  # pytest finds fixtures by their module-level name


@pytest.fixture
def server(rtsp_server_factory, small_clip):
    return rtsp_server_factory({"ok": f"file:{small_clip}", "mj": "mjpeg:320x240@10"}, auth=None)


def test_probe_reports_a_good_stream(server) -> None:
    r = probe_stream(server.url("ok"), timeout=5)
    assert r.error == ""
    assert (r.codec, r.width, r.height) == ("h264", 320, 240)
    assert r.fps == pytest.approx(15, abs=0.5)
    assert 0 < r.open_s <= r.first_frame_s < 5
    assert r.describe().startswith(f"{server.url('ok')}: codec=h264 resolution=320x240 fps=15.00")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mount:nope", "404 not found"),
        ("refused", "connection refused"),
        ("rtsp://camera.invalid/x", "host cannot be resolved: camera.invalid"),
        ("mount:mj", "unsupported codec: codec 'mjpeg' is not supported"),
        ("ftp://h/x", "unsupported URL scheme 'ftp'"),
    ],
)
def test_probe_says_why_a_stream_fails(server, url: str, reason: str) -> None:
    if url.startswith("mount:"):
        url = server.url(url.removeprefix("mount:"))
    elif url == "refused":
        url = f"rtsp://127.0.0.1:{free_port()}/x"
    r = probe_stream(url, timeout=5)
    assert reason in r.error, r


def test_probe_cli_exit_codes_and_masked_credentials(server) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def cli(url: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "rtsp_worker.cli", "probe", url, "--timeout", "5"],
                              capture_output=True, text=True, timeout=60, env=env, check=False)

    ok = cli(server.url("ok"))
    assert ok.returncode == 0, ok.stderr
    assert "codec=h264 resolution=320x240" in ok.stdout
    url = f"rtsp://admin:hunter2@127.0.0.1:{server.port}/nope"
    bad = cli(url)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == (
        f"error: rtsp://admin:***@127.0.0.1:{server.port}/nope: 404 not found (check the stream path)"
    )
    assert "hunter2" not in bad.stderr + bad.stdout


def test_a_password_with_url_delimiters_works_percent_encoded(rtsp_server_factory, small_clip) -> None:
    """What the config check asks for works: FFmpeg refuses the raw '#', '/', '?', takes them encoded."""
    pw = "p#ss/w?rd@9"
    srv = rtsp_server_factory({"ok": f"file:{small_clip}"}, auth=("admin", pw))
    raw = probe_stream(f"rtsp://admin:{pw}@127.0.0.1:{srv.port}/ok", timeout=5)
    assert raw.error and raw.codec == "", raw
    encoded = probe_stream(f"rtsp://admin:{quote(pw, safe='')}@127.0.0.1:{srv.port}/ok", timeout=5)
    assert encoded.error == "" and encoded.codec == "h264", encoded
