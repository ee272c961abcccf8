"""Evidence on disk: counters, the disk-full guard and retention (oldest first, per camera and kind).

A full disk stops evidence only (one log line, the `disk_full` drop counter) while JSONL and the other sinks
go on; it is tried again every `RETRY_S` and a success says so once.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rtsp_worker.config.evidence import Retention

log = logging.getLogger(__name__)
RETRY_S = 5.0
SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@dataclass(frozen=True, slots=True)
class EvidenceStatus:
    """Counters for metrics: clips and snapshots written, bytes, drops by reason, whether the disk is full."""

    clips: int
    clip_bytes: int
    snapshots: int
    snapshot_bytes: int
    dropped: tuple[tuple[str, int], ...]  # (reason, count)
    deleted: int  # files removed by retention
    disk_full: bool
    encode_ms: float  # JPEG encoding, total
    queued: int  # snapshots waiting for their encode


class EvidenceCounters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clips = self.clip_bytes = self.snapshots = self.snapshot_bytes = self.deleted = 0
        self.dropped: dict[str, int] = {}
        self.encode_ms = 0.0

    def drop(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def clip_written(self, size: int) -> None:
        with self._lock:
            self.clips += 1
            self.clip_bytes += size

    def snapshot_written(self, size: int, ms: float) -> None:
        with self._lock:
            self.snapshots += 1
            self.snapshot_bytes += size
            self.encode_ms += ms

    def removed(self, n: int) -> None:
        with self._lock:
            self.deleted += n

    def status(self, disk_full: bool, queued: int) -> EvidenceStatus:
        with self._lock:
            return EvidenceStatus(self.clips, self.clip_bytes, self.snapshots, self.snapshot_bytes,
                                  tuple(sorted(self.dropped.items())), self.deleted, disk_full, self.encode_ms,
                                  queued)


class DiskGuard:
    """Whether evidence may write: after a write failed for lack of space, not until `RETRY_S` passed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self.full = False
        self._retry_at = 0.0

    @staticmethod
    def is_space_error(e: BaseException) -> bool:
        return getattr(e, "errno", None) in SPACE_ERRNOS or "No space left" in str(e)

    def ok(self) -> bool:
        with self._lock:
            return not self.full or self.clock() >= self._retry_at

    def failed(self, e: BaseException) -> None:
        with self._lock:
            if not self.is_space_error(e):
                log.warning("evidence: write failed: %s", e)
                return
            if not self.full:
                log.error("evidence: disk full (%s): clips and snapshots stop until space returns; JSONL and the "
                          "other outputs go on", e)
            self.full = True
            self._retry_at = self.clock() + RETRY_S

    def succeeded(self) -> None:
        with self._lock:
            if self.full:
                log.info("evidence: space is back: clips and snapshots resume")
            self.full = False


def enforce(folder: Path, rule: Retention, keep: Path | None = None, now: float | None = None) -> int:
    """Delete the oldest files of `folder` beyond `rule.max_bytes` or older than `rule.max_age`; never
    `keep` (a clip still being written). Returns how many were deleted."""
    if rule.max_bytes is None and rule.max_age is None:
        return 0
    now = time.time() if now is None else now
    kept = 0  # the open clip's bytes count towards max_bytes; it is never deleted
    try:
        entries = []
        for p in folder.iterdir():
            if not p.is_file() or p.is_symlink():
                continue
            st = p.stat()
            if p == keep:
                kept = st.st_size
            else:
                entries.append((st.st_mtime, st.st_size, p))
    except FileNotFoundError:
        return 0
    entries.sort()
    total = kept + sum(e[1] for e in entries)
    deleted = 0
    for mtime, size, p in entries:
        old = rule.max_age is not None and now - mtime > rule.max_age
        big = rule.max_bytes is not None and total > rule.max_bytes
        if not (old or big):
            break  # oldest first: every later file is newer, and the total is within the bound
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        total -= size
        deleted += 1
    return deleted
