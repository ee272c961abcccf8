"""Who may read camera pictures, events and media on the worker's HTTP port: the one access rule.

Every route that shows what the cameras see (the browser view `/`, `/view/...`, `stream.mjpeg`,
`latest.jpg`, `/events`, `/media/...`, heatmaps) asks `Access.check(request)` first:

- `view.token` set: the request must carry it, as `Authorization: Bearer <token>` or as the view's session
  cookie (set by the login form), whatever the bind address. The cookie holds an HMAC derived from the token,
  never the token itself, and is HttpOnly + SameSite=Strict.
- no token: served only when the server is bound to a loopback address (127.0.0.0/8, ::1, `localhost`;
  config.is_loopback) and only to requests without `Forwarded` / `X-Forwarded-For` headers: a reverse proxy
  on the same box forwards requests from elsewhere, and must not make the pictures public by accident.
  `view.public: true` (an explicit choice) serves them to anyone.

The config refuses a non-loopback bind with the view enabled and no token unless `view.public` (schema.py).
Failed logins are rate-limited for the whole server (at most `MAX_FAILURES` per `FAILURE_WINDOW_S`; beyond,
429 with Retry-After), which bounds guessing without tracking clients. Nothing here logs or echoes a token.

Other modules use it like this:

    refused = access.check(req)
    if refused is not None:
        return refused
"""

from __future__ import annotations

import hashlib
import hmac
import html
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote

from rtsp_worker.config import is_loopback
from rtsp_worker.service.server import HttpServer, Request, Response

if TYPE_CHECKING:
    from rtsp_worker.config import Config

log = logging.getLogger(__name__)

COOKIE = "rtsp_worker_view"
COOKIE_MAX_AGE_S = 7 * 24 * 3600
MAX_FAILURES = 5  # failed logins per window, all clients together
FAILURE_WINDOW_S = 60.0
_PROXY_HEADERS = ("forwarded", "x-forwarded-for")


class Access:
    """The access rule of one server (see the module docstring)."""

    def __init__(self, token: str | None, bind_host: str, public: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._token = token.encode() if token else None
        self.loopback = is_loopback(bind_host)
        self.public = public
        self.clock = clock
        # The cookie value: an HMAC of a fixed label under the token. It proves the token was given once,
        # reveals nothing of it, and changes when the token changes (old sessions end).
        self._session = (hmac.new(self._token, b"rtsp-worker view session v1", hashlib.sha256).hexdigest()
                         if self._token else None)
        self._failures: deque[float] = deque()
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: Config) -> Access:
        """The rule of a whole config (`view.token`, `view.public`, `metrics.host`): what every route that
        shows pictures (the view, /events, /media, heatmaps) checks. Stateless but for the login limiter."""
        token = cfg.view.token.get_secret_value() if cfg.view.token is not None else None
        return cls(token, cfg.metrics.host, public=cfg.view.public)

    @property
    def has_token(self) -> bool:
        return self._token is not None

    def allowed(self, req: Request) -> bool:
        if self._token is None:
            if self.public:
                return True
            return self.loopback and not any(h in req.headers for h in _PROXY_HEADERS)
        scheme, _, given = req.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token):
            return True
        cookie = _cookies(req.headers.get("cookie", "")).get(COOKIE)
        assert self._session is not None
        return cookie is not None and hmac.compare_digest(cookie.encode(), self._session.encode())

    def check(self, req: Request, page: bool = False) -> Response | None:
        """None when `req` may be served; otherwise the 401 to answer (`page`: the login form as its body)."""
        if self.allowed(req):
            return None
        why = ("a view token is required" if self._token is not None else
               "no view.token: served only on a loopback bind, and not through a proxy")
        if page and self._token is not None:
            return Response(401, login_page(req.path), "text/html; charset=utf-8", page_headers())
        return Response(401, Response.json(401, {"error": why}).body, "application/json",
                        {"WWW-Authenticate": 'Bearer realm="rtsp-worker view"', "Cache-Control": "no-store"})

    # -- login -------------------------------------------------------------------------------------------
    def register(self, http: HttpServer) -> None:
        http.route("GET", "/login", self._get_login)
        http.route("POST", "/login", self._post_login)

    def _get_login(self, req: Request) -> Response:
        return Response(200, login_page(_next(req.query.get("next", ["/"])[0])), "text/html; charset=utf-8",
                        page_headers())

    def _post_login(self, req: Request) -> Response:
        if self._token is None:
            return Response.json(404, {"error": "no view.token is set: there is nothing to log in with"})
        now = self.clock()
        with self._lock:
            while self._failures and now - self._failures[0] > FAILURE_WINDOW_S:
                self._failures.popleft()
            if len(self._failures) >= MAX_FAILURES:
                wait = int(FAILURE_WINDOW_S - (now - self._failures[0])) + 1
                log.warning("view login refused: %d failed attempts within %g s", len(self._failures),
                            FAILURE_WINDOW_S)
                return Response(429, "too many failed logins; try again later\n",
                                headers={"Retry-After": str(wait)})
        form = parse_qs(req.body.decode("utf-8", "replace"))
        given = form.get("token", [""])[0].encode()
        target = _next(form.get("next", ["/"])[0])
        if not hmac.compare_digest(given, self._token):
            with self._lock:
                self._failures.append(now)
            log.warning("view login failed (wrong token)")
            return Response(401, login_page(target, failed=True), "text/html; charset=utf-8", page_headers())
        assert self._session is not None
        cookie = f"{COOKIE}={self._session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={COOKIE_MAX_AGE_S}"
        return Response(303, "", headers={"Location": target, "Set-Cookie": cookie, "Cache-Control": "no-store"})


def _cookies(header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in header.split(";"):
        k, sep, v = part.strip().partition("=")
        if sep:
            out.setdefault(k, v)
    return out


def _next(target: str) -> str:
    """Where to go after logging in: a path on this server only (never `//host` or a URL elsewhere)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def page_headers() -> dict[str, str]:
    # Nothing is loaded from elsewhere; the page may not be framed by another site.
    return {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                                       "script-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'"}


def login_page(target: str, failed: bool = False) -> str:
    message = '<p class="err">Wrong token.</p>' if failed else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>rtsp-worker: log in</title>
<style>body{{font-family:sans-serif;background:#111;color:#eee;display:flex;justify-content:center;
margin-top:15vh}}form{{background:#222;padding:2em;border-radius:8px}}input{{font-size:1em;margin:.3em 0}}
.err{{color:#f66}}</style></head>
<body><form method="post" action="/login"><h2>rtsp-worker view</h2>{message}
<p>Token (view.token):</p><input type="password" name="token" id="token" autofocus>
<input type="hidden" name="next" value="{html.escape(quote(target, safe='/?=&'))}">
<p><button type="submit" id="login">Log in</button></p></form></body></html>
"""
