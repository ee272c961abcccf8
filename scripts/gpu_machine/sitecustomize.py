"""Make this Python look like the GPU test machine: importing a package it lacks fails as there.

Put this folder first on PYTHONPATH (Python imports `sitecustomize` at start-up, in every subprocess that
inherits the variable). Allowed: the standard library, the project's own modules, and the distributions
the machine has (scripts/gpu_machine_packages.txt) or the bundle brings (scripts/device_bundle.py's plan,
with the requirements of what it brings as installed here). Every other installed distribution's modules
(redis, supervision, kubernetes, onnx, motmetrics, tensorrt, ultralytics, cv2, scipy, ...) are not
found, as there. Each refused import is appended to $GPU_MACHINE_BLOCK_LOG when set, with the file that
asked for it.
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


def _hide(blocked: dict[str, str]) -> None:
    """PathFinder, blind to the blocked packages: `import x` raises ModuleNotFoundError, and
    `importlib.util.find_spec("x")` and `importlib.metadata` (entry points: pytest plugins) find nothing, as
    on a machine without them. Patched on the class, since some callers (pytest's assertion rewriter) call
    `PathFinder.find_spec` directly rather than through sys.meta_path."""
    finder = importlib.machinery.PathFinder
    find_spec, find_distributions = finder.find_spec, finder.find_distributions
    log = os.environ.get("GPU_MACHINE_BLOCK_LOG")
    hidden = {db.canonical(d) for names in blocked.values() for d in names.split(", ")}

    def hiding_find_spec(cls, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in blocked:
            if log:  # which file asked: an optional import of torch's (redis for inductor) is not ours
                frame = sys._getframe(1)
                while frame is not None and (frame.f_code.co_filename.startswith("<frozen")
                                             or frame.f_code.co_filename == __file__):
                    frame = frame.f_back
                where = frame.f_code.co_filename if frame is not None else "?"
                with open(log, "a") as f:
                    f.write(f"{top} ({blocked[top]}) from {where}\n")
            return None
        return find_spec(fullname, path, target)

    def hiding_find_distributions(cls, *args, **kwargs):
        return (d for d in find_distributions(*args, **kwargs) if db.canonical(d.metadata["Name"] or "") not in hidden)

    finder.find_spec = classmethod(hiding_find_spec)
    finder.find_distributions = classmethod(hiding_find_distributions)


def _cached_blocked_modules() -> dict[str, str]:
    """`_blocked_modules()`, kept in $GPU_MACHINE_BLOCK_CACHE when set: computing it costs ~0.5 s of every
    Python start, and a check starts about ten of them."""
    import json

    cache = os.environ.get("GPU_MACHINE_BLOCK_CACHE")
    if cache and os.path.exists(cache):
        with open(cache) as f:
            return json.load(f)
    blocked = _blocked_modules()
    if cache:
        with open(cache, "w") as f:
            json.dump(blocked, f)
    return blocked


_hide(_cached_blocked_modules())
