"""The production path for scripts/gpu_check.sh: `rtsp-worker run` on N `file://` cameras, `device: auto`.

Encodes one H.264 clip on this machine's CPU (the H200 has no NVENC; every camera loops the same file),
writes a config, runs the real command for `--seconds`, and summarizes into JSON what the worker wrote:
records per camera and the exit code. The worker's log goes to `--log`.

    python scripts/gpu_check_run.py --json OUT/run.json --log OUT/run.log [--cameras 16] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rtsp_worker.sim.clips import write_test_clip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--log", type=Path, required=True)
    ap.add_argument("--cameras", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--width", type=int, default=1920)
    ap.add_argument("--height", type=int, default=1080)
    ap.add_argument("--clip-seconds", type=float, default=4.0)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "synth_det.pt2")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    summary: dict = {"cameras": args.cameras, "seconds": args.seconds, "device": args.device,
                     "size": [args.width, args.height], "model": str(args.model)}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        clip = write_test_clip(Path(tmp) / "clip.mp4", seconds=args.clip_seconds, fps=30,
                               size=(args.width, args.height))
        summary["encode_s"] = round(time.monotonic() - t0, 1)
        out = Path(tmp) / "out"
        config = Path(tmp) / "cameras.yaml"
        config.write_text(yaml.safe_dump({
            "cameras": [{"name": f"cam{i:02d}", "url": clip.as_uri()} for i in range(args.cameras)],
            "model": {"path": str(args.model)}, "device": args.device, "output": {"dir": str(out)},
            "batcher": {"max_batch": max(args.cameras, 1)}, "log_interval": 10.0,
        }))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        t0 = time.monotonic()
        with args.log.open("w") as log:
            rc = subprocess.run([sys.executable, "-m", "rtsp_worker.cli", "run", str(config), "--duration",
                                 str(args.seconds)], stdout=log, stderr=subprocess.STDOUT, env=env, check=False,
                                cwd=ROOT).returncode
        summary["run_s"] = round(time.monotonic() - t0, 1)
        summary["exit_code"] = rc
        per_camera: dict[str, int] = {}
        for path in out.rglob("*.jsonl"):  # one line per processed frame (events go to *.events.jsonl)
            if path.name.endswith(".events.jsonl"):
                continue
            for line in path.read_text().splitlines():
                try:
                    cam = json.loads(line).get("camera")
                except ValueError:
                    continue
                if cam is not None:
                    per_camera[cam] = per_camera.get(cam, 0) + 1
        summary["records_per_camera"] = dict(sorted(per_camera.items()))
        summary["records"] = sum(per_camera.values())
        summary["processed_fps"] = round(summary["records"] / args.seconds, 1) if args.seconds else None
    ok = rc == 0 and len(per_camera) == args.cameras
    summary["ok"] = ok
    args.json.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
