"""`output:` where results go: JSONL files, annotated videos, Redis Streams, MQTT, webhooks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from rtsp_worker.config.base import StrictModel, check_name
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


EventKind = Literal["line", "zone_enter", "zone_exit"]  # what `on:` lists name (types.Event.trigger)


class MqttTlsConfig(StrictModel):
    """`output.mqtt.tls:` certificates for mqtts://."""

    ca: Path | None = Field(None, description="CA file (PEM) the broker's certificate must chain to (None: the "
                            "system's CAs).")
    cert: Path | None = Field(None, description="Client certificate (PEM), for brokers that ask for one.")
    key: Path | None = Field(None, description="The client certificate's private key (PEM).")
    insecure: bool = Field(False, description="Accept any broker certificate and host name (tests only).")

    @model_validator(mode="after")
    def _pair(self) -> MqttTlsConfig:
        if self.key is not None and self.cert is None:
            raise ValueError("tls.key needs tls.cert")
        return self


class MqttConfig(StrictModel):
    """`output.mqtt:` every event to `<prefix>/<camera>/events`, retained state at `<prefix>/<camera>/state`."""

    url: str = Field("mqtt://127.0.0.1:1883", description="mqtt://host[:1883], or mqtts://host[:8883] for TLS.")
    topic_prefix: str = Field("rtsp-worker", min_length=1, max_length=128, pattern=r"^[^#+\x00]*[^#+/\x00]$",
                              description="Topics start with it (no MQTT wildcards, no trailing '/').")
    username: str | None = Field(None, description="Broker user name.")
    password: SecretStr | None = Field(None, description="Broker password (`${ENV}` works; never logged).")
    tls: MqttTlsConfig | None = Field(None, description="Certificates for mqtts:// (default: the system's CAs).")
    buffer: int = Field(10000, ge=1, le=60000, description="Events held unacknowledged while the broker is away; "
                        "newer ones beyond that are dropped and counted.")
    state_interval_s: float = Field(10.0, gt=0, le=3600, description="Seconds between refreshes of a camera's "
                                    "retained state (it is also sent after each batch with events).")

    @field_validator("url")
    @classmethod
    def _check_mqtt_url(cls, v: str) -> str:
        scheme = urlsplit(v).scheme.lower()
        if scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"unsupported scheme {scheme!r} (use mqtt:// or mqtts://)")
        check_port(v)
        return v

    @model_validator(mode="after")
    def _tls_needs_mqtts(self) -> MqttConfig:
        if self.tls is not None and urlsplit(self.url).scheme.lower() != "mqtts":
            raise ValueError("tls: is set but the url is not mqtts://")
        return self


class WebhookConfig(StrictModel):
    """`output.webhooks[]`: POST each matching event (its JSONL record) to `url`."""

    url: SecretStr = Field(..., description="http:// or https:// URL (a secret: it often carries a key).")
    name: str | None = Field(None, description="Its label in metrics and logs (default: its index in the list); "
                             "the same rule as camera names.")
    on: list[EventKind] | None = Field(None, description="Event kinds to send (None: all).")
    headers: dict[str, SecretStr] = Field(default_factory=dict, description="Extra request headers (secrets).")
    timeout_s: float = Field(5.0, gt=0, le=120, description="Bound on one request (connect, and each read).")
    retries: int = Field(3, ge=0, le=20, description="Tries after the first, on a network error, 5xx or 429.")
    backoff_s: float = Field(0.5, gt=0, le=60, description="Wait before the first retry, doubled each time.")
    queue: int = Field(1000, ge=1, le=100000, description="Events waiting to be sent; beyond: dropped, counted.")

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_key(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML) reads a bare `on:` key as the boolean True.
        if isinstance(data, dict) and any(k is True for k in data) and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str | None) -> str | None:
        return None if v is None else check_name(v, "webhook")

    @field_validator("url")
    @classmethod
    def _check_webhook_url(cls, v: SecretStr) -> SecretStr:
        url = v.get_secret_value()
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"unsupported scheme {scheme!r} (use http:// or https://)")
        check_port(url)
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
    mqtt: MqttConfig | None = Field(None, description="Events and per-camera state to an MQTT broker.")
    webhooks: list[WebhookConfig] = Field(default_factory=list, description="Events POSTed to HTTP endpoints.")

    @field_validator("webhooks")
    @classmethod
    def _unique_webhook_names(cls, v: list[WebhookConfig]) -> list[WebhookConfig]:
        names = [w.name or str(i) for i, w in enumerate(v)]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"two webhooks are named {dup!r} (names label their metrics)")
        return v
