"""`cameras.yaml`: pydantic v2 models by stage, and the loader that reads, expands and validates the file.

    base       the strict base model, ConfigError, the one name rule for cameras, lines and zones
    cameras    cameras:, defaults:, source:
    analytics  cameras[].lines, cameras[].zones
    model      model: (one section per backend), batcher:, detection:
    tracking   tracker:
    outputs    output: (JSONL, video, Redis)
    service    metrics:, control:, view:, device, and the supervisor's workers / devices / workers_per_gpu
    schema     Config: the whole file
    loader     read_yaml, ${ENV} expansion, defaults merge, parse_config, load_config
    reference  dotted_keys, field_docs: the keys with their types, defaults and descriptions

Every model forbids unknown keys; `load_config` turns any problem into a `ConfigError` whose one-line
message names the file, the camera (by name when it has one) and the field.
"""

from __future__ import annotations

from rtsp_worker.config.analytics import Anchor, LineConfig, Point, Units, ZoneConfig
from rtsp_worker.config.base import NAME_PATTERN, NAME_RULE, ConfigError, StrictModel, check_name, is_loopback
from rtsp_worker.config.calibration import CalibrationConfig, HeatmapConfig
from rtsp_worker.config.cameras import URL_SCHEMES, CameraConfig, DecoderKind, MotionConfig, SourceOptions
from rtsp_worker.config.loader import expand_env, load_config, parse_config, read_yaml
from rtsp_worker.config.model import (
    BACKENDS,
    TENSORRT_SUFFIXES,
    TORCH_SUFFIXES,
    AnyModelConfig,
    BatcherConfig,
    DetectionConfig,
    ModelConfig,
    ModelInputConfig,
    OnnxRuntimeModelConfig,
    TensorRTModelConfig,
    TorchModelConfig,
    backend_for,
)
from rtsp_worker.config.outputs import (
    EventKind,
    MqttConfig,
    MqttTlsConfig,
    OutputConfig,
    RedisConfig,
    WebhookConfig,
)
from rtsp_worker.config.reference import FieldDoc, dotted_keys, field_docs
from rtsp_worker.config.schema import Config
from rtsp_worker.config.service import DEVICE_FORMS, ControlConfig, MetricsConfig, ViewConfig
from rtsp_worker.config.tracking import TrackerConfig
from rtsp_worker.redact import mask_url  # callers import it from here

__all__ = [
    "BACKENDS",
    "DEVICE_FORMS",
    "NAME_PATTERN",
    "NAME_RULE",
    "TENSORRT_SUFFIXES",
    "TORCH_SUFFIXES",
    "URL_SCHEMES",
    "Anchor",
    "AnyModelConfig",
    "BatcherConfig",
    "CalibrationConfig",
    "CameraConfig",
    "Config",
    "ConfigError",
    "ControlConfig",
    "DecoderKind",
    "DetectionConfig",
    "EventKind",
    "FieldDoc",
    "HeatmapConfig",
    "LineConfig",
    "MetricsConfig",
    "ModelConfig",
    "ModelInputConfig",
    "MotionConfig",
    "MqttConfig",
    "MqttTlsConfig",
    "OnnxRuntimeModelConfig",
    "OutputConfig",
    "Point",
    "RedisConfig",
    "SourceOptions",
    "StrictModel",
    "TensorRTModelConfig",
    "TorchModelConfig",
    "TrackerConfig",
    "Units",
    "ViewConfig",
    "WebhookConfig",
    "ZoneConfig",
    "backend_for",
    "check_name",
    "dotted_keys",
    "expand_env",
    "field_docs",
    "is_loopback",
    "load_config",
    "mask_url",
    "parse_config",
    "read_yaml",
]
