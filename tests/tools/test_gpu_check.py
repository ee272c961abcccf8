"""scripts/gpu_check.sh and scripts/device_bundle.sh on the CPU, under the GPU test machine's constraints.

The smoke run (one, shared by every check of the script) runs with an import blocker
(scripts/gpu_machine/sitecustomize.py) that hides every installed package the GPU machine lacks and the
bundle does not bring, and installs a bundle through `--deps` the way the GPU machine does: if a GPU step
imported redis, supervision, onnx, kubernetes, motmetrics or tensorrt, it would fail here as it would there.
The bundle's dependency computation and size refusal are tested with small inputs (no download).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("device_bundle", REPO / "scripts" / "device_bundle.py")
db = importlib.util.module_from_spec(_spec)
sys.modules["device_bundle"] = db
_spec.loader.exec_module(db)

MACHINE = db.read_machine("""
@python 3.12
@platform manylinux_2_28_x86_64
torch==2.11.0
numpy
filelock
typing-extensions
nvidia-cuda-runtime
""")


# -- what to bring ------------------------------------------------------------------------------------------
def test_runtime_requirements_read_dependencies_and_the_gpu_extra():
    pyproject = """
[project]
name = "x"
dependencies = ["numpy>=1.24", "av>=12", "redis>=5"]
[project.optional-dependencies]
gpu = ["PyNvVideoCodec>=2.0,<3"]
test = ["pytest>=8"]
"""
    assert db.runtime_requirements(pyproject) == ["numpy>=1.24", "av>=12", "redis>=5", "PyNvVideoCodec>=2.0,<3"]


def test_plan_brings_what_the_machine_lacks_and_names_what_it_leaves():
    reqs = ["numpy>=1.24", "torch>=2.4", "torchvision>=0.19", "av>=12", "redis>=5", "paho-mqtt>=2",
            "pywin32; sys_platform == 'win32'", "FileLock>=3", "typing_extensions>=4.14"]
    p = db.plan(reqs, MACHINE, {"redis": "the Redis sink imports it"}, local_pins=False)
    # A dependency added later (paho-mqtt) is brought unless listed as imported lazily; markers are the
    # machine's (no pywin32); names compare canonically (FileLock is filelock); typing-extensions is brought
    # although the machine has it (ALWAYS_BRING: its version there is unknown, pydantic-core needs a recent one).
    assert p.bring == ["torchvision==0.26.*", "av>=12", "paho-mqtt>=2", "typing-extensions>=4.14"]
    assert p.present == ["numpy", "torch", "filelock"]
    assert p.not_brought == {"redis": "the Redis sink imports it"}
    assert p.conflicts == []


def test_plan_reports_a_requirement_the_machines_version_does_not_meet():
    p = db.plan(["torch>=2.12"], MACHINE, {}, local_pins=False)
    assert p.conflicts == ["torch>=2.12: the GPU machine has torch 2.11.0"]


def test_closure_follows_the_requirements_of_what_is_brought():
    wheels = {"pydantic": ["annotated-types>=0.6", "pydantic-core==2.41", "typing-extensions>=4.12",
                           "email-validator>=2; extra == 'email'"],
              "pydantic-core": ["typing-extensions>=4.6"], "annotated-types": [], "typing-extensions": [],
              "torchvision": ["numpy", "torch==2.11.0", "pillow>=5.3"], "pillow": [],
              "nvidia-cuda-runtime-cu13": []}
    asked = []

    def requires_of(req: str) -> list[str]:
        asked.append(req)
        return wheels[db.canonical(db._requirement(req).name)]

    first = db.plan(["pydantic>=2.5", "torchvision", "nvidia-cuda-runtime-cu13"], MACHINE, {}, local_pins=False)
    full = db.closure(first, requires_of, MACHINE, {}, local_pins=False)
    assert full.bring == ["pydantic>=2.5", "torchvision==0.26.*", "annotated-types>=0.6", "pydantic-core==2.41",
                          "typing-extensions>=4.12", "pillow>=5.3"]
    assert "numpy" in full.present and "nvidia-cuda-runtime-cu13" in full.present  # nvidia-* family
    assert len(asked) == len(full.bring) and full.conflicts == []


def test_the_real_plan_leaves_only_lazily_imported_packages_behind():
    machine = db.read_machine(db.MACHINE_LIST.read_text())
    p = db.plan(db.runtime_requirements((REPO / "pyproject.toml").read_text()), machine, local_pins=False)
    names = {db.canonical(db._requirement(r).name) for r in p.bring}
    assert {"av", "pydantic", "pynvvideocodec", "torchvision"} <= names
    assert set(p.not_brought) == set(db.NOT_BROUGHT) and not names & set(db.NOT_BROUGHT)
    assert p.conflicts == [] and machine.python == "3.12"


# -- a small bundle: trimming, the size refusal, the manifest ---------------------------------------------------
def _wheel(folder: Path, dist: str, files: dict[str, str]) -> Path:
    """A stand-in wheel of `dist`: the installed distribution's METADATA (version, requirements: what the
    blocker and the closure read), and `files` (never a real module name: PYTHONPATH comes first)."""
    try:
        meta = importlib.metadata.distribution(dist)
        version, metadata = meta.version, meta.read_text("METADATA")
        # Requirements on the machine's own packages are the real wheels' (torchvision 0.26 wants torch 2.11);
        # this machine's torchvision wants its torch: left out of the stand-in.
        machine = db.read_machine(db.MACHINE_LIST.read_text())
        metadata = "\n".join(line for line in metadata.splitlines() if not (
            line.startswith("Requires-Dist:") and machine.has(db._requirement(line.split(":", 1)[1]).name)))
    except importlib.metadata.PackageNotFoundError:  # PyNvVideoCodec: not installed on this machine
        version, metadata = "0", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0\n"
    name = dist.replace("-", "_")
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for n, text in files.items():
            z.writestr(n, text)
        z.writestr(f"{name}-{version}.dist-info/METADATA", metadata)
        z.writestr(f"{name}-{version}.dist-info/RECORD", "")
    return path


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A bundle built from stand-in wheels for everything the real plan brings (`--wheels`: no download)."""
    tmp = tmp_path_factory.mktemp("bundle")
    src = tmp / "wheels"
    src.mkdir()
    machine = db.read_machine(db.MACHINE_LIST.read_text())
    first = db.plan(db.runtime_requirements((REPO / "pyproject.toml").read_text()), machine)

    def requires_of(req: str) -> list[str]:
        try:
            return importlib.metadata.requires(db._requirement(req).name) or []
        except importlib.metadata.PackageNotFoundError:  # PyNvVideoCodec: not installed here
            return []

    for req in db.closure(first, requires_of, machine).bring:
        dist = db.canonical(db._requirement(req).name)
        _wheel(src, dist, {f"gpucheck_{dist.replace('-', '_')}/__init__.py": "MARK = 1\n",
                           f"gpucheck_{dist.replace('-', '_')}/stub.pyi": "x: int\n", "samples/demo.py": "print()\n"})
    out = tmp / "bundle"
    build = [sys.executable, str(REPO / "scripts" / "device_bundle.py"), "build", str(out), "--wheels", str(src)]
    refused = subprocess.run([*build, "--limit-mib", "1"], capture_output=True, text=True, check=False, cwd=REPO)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert not (out / "bundle.json").exists()  # a refused bundle cannot be installed
    built = subprocess.run(build, capture_output=True, text=True, check=False, cwd=REPO)
    assert built.returncode == 0, built.stdout + built.stderr
    return out, refused


def test_bundle_is_refused_above_the_limit_with_its_listing_and_trimmed_below(small_bundle):
    out, refused = small_bundle
    # The refusal lists where the bytes are: the bundle's wheels and the tree's largest files.
    assert "REFUSED" in refused.stdout and "models/synth_det.pt2" in refused.stdout
    assert "tree total" in refused.stdout and "bundle total" in refused.stdout
    manifest = json.loads((out / "bundle.json").read_text())
    assert {w["name"] for w in manifest["wheels"]} >= {"av", "pydantic", "pynvvideocodec"}
    assert manifest["total_bytes"] < 64 * 2**20 and set(manifest["not_brought"]) == set(db.NOT_BROUGHT)
    for wheel in manifest["wheels"]:
        with zipfile.ZipFile(out / wheel["file"]) as z:
            names = z.namelist()
            record = z.read(next(n for n in names if n.endswith("RECORD"))).decode()
        assert not [n for n in names if n.endswith(".pyi")]  # trimmed everywhere
        assert any(n.startswith("samples/") for n in names) == (wheel["name"] != "pynvvideocodec")  # its docs
        assert all(n in record for n in names)  # RECORD rewritten to what is kept


# -- the smoke run -------------------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="smoke mode is the no-GPU run")
def test_gpu_check_smoke_under_the_gpu_machines_imports(tmp_path, small_bundle):
    bundle, _ = small_bundle
    out = tmp_path / "report"
    blocked_log = tmp_path / "blocked.log"
    env = {**os.environ, "PYTHON": sys.executable, "GPU_MACHINE_BLOCK_LOG": str(blocked_log),
           "GPU_MACHINE_BLOCK_CACHE": str(tmp_path / "blocked.json"),
           "PYTHONPATH": f"{REPO / 'scripts' / 'gpu_machine'}:{REPO}"}
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(out), "--smoke", "--deps", str(bundle)],
                       capture_output=True, check=False, text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["install", "environment", "doctor", "pytest_gpu", "pytest_tensorrt", "parity",
                           "bench_gpu", "run"]
    assert report["passed"] and report["smoke"]
    assert steps["pytest_tensorrt"]["status"] == "not available"  # TensorRT is never a failure of the check
    # The blocker was on: what the GPU machine lacks was not importable in the steps.
    packages = report["environment"]["packages"]
    assert packages["onnx"].startswith("unavailable: ModuleNotFoundError")
    assert packages["tensorrt"].startswith("unavailable: ModuleNotFoundError")
    assert "installed " in (out / "install.log").read_text()
    # The GPU test files imported there and their GPU tests were collected (all skip without a GPU).
    gpu = report["pytest_gpu"]
    assert gpu["collection_errors"] == [] and gpu["collected"] >= 19 and gpu["skipped"] == gpu["collected"]
    assert any("test_kernel_matches_its_twin_on_the_gpu" in t for t in gpu["tests"])
    assert {c["name"] for c in report["doctor"]["selftest"]} >= {"decode", "engine", "tracker"}
    assert report["run"]["ok"] and set(report["run"]["records_per_camera"]) == {"cam00", "cam01"}
    md = (out / "report.md").read_text()
    assert "| doctor | pass |" in md and "| pytest_tensorrt | not available |" in md and "Overall: PASSED" in md
    # No project file asked for a missing package (torch's own optional imports, e.g. inductor's redis, may).
    blocked = blocked_log.read_text().splitlines() if blocked_log.exists() else []
    ours = [line for line in blocked if f"from {REPO}/" in line and "/site-packages/" not in line]
    assert ours == [], ours


def test_report_counts_gpu_skips_and_lists_module_skips_apart(tmp_path):
    # On a GPU machine (not smoke): a GPU test that skipped fails the step; a module skip does not.
    (tmp_path / "steps.tsv").write_text("pytest_gpu\t0\t5\t\npytest_tensorrt\t0\t0\tnot available: no TensorRT\n")
    result = {"collected": 2, "passed": 1, "failed": 0, "skipped": 1, "not run": 0,
              "tests": {"t.py::a": {"outcome": "passed", "reason": ""},
                        "t.py::b": {"outcome": "skipped", "reason": "needs a CUDA device"}},
              "module_skips": [{"module": "tests/test_x.py", "reason": "motmetrics is not installed"}],
              "collection_errors": []}
    (tmp_path / "pytest_gpu.json").write_text(json.dumps(result))
    rc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check_report.py"), str(tmp_path), "0"],
                        capture_output=True, text=True, check=False).returncode
    report = json.loads((tmp_path / "report.json").read_text())
    assert rc == 1 and not report["passed"]
    assert report["steps"][0]["note"] == "1 GPU tests skipped (none allowed on a GPU machine)"
    md = (tmp_path / "report.md").read_text()
    assert "tests/test_x.py: motmetrics is not installed" in md and "t.py::b: skipped needs a CUDA device" in md
    result.update(skipped=0, passed=2, tests={"t.py::a": {"outcome": "passed", "reason": ""}})
    (tmp_path / "pytest_gpu.json").write_text(json.dumps(result))
    rc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check_report.py"), str(tmp_path), "0"],
                        capture_output=True, text=True, check=False).returncode
    assert rc == 0  # the module skip alone does not fail it; TensorRT "not available" neither
    # On the GPU machine parity.py exits 0 where it cannot compare (no NVDEC): no results is a failure there.
    (tmp_path / "steps.tsv").write_text("parity\t0\t3\t\n")
    rc = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check_report.py"), str(tmp_path), "0"],
                        capture_output=True, text=True, check=False).returncode
    report = json.loads((tmp_path / "report.json").read_text())
    assert rc == 1 and report["steps"][0]["status"] == "FAIL" and "without results" in report["steps"][0]["note"]
