"""Run the real RTSP server (`rtsp_worker/sim/rtsp_server.py`) as a child process, for tests and demos.

The server needs GStreamer's Python bindings (`gi`), which exist only under Debian's /usr/bin/python3, so
it runs in that interpreter in its own process group; this module is pure stdlib and works from any venv.

    with RtspServerProcess.start({"cam0": "file:clip.mp4", "live": "testsrc:640x360@15"}) as srv:
        url = srv.url("cam0")          # rtsp://127.0.0.1:<port>/cam0
        srv.kill(); srv.restart()      # crash and come back on the same port
"""

from __future__ import annotations

import functools
import logging
import os
import selectors
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

# The interpreter that has `gi`; overridable for systems whose GStreamer bindings live elsewhere.
SYSTEM_PYTHON = os.environ.get("RTSP_SERVER_PYTHON", "/usr/bin/python3")
SERVER_SCRIPT = Path(__file__).resolve().with_name("rtsp_server.py")
_GI_CHECK = """
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
needed = ("appsrc", "clocksync", "qtdemux", "h264parse", "rtph264pay", "videotestsrc", "videoconvert",
          "x264enc", "jpegenc", "rtpjpegpay")
missing = [e for e in needed if Gst.ElementFactory.find(e) is None]
if missing:
    raise SystemExit("missing GStreamer elements: " + ", ".join(missing))
"""


class RtspServerError(RuntimeError):
    """The RTSP server process could not start (or restart); the message carries its stderr tail."""


@functools.lru_cache(maxsize=1)
def available() -> str | None:
    """None when the RTSP server can run here, else the reason why not (for pytest skip messages)."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} not found (the RTSP server needs Debian's python3-gi)"
    try:
        res = subprocess.run(
            [SYSTEM_PYTHON, "-c", _GI_CHECK], check=False, capture_output=True, text=True, timeout=30, cwd="/"
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot run {SYSTEM_PYTHON}: {e}"
    if res.returncode != 0:
        lines = (res.stderr or res.stdout).strip().splitlines()
        return (
            f"{SYSTEM_PYTHON} cannot use GStreamer's RTSP server: {lines[-1] if lines else res.returncode} "
            "(apt install python3-gi python3-gst-1.0 gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-"
            "{base,good,bad,ugly})"
        )
    return None


class RtspServerProcess:
    """A running GstRtspServer child process serving `mounts` ({name: spec}) on 127.0.0.1.

    Specs: "file:/path/clip.mp4" (looping replay), "testsrc:WxH@FPS" (live H.264), "mjpeg:WxH@FPS".
    Create it with `RtspServerProcess.start(...)`; use it as a context manager to always stop it.
    """

    def __init__(
        self, mounts: dict[str, str], port: int = 0, auth: tuple[str, str] | str | None = None
    ) -> None:
        if not mounts:
            raise ValueError("RtspServerProcess: mounts must name at least one mount")
        # Absolute clip paths, so the server finds them whatever its working directory.
        self.mounts = {
            name: f"file:{Path(spec[5:]).resolve()}" if spec.startswith("file:") else spec
            for name, spec in mounts.items()
        }
        if isinstance(auth, str):
            user, sep, password = auth.partition(":")
            if not sep:
                raise ValueError(f"RtspServerProcess: auth {auth!r} must be 'USER:PASS'")
            auth = (user, password)
        self.auth: tuple[str, str] | None = auth
        self.port = port  # the bound port once started; restarts reuse it
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._frozen = False

    @classmethod
    def start(
        cls,
        mounts: dict[str, str],
        port: int = 0,
        auth: tuple[str, str] | str | None = None,
        timeout: float = 10.0,
    ) -> RtspServerProcess:
        """Spawn the server and wait (at most `timeout` s) until it listens; returns the running server."""
        server = cls(mounts, port, auth)
        server._spawn(timeout)
        return server

    # -- addresses ---------------------------------------------------------------------------------
    def url(self, mount: str, with_auth: bool = False) -> str:
        """rtsp://127.0.0.1:<port>/<mount>, with the server's credentials inside when `with_auth`."""
        userinfo = ""
        if with_auth and self.auth is not None:
            userinfo = f"{self.auth[0]}:{self.auth[1]}@"
        return f"rtsp://{userinfo}127.0.0.1:{self.port}/{mount}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has ended (negative: killed by that signal), else None."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- life cycle --------------------------------------------------------------------------------
    def _command(self) -> list[str]:
        cmd = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port)]
        for name, spec in self.mounts.items():
            cmd += ["--mount", f"{name}={spec}"]
        if self.auth is not None:
            cmd += ["--auth", f"{self.auth[0]}:{self.auth[1]}"]
        return cmd

    def _stderr_tail(self, n: int = 15) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return "\n".join(lines[-n:])

    def _spawn(self, timeout: float) -> None:
        if self.running:
            raise RtspServerError(f"RTSP server already running (pid {self.pid})")
        reason = available()
        if reason is not None:
            raise RtspServerError(reason)
        self._close_files()
        # stderr goes to a file: it never blocks the child, and its tail explains a failed start.
        self._stderr = tempfile.TemporaryFile(prefix="rtsp_server-", suffix=".err")  # noqa: SIM115
        self._proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,  # own process group: signals reach only the server
        )
        self._frozen = False
        try:
            port = self._wait_ready(timeout)
        except RtspServerError:
            self._signal(signal.SIGKILL)
            self._reap(2.0)
            raise
        self.port = port
        log.info(
            "RTSP server pid %d listening on 127.0.0.1:%d (%s)", self._proc.pid, port, ", ".join(self.mounts)
        )

    def _wait_ready(self, timeout: float) -> int:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self._proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RtspServerError(
                        f"RTSP server did not report READY within {timeout:.1f} s; "
                        f"stderr:\n{self._stderr_tail()}"
                    )
                if not sel.select(left):
                    continue
                chunk = os.read(self._proc.stdout.fileno(), 4096)
                if not chunk:
                    code = self._proc.wait(timeout=2)
                    raise RtspServerError(
                        f"RTSP server exited with code {code} before READY; stderr:\n{self._stderr_tail()}"
                    )
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode(errors="replace").strip()
        if not line.startswith("READY port="):
            raise RtspServerError(
                f"RTSP server printed {line!r} instead of READY; stderr:\n{self._stderr_tail()}"
            )
        return int(line.removeprefix("READY port="))

    def _signal(self, sig: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, sig)
            except ProcessLookupError:
                pass

    def _reap(self, timeout: float) -> bool:
        assert self._proc is not None
        try:
            self._proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def _close_files(self) -> None:
        if self._proc is not None and self._proc.stdout is not None:
            self._proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop cleanly (SIGTERM), then SIGKILL if it has not exited within `timeout` s. Idempotent."""
        if self._proc is None:
            return
        if self._frozen:
            self._signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self._frozen = False
        self._signal(signal.SIGTERM)
        if not self._reap(timeout):
            log.warning("RTSP server pid %d ignored SIGTERM for %.1f s; killing it", self._proc.pid, timeout)
            self._signal(signal.SIGKILL)
            self._reap(5.0)
        self._close_files()

    def kill(self) -> None:
        """SIGKILL the server, as a crash: clients' connections drop without an RTSP TEARDOWN."""
        if self._proc is None:
            return
        self._signal(signal.SIGKILL)
        self._reap(5.0)
        self._frozen = False

    def freeze(self) -> None:
        """SIGSTOP: the sockets stay open but nothing is sent, like a hung camera."""
        self._signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """SIGCONT after `freeze()`."""
        self._signal(signal.SIGCONT)
        self._frozen = False

    def restart(self, timeout: float = 10.0, retry_for: float = 3.0) -> None:
        """Stop if running, then start again on the same port with the same mounts.

        Rebinding right after a kill normally works at once; a failed bind is retried for `retry_for` s.
        """
        self.stop()
        deadline = time.monotonic() + retry_for
        while True:
            try:
                self._spawn(timeout)
                return
            except RtspServerError:
                if time.monotonic() >= deadline:
                    raise
                log.info("RTSP server could not rebind port %d yet; retrying", self.port)
                time.sleep(0.2)

    def __enter__(self) -> RtspServerProcess:  # noqa: PYI034 (typing.Self needs 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"RtspServerProcess(port={self.port}, mounts={self.mounts!r}, {state})"
