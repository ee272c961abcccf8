"""Export a torch detector to ONNX the way the engines read it.

One image input `images` (B, 3, H, W) with a dynamic batch axis, one output `output0` in the ultralytics
layout (B, 4 + nc, N), opset 17, and string metadata (`names`, `imgsz`, ...) in the model's properties.
Used by the training script, the benchmark model makers and the tests; written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch


def export_onnx(
    model: torch.nn.Module,
    path: Path | str,
    input_size: tuple[int, int],
    metadata: Mapping[str, str] | None = None,
    *,
    dynamic_batch: bool = True,
    example_batch: int = 1,
) -> Path:
    """Write `model` to `path` (via `<path>.tmp`); `metadata` replaces the model's properties when given."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    example = torch.rand(example_batch, 3, *input_size)
    with torch.no_grad():
        torch.onnx.export(
            model, (example,), str(tmp), input_names=["images"], output_names=["output0"], opset_version=17,
            dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}} if dynamic_batch else None,
            dynamo=False,
        )
    if metadata:
        m = onnx.load(str(tmp))
        del m.metadata_props[:]
        for key, value in metadata.items():
            prop = m.metadata_props.add()
            prop.key, prop.value = key, str(value)
        onnx.save(m, str(tmp))
    tmp.replace(path)
    return path
