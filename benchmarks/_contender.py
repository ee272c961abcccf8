"""One measured run of one contender, in its own process (started by bench_vs_ultralytics.py).

    python benchmarks/_contender.py worker CAMERAS_YAML --warmup S --seconds S --out RESULT.json
    python benchmarks/_contender.py ultralytics STREAMS_FILE --model M.onnx --imgsz H W --warmup S --seconds S
        --out RESULT.json

Both measure themselves the same way: wait until every camera has produced a result, warm up, then count
results per camera over a fixed window and take the process's CPU time (all threads) over that window.
Latency is decode-to-result: rtsp-worker stamps a frame when its decoder hands it over; for ultralytics
the frame is stamped when OpenCV's `retrieve()` returns it in LoadStreams' reader thread (a thin wrapper
around cv2.VideoCapture records the time; ultralytics' code runs unchanged).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import common  # noqa: E402 - the benchmarks' shared helpers (this script's own folder is on the path)


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Window:
    """Counts results per camera and latencies inside [start, end) of the measurement window."""

    def __init__(self, cameras: int, warmup: float, seconds: float) -> None:
        self.n, self.warmup, self.seconds = cameras, warmup, seconds
        self.seen = [0] * cameras
        self.counts = [0] * cameras
        self.latencies: list[float] = []
        self.start: float | None = None  # monotonic; set `warmup` s after every camera had a result
        self.end: float | None = None
        self.cpu0: tuple[float, float] | None = None  # (monotonic, CPU seconds) at the first counted result
        self.threads0: dict[str, float] = {}  # common.thread_groups() at the same moment
        self.decoded: object = None  # worker: a callable giving the frames decoded so far (all cameras)
        self.decoded0 = 0
        self.t0 = time.monotonic()
        self.startup_s = float("nan")

    def add(self, camera: int, latency: float | None) -> None:
        now = time.monotonic()
        self.seen[camera] += 1
        if self.start is None:
            if all(self.seen):
                self.startup_s = now - self.t0
                self.start, self.end = now + self.warmup, now + self.warmup + self.seconds
            return
        if not self.start <= now < self.end:  # type: ignore[operator]
            return
        if self.cpu0 is None:
            self.cpu0 = (now, cpu_seconds())
            self.threads0 = common.thread_groups()
            self.decoded0 = self.decoded() if callable(self.decoded) else 0
        self.counts[camera] += 1
        if latency is not None:
            self.latencies.append(latency)

    @property
    def done(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end

    def result(self) -> dict:
        now, cpu = time.monotonic(), cpu_seconds()
        t_cpu, c_cpu = self.cpu0 or (now, cpu)
        threads = common.thread_groups()
        return {"cameras": self.n, "window_s": self.seconds, "counts": self.counts,
                "cpu_cores": (cpu - c_cpu) / max(now - t_cpu, 1e-9), "latencies_s": self.latencies,
                "startup_s": self.startup_s, "complete": self.done,
                # CPU seconds of each thread role over the window (threads that started inside it: all of theirs)
                "thread_cpu_s": {k: v - self.threads0.get(k, 0.0) for k, v in threads.items()},
                "decoded": (self.decoded() - self.decoded0) if callable(self.decoded) else None}


def run_worker(args: argparse.Namespace) -> dict:
    """The same code path as `rtsp-worker run CAMERAS_YAML`: load_config -> Pipeline -> run."""
    from rtsp_worker.cli import setup_logging
    from rtsp_worker.config import load_config
    from rtsp_worker.pipeline import build_pipeline
    from rtsp_worker.status import BatchReport

    setup_logging("WARNING")
    if args.torch_threads:  # an experiment: the worker itself leaves torch at its default
        import torch

        torch.set_num_threads(args.torch_threads)
    cfg = load_config(args.source)
    pipe = build_pipeline(cfg)
    win = Window(len(pipe.cameras), args.warmup, args.seconds)
    win.decoded = lambda: sum(s.decoded for s in pipe.stats)
    lock = threading.Lock()

    index: dict[str, int] = {}  # camera name -> the window's camera number

    def listener(report: BatchReport) -> None:
        with lock:
            for camera, latency in report.latencies:
                win.add(index.setdefault(camera, len(index)), latency)

    pipe.on_batch(lambda out: listener(out.report))
    runner = threading.Thread(target=pipe.run, name="inference", daemon=True)
    runner.start()
    deadline = time.monotonic() + args.warmup + args.seconds + 60
    while not win.done and time.monotonic() < deadline and runner.is_alive():
        time.sleep(0.05)
    with lock:
        result = win.result()
    pipe.stop()
    runner.join(timeout=30)
    return result


def run_ultralytics(args: argparse.Namespace) -> dict:
    """`model.track(source=<file>.streams, stream=True)`: ultralytics' own multi-stream loader and batching."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_benchmark_models import offline_ultralytics

    offline_ultralytics()
    import cv2
    from ultralytics import YOLO
    from ultralytics.data import loaders

    stamps: dict[int, tuple[object, float]] = {}
    stamp_lock = threading.Lock()

    class StampedCapture:
        """cv2.VideoCapture that remembers when each returned image was decoded."""

        def __init__(self, *a: object) -> None:
            self._cap = cv2.VideoCapture(*a)

        def _stamp(self, ok: bool, im: object) -> tuple[bool, object]:
            if ok and im is not None:
                now = time.time()
                with stamp_lock:
                    stamps[id(im)] = (im, now)  # holding `im` keeps its id unique until it is looked up
                    if len(stamps) > 4096:  # frames ultralytics dropped without a result
                        for key in list(stamps)[:2048]:
                            del stamps[key]
            return ok, im

        def read(self, *a: object) -> tuple[bool, object]:
            return self._stamp(*self._cap.read(*a))

        def retrieve(self, *a: object) -> tuple[bool, object]:
            return self._stamp(*self._cap.retrieve(*a))

        def __getattr__(self, name: str) -> object:
            return getattr(self._cap, name)

    shim = types.ModuleType("cv2_stamped")
    shim.__getattr__ = lambda name: getattr(cv2, name)  # type: ignore[method-assign]
    shim.VideoCapture = StampedCapture  # type: ignore[attr-defined]
    loaders.cv2 = shim  # only LoadStreams' module sees the wrapper

    urls = Path(args.source).read_text().split()
    names = [loaders.ops.clean_str(u).replace(os.sep, "_") for u in urls]  # what LoadStreams calls them
    win = Window(len(urls), args.warmup, args.seconds)
    model = YOLO(str(args.model), task="detect")
    stream = model.track(source=str(args.source), stream=True, imgsz=list(args.imgsz), conf=args.conf, iou=args.iou,
                         tracker=args.tracker, device="cpu", verbose=False)
    deadline = time.monotonic() + args.warmup + args.seconds + 120
    for i, r in enumerate(stream):
        now = time.time()
        with stamp_lock:
            stamped = stamps.pop(id(r.orig_img), None)
        camera = names.index(r.path) if r.path in names else i % len(urls)  # else: results come in stream order
        win.add(camera, now - stamped[1] if stamped else None)
        if win.done or time.monotonic() > deadline:
            break
    return win.result()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("contender", choices=["worker", "ultralytics"])
    ap.add_argument("source", type=Path, help="cameras.yaml (worker) or a .streams file (ultralytics)")
    ap.add_argument("--model", type=Path)
    ap.add_argument("--imgsz", type=int, nargs=2, default=[384, 640])
    ap.add_argument("--conf", type=float, default=0.25)
    ap.add_argument("--iou", type=float, default=0.45)
    ap.add_argument("--tracker", default="bytetrack.yaml")
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--torch-threads", type=int, default=0, help="worker only: torch intra-op threads (0: default)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    result = run_worker(args) if args.contender == "worker" else run_ultralytics(args)
    result["contender"] = args.contender
    args.out.write_text(json.dumps(result))
    sys.stdout.flush()
    # ultralytics' reader threads may block in cv2 grab(); the result is written, so leave at once.
    os._exit(0)


if __name__ == "__main__":
    main()
