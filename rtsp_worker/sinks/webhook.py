"""Webhooks: each matching event POSTed as JSON (its JSONL record) to a configured URL.

One sink per configured webhook (`webhook:<name>`, the name or the index in `output.webhooks`), each with
its own delivery thread and its own bounded queue of events: `write_events` (on the sink runner's thread)
only appends, so a slow, failing or hanging endpoint never holds up the runner, the pipeline or the other
webhooks. The runner's own per-sink queue is not enough for this: it holds whole batches, events or not,
and drops batches (counted in frames) once a slow endpoint fills it; here only events wait, and drops are
counted in events.

Delivery is in order, one request at a time: each request is bounded by `timeout_s` (connect, and each
read), a network error, a timeout, a 5xx or a 429 is tried again after `backoff_s`, doubled each time, up
to `retries` times; other answers (4xx, redirects) are not retried. An event that could not be delivered
is dropped and counted (`failed`); one that found the queue full too (`dropped`).

The URL and the headers are secrets (they often carry a key): they are registered with `redact` (scrubbed
from every log line) and never printed or used as a metric label; logs and metrics name the webhook.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Sequence
from urllib.parse import urlsplit

from rtsp_worker.config import WebhookConfig
from rtsp_worker.redact import register_secret, register_url, scrub
from rtsp_worker.sinks import Sink, SinkCounters
from rtsp_worker.sinks.lines import record_json
from rtsp_worker.sinks.run import run_id
from rtsp_worker.sinks.throttle import ErrorThrottle
from rtsp_worker.types import Event, FrameResult

log = logging.getLogger(__name__)

USER_AGENT = "rtsp-worker"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, not followed: urllib would turn the POST into a GET without the event."""

    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None


def register_webhook_secrets(cfg: WebhookConfig) -> None:
    """The URL (whole, its credentials, its path and query) and every header value, scrubbed from logs."""
    url = cfg.url.get_secret_value()
    register_secret(url)
    register_url(url)
    parts = urlsplit(url)
    for secret in (parts.query, parts.path + (f"?{parts.query}" if parts.query else "")):
        if secret not in ("", "/"):
            register_secret(secret)
    for value in cfg.headers.values():
        text = value.get_secret_value()
        register_secret(text)
        register_secret(text.split()[-1] if text.split() else text)  # the token of "Bearer <token>"


class WebhookSink(Sink):
    """POSTs matching events to one URL from its own thread; never blocks the sink runner."""

    wants_images = False

    def __init__(self, cfg: WebhookConfig, index: int = 0, run: str | None = None, close_timeout_s: float = 5.0,
                 backoff_max_s: float = 30.0) -> None:
        self.cfg = cfg
        self.label = cfg.name or str(index)
        self.name = f"webhook:{self.label}"
        self.run = run or run_id()
        register_webhook_secrets(cfg)
        self._url = cfg.url.get_secret_value()
        self._headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                         **{k: v.get_secret_value() for k, v in cfg.headers.items()}}
        self._on = set(cfg.on) if cfg.on is not None else None
        self.close_timeout_s = close_timeout_s
        self.backoff_max_s = backoff_max_s
        self.delivered = 0  # events the endpoint answered with 2xx
        self.dropped = 0  # events that found the queue full, or were still queued at close
        self.failed = 0  # events given up on after their retries, or refused (4xx)
        self.errors = 0  # failed requests (each try)
        self.nonfinite = 0
        self._queue: deque[bytes] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()  # close: stop waiting between retries
        self._abandoned = False  # close gave up on what is left (counted there)
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._throttle = ErrorThrottle(log)
        self._thread = threading.Thread(target=self._loop, name=f"webhook-{self.label}", daemon=True)
        self._thread.start()

    @property
    def buffered(self) -> int:
        """Events waiting to be delivered (the one being tried included)."""
        return len(self._queue)

    def write(self, results: Sequence[FrameResult]) -> None:
        """Frames are not sent; events arrive through `write_events`."""

    def write_events(self, events: Sequence[Event]) -> None:
        for e in events:
            if self._on is not None and e.trigger not in self._on:
                continue
            body, bad = record_json({"run": self.run, **e.to_json_dict()})
            self.nonfinite += bad
            with self._cond:
                if len(self._queue) >= self.cfg.queue:
                    self.dropped += 1
                    if self.dropped == 1 or self.dropped % 1000 == 0:
                        log.warning("webhook %s: %d events waiting (queue full): %d dropped so far", self.label,
                                    self.cfg.queue, self.dropped)
                    continue
                self._queue.append(body.encode())
                self._cond.notify()

    # -- the delivery thread --------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stop.is_set():
                    self._cond.wait()
                if self._stop.is_set() and (self._abandoned or not self._queue):
                    return
                body = self._queue[0]  # stays queued (and counted in `buffered`) until done
            delivered = self._deliver(body)
            with self._cond:
                if self._abandoned:
                    return  # close counted it among those left
                self._queue.popleft()
                if delivered:
                    self.delivered += 1
                else:
                    self.failed += 1
                self._cond.notify_all()

    def _deliver(self, body: bytes) -> bool:
        delay = self.cfg.backoff_s
        tries = self.cfg.retries + 1
        why = ""
        for attempt in range(tries):
            if attempt:
                if self._stop.wait(delay):
                    break  # closing: no more waiting between tries
                delay = min(delay * 2, self.backoff_max_s)
            status, why = self._post(body)
            if status is not None and 200 <= status < 300:
                return True
            self.errors += 1
            if status is not None and status < 500 and status != 429:
                break  # the endpoint refused this event: trying again cannot help
        self._throttle.error(f"webhook {self.label}: event dropped after {attempt + 1} of {tries} tries: {why}",
                             key=f"{self.label}:{why}")
        return False

    def _post(self, body: bytes) -> tuple[int | None, str]:
        """(HTTP status, or None when there was no answer; why it failed, free of the URL)."""
        req = urllib.request.Request(self._url, data=body, headers=self._headers, method="POST")
        try:
            with self._opener.open(req, timeout=self.cfg.timeout_s) as resp:
                resp.read(65536)  # the answer is not used; read a little so the connection ends cleanly
                return resp.status, ""
        except urllib.error.HTTPError as e:
            e.close()
            return e.code, f"HTTP {e.code}"
        except urllib.error.URLError as e:
            return None, scrub(str(e.reason))
        except (OSError, http.client.HTTPException) as e:  # timeouts, resets, a malformed answer
            return None, scrub(f"{type(e).__name__}: {e}") if str(e) else type(e).__name__

    def counters(self) -> SinkCounters:
        return SinkCounters(dropped=self.dropped, failed=self.failed, errors=self.errors, buffered=self.buffered,
                            delivered=self.delivered)

    def close(self) -> None:
        """Deliver what is queued within `close_timeout_s`; what is left is dropped, counted and logged."""
        deadline = time.monotonic() + self.close_timeout_s
        with self._cond:
            while self._queue and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._stop.set()
            left_over = len(self._queue)
            if left_over:
                self._abandoned = True
                self.dropped += left_over
            self._cond.notify_all()
        self._thread.join(0.5)  # a request in flight is bounded by timeout_s; its thread is a daemon
        self._throttle.flush()
        if left_over:
            log.error("webhook %s: %d events not delivered before exit", self.label, left_over)
