"""The worker's one HTTP server: routing rules, and a real socket round trip."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from rtsp_worker.detection.input_spec import InputSpec
from rtsp_worker.service.server import HttpServer, Request, Response


def _req(method: str, path: str, body: bytes = b"") -> Request:
    return Request(method, path, {}, {}, {}, body)


def test_routes_params_and_errors() -> None:
    srv = HttpServer()
    srv.route("GET", "/cameras/{name}", lambda r: Response.json(200, {"name": r.params["name"]}))
    srv.route("GET", "/boom", lambda r: 1 / 0)  # type: ignore[arg-type,return-value]
    ok = srv.dispatch(_req("GET", "/cameras/gate"))
    assert ok.status == 200 and json.loads(ok.body) == {"name": "gate"}
    # A parameter is one path segment: "/" never matches it, so `..`-style paths cannot reach other routes.
    assert srv.dispatch(_req("GET", "/cameras/a/b")).status == 404
    wrong = srv.dispatch(_req("DELETE", "/cameras/gate"))
    assert wrong.status == 405 and wrong.headers["Allow"] == "GET, HEAD, OPTIONS"
    boom = srv.dispatch(_req("GET", "/boom"))
    assert boom.status == 500 and b"ZeroDivision" not in boom.body.encode()  # no exception text leaves
    srv.unroute("GET", "/boom")
    assert srv.dispatch(_req("GET", "/boom")).status == 404


def test_request_json_errors() -> None:
    assert _req("PUT", "/x", b'{"a": 1}').json() == {"a": 1}
    with pytest.raises(ValueError, match="not valid JSON"):
        _req("PUT", "/x", b"{nope").json()


def test_real_socket_round_trip() -> None:
    srv = HttpServer("127.0.0.1", 0)
    srv.route("PUT", "/echo", lambda r: Response(201, r.body, "application/octet-stream"))
    srv.start()
    try:
        req = urllib.request.Request(f"{srv.url}/echo", data=b"hello", method="PUT")
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 201 and resp.read() == b"hello"
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{srv.url}/nothing", timeout=5)
        assert e.value.code == 404
    finally:
        srv.close()


def test_input_spec_mapping() -> None:
    spec = InputSpec((384, 640))  # ultralytics: 0-1, no mean/std, grey pad
    assert spec.mul == pytest.approx((1 / 255,) * 3) and spec.add == (0.0, 0.0, 0.0)
    assert spec.pad == pytest.approx((114 / 255,) * 3)
    imagenet = InputSpec((640, 640), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), pad_value=0.0)
    # out = (v / 255 - mean) / std for v = 255
    assert [255 * m + a for m, a in zip(imagenet.mul, imagenet.add)] == pytest.approx(
        [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    with pytest.raises(ValueError, match="std"):
        InputSpec((32, 32), std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="channel order"):
        InputSpec((32, 32), channels="yuv")  # type: ignore[arg-type]
