"""`cameras.yaml`: pydantic v2 models, `${ENV}` expansion, a `defaults:` block merged into each camera.

Every model forbids unknown keys; `load_config` turns any problem into a `ConfigError` whose one-line
message names the file, the camera (by name when it has one) and the field.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from rtsp_worker.redact import (
    mask_url,  # noqa: F401 - re-exported: callers import it from here
    url_host_port,
)


class ConfigError(ValueError):
    """A config problem, with a message that names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


URL_SCHEMES = ("rtsp", "rtsps", "file")
DecoderKind = Literal["auto", "nvdec", "cpu"]


def _check_port(url: str) -> None:
    """A port in a URL must be 1..65535 (FFmpeg and redis-py would fail later, and less clearly)."""
    host, port = url_host_port(url)
    if not host:
        raise ValueError("URL has no host")
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"port {port!r} is not a number in 1..65535")


def _check_userinfo(url: str) -> None:
    """Refuse credentials that a raw '#', '?' or '/' cuts short (FFmpeg then fails with "Invalid argument").

    FFmpeg, like RFC 3986, ends the host part at the first '/', '?' or '#': an '@' after it means that
    the user name or password holds one of them unencoded. An '@' after a '/' is also a legitimate path
    (`rtsp://host:554/stream@main`), so a '/' is only blamed when what precedes it reads `user:pass` (a
    "port" that is not a number). The message never quotes the credentials.
    """
    rest = url.partition("://")[2]
    cut = re.search(r"[/?#]", rest)
    if cut is None or "@" not in rest[cut.start():] or rest.startswith("["):
        return
    before = rest[: cut.start()]
    if cut.group() == "/" and not re.fullmatch(r"[^:@]*:(?!\d*$).*", before):
        return
    raise ValueError(
        f"the password (or user name) holds an unencoded {cut.group()!r}, which ends the host part of a URL "
        "(FFmpeg refuses it: \"Invalid argument\"); percent-encode the password: # as %23, ? as %3F, / as %2F"
    )


class SourceOptions(_Model):
    """How sources connect, wait and reconnect (global, in `source:`)."""

    open_timeout_s: float = Field(5.0, gt=0, le=120, description="Bound on connecting and probing a stream.")
    read_timeout_s: float = Field(5.0, gt=0, le=120, description="A stream silent this long is reconnected.")
    stall_timeout_s: float = Field(
        3.0, gt=0, le=600, description="Watchdog: no decoded frame for this long -> reconnect."
    )
    backoff_initial_s: float = Field(0.5, gt=0, le=60, description="First reconnect delay.")
    backoff_max_s: float = Field(10.0, gt=0, le=600, description="Cap on the reconnect delay.")
    backoff_jitter: float = Field(0.2, ge=0, le=1, description="Random +-fraction added to each delay.")
    max_failures: int | None = Field(
        None, ge=1, description="Disable a camera after this many failed connects in a row (None: never)."
    )
    skip_nonref: bool = Field(
        True, description="When the pipeline takes fewer than 1 in 4 of a camera's decoded frames, the CPU decoder "
        "skips frames no other frame refers to (B-frames; FFmpeg skip_frame=nonref) until it takes more than 1 in 2.",
    )


# -- lines and zones (issue 15) -------------------------------------------------------------------------

# Box anchor names are supervision's `sv.Position` values (CENTER_OF_MASS needs a mask: not offered).
Anchor = Literal["CENTER", "CENTER_LEFT", "CENTER_RIGHT", "TOP_CENTER", "TOP_LEFT", "TOP_RIGHT", "BOTTOM_LEFT",
                 "BOTTOM_CENTER", "BOTTOM_RIGHT"]
Units = Literal["pixels", "fractions"]
Point = tuple[float, float]


def _check_units(points: list[Point] | tuple[Point, ...], units: str) -> None:
    if units == "fractions" and any(not (0.0 <= v <= 1.0) for p in points for v in p):
        raise ValueError("units: fractions needs every coordinate in [0, 1]")


def _segments_cross(p: Point, q: Point, r: Point, s: Point) -> bool:
    """Whether segments pq and rs share a point (touching counts)."""

    def orient(a: Point, b: Point, c: Point) -> float:
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

    def on(a: Point, b: Point, c: Point) -> bool:  # c on segment ab, given collinear
        return min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])

    d1, d2, d3, d4 = orient(r, s, p), orient(r, s, q), orient(p, q, r), orient(p, q, s)
    if ((d1 > 0 > d2) or (d1 < 0 < d2)) and ((d3 > 0 > d4) or (d3 < 0 < d4)):
        return True
    return ((d1 == 0 and on(r, s, p)) or (d2 == 0 and on(r, s, q)) or (d3 == 0 and on(p, q, r))
            or (d4 == 0 and on(p, q, s)))


class LineConfig(_Model):
    """A counting line: a track's anchor crossing segment A->B is one event (once per track and direction)."""

    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    points: tuple[Point, Point] = Field(..., description="A and B, in `units`.")
    units: Units = Field("pixels", description="pixels: source-frame pixels; fractions: of width and height.")
    directions: tuple[str, str] = Field(
        ("in", "out"), description="Names of a crossing from the left of A->B to its right (on screen, "
        "walking from A to B), and of the opposite crossing."
    )
    classes: list[int | str] | None = Field(None, description="Count only these class names or ids (None: all).")
    anchor: Anchor = Field("BOTTOM_CENTER", description="Point of the box that has to cross (sv.Position name).")
    margin: float = Field(2.0, ge=0, le=1000, description="Hysteresis, source-frame pixels: the anchor must be "
                          "this far past the line to count (a track wobbling on it does not).")

    @model_validator(mode="after")
    def _check(self) -> LineConfig:
        _check_units(self.points, self.units)
        (ax, ay), (bx, by) = self.points
        if ax == bx and ay == by:
            raise ValueError(f"line {self.name!r} has zero length (both points are {list(self.points[0])})")
        if self.directions[0] == self.directions[1]:
            raise ValueError(f"line {self.name!r}: the two direction names must differ")
        return self


class ZoneConfig(_Model):
    """A zone: enter/exit events per track, occupancy per class, dwell time per track."""

    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    polygon: list[Point] = Field(..., min_length=3, max_length=64, description="Vertices in order, in `units`.")
    units: Units = Field("pixels", description="pixels: source-frame pixels; fractions: of width and height.")
    classes: list[int | str] | None = Field(None, description="Only these class names or ids (None: all).")
    anchor: Anchor = Field("BOTTOM_CENTER", description="Point of the box that decides inside (sv.Position name).")
    margin: float = Field(2.0, ge=0, le=1000, description="Hysteresis, source-frame pixels: enter when this far "
                          "inside, exit when this far outside.")

    @model_validator(mode="after")
    def _check(self) -> ZoneConfig:
        pts = self.polygon
        _check_units(pts, self.units)
        n = len(pts)
        for i in range(n):
            for j in range(i + 1, n):
                if j == i + 1 or (i == 0 and j == n - 1):
                    continue  # neighbouring edges share a vertex
                if _segments_cross(pts[i], pts[(i + 1) % n], pts[j], pts[(j + 1) % n]):
                    raise ValueError(f"zone {self.name!r}: polygon is self-intersecting (edge {i}-{(i + 1) % n} "
                                     f"crosses edge {j}-{(j + 1) % n})")
        area2 = sum(pts[i][0] * pts[(i + 1) % n][1] - pts[(i + 1) % n][0] * pts[i][1] for i in range(n))
        if area2 == 0:
            raise ValueError(f"zone {self.name!r}: polygon has zero area")
        return self


class CameraConfig(_Model):
    """One camera. Any field but `name` and `url` may also be set in `defaults:`."""

    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    url: str = Field(..., description="rtsp://, rtsps:// or file:// (a clip played at its native rate, looped)")
    enabled: bool = True
    decoder: DecoderKind = Field("auto", description="auto: NVDEC when a GPU and PyNvVideoCodec exist.")
    infer_interval: int = Field(1, ge=1, le=100, description="Run the detector on every Nth frame.")
    realtime: bool = Field(True, description="file:// sources: play at the clip's native rate.")
    loop: bool = Field(True, description="file:// sources: start again at the end.")
    lines: list[LineConfig] = Field(default_factory=list, description="Counting lines (issue 15).")
    zones: list[ZoneConfig] = Field(default_factory=list, description="Zones (issue 15).")
    resolution: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = Field(
        None, description="(width, height) the camera sends; with `frame_rate`, weighs it when cameras are sharded."
    )
    frame_rate: float | None = Field(None, gt=0, le=1000, description="Frame rate the camera sends (shard balancing).")

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        scheme = urlsplit(v).scheme.lower()
        if scheme not in URL_SCHEMES:
            raise ValueError(f"unsupported URL scheme {scheme!r} (use one of {', '.join(URL_SCHEMES)})")
        if scheme == "file" and not urlsplit(v).path:
            raise ValueError("file:// URL has no path")
        if scheme != "file":
            _check_userinfo(v)
            _check_port(v)
        return v


class ModelInputConfig(_Model):
    """`model.input:` the model's pixel conventions; unset fields come from metadata or the layout's default."""

    channels: Literal["rgb", "bgr"] | None = Field(None, description="Channel order the model wants.")
    scale: float | None = Field(None, gt=0, le=1, description="0-255 values are multiplied by this (1/255 or 1).")
    mean: tuple[float, float, float] | None = Field(None, description="Subtracted after scaling, per channel.")
    std: tuple[float, float, float] | None = Field(None, description="Divided after subtracting, per channel.")
    letterbox: Literal["center", "topleft", "stretch"] | None = Field(
        None, description="Frame placement: centred, top-left corner (YOLOX), or stretched (RT-DETR)."
    )
    pad_value: float | None = Field(None, ge=0, le=255, description="Letterbox fill, 0-255 units.")

    @field_validator("std")
    @classmethod
    def _nonzero(cls, v: tuple[float, float, float] | None) -> tuple[float, float, float] | None:
        if v is not None and any(x == 0 for x in v):
            raise ValueError(f"std {list(v)} must not contain 0")
        return v


class ModelConfig(_Model):
    """The detector."""

    path: Path = Field(..., description="ONNX model, TorchScript (.torchscript/.pt) or TensorRT plan (.engine)")
    backend: Literal["auto", "onnxruntime", "torch", "tensorrt"] = Field(
        "auto", description="auto: by file suffix and device."
    )
    input_size: tuple[Annotated[int, Field(ge=32, le=4096)], Annotated[int, Field(ge=32, le=4096)]] | None = Field(
        None, description="(height, width), multiples of 32; default: read from the model."
    )
    class_names: list[str] | None = Field(None, description="Override the names stored in the model.")
    layout: Literal["auto", "yolov8", "yolov5", "yolox", "yolox-decoded", "end2end", "rtdetr", "rtdetr-topk"] = Field(
        "auto", description="Output layout (detection/layouts.py); auto: from metadata and output shape."
    )
    input: ModelInputConfig | None = Field(None, description="Override the model's pixel conventions.")
    fp16: bool = Field(True, description="torch backend on CUDA: run in half precision.")
    cuda_graphs: bool = Field(True, description="torch backend on CUDA: capture one graph per batch bucket.")
    contexts: int = Field(2, ge=1, le=8, description="TensorRT: execution contexts (batches in flight).")
    build_engine: bool = Field(
        False, description="TensorRT: build `<path>.engine` from the ONNX on first start if missing or stale."
    )
    threads: int = Field(0, ge=0, le=256, description="ONNX Runtime intra-op threads (0: library default).")
    parallel_runs: int = Field(
        0, ge=0, le=256, description="ONNX Runtime on the CPU: run a batch as this many single-threaded sub-batches "
        "at once (0: one per usable core; 1: off, one multi-threaded run). Independent runs do not wait for each "
        "other at every layer as one multi-threaded run does, so a decode thread that takes a core stalls one run, "
        "not all. Batches smaller than this run as one run with model.threads.",
    )
    spin: bool = Field(
        False, description="ONNX Runtime: let idle pool threads spin-wait between runs (burns CPU that decode needs)."
    )

    @field_validator("input_size")
    @classmethod
    def _multiple_of_32(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (v[0] % 32 or v[1] % 32):
            raise ValueError(f"input_size {list(v)} must be multiples of 32")
        return v


class DetectionConfig(_Model):
    """Postprocessing thresholds."""

    confidence: float = Field(0.25, ge=0, le=1, description="Minimum class score kept.")
    iou: float = Field(0.45, gt=0, le=1, description="NMS IoU threshold (class-aware).")
    classes: list[int | str] | None = Field(None, description="Keep only these class ids or names.")
    max_detections: int = Field(300, ge=1, le=10000, description="Per image, after NMS.")
    max_candidates: int = Field(3000, ge=1, le=100000, description="Per image, before NMS (top scores).")


class BatcherConfig(_Model):
    max_batch: int = Field(16, ge=1, le=256)
    max_wait_ms: float = Field(10.0, ge=0, le=10000, description="Wait at most this long to fill a batch.")
    overlap: bool = Field(
        True, description="Postprocess, track and write one batch while the next is preprocessed and inferred."
    )


class TrackerConfig(_Model):
    """IOU tracker (DeepStream / Bochinski et al. semantics)."""

    # 0.5 as ByteTrack: what YOLO-style detectors (and the shipped model) give true positives. A detector
    # with higher-calibrated scores wants more (MOT15's Faster R-CNN: 0.85, benchmarks/mot_eval.py).
    min_confidence: float = Field(
        0.5, ge=0, le=1, description="Detections at or above this are matched first and may start tracks."
    )
    iou_threshold: float = Field(0.2, gt=0, le=1, description="Minimum IoU to associate.")
    class_consistent: bool = Field(True, description="Only match detections of the track's class.")
    min_hits: int = Field(3, ge=1, le=100, description="Probation: consecutive matches before reporting.")
    max_age: int = Field(5, ge=0, le=10000, description="Shadow tracking: frames kept alive unmatched.")
    report_lost: bool = Field(False, description="Also report shadow-tracked (unmatched) tracks.")
    duplicate_iou: float = Field(0.8, gt=0, le=1, description="New tracks overlapping a live one this much are dropped.")
    predict: bool = Field(True, description="Deprecated: predict=false is motion=none.")
    velocity_smoothing: float = Field(0.3, ge=0, le=1, description="EMA weight of the newest velocity.")
    motion: Literal["kalman", "velocity", "none"] = Field(
        "kalman", description="Motion model: Kalman filter, velocity EMA, or none (plain IOU)."
    )
    kalman_measurement_std: float = Field(
        0.07, gt=0, le=10, description="Kalman: detection noise std, fraction of box width/height."
    )
    kalman_position_std: float = Field(
        0.25, ge=0, le=100, description="Kalman: position process noise std per sqrt(s), fraction of box size."
    )
    kalman_velocity_std: float = Field(
        0.8, ge=0, le=100, description="Kalman: velocity process noise std per s*sqrt(s), fraction of box size."
    )
    kalman_init_velocity_std: float = Field(
        1.5, gt=0, le=100, description="Kalman: velocity std of a new track per s, fraction of box size."
    )
    low_confidence: float = Field(
        0.1, ge=0, le=1, description="Second pass: detections in [low_confidence, min_confidence) may "
        "continue tracks the first pass left unmatched, never start one."
    )
    low_iou_threshold: float = Field(0.5, gt=0, le=1, description="Second pass: minimum IoU to associate.")
    max_tracks: int = Field(256, ge=1, le=10000, description="Track slots per camera.")


class RedisConfig(_Model):
    url: str = Field("redis://127.0.0.1:6379/0")
    stream_prefix: str = Field("rtsp-worker:", description="Stream key = prefix + camera name.")
    maxlen: int = Field(10000, ge=1, description="XADD MAXLEN ~ trimming.")
    buffer: int = Field(10000, ge=1, description="Entries kept while Redis is down; beyond: counted drops.")

    @field_validator("url")
    @classmethod
    def _check_redis_url(cls, v: str) -> str:
        scheme = urlsplit(v).scheme.lower()
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"unsupported scheme {scheme!r} (use redis://, rediss:// or unix://)")
        if scheme != "unix":
            _check_port(v)
            db = re.split(r"[?#]", v.partition("://")[2].rpartition("@")[2])[0].partition("/")[2]
            if db and not db.isdigit():
                raise ValueError(f"database {db!r} is not a number (redis://host:port/N)")
        return v


# -- MQTT and webhooks (issue 28) ------------------------------------------------------------------------
EventKind = Literal["line", "zone_enter", "zone_exit"]  # what `on:` lists name (types.Event.trigger)


class MqttTlsConfig(_Model):
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


class MqttConfig(_Model):
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
        _check_port(v)
        return v

    @model_validator(mode="after")
    def _tls_needs_mqtts(self) -> MqttConfig:
        if self.tls is not None and urlsplit(self.url).scheme.lower() != "mqtts":
            raise ValueError("tls: is set but the url is not mqtts://")
        return self


class WebhookConfig(_Model):
    """`output.webhooks[]`: POST each matching event (its JSONL record) to `url`."""

    url: SecretStr = Field(..., description="http:// or https:// URL (a secret: it often carries a key).")
    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$",
                             description="Its label in metrics and logs (default: its index in the list).")
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

    @field_validator("url")
    @classmethod
    def _check_webhook_url(cls, v: SecretStr) -> SecretStr:
        url = v.get_secret_value()
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"unsupported scheme {scheme!r} (use http:// or https://)")
        _check_port(url)
        return v


class OutputConfig(_Model):
    dir: Path = Field(Path("outputs"), description="Where JSONL files and videos go.")
    jsonl: bool = True
    jsonl_max_bytes: int | None = Field(None, ge=1024, description="Rotate a camera's JSONL file at this size.")
    jsonl_backups: int = Field(5, ge=0, le=1000, description="Rotated files kept per camera.")
    video: bool = Field(False, description="Write an annotated MP4 per camera (boxes, track ids, fps).")
    video_fps: float = Field(0, ge=0, le=240, description="Annotated video rate (0: the camera's).")
    redis: RedisConfig | None = None
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


class MetricsConfig(_Model):
    port: int | None = Field(None, ge=0, le=65535, description="Prometheus endpoint port (None: off).")
    host: str = "127.0.0.1"
    health_max_silence_s: float = Field(
        30.0, gt=0, le=3600, description="/healthz fails when the inference loop made no progress for this long."
    )


class ControlConfig(_Model):
    """The camera control API (`/cameras`, `/reload`) on the metrics port."""

    # SecretStr: the token never shows in a repr, a log line or an error message.
    token: SecretStr | None = Field(
        None, description="Bearer token every write needs (`${ENV}` works); none: the API is read-only."
    )


class Config(_Model):
    """The whole `cameras.yaml`."""

    cameras: list[CameraConfig] = Field(..., min_length=1)
    model: ModelConfig
    detection: DetectionConfig = DetectionConfig()
    batcher: BatcherConfig = BatcherConfig()
    tracker: TrackerConfig = TrackerConfig()
    output: OutputConfig = OutputConfig()
    source: SourceOptions = SourceOptions()
    metrics: MetricsConfig = MetricsConfig()
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    log_interval: float = Field(5.0, gt=0, le=3600, description="Seconds between per-camera FPS log lines.")
    defaults: dict[str, Any] | None = Field(None, description="Merged into every camera (already applied).")
    control: ControlConfig = ControlConfig()
    watch_config: bool = Field(False, description="Reload the cameras when this file changes (as on SIGHUP).")
    workers: int | Literal["auto"] = Field(
        1, description="Worker processes under one supervisor, each with a shard of the cameras (auto: one "
        "per visible GPU x workers_per_gpu)."
    )
    devices: list[str] | Literal["auto"] | None = Field(
        None, description="Devices the workers get, round robin (auto: every visible GPU; None: `device`)."
    )
    workers_per_gpu: int = Field(1, ge=1, le=16, description="workers: auto -> this many per GPU.")

    _source: str = PrivateAttr("<config>")  # the file it came from, for errors found after loading

    @property
    def origin(self) -> str:
        """Where this config came from (its file), for errors found after loading."""
        return self._source

    @field_validator("device")
    @classmethod
    def _check_device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError(f"device {v!r} must be auto, cpu, cuda or cuda:N")
        return v

    @field_validator("workers")
    @classmethod
    def _check_workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 1 <= v <= 256:
            raise ValueError(f"workers {v} must be between 1 and 256, or auto")
        return v

    @field_validator("devices")
    @classmethod
    def _check_devices(cls, v: list[str] | str | None) -> list[str] | str | None:
        if isinstance(v, list):
            if not v:
                raise ValueError("devices must list at least one device, or be auto")
            for d in v:
                if not re.fullmatch(r"cpu|cuda(:\d+)?", d):
                    raise ValueError(f"devices: {d!r} must be cpu, cuda or cuda:N")
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        seen: set[str] = set()
        for cam in self.cameras:
            if cam.name in seen:
                raise ValueError(f"duplicate camera name {cam.name!r}")
            seen.add(cam.name)
        if not any(c.enabled for c in self.cameras):
            raise ValueError("no camera is enabled")
        for i, cam in enumerate(self.cameras):
            for kind in ("lines", "zones"):
                names = [x.name for x in getattr(cam, kind)]
                dup = next((n for n in names if names.count(n) > 1), None)
                if dup is not None:
                    raise ValueError(f"camera {cam.name!r}, field 'cameras.{i}.{kind}': duplicate name {dup!r}")
        return self

    @property
    def enabled_cameras(self) -> list[CameraConfig]:
        return [c for c in self.cameras if c.enabled]


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: Any, where: str = "") -> Any:
    """Replace `${NAME}` (or `${NAME:-default}`) in every string; an unset NAME without default is an error."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
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
    return cfg


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
