"""Issue 30 end to end: the motion gate over the real RTSP server, through `rtsp-worker run` and the shipped
model, three cameras in one run:

- `busy_gated` and `busy_plain` watch the same mount, a synthetic scene whose objects come in bursts (busy
  2.4 s of every 8 s; the lighting drift and the sensor noise go on while it is idle). One has the gate on
  (`max_skip_s` longer than the run: only motion can wake the detector), the other off: the gated camera
  skips a large share of its frames and still reports objects on most of the frames the ungated one does
  (the detector runs at once when something moves);
- `still` watches a clip of one unchanging picture with objects in it, gate on with `max_skip_s: 2`: the
  detector still runs about every 2 s, and the tracker keeps the same ids across all the gated frames.

Every processed frame, gated or not, writes its record: each camera's JSONL has as many lines as the final
log line counts processed frames, and the gated count comes from the same final log (`camera=... gated=`).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import skip_or_fail
from test_e2e_tracking import MODEL

pytestmark = [pytest.mark.rtsp, pytest.mark.slow]
FPS = 15
W, H = 640, 360
DURATION_S = 12
STILL_MAX_SKIP_S = 2.0


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """(bursty scene clip, still clip, objects in the still picture)."""
    from rtsp_worker.sim.synthetic import encode_mp4, make_scene, render, render_frame

    root = tmp_path_factory.mktemp("motion")
    scene = make_scene(21, frames=320, width=W, height=H, fps=FPS, busy=0.3, busy_period_s=8.0, density=1.5)
    bursty = root / "bursty.mp4"
    encode_mp4((img for img, _gt in render(scene)), bursty, FPS, W, H)
    picture, gt = render_frame(scene, 10)  # inside the first busy window: several objects in view
    still = root / "still.mp4"
    encode_mp4((picture for _ in range(10 * FPS)), still, FPS, W, H)
    return bursty, still, len(gt)


def final_counts(log: str, camera: str) -> tuple[int, int]:
    """(processed, gated) of `camera` in the run's last periodic log lines (gated: 0 when never logged)."""
    processed = re.findall(rf"camera={camera} state=\S+ .*? processed=(\d+)", log)
    gated = re.findall(rf"camera={camera} motion=\S+ gated=(\d+)", log)
    assert processed, f"no log line for {camera}:\n{log[-3000:]}"
    return int(processed[-1]), int(gated[-1]) if gated else 0


def records(out: Path, camera: str) -> list[dict]:
    return [json.loads(line) for line in (out / camera / "frames.jsonl").read_text().splitlines()]


def test_motion_gate_over_rtsp_skips_still_frames_and_keeps_detections_and_ids(tmp_path, rtsp_server_factory,
                                                                               clips) -> None:
    if not MODEL.exists():
        skip_or_fail(f"{MODEL} is missing")
    bursty, still, still_objects = clips
    assert still_objects >= 3, "the still picture should show several objects"
    server = rtsp_server_factory({"bursty": f"file:{bursty}", "still": f"file:{still}"})
    out = tmp_path / "out"
    cfg = tmp_path / "cameras.yaml"
    cfg.write_text(yaml.safe_dump({
        "cameras": [
            {"name": "busy_gated", "url": server.url("bursty"), "motion": {"enabled": True, "max_skip_s": 600}},
            {"name": "busy_plain", "url": server.url("bursty")},
            {"name": "still", "url": server.url("still"),
             "motion": {"enabled": True, "max_skip_s": STILL_MAX_SKIP_S}},
        ],
        "model": {"path": str(MODEL)},
        "output": {"dir": str(out)},
        "log_interval": 2,
    }))
    proc = subprocess.run([sys.executable, "-m", "rtsp_worker.cli", "run", str(cfg), "--duration", str(DURATION_S)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr

    counts = {name: final_counts(log, name) for name in ("busy_gated", "busy_plain", "still")}
    recs = {name: records(out, name) for name in counts}
    print(json.dumps(counts))
    for name, (processed, _gated) in counts.items():
        # Complete: every processed frame wrote its record, gated frames included.
        assert len(recs[name]) == processed, (name, len(recs[name]), processed)
        assert processed >= 30, f"{name}: only {processed} frames processed"

    # The bursty scene: a large share gated, none without the gate, and no detections lost to the gate.
    processed, gated = counts["busy_gated"]
    assert gated >= 0.25 * processed, counts
    assert counts["busy_plain"][1] == 0, counts
    with_objects = {n: float(np.mean([len(r["objects"]) > 0 for r in recs[n]])) for n in ("busy_gated", "busy_plain")}
    print(json.dumps(with_objects))
    assert with_objects["busy_plain"] >= 0.08, with_objects  # the scene's busy windows were seen at all
    # The detector ran when things moved: most of what the ungated camera saw, the gated one saw too (an object
    # coming in at the edge may stay under min_area for a frame or two; measured 0.78-0.98 of it under load).
    # Without the onset rule it would see next to nothing: max_skip_s is longer than the run.
    assert with_objects["busy_gated"] >= 0.6 * with_objects["busy_plain"], with_objects

    # The still picture: mostly gated, the detector still runs about every max_skip_s, and the ids hold.
    processed, gated = counts["still"]
    inferred = processed - gated
    assert gated >= 0.6 * processed, counts
    # At least one run per max_skip_s of the stream the camera saw (its first frame is inferred too), less
    # one for the start-up the camera spent connecting.
    span_s = recs["still"][-1]["ts"] - recs["still"][0]["ts"]
    assert inferred >= int(span_s / STILL_MAX_SKIP_S), (inferred, span_s, counts)
    late = [r for r in recs["still"] if r["ts"] - recs["still"][0]["ts"] >= 1.0]  # after the tracks confirm
    assert late, "no frames after the first second"
    ids = [frozenset(o["track_id"] for o in r["objects"]) for r in late]
    assert len(ids[0]) >= still_objects - 1, (ids[0], still_objects)
    assert all(s == ids[0] for s in ids), f"track ids changed on a still picture: {sorted(set(ids), key=len)}"
