"""The HTTP server against hostile and clumsy clients (issue 27, defects 3 and 4).

In-process: framing answers (HEAD, OPTIONS, 413, 408, chunked bodies, smuggling attempts), a streaming
answer outliving the read timeout, the connection limit, no thread per connection. Then a real
`rtsp-worker run` process holding 500 idle and 50 slow connections: /metrics and /healthz still answer,
the worker's thread count stays bounded, stderr carries no raw traceback. All on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from ops_support import REPO, stop_worker, tiny_model, wait_for
from redis_fixture import free_port

from rtsp_worker.service.server import MAX_BODY, HttpServer, Response

FIXTURES = (tiny_model,)
STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


def exchange(port: int, data: bytes, timeout: float = 30.0) -> tuple[list[int], bytes, bool]:
    """Send `data`, read until the server closes (or `timeout`): (statuses answered, bytes, closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        try:
            c.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before taking all of it: what it answered is still read
        out, closed, end = b"", False, time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                chunk = c.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            out += chunk
    return [int(m) for m in STATUS.findall(out)], out, closed


@pytest.fixture
def server() -> Iterator[HttpServer]:
    srv = HttpServer("127.0.0.1", 0, max_connections=40, read_timeout_s=1.0)
    srv.route("GET", "/x", lambda r: Response(200, "hello\n"))
    srv.route("PUT", "/echo", lambda r: Response(201, r.body, "application/octet-stream"))

    async def ticks() -> Iterator[bytes]:  # type: ignore[misc]
        for i in range(3):
            await asyncio.sleep(0.7)  # 2.1 s in all: over twice the read timeout
            yield b"tick %d\n" % i

    srv.route("GET", "/stream", lambda r: Response(200, content_type="text/plain", stream=ticks()))
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


def test_head_options_and_405_allow(server: HttpServer) -> None:
    statuses, out, _ = exchange(server.port, b"HEAD /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert statuses == [200] and b"Content-Length: 6" in head and body == b""  # GET's headers, no body
    statuses, out, _ = exchange(server.port, b"OPTIONS /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert statuses == [204] and b"Allow: GET, HEAD, OPTIONS" in out
    statuses, out, _ = exchange(server.port, b"DELETE /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert statuses == [405] and b"Allow: GET, HEAD, OPTIONS" in out


def test_framing_oversized_chunked_and_smuggling_get_one_answer_and_a_close(server: HttpServer) -> None:
    inner = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n"
    big = inner * (2 * MAX_BODY // len(inner))  # 2 MiB of requests, as a body
    statuses, _, closed = exchange(server.port, b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"
                                   % len(big) + big)
    assert statuses == [413] and closed
    # Chunked: the chunks are the body (echoed), never requests of their own.
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)
    statuses, out, closed = exchange(server.port, b"PUT /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                                     b"Connection: close\r\n\r\n" + chunked)
    assert statuses == [201] and out.endswith(inner) and closed
    # Chunked and over the limit: counted as it arrives.
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(inner), inner) for _ in range(MAX_BODY // len(inner) + 2))
    statuses, _, closed = exchange(server.port, b"PUT /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   + chunks + b"0\r\n\r\n")
    assert statuses == [413] and closed
    # Both framings at once (the classic smuggling set-up): refused, closed.
    statuses, _, closed = exchange(server.port, b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + inner)
    assert statuses == [400] and closed
    statuses, _, closed = exchange(server.port, b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n")
    assert statuses == [400] and closed


def test_read_timeouts_close_slow_clients_but_never_a_stream(server: HttpServer) -> None:
    # A body shorter than its Content-Length: 408 once the read timeout passes, then closed.
    statuses, _, closed = exchange(server.port, b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nshort")
    assert statuses == [408] and closed
    # Headers never finished: closed without an answer.
    statuses, _, closed = exchange(server.port, b"GET /x HTTP/1.1\r\nHost: t\r\n")
    assert statuses == [] and closed
    # A streaming answer lasts as long as it has something to send (2.1 s > the 1 s read timeout).
    statuses, out, closed = exchange(server.port, b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
    assert statuses == [200] and all(b"tick %d" % i in out for i in range(3)) and out.endswith(b"0\r\n\r\n")


def test_connection_limit_refuses_with_503_and_counts_without_a_thread_per_connection(server: HttpServer) -> None:
    threads0 = threading.active_count()
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(40)]
    try:
        wait_for(lambda: server.open_connections == 40, 20, "40 open connections", 0.05)
        statuses, _, closed = exchange(server.port, b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        assert statuses == [503] and closed and server.refused_connections >= 1
        # 40 connections, no thread more: one event loop thread serves them all.
        assert threading.active_count() <= threads0  # (earlier tests' servers may still be winding down)
    finally:
        for c in held:
            c.close()
    wait_for(lambda: server.open_connections == 0, 20, "the connections to be closed", 0.05)
    assert exchange(server.port, b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")[0] == [200]


# -- the real worker --------------------------------------------------------------------------------------------
IDLE, SLOW = 500, 50


def _threads(pid: int) -> int:
    return int(re.search(r"Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _gauge(text: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE).group(1))


@pytest.mark.slow
def test_worker_answers_metrics_and_health_under_550_idle_and_slow_connections(tmp_path: Path, tiny_model: Path):
    port = free_port()
    cfg = {
        # Nothing listens on port 1: the camera retries in the background; the HTTP side is what is tested.
        "cameras": [{"name": "a", "url": "rtsp://127.0.0.1:1/a"}],
        "model": {"path": str(tiny_model), "parallel_runs": 1, "threads": 1},
        "device": "cpu",
        "output": {"dir": str(tmp_path / "out")},
        "metrics": {"port": port, "max_connections": IDLE + SLOW + 20},
        "control": {"token": "${RW_TEST_TOKEN}"},
    }
    path = tmp_path / "cameras.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    err_path = tmp_path / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RW_TEST_TOKEN": "t0k3n-for-http-tests"}
    with err_path.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "rtsp_worker.cli", "run", str(path)], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    held: list[socket.socket] = []
    try:
        wait_for(lambda: "http on http://" in err_path.read_text() or proc.poll() is not None, 60, "start-up", 0.2)
        assert proc.poll() is None, err_path.read_text()[-3000:]
        soft, hard = re.search(r"Max open files\s+(\S+)\s+(\S+)", Path(f"/proc/{proc.pid}/limits").read_text()).groups()
        assert soft == hard or hard == "unlimited"  # raised at start (an unlimited hard limit is left alone)
        # /healthz answers from the start; /metrics joins the server once the engine is loaded.
        wait_for(lambda: _get(port, "/metrics")[0] == 200 or proc.poll() is not None, 120, "/metrics served", 0.5)
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(IDLE)]
        for _ in range(SLOW):  # slowloris: a request line and part of the headers, never finished
            c = socket.create_connection(("127.0.0.1", port))
            c.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            held.append(c)
        status, metrics = _get(port, "/metrics")
        assert status == 200 and _gauge(metrics, "rtsp_worker_http_connections") >= IDLE + SLOW
        assert _get(port, "/healthz")[0] == 200
        assert _threads(proc.pid) < 64
        # Smuggling through a worker: a 2 MiB body of requests, and requests inside chunks.
        inner = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        big = inner * (2 * MAX_BODY // len(inner))
        statuses, _, closed = exchange(port, b"PUT /cameras/x HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"
                                       % len(big) + big)
        assert statuses == [413] and closed
        statuses, _, closed = exchange(port, b"POST /reload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                                       b"Connection: close\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner))
        assert statuses == [401] and closed  # one answer (no token), to the POST; the chunk was its body
        # Clients that leave mid-answer and malformed lengths: answered or dropped, logged in one line.
        assert exchange(port, b"PUT /cameras/x HTTP/1.1\r\nHost: t\r\nContent-Length: 12x\r\n\r\n")[0] == [400]
        for _ in range(20):
            c = socket.create_connection(("127.0.0.1", port))
            c.sendall(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()  # a reset while the answer is being written
        # The slow ones are closed by the server after its read timeout; the limit then refuses beyond it.
        wait_for(lambda: all(_closed_by_server(c) for c in held[IDLE:]), 60, "slow clients to be closed", 0.5)
        for c in held:
            c.close()
        wait_for(lambda: _gauge(_get(port, "/metrics")[1], "rtsp_worker_http_connections") <= 1, 30,
                 "the held connections to be closed", 0.2)
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(IDLE + SLOW + 20)]
        statuses, _, closed = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert statuses == [503] and closed
        for c in held:
            c.close()
        held = []
        wait_for(lambda: _get(port, "/healthz")[0] == 200, 30, "room again", 0.2)
        status, metrics = _get(port, "/metrics")
        assert _gauge(metrics, "rtsp_worker_http_connections_refused_total") >= 1
        assert _threads(proc.pid) < 64
    finally:
        for c in held:
            c.close()
        stop_worker(proc)
    log = err_path.read_text()
    assert proc.returncode == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]  # nothing bypassed the log format (and its scrubber)
    assert "t0k3n-for-http-tests" not in log


def _closed_by_server(c: socket.socket) -> bool:
    c.settimeout(0.01)
    try:
        return c.recv(1024) == b""
    except TimeoutError:
        return False
    except OSError:
        return True
