"""Repeated identical errors, rate-limited: the first one is logged, then one summary every `interval_s`
with how many there were (a backend that rejects every batch would otherwise log millions of lines a day).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Seen:
    first: float
    last_logged: float
    message: str
    pending: int = 0  # occurrences since the last line
    total: int = 0


class ErrorThrottle:
    """`error(message)`: log the first of its kind at once, then at most one line per `interval_s` per kind."""

    def __init__(self, logger: logging.Logger, interval_s: float = 30.0, level: int = logging.ERROR,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = logger
        self.interval_s = interval_s
        self.level = level
        self._clock = clock  # seconds, monotonic (tests pass a controlled one)
        self._seen: dict[str, _Seen] = {}
        self._lock = threading.Lock()

    def error(self, message: str, key: str | None = None) -> bool:
        """Record one occurrence (identical when `key`, default the message, is); True if a line was logged."""
        now = self._clock()
        key = message if key is None else key
        with self._lock:
            seen = self._seen.get(key)
            if seen is None:
                self._seen[key] = _Seen(first=now, last_logged=now, message=message, total=1)
                self.log.log(self.level, "%s", message)
                return True
            seen.pending += 1
            seen.total += 1
            seen.message = message
            if now - seen.last_logged < self.interval_s:
                return False
            pending, window = seen.pending, now - seen.last_logged
            seen.pending, seen.last_logged = 0, now
        self.log.log(self.level, "%s (repeated %d times in the last %.0f s, %d in all)", message, pending, window,
                     seen.total)
        return True

    def flush(self) -> None:
        """Log the summary of whatever is still pending (at close: the count must not be lost)."""
        with self._lock:
            pending = [(s.message, s.pending, s.total) for s in self._seen.values() if s.pending]
            for s in self._seen.values():
                s.pending = 0
        for message, count, total in pending:
            self.log.log(self.level, "%s (repeated %d more times, %d in all)", message, count, total)
