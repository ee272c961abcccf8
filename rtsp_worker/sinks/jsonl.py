"""One JSON line per processed frame, one file per camera, flushed after every batch.

Events (line crossings, zone enter/exit) go to `<camera>.events.jsonl`, one JSON line each.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from rtsp_worker.types import Event, FrameResult


class JsonlSink:
    name = "jsonl"
    wants_images = False

    def __init__(self, directory: Path, max_bytes: int | None = None, backups: int = 5) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.backups = backups
        self._files: dict[str, IO[str]] = {}
        self._event_files: dict[str, IO[str]] = {}
        self.lines: dict[str, int] = {}

    def path(self, camera: str) -> Path:
        return self.directory / f"{camera}.jsonl"

    def _file(self, camera: str) -> IO[str]:
        f = self._files.get(camera)
        if f is None:
            f = self._files[camera] = open(self.path(camera), "a", encoding="utf-8")  # noqa: SIM115
        return f

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
        touched = set()
        for r in results:
            f = self._file(r.camera)
            f.write(json.dumps(r.to_json_dict(), separators=(",", ":")) + "\n")
            self.lines[r.camera] = self.lines.get(r.camera, 0) + 1
            touched.add(r.camera)
        for cam in touched:
            f = self._files[cam]
            f.flush()  # a SIGTERM/SIGINT after this loses nothing already produced
            if self.max_bytes is not None and f.tell() >= self.max_bytes:
                self._rotate(cam)

    def events_path(self, camera: str) -> Path:
        return self.directory / f"{camera}.events.jsonl"

    def write_events(self, events: Sequence[Event]) -> None:
        """Append each event to its camera's events file (not rotated: a few lines per crossing)."""
        touched = set()
        for e in events:
            f = self._event_files.get(e.camera)
            if f is None:
                f = self._event_files[e.camera] = open(self.events_path(e.camera), "a", encoding="utf-8")  # noqa: SIM115
            f.write(json.dumps(e.to_json_dict(), separators=(",", ":")) + "\n")
            touched.add(f)
        for f in touched:
            f.flush()

    def close_camera(self, camera: str) -> None:
        """The camera was removed: close its files (a camera added again later appends to them)."""
        for files in (self._files, self._event_files):
            f = files.pop(camera, None)
            if f is not None:
                f.close()

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        for f in self._event_files.values():
            f.close()
        self._event_files.clear()
