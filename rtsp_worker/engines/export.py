"""Export a torch detector to ONNX the way the engines read it.

One image input `images` (B, 3, H, W) with a dynamic batch axis, one output `output0` in the ultralytics
layout (B, 4 + nc, N), opset 17, and string metadata (`names`, `imgsz`, ...) in the model's properties.
Used by the training script, the benchmark model makers, sim/layout_models.py and the tests; written
atomically. It sits with the engines (it writes what they read), below engine_build and sim.
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


def export_program(
    model: torch.nn.Module,
    path: Path | str,
    input_size: tuple[int, int],
    metadata: Mapping[str, str] | None = None,
    *,
    max_batch: int = 256,
) -> Path:
    """Write `model` as a `torch.export` program (`.pt2`) with a dynamic batch axis, atomically.

    The torch engine reads these (device-independent: `move_to_device_pass` moves weights, buffers and
    every device literal of the graph). `metadata` goes in the archive's `config.txt` as JSON, the same
    place ultralytics' TorchScript export keeps it. Refuses a graph that copies tensors between devices
    in forward (see `device_copies`).
    """
    import json

    from rtsp_worker.engines.torchscript import device_copies

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.pt2")  # the archive writer wants the .pt2 suffix
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    example = torch.rand(2, 3, *input_size)  # 2, not 1: export specializes size-1 dimensions
    with torch.no_grad():
        program = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},))
    copies = device_copies(program)
    if copies:  # a `.to(x.device)` in forward: a copy per call, and no CUDA graph capture
        raise ValueError(f"{path}: forward copies tensors between devices ({', '.join(copies[:5])}); "
                         "register constants such as anchor grids as buffers instead")
    program.example_inputs = None  # a full-size example batch would triple the file
    torch.export.save(program, str(tmp), extra_files={"config.txt": json.dumps(dict(metadata or {}))})
    tmp.replace(path)
    return path
