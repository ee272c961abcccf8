"""Non-maximum suppression: torchvision's compiled operator, without importing the torchvision package.

`import torchvision` imports its model zoo and, through it, `torch._dynamo` and sympy: about 2 s of CPU at
every worker start (a third of it), for the one operator the worker uses. So the operator library that
torchvision's own loader opens is loaded directly (`torch.ops.load_library`), which registers
`torch.ops.torchvision.nms` for the CPU and, in CUDA builds, the GPU. Where that file is not found (another
torchvision release may name it differently), the package is imported as before: slower to start, same result.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from collections.abc import Callable
from functools import cache

import torch
from torch import Tensor

# The names torchvision has given its operator library (newest first), before the platform's suffix.
LIBRARY_STEMS = ("_C_stable", "_C")


def _registered() -> Callable[[Tensor, Tensor, float], Tensor] | None:
    try:
        return torch.ops.torchvision.nms
    except (AttributeError, RuntimeError):  # the namespace exists lazily; the operator only once loaded
        return None


@cache
def nms_operator(library_stems: tuple[str, ...] = LIBRARY_STEMS) -> Callable[[Tensor, Tensor, float], Tensor]:
    """torchvision's NMS: the operator already registered, else loaded from torchvision's library file named
    one of `library_stems`, else from the imported package."""
    if (op := _registered()) is not None:  # torchvision was imported already
        return op
    spec = importlib.util.find_spec("torchvision")  # finds the package without running its __init__
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        for stem in library_stems:
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = os.path.join(folder, stem + suffix)
                if not os.path.isfile(path):
                    continue
                try:
                    torch.ops.load_library(path)
                except OSError:
                    continue  # e.g. built for another torch: the package import below says so properly
                if (op := _registered()) is not None:
                    return op
    from torchvision.ops import nms as package_nms

    return package_nms


def nms(boxes: Tensor, scores: Tensor, iou: float) -> Tensor:
    """Indices of the boxes kept, in decreasing score order (torchvision.ops.nms)."""
    return nms_operator()(boxes, scores, iou)


def nms_per_group(boxes: Tensor, scores: Tensor, groups: Tensor, iou: float) -> Tensor:
    """NMS within each group id, one `nms` call per group present; indices in decreasing score order.

    A loop over the groups (not the boxes), with one host sync to list them: what torchvision's
    `batched_nms` does on the CPU for large inputs, where many small calls beat one call on every box.
    """
    keep = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for group in torch.unique(groups).tolist():
        members = torch.where(groups == group)[0]
        keep[members[nms(boxes[members], scores[members], iou)]] = True
    kept = torch.where(keep)[0]
    return kept[torch.sort(scores[kept], descending=True).indices]
