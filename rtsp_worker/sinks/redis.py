"""Redis Streams output: one stream per camera, the JSONL record in a `data` field.

Entries go through a bounded in-memory buffer: while Redis is down (restart, network) the sink keeps up
to `RedisConfig.buffer` entries, drops the oldest beyond that (counted), and sends the backlog in order
once Redis is back. Delivery is at-least-once: a connection that breaks in the middle of a pipelined
send may have stored part of it, which is sent again.

Entry fields: `camera` (name), `frame` (per-camera frame number), `ts` (decode time, Unix seconds),
`data` (the JSONL record as JSON). Stream key: `stream_prefix + camera`, trimmed with `XADD MAXLEN ~`.

Events (line crossings, zone enter/exit) go to their own stream per camera, `stream_prefix + camera +
":events"`, through the same buffer: fields `camera`, `frame`, `ts`, `kind` (line | zone), `name`,
`direction`, `id` (the event id, `<run>-<camera>-<n>`) and `data` (the event's JSONL record).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence

import redis

from rtsp_worker.config import RedisConfig
from rtsp_worker.redact import mask_url, register_url
from rtsp_worker.sinks import Sink, SinkCounters
from rtsp_worker.sinks.lines import record_json
from rtsp_worker.sinks.run import run_id
from rtsp_worker.sinks.throttle import ErrorThrottle
from rtsp_worker.types import Event, FrameResult

log = logging.getLogger(__name__)

_CHUNK = 500  # entries per pipelined round trip


class RedisSink(Sink):
    """Writes every FrameResult to `<prefix><camera>` with XADD, buffering while Redis is unreachable."""

    name = "redis"
    wants_images = False

    def __init__(self, cfg: RedisConfig, retry_initial_s: float = 0.5, retry_max_s: float = 5.0,
                 run: str | None = None, error_interval_s: float = 30.0) -> None:
        self.cfg = cfg
        register_url(cfg.url)  # redis-py's errors may quote the URL (and its password)
        self.safe_url = mask_url(cfg.url)
        self.run = run or run_id()
        self._client = redis.Redis.from_url(cfg.url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._buffer: deque[tuple[str, dict[str, str]]] = deque()
        self._retry_initial = retry_initial_s
        self._retry_max = retry_max_s
        self._retry_delay = retry_initial_s
        self._next_try = 0.0
        self._down_since: float | None = None
        self.sent = 0  # entries Redis acknowledged
        self.dropped = 0  # entries dropped because the buffer was full
        self.failed = 0  # entries Redis rejected with an error reply: counted as drops
        self.errors = 0  # rejected pipelined sends (one per chunk)
        self.nonfinite = 0  # objects left out for carrying NaN/Infinity
        # A Redis that rejects every write (wrong key type, bad DB index) would log one line per batch.
        self._throttle = ErrorThrottle(log, error_interval_s)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def connected(self) -> bool:
        return self._down_since is None

    def key(self, camera: str) -> str:
        return f"{self.cfg.stream_prefix}{camera}"

    def write(self, results: Sequence[FrameResult]) -> None:
        for r in results:
            data, dropped = record_json({"run": self.run, **r.to_json_dict()})
            self.nonfinite += dropped
            fields = {"camera": r.camera, "run": self.run, "frame": str(r.frame), "ts": f"{r.ts:.6f}",
                      "data": data}
            self._buffer.append((self.key(r.camera), fields))
        overflow = len(self._buffer) - self.cfg.buffer
        if overflow > 0:
            # The newest entries are the ones a live consumer wants: the oldest go.
            for _ in range(overflow):
                self._buffer.popleft()
            self.dropped += overflow
            if self.dropped == overflow or self.dropped % 10000 < overflow:
                log.warning("redis %s: buffer full (%d entries): %d entries dropped so far", self.safe_url,
                            self.cfg.buffer, self.dropped)
        self.flush()

    def events_key(self, camera: str) -> str:
        return f"{self.cfg.stream_prefix}{camera}:events"

    def write_events(self, events: Sequence[Event]) -> None:
        """Queue each event on its camera's events stream; sent with the frames of the batch by `write`."""
        for e in events:
            fields = {"camera": e.camera, "frame": str(e.frame), "ts": f"{e.ts:.6f}", "kind": e.kind,
                      "name": e.name, "direction": e.direction,
                      "run": self.run, "data": record_json({"run": self.run, **e.to_json_dict()})[0]}
            if e.id:
                fields["id"] = e.id
            self._buffer.append((self.events_key(e.camera), fields))

    def flush(self, force: bool = False) -> bool:
        """Send the buffer; False if Redis is unreachable (the entries stay buffered). Retries back off."""
        if not self._buffer:
            return True
        now = time.monotonic()
        if not force and now < self._next_try:
            return False
        try:
            while self._buffer:
                chunk = [self._buffer[i] for i in range(min(_CHUNK, len(self._buffer)))]
                pipe = self._client.pipeline(transaction=False)
                for key, fields in chunk:
                    pipe.xadd(key, fields, maxlen=self.cfg.maxlen, approximate=True)
                # Error replies are collected per entry, not raised for the first: one bad stream key (a
                # key of another type) must not cost the entries of the other cameras.
                replies = pipe.execute(raise_on_error=False)
                for _ in chunk:
                    self._buffer.popleft()
                rejected = [(k, r) for (k, _), r in zip(chunk, replies) if isinstance(r, redis.ResponseError)]
                self.sent += len(chunk) - len(rejected)
                if rejected:
                    # Redis refused them (wrong key type, out-of-range DB, OOM): retrying cannot help.
                    self.failed += len(rejected)
                    self.errors += 1
                    for key in sorted({k for k, _ in rejected}):
                        reason = next(str(r) for k, r in rejected if k == key)
                        self._throttle.error(f"redis {self.safe_url}: entries for {key} rejected, dropped: {reason}")
        except redis.ResponseError as e:
            # The connection itself was refused a command (AUTH, SELECT of a DB index that does not exist).
            for _ in chunk:
                self._buffer.popleft()
            self.failed += len(chunk)
            self.errors += 1
            self._throttle.error(f"redis {self.safe_url}: entries rejected, dropped: {e}")
            return False
        except (redis.ConnectionError, redis.TimeoutError) as e:
            if self._down_since is None:
                self._down_since = now
                log.error("redis %s: unreachable (%s); buffering up to %d entries", self.safe_url, e,
                          self.cfg.buffer)
            self._next_try = now + self._retry_delay
            self._retry_delay = min(self._retry_max, self._retry_delay * 2)
            return False
        if self._down_since is not None:
            log.info("redis %s: reconnected after %.1f s; backlog sent (%d dropped while down so far)",
                     self.safe_url, now - self._down_since, self.dropped)
            self._down_since = None
        self._retry_delay = self._retry_initial
        return True

    def counters(self) -> SinkCounters:
        return SinkCounters(dropped=self.dropped, failed=self.failed, errors=self.errors, buffered=self.buffered)

    def close(self) -> None:
        self._throttle.flush()
        if self.failed:
            log.error("redis %s: %d entries were rejected by the server and dropped", self.safe_url, self.failed)
        if self._buffer and not self.flush(force=True):
            log.error("redis %s: %d buffered entries could not be sent before exit", self.safe_url,
                      len(self._buffer))
        self._client.close()
