"""A camera's runtime state, shared by its source thread, the batcher and the service layer.

Kept apart from the decoders (sources/camera.py imports PyAV) so that whoever only reads a camera's state or
takes its frames (batcher, health, metrics, a test's fake source) imports no decoder library.
"""

from __future__ import annotations

import enum
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from rtsp_worker.types import Frame

if TYPE_CHECKING:
    import torch

    from rtsp_worker.config import CameraConfig, SourceOptions


class CameraState(str, enum.Enum):
    """Where a camera is in its connect / stream / reconnect cycle."""

    CONNECTING = "connecting"
    STREAMING = "streaming"
    STALLED = "stalled"
    BACKOFF = "backoff"
    DISABLED = "disabled"
    STOPPED = "stopped"


@dataclass
class CameraStats:
    """Counters a camera thread updates and the pipeline reads (ints: atomic enough under the GIL)."""

    decoded: int = 0  # frames decoded
    dropped: int = 0  # frames replaced in the slot before inference took them
    reconnects: int = 0  # connections (re)opened after the first
    failures: int = 0  # consecutive failed connects
    processed: int = 0  # frames that came out of the pipeline (updated by the pipeline)
    stalls: int = 0  # times the stall watchdog saw no frame for `stall_timeout_s` while streaming
    decode_errors: int = 0  # packets the decoder rejected (the stream goes on)
    state: CameraState = CameraState.CONNECTING
    last_error: str = ""
    last_frame_mono: float = 0.0  # time.monotonic() of the newest frame, for the stall watchdog
    width: int = 0
    height: int = 0
    codec: str = ""
    decoder: str = ""
    skipping_nonref: bool = False  # the decoder skips non-reference frames (most frames were dropped anyway)
    gated: int = 0  # frames the motion gate kept from the detector (updated by the pipeline; also `processed`)
    inferred: int = 0  # processed frames the detector ran on (updated by the pipeline's scheduler)
    motion: bool = False  # the motion gate saw motion in the newest processed frame


    def __post_init__(self) -> None:
        # STREAMING -> STALLED is decided by the watchdog on another thread than the camera's own
        # transitions: both go through this lock so that neither overwrites the other's newer state.
        self._lock = threading.Lock()

    def set_state(self, state: CameraState) -> CameraState:
        """Set the state; returns the previous one."""
        with self._lock:
            old, self.state = self.state, state
        return old

    def mark_stalled(self, now: float, stall_s: float) -> float | None:
        """STREAMING with no frame for `stall_s` -> STALLED (counted). Returns the silence, or None."""
        with self._lock:
            silent = now - self.last_frame_mono
            if self.state != CameraState.STREAMING or silent <= stall_s:
                return None
            self.state = CameraState.STALLED
            self.stalls += 1
            return silent


class FrameSlot:
    """Holds the newest frame of one camera. `put` replaces an untaken frame and counts it as dropped."""

    def __init__(self, cond: threading.Condition, stats: CameraStats) -> None:
        self.cond = cond  # shared with the batcher; `take` needs it held
        self._stats = stats
        self._frame: Frame | None = None

    def put(self, frame: Frame) -> None:
        with self.cond:
            replaced = self._frame is not None
            self._frame = frame
            if replaced:  # the batcher already counted this camera as fresh: no need to wake it
                self._stats.dropped += 1
            else:
                self.cond.notify_all()

    def peek(self) -> Frame | None:
        return self._frame

    def take(self) -> Frame | None:
        """Caller holds the condition's lock."""
        frame, self._frame = self._frame, None
        return frame


class Source(Protocol):
    """What the pipeline needs of a camera's source: a thread that decodes into its slot until `stop`.

    `CameraSource` (PyAV / NVDEC over RTSP or a file) is the real one; unit tests pass a fake that puts
    synthetic frames (tests/fake_source.py).
    """

    cfg: CameraConfig  # replaced live by an edit that needs no reconnect (e.g. infer_interval)
    next_seq: int  # the frame number its next frame gets (a replacement source goes on from it)

    def start(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...

    def check_stall(self, now: float | None = None) -> bool: ...


class SourceFactory(Protocol):
    """Makes the source of one camera: it decodes `cfg` into `slot` as batch row `row`, counts into `stats`,
    stops when `stop` is set and numbers its frames from `first_seq`."""

    def __call__(self, row: int, cfg: CameraConfig, options: SourceOptions, slot: FrameSlot, stats: CameraStats,
                 stop: threading.Event, device: torch.device, first_seq: int = 0) -> Source: ...
