"""`metrics:`, `control:` and the keys of the process: `device`, `watch_config`, and the supervisor's
`workers`, `devices` and `workers_per_gpu`.

The supervisor's keys stay top-level keys of the file (where users write them); they are declared here, with
their checks, and only `rtsp-worker run` with more than one worker reads them.
"""

from __future__ import annotations

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


class ControlConfig(StrictModel):
    """`control:` the camera control API (`/cameras`, `/reload`) on the metrics port."""

    # SecretStr: the token never shows in a repr, a log line or an error message.
    token: SecretStr | None = Field(
        None, description="Bearer token every write needs (`${ENV}` works); null: the API is read-only."
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
