"""Whole lines to a file, for every record type a sink writes (frame records, events): never a partial
line, failed writes counted, the file reopened when log rotation moved or removed it.

- A batch of lines goes out in one `os.write` on an O_APPEND descriptor (no user-space buffer, so what
  returned is in the kernel, which a SIGKILL of the worker does not lose). A write that fails part way
  (disk full, quota, I/O error) is cut back to the last whole line with `ftruncate`: the file never ends
  in half a record, and the lines of that batch are counted as lost.
- A file that ends without a newline when it is opened (a previous run killed mid-write, or an older
  version that did not cut back) gets one first, so the next record never glues onto a broken one.
- External rotation (`mv x.jsonl x.jsonl.1`, `rm`, logrotate without copytruncate): every
  `check_interval_s` (and at once after `request_reopen`, e.g. on SIGUSR1) the path's inode is compared
  with the open file's; when they differ or the path is gone, the file is closed and opened again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class OutputDirError(RuntimeError):
    """`output.dir` cannot be created or written: one line that names it and the reason (exit 4)."""


_noted_old_layout: set[Path] = set()


def ensure_output_dir(directory: Path) -> Path:
    """Create `directory` and prove it writable with a real file, so that a read-only mount or a path
    under a file is reported at start-up, in one line, instead of as a traceback at the first write."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".rtsp-worker-write-test-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.close(fd)
        probe.unlink()
    except OSError as e:
        raise OutputDirError(f"output.dir {directory}: cannot write there: {e.strerror or e}") from None
    _note_old_layout(directory)
    return directory


def camera_dir(directory: Path, camera: str) -> Path:
    """`<output.dir>/<camera>/`, where every output of one camera goes (created on first use). Camera names
    are never `.`, `..` or hidden (config.check_name): two cameras never share a file."""
    path = directory / camera
    path.mkdir(parents=True, exist_ok=True)
    return path


def _note_old_layout(directory: Path) -> None:
    """One INFO line per folder when files of the flat layout of earlier versions (`<camera>.jsonl`,
    `<camera>.events.jsonl`, `<camera>.mp4`) are there: outputs now go to `<camera>/` folders."""
    if directory in _noted_old_layout:
        return
    _noted_old_layout.add(directory)
    try:
        old = sorted(p.name for p in directory.iterdir()
                     if p.is_file() and re.search(r"\.(jsonl|jsonl\.\d+|mp4)$", p.name))
    except OSError:
        return
    if old:
        log.info("output.dir %s holds %d files of the old flat layout (%s%s): they are left as they are; each "
                 "camera's outputs now go to %s/<camera>/ (frames.jsonl, events.jsonl, video.mp4)", directory,
                 len(old), ", ".join(old[:3]), ", ..." if len(old) > 3 else "", directory)


class LineFile:
    """Appends whole lines to `path`; see the module docstring. One writer thread; `request_reopen`
    may be called from any thread (it only sets a flag)."""

    def __init__(self, path: Path, check_interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.check_interval_s = check_interval_s
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self._next_check = 0.0
        self._reopen = threading.Event()
        self.lines = 0  # lines written (successfully) through this object
        self.failed_lines = 0  # lines lost to failed writes
        self.reopens = 0  # times the file was reopened after it was moved or removed

    def request_reopen(self) -> None:
        self._reopen.set()

    def _open(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            st = os.fstat(fd)
            if st.st_size and os.pread(fd, 1, st.st_size - 1) != b"\n":
                # The last record was cut (a kill mid-write): end it so that it stays one bad line.
                os.write(fd, b"\n")
                log.warning("%s: ended with a partial line (an earlier run was cut off); terminated it", self.path)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._ident = fd, (st.st_dev, st.st_ino)
        return fd

    def _check_moved(self) -> None:
        now = time.monotonic()
        if self._fd is None or (now < self._next_check and not self._reopen.is_set()):
            return
        self._reopen.clear()
        self._next_check = now + self.check_interval_s
        try:
            st = os.stat(self.path)
            moved = (st.st_dev, st.st_ino) != self._ident
        except FileNotFoundError:
            moved = True
        if moved:
            self.close()
            self.reopens += 1
            log.info("%s was moved or removed (log rotation?): writing to a new file", self.path)

    def write(self, data: bytes, n_lines: int) -> None:
        """Append `data` (`n_lines` whole lines). On OSError nothing of it stays in the file; raises."""
        self._check_moved()
        fd = self._fd if self._fd is not None else self._open()
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except OSError:
            self.failed_lines += n_lines
            try:
                os.ftruncate(fd, start)  # cut back to the last whole line (frees the space, so it works)
            except OSError as e:
                log.error("%s: could not cut a failed write back to a whole line: %s", self.path, e)
            raise
        self.lines += n_lines

    def size(self) -> int:
        return os.fstat(self._fd).st_size if self._fd is not None else 0

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _finite(o: dict[str, Any]) -> bool:
    return math.isfinite(o.get("confidence", 0.0)) and all(math.isfinite(v) for v in o.get("box", ()))


def record_json(record: dict[str, Any]) -> tuple[str, int]:
    """`record` as one line of strict JSON (no NaN/Infinity, which are not JSON) and how many of its
    objects had to be left out for carrying a non-finite number (0 almost always: detections are
    filtered before the tracker; this is the last guard in front of every consumer)."""
    try:
        return json.dumps(record, separators=(",", ":"), allow_nan=False), 0
    except ValueError:
        objects = record.get("objects") or []
        kept = [o for o in objects if _finite(o)]
        clean = {k: (v if math.isfinite(v) else None) if isinstance(v, float) else v for k, v in record.items()}
        clean["objects"] = kept
        return json.dumps(clean, separators=(",", ":"), allow_nan=False), len(objects) - len(kept)
