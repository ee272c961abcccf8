"""`output:` where results go: JSONL files, annotated videos, Redis Streams."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from rtsp_worker.config.base import StrictModel
from rtsp_worker.config.cameras import check_port


class RedisConfig(StrictModel):
    """`output.redis:` one Redis Stream per camera (and one for its events)."""

    url: str = Field("redis://127.0.0.1:6379/0", description="redis://, rediss:// (TLS) or unix:// "
                     "(`${ENV}` works; the password is masked wherever the URL is shown).")
    stream_prefix: str = Field("rtsp-worker:", description="Stream key = prefix + camera name.")
    maxlen: int = Field(10000, ge=1, description="Approximate length each stream is trimmed to (XADD MAXLEN ~).")
    buffer: int = Field(10000, ge=1, description="Entries kept while Redis is down; beyond that, counted drops.")

    @field_validator("url")
    @classmethod
    def _check_redis_url(cls, v: str) -> str:
        scheme = urlsplit(v).scheme.lower()
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported scheme {scheme!r} (use redis://, rediss:// or unix://)")
        if scheme != "unix":
            check_port(v)
            db = re.split(r"[?#]", v.partition("://")[2].rpartition("@")[2])[0].partition("/")[2]
            if db and not db.isdigit():
                raise ValueError(f"database {db!r} is not a number (redis://host:port/N)")
        return v


class OutputConfig(StrictModel):
    """`output:` the sinks every camera's results go to."""

    dir: Path = Field(Path("outputs"), description="Folder of the JSONL files and videos.")
    jsonl: bool = Field(True, description="Write one JSON line per processed frame, per camera.")
    jsonl_max_bytes: int | None = Field(None, ge=1024, description="Rotate a camera's JSONL file at this size "
                                        "(null: never).")
    jsonl_backups: int = Field(5, ge=0, le=1000, description="Rotated files kept per camera.")
    video: bool = Field(False, description="Write an annotated MP4 per camera (boxes, track ids, fps).")
    video_fps: float = Field(0, ge=0, le=240, description="Annotated video rate (0: the camera's).")
    redis: RedisConfig | None = Field(None, description="Also send results to Redis Streams (null: off).")
    include_tentative: bool = Field(False, description="Write tracks still on probation too.")
