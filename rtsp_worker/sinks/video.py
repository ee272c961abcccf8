"""Annotated video per camera: boxes and `#track class conf` labels (supervision), an fps line, H.264 MP4.

The sink asks for pixels (`wants_images`), so the pipeline attaches each frame as (H, W, 3) uint8 RGB on the
CPU. Frames are timed from their decode timestamps (variable rate, like the camera delivered them) unless a
fixed `fps` is given. Files go to `<output.dir>/<camera>/video.mp4`; a resolution change closes the file and
starts `video.<n>.mp4`.

An existing file is never overwritten: a restart on the same folder starts the next free number
(`video.1.mp4`, `video.2.mp4`, ...). Files are fragmented MP4 (a fragment per key frame, one key
frame every `gop` frames, each fragment written out at once), so a SIGKILL, an OOM kill or a second
signal keeps everything up to the last complete fragment: about `gop` frames plus the encoder's delay
are lost, not the whole file (a plain MP4 is unreadable without the index written at close).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import supervision as sv

from rtsp_worker.config import CameraConfig
from rtsp_worker.sinks import Sink
from rtsp_worker.sinks.lines import camera_dir, ensure_output_dir
from rtsp_worker.types import Event, FrameResult

log = logging.getLogger(__name__)

_MS = Fraction(1, 1000)
# supervision draws with OpenCV, which takes colours as BGR, on these RGB frames: swap to get the colour named.
_LINE = sv.Color(r=0, g=0, b=230)  # red
_ZONE = sv.Color(r=0, g=210, b=255)  # yellow
# Fragmented MP4 written through at every fragment: readable after a hard stop.
_FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}


@dataclass
class _Writer:
    container: av.container.OutputContainer
    stream: av.video.stream.VideoStream
    path: Path
    size: tuple[int, int]  # (width, height) of the source frames
    t0: float  # ts of the first frame
    frames: int = 0
    last_pts: int = -1
    fps: float = 0.0  # smoothed rate at which results arrive, for the overlay
    last_ts: float = 0.0


class VideoSink(Sink):
    """One H.264 MP4 per camera in `<directory>/<camera>/`, annotated with the tracks of each frame."""

    name = "video"
    wants_images = True

    def __init__(self, directory: Path, fps: float = 0, crf: int = 23, preset: str = "veryfast",
                 gop: int = 30, cameras: Sequence[CameraConfig] = ()) -> None:
        self.directory = ensure_output_dir(directory)
        self.fps = fps
        self.gop = gop
        # No B-frames: fragmented MP4 has no edit list to hide their reorder delay (timestamps would shift).
        self.options = {"crf": str(crf), "preset": preset, "bf": "0"}
        self._writers: dict[str, _Writer] = {}
        self._segments: dict[str, int] = {}
        self.paths: list[Path] = []  # every file written, in order
        self._boxes = sv.BoxAnnotator(color_lookup=sv.ColorLookup.TRACK)
        self._labels = sv.LabelAnnotator(color_lookup=sv.ColorLookup.TRACK, text_scale=0.4, text_padding=3)
        # Lines and zones drawn with live counts, kept from the events (line totals, zone occupancy).
        self._geometry = {c.name: (c.lines, c.zones) for c in cameras if c.lines or c.zones}
        self._counts: dict[tuple[str, str, str], int] = {}

    @property
    def counts(self) -> dict[tuple[str, str, str], int]:
        """The live counts drawn on the labels: (camera, line or zone, direction or "inside") -> count."""
        return dict(self._counts)

    def _count(self, events: Sequence[Event]) -> None:
        # Per frame, in write(): a batch holds several frames of a camera's video and each shows its own count.
        for e in events:
            if e.rule:  # loiter, crowded, cleared, speeding: not a crossing, no change of occupancy
                continue
            key = (e.camera, e.name, e.direction if e.kind == "line" else "inside")
            step = 1 if e.kind == "line" or e.direction == "enter" else -1
            self._counts[key] = self._counts.get(key, 0) + step

    def _draw_analytics(self, scene: np.ndarray, r: FrameResult) -> np.ndarray:
        lines, zones = self._geometry[r.camera]
        size = np.array([r.width, r.height], dtype=np.float64)
        for z in zones:
            pts = np.array(z.polygon, dtype=np.float64) * (size if z.units == "fractions" else 1.0)
            scene = sv.draw_polygon(scene, pts.round().astype(np.int64), color=_ZONE, thickness=2)
            n = self._counts.get((r.camera, z.name, "inside"), 0)
            scene = sv.draw_text(scene, f"{z.name}: {n}", sv.Point(*pts.mean(0).round().astype(int)),
                                 text_color=sv.Color.BLACK, text_scale=0.45, text_padding=3,
                                 background_color=_ZONE)
        for ln in lines:
            pts = np.array(ln.points, dtype=np.float64) * (size if ln.units == "fractions" else 1.0)
            a, b = (sv.Point(*p) for p in pts.round().astype(int))
            scene = sv.draw_line(scene, a, b, color=_LINE, thickness=2)
            d0, d1 = ln.directions
            text = (f"{ln.name} {d0}={self._counts.get((r.camera, ln.name, d0), 0)} "
                    f"{d1}={self._counts.get((r.camera, ln.name, d1), 0)}")
            mid = sv.Point(*pts.mean(0).round().astype(int))
            scene = sv.draw_text(scene, text, mid, text_color=sv.Color.WHITE, text_scale=0.45, text_padding=3,
                                 background_color=_LINE)
        return scene

    def _open(self, camera: str, width: int, height: int, ts: float) -> _Writer:
        n = self._segments.get(camera, 0)
        folder = camera_dir(self.directory, camera)
        path = folder / ("video.mp4" if n == 0 else f"video.{n}.mp4")
        while path.exists():  # an earlier run's video: keep it, take the next number
            n += 1
            path = folder / f"video.{n}.mp4"
        self._segments[camera] = n + 1
        container = av.open(str(path), mode="w", options=_FRAGMENTED)
        stream = container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1000) if self.fps
                                      else 30, options=self.options)
        # yuv420p needs even sizes; the encoder's reformat scales odd ones by a pixel.
        stream.width, stream.height = width - width % 2, height - height % 2
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = self.gop  # a key frame starts each fragment: bounds what a kill loses
        if not self.fps:
            stream.codec_context.time_base = _MS
            stream.time_base = _MS
        self.paths.append(path)
        log.info("camera %s: writing annotated video to %s (%dx%d)", camera, path, width, height)
        return _Writer(container, stream, path, (width, height), ts)

    def _annotate(self, r: FrameResult, w: _Writer) -> np.ndarray:
        assert r.image is not None
        scene = r.image.numpy().copy()  # the annotators draw in place; the frame may be shared with other sinks
        if r.objects:
            # A loop over the objects of one frame, on the sink's own thread, off the inference path.
            dets = sv.Detections(
                xyxy=np.array([o.box for o in r.objects], dtype=np.float32),
                confidence=np.array([o.confidence for o in r.objects], dtype=np.float32),
                class_id=np.array([o.class_id for o in r.objects], dtype=np.int64),
                tracker_id=np.array([o.track_id for o in r.objects], dtype=np.int64),
            )
            labels = [f"#{o.track_id} {o.class_name} {o.confidence:.2f}" for o in r.objects]
            scene = self._boxes.annotate(scene, dets)
            scene = self._labels.annotate(scene, dets, labels=labels)
        if r.camera in self._geometry:
            self._count(r.events)
            scene = self._draw_analytics(scene, r)
        text = f"{r.camera} frame {r.frame}  {w.fps:.1f} fps"
        return sv.draw_text(scene, text, sv.Point(8 + 4 * len(text), 14), text_color=sv.Color.WHITE,
                            text_scale=0.45, text_padding=4, background_color=sv.Color.BLACK)

    def write(self, results: Sequence[FrameResult]) -> None:
        for r in results:
            if r.image is None:
                continue  # no pixels for this frame (should not happen when the pipeline honours wants_images)
            w = self._writers.get(r.camera)
            if w is not None and w.size != (r.width, r.height):
                log.warning("camera %s: resolution changed to %dx%d; starting a new video file", r.camera,
                            r.width, r.height)
                self._finish(w)
                w = None
            if w is None:
                w = self._writers[r.camera] = self._open(r.camera, r.width, r.height, r.ts)
            if w.frames:
                dt = r.ts - w.last_ts
                if dt > 0:
                    w.fps = 1 / dt if w.fps == 0 else 0.9 * w.fps + 0.1 / dt
            w.last_ts = r.ts
            frame = av.VideoFrame.from_ndarray(self._annotate(r, w), format="rgb24")
            pts = w.frames if self.fps else round((r.ts - w.t0) * 1000)
            frame.pts = max(pts, w.last_pts + 1)  # strictly increasing even if the clock steps back
            frame.time_base = w.stream.codec_context.time_base
            w.last_pts = frame.pts
            w.container.mux(w.stream.encode(frame))
            w.frames += 1

    @staticmethod
    def _finish(w: _Writer) -> None:
        w.container.mux(w.stream.encode(None))
        w.container.close()

    def close_camera(self, camera: str) -> None:
        """The camera was removed: finish its MP4 so that it is playable now."""
        w = self._writers.pop(camera, None)
        if w is not None:
            self._finish(w)

    def close(self) -> None:
        for camera, w in self._writers.items():
            try:
                self._finish(w)
            except Exception as e:  # noqa: BLE001 - one broken file must not keep the others from being closed
                log.error("camera %s: closing %s failed: %s", camera, w.path, e)
        self._writers.clear()
