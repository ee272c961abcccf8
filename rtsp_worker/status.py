"""What the service layer sees of a running pipeline: a frozen status snapshot, the batch and camera events
it may subscribe to, and the one rate meter for frame rates.

Health, metrics, the control API and reload read `Pipeline.status()` and subscribe with
`Pipeline.on_batch` / `Pipeline.on_camera`; they never reach into the pipeline's parts. Features that need
the pixels or the tracks of every batch (event clips, snapshots, a live view, heatmaps) subscribe to
`BatchOutput` the same way.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rtsp_worker.capacity import Headroom
from rtsp_worker.config import CameraConfig, mask_url
from rtsp_worker.evidence.disk import EvidenceStatus
from rtsp_worker.sinks import SinkStatus
from rtsp_worker.sources.state import CameraState
from rtsp_worker.types import Event, Frame, FrameResult, Tracks

if TYPE_CHECKING:
    from rtsp_worker.analytics.events import Analytics
    from rtsp_worker.sources.state import CameraStats

# Camera events (`Pipeline.on_camera` subscribers get (event, camera name), on the inference thread between
# two batches): "added", "removed", "updated" (a live edit), "reconnected" (a new connection).
CameraListener = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class BatchReport:
    """Timings of one batch, for logs and metrics."""

    size: int
    inferred: int
    preprocess_ms: float
    infer_ms: float
    postprocess_ms: float
    track_ms: float
    latencies: tuple[tuple[str, float], ...]  # (camera name, seconds from decode to result) per frame


@dataclass(frozen=True, slots=True)
class BatchOutput:
    """One finished batch, as `Pipeline.on_batch` subscribers get it (on the finish thread, after the sinks
    were handed the results). Subscribers must be quick and must not keep `frames` longer than they need:
    the images are the decoders' own buffers, still on their device."""

    frames: tuple[Frame, ...]  # the batch's frames; `image` still on its device, in the decoder's format
    cameras: tuple[str, ...]  # camera name of each frame
    tracks: Tracks  # every reported track of the batch, on the work device (`batch_index` = frame position)
    results: tuple[FrameResult, ...]  # host-side, one per frame, as the sinks got them
    events: tuple[Event, ...]  # line crossings and zone enter/exit found in the batch, in frame order
    report: BatchReport


BatchListener = Callable[[BatchOutput], None]


@dataclass(frozen=True, slots=True)
class CameraStatus:
    """One camera, as the status snapshot shows it (URL with its password masked)."""

    name: str
    row: int
    url: str
    infer_interval: int
    state: CameraState
    last_error: str
    decoded: int
    processed: int
    dropped: int
    reconnects: int
    stalls: int
    decode_errors: int
    failures: int
    skipping_nonref: bool
    codec: str
    decoder: str
    width: int
    height: int
    decode_fps: float | None  # over the last window of at least RATE_WINDOW_S; None until one passed
    processed_fps: float | None
    analytics: str = ""  # `lines=door:in=3,out=1 zones=lobby:2`, "" without lines and zones
    gated: int = 0  # processed frames the motion gate kept from the detector
    motion: bool = False  # the motion gate saw motion in the newest processed frame
    priority: str = "normal"
    multiplier: int = 1  # effective infer_interval = infer_interval x this (> 1 under overload, by priority)
    inferred: int = 0  # processed frames the detector ran on (the rest: infer_interval, priorities, motion gate)


@dataclass(frozen=True, slots=True)
class ZoneCount:
    camera: str
    zone: str
    class_name: str
    objects: int  # tracks inside the zone now


@dataclass(frozen=True, slots=True)
class AnalyticsStatus:
    crossings: tuple[tuple[tuple[str, str, str, str], int], ...]  # ((camera, line, direction, class), total)
    zones: tuple[ZoneCount, ...]
    rules: tuple[tuple[tuple[str, str, str], int], ...] = ()  # ((camera, zone or line, rule), events so far)
    crowded: tuple[tuple[str, str, bool], ...] = ()  # (camera, zone, crowded now), zones with max_objects


NOTHING_MEASURED = Headroom(None, 0.0, None)


@dataclass(frozen=True, slots=True)
class PipelineStatus:
    """A frozen view of a pipeline at one moment; cheap to take (no device sync)."""

    cameras: tuple[CameraStatus, ...]
    sinks: tuple[SinkStatus, ...]
    analytics: AnalyticsStatus | None  # None: no camera has a line or a zone
    batches: int
    frames: int  # frames that came out of the pipeline
    nonfinite: int  # NaN/Inf detections dropped before the tracker
    loop_ts: float | None  # time.monotonic() of the inference loop's last round; None before the loop ran
    stopping: bool
    capacity: int  # most cameras the engine's batch takes
    lingering_sources: int = 0  # removed cameras whose source thread outlived its timeouts (left behind)
    evidence: EvidenceStatus | None = None  # clips and snapshots written, dropped (rtsp_worker/evidence)
    room: Headroom = NOTHING_MEASURED  # the engine's measured capacity vs every camera's full target

    @property
    def capacity_fps(self) -> float | None:
        """Inferred frames/s the engine delivers: measured on real batches, from its warm-up before the first."""
        return self.room.capacity_fps

    @property
    def capacity_source(self) -> str | None:
        """"batches", "warm-up" (no real batch yet), or None (nothing measured)."""
        return self.room.source

    @property
    def demand_fps(self) -> float:
        """Every camera at its full target rate (motion gating not counted)."""
        return self.room.demand_fps

    @property
    def headroom_fps(self) -> float | None:
        return self.room.headroom_fps

    def camera(self, name: str) -> CameraStatus | None:
        return next((c for c in self.cameras if c.name == name), None)

    @property
    def streaming(self) -> int:
        return sum(1 for c in self.cameras if c.state is CameraState.STREAMING)

    @property
    def sink_lost(self) -> int:
        return sum(s.lost for s in self.sinks)

    @property
    def sink_errors(self) -> int:
        return sum(s.errors for s in self.sinks)


@dataclass(frozen=True, slots=True)
class Growth:
    """How much each counter grew over `seconds`."""

    deltas: tuple[int, ...]
    seconds: float

    def rate(self, i: int) -> float:
        return self.deltas[i] / max(self.seconds, 1e-6)


class RateMeter:
    """Growth of counters per key (a camera) between two reads at least `window_s` apart.

    A key whose identity changes (a camera removed and added again under its name: a new stats object)
    starts over. `from_zero`: a key seen for the first time counts from zero since the previous read (the
    periodic log line); otherwise it has no growth until a window passed (the control API's fps).
    Between two windows a read returns the last window's growth. Safe to call from several threads.
    """

    def __init__(self, window_s: float = 0.0, *, from_zero: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.from_zero = from_zero
        self.clock = clock
        self._lock = threading.Lock()
        self.t0 = self._t = clock()
        self._base: dict[str, tuple[Any, float, tuple[int, ...]]] = {}  # key -> (identity, t, values)
        self._last: dict[str, Growth] = {}

    def restart(self) -> None:
        """Count every key from zero since this meter was made (the final log line: rates of the whole run)."""
        with self._lock:
            self._base, self._last, self._t = {}, {}, self.t0

    def read(self, items: Iterable[tuple[str, Any, Sequence[int]]], now: float | None = None
             ) -> dict[str, Growth | None]:
        """`items`: (key, identity, counter values) for every live key; keys not listed are forgotten."""
        now = self.clock() if now is None else now
        out: dict[str, Growth | None] = {}
        with self._lock:
            base, self._base = self._base, {}
            for key, ident, values in items:
                values = tuple(values)
                prev = base.get(key)
                if prev is None or prev[0] is not ident:
                    self._last.pop(key, None)
                    if not self.from_zero:
                        self._base[key] = (ident, now, values)
                        out[key] = None
                        continue
                    prev = (ident, self._t, (0,) * len(values))
                if now - prev[1] >= self.window_s:
                    self._last[key] = Growth(tuple(v - p for v, p in zip(values, prev[2])), now - prev[1])
                    self._base[key] = (ident, now, values)
                else:
                    self._base[key] = prev
                out[key] = self._last.get(key)
            self._last = {k: v for k, v in self._last.items() if k in self._base}
            self._t = now
        return out


def analytics_status(a: Analytics | None) -> AnalyticsStatus | None:
    """The analytics' part of the status snapshot: crossing, zone and rule counts."""
    if a is None:
        return None
    zones = []
    for c, camera in enumerate(a.names):
        occ = a.occupancy(c)
        for z, zone in enumerate(a.zones.configs[c]):
            zones += [ZoneCount(camera, zone.name, cls, int(occ[z, k])) for k, cls in enumerate(a.class_names)]
    return AnalyticsStatus(tuple(sorted(a.crossing_totals().items())), tuple(zones),
                           tuple(sorted(a.rule_totals().items())), tuple(a.crowded()))


def camera_status(c: CameraConfig, st: CameraStats, row: int, rate: Growth | None, analytics: str,
                  multiplier: int) -> CameraStatus:
    """One camera's line of the snapshot: its config, its counters, its measured rates (`rate`: decoded and
    processed, None until a window passed), the URL's password masked."""
    return CameraStatus(
        c.name, row, mask_url(c.url), c.infer_interval, st.state, st.last_error, st.decoded, st.processed,
        st.dropped, st.reconnects, st.stalls, st.decode_errors, st.failures, st.skipping_nonref, st.codec,
        st.decoder, st.width, st.height, rate.rate(0) if rate else None, rate.rate(1) if rate else None,
        analytics, st.gated, st.motion, c.priority, multiplier, st.inferred)
