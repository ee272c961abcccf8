"""`cameras:` (and `defaults:`) and `source:`: which streams to read and how to connect to them."""

from __future__ import annotations

import logging
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from rtsp_worker.config.analytics import LineConfig, ZoneConfig
from rtsp_worker.config.base import StrictModel, check_name
from rtsp_worker.config.calibration import CalibrationConfig, HeatmapConfig
from rtsp_worker.config.evidence import ClipsConfig, SnapshotsConfig
from rtsp_worker.redact import url_host_port

log = logging.getLogger(__name__)

URL_SCHEMES = ("rtsp", "rtsps", "file")
DecoderKind = Literal["auto", "nvdec", "cpu"]


def check_port(url: str) -> None:
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


class SourceOptions(StrictModel):
    """How sources connect, wait and reconnect (global, in `source:`)."""

    open_timeout_s: float = Field(5.0, gt=0, le=120, description="Bound on connecting to and probing a stream.")
    read_timeout_s: float = Field(5.0, gt=0, le=120, description="A stream silent this long is reconnected.")
    stall_timeout_s: float = Field(
        3.0, gt=0, le=600, description="Watchdog: no decoded frame for this long -> reconnect."
    )
    backoff_initial_s: float = Field(0.5, gt=0, le=60, description="First reconnect delay.")
    backoff_max_s: float = Field(10.0, gt=0, le=600, description="Cap on the reconnect delay (it doubles per "
                                 "failed attempt).")
    backoff_jitter: float = Field(0.2, ge=0, le=1, description="Random +-fraction added to each delay.")
    max_failures: int | None = Field(
        None, ge=1, description="Disable a camera after this many failed connects in a row (null: never)."
    )
    skip_nonref: bool = Field(
        True, description="When the pipeline takes fewer than 1 in 4 of a camera's decoded frames, the CPU decoder "
        "skips frames no other frame refers to (B-frames; FFmpeg skip_frame=nonref) until it takes more than 1 in 2.",
    )


class MotionConfig(StrictModel):
    """Motion gate: skip the detector for frames whose picture did not change (docs/motion-and-capacity.md)."""

    enabled: bool = Field(False, description="Gate the detector on motion: a frame that differs from the camera's "
                          "running background by less than `min_area` is not inferred (the tracker predicts it).")
    threshold: float = Field(12.0, gt=0, le=255, description="Luma difference (0-255) from the background that "
                             "makes a cell of the small luma grid count as changed; above the sensor noise.")
    min_area: float = Field(0.002, ge=0, lt=1, description="Fraction of the (unmasked) picture that must change "
                            "for motion (0.002: about 10 cells of the 96x54 grid; 0.0005 for small distant objects).")
    max_skip_s: float = Field(5.0, gt=0, le=3600, description="Run the detector at least this often (stream "
                              "seconds) even without motion, so that tracks of still objects are refreshed.")
    mask: list[list[tuple[float, float]]] = Field(
        default_factory=list, description="Polygons (3+ vertices each, in `units`) whose changes never count as "
        "motion: a tree, a clock, a TV.")
    units: Literal["pixels", "fractions"] = Field("pixels", description="Units of the mask vertices: source-frame "
                                                  "pixels, or fractions of the frame's width and height (0 to 1).")

    @field_validator("mask")
    @classmethod
    def _check_mask(cls, v: list[list[tuple[float, float]]]) -> list[list[tuple[float, float]]]:
        for i, poly in enumerate(v):
            if not 3 <= len(poly) <= 64:
                raise ValueError(f"mask polygon {i} has {len(poly)} vertices (3 to 64)")
        return v


class CameraConfig(StrictModel):
    """One camera. Any field but `name` and `url` may also be set in `defaults:`."""

    name: str = Field(..., description="Unique name: the camera's output folder, Redis stream suffix and metric "
                      "label; 1-64 characters of A-Z a-z 0-9 _ . -, not starting with a dot, without '..'.")
    url: str = Field(..., description="rtsp://, rtsps:// or file:// (a clip played at its native rate, looped); "
                     "`${ENV}` references are expanded and passwords are masked wherever a URL is shown.")
    enabled: bool = Field(True, description="false: keep the camera in the file but do not open it.")
    decoder: DecoderKind = Field("auto", description="auto: NVDEC when the device is a GPU and PyNvVideoCodec works "
                                 "there, else FFmpeg on the CPU; nvdec: NVDEC, falling back to the CPU with a "
                                 "warning; cpu: FFmpeg on the CPU.")
    infer_interval: int = Field(1, ge=1, le=100, description="Run the detector on every Nth frame; the tracker "
                                "predicts the frames in between.")
    realtime: bool = Field(True, description="file:// sources: play at the clip's native rate.")
    loop: bool = Field(True, description="file:// sources: start again at the end.")
    lines: list[LineConfig] = Field(default_factory=list, description="Counting lines of this camera.")
    zones: list[ZoneConfig] = Field(default_factory=list, description="Zones of this camera.")
    calibration: CalibrationConfig | None = Field(None, description="Ground-plane calibration: world positions "
                                                  "and speeds of tracks (null: none).")
    heatmap: HeatmapConfig | None = Field(None, description="Accumulate where tracks go (null: no heatmap).")
    motion: MotionConfig = Field(default_factory=MotionConfig, description="Motion gate of this camera.")
    priority: Literal["high", "normal", "low"] = Field("normal", description="Under overload high-priority "
                                                        "cameras keep their target rate first; low ones get a "
                                                        "larger effective infer_interval first.")
    target_fps: float | None = Field(None, gt=0, le=10000, description="Inferred frames per second this camera "
                                     "should get (null: the stream's rate / infer_interval); admission counts it.")
    resolution: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = Field(
        None, description="[width, height] the camera sends; with `frame_rate`, weighs the camera when cameras "
        "are sharded across workers."
    )
    frame_rate: float | None = Field(None, gt=0, le=1000, description="Frame rate the camera sends (weighs the "
                                     "camera when cameras are sharded).")
    clips: ClipsConfig | None = Field(None, description="Event clips (docs/evidence.md); `{}`: on with the "
                                      "defaults; absent: off.")
    snapshots: SnapshotsConfig | None = Field(None, description="Best snapshot per track (docs/evidence.md); "
                                              "`{}`: on with the defaults; absent: off.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        return check_name(v, "camera")

    @model_validator(mode="after")
    def _warn_pixel_units(self) -> CameraConfig:
        # Coordinates all <= 1 in pixel units are almost certainly fractions: the line or zone would sit in the
        # frame's top-left pixel and never count anything. A warning, not an error: the config is valid.
        for kind, attr in (("lines", "points"), ("zones", "polygon")):
            for i, item in enumerate(getattr(self, kind)):
                pts = getattr(item, attr)
                if item.units == "pixels" and all(abs(v) <= 1 for p in pts for v in p):
                    log.warning("camera %r, field '%s.%d' (%r): every coordinate is at most 1 pixel; did you "
                                "mean `units: fractions`?", self.name, kind, i, item.name)
        cal = self.calibration
        if cal is not None and cal.units == "pixels" and all(abs(v) <= 1 for p in cal.image for v in p):
            log.warning("camera %r, field 'calibration.image': every coordinate is at most 1 pixel; did you "
                        "mean `units: fractions`?", self.name)
        return self

    @model_validator(mode="after")
    def _check_speed_rules(self) -> CameraConfig:
        if self.calibration is None:
            for kind in ("lines", "zones"):
                for i, item in enumerate(getattr(self, kind)):
                    if item.speed_over is not None:
                        raise ValueError(f"{kind}.{i}.speed_over ({item.name!r}) needs a calibration: "
                                         "add `calibration:` to the camera")
        return self

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
            check_port(v)
        return v
