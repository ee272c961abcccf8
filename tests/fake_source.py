"""A fake camera source for unit tests of the whole pipeline without an RTSP server or a decoder.

`FakeSources(...)` is a `SourceFactory` (rtsp_worker/sources/state.py): pass it as `build_pipeline(...,
source_factory=...)`. Each camera gets a thread that puts synthetic RGB frames into its slot at `fps`, with
the same state transitions and counters as the real `CameraSource`. A test can make one camera fail
(`fail(name, reason)`: BACKOFF with a last error, no frames) and recover (`recover(name)`).
"""

from __future__ import annotations

import threading
import time

import torch

from rtsp_worker.config import CameraConfig, SourceOptions
from rtsp_worker.sources.state import CameraState, CameraStats, FrameSlot
from rtsp_worker.types import Frame


class FakeSource(threading.Thread):
    """Puts a frame into its slot every 1/fps s until stopped; frame i is filled with value i % 256."""

    def __init__(self, row: int, cfg: CameraConfig, options: SourceOptions, slot: FrameSlot, stats: CameraStats,
                 stop: threading.Event, device: torch.device, first_seq: int = 0, *, fps: float = 30.0,
                 size: tuple[int, int] = (96, 128), still: bool = False) -> None:
        super().__init__(name=f"fake-{cfg.name}", daemon=True)
        self.row, self.cfg, self.options = row, cfg, options
        self.slot, self.stats, self.stop_event, self.device = slot, stats, stop, device
        self.first_seq = self.next_seq = first_seq
        self.fps = fps
        self.height, self.width = size
        self.still = still  # every frame the same picture (the motion gate sees no motion)
        self.failing = threading.Event()
        self.reason = ""

    def run(self) -> None:
        st = self.stats
        st.set_state(CameraState.STREAMING)
        st.codec, st.decoder, st.width, st.height = "fake", "fake", self.width, self.height
        while not self.stop_event.wait(1.0 / self.fps):
            if self.failing.is_set():
                if st.state is not CameraState.BACKOFF:
                    st.last_error = self.reason
                    st.failures += 1
                    st.set_state(CameraState.BACKOFF)
                continue
            if st.state is not CameraState.STREAMING:
                st.reconnects += 1
                st.failures, st.last_error = 0, ""
                st.set_state(CameraState.STREAMING)
            value = 0 if self.still else self.next_seq % 256
            img = torch.full((self.height, self.width, 3), value, dtype=torch.uint8)
            frame = Frame(row=self.row, seq=self.next_seq, ts=time.time(), image=img, height=self.height,
                          width=self.width)
            self.next_seq += 1
            st.decoded += 1
            st.last_frame_mono = time.monotonic()
            self.slot.put(frame)
        st.set_state(CameraState.STOPPED)

    def check_stall(self, now: float | None = None) -> bool:
        return False


class FakeSources:
    """The factory: makes a `FakeSource` per camera and keeps the newest one of each name."""

    def __init__(self, fps: float = 30.0, size: tuple[int, int] = (96, 128), still: bool = False) -> None:
        self.fps, self.size, self.still = fps, size, still
        self.made: list[FakeSource] = []
        self.by_name: dict[str, FakeSource] = {}

    def __call__(self, row: int, cfg: CameraConfig, options: SourceOptions, slot: FrameSlot, stats: CameraStats,
                 stop: threading.Event, device: torch.device, first_seq: int = 0) -> FakeSource:
        src = FakeSource(row, cfg, options, slot, stats, stop, device, first_seq, fps=self.fps, size=self.size,
                         still=self.still)
        self.made.append(src)
        self.by_name[cfg.name] = src
        return src

    def fail(self, name: str, reason: str) -> None:
        src = self.by_name[name]
        src.reason = reason
        src.failing.set()

    def recover(self, name: str) -> None:
        self.by_name[name].failing.clear()
