"""Make this Python look like the GPU test machine: importing a package it lacks fails as there.

Put this folder first on PYTHONPATH (Python imports `sitecustomize` at start-up, in every subprocess that
inherits the variable). Allowed: the standard library, the project's own modules, and the distributions
the machine has (scripts/gpu_machine_packages.txt) or the bundle brings (scripts/device_bundle.py's plan,
with the requirements of what it brings as installed here). Every other installed distribution's modules
(redis, supervision, kubernetes, onnx, motmetrics, tensorrt, ultralytics, cv2, scipy, ...) are not
found, as there. Each refused import is appended to $GPU_MACHINE_BLOCK_LOG when set.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_gpu_machine_bundle", Path(__file__).resolve().parents[1]
                                               / "device_bundle.py")
db = importlib.util.module_from_spec(_spec)  # scripts/device_bundle.py: the machine list and the bundle plan
sys.modules[_spec.name] = db  # (its dataclasses look their module up there)
_spec.loader.exec_module(db)


def _allowed_distributions() -> db.Machine:
    machine = db.read_machine(db.MACHINE_LIST.read_text())
    first = db.plan(db.runtime_requirements((db.ROOT / "pyproject.toml").read_text()), machine)

    def requires_of(requirement: str) -> list[str]:
        try:
            return importlib.metadata.requires(db._requirement(requirement).name) or []
        except importlib.metadata.PackageNotFoundError:
            return []

    full = db.closure(first, requires_of, machine)
    brought = {db.canonical(db._requirement(r).name) for r in full.bring}
    # The machine's packages came with their own requirements (pip installed them): as installed here.
    have = set(machine.packages)
    queue = list(have)
    while queue:
        for r in requires_of(queue.pop()):
            req = db._requirement(r)
            name = db.canonical(req.name)
            if name not in have and (req.marker is None or req.marker.evaluate(machine.marker_env)):
                have.add(name)
                queue.append(name)
    return db.Machine(packages={n: None for n in [*have, *brought, "rtsp-worker"]})


def _blocked_modules() -> dict[str, str]:
    allowed = _allowed_distributions()
    blocked = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        names = {db.canonical(d) for d in dists}
        if module in sys.stdlib_module_names or any(allowed.has(n) for n in names):
            continue
        blocked[module] = ", ".join(sorted(names))
    return blocked


class _Hiding:
    """sys.meta_path's PathFinder, blind to the blocked packages: `import x` raises ModuleNotFoundError and
    `importlib.util.find_spec("x")` returns None, exactly as on a machine without them."""

    def __init__(self, inner: object, blocked: dict[str, str]) -> None:
        self.inner = inner
        self.blocked = blocked
        self.log = os.environ.get("GPU_MACHINE_BLOCK_LOG")

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in self.blocked:
            if self.log:
                with open(self.log, "a") as f:
                    f.write(f"{top} ({self.blocked[top]})\n")
            return None
        return self.inner.find_spec(fullname, path, target)

    def __getattr__(self, name: str) -> object:  # invalidate_caches, find_distributions, ...
        return getattr(self.inner, name)


_blocked = _blocked_modules()
sys.meta_path[:] = [_Hiding(f, _blocked) if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
