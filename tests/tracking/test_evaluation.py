"""MOT loading and scoring helpers (rtsp_worker.tracking.evaluation) on tiny hand-made sequences."""

from __future__ import annotations

import numpy as np
import pytest

from rtsp_worker.config import TrackerConfig
from rtsp_worker.tracking.evaluation import (
    load_mot_detections,
    load_mot_gt,
    read_seqinfo,
    run_tracker_on_detections,
    score,
)

pytest.importorskip("motmetrics")


def _gt(frames: int = 3) -> np.ndarray:
    rows = []
    for f in range(1, frames + 1):
        rows.append([f, 1, 10 + 5 * f, 20, 40, 80])
        rows.append([f, 2, 200, 20 + 5 * f, 40, 80])
    return np.array(rows, dtype=float)


def test_perfect_hypothesis_scores_100() -> None:
    r = score(_gt(), _gt())
    assert r["mota"] == 100.0 and r["idf1"] == 100.0 and r["id_switches"] == 0


def test_id_switch_false_positive_and_miss_are_counted() -> None:
    gt = _gt()
    hyp = gt.copy()
    hyp[(hyp[:, 0] == 3) & (hyp[:, 1] == 2), 1] = 7  # object 2 changes id in frame 3: one switch
    hyp = hyp[~((hyp[:, 0] == 2) & (hyp[:, 1] == 1))]  # object 1 missed in frame 2
    hyp = np.vstack([hyp, [[1, 9, 500, 500, 30, 30]]])  # a box on nothing
    r = score(gt, hyp)
    assert (r["id_switches"], r["misses"], r["false_positives"]) == (1, 1, 1)
    assert r["mota"] == pytest.approx(100 * (1 - 3 / 6), abs=0.01)


def test_iou_below_half_does_not_match() -> None:
    gt = np.array([[1, 1, 0, 0, 10, 10]], dtype=float)
    near = np.array([[1, 5, 4, 0, 10, 10]], dtype=float)  # IoU 6/14 = 0.43
    assert score(gt, near)["mota"] == -100.0


def test_loaders_and_tracker_roundtrip(tmp_path) -> None:
    seq = tmp_path / "SEQ"
    (seq / "det").mkdir(parents=True)
    (seq / "gt").mkdir()
    (seq / "seqinfo.ini").write_text(
        "[Sequence]\nname=SEQ\nframeRate=10\nseqLength=6\nimWidth=640\nimHeight=480\n"
    )
    det_lines, gt_lines = [], []
    for f in range(1, 7):
        det_lines.append(f"{f},-1,{100 + 3 * f},50,40,90,0.9,-1,-1,-1")
        gt_lines.append(f"{f},1,{100 + 3 * f},50,40,90,1,-1,-1,-1")
        gt_lines.append(f"{f},2,300,300,20,20,0,-1,-1,-1")  # flag 0: ignored
    (seq / "det" / "det.txt").write_text("\n".join(det_lines) + "\n")
    (seq / "gt" / "gt.txt").write_text("\n".join(gt_lines) + "\n")

    info = read_seqinfo(seq)
    assert (info.name, info.frame_rate, info.length, info.width, info.height) == ("SEQ", 10.0, 6, 640, 480)
    dets = load_mot_detections(seq / "det" / "det.txt")
    gt = load_mot_gt(seq / "gt" / "gt.txt")
    assert dets.shape == (6, 7) and gt.shape == (6, 6)
    hyp = run_tracker_on_detections(dets, TrackerConfig(min_hits=1), num_frames=info.length)
    assert hyp.shape == (6, 7) and set(hyp[:, 1]) == {1.0}
    assert score(gt, hyp)["mota"] == 100.0
    # Detections on every 2nd frame only: the skipped frames are filled by prediction.
    skipped = run_tracker_on_detections(dets, TrackerConfig(min_hits=1), infer_interval=2)
    assert sorted(skipped[:, 0]) == [1, 2, 3, 4, 5, 6] and set(skipped[:, 1]) == {1.0}


def test_bad_files_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_mot_detections(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("1,2,3\n")
    with pytest.raises(ValueError, match="bad.txt"):
        load_mot_gt(bad)
