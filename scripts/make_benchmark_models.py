"""Make the ONNX models the benchmarks compare: untrained YOLOv8n and YOLOv8s, nothing downloaded.

    .venv/bin/python scripts/make_benchmark_models.py [--out models/bench] [--variants n s]
        [--sizes 384x640 640x640]

The project's trained detector (models/synth_det.onnx, from scripts/train_detector.py) is used as it is;
this script only adds the reference architectures. They are built from ultralytics' yaml files (shipped
in its wheel, random weights) and exported with torch.onnx, batch-dynamic and with a fixed input size
(what the TensorRT profiles and our engines expect), with `names`, `imgsz`, `stride` and `task`
metadata so that both rtsp-worker and ultralytics load them. ultralytics is an optional benchmark
dependency (AGPL-3.0): without it the script says so and exits with status 1; the benchmarks then fall
back to the YOLOv8-like stand-in in benchmarks/yolo_like.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def offline_ultralytics():
    """Import ultralytics so that it never touches the network (see the project notes on ultralytics, models-lab.md)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "rtsp-worker-yolo-config"))
    Path(os.environ["YOLO_CONFIG_DIR"]).mkdir(parents=True, exist_ok=True)
    import ultralytics
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"sync": False})
    return ultralytics


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--sizes {text!r}: expected HEIGHTxWIDTH, e.g. 384x640") from None
    if h % 32 or w % 32:
        raise SystemExit(f"--sizes {text!r}: height and width must be multiples of 32")
    return h, w


def export(variant: str, size: tuple[int, int], out: Path) -> Path:
    import torch
    from ultralytics import YOLO

    sys.path.insert(0, str(ROOT))
    from rtsp_worker.engines.export import export_onnx

    torch.manual_seed(0)
    yolo = YOLO(f"yolov8{variant}.yaml", task="detect")  # architecture only: random weights, no download
    model = yolo.model.eval().float()
    head = model.model[-1]
    head.export, head.format, head.dynamic = True, "onnx", False  # forward returns (B, 4 + nc, N) only

    class Wrap(torch.nn.Module):
        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.m(x)
            return y[0] if isinstance(y, (tuple, list)) else y

    h, w = size
    path = out / f"yolov8{variant}_{h}x{w}.onnx"
    names = {int(k): str(v) for k, v in model.names.items()}
    props = {"names": str(names), "imgsz": str([h, w]), "stride": str(int(max(model.stride))), "task": "detect",
             "batch": "1", "description": f"untrained YOLOv8{variant} (ultralytics yolov8{variant}.yaml, random init)"}
    return export_onnx(Wrap(model), path, (h, w), props)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "bench")
    ap.add_argument("--variants", nargs="+", default=["n", "s"], choices=["n", "s", "m"])
    ap.add_argument("--sizes", nargs="+", default=["384x640", "640x640"])
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes]
    trained = ROOT / "models" / "synth_det.onnx"
    print(f"trained model: {trained if trained.exists() else 'not present yet'} (used as is)")
    try:
        offline_ultralytics()
    except ImportError:
        print("ultralytics not installed: cannot build the YOLOv8 reference models. Install it with "
              "`.venv/bin/pip install ultralytics` (optional, benchmarks only); until then the benchmarks use "
              "the YOLOv8-like stand-in of benchmarks/yolo_like.py.", file=sys.stderr)
        raise SystemExit(1) from None
    args.out.mkdir(parents=True, exist_ok=True)
    for variant in args.variants:
        for size in sizes:
            path = export(variant, size, args.out)
            print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
