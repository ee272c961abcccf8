"""pytest plugin for scripts/gpu_check.sh (`-p gpu_check_pytest`, scripts/ on PYTHONPATH): what the GPU
tests did, as JSON at $GPU_CHECK_PYTEST_JSON.

junitxml cannot tell a GPU test that skipped from a module skipped at collection (an importorskip, a
module-level `pytest.skip`): both are "skipped" test cases there, so a module the machine cannot import
(TensorRT, motmetrics) would fail the no-skip rule. Here they are apart:

- `gpu`: the collected tests marked `gpu` (or `tensorrt`), each with its outcome and skip reason;
- `module_skips`: modules skipped while collecting, with the reason;
- `collection_errors`: modules that failed to import (a GPU test lost: a failure).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

_GPU_MARKS = ("gpu", "tensorrt")
_state: dict = {"gpu": {}, "module_skips": [], "collection_errors": []}


def _reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (file, line, "Skipped: why")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr).strip().splitlines()[-1] if longrepr else ""


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:
        _state["module_skips"].append({"module": report.nodeid, "reason": _reason(report)})
    elif report.failed:
        _state["collection_errors"].append({"module": report.nodeid, "error": _reason(report)})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(m) for m in _GPU_MARKS):
            _state["gpu"][item.nodeid] = {"outcome": "not run", "reason": ""}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _state["gpu"].get(report.nodeid)
    if entry is None:
        return
    if report.skipped:
        entry.update(outcome="skipped", reason=_reason(report))
    elif report.failed:
        entry.update(outcome="failed", reason=_reason(report)[:500])
    elif report.when == "call" and entry["outcome"] == "not run":
        entry["outcome"] = "passed"


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("GPU_CHECK_PYTEST_JSON")
    if not path:
        return
    tests = _state["gpu"]
    counts = {k: sum(1 for t in tests.values() if t["outcome"] == k) for k in ("passed", "failed", "skipped",
                                                                              "not run")}
    out = {"collected": len(tests), **counts, "tests": tests, "module_skips": _state["module_skips"],
           "collection_errors": _state["collection_errors"]}
    Path(path).write_text(json.dumps(out, indent=2))
