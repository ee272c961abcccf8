"""`clips:` and `snapshots:` of a camera (or of `defaults:`): which events get a video clip and a picture.

`clips: {}` turns clips on with the defaults; absent: off. A camera's own block replaces the default one whole
(like `zones:`). A reload applies to clips that start after it.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from rtsp_worker.config.base import EventKind, StrictModel, yaml_on_key

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", re.IGNORECASE)
_AGE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", re.IGNORECASE)
_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_bytes(v: Any) -> Any:
    """`500MB`, `2G`, `1.5GiB` or a number of bytes (powers of 1024, as `du -h` shows them)."""
    if isinstance(v, str):
        m = _SIZE.fullmatch(v)
        if not m:
            raise ValueError(f"{v!r} is not a size (a number of bytes, or with K, M, G, T: 500MB, 2G)")
        return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))
    return v


def parse_age(v: Any) -> Any:
    """`30d`, `12h`, `90m`, `45s` or a number of seconds."""
    if isinstance(v, str):
        m = _AGE.fullmatch(v)
        if not m:
            raise ValueError(f"{v!r} is not a duration (seconds, or with s, m, h, d: 12h, 30d)")
        return float(m.group(1)) * _AGE_UNITS[m.group(2).lower()]
    return v


class Retention(StrictModel):
    max_bytes: int | None = Field(None, ge=1, description="Most bytes this camera's files of this kind may take "
                                  "(`500MB`, `2G`); the oldest go first. None: no size limit.")
    max_age: float | None = Field(None, gt=0, description="Files older than this are deleted (`12h`, `30d`, or "
                                  "seconds). None: no age limit.")

    @field_validator("max_bytes", mode="before")
    @classmethod
    def _bytes(cls, v: Any) -> Any:
        return parse_bytes(v)

    @field_validator("max_age", mode="before")
    @classmethod
    def _age(cls, v: Any) -> Any:
        return parse_age(v)

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_key(cls, data: Any) -> Any:
        return yaml_on_key(data)


class EvidenceRules(Retention):
    on: list[EventKind] = Field(["line", "zone_enter"], description="Event kinds that start one (line, "
                                "zone_enter, zone_exit).")
    lines: list[str] | None = Field(None, description="Only crossings of these lines (None: every line).")
    zones: list[str] | None = Field(None, description="Only events of these zones (None: every zone).")
    classes: list[str] | None = Field(None, description="Only objects of these classes (None: every class).")


class ClipsConfig(EvidenceRules):
    """A camera's `clips:`: an MP4 around each matching event, remuxed from the stream (no re-encoding)."""

    pre_s: float = Field(5.0, ge=0, le=120, description="Seconds before the event (from the keyframe before).")
    post_s: float = Field(5.0, ge=0, le=600, description="Seconds after the last matching event; events within "
                          "it extend the same clip.")
    buffer_bytes: int = Field(64 * 1024**2, ge=64 * 1024, description="Bound on the packets kept for the "
                              "pre-roll (`64MB`); a longer GOP than fits starts clips at the oldest keyframe kept.")

    @field_validator("buffer_bytes", mode="before")
    @classmethod
    def _buffer(cls, v: Any) -> Any:
        return parse_bytes(v)


class SnapshotsConfig(EvidenceRules):
    """A camera's `snapshots:`: a JPEG of each track's best view (confidence x area) when its first matching
    event fires."""

    full_frame: bool = Field(False, description="Also save the whole frame with the box drawn.")
    margin: float = Field(0.1, ge=0, le=2, description="Margin around the box, as a fraction of its size.")
    quality: int = Field(90, ge=1, le=100, description="JPEG quality.")
