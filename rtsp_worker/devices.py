"""Torch devices, named once the way tensors report them.

`torch.device("cuda")` has no index and never equals a tensor's `cuda:0`; `torch.device("cpu", 0)` never
equals a CPU tensor's `cpu`. Every device the worker keeps goes through `normalize_device`, and every
comparison through `same_device`, so a config's `cuda`, `cuda:0`, `cpu` or `cpu:0` all mean what the
tensors will say.
The config checks device names with `DEVICE_PATTERN` alone, so torch is imported only by the functions: a config
error or `rtsp-worker probe` answers without loading it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# The forms the config accepts (torch accepts more device types; the worker runs on these two).
DEVICE_PATTERN = re.compile(r"cpu(:\d+)?|cuda(:\d+)?")


def normalize_device(device: torch.device | str) -> torch.device:
    """The device as a tensor on it reports it: `cuda` -> `cuda:<current>`, `cpu:N` -> `cpu`."""
    import torch

    dev = torch.device(device)
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda" and dev.index is None:
        index = torch.cuda.current_device() if torch.cuda.is_available() else 0
        return torch.device("cuda", index)
    return dev


def same_device(a: torch.device | str, b: torch.device | str) -> bool:
    """True when tensors on `a` and on `b` live on one device (`cuda` and `cuda:0` on a one-GPU box)."""
    return normalize_device(a) == normalize_device(b)


def resolve_device(name: str) -> torch.device:
    """A config's `device` (auto, cpu, cpu:N, cuda, cuda:N) as the normalized device to run on."""
    import torch

    if name == "auto":
        return normalize_device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return normalize_device(dev)
