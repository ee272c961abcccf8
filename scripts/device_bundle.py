"""What the GPU test machine lacks, brought in one folder of trimmed wheels (`scripts/device_bundle.sh DIR`),
and installed there without network (`scripts/gpu_check.sh OUTDIR --deps DIR`).

The list is computed, not written by hand: the project's runtime requirements (pyproject.toml's
`dependencies` and the `gpu` extra) and, transitively, those of every wheel brought, less the packages the
machine has (`scripts/gpu_machine_packages.txt`) and the few that the parts needing them import lazily
(`NOT_BROUGHT`, each with its reason; `tests/tools/test_gpu_check.py` runs the check with every other package
blocked). A dependency added later is brought, or must be added to `NOT_BROUGHT` and imported lazily.

The working tree and the bundle travel together under a limit (64 MiB): wheels are trimmed (optional
extension modules, the shared libraries nothing kept needs, sources, samples) and the total with the tree
is refused above the limit, with the listing that says where the bytes are.

    python scripts/device_bundle.py build DIR [--limit-mib 64] [--wheels SRC] [--plan]
    python scripts/device_bundle.py install DIR TARGET      # on the GPU machine: wheels -> TARGET (no pip)
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MACHINE_LIST = ROOT / "scripts" / "gpu_machine_packages.txt"
LIMIT_MIB = 64.0
EXTRAS = ("gpu",)  # pyproject extras the GPU steps need (test extras: the GPU test files need only pytest)

# Runtime requirements that do not travel, and why that is safe: the part that needs each imports it when
# it runs, and no GPU step runs that part.
NOT_BROUGHT: dict[str, str] = {
    "onnx": "only model export/building needs it (rtsp_worker/engine_build: imported inside those functions)",
    "supervision": "only the video sink draws with it (sinks/video.py, imported when a camera writes video)",
    "redis": "only the Redis sink (sinks/redis.py, imported when `output.redis` is configured)",
}

# Brought even though the machine has them: their version there is not known and a brought package needs a
# recent one; newer releases of these are backward compatible, and the bundle comes first on PYTHONPATH.
ALWAYS_BRING: dict[str, str] = {
    "typing-extensions": "pydantic-core 2.50 needs >= 4.14.1 (a 45 KiB pure-Python wheel)",
}

# Files no GPU step reads, by distribution (fnmatch on the path inside the wheel). Shared libraries that no
# kept extension module needs are dropped as well (`needed_libraries`).
TRIM: dict[str, tuple[str, ...]] = {
    "*": ("*.pyi", "*.pxd", "*.pyx", "*.c", "*.h", "*.data/*", "*/tests/*"),
    # Driver-version twins: _130 is NVENC/NVDEC API 13 (drivers >= 580, what CUDA 13 needs); the sonames the
    # module links are libavformat.so.63 / libavutil.so.61, the other names are copies; samples, benchmarks
    # and FFmpeg's source tarball are documentation.
    "pynvvideocodec": ("PyNvVideoCodec/PyNvVideoCodec_121.*", "PyNvVideoCodec/libavformat.so",
                       "PyNvVideoCodec/libavformat.so.63.*", "PyNvVideoCodec/libavutil.so",
                       "PyNvVideoCodec/libavutil.so.61.*", "samples/*", "benchmarks/*"),
    # torchvision.io's image codecs (image.so and its nvjpeg/libjpeg/...): loaded lazily, never used here.
    "torchvision": ("torchvision/image.so", "torchvision/_C.pyi"),
    # PIL's optional codecs (AVIF, WebP, fonts, colour management, Tk); torchvision imports PIL.Image only.
    "pillow": ("PIL/_avif.*", "PIL/_webp.*", "PIL/_imagingft.*", "PIL/_imagingcms.*", "PIL/_imagingtk.*"),
}

_NAME = re.compile(r"[-_.]+")


def canonical(name: str) -> str:
    """PEP 503 name: `PyNvVideoCodec` -> `pynvvideocodec`, `typing_extensions` -> `typing-extensions`."""
    return _NAME.sub("-", name).lower()


@dataclass
class Machine:
    python: str = "3.12"
    platforms: list[str] = field(default_factory=list)
    packages: dict[str, str | None] = field(default_factory=dict)  # canonical name -> version or None

    def has(self, name: str) -> bool:
        name = canonical(name)
        return name in self.packages or name.startswith("nvidia-") and any(
            p.startswith("nvidia-") and name.startswith(p.removesuffix("-cu13")) for p in self.packages)

    @property
    def marker_env(self) -> dict[str, str]:
        return {"python_version": self.python, "python_full_version": f"{self.python}.0", "os_name": "posix",
                "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def read_machine(text: str) -> Machine:
    m = Machine()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("@"):
            key, _, value = line[1:].partition(" ")
            if key == "python":
                m.python = value.strip()
            elif key == "platform":
                m.platforms.append(value.strip())
            else:
                raise ValueError(f"{MACHINE_LIST.name}: unknown directive {line!r}")
            continue
        name, _, version = line.partition("==")
        m.packages[canonical(name.strip())] = version.strip() or None
    return m


def runtime_requirements(pyproject_text: str, extras: Iterable[str] = EXTRAS) -> list[str]:
    """The requirement strings of [project].dependencies and the given optional-dependency groups."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    project = tomllib.loads(pyproject_text)["project"]
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        reqs += project.get("optional-dependencies", {}).get(extra, [])
    return reqs


def tested_version(name: str) -> str | None:
    """The version installed here, where the tests ran: the one to bring when the requirement allows it
    (pyproject's floors allow releases nothing here has run, e.g. PyAV 19 where the tests ran 18.1)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def companion_pins(machine: Machine) -> dict[str, str]:
    """Versions tied to the machine's own packages: torchvision 0.(N+15) goes with torch 2.N."""
    torch = machine.packages.get("torch")
    if not torch:
        return {}
    minor = int(torch.split(".")[1])
    return {"torchvision": f"torchvision==0.{minor + 15}.*"}


@dataclass
class Plan:
    bring: list[str] = field(default_factory=list)  # requirement strings to download
    present: list[str] = field(default_factory=list)  # canonical names the machine has
    not_brought: dict[str, str] = field(default_factory=dict)  # canonical name -> reason
    conflicts: list[str] = field(default_factory=list)  # a requirement the machine's version does not meet


def _requirement(text: str):
    from packaging.requirements import Requirement

    return Requirement(text)


def plan(requirements: Iterable[str], machine: Machine, not_brought: dict[str, str] | None = None,
         seen: set[str] | None = None, local_pins: bool = True) -> Plan:
    """Sort requirements into brought, present and not brought (markers evaluated for the machine).

    Brought: the version tested here when it meets the requirement (`local_pins`), else the requirement."""
    not_brought = NOT_BROUGHT if not_brought is None else not_brought
    pins = companion_pins(machine)
    out = Plan()
    seen = set() if seen is None else seen
    for text in requirements:
        req = _requirement(text)
        if req.marker is not None and not req.marker.evaluate(machine.marker_env):
            continue
        name = canonical(req.name)
        if machine.has(name) and name not in ALWAYS_BRING:
            have = machine.packages.get(name)
            if have and req.specifier and not req.specifier.contains(have, prereleases=True):
                out.conflicts.append(f"{text}: the GPU machine has {name} {have}")
            if name not in out.present:
                out.present.append(name)
            continue
        if name in not_brought:
            out.not_brought[name] = not_brought[name]
            continue
        if name in seen:
            continue
        seen.add(name)
        tested = tested_version(name) if local_pins else None
        if name in pins:
            out.bring.append(pins[name])
        elif tested and req.specifier.contains(tested, prereleases=True):
            out.bring.append(f"{name}=={tested}")
        else:
            out.bring.append(f"{name}{req.specifier}")
    return out


def closure(initial: Plan, requires_of: Callable[[str], list[str]], machine: Machine,
            not_brought: dict[str, str] | None = None, local_pins: bool = True) -> Plan:
    """The plan grown by the requirements of everything brought (`requires_of(requirement)` gives the
    Requires-Dist lines of its wheel), until nothing new comes in."""
    seen = {canonical(_requirement(r).name) for r in initial.bring}
    total = Plan(list(initial.bring), list(initial.present), dict(initial.not_brought), list(initial.conflicts))
    queue = list(initial.bring)
    while queue:
        more = plan(requires_of(queue.pop(0)), machine, not_brought, seen, local_pins)
        for r in more.bring:
            total.bring.append(r)
            queue.append(r)
        total.present += [p for p in more.present if p not in total.present]
        total.not_brought.update(more.not_brought)
        total.conflicts += more.conflicts
    return total


# -- wheels -------------------------------------------------------------------------------------------------
def wheel_name(path: Path) -> str:
    return canonical(path.name.split("-")[0])


def wheel_requires(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace")
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def download(requirements: list[str], dest: Path, machine: Machine) -> list[Path]:
    """Wheels for the machine's Python and platform, without their dependencies (the closure decides)."""
    if not requirements:
        return []
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", "--python-version", machine.python, "-d", str(dest)]
    for p in machine.platforms:
        cmd += ["--platform", p]
    subprocess.run(cmd + requirements, check=True)
    return sorted(dest.glob("*.whl"))


def needed_libraries(elf_files: dict[str, bytes]) -> set[str]:
    """Sonames the ELF files in `elf_files` (name -> bytes) need, by `readelf -d`."""
    needed: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        for data in elf_files.values():
            p = Path(tmp) / "x.so"
            p.write_bytes(data)
            out = subprocess.run(["readelf", "-d", str(p)], capture_output=True, text=True, check=False).stdout
            needed.update(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out))
    return needed


def _is_shared(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.endswith(".so") or ".so." in base


def _is_library(name: str) -> bool:
    """A bundled shared library (`libavformat.so.63`, `av.libs/libx264-....so.165`), not a Python module."""
    return _is_shared(name) and name.rsplit("/", 1)[-1].startswith("lib")


def trim_wheel(src: Path, dest_dir: Path, patterns: Iterable[str]) -> Path:
    """A copy of `src` without the files matching `patterns`, nor the bundled shared libraries (`*.libs/`,
    next to the modules) that no kept extension module needs, with its RECORD rewritten to match."""
    patterns = tuple(patterns)
    with zipfile.ZipFile(src) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist() if not i.is_dir()}
    keep = {n: d for n, d in members.items() if not any(fnmatch.fnmatch(n, p) for p in patterns)}
    if shutil.which("readelf"):  # without it every library stays (bigger, still correct)
        libs = {n for n in keep if _is_library(n)}
        frontier = {n: d for n, d in keep.items() if _is_shared(n) and n not in libs}  # extension modules
        wanted: set[str] = set()
        while frontier:
            names = needed_libraries(frontier)
            frontier = {n: keep[n] for n in libs - wanted if n.rsplit("/", 1)[-1] in names}
            wanted |= set(frontier)
        for n in libs - wanted:
            del keep[n]
    record = next((n for n in keep if n.endswith(".dist-info/RECORD")), None)
    if record is not None:
        lines = []
        for n, d in keep.items():
            if n == record:
                continue
            digest = base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b"=").decode()
            lines.append(f"{n},sha256={digest},{len(d)}")
        lines.append(f"{record},,")
        keep[record] = ("\n".join(lines) + "\n").encode()
    out = dest_dir / src.name
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for n, d in keep.items():
            z.writestr(n, d)
    return out


# -- sizes --------------------------------------------------------------------------------------------------
def tree_bytes(root: Path = ROOT) -> tuple[int, list[tuple[int, str]]]:
    """Bytes of what travels with the working tree (tracked and untracked-not-ignored files), and the files."""
    out = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=root, capture_output=True,
                         check=True).stdout.decode()
    files = [(root / n).stat().st_size for n in out.split("\0") if n and (root / n).is_file()]
    names = [n for n in out.split("\0") if n and (root / n).is_file()]
    return sum(files), sorted(zip(files, names), reverse=True)


def size_report(bundle: dict[str, int], tree: int, tree_files: list[tuple[int, str]], limit_mib: float
                ) -> tuple[bool, str]:
    """(within the limit, the listing): the bundle's files, the tree's largest files, the totals."""
    mib = 1024 * 1024
    total = sum(bundle.values()) + tree
    lines = ["bundle:"] + [f"  {b / mib:8.2f} MiB  {n}" for n, b in sorted(bundle.items(), key=lambda x: -x[1])]
    lines += [f"  {sum(bundle.values()) / mib:8.2f} MiB  bundle total", "working tree (largest files):"]
    lines += [f"  {b / mib:8.2f} MiB  {n}" for b, n in tree_files[:12]]
    lines += [f"  {tree / mib:8.2f} MiB  tree total",
              f"total {total / mib:.2f} MiB (limit {limit_mib:g} MiB)"]
    ok = total <= limit_mib * mib
    if not ok:
        lines.append(f"REFUSED: {total / mib:.2f} MiB is above the {limit_mib:g} MiB the device machine takes")
    return ok, "\n".join(lines)


# -- commands -----------------------------------------------------------------------------------------------
def build(dest: Path, limit_mib: float, wheels: Path | None, plan_only: bool) -> int:
    machine = read_machine(MACHINE_LIST.read_text())
    first = plan(runtime_requirements((ROOT / "pyproject.toml").read_text()), machine)
    print("runtime requirements the GPU machine has:", ", ".join(first.present))
    for name, why in first.not_brought.items():
        print(f"not brought: {name}: {why}")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        if wheels is not None:  # wheels at hand (tests; a machine without an index)
            for w in wheels.glob("*.whl"):
                shutil.copy(w, raw / w.name)
        got = {wheel_name(p): p for p in raw.glob("*.whl")}

        def requires_of(requirement: str) -> list[str]:
            name = canonical(_requirement(requirement).name)
            if name not in got and wheels is None:
                download([requirement], raw, machine)
                got.update({wheel_name(p): p for p in raw.glob("*.whl")})
            return wheel_requires(got[name]) if name in got else []

        full = closure(first, requires_of, machine)
        print("brought:", ", ".join(full.bring) or "nothing")
        if full.conflicts:
            print("CONFLICT with the machine's versions:\n  " + "\n  ".join(full.conflicts))
            return 4
        missing = [r for r in full.bring if canonical(_requirement(r).name) not in got]
        if missing:
            if wheels is not None:
                print(f"no wheel in {wheels} for: {', '.join(missing)}")
                return 4
            download(missing, raw, machine)
            got.update({wheel_name(p): p for p in raw.glob("*.whl")})
        if plan_only:
            return 0
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        entries = []
        for r in full.bring:
            name = canonical(_requirement(r).name)
            src = got[name]
            out = trim_wheel(src, dest, TRIM["*"] + TRIM.get(name, ()))
            entries.append({"name": name, "file": out.name, "bytes": out.stat().st_size,
                            "downloaded_bytes": src.stat().st_size})
    tree, tree_files = tree_bytes()
    ok, listing = size_report({e["file"]: e["bytes"] for e in entries}, tree, tree_files, limit_mib)
    print(listing)
    if not ok:
        return 3  # no manifest: gpu_check.sh --deps refuses the folder
    manifest = {"python": machine.python, "platforms": machine.platforms, "wheels": entries,
                "not_brought": full.not_brought, "present": full.present, "tree_bytes": tree,
                "total_bytes": tree + sum(e["bytes"] for e in entries), "limit_mib": limit_mib}
    (dest / "bundle.json").write_text(json.dumps(manifest, indent=2))
    print(f"wrote {dest}/bundle.json")
    return 0


def install(bundle: Path, target: Path) -> int:
    """Unpack the bundle's wheels into `target` (a folder for PYTHONPATH): no pip, no network."""
    manifest = bundle / "bundle.json"
    if not manifest.is_file():
        print(f"{bundle}: no bundle.json (not made by device_bundle.sh, or refused for its size)")
        return 2
    entries = json.loads(manifest.read_text())["wheels"]
    target.mkdir(parents=True, exist_ok=True)
    for e in entries:
        with zipfile.ZipFile(bundle / e["file"]) as z:
            z.extractall(target)
        print(f"installed {e['file']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compute, download, trim, size-check into DIR")
    b.add_argument("dir", type=Path)
    b.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    b.add_argument("--wheels", type=Path, default=None, help="take the wheels from this folder, no download")
    b.add_argument("--plan", action="store_true", help="print what would be brought and stop")
    i = sub.add_parser("install", help="unpack a bundle into TARGET")
    i.add_argument("dir", type=Path)
    i.add_argument("target", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "build":
        return build(args.dir, args.limit_mib, args.wheels, args.plan)
    return install(args.dir, args.target)


if __name__ == "__main__":
    sys.exit(main())
