"""Reading `cameras.yaml`: YAML without duplicate keys, `${ENV}` expansion, the `defaults:` block merged into
each camera, then validation; every problem is one `ConfigError` line naming the file, the camera (by name
when it has one) and the field."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rtsp_worker.config.base import ConfigError
from rtsp_worker.config.cameras import CameraConfig
from rtsp_worker.config.model import SECTIONS, WRONG_BACKEND
from rtsp_worker.config.schema import Config
from rtsp_worker.redact import register_secret, register_url

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _secret_field(where: str) -> bool:
    """Whether a field holds (or may hold) a secret: URLs (credentials, tokens in paths) and tokens."""
    last = re.split(r"[.\[]", where)[-1].lower()
    return last in ("url", "token") or "password" in last or "secret" in last


def expand_env(value: Any, where: str = "") -> Any:
    """Replace `${NAME}` (or `${NAME:-default}`) in every string; an unset NAME without default is an error.

    A value taken from the environment into a URL or a token is registered with the scrubber: it is masked
    wherever a URL is shown and scrubbed from every log line (it may be a password or a token)."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                if _secret_field(where):
                    register_secret(os.environ[name])
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{where}: environment variable {name} is not set")

        return _ENV.sub(sub, value)
    if isinstance(value, list):
        return [expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    return value


_CAMERA_ONLY = {"name", "url"}


def _merge_defaults(raw: dict[str, Any], source: str) -> dict[str, Any]:
    defaults = raw.get("defaults")
    if defaults is None:
        return raw
    if not isinstance(defaults, dict):
        raise ConfigError(f"{source}: defaults: must be a mapping of camera fields")
    allowed = set(CameraConfig.model_fields) - _CAMERA_ONLY
    for key in defaults:
        if key not in allowed:
            raise ConfigError(
                f"{source}: defaults.{key}: not a camera field that can have a default "
                f"(allowed: {', '.join(sorted(allowed))})"
            )
    cameras = raw.get("cameras")
    if isinstance(cameras, list):
        raw = dict(raw)
        raw["cameras"] = [{**defaults, **c} if isinstance(c, dict) else c for c in cameras]
    return raw


def _describe(err: dict[str, Any], raw: dict[str, Any]) -> str:
    loc = list(err.get("loc", ()))
    if len(loc) >= 2 and loc[0] == "model" and loc[1] in SECTIONS:
        del loc[1]  # the backend's section pydantic chose: not a key of the file
    if err.get("type") == WRONG_BACKEND:
        return str(err.get("msg"))  # names its key itself: "model.contexts applies to ..."
    parts: list[str] = []
    if len(loc) >= 2 and loc[0] == "cameras" and isinstance(loc[1], int):
        cams = raw.get("cameras") or []
        name = cams[loc[1]].get("name") if loc[1] < len(cams) and isinstance(cams[loc[1]], dict) else None
        parts.append(f"camera {name!r}" if name else f"cameras[{loc[1]}]")
        loc = loc[2:]
    field = ".".join(str(p) for p in loc)
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        msg = "unknown key"
    elif err.get("type") == "missing":
        msg = "required field is missing"
    where = ", ".join(parts + ([f"field {field!r}"] if field else []))
    return f"{where}: {msg}" if where else msg


def parse_config(raw: Any, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate an already-loaded YAML document. Relative paths resolve against `base_dir`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping with 'cameras:' and 'model:'")
    try:
        raw = expand_env(raw)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    raw = _merge_defaults(raw, source)
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ConfigError(f"{source}: {_describe(first, raw)}{more}") from None
    if base_dir is not None:
        updates: dict[str, Any] = {}
        if not cfg.model.path.is_absolute():
            updates["model"] = cfg.model.model_copy(update={"path": base_dir / cfg.model.path})
        if not cfg.output.dir.is_absolute():
            updates["output"] = cfg.output.model_copy(update={"dir": base_dir / cfg.output.dir})
        if updates:
            cfg = cfg.model_copy(update=updates)
    cfg._source = source
    register_config_secrets(cfg)
    return cfg


def register_config_secrets(cfg: Config) -> None:
    """Every secret the config holds into the log scrubber (redact.py): the control token, the passwords (or
    user-part tokens) of camera and Redis URLs. Answers and log lines never show them."""
    if cfg.control.token is not None:
        register_secret(cfg.control.token.get_secret_value())
    if cfg.view.token is not None:
        register_secret(cfg.view.token.get_secret_value())
    for cam in cfg.cameras:
        register_url(cam.url)
    if cfg.output.redis is not None:
        register_url(cfg.output.redis.url)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently:
    a second `cameras:` block would drop the first camera list)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges are allowed to repeat keys; that is their point
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.setdefault(key, line)
            except TypeError:  # unhashable key: PyYAML raises its own error for it below
                continue
            if first != line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} at line {line} (first at line {first})", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """The YAML document in `path`, read with `_UniqueKeyLoader` (a key given twice is refused with both lines).

    Every problem (no file, unreadable, malformed, duplicate key) is a one-line `ConfigError` naming the file.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe
    except yaml.constructor.ConstructorError as e:
        if e.problem and e.problem.startswith("duplicate key"):
            raise ConfigError(f"{path}: {e.problem}") from None
        raise ConfigError(f"{path}: malformed YAML: {e.problem}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{at}: {problem}") from None
    return raw


def load_config(path: str | Path) -> Config:
    """Read and validate `cameras.yaml`; relative paths inside resolve against the current directory."""
    return parse_config(read_yaml(path), source=str(Path(path)))
