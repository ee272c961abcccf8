"""The control API against a token holder who tries to read the worker's environment (issue 27, defect 1),
and the smaller API answers: camera names, file:// cameras, DELETE timing, a deleted cameras.yaml, stale
temporary files. One real `rtsp-worker run` process; every connection on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from ops_support import REPO, control_request, stop_worker, tiny_model, wait_for
from redis_fixture import free_port

FIXTURES = (tiny_model,)
TOKEN = "t0k3n-for-secret-tests"
CAM_PW = "s3cret-Cam-Pw"
CAM_KEY = "k3y-in-the-path"
LITERAL_PW = "lit3ral-Pw-in-a-body"


class Listener:
    """A TCP listener that counts the connections it accepts and holds them open, answering nothing
    (a camera connecting to it waits in its open timeout)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            self.held.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for c in self.held:
            c.close()
        self.sock.close()


def _dead_pid() -> int:
    for pid in range(4_000_000, 3_000_000, -1):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except OSError:
            continue
    raise AssertionError("no free pid found")


@pytest.mark.slow
def test_api_bodies_never_expand_the_environment_and_no_secret_leaves(tmp_path: Path, tiny_model: Path) -> None:
    counted, blackhole = Listener(), Listener()
    port = free_port()
    allowed = tmp_path / "clips"
    allowed.mkdir()
    path = tmp_path / "cameras.yaml"
    raw: dict[str, Any] = {
        "cameras": [{"name": "a", "url": "rtsp://admin:${CAM_PW}@127.0.0.1:1/a"},
                    {"name": "k", "url": "rtsp://127.0.0.1:1/${CAM_KEY}"}],
        "model": {"path": str(tiny_model), "parallel_runs": 1, "threads": 1},
        "device": "cpu",
        # A long open timeout: a DELETE must not wait for a connect in progress.
        "source": {"open_timeout_s": 30.0, "read_timeout_s": 5.0, "backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        "output": {"dir": str(tmp_path / "out")},
        "metrics": {"port": port},
        "control": {"token": "${RW_TEST_TOKEN}", "allow_file_dirs": [str(allowed)]},
        "watch_config": True,
    }
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    stale = tmp_path / f".cameras.yaml.{_dead_pid()}.140000000000.tmp"
    stale.write_text("cameras: []\n")  # what a write-back killed midway leaves
    err_path = tmp_path / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RW_TEST_TOKEN": TOKEN, "CAM_PW": CAM_PW, "CAM_KEY": CAM_KEY}
    with err_path.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "rtsp_worker.cli", "run", str(path)], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    answers: list[str] = []

    def log() -> str:
        return err_path.read_text()

    def request(method: str, url_path: str, body: Any = None, raw_body: bytes | None = None,
                token: str | None = TOKEN) -> tuple[int, Any]:
        status, answer, text = control_request(port, method, url_path, body, token, raw_body)
        answers.append(text)
        return status, answer

    def cameras() -> dict[str, dict]:
        status, body = request("GET", "/cameras", token=None)
        assert status == 200, body
        return {c["name"]: c for c in body["cameras"]}

    try:
        wait_for(lambda: "running 2 cameras" in log() or proc.poll() is not None, 60, "start-up", 0.2)
        assert proc.poll() is None, log()[-3000:]
        assert not stale.exists() and f"removed {stale.name}" in log()

        # Values from the environment are masked wherever a URL is shown.
        cams = cameras()
        assert cams["a"]["url"] == "rtsp://admin:***@127.0.0.1:1/a" and cams["k"]["url"] == "rtsp://127.0.0.1:1/***"

        # 1. Bodies that would read the environment: refused, naming the field; nothing written.
        file0 = path.read_bytes()
        target = f"rtsp://127.0.0.1:{counted.port}"
        probes = [
            ("x", {"url": f"{target}/${{RW_TEST_TOKEN}}"}, "field 'url'"),
            ("y", {"url": f"{target}/x${{CAM_PW}}"}, "field 'url'"),
            ("z", {"url": f"{target}/${{HOME}}"}, "field 'url'"),
            ("w", {"url": f"{target}/w", "lines": [{"name": "${CAM_KEY}", "points": [[0, 0], [9, 9]]}]},
             "field 'lines.0.name'"),
        ]
        for name, body, field in probes:
            status, answer = request("PUT", f"/cameras/{name}", body)
            assert status == 400 and field in answer["error"] and "'${'" in answer["error"], answer
        # The same through a JSON escape (\u0024 is '$'): the decoded body is what is checked.
        status, answer = request("PUT", "/cameras/v", raw_body=b'{"url": "%s/\\u0024{RW_TEST_TOKEN}"}'
                                 % target.encode())
        assert status == 400 and "field 'url'" in answer["error"], answer
        assert path.read_bytes() == file0
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload (SIGHUP) of" in log(), 30, "the reload", 0.2)
        time.sleep(1.0)
        assert counted.accepted == 0, "a refused body reached the file and was connected to"
        assert set(cameras()) == {"a", "k"}

        # 2. Names that would be hidden or special folders, and file:// cameras outside the allowed folders.
        for bad in (".hidden", ".", "..", "%2E%2E"):
            status, answer = request("PUT", f"/cameras/{bad}", {"url": f"{target}/n"})
            assert status == 400 and "with a dot" in answer["error"], (bad, answer)
        for url in ("file:///etc/hostname", f"file://{allowed}/../../etc/hostname", "file://otherhost/clip.mp4"):
            status, answer = request("PUT", "/cameras/f", {"url": url})
            assert status == 400 and "file://" in answer["error"], (url, answer)
        status, answer = request("PUT", "/cameras/f", {"url": f"file://{allowed}/clip.mp4"})
        assert status == 201, answer
        assert request("DELETE", "/cameras/f")[0] == 200
        assert counted.accepted == 0

        # 3. A literal password is accepted and masked; DELETE answers while the camera is still connecting.
        status, answer = request("PUT", "/cameras/b", {"url": f"rtsp://viewer:{LITERAL_PW}@127.0.0.1:"
                                                              f"{blackhole.port}/b"})
        assert status == 201, answer
        assert cameras()["b"]["url"] == f"rtsp://viewer:***@127.0.0.1:{blackhole.port}/b"
        wait_for(lambda: blackhole.accepted >= 1, 30, "camera b to connect", 0.1)
        t0 = time.monotonic()
        status, answer = request("DELETE", "/cameras/b")
        took = time.monotonic() - t0
        assert status == 200, answer
        assert took < 15.0, f"DELETE waited {took:.1f} s for a connect (open timeout 30 s)"
        assert "b" not in cameras() and "camera b removed" in log()

        # 4. cameras.yaml deleted with watch_config: one warning, cameras keep running; re-created: read.
        text = path.read_text()
        path.unlink()
        wait_for(lambda: "was deleted" in log(), 30, "the warning", 0.2)
        time.sleep(2.5)  # a few polls of the watch: still one warning
        assert log().count("was deleted") == 1 and set(cameras()) == {"a", "k"}
        path.write_text(text.replace("name: k\n", "name: k\n  infer_interval: 2\n"))
        wait_for(lambda: "camera k updated: infer_interval 1 -> 2" in log(), 30, "the re-created file", 0.2)

        answers.append(request("GET", "/metrics", token=None)[1])
        answers.append(json.dumps(request("GET", "/readyz", token=None)[1]))
        answers.append(json.dumps(request("GET", "/healthz", token=None)[1]))
    finally:
        stop_worker(proc)
        counted.close()
        blackhole.close()
    assert proc.returncode == 0, log()[-3000:]
    # Every answer, log line, metric and output: none of the values.
    outputs = [p.read_text(errors="replace") for p in (tmp_path / "out").rglob("*") if p.is_file()]
    everything = "\n".join([*answers, log(), *outputs])
    for secret in (TOKEN, CAM_PW, CAM_KEY, LITERAL_PW):
        assert secret not in everything, secret
    on_disk = path.read_text()
    assert TOKEN not in on_disk and CAM_PW not in on_disk and CAM_KEY not in on_disk  # references stay references
