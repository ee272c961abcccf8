"""Reload: re-read cameras.yaml, validate the whole file, then apply only the difference to the running pipeline.

On SIGHUP, on a change of the file (`watch_config: true`), on `POST /reload` and after every write of the
control API (service/control.py). An invalid file changes nothing and the error names the file, the camera
and the field. A change that needs a new engine (model, input size, device, batch size) is refused whole
with a message that a restart is needed. Otherwise: removed cameras stop (outputs flushed and closed),
changed cameras are updated (a new URL or decoder reconnects; infer_interval applies live), new cameras
start, and the cameras that did not change are not touched. Other global settings (thresholds, tracker,
outputs, ...) that changed are reported as applied at the next restart.

This module calls the pipeline (`add_camera`, `remove_camera`, `update_camera`), never the other way round.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from rtsp_worker.camera_set import CapacityError, describe_change
from rtsp_worker.config import CameraConfig, Config, ConfigError, load_config, parse_config, read_yaml

if TYPE_CHECKING:
    from rtsp_worker.pipeline import Pipeline

log = logging.getLogger(__name__)

# Settings the engine was built for: changing one needs a restart.
ENGINE_SETTINGS = ("model", "device", "batcher.max_batch")
# Settings a reload applies itself (cameras, merged with defaults) or that are read live (the API token).
LIVE_SETTINGS = frozenset({"cameras", "defaults", "control"})


class ReloadError(Exception):
    """A reload or an API write that was refused; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a new config changes, against the running cameras and the previous file."""

    add: tuple[CameraConfig, ...]
    remove: tuple[str, ...]
    update: tuple[CameraConfig, ...]
    restart: tuple[str, ...]  # engine settings that changed: the whole reload is refused
    later: tuple[str, ...]  # other global settings that changed: they apply at the next restart


def _setting(cfg: Config, dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def plan_reload(running: Mapping[str, CameraConfig], old: Config, new: Config) -> ReloadPlan:
    """Diff `new` against the running cameras (by name) and the previous file `old` (global settings)."""
    wanted = {c.name: c for c in new.enabled_cameras}
    restart = tuple(s for s in ENGINE_SETTINGS if _setting(old, s) != _setting(new, s))
    later = []
    for name in type(new).model_fields:
        if name in LIVE_SETTINGS or getattr(old, name) == getattr(new, name):
            continue
        if name == "batcher":
            later += [f"batcher.{f}" for f in type(new.batcher).model_fields
                      if f != "max_batch" and getattr(old.batcher, f) != getattr(new.batcher, f)]
        elif name not in ENGINE_SETTINGS:
            later.append(name)
    return ReloadPlan(
        add=tuple(c for n, c in wanted.items() if n not in running),
        remove=tuple(n for n in running if n not in wanted),
        update=tuple(c for n, c in wanted.items() if n in running and running[n] != c),
        restart=restart,
        later=tuple(later),
    )


def _temporary(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove what a write-back killed midway left (`.cameras.yaml.<pid>.<tid>.tmp`), unless its process
    still runs (another worker of a supervisor writing the same file now). Returns what was removed."""
    target = Path(path).resolve()
    removed = []
    for tmp in target.parent.glob(f".{target.name}.*.*.tmp"):
        pid = tmp.name.removeprefix(f".{target.name}.").split(".")[0]
        if not pid.isdigit():
            continue
        if int(pid) != os.getpid() and _alive(int(pid)):
            continue
        try:
            tmp.unlink()
        except OSError as e:
            log.warning("%s: cannot remove the stale temporary file %s: %s", path, tmp.name, e.strerror or e)
            continue
        removed.append(tmp)
        log.info("%s: removed %s, left by a write-back that did not finish", path, tmp.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists (another user's)
        return True
    return True


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a crash leaves either the old or the new file, never half of one."""
    target = path.resolve()  # a symlinked cameras.yaml: write where it points, keep the link
    tmp = _temporary(target)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, stat.S_IMODE(target.stat().st_mode))
        except OSError:
            pass
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)


class Reloader:
    """Applies cameras.yaml to a running pipeline; one change at a time (reloads and API writes alike).

    `request()` is safe to call from a signal handler: it only wakes the reload thread.
    """

    def __init__(self, pipeline: Pipeline, path: Path, watch: bool = False, poll_s: float = 1.0,
                 select: Callable[[Config], Config] | None = None) -> None:
        self.p = pipeline
        # `select`: what of the file this worker runs (its shard's cameras, `run --shard K/N`).
        self._select = select
        self.path = Path(path)
        self.watch = watch
        self.poll_s = poll_s
        self._lock = threading.Lock()
        try:
            self.baseline = self._mine(load_config(self.path))  # the file as it was (before command-line overrides)
        except (ConfigError, ReloadError):
            self.baseline = pipeline.cfg
        self._sig = self._signature()
        self._missing = False
        remove_stale_temporaries(self.path)
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="reload", daemon=True)

    @property
    def token(self) -> str | None:
        """The control API's token, from the last file applied (a reload can change it)."""
        tok = self.baseline.control.token
        return tok.get_secret_value() if tok is not None and tok.get_secret_value() else None

    # -- triggers ---------------------------------------------------------------------------------------
    def start(self) -> Reloader:
        self._thread.start()
        if self.watch:
            log.info("watching %s for changes", self.path)
        return self

    def request(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _loop(self) -> None:
        while not self._closed.is_set():
            woke = self._wake.wait(self.poll_s if self.watch else None)
            if self._closed.is_set():
                return
            if woke:
                self._wake.clear()
                self._reload_logged("SIGHUP")
                continue
            sig = self._signature()
            if sig is None:
                if not self._missing:  # once: the cameras keep running on what was read last
                    self._missing, self._sig = True, None
                    log.warning("%s was deleted (or cannot be read): the cameras keep running as they are; "
                                "a file written there again is read", self.path)
                continue
            if self._missing:
                self._missing = False
                log.info("%s is there again: reading it", self.path)
            if sig == self._sig:
                continue
            # An editor may write in steps: act once the file has stopped changing.
            if self._closed.wait(min(0.25, self.poll_s)) or self._signature() != sig:
                continue
            self._reload_logged("file changed")

    def _reload_logged(self, why: str) -> None:
        try:
            self.reload(why)
        except ReloadError:
            pass  # logged where it was raised; the worker goes on with the cameras it has
        except Exception:  # a failed reload must not end the reload thread
            log.exception("reload (%s) failed", why)

    # -- reload -----------------------------------------------------------------------------------------
    def reload(self, why: str = "reload") -> list[str]:
        """Re-read the file and apply it; returns one line per change. Raises ReloadError when refused."""
        with self._lock:
            self._sig = self._signature()
            try:
                new = load_config(self.path)
            except ConfigError as e:
                log.error("reload (%s) refused: %s; nothing changed", why, e)
                raise ReloadError(400, str(e)) from None
            return self._apply(self._mine(new), why)

    def _mine(self, cfg: Config) -> Config:
        if self._select is None:
            return cfg
        try:
            return self._select(cfg)
        except ValueError as e:
            raise ReloadError(409, f"{self.path}: {e}; nothing changed") from None

    def _check(self, new: Config, force: bool = False) -> ReloadPlan:
        plan = plan_reload(self.p.configs(), self.baseline, new)
        if plan.restart:
            raise ReloadError(409, f"{self.path}: {', '.join(plan.restart)} changed: that needs a new engine, "
                                   "restart the worker to apply it; nothing changed")
        # Measured headroom, every camera at its full target rate; never the engine's batch size.
        if plan.add and not force:
            try:
                self.p.check_headroom(list(plan.add), leaving=plan.remove)
            except CapacityError as e:
                raise ReloadError(409, f"{self.path}: {e}; nothing changed") from None
        return plan

    def _apply(self, new: Config, why: str, force: bool = False) -> list[str]:
        try:
            plan = self._check(new, force)
        except ReloadError as e:
            log.error("reload (%s) refused: %s", why, e)
            raise
        running = self.p.configs()
        changes: list[str] = []
        failed: list[str] = []
        # Removals first: they make room for additions within the capacity.
        for name in plan.remove:
            if self._do(failed, name, lambda n=name: self.p.remove_camera(n)):
                changes.append(f"{name}: removed")
        for cfg in plan.update:
            what = describe_change(running[cfg.name], cfg)
            if self._do(failed, cfg.name, lambda c=cfg: self.p.update_camera(c)):
                changes.append(f"{cfg.name}: {'; '.join(what)}")
        for cfg in plan.add:
            if self._do(failed, cfg.name, lambda c=cfg: self.p.add_camera(c, force=True)):
                changes.append(f"{cfg.name}: added")
        self.baseline = new
        if plan.later:
            log.warning("reload (%s): %s changed in %s: applied at the next restart", why, ", ".join(plan.later),
                        self.path)
        log.info("reload (%s) of %s: %s", why, self.path, "; ".join(changes) if changes else "no camera changed")
        if failed:
            raise ReloadError(500, f"{self.path}: applying failed for {', '.join(failed)} (see the log)")
        return changes

    @staticmethod
    def _do(failed: list[str], name: str, fn: Any) -> bool:
        try:
            fn()
            return True
        except Exception as e:  # noqa: BLE001 - one camera's failure must not stop the other changes
            log.error("reload: camera %s: %s", name, e)
            failed.append(name)
            return False

    # -- API writes: edit the file, validate it whole, write it back atomically, apply -------------------
    def _raw(self) -> dict[str, Any]:
        try:
            raw = read_yaml(self.path)  # the loader `load_config` uses: a duplicate key is refused here too
        except ConfigError as e:
            raise ReloadError(409, f"{e}; fix it first") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("cameras"), list):
            raise ReloadError(409, f"{self.path}: has no 'cameras:' list; fix it first")
        return raw

    def _write(self, raw: dict[str, Any], why: str, force: bool = False) -> list[str]:
        try:
            new = self._mine(parse_config(raw, source=str(self.path)))
        except ConfigError as e:
            raise ReloadError(400, str(e)) from None
        self._check(new, force)  # refused before anything is written
        write_atomic(self.path, yaml.safe_dump(raw, sort_keys=False))
        self._sig = self._signature()  # our own write: the file watch must not reload it again
        return self._apply(new, why, force)

    def put_camera(self, name: str, entry: Mapping[str, Any], force: bool = False) -> tuple[bool, list[str]]:
        """Add or replace camera `name` with `entry` (one cameras.yaml entry). Returns (created, changes).
        `force`: add it even when the measured headroom cannot carry it."""
        with self._lock:
            raw = self._raw()
            cams = list(raw["cameras"])
            entry = {"name": name, **{k: v for k, v in entry.items() if k != "name"}}
            at = next((i for i, c in enumerate(cams) if isinstance(c, dict) and c.get("name") == name), None)
            if at is None:
                cams.append(entry)
            else:
                cams[at] = entry
            return at is None, self._write({**raw, "cameras": cams}, f"PUT /cameras/{name}", force)

    def delete_camera(self, name: str) -> list[str]:
        with self._lock:
            raw = self._raw()
            cams = [c for c in raw["cameras"] if not (isinstance(c, dict) and c.get("name") == name)]
            if len(cams) == len(raw["cameras"]):
                raise ReloadError(404, f"no camera {name!r} in {self.path}")
            if not cams:
                raise ReloadError(409, f"{name!r} is the last camera of {self.path}, which needs one")
            return self._write({**raw, "cameras": cams}, f"DELETE /cameras/{name}")
