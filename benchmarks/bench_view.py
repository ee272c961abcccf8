"""The live view's cost: worker CPU per processed frame with the view off, and on with 0, 1 and 4 MJPEG
viewers of one camera, 8 cameras, side by side in one run.

    .venv/bin/python benchmarks/bench_view.py [--seconds 10] [--rounds 3] [--smoke] [--json FILE]

Each round starts the real worker (`rtsp-worker run`, its own process, so that its CPU time is its own) on
the project's real GStreamer RTSP server replaying 8 synthetic 640x360 15 fps clips: once with
`view.enabled: false`, once with the view on, where it measures a window with no viewer, one with 1 and one
with 4 viewers of cam0's `stream.mjpeg` (clients in this process, reading everything). Per window: the
worker's CPU seconds (utime + stime from /proc) / frames processed (sum over cameras, from
/view/api/state or /readyz), and the view's encodes. Rounds alternate, so drifts of a shared machine hit
every variant alike; the table gives the median of the rounds and the ratio to "off".
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import common
import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processed(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("rtsp_worker_frames_processed_total{")))


def encodes(port: int) -> tuple[int, float]:
    """Pictures the view drew and encoded, and the seconds it spent on them."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    n = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("rtsp_worker_view_frames_encoded_total{"))
    spent = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("rtsp_worker_view_encode_seconds_sum"))
    return int(n), spent


class Viewer:
    """Reads one MJPEG stream to the end, counting bytes."""

    def __init__(self, port: int, path: str) -> None:
        self.bytes = 0
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while data := self.sock.recv(1 << 16):
                self.bytes += len(data)
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def start_worker(tmp: Path, urls: list[str], model: Path, view: bool) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cfg = {
        "cameras": [{"name": f"cam{i}", "url": u} for i, u in enumerate(urls)],
        "model": common.model_keys(model),
        "device": "cpu",
        "output": {"dir": str(tmp / "out"), "jsonl": False},
        "metrics": {"port": port},
        "view": {"enabled": view},
        "log_interval": 3600,
    }
    path = tmp / f"view-{view}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "rtsp_worker.cli", "run", str(path)], cwd=tmp,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as r:
                if json.loads(r.read())["streaming"] == len(urls):
                    break
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit("worker did not start streaming every camera")
        time.sleep(0.5)
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def window(proc: subprocess.Popen, port: int, seconds: float, view: bool) -> dict:
    cpu0, n0, (e0, s0), t0 = (common.process_cpu_seconds(proc.pid), processed(port),
                              encodes(port) if view else (0, 0.0), time.monotonic())
    time.sleep(seconds)
    cpu1, n1, (e1, s1), t1 = (common.process_cpu_seconds(proc.pid), processed(port),
                              encodes(port) if view else (0, 0.0), time.monotonic())
    frames = max(1, n1 - n0)
    return {"cpu_ms_per_frame": 1000 * (cpu1 - cpu0) / frames, "processed_fps": frames / (t1 - t0),
            "cores": (cpu1 - cpu0) / (t1 - t0), "encodes": e1 - e0,
            "encode_ms": 1000 * (s1 - s0) / (e1 - e0) if e1 > e0 else None}


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--seconds", type=float, default=10.0, help="length of one measured window")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cameras", type=int, default=8)
    args = ap.parse_args()
    common.setup(args)
    if args.smoke:
        args.seconds, args.rounds, args.cameras = 3.0, 1, 2
    model = common.pick_model(args.model, args.smoke).path
    clips = {f"cam{i}": common.synthetic_clip(i, seconds=10) for i in range(args.cameras)}
    variants = ["off", "0 viewers", "1 viewer", "4 viewers"]
    samples: dict[str, list[dict]] = {v: [] for v in variants}
    with common.rtsp_server(clips) as server, tempfile.TemporaryDirectory() as tmp:
        urls = [server.url(name) for name in clips]
        for r in range(args.rounds):
            proc, port = start_worker(Path(tmp), urls, model, view=False)
            try:
                time.sleep(2)  # warm-up
                samples["off"].append(window(proc, port, args.seconds, False))
            finally:
                stop(proc)
            proc, port = start_worker(Path(tmp), urls, model, view=True)
            try:
                warm = Viewer(port, "/cameras/cam0/stream.mjpeg")  # supervision and OpenCV imported, then idle
                time.sleep(3)
                warm.close()
                time.sleep(2)
                order = [0, 1, 4] if r % 2 == 0 else [4, 1, 0]
                for n in order:
                    viewers = [Viewer(port, "/cameras/cam0/stream.mjpeg") for _ in range(n)]
                    time.sleep(1)  # the first pictures
                    samples[f"{n} viewer{'s' if n != 1 else ''}"].append(window(proc, port, args.seconds, True))
                    for v in viewers:
                        v.close()
                    time.sleep(1)
            finally:
                stop(proc)
    base = statistics.median(s["cpu_ms_per_frame"] for s in samples["off"])
    rows = []
    for v in variants:
        ms = statistics.median(s["cpu_ms_per_frame"] for s in samples[v])
        rows.append({"variant": v, "cpu_ms_per_frame": round(ms, 2), "vs_off": round(ms / base, 3),
                     "processed_fps": round(statistics.median(s["processed_fps"] for s in samples[v]), 1),
                     "cores": round(statistics.median(s["cores"] for s in samples[v]), 2),
                     "view_encodes_per_s": round(statistics.median(s["encodes"] for s in samples[v])
                                                 / args.seconds, 2),
                     "ms_per_encode": _median([s["encode_ms"] for s in samples[v] if s["encode_ms"] is not None])})
    common.print_table(f"worker CPU per processed frame, {args.cameras} cameras, viewers of cam0", rows)
    common.write_json(args.json, {**common.metadata(args, model=str(model), cameras=args.cameras,
                                                    seconds=args.seconds, rounds=args.rounds),
                                  "rows": rows, "samples": samples})


if __name__ == "__main__":
    main()
