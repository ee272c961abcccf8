"""`tracker:` the IOU / Kalman tracker's thresholds and motion model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rtsp_worker.config.base import StrictModel


class TrackerConfig(StrictModel):
    """IOU tracker (DeepStream / Bochinski et al. semantics) with a ByteTrack-style second pass."""

    # 0.5 as ByteTrack: what YOLO-style detectors (and the shipped model) give true positives. A detector
    # with higher-calibrated scores wants more (MOT15's Faster R-CNN: 0.85, benchmarks/mot_eval.py).
    min_confidence: float = Field(
        0.5, ge=0, le=1, description="Detections at or above this are matched first and may start tracks."
    )
    iou_threshold: float = Field(0.2, gt=0, le=1, description="Minimum IoU to associate.")
    class_consistent: bool = Field(True, description="Only match detections of the track's class.")
    min_hits: int = Field(3, ge=1, le=100, description="Probation: consecutive matches before a track is reported.")
    max_age: int = Field(5, ge=0, le=10000, description="Shadow tracking: frames a track is kept alive unmatched.")
    report_lost: bool = Field(False, description="Also report shadow-tracked (unmatched) tracks.")
    duplicate_iou: float = Field(0.8, gt=0, le=1, description="New tracks overlapping a live one this much are "
                                 "dropped.")
    predict: bool = Field(True, description="Deprecated: predict: false is motion: none.")
    velocity_smoothing: float = Field(0.3, ge=0, le=1, description="motion: velocity: EMA weight of the newest "
                                      "velocity.")
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
