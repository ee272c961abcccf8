"""CPU seconds that a start of `rtsp-worker` costs, this tree vs another checkout, side by side in one run.

Every test and every user command pays it: a config error, a `probe`, and a short `run` of two file cameras
with the shipped ONNX model. The two trees run alternately, each command `--rounds` times; the table gives the
median CPU (user + system) of each and the ratio.

    git worktree add /tmp/before <commit>
    python benchmarks/bench_startup.py --baseline-tree /tmp/before [--rounds N] [--smoke] [--json F]
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from common import ROOT, TRAINED_MODEL, metadata, parser, print_table, write_json

from rtsp_worker.sim.clips import write_test_clip


def cpu_of(tree: Path, args: list[str]) -> float:
    """CPU seconds of `python -m rtsp_worker.cli ARGS` with `tree`'s package first on the path."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "rtsp_worker.cli", *args], cwd=tree, capture_output=True, check=False,
                   env={**os.environ, "PYTHONPATH": str(tree)}, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def commands(work: Path) -> dict[str, list[str]]:
    clip = write_test_clip(work / "clip.mp4", seconds=1, fps=10, size=(320, 240))
    model = str(TRAINED_MODEL)
    bad = work / "bad.yaml"
    bad.write_text(yaml.safe_dump({"cameras": [{"name": "a", "url": "rtsp://127.0.0.1:1/x", "enabled": False}],
                                   "model": {"path": model}}))
    good = work / "cameras.yaml"
    good.write_text(yaml.safe_dump({"cameras": [{"name": "a", "url": clip.as_uri()}, {"name": "b", "url": clip.as_uri()}],
                                    "model": {"path": model}, "device": "cpu", "output": {"dir": str(work / "out")}}))
    return {"config error": ["run", str(bad)], "probe (refused)": ["probe", "rtsp://127.0.0.1:1/x", "--timeout", "1"],
            "run 3 s": ["run", str(good), "--duration", "3"]}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--baseline-tree", type=Path, required=True, help="another checkout of the project")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each command per tree (--smoke: 1)")
    a = ap.parse_args()
    rounds = 1 if a.smoke else a.rounds
    trees = {"this tree": ROOT, "baseline": a.baseline_tree.resolve()}
    with tempfile.TemporaryDirectory() as tmp:
        cmds = commands(Path(tmp))
        cpu: dict[str, dict[str, list[float]]] = {c: {t: [] for t in trees} for c in cmds}
        for _ in range(rounds):
            for name, args in cmds.items():
                for label, tree in trees.items():
                    cpu[name][label].append(cpu_of(tree, args))
    rows = [{"command": c, **{f"{t} s": statistics.median(v) for t, v in by.items()}} for c, by in cpu.items()]
    for r in rows:
        r["ratio"] = r["this tree s"] / r["baseline s"]
    print_table(f"median CPU seconds (user + system) of a start, {rounds} rounds", rows)
    write_json(a.json, {"meta": metadata(a, baseline_tree=str(a.baseline_tree), rounds=rounds),
                        "median_cpu_s": rows, "runs": cpu})


if __name__ == "__main__":
    main()
