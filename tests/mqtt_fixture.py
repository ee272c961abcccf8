"""A real Mosquitto broker on free loopback ports, and a paho subscriber, for the MQTT sink tests.

The broker is started by the test (`mosquitto -c <conf>` in a tmp dir), never the system service. It keeps
its sessions on disk (`persistence`), so a subscriber with a persistent session gets, after the broker is
restarted, what was published to it while it was away.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import skip_or_fail

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_self_signed(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) for CN=localhost, IP 127.0.0.1, made with the openssl CLI; valid for a day."""
    cert, key = directory / "broker.crt", directory / "broker.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


class Mosquitto:
    """One broker: a plain listener on `port`, optionally a TLS one on `tls_port`, optionally passwords."""

    def __init__(self, directory: Path, users: dict[str, str] | None = None, tls: bool = False) -> None:
        self.dir = directory
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.cert: Path | None = None
        lines = [f"listener {self.port} 127.0.0.1", "persistence true", f"persistence_location {directory}/",
                 "autosave_interval 0", "max_queued_messages 100000", "log_type error", "log_type warning",
                 f"log_dest file {directory / 'mosquitto.log'}"]
        if os.geteuid() == 0:
            lines.append("user root")  # as root it would switch to `mosquitto`, who cannot read the tmp dir
        if users:
            pw = directory / "passwd"
            for i, (user, password) in enumerate(users.items()):
                subprocess.run([MOSQUITTO_PASSWD, "-b", *(["-c"] if i == 0 else []), str(pw), user, password],
                               check=True, capture_output=True, timeout=30)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if tls:
            self.cert, key = make_self_signed(directory)
            lines += [f"listener {self.tls_port} 127.0.0.1", f"certfile {self.cert}", f"keyfile {key}"]
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> Mosquitto:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "mosquitto.log").read_text() if (self.dir / "mosquitto.log").exists() else ""
                raise RuntimeError(f"mosquitto on port {self.port} did not start (exit {self.proc.poll()}): {log}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: the broker saves its sessions (persistence) and exits."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class Subscriber:
    """A paho client subscribed to `topic` (QoS 1) with a persistent session; `messages` in arrival order."""

    def __init__(self, broker: Mosquitto, topic: str, client_id: str = "test-subscriber") -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []  # (topic, payload, retained)
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.topic = topic
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(0.2, 1)  # type: ignore[arg-type]
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(15):
            raise RuntimeError("the test subscriber did not get its subscription acknowledged")

    def _on_message(self, _client: object, _userdata: object, msg: object) -> None:
        with self.lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))  # type: ignore[attr-defined]

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """`factory(users=None, tls=False)` starts a broker on free ports; all are stopped at teardown."""
    if not Path(MOSQUITTO).exists():
        skip_or_fail("mosquitto is not installed (apt install mosquitto)")
    started: list[Mosquitto] = []

    def factory(users: dict[str, str] | None = None, tls: bool = False) -> Mosquitto:
        d = tmp_path / f"mosquitto{len(started)}"
        d.mkdir()
        broker = Mosquitto(d, users, tls).start()
        started.append(broker)
        return broker

    yield factory
    for broker in started:
        broker.stop()
