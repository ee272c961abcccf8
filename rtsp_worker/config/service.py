"""`metrics:`, `control:` and the keys of the process: `device`, `watch_config`, and the supervisor's
`workers`, `devices` and `workers_per_gpu`.

The supervisor's keys stay top-level keys of the file (where users write them); they are declared here, with
their checks, and only `rtsp-worker run` with more than one worker reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr

from rtsp_worker.config.base import StrictModel
from rtsp_worker.devices import DEVICE_PATTERN

DEVICE_FORMS = "auto, cpu, cpu:N, cuda or cuda:N"


class MetricsConfig(StrictModel):
    """`metrics:` the HTTP port of /metrics, /healthz, /readyz and the control API."""

    port: int | None = Field(None, ge=0, le=65535, description="Port of the HTTP endpoints (0: any free port; null: "
                             "off).")
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0: every interface).")
    health_max_silence_s: float = Field(
        30.0, gt=0, le=3600, description="/healthz fails when the inference loop made no progress for this long."
    )
    max_connections: int = Field(
        1000, ge=1, le=1_000_000, description="Open HTTP connections served at once (metrics, health, control, "
        "views); beyond, a new connection gets 503 and is closed, and is counted."
    )


class ControlConfig(StrictModel):
    """`control:` the camera control API (`/cameras`, `/reload`) on the metrics port."""

    # SecretStr: the token never shows in a repr, a log line or an error message.
    token: SecretStr | None = Field(
        None, description="Bearer token every write needs (`${ENV}` works); null: the API is read-only."
    )
    allow_file_dirs: list[Path] = Field(
        default_factory=list, description="Folders under which a camera added through the API may read a "
        "file:// clip (none by default: the API adds only rtsp:// and rtsps:// cameras)."
    )


def _check_device(v: str) -> str:
    if v != "auto" and not DEVICE_PATTERN.fullmatch(v):
        raise ValueError(f"device {v!r} must be {DEVICE_FORMS}")
    return v


def _check_workers(v: int | str) -> int | str:
    if isinstance(v, int) and not 1 <= v <= 256:
        raise ValueError(f"workers {v} must be between 1 and 256, or auto")
    return v


def _check_devices(v: list[str] | str | None) -> list[str] | str | None:
    if isinstance(v, list):
        if not v:
            raise ValueError("devices must list at least one device, or be auto")
        for d in v:
            if not DEVICE_PATTERN.fullmatch(d):
                raise ValueError(f"devices: {d!r} must be cpu, cpu:N, cuda or cuda:N")
    return v


Device = Annotated[str, AfterValidator(_check_device), Field(
    description=f"Where the model runs: {DEVICE_FORMS} (auto: the current CUDA GPU if there is one, else the "
    "CPU; cuda: the current GPU; cpu:N is the CPU).")]
Workers = Annotated[int | Literal["auto"], AfterValidator(_check_workers), Field(
    description="Worker processes under one supervisor, each with a shard of the cameras (auto: one per "
    "visible GPU x workers_per_gpu).")]
Devices = Annotated[list[str] | Literal["auto"] | None, AfterValidator(_check_devices), Field(
    description="Devices the workers get, round robin: a list of cpu, cpu:N, cuda or cuda:N (auto: every "
    "visible GPU; null: `device`).")]
WatchConfig = Annotated[bool, Field(description="Reload the cameras when this file changes (as on SIGHUP).")]
WorkersPerGpu = Annotated[int, Field(ge=1, le=16, description="workers: auto -> this many workers per GPU.")]


class ViewConfig(StrictModel):
    """`view:` the browser view (`/`, `/view/{name}`, MJPEG streams, latest.jpg) and who may read pictures,
    events and media on the HTTP port (docs/view.md)."""

    enabled: bool = Field(True, description="Serve the browser view's routes (/, /view/..., stream.mjpeg, "
                          "latest.jpg); false: none of them. Nothing is drawn or encoded while nobody watches.")
    # SecretStr: never in a repr, a log line, an answer or an error message.
    token: SecretStr | None = Field(
        None, description="Key for the view, /events and /media (bearer header, or the login form's session "
        "cookie), whatever the bind (`${ENV}` works). Null: served only on a loopback metrics.host, and only to "
        "requests without Forwarded/X-Forwarded-For headers."
    )
    public: bool = Field(False, description="Allow the view without a token on a non-loopback metrics.host "
                         "(anyone who reaches the port sees the cameras); without it such a config is refused.")
    fps: float = Field(5.0, gt=0, le=30, description="Most pictures per second a camera's view is drawn and "
                       "encoded at (once for all its viewers).")
    max_width: int = Field(960, ge=64, le=7680, description="Pictures wider than this are scaled down (pixels).")
    max_viewers: int = Field(16, ge=1, le=1000, description="Open MJPEG streams at once, all cameras together; "
                             "beyond, 503 with Retry-After.")
    jpeg_quality: int = Field(75, ge=10, le=100, description="JPEG quality of the view's pictures.")
    events: int = Field(1000, ge=1, le=100_000, description="Recent events kept in memory for GET /events and "
                        "the view's event lists.")


def view_exposure(metrics: MetricsConfig, view: ViewConfig) -> str | None:
    """Why this HTTP bind would show the cameras to anyone who reaches it, or None when it would not.

    Checked when the config loads and again when the worker starts (a `--metrics-host` override)."""
    from rtsp_worker.config.base import is_loopback

    if metrics.port is None or not view.enabled or view.token is not None or view.public or is_loopback(metrics.host):
        return None
    return (f"field 'view': metrics.host {metrics.host!r} is not a loopback address and the view has no token: "
            "anyone reaching the port would see the cameras; set view.token (e.g. ${VIEW_TOKEN}), or "
            "view.enabled: false, or view.public: true to allow it")
