"""Secrets never reach a log line, `last_error`, probe output or an error message: masked URLs, scrubbed
texts, tested with FFmpeg/PyAV's own error messages produced for real against local sockets."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from ops_support import FAST_SOURCE, REPO, tiny_model
from redis_fixture import free_port

from rtsp_worker.config import SourceOptions
from rtsp_worker.redact import ScrubFilter, mask_url, register_url, scrub, url_secrets
from rtsp_worker.sources.camera import describe_error, open_container

FIXTURES = (tiny_model,)
# Passwords as `${ENV}` secrets often are: with the characters urlsplit misreads.
TOKEN = "Tok3nQx9Zk"
PASSWORDS = ["S3cr3tPW", "p#ss/w?rd9", "a/b/c/d/ef", "x?y=z&w#1", "pct%41enc"]


@pytest.mark.parametrize("pw", PASSWORDS)
def test_mask_url_hides_passwords_with_url_delimiters(pw: str) -> None:
    masked = mask_url(f"rtsp://admin:{pw}@10.0.0.5:554/stream1")
    assert masked == "rtsp://admin:***@10.0.0.5:554/stream1"


def test_a_token_in_the_user_part_is_masked() -> None:
    assert mask_url("rtsp://TOKEN123abc@host/x") == "rtsp://***@host/x"
    assert url_secrets("rtsp://TOKEN123abc@host/x") == {"TOKEN123abc"}
    assert mask_url("rtsp://host:554/x") == "rtsp://host:554/x"


def test_scrub_removes_raw_decoded_and_encoded_forms() -> None:
    register_url("rtsp://op:p%40ss%23word@h/x")  # URL-encoded in the config: p@ss#word
    assert scrub("got p@ss#word back") == "got *** back"
    assert scrub("got p%40ss%23word back") == "got *** back"
    # An unregistered URL in free text still loses its credentials.
    assert scrub("error opening 'rtsp://u:zz#9@h/x' now") == "error opening 'rtsp://u:***@h/x' now"


class _Reply:
    """A TCP server on a free loopback port that answers every connection with `reply`, then closes."""

    def __init__(self, reply: bytes) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.recv(4096)
                    conn.sendall(self.reply)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def servers() -> Iterator[dict[str, int]]:
    s5xx = _Reply(b"RTSP/1.0 503 Service Unavailable\r\nCSeq: 1\r\n\r\n")
    garbage = _Reply(b"HELLO not rtsp\r\n\r\n")
    yield {"5xx": s5xx.port, "garbage": garbage.port, "refused": free_port()}
    s5xx.close()
    garbage.close()


def _failure_urls(ports: dict[str, int], pw: str) -> dict[str, str]:
    return {
        "refused": f"rtsp://admin:{pw}@127.0.0.1:{ports['refused']}/x",
        "5xx": f"rtsp://admin:{pw}@127.0.0.1:{ports['5xx']}/x",
        "tls": f"rtsps://admin:{pw}@127.0.0.1:{ports['garbage']}/x",
        "invalid": f"rtsp://admin:{pw}@127.0.0.1:{ports['garbage']}/x",
        "token": f"rtsp://{TOKEN}@127.0.0.1:{ports['garbage']}/x",
    }


@pytest.mark.parametrize("pw", PASSWORDS)
def test_ffmpeg_error_texts_are_scrubbed(servers: dict[str, int], pw: str) -> None:
    options = SourceOptions(open_timeout_s=2, read_timeout_s=2)
    for kind, url in _failure_urls(servers, pw).items():
        register_url(url)
        with pytest.raises(Exception) as info:  # whatever FFmpeg raises for this failure
            open_container(url, options)
        raw = f"{info.value} / {describe_error(info.value)}"
        secret = TOKEN if kind == "token" else pw
        if kind != "refused":
            assert secret in raw, (kind, raw)  # the library's own message quotes the URL: the case is real
        clean = scrub(raw)
        assert secret not in clean and pw not in clean, (kind, clean)
        assert "***" in clean or kind == "refused", (kind, clean)


def test_log_filter_scrubs_arguments_and_tracebacks() -> None:
    register_url("rtsp://u:Tr4ceback#pw@h/x")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep()
    handler.addFilter(ScrubFilter())
    logger = logging.getLogger("test_redact")
    logger.addHandler(handler)
    try:
        try:
            raise RuntimeError("open 'rtsp://u:Tr4ceback#pw@h/x' failed")
        except RuntimeError:
            logger.exception("camera %s: %s", "c", "Tr4ceback#pw")
    finally:
        logger.removeHandler(handler)
    assert records and "Tr4ceback#pw" not in records[0]
    assert "camera c: ***" in records[0] and "RuntimeError" in records[0]


def _cli(args: list[str], cwd: Path, timeout: float = 90, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rtsp_worker.cli", *args], cwd=cwd, check=False,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO), **env})


@pytest.mark.slow
def test_run_log_and_probe_output_carry_no_secret(tmp_path: Path, servers: dict[str, int], tiny_model) -> None:
    pw = "p#ss/w?rd9"
    encoded = quote(pw, safe="")  # what a URL needs: the config check refuses a raw '#', '/' or '?'
    urls = _failure_urls(servers, pw)
    # The passwords come from the environment, as the README recommends.
    cams = [{"name": k, "url": u.replace(pw, "${CAM_PW}")} for k, u in urls.items()]
    cfg = {"cameras": cams, "model": {"path": str(tiny_model)}, "device": "cpu",
           "output": {"dir": str(tmp_path / "out")}, "source": FAST_SOURCE, "log_interval": 0.5}
    path = tmp_path / "cameras.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = _cli(["run", str(path), "--duration", "6"], tmp_path, CAM_PW=encoded)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    assert "last_error=" in text and "reconnecting in" in text  # the lines that used to leak were printed
    for kind in urls:
        assert re.search(rf"camera={kind} state=\w+ .*last_error=", text), kind
    assert pw not in text and encoded not in text and TOKEN not in text
    assert "rtsp://admin:***@127.0.0.1" in text
    assert "5XX Server Error" in text  # FFmpeg reached the servers: the encoded password made a usable URL

    for kind, url in urls.items():
        probe = _cli(["probe", url, "--timeout", "3"], tmp_path)
        assert probe.returncode == 1, (kind, probe.stderr)
        out = probe.stdout + probe.stderr
        assert pw not in out and "***" in out, (kind, out)
