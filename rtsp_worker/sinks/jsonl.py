"""One JSON line per processed frame, one file per camera (`<output.dir>/<camera>/frames.jsonl`), written
after every batch.

Lines go out whole through `LineFile` (a full disk never leaves half a record; lost lines are counted in
`failed` and reported as drops), every record carries the worker's `run` id (a restart on the same folder
appends, and `frame` starts at 0 again for the new run), and a file moved or removed by external log
rotation is reopened (inode check every second, or at once on SIGUSR1 through `reopen`).

Events (line crossings, zone enter/exit) go to `<output.dir>/<camera>/events.jsonl`, one JSON line each,
the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from rtsp_worker.sinks import Sink, SinkCounters
from rtsp_worker.sinks.lines import LineFile, camera_dir, ensure_output_dir, record_json
from rtsp_worker.sinks.run import run_id
from rtsp_worker.sinks.throttle import ErrorThrottle
from rtsp_worker.types import Event, FrameResult

log = logging.getLogger(__name__)


class JsonlSink(Sink):
    """`<directory>/<camera>/frames.jsonl`, optionally rotated by size into `.1` ... `.<backups>`."""

    name = "jsonl"
    wants_images = False

    def __init__(self, directory: Path, max_bytes: int | None = None, backups: int = 5, run: str | None = None,
                 check_interval_s: float = 1.0) -> None:
        self.directory = ensure_output_dir(directory)
        self.max_bytes = max_bytes
        self.backups = backups
        self.run = run or run_id()
        self.check_interval_s = check_interval_s
        self._files: dict[str, LineFile] = {}
        self._event_files: dict[str, LineFile] = {}
        self.lines: dict[str, int] = {}
        self.failed = 0  # records lost to failed writes (disk full, I/O error): counted as drops
        self.errors = 0  # failed writes (one per camera and batch)
        self.nonfinite = 0  # objects left out for carrying NaN/Infinity
        self._throttle = ErrorThrottle(log)

    def path(self, camera: str) -> Path:
        return self.directory / camera / "frames.jsonl"

    def _file(self, camera: str) -> LineFile:
        f = self._files.get(camera)
        if f is None:
            camera_dir(self.directory, camera)
            f = self._files[camera] = LineFile(self.path(camera), self.check_interval_s)
        return f

    def reopen(self) -> None:
        """Reopen every file before its next write (SIGUSR1 after external log rotation)."""
        for f in [*self._files.values(), *self._event_files.values()]:
            f.request_reopen()

    def _rotate(self, camera: str) -> None:
        self._files.pop(camera).close()
        base = self.path(camera)
        if self.backups == 0:
            base.unlink(missing_ok=True)
            return
        for i in range(self.backups - 1, 0, -1):
            src = base.with_name(f"{base.name}.{i}")
            if src.exists():
                src.replace(base.with_name(f"{base.name}.{i + 1}"))
        base.replace(base.with_name(f"{base.name}.1"))

    def write(self, results: Sequence[FrameResult]) -> None:
        per_camera: dict[str, list[str]] = {}
        for r in results:
            line, dropped = record_json({"run": self.run, **r.to_json_dict()})
            self.nonfinite += dropped
            per_camera.setdefault(r.camera, []).append(line)
        for cam, lines in per_camera.items():
            f = self._file(cam)
            if not self._append(f, lines, "records"):
                continue
            self.lines[cam] = self.lines.get(cam, 0) + len(lines)
            if self.max_bytes is not None and f.size() >= self.max_bytes:
                self._rotate(cam)

    def events_path(self, camera: str) -> Path:
        return self.directory / camera / "events.jsonl"

    def write_events(self, events: Sequence[Event]) -> None:
        """Append each event to its camera's events file (whole lines, not rotated: a few per crossing)."""
        per_camera: dict[str, list[str]] = {}
        for e in events:
            per_camera.setdefault(e.camera, []).append(record_json({"run": self.run, **e.to_json_dict()})[0])
        for cam, lines in per_camera.items():
            f = self._event_files.get(cam)
            if f is None:
                camera_dir(self.directory, cam)
                f = self._event_files[cam] = LineFile(self.events_path(cam), self.check_interval_s)
            self._append(f, lines, "events")

    def _append(self, f: LineFile, lines: list[str], what: str) -> bool:
        """Write whole lines; on failure (disk full) count them as lost and return False. One camera's file
        failing costs its lines, never the other cameras' or sinks'."""
        try:
            f.write(("\n".join(lines) + "\n").encode(), len(lines))
        except OSError as e:
            self.failed += len(lines)
            self.errors += 1
            self._throttle.error(f"jsonl {f.path}: write failed, {what} dropped: {e.strerror or e}")
            return False
        return True

    def close_camera(self, camera: str) -> None:
        """The camera was removed: close its files (a camera added again later appends to them)."""
        for files in (self._files, self._event_files):
            f = files.pop(camera, None)
            if f is not None:
                f.close()

    def counters(self) -> SinkCounters:
        return SinkCounters(failed=self.failed, errors=self.errors)

    def close(self) -> None:
        self._throttle.flush()
        if self.failed:
            log.error("jsonl: %d records could not be written (%d failed writes)", self.failed, self.errors)
        for f in self._files.values():
            f.close()
        self._files.clear()
        for f in self._event_files.values():
            f.close()
        self._event_files.clear()
