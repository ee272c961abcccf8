"""Where the tools find the detector the project ships (models/synth_det.onnx, models/synth_det.pt2).

The models are not package data (the wheel holds code only): a relative path is looked up in the current
directory (a deployment that copied `models/`), then in the source checkout the package was installed from
(an editable install, the usual set-up). An absolute path is taken as it is.
"""

from __future__ import annotations

from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]  # the folder holding rtsp_worker/ in a source checkout
SHIPPED_ONNX = Path("models/synth_det.onnx")
SHIPPED_PT2 = Path("models/synth_det.pt2")


def find_model(path: Path) -> Path:
    """`path` as given when absolute or present here, else the checkout's copy when it has one."""
    if path.is_absolute() or path.exists():
        return path
    candidate = CHECKOUT / path
    return candidate if candidate.exists() else path
