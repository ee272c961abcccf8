"""A real `redis-server` on a free loopback port, for the Redis sink tests (import the fixture by name)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import skip_or_fail

if TYPE_CHECKING:
    import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server child process with persistence off; `stop(save=True)` keeps what it holds on disk
    (SHUTDOWN SAVE writes an RDB even with `--save ''`), so a restart in the same directory reloads it."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.dir = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        # Imported here: conftest registers this module for every test, and the GPU machine has no redis
        # (scripts/gpu_check.sh runs its GPU tests under an import blocker that hides it).
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, decode_responses=True)

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--dbfilename", "dump.rdb"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        import redis

        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.client().ping():
                    return self
            except redis.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start (exit {self.proc.poll()})")
            time.sleep(0.05)

    def stop(self, save: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if save:
            # Raw inline command: redis-py would retry the connection the server is closing.
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                s.sendall(b"SHUTDOWN SAVE\r\n")
                s.recv(64)  # returns (empty) once the server has saved and closed
        else:
            self.proc.terminate()  # with persistence off, SIGTERM exits at once without saving
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def redis_server_factory(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    """`factory()` starts a redis-server on a free port; all are stopped at teardown."""
    if not Path(REDIS_SERVER).exists():
        skip_or_fail("redis-server is not installed (apt install redis-server)")
    started: list[RedisServer] = []

    def factory() -> RedisServer:
        d = tmp_path / f"redis{len(started)}"
        d.mkdir()
        server = RedisServer(d).start()
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()
