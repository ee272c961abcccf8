"""Score the IOU tracker on MOTChallenge sequences (public detections) with py-motmetrics.

    python benchmarks/mot_eval.py PATH/TO/MOT15 [--json FILE] [--infer-interval N]
        [--set iou_threshold=0.3 --set max_age=10 ...]

Runs the tracker on every ``<seq>/det/det.txt`` under MOT_DIR with the default TrackerConfig (or
``--set`` overrides) and prints MOTA, IDF1 and ID switches per sequence plus an OVERALL row.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rtsp_worker.config import TrackerConfig
from rtsp_worker.tracking.evaluation import (
    load_mot_detections,
    load_mot_gt,
    read_seqinfo,
    run_tracker_on_detections,
    score_many,
)

# SORT's published MOTA (%) on the same public detections (SORT README), where it lists one.
SORT_MOTA = {"TUD-Campus": 62.7, "KITTI-17": 60.2}


def _overrides(items: list[str]) -> dict:
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in TrackerConfig.model_fields:
            fields = ", ".join(TrackerConfig.model_fields)
            raise SystemExit(f"--set {item!r}: expected FIELD=VALUE, FIELD one of {fields}")
        out[key] = value
    return out


def evaluate(mot_dir: Path, cfg: TrackerConfig, infer_interval: int = 1, startup_grace: bool = True) -> dict:
    """Track and score every sequence under ``mot_dir``; returns score_many's dict."""
    seqs = sorted(p for p in mot_dir.iterdir() if (p / "det" / "det.txt").is_file())
    if not seqs:
        raise SystemExit(f"{mot_dir}: no <seq>/det/det.txt found")
    pairs = {}
    for seq in seqs:
        info = read_seqinfo(seq)
        hyp = run_tracker_on_detections(
            load_mot_detections(seq / "det" / "det.txt"), cfg, num_frames=info.length,
            infer_interval=infer_interval, startup_grace=startup_grace,
        )
        pairs[seq.name] = (load_mot_gt(seq / "gt" / "gt.txt"), hyp)
    return score_many(pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mot_dir", type=Path)
    ap.add_argument("--json", type=Path, help="write {seq: {mota, idf1, id_switches, ...}} here")
    ap.add_argument("--infer-interval", type=int, default=1, help="feed detections on every Nth frame only")
    ap.add_argument("--no-startup-grace", action="store_true", help="probation from frame 1 (no SORT rule)")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="TrackerConfig field")
    args = ap.parse_args()
    cfg = TrackerConfig(**_overrides(args.set))
    results = evaluate(args.mot_dir, cfg, args.infer_interval, not args.no_startup_grace)
    print(f"tracker: {cfg.model_dump()}  infer_interval={args.infer_interval}  "
          f"startup_grace={not args.no_startup_grace}")
    print(f"{'sequence':<14} {'MOTA':>6} {'IDF1':>6} {'IDsw':>5} {'FP':>5} {'FN':>5}  SORT MOTA")
    for name, r in results.items():
        sort = SORT_MOTA.get(name)
        print(
            f"{name:<14} {r['mota']:>6.1f} {r['idf1']:>6.1f} {r['id_switches']:>5d} "
            f"{r['false_positives']:>5d} {r['misses']:>5d}  {'' if sort is None else f'{sort:.1f}'}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
