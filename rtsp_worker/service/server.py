"""The worker's one HTTP server: `/metrics` and every other endpoint (health, camera control) as routes.

One port (`metrics.port`, bound to `metrics.host`, loopback by default) serves everything, so a box is one
scrape target and one address to call. Handlers run on the server's own threads and must not block for
long; each gets a `Request` and returns a `Response`. Modules that serve something register a route:

    server = HttpServer("127.0.0.1", 9100)
    server.route("GET", "/metrics", lambda req: Response(200, text, "text/plain; version=0.0.4"))
    server.route("PUT", "/cameras/{name}", put_camera)   # req.params["name"]
    server.start()

Unknown paths answer 404, a known path with another method 405, a handler that raises 500 (logged; the
body says only "internal error", never the exception text, which may carry a secret).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # bytes; a larger request body is refused with 413


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # without the query string
    params: dict[str, str]  # `{name}` parts of the route pattern
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        """The body as JSON; raises ValueError with a short reason when it is not."""
        try:
            return json.loads(self.body or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"body is not valid JSON: {e}") from None


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes | str = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def json(status: int, payload: Any) -> Response:
        return Response(status, json.dumps(payload, allow_nan=False), "application/json")


Handler = Callable[[Request], Response]
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _compile(pattern: str) -> re.Pattern[str]:
    # A `{param}` matches one path segment: never a "/", so `/cameras/{name}` cannot reach other paths.
    out, pos = "", 0
    for m in _PARAM.finditer(pattern):
        out += re.escape(pattern[pos : m.start()]) + f"(?P<{m.group(1)}>[^/]+)"
        pos = m.end()
    return re.compile("^" + out + re.escape(pattern[pos:]) + "$")


class HttpServer:
    """A threading HTTP server with a small route table; `start()` binds and serves in the background."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._port = port
        self._routes: list[tuple[str, re.Pattern[str], str, Handler]] = []
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        """Serve `method pattern` with `handler` (a later registration of the same pair replaces it)."""
        with self._lock:
            self._routes = [r for r in self._routes if not (r[0] == method and r[2] == pattern)]
            self._routes.append((method.upper(), _compile(pattern), pattern, handler))

    def unroute(self, method: str, pattern: str) -> None:
        with self._lock:
            self._routes = [r for r in self._routes if not (r[0] == method.upper() and r[2] == pattern)]

    def dispatch(self, request: Request) -> Response:
        """The response for a request (also how tests call handlers without a socket)."""
        with self._lock:
            routes = list(self._routes)
        allowed = []
        for method, regex, _, handler in routes:
            m = regex.match(request.path)
            if m is None:
                continue
            if method != request.method:
                allowed.append(method)
                continue
            req = Request(request.method, request.path, m.groupdict(), request.query, request.headers,
                          request.body)
            try:
                return handler(req)
            except Exception:  # noqa: BLE001 - one failing handler must not take the server down
                log.exception("http %s %s: handler failed", request.method, request.path)
                return Response.json(500, {"error": "internal error"})
        if allowed:
            return Response(405, "method not allowed\n", headers={"Allow": ", ".join(sorted(allowed))})
        return Response(404, "not found\n")

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> HttpServer:
        """Bind and serve; raises OSError when the address cannot be bound."""
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self._send(Response(413, "request body too large\n"))
                    return
                body = self.rfile.read(length) if length > 0 else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                req = Request(self.command, parts.path, {}, parse_qs(parts.query), headers, body)
                self._send(server.dispatch(req))

            def _send(self, resp: Response) -> None:
                body = resp.body.encode() if isinstance(resp.body, str) else resp.body
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.content_type)
                self.send_header("Content-Length", str(len(body)))
                for k, v in resp.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
                log.debug("http %s", format % args)

        self._httpd = ThreadingHTTPServer((self.host, self._port), _Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="http", daemon=True)
        self._thread.start()
        log.info("http on http://%s:%d (%s)", self.host, self.port,
                 ", ".join(sorted({r[2] for r in self._routes})) or "no routes")
        return self

    @property
    def port(self) -> int:
        return self._httpd.server_port if self._httpd is not None else self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
