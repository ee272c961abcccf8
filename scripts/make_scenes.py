"""Write synthetic camera sequences with ground truth in MOTChallenge layout.

    .venv/bin/python scripts/make_scenes.py --out outputs/synth --seqs 4 --frames 300 --seed 0 \
        [--width 640 --height 360 --fps 15] [--detector models/synth_det.onnx]

Sequence i is scene seed S + i, written to <out>/synth-<S+i>/: video.mp4 (H.264 main, yuv420p, one
keyframe per second, no B-frames: ready for the RTSP test server's file mounts), gt/gt.txt, seqinfo.ini,
and det/det.txt (frame,-1,left,top,w,h,score,-1,-1,-1) when --detector is given.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtsp_worker.sim.synthetic import write_sequence


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seqs", type=int, default=1)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--fps", type=float, default=15.0)
    ap.add_argument("--density", type=float, default=1.0, help="scales how many objects are in view")
    ap.add_argument("--detector", type=Path, default=None, help="ONNX detector: also write det/det.txt")
    ap.add_argument("--conf", type=float, default=0.25, help="detector score threshold for det.txt")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.width % 2 or args.height % 2:
        ap.error(f"--width/--height must be even for yuv420p, got {args.width}x{args.height}")
    detector = None
    if args.detector is not None:
        if not args.detector.is_file():
            ap.error(f"--detector: no such file {args.detector}")
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from eval_detector import OnnxDetector

        detector = OnnxDetector(args.detector, conf=args.conf)
    for i in range(args.seqs):
        t = time.time()
        seed = args.seed + i
        seq = write_sequence(
            args.out,
            f"synth-{seed:05d}",
            seed,
            frames=args.frames,
            size=(args.width, args.height),
            fps=args.fps,
            detector=detector,
            density=args.density,
        )
        print(f"{seq}  ({time.time() - t:.1f} s)")


if __name__ == "__main__":
    main()
