"""What every config section shares: the strict base model, the error type and the one name rule."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

# What `on:` lists name (types.Event.trigger): the output webhooks' and the cameras' clips/snapshots rules.
EventKind = Literal["line", "zone_enter", "zone_exit", "loiter", "crowded", "cleared", "speeding"]


class ConfigError(ValueError):
    """A config problem, with a one-line message that names the file, the camera and the field."""


class StrictModel(BaseModel):
    """Base of every section: unknown keys are errors (a typo never passes silently), values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# The one rule for the names of cameras, lines and zones (the config, the control API and every sink
# rely on it). A camera's name is a folder under `output.dir`, a Redis stream suffix and a metric label:
# a leading dot would make a hidden folder (`.`, `..`: the output folder itself or its parent), and no
# name may hold a "..".
NAME_MAX_LENGTH = 64
NAME_PATTERN = re.compile(rf"[A-Za-z0-9_.\-]{{1,{NAME_MAX_LENGTH}}}")
NAME_RULE = f"1-{NAME_MAX_LENGTH} characters of A-Z a-z 0-9 _ . -, not starting with a dot, without '..'"


def check_name(name: str, what: str = "camera") -> str:
    """`name` if it follows the name rule, else a ValueError that says which part of the rule it breaks."""
    shown = repr(name if len(name) <= NAME_MAX_LENGTH + 8 else name[:NAME_MAX_LENGTH] + "...")
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"{what} name {shown} must be {NAME_RULE}")
    if name.startswith("."):
        raise ValueError(f"{what} name {shown} must not start with a dot (names are folder names: a leading dot "
                         "hides the folder, and '.' and '..' name folders that already exist)")
    if ".." in name:
        raise ValueError(f"{what} name {shown} must not contain '..'")
    return name


def yaml_on_key(data: Any) -> Any:
    """A model's raw mapping with the key `on` restored: YAML 1.1 (PyYAML) reads a bare `on:` key as True.
    Used by every model with an `on:` field, as a `model_validator(mode="before")`."""
    if isinstance(data, dict) and any(k is True for k in data) and "on" not in data:
        data = {("on" if k is True else k): v for k, v in data.items()}
    return data
def is_loopback(host: str) -> bool:
    """Whether binding `host` serves only this box: `localhost` or an address in 127.0.0.0/8 or ::1.

    Every 127.x.y.z address is loopback (reachable only from the box itself), so 127.0.0.2 counts as one;
    0.0.0.0, ::, "" (every interface) and any other name or address do not. Names are not resolved: only
    `localhost` is trusted by name, since another name may resolve to a public address later.
    """
    import ipaddress

    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False
