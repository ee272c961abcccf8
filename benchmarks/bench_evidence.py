"""Cost of event evidence: CPU per processed frame with clips + snapshots on vs off, and the packet ring's
memory per camera at 1080p, 4 Mbit/s, 10 s of pre-roll.

    python benchmarks/bench_evidence.py [--smoke] [--cameras 8] [--seconds 20] [--rounds 2] [--mqtt] [--json FILE]

CPU: the real pipeline (synthetic scene, the project's ONNX detector, JSONL on) with `--cameras` file://
cameras played in real time, every camera with a zone; variant "on" adds `clips: {pre_s: 5, post_s: 5}` and
`snapshots: {}` to every camera (with `--mqtt`, also `output.mqtt` to a local Mosquitto the script starts,
so every event and each camera's state is published). Rounds alternate off / on in one process (the same machine state for
both); CPU is the process's user + system time over the round (decoding, inference, the sinks, the
evidence: everything), divided by the frames processed. The ratio on/off is the number to compare.

Ring memory: the packets of a 1080p H.264 stream at 4 Mbit/s (x264, ultrafast, 2 s GOP) fed to a
`PacketRing(10 s + the ring's slack)` as a camera thread would; bytes of payload held and of the Python
objects around it, at the largest.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtsp_worker.config import parse_config
from rtsp_worker.evidence.clips import RING_SLACK_S
from rtsp_worker.pipeline import build_pipeline
from rtsp_worker.sim.synthetic import write_sequence
from rtsp_worker.sources.packets import Packet, PacketRing

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "synth_det.onnx"
ZONE = {"name": "yard", "units": "fractions", "polygon": [[0.3, 0.35], [0.7, 0.35], [0.7, 0.9], [0.3, 0.9]]}


def start_broker(directory: Path) -> tuple[subprocess.Popen, str]:
    """A throw-away Mosquitto (Debian's `mosquitto`) on a free loopback port: the MQTT sink's broker."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = directory / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n")
    proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"mqtt://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("mosquitto did not start")


def cpu_round(video: Path, out: Path, cameras: int, seconds: float, evidence: bool, mqtt: str | None = None
              ) -> dict:
    extra = {"clips": {"pre_s": 5, "post_s": 5}, "snapshots": {}} if evidence else {}
    output: dict = {"dir": str(out)}
    if evidence and mqtt:  # "on" also sends every event and each camera's state to a real broker
        output["mqtt"] = {"url": mqtt}
    cfg = parse_config({
        "cameras": [{"name": f"cam{i}", "url": f"file://{video}", "zones": [ZONE], **extra} for i in range(cameras)],
        "model": {"path": str(MODEL)},
        "output": output,
        "log_interval": 3600,
    }, source="bench_evidence.yaml")
    pipeline = build_pipeline(cfg)
    pipeline.start()
    time.sleep(2.0)  # connections open, first batches: not measured
    t0 = os.times()
    f0 = pipeline.frames_out
    import threading

    stopper = threading.Timer(seconds, pipeline.stop)
    stopper.start()
    pipeline.run()
    t1 = os.times()
    frames = pipeline.frames_out - f0
    cpu = (t1.user - t0.user) + (t1.system - t0.system)
    ev = pipeline.status().evidence
    return {"evidence": evidence, "frames": frames, "cpu_s": round(cpu, 3),
            "cpu_ms_per_frame": round(cpu / max(frames, 1) * 1e3, 3),
            "clips": ev.clips if ev else 0, "snapshots": ev.snapshots if ev else 0,
            "encode_ms": round(ev.encode_ms, 2) if ev else 0.0}


def ring_memory(tmp: Path, seconds: float, smoke: bool) -> dict:
    """Peak bytes a camera's ring holds at 1080p, 4 Mbit/s with `seconds` of pre-roll."""
    fps, gop = 25, 50
    total = int((seconds + RING_SLACK_S + 4) * fps) if not smoke else 2 * gop
    path = tmp / "1080p_4mbit.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 1920, 1080, "yuv420p"
        s.bit_rate = 4_000_000
        s.options = {"preset": "ultrafast", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0:"
                     "vbv-maxrate=4000:vbv-bufsize=4000"}
        rng = np.random.default_rng(0)
        base = rng.integers(0, 255, (1080, 1920, 3), dtype=np.uint8)
        for i in range(total):
            img = np.roll(base, 7 * i, axis=1)  # moving texture: the encoder spends its bit rate
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    ring = PacketRing(seconds + RING_SLACK_S, 64 * 1024**2)
    peak = peak_objects = 0
    payload = 0
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        for p in c.demux(st):
            if not p.size:
                continue
            payload += p.size
            pkt = Packet(bytes(p), p.pts, p.dts, bool(p.is_keyframe), float(p.pts * st.time_base))
            ring.append(pkt)
            if ring.bytes > peak:
                peak = ring.bytes
                peak_objects = len(ring) * (sys.getsizeof(pkt) + sys.getsizeof(b"") + 3 * 32)
        duration = float(st.duration * st.time_base) if st.duration else total / fps
    return {"seconds": seconds, "slack_s": RING_SLACK_S, "stream_mbit_s": round(payload * 8 / duration / 1e6, 2),
            "peak_payload_bytes": peak, "peak_object_overhead_bytes": peak_objects,
            "peak_mib": round((peak + peak_objects) / 1024**2, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny run: checks the script works")
    ap.add_argument("--cameras", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per round")
    ap.add_argument("--rounds", type=int, default=2, help="off/on pairs")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--mqtt", action="store_true", help="variant on also sends events to a local Mosquitto")
    args = ap.parse_args()
    if args.smoke:
        args.cameras, args.seconds, args.rounds = 2, 2.0, 1
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        seq = write_sequence(tmp, "scene", seed=9100, frames=150, size=(640, 360), fps=15)
        broker, mqtt = start_broker(tmp) if args.mqtt else (None, None)
        rounds = []
        try:
            for r in range(args.rounds):
                for on in (False, True):
                    res = cpu_round(seq / "video.mp4", tmp / f"out{r}{int(on)}", args.cameras, args.seconds, on,
                                    mqtt)
                    print(json.dumps(res), flush=True)
                    rounds.append(res)
        finally:
            if broker is not None:
                broker.terminate()
                broker.wait(10)
        memory = ring_memory(tmp, 10.0, args.smoke)
    per = {v: sum(x["cpu_s"] for x in rounds if x["evidence"] is v) / max(1, sum(x["frames"] for x in rounds
                                                                                   if x["evidence"] is v))
           for v in (False, True)}
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, no GPU",
        "cameras": args.cameras, "seconds_per_round": args.seconds, "mqtt": args.mqtt, "rounds": rounds,
        "cpu_ms_per_frame_off": round(per[False] * 1e3, 3), "cpu_ms_per_frame_on": round(per[True] * 1e3, 3),
        "ratio_on_off": round(per[True] / per[False], 4) if per[False] else None,
        "ring_memory": memory,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "rounds"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
