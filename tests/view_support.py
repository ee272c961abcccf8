"""Shared pieces of the live-view tests: a worker started by the real command line, HTTP calls, an MJPEG
client that parses parts, metrics read back from /metrics."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from ops_support import FAST_SOURCE, REPO


def write_config(tmp_path: Path, cameras: list[dict], model: Path, port: int, **extra: Any) -> Path:
    cfg: dict[str, Any] = {
        "cameras": cameras,
        "model": {"path": str(model), "parallel_runs": 1, "threads": 1},
        "device": "cpu",
        "detection": {"confidence": 0.5, "max_detections": 8, "max_candidates": 64},
        "tracker": {"max_tracks": 32, "min_hits": 1},
        "output": {"dir": str(tmp_path / "out")},
        "source": dict(FAST_SOURCE),
        "metrics": {"port": port},
        "log_interval": 1.0,
    }
    for key, value in extra.items():
        cfg[key] = {**cfg[key], **value} if isinstance(cfg.get(key), dict) else value
    path = tmp_path / "cameras.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def start_worker(config: Path, cwd: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
    log = cwd / "worker.log"
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "rtsp_worker.cli", "run", str(config)], cwd=cwd,
                                env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                                stdout=subprocess.DEVNULL, stderr=err)
    return proc, log


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}, b""


def metric(port: int, name: str, labels: str = "") -> float:
    """A value from /metrics (the sum over series whose labels contain `labels`); 0 when absent."""
    _, _, body = get(f"http://127.0.0.1:{port}/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        m = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if m and labels in (m.group(1) or ""):
            total += float(m.group(2))
    return total


class MjpegClient:
    """Reads `multipart/x-mixed-replace` parts on a thread; `parts` holds (X-Frame-Seq, JPEG bytes).

    `stall()` stops reading (the socket stays open, its receive buffer fills): a viewer that went away
    without closing."""

    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None, rcvbuf: int | None = None):
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
        self.parts: list[tuple[int, bytes]] = []
        self.status = 0
        self.content_type = ""
        self.closed = threading.Event()
        self._reading = threading.Event()
        self._reading.set()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stall(self) -> None:
        self._reading.clear()

    def close(self) -> None:
        self._reading.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _recv(self) -> bytes:
        self._reading.wait()
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        return data

    def _run(self) -> None:
        buf = b""
        try:
            while b"\r\n\r\n" not in buf:
                buf += self._recv()
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode().split("\r\n")
            self.status = int(lines[0].split()[1])
            hdrs = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
            self.content_type = hdrs.get("content-type", "")
            chunked = hdrs.get("transfer-encoding", "") == "chunked"
            raw = b""
            while True:
                # De-chunk what arrived, then cut parts out of the body stream.
                if chunked:
                    while True:
                        if b"\r\n" not in buf:
                            break
                        size_line, rest = buf.split(b"\r\n", 1)
                        size = int(size_line, 16)
                        if len(rest) < size + 2:
                            break
                        if size == 0:
                            raise ConnectionError("end of stream")
                        raw += rest[:size]
                        buf = rest[size + 2:]
                else:
                    raw, buf = raw + buf, b""
                while True:
                    start = raw.find(b"--frame\r\n")
                    end = raw.find(b"\r\n\r\n", start) if start >= 0 else -1
                    if end < 0:
                        break
                    part_head = raw[start:end].decode()
                    length = int(re.search(r"Content-Length: (\d+)", part_head).group(1))
                    seq = int(re.search(r"X-Frame-Seq: (\d+)", part_head).group(1))
                    if len(raw) < end + 4 + length:
                        break
                    self.parts.append((seq, raw[end + 4:end + 4 + length]))
                    raw = raw[end + 4 + length:]
                buf += self._recv()
        except (ConnectionError, OSError, ValueError):
            pass
        finally:
            self.closed.set()


def wait_until(cond: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
