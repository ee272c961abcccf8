"""`Config`: the whole `cameras.yaml`, one section per stage."""

from __future__ import annotations

from typing import Any

from pydantic import Field, PrivateAttr, model_validator

from rtsp_worker.config.base import StrictModel
from rtsp_worker.config.cameras import CameraConfig, SourceOptions
from rtsp_worker.config.model import AnyModelConfig, BatcherConfig, DetectionConfig
from rtsp_worker.config.outputs import OutputConfig
from rtsp_worker.config.service import (
    ControlConfig,
    Device,
    Devices,
    MetricsConfig,
    ViewConfig,
    WatchConfig,
    Workers,
    WorkersPerGpu,
    view_exposure,
)
from rtsp_worker.config.tracking import TrackerConfig


class Config(StrictModel):
    """The whole `cameras.yaml`."""

    cameras: list[CameraConfig] = Field(..., min_length=1, description="The cameras (at least one enabled).")
    model: AnyModelConfig = Field(..., description="The detector; its keys depend on the backend.")
    detection: DetectionConfig = Field(DetectionConfig(), description="Postprocessing thresholds.")
    batcher: BatcherConfig = Field(BatcherConfig(), description="How frames are gathered into batches.")
    tracker: TrackerConfig = Field(TrackerConfig(), description="The tracker.")
    output: OutputConfig = Field(OutputConfig(), description="Where results go.")
    source: SourceOptions = Field(SourceOptions(), description="How every camera connects and reconnects.")
    metrics: MetricsConfig = Field(MetricsConfig(), description="The HTTP endpoints (metrics, health, control).")
    device: Device = "auto"
    log_interval: float = Field(5.0, gt=0, le=3600, description="Seconds between per-camera FPS log lines.")
    defaults: dict[str, Any] | None = Field(None, description="Camera keys (any but name and url) merged into "
                                            "every camera; a camera's own value wins.")
    control: ControlConfig = Field(ControlConfig(), description="The camera control API.")
    view: ViewConfig = Field(ViewConfig(), description="The browser view and the access rule of pictures, "
                             "events and media.")
    watch_config: WatchConfig = False
    # Read by the supervisor only (`rtsp-worker run` with more than one worker): service.py.
    workers: Workers = 1
    devices: Devices = None
    workers_per_gpu: WorkersPerGpu = 1

    _source: str = PrivateAttr("<config>")  # the file it came from, for errors found after loading

    @property
    def origin(self) -> str:
        """Where this config came from (its file), for errors found after loading."""
        return self._source

    @model_validator(mode="after")
    def _unique_names(self) -> Config:
        seen: set[str] = set()
        for cam in self.cameras:
            if cam.name in seen:
                raise ValueError(f"duplicate camera name {cam.name!r}")
            seen.add(cam.name)
        if not any(c.enabled for c in self.cameras):
            raise ValueError("no camera is enabled")
        if (exposed := view_exposure(self.metrics, self.view)) is not None:
            raise ValueError(exposed)
        for i, cam in enumerate(self.cameras):
            for kind, items in (("lines", cam.lines), ("zones", cam.zones)):
                names = [x.name for x in items]
                dup = next((n for n in names if names.count(n) > 1), None)
                if dup is not None:
                    raise ValueError(f"camera {cam.name!r}, field 'cameras.{i}.{kind}': duplicate name {dup!r}")
        return self

    @property
    def enabled_cameras(self) -> list[CameraConfig]:
        return [c for c in self.cameras if c.enabled]
