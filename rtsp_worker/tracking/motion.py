"""Motion models of the batched IOU tracker: where each track's box is expected on the next frame.

A model keeps its own per-slot state in the tracker's ``(B, T, ...)`` state dict (fields it names in
:attr:`MotionModel.fields`), and works on the whole batch at once:

- :meth:`~MotionModel.predict` moves every live track by ``dt`` (``(B, 1)`` seconds since the
  camera's previous processed frame, so dropped and skipped frames move a track further);
- :meth:`~MotionModel.correct` folds in the matched detections and returns the box to report;
- :meth:`~MotionModel.init` gives the state of tracks started from detections.

Three models (``tracker.motion``):

- ``kalman``: a constant-velocity Kalman filter on centre, width and height (``cx, cy, w, h`` and
  their velocities, px and px/s). Noise is relative to the box size (a near person jitters more
  pixels than a far one), process noise grows with ``dt`` (white-noise velocity and position in
  continuous time), the measurement noise does not. With Q and R diagonal, each of the four
  coordinates is an independent position/velocity filter, so the covariance is three numbers per
  coordinate and prediction and update are closed-form elementwise tensor ops: no matrices, no
  inverses, the same code on CPU and CUDA.
- ``velocity``: the older constant-velocity EMA (velocity = EMA of displacement per second between
  observations) with an alpha filter on the reported box.
- ``none``: boxes stay where they were last seen and the detection box is reported (DeepStream's
  plain IOU tracker).
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import torch
from torch import Tensor

from rtsp_worker.config import TrackerConfig

# Velocity model: reported boxes are smoothed (an alpha filter on the prediction): box = pred + gain *
# (det - pred), separately for centre and size. Detector boxes jitter, above all in size, and the
# smoothed box fits the object better (MOT15: +3-6 MOTA points); the raw box is still reachable
# through det_index.
BOX_GAIN_CENTER = 0.7
BOX_GAIN_SIZE = 0.5

# Kalman model: boxes never shrink below this (px), so the size-relative noise stays positive.
MIN_SIZE = 1.0


class MotionModel(Protocol):
    """Batched motion model; every tensor is ``(B, T, ...)`` over the batch's rows and slots."""

    fields: dict[str, tuple[int, ...]]  # extra float32 state per slot: name -> trailing shape

    def predict(self, s: dict[str, Tensor], active: Tensor, dt: Tensor) -> Tensor:
        """Advance live tracks by ``dt`` (``(B, 1)`` s) in ``s``; returns the ``(B, T, 4)`` xyxy prediction."""
        ...

    def correct(self, s: dict[str, Tensor], pred: Tensor, matched: Tensor, dbox: Tensor) -> Tensor:
        """Fold the matched detections ``dbox`` into ``s``; returns the ``(B, T, 4)`` xyxy boxes to keep.

        Called before the tracker counts this frame's hit (``s["hits"]`` = matches before it).
        """
        ...

    def init(self, boxes: Tensor) -> dict[str, Tensor]:
        """State of new tracks started from ``(N, 4)`` xyxy ``boxes``: field -> ``(N, ...)``."""
        ...


class NoMotion:
    """Plain IOU tracking: the box is the last detection, it does not move in between."""

    fields: ClassVar[dict[str, tuple[int, ...]]] = {}

    def predict(self, s: dict[str, Tensor], active: Tensor, dt: Tensor) -> Tensor:
        return s["boxes"]

    def correct(self, s: dict[str, Tensor], pred: Tensor, matched: Tensor, dbox: Tensor) -> Tensor:
        return torch.where(matched[..., None], dbox, pred)

    def init(self, boxes: Tensor) -> dict[str, Tensor]:
        return {}


class VelocityMotion:
    """Constant velocity from an EMA of observed displacement per second; alpha-filtered boxes."""

    fields: ClassVar[dict[str, tuple[int, ...]]] = {"obs": (4,), "vel": (4,), "since_obs": ()}

    def __init__(self, smoothing: float) -> None:
        self.smoothing = smoothing

    def predict(self, s: dict[str, Tensor], active: Tensor, dt: Tensor) -> Tensor:
        s["since_obs"] = s["since_obs"] + torch.where(active, dt, 0.0)
        return torch.where(active[..., None], s["boxes"] + s["vel"] * dt[..., None], s["boxes"])

    def correct(self, s: dict[str, Tensor], pred: Tensor, matched: Tensor, dbox: Tensor) -> Tensor:
        m3 = matched[..., None]
        v_meas = (dbox - s["obs"]) / s["since_obs"].clamp(min=1e-6)[..., None]
        a = self.smoothing
        # A track's second observation has no velocity to smooth with yet: take the measurement.
        v_new = torch.where((s["hits"] <= 1)[..., None], v_meas, a * v_meas + (1 - a) * s["vel"])
        s["vel"] = torch.where(m3, v_new, s["vel"])
        s["obs"] = torch.where(m3, dbox, s["obs"])
        s["since_obs"] = torch.where(matched, 0.0, s["since_obs"])
        return torch.where(m3, _blend(pred, dbox, BOX_GAIN_CENTER, BOX_GAIN_SIZE), pred)

    def init(self, boxes: Tensor) -> dict[str, Tensor]:
        return {"obs": boxes, "vel": torch.zeros_like(boxes), "since_obs": boxes.new_zeros(boxes.shape[0])}


class KalmanMotion:
    """Constant-velocity Kalman filter on ``cx, cy, w, h``, one decoupled 2x2 filter per coordinate.

    State per slot: ``kf_x`` (4) position, ``kf_v`` (4) velocity (px/s), ``kf_p`` (4, 3) covariance
    ``[var(x), cov(x, v), var(v)]`` per coordinate. Noise standard deviations are fractions of the
    box's width (for cx, w) or height (for cy, h): ``measurement_std`` per observation,
    ``position_std`` and ``velocity_std`` per square-root second of process noise, ``init_velocity_std``
    for the unknown velocity of a new track (per second).
    """

    fields: ClassVar[dict[str, tuple[int, ...]]] = {"kf_x": (4,), "kf_v": (4,), "kf_p": (4, 3)}

    def __init__(
        self, measurement_std: float, position_std: float, velocity_std: float, init_velocity_std: float
    ) -> None:
        self.r, self.qp, self.qv, self.v0 = measurement_std, position_std, velocity_std, init_velocity_std

    @staticmethod
    def _scale(x: Tensor) -> Tensor:
        wh = x[..., 2:].clamp(min=MIN_SIZE)
        return torch.cat([wh, wh], dim=-1)  # cx ~ w, cy ~ h, w ~ w, h ~ h

    def predict(self, s: dict[str, Tensor], active: Tensor, dt: Tensor) -> Tensor:
        # Every slot moves, live or not: a free slot's state is never read (association, duplicates
        # and reports all require `active`) and a new track overwrites all of it, so masking would
        # only add work.
        x, v, p = s["kf_x"], s["kf_v"], s["kf_p"]
        d = dt[..., None]  # (B, 1, 1)
        scale2 = self._scale(x).square_()
        pxx, pxv, pvv = p.unbind(-1)
        x_new = x + v * d
        x_new[..., 2:].clamp_(min=MIN_SIZE)
        s["kf_x"] = x_new
        s["kf_p"] = torch.stack([
            pxx + 2 * d * pxv + d * d * pvv + (self.qp**2) * scale2 * d,
            pxv + d * pvv,
            pvv + (self.qv**2) * scale2 * d,
        ], dim=-1)
        return _xywh_to_xyxy(x_new)

    def correct(self, s: dict[str, Tensor], pred: Tensor, matched: Tensor, dbox: Tensor) -> Tensor:
        x, v, p = s["kf_x"], s["kf_v"], s["kf_p"]
        z = _xyxy_to_xywh(dbox)
        pxx, pxv, pvv = p.unbind(-1)
        innov_var = pxx + (self.r**2) * self._scale(z) ** 2
        kx, kv = pxx / innov_var, pxv / innov_var  # Kalman gains of position and velocity
        y = z - x
        x_new = x + kx * y
        v_new = v + kv * y
        p_new = torch.stack([pxx - kx * pxx, pxv - kx * pxv, pvv - kv * pxv], dim=-1)
        m3 = matched[..., None]
        s["kf_x"] = torch.where(m3, x_new, x)
        s["kf_v"] = torch.where(m3, v_new, v)
        s["kf_p"] = torch.where(m3[..., None], p_new, p)
        return torch.where(m3, _xywh_to_xyxy(s["kf_x"]), pred)

    def init(self, boxes: Tensor) -> dict[str, Tensor]:
        z = _xyxy_to_xywh(boxes)
        scale2 = self._scale(z) ** 2
        p = torch.stack([(self.r**2) * scale2, torch.zeros_like(z), (self.v0**2) * scale2], dim=-1)
        return {"kf_x": z, "kf_v": torch.zeros_like(z), "kf_p": p}


def make_motion(cfg: TrackerConfig) -> MotionModel:
    """The motion model named by ``cfg.motion`` (``predict=False``, the older switch, means none)."""
    if not cfg.predict or cfg.motion == "none":
        return NoMotion()
    if cfg.motion == "kalman":
        return KalmanMotion(cfg.kalman_measurement_std, cfg.kalman_position_std, cfg.kalman_velocity_std,
                            cfg.kalman_init_velocity_std)
    return VelocityMotion(cfg.velocity_smoothing)


def _xyxy_to_xywh(b: Tensor) -> Tensor:
    return torch.cat([(b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2]], dim=-1)


def _xywh_to_xyxy(b: Tensor) -> Tensor:
    half = b[..., 2:] / 2
    return torch.cat([b[..., :2] - half, b[..., :2] + half], dim=-1)


def _blend(pred: Tensor, meas: Tensor, gain_center: float, gain_size: float) -> Tensor:
    """``pred + gain * (meas - pred)`` on box centres and sizes (xyxy in, xyxy out)."""
    pc, ps = (pred[..., :2] + pred[..., 2:]) / 2, pred[..., 2:] - pred[..., :2]
    mc, ms = (meas[..., :2] + meas[..., 2:]) / 2, meas[..., 2:] - meas[..., :2]
    c = pc + gain_center * (mc - pc)
    sz = ps + gain_size * (ms - ps)
    return torch.cat([c - sz / 2, c + sz / 2], dim=-1)
