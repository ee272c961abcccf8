"""The access rule of pictures, events and media (service/access.py), the login form, /media's path checks
(traversal, symlinks out of a camera's folder), /events' bounds, the loopback rule and the start-up refusal in
the config, and `view.enabled: false`. Over a real HttpServer on a free port; no pipeline needed except where
a test says so."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from view_support import get

from rtsp_worker.config import ConfigError, is_loopback, parse_config
from rtsp_worker.service.access import COOKIE, MAX_FAILURES, Access
from rtsp_worker.service.evidence_http import EventLog, EvidenceHttp
from rtsp_worker.service.server import HttpServer, Request
from rtsp_worker.types import Event

TOKEN = "view-secret-0123456789"


def _req(path: str = "/", headers: dict[str, str] | None = None, method: str = "GET", body: bytes = b"") -> Request:
    return Request(method, path, {}, {}, {k.lower(): v for k, v in (headers or {}).items()}, body)


def test_loopback_rule():
    for host in ("127.0.0.1", "127.0.0.2", "127.255.0.9", "localhost", "::1", "[::1]"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "192.168.1.10", "10.0.0.1", "example.com", "my-box"):
        assert not is_loopback(host), host


def test_without_a_token_only_loopback_binds_and_no_proxy_headers():
    loop = Access(None, "127.0.0.1")
    assert loop.check(_req()) is None
    for h in ({"Forwarded": "for=1.2.3.4"}, {"X-Forwarded-For": "1.2.3.4"}):
        refused = loop.check(_req(headers=h))
        assert refused is not None and refused.status == 401
    remote = Access(None, "0.0.0.0")
    assert remote.check(_req()).status == 401
    assert Access(None, "0.0.0.0", public=True).check(_req()) is None


def test_with_a_token_it_is_needed_whatever_the_bind():
    for host in ("127.0.0.1", "0.0.0.0"):
        a = Access(TOKEN, host)
        assert a.check(_req()).status == 401
        assert a.check(_req(headers={"Authorization": "Bearer nope"})).status == 401
        assert a.check(_req(headers={"Authorization": f"Basic {TOKEN}"})).status == 401
        assert a.check(_req(headers={"Cookie": f"{COOKIE}={TOKEN}"})).status == 401  # the token is not the session
        assert a.check(_req(headers={"Authorization": f"Bearer {TOKEN}"})) is None
        page = a.check(_req("/view/x"), page=True)
        assert page.status == 401 and "<form" in page.body and TOKEN not in page.body


def test_login_sets_a_derived_httponly_strict_cookie_and_failures_are_rate_limited():
    now = [0.0]
    a = Access(TOKEN, "0.0.0.0", clock=lambda: now[0])
    http = HttpServer("127.0.0.1", 0)
    a.register(http)
    ok = http.dispatch(_req("/login", method="POST", body=f"token={TOKEN}&next=/view/cam".encode()))
    assert ok.status == 303 and ok.headers["Location"] == "/view/cam"
    cookie = ok.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    value = cookie.split(";")[0]
    assert a.check(_req(headers={"Cookie": f"other=1; {value}"})) is None
    # Another token, another session value: old cookies end when the token changes.
    assert Access("another-token-xyz", "0.0.0.0").check(_req(headers={"Cookie": value})).status == 401
    # Only paths on this server after logging in.
    evil = http.dispatch(_req("/login", method="POST", body=f"token={TOKEN}&next=//evil.example/x".encode()))
    assert evil.headers["Location"] == "/"
    for _ in range(MAX_FAILURES):
        bad = http.dispatch(_req("/login", method="POST", body=b"token=wrong"))
        assert bad.status == 401 and "Set-Cookie" not in bad.headers
    limited = http.dispatch(_req("/login", method="POST", body=f"token={TOKEN}".encode()))
    assert limited.status == 429 and int(limited.headers["Retry-After"]) > 0  # even the right token waits
    now[0] += 61
    assert http.dispatch(_req("/login", method="POST", body=f"token={TOKEN}".encode())).status == 303


@pytest.fixture
def media(tmp_path: Path):
    out = tmp_path / "out"
    (out / "cam" / "snapshots").mkdir(parents=True)
    (out / "cam" / "snapshots" / "a.jpg").write_bytes(b"\xff\xd8snap\xff\xd9")
    (out / "cam" / "clips").mkdir()
    (out / "cam" / "clips" / "big.mp4").write_bytes(os.urandom(17 << 20))  # streamed in chunks
    (out / "other").mkdir()
    (out / "other" / "events.jsonl").write_text('{"x": 1}\n')
    (tmp_path / "secret.txt").write_text("outside output.dir")
    (out / "cam" / "out-link.txt").symlink_to(tmp_path / "secret.txt")
    (out / "cam" / "other-link").symlink_to(out / "other")  # a symlink to another camera's folder
    (out / "cam" / "in-link.jpg").symlink_to(out / "cam" / "snapshots" / "a.jpg")  # inside: allowed
    (out / "escape").symlink_to(tmp_path)  # a "camera folder" that is a symlink out of output.dir
    (out / "cam" / ".hidden").write_text("x")
    events = EventLog(3)
    http = HttpServer("127.0.0.1", 0).start()
    a = Access(TOKEN, "127.0.0.1")
    EvidenceHttp(http, a, events, out)
    yield http, events
    http.close()


def _raw_get(port: int, path: str, token: str = TOKEN) -> int:
    """The path exactly as written (no client-side normalisation of `..`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
                  .encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_media_serves_the_camera_folder_only(media):
    http, _ = media
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, headers, body = get(f"{http.url}/media/cam/snapshots/a.jpg", auth)
    assert status == 200 and body == b"\xff\xd8snap\xff\xd9" and headers["content-type"] == "image/jpeg"
    assert headers["x-content-type-options"] == "nosniff"
    status, headers, body = get(f"{http.url}/media/cam/clips/big.mp4", auth)
    assert status == 200 and len(body) == 17 << 20
    assert get(f"{http.url}/media/cam/in-link.jpg", auth)[0] == 200
    assert get(f"{http.url}/media/cam/snapshots/a.jpg")[0] == 401
    assert get(f"{http.url}/media/cam/snapshots/a.jpg", {"Authorization": "Bearer wrong"})[0] == 401
    for path in ("/media/cam/../other/events.jsonl", "/media/cam/..%2Fother%2Fevents.jsonl",
                 "/media/cam/..%2F..%2Fsecret.txt", "/media/cam/%2e%2e/%2e%2e/secret.txt",
                 "/media/cam/snapshots/..%2F..%2F..%2Fsecret.txt", "/media/..%2Fsecret.txt/x",
                 "/media/cam/out-link.txt", "/media/cam/other-link/events.jsonl", "/media/escape/secret.txt",
                 "/media/cam/.hidden", "/media/cam/snapshots", "/media/cam/%00", "/media/cam/a%5C..%5Cb",
                 "/media/.%2E/secret.txt", "/media/cam//etc/passwd", "/media/cam/%2Fetc%2Fpasswd"):
        status = _raw_get(http.port, path)
        assert status in (400, 404), (path, status)


def _event(cam: str, ts: float, n: int) -> Event:
    return Event(cam, n, ts, n, 0, "person", "zone", "door", "enter", (1.0, 2.0), id=f"r-{cam}-{n}")


def test_events_are_recent_bounded_and_filtered(media):
    http, events = media
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for i in range(5):
        events.add({**_event("cam" if i % 2 else "b", 100.0 + i, i).to_json_dict(),
                    "snapshot": "cam/snapshots/a.jpg"})
    status, _, body = get(f"{http.url}/events", auth)
    got = json.loads(body)["events"]
    assert status == 200 and [e["ts"] for e in got] == [102.0, 103.0, 104.0]  # the ring keeps 3
    assert got[0]["snapshot"] == "cam/snapshots/a.jpg"
    assert [e["ts"] for e in json.loads(get(f"{http.url}/events?camera=cam", auth)[2])["events"]] == [103.0]
    assert [e["ts"] for e in json.loads(get(f"{http.url}/events?since=102.5", auth)[2])["events"]] == [103.0, 104.0]
    assert len(json.loads(get(f"{http.url}/events?limit=1", auth)[2])["events"]) == 1
    assert get(f"{http.url}/events?since=soon", auth)[0] == 400
    assert get(f"{http.url}/events")[0] == 401


def _cfg(**extra):
    raw = {"cameras": [{"name": "a", "url": "rtsp://127.0.0.1/a"}], "model": {"path": "m.onnx"}, **extra}
    return parse_config(raw)


def test_a_non_loopback_bind_needs_a_token_or_an_explicit_public_view():
    with pytest.raises(ConfigError, match=r"metrics.host '0.0.0.0' is not a loopback address.*view.token"):
        _cfg(metrics={"host": "0.0.0.0", "port": 9100})
    assert _cfg(metrics={"host": "127.0.0.2", "port": 9100}).view.token is None
    assert _cfg(metrics={"host": "0.0.0.0", "port": 9100}, view={"token": TOKEN}).view.token is not None
    assert _cfg(metrics={"host": "0.0.0.0", "port": 9100}, view={"public": True}).view.public
    assert not _cfg(metrics={"host": "0.0.0.0", "port": 9100}, view={"enabled": False}).view.enabled
    assert _cfg(metrics={"host": "0.0.0.0"}).metrics.port is None  # no HTTP port: nothing served
    cfg = _cfg(view={"token": TOKEN})
    assert TOKEN not in repr(cfg) and TOKEN not in str(cfg.model_dump())


def test_view_disabled_serves_none_of_its_routes():
    from rtsp_worker.service.view import serve_view

    http = HttpServer("127.0.0.1", 0)
    cfg = _cfg(view={"enabled": False})
    assert serve_view(http, None, cfg.view, Access(None, "127.0.0.1"), EventLog()) is None  # type: ignore[arg-type]
    for path in ("/", "/view/a", "/view/api/state", "/cameras/a/latest.jpg", "/cameras/a/stream.mjpeg"):
        assert http.dispatch(_req(path)).status == 404, path
