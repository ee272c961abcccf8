"""The worker's one HTTP server: `/metrics` and every other endpoint (health, camera control) as routes.

One port (`metrics.port`, bound to `metrics.host`, loopback by default) serves everything, so a box is one
scrape target and one address to call. Modules that serve something register a route; a handler gets a
`Request` and returns a `Response`:

    server = HttpServer("127.0.0.1", 9100)
    server.route("GET", "/metrics", lambda req: Response(200, text, "text/plain; version=0.0.4"))
    server.route("PUT", "/cameras/{name}", put_camera)   # req.params["name"]
    server.route("GET", "/media/{camera}/{path*}", media) # {path*}: the rest of the path, "/" included
    server.start()

Unknown paths answer 404, a known path with another method 405 (with `Allow`), `HEAD` is `GET` without the
body, `OPTIONS` answers 204 with `Allow`, a handler that raises 500 (logged; the body says only "internal
error", never the exception text, which may carry a secret).

The network side is aiohttp's low-level server (HTTP/1.1 parsing, framing, keep-alive, chunked bodies,
streaming responses), on ONE thread running one asyncio event loop: a connection costs a few KiB, never a
thread. The loop runs in a thread that is not the main one, so nothing here installs signal handlers (the
worker owns SIGINT/SIGTERM/SIGHUP/SIGUSR1). What protects the other clients:
- a connection that does not complete a request's headers within `read_timeout_s` of connecting (or of its
  previous answer) is closed (aiohttp's keep-alive timer, which partial data does not reset);
- a body is read within `read_timeout_s` or the request is answered 408 and the connection closed (a PUT
  whose body is shorter than its Content-Length);
- a body over `MAX_BODY` (declared or, when chunked, counted) is answered 413 and the connection closed: the
  rest of it is read and discarded as body, never parsed as requests;
- beyond `max_connections` open connections a new one gets one 503 and is closed; refusals are counted.
Streaming responses (`Response.stream`) are not subject to the read timeout: they last as long as the
client reads; a client whose socket takes nothing for `STREAM_WRITE_TIMEOUT_S` is dropped (the stream's
`aclose()` runs at once, so a producer's clean-up never waits for garbage collection). Handlers are plain functions run on a small bounded pool (reads and writes apart, so a slow
camera change never delays `/metrics` or `/healthz`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time
from collections.abc import AsyncIterable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # bytes; a larger request body is refused with 413
READ_TIMEOUT_S = 10.0  # to send a request's headers (from connecting or the previous answer), and its body
MAX_CONNECTIONS = 1000  # default of `metrics.max_connections`
LINGER_S = 1.0  # after a 413 or 408: how long the rest of a body is read and discarded before closing
READ_THREADS = 4  # handlers of GET/HEAD/OPTIONS
WRITE_THREADS = 2  # handlers of PUT/POST/DELETE (camera changes are serialized by the reloader anyway)
STREAM_WRITE_TIMEOUT_S = 10.0  # a streaming client whose socket accepts nothing for this long is dropped
STREAM_SEND_BUFFER = 256 << 10  # bytes: SO_SNDBUF of a streaming answer (no autotuning to megabytes)
_WRITES = frozenset({"PUT", "POST", "DELETE", "PATCH"})


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
    # A streaming answer (an MJPEG view): chunks written as they come, for as long as the client reads.
    # Produced on the server's event loop: it must await, never block (feed it with
    # `HttpServer.loop.call_soon_threadsafe` from other threads).
    stream: AsyncIterable[bytes] | None = None

    @staticmethod
    def json(status: int, payload: Any) -> Response:
        return Response(status, json.dumps(payload, allow_nan=False), "application/json")


Handler = Callable[[Request], Response]
_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(\*?)\}")


def _compile(pattern: str) -> re.Pattern[str]:
    # A `{param}` matches one path segment: never a "/", so `/cameras/{name}` cannot reach other paths.
    # A `{param*}` (last in a pattern: `/media/{camera}/{path*}`) matches the rest, "/" included; its handler
    # checks it.
    out, pos = "", 0
    for m in _PARAM.finditer(pattern):
        out += re.escape(pattern[pos : m.start()]) + f"(?P<{m.group(1)}>{'.+' if m.group(2) else '[^/]+'})"
        pos = m.end()
    return re.compile("^" + out + re.escape(pattern[pos:]) + "$")


def _allow(methods: set[str]) -> str:
    if "GET" in methods:
        methods = methods | {"HEAD"}
    return ", ".join(sorted(methods | {"OPTIONS"}))


class _BodyTooLarge(Exception):
    pass


class _OneLineLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's connection-level reports (a malformed request, a client gone mid-answer) as one line each,
    through this module's logger (so the log format and the secret scrubber apply), without a traceback:
    they are the client's doing, answered already (400) or unanswerable, and say nothing about the worker."""

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        text = msg % args if args else str(msg)
        err = exc_info if isinstance(exc_info, BaseException) else None
        if not text.startswith("Error handling request"):  # not the client's doing: keep the traceback
            self.logger.error("http: %s", text, exc_info=exc_info)
            return
        reason = " ".join(str(err).split())[:200] if err is not None else ""
        self.logger.info("http: %s%s", text, f": {type(err).__name__}: {reason}" if err is not None else "")

    error = exception


class _Server(web.Server):
    """aiohttp's low-level server, counting its connections and refusing those beyond the limit."""

    def __init__(self, owner: HttpServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._owner = owner

    def __call__(self) -> asyncio.Protocol:  # the protocol factory: one call per accepted connection
        owner = self._owner
        if owner.open_connections >= owner.max_connections:
            owner._refused()
            return _Refuse()
        owner.open_connections += 1
        return RequestHandler(self, loop=self._loop, **self._kwargs)

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self._owner.open_connections -= 1


class _Refuse(asyncio.Protocol):
    """One 503 to a connection beyond the limit, then closed (what it sends is read and discarded)."""

    _ANSWER = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
               b"Content-Length: 21\r\nConnection: close\r\nRetry-After: 1\r\n\r\ntoo many connections\n")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self._ANSWER)
        if transport.can_write_eof():
            transport.write_eof()  # the answer, then FIN; closing at once could turn it into a reset
        asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass


class HttpServer:
    """An asyncio HTTP server (aiohttp) on its own thread, with a small route table; `start()` binds."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, max_connections: int = MAX_CONNECTIONS,
                 read_timeout_s: float = READ_TIMEOUT_S) -> None:
        self.host = host
        self._port = port
        self.max_connections = max_connections
        self.read_timeout_s = read_timeout_s
        self._routes: list[tuple[str, re.Pattern[str], str, Handler]] = []
        self._lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._server: _Server | None = None
        self._pools: dict[bool, ThreadPoolExecutor] = {}
        # Counters (read by /metrics): touched only on the loop's thread.
        self.open_connections = 0
        self.refused_connections = 0
        self._refused_logged = 0.0

    # -- routes ---------------------------------------------------------------------------------------------
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
        allowed: set[str] = set()
        # HEAD is GET without the body (the server leaves the body out, keeping Content-Length).
        want = "GET" if request.method == "HEAD" else request.method
        for method, regex, _, handler in routes:
            m = regex.match(request.path)
            if m is None:
                continue
            allowed.add(method)
            if method != want:
                continue
            req = Request(request.method, request.path, m.groupdict(), request.query, request.headers,
                          request.body)
            try:
                return handler(req)
            except Exception:  # one failing handler must not take the server down
                log.exception("http %s %s: handler failed", request.method, request.path)
                return Response.json(500, {"error": "internal error"})
        if allowed:
            if request.method == "OPTIONS":
                return Response(204, headers={"Allow": _allow(allowed)})
            return Response(405, "method not allowed\n", headers={"Allow": _allow(allowed)})
        return Response(404, "not found\n")

    def collector(self) -> Collector:
        """Prometheus series of this server's connections (for the registry `/metrics` serves)."""
        return _ConnectionsCollector(self)

    # -- the network side (on the loop's thread) -------------------------------------------------------------
    def _refused(self) -> None:
        self.refused_connections += 1
        now = time.monotonic()
        if now - self._refused_logged >= 10.0:  # one line per 10 s under a flood, with the running count
            self._refused_logged = now
            log.warning("http: %d connections open (metrics.max_connections): refusing new ones with 503 "
                        "(%d refused so far)", self.open_connections, self.refused_connections)

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        declared = request.content_length
        if declared is not None and declared > MAX_BODY:
            raise _BodyTooLarge
        chunks, size = [], 0
        while True:  # chunked bodies have no declared length: count what arrives
            chunk = await request.content.readany()
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_BODY:
                raise _BodyTooLarge
            chunks.append(chunk)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = b""
        if request.body_exists:
            try:
                body = await asyncio.wait_for(self._read_body(request), self.read_timeout_s)
            except _BodyTooLarge:
                return _closing(web.Response(status=413, text="request body too large\n"))
            except asyncio.TimeoutError:
                log.info("http %s %s: body not received within %g s: closed", request.method, request.path,
                         self.read_timeout_s)
                return _closing(web.Response(status=408, text="request body not received in time\n"))
        headers = {k.lower(): v for k, v in request.headers.items()}
        # Routes match the path as sent (percent-escapes kept): `/cameras/a%2Fb` is a name the name rule
        # refuses, never the path `/cameras/a/b`.
        req = Request(request.method, request.rel_url.raw_path, {}, parse_qs(request.query_string), headers, body)
        pool = self._pools[request.method in _WRITES]
        resp = await asyncio.get_running_loop().run_in_executor(pool, self.dispatch, req)
        if resp.stream is not None:
            return await self._stream(request, resp)
        body = resp.body.encode() if isinstance(resp.body, str) else resp.body
        headers = dict(resp.headers) if resp.status == 204 else {**resp.headers, "Content-Type": resp.content_type}
        out = web.Response(status=resp.status, headers=headers, body=body if resp.status != 204 else None)
        return out

    async def _stream(self, request: web.BaseRequest, resp: Response) -> web.StreamResponse:
        stream = resp.stream
        assert stream is not None
        try:
            sock = request.transport.get_extra_info("socket") if request.transport is not None else None
            if sock is not None:  # a fixed, small send buffer: a client that stops reading shows within seconds
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SEND_BUFFER)
            out = web.StreamResponse(status=resp.status, headers={**resp.headers, "Content-Type": resp.content_type})
            await out.prepare(request)
            if request.method == "HEAD":
                return out
            try:
                async for chunk in stream:
                    # A client that stops reading is dropped: its stream must not hold resources (or, for a
                    # view, the frames it shares with others) for ever.
                    await asyncio.wait_for(out.write(chunk), STREAM_WRITE_TIMEOUT_S)
                await out.write_eof()
            except asyncio.TimeoutError:
                log.info("http %s %s: client read nothing for %g s: dropped", request.method, request.path,
                         STREAM_WRITE_TIMEOUT_S)
                if request.transport is not None:
                    request.transport.abort()
                raise ConnectionResetError("stream client stopped reading") from None
            except ConnectionError:
                log.debug("http %s %s: client left the stream", request.method, request.path)
                raise
            return out
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:  # the producer's clean-up (a viewer count) runs now, not at garbage collection
                await aclose()

    def _serve(self, bound: threading.Event, failure: list[BaseException]) -> None:
        loop = self.loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            self._server = _Server(self, self._handle, loop=loop, access_log=None, logger=_OneLineLogger(log, {}),
                                   keepalive_timeout=self.read_timeout_s, lingering_time=LINGER_S,
                                   max_line_size=8190, max_field_size=8190)
            self._listener = loop.run_until_complete(
                loop.create_server(self._server, self.host, self._port, backlog=512, reuse_address=True))
        except BaseException as e:  # noqa: BLE001 - handed to start(), which raises it in the caller
            failure.append(e)
            bound.set()
            loop.close()
            return
        bound.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> HttpServer:
        """Bind and serve; raises OSError when the address cannot be bound."""
        self._pools = {False: _started_pool(READ_THREADS, "http-get"), True: _started_pool(WRITE_THREADS, "http-write")}
        self.loop = asyncio.new_event_loop()
        bound, failure = threading.Event(), []
        self._thread = threading.Thread(target=self._serve, args=(bound, failure), name="http", daemon=True)
        self._thread.start()
        bound.wait()
        if failure:
            self._thread.join(5)
            self._thread, self.loop = None, None
            for pool in self._pools.values():
                pool.shutdown(wait=False)
            raise failure[0]
        log.info("http on http://%s:%d (%s)", self.host, self.port,
                 ", ".join(sorted({r[2] for r in self._routes})) or "no routes")
        return self

    @property
    def port(self) -> int:
        if self._listener is not None and self._listener.sockets:
            return self._listener.sockets[0].getsockname()[1]
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _shutdown(self) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._server is not None:
            await self._server.shutdown(1.0)

    def close(self) -> None:
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return
        self._port = self.port
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(5)
        except Exception as e:  # noqa: BLE001 - closing goes on whatever a connection did
            log.debug("http: shutdown: %s", e)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        self._listener, self._server, self.loop, self._thread = None, None, None, None
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)


class _ConnectionsCollector(Collector):
    def __init__(self, server: HttpServer) -> None:
        self.server = server

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield GaugeMetricFamily("rtsp_worker_http_connections", "Open HTTP connections (metrics.max_connections "
                                "bounds them).", value=self.server.open_connections)
        yield CounterMetricFamily("rtsp_worker_http_connections_refused", "HTTP connections refused with 503: "
                                  "metrics.max_connections were open.", value=self.server.refused_connections)


def _started_pool(threads: int, name: str) -> ThreadPoolExecutor:
    """A pool whose threads all exist from the start: the process's thread count is the same at the first
    request as under load (a pool growing on demand reads as a leak to anyone watching the count)."""
    pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
    barrier = threading.Barrier(threads)
    for f in [pool.submit(barrier.wait, 10) for _ in range(threads)]:  # each waits for all: n threads
        f.result()
    return pool


def _closing(resp: web.Response) -> web.Response:
    resp.force_close()  # answered before the body was read: what is left of it is discarded, then closed
    return resp
