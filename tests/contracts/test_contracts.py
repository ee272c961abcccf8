"""Contracts of the code's shape, read statically from the sources (nothing is imported or run):

1. No import climbs from a lower stage of `rtsp_worker` to a higher one (module-level, function-level and
   `TYPE_CHECKING` imports alike): the stage order is STAGES below.
2. No test touches a private member: `obj._name` on anything but `self`/`cls`, `from rtsp_worker... import
   _name`, `getattr(obj, "_name")` / `monkeypatch.setattr(obj, "_name", ...)` and dotted
   `"rtsp_worker.x._name"` targets. A test drives the package through what it publishes.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "rtsp_worker"
TESTS = REPO / "tests"

# The stage of every top-level module or package of rtsp_worker, lowest first. A module may import its own
# stage and any lower one, never a higher one. A new top-level module must be given its stage here.
STAGES: dict[str, int] = {
    # data types, device names, secrets masking, the configuration model: everyone's vocabulary
    "types": 0, "devices": 0, "redact": 0, "coco": 0, "config": 0, "exitcodes": 0,
    # the stages of the data flow, and the simulated cameras that stand in for real ones
    "sources": 1, "detection": 1, "engines": 1, "tracking": 1, "analytics": 1, "sinks": 1, "sim": 1,
    # what joins the stages for one batch, and the status snapshot the service layer reads
    "batcher": 2, "camera_set": 2, "step": 2, "status": 2, "evidence": 2, "capacity": 2, "scheduling": 2,
    # the wiring of the stages and its run loop
    "pipeline": 3, "loop": 3,
    # building an engine (offline, or on start when the runner asks for it)
    "engine_build": 4,
    # the service around a running pipeline: HTTP, metrics, health, reload, control, supervisor
    "service": 5,
    # tools on top of the worker (doctor, demo)
    "tools": 6,
    # the command line, which may use everything
    "cli": 7,
}

# Upward imports allowed for now. Empty since the pipeline split (issue 25 item 6); an entry that no longer
# occurs fails the test too, so the set only ever shrinks back to empty.
KNOWN_UPWARD: set[tuple[str, str]] = set()

# Test files allowed to touch private members of the package. Empty since the merge of wave 1: a test
# needing a private member gets a public equivalent instead. An entry whose file is clean (or gone) fails
# the test too.
KNOWN_OFFENDERS: set[str] = set()

# Attributes with a leading underscore that are public API of Python itself (namedtuple), never the package's.
PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}
# Private members of other libraries a test cannot avoid (keep this to a line or two).
NOT_THE_PACKAGE = {
    "_ApiClient__deserialize",  # kubernetes: dict -> model; the public deserialize() changed shape across majors
}


def private(name: str) -> bool:
    return (name.startswith("_") and not name.startswith("__") and name not in PUBLIC_UNDERSCORE
            and name not in NOT_THE_PACKAGE)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> Iterator[tuple[str, int]]:
    """Every rtsp_worker module `path` imports, anywhere in the file, with its line; relative imports resolved."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "rtsp_worker":  # `from rtsp_worker import sinks`: the names are the modules
                for alias in node.names:
                    yield f"rtsp_worker.{alias.name}", node.lineno
            else:
                yield target, node.lineno


def stage_of(module: str) -> str:
    """'rtsp_worker.sinks.jsonl' -> 'sinks'; '' for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_climbs_from_a_lower_stage_to_a_higher_one() -> None:
    unknown: set[str] = set()
    upward: dict[tuple[str, str], str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        own = stage_of(importer)
        if own and own not in STAGES:
            unknown.add(own)
            continue
        for target, line in imported_modules(path):
            if target.split(".")[0] != "rtsp_worker":
                continue
            stage = stage_of(target)
            if not own or not stage or stage == own:
                continue  # the package's __init__, or an import within one stage
            if stage not in STAGES:
                unknown.add(stage)
            elif STAGES[stage] > STAGES[own]:
                upward.setdefault((importer, stage), f"{path.relative_to(REPO)}:{line} imports {target}")
    assert not unknown, f"give these top-level modules a stage in STAGES: {sorted(unknown)}"
    new = {k: v for k, v in upward.items() if k not in KNOWN_UPWARD}
    assert not new, "imports from a lower stage to a higher one:\n" + "\n".join(sorted(new.values()))
    gone = KNOWN_UPWARD - set(upward)
    assert not gone, f"no longer upward, delete from KNOWN_UPWARD: {sorted(gone)}"


def package_private_names() -> frozenset[str]:
    """Every private name rtsp_worker defines: functions, classes, module/class-level names, `self._x` attributes.

    A test's `obj._x` counts only when `_x` is one of these: the private members of a script module or of
    another library (`device_bundle._requirement`) are not the package's."""
    names: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.alias):
                names.add(node.asname or node.name.split(".")[0])
    return frozenset(n for n in names if private(n))


# The calls whose second argument names an attribute: getattr(obj, "_x"), monkeypatch.setattr(obj, "_x", v)...
ATTRIBUTE_CALLS = {"getattr", "setattr", "hasattr", "delattr"}


def names_an_attribute(call: ast.Call) -> bool:
    f = call.func
    return ((isinstance(f, ast.Name) and f.id in ATTRIBUTE_CALLS)
            or (isinstance(f, ast.Attribute) and f.attr in ("setattr", "delattr", "object")))  # monkeypatch, patch


def private_uses(source: str, owned: frozenset[str] | set[str], filename: str = "<test>") -> Iterator[str]:
    """'line: what' for every private member of the package (a name in `owned`) that a test source touches on
    another object (heuristic, static)."""
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr) and node.attr in owned:
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                yield f"{node.lineno}: {ast.unparse(node)[:80]}"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rtsp_worker"):
            for alias in node.names:
                if private(alias.name):
                    yield f"{node.lineno}: from {node.module} import {alias.name}"
        elif isinstance(node, ast.Call):
            # getattr(obj, "_x"), setattr/hasattr/delattr, monkeypatch.setattr(obj, "_x", v)
            if names_an_attribute(node):
                for arg in node.args[1:2]:
                    if (isinstance(arg, ast.Constant) and isinstance(arg.value, str) and private(arg.value)
                            and arg.value in owned):
                        yield f"{node.lineno}: {ast.unparse(node)[:80]}"
            # monkeypatch.setattr("rtsp_worker.x._y", v), mock.patch("rtsp_worker.x._y")
            for arg in node.args[:1]:
                if (isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                        and arg.value.startswith("rtsp_worker.")
                        and any(private(part) for part in arg.value.split("."))):
                    yield f"{node.lineno}: {ast.unparse(node)[:80]}"


def test_no_test_touches_a_private_member_of_the_package() -> None:
    offenders: dict[str, list[str]] = {}
    owned = package_private_names()
    for path in sorted(TESTS.rglob("*.py")):
        uses = list(private_uses(path.read_text(), owned, str(path)))
        if uses:
            offenders[path.relative_to(REPO).as_posix()] = uses
    new = {f: uses for f, uses in offenders.items() if f not in KNOWN_OFFENDERS}
    assert not new, "tests touching private members (use or add a public equivalent):\n" + "\n".join(
        f"{f}:{u}" for f, uses in sorted(new.items()) for u in uses)
    clean = KNOWN_OFFENDERS - set(offenders)
    assert not clean, f"these files are clean now, delete them from KNOWN_OFFENDERS: {sorted(clean)}"


def test_the_private_member_scan_finds_what_it_must() -> None:
    """The heuristic itself: flags each private form, ignores self/cls, dunders, namedtuple's API, private
    names the package does not define (a script's, another library's) and strings that name no attribute."""
    src = '''
from rtsp_worker.pipeline import _Hidden
x = engine._pool
getattr(engine, "_runs")
monkeypatch.setattr(cam, "_reconnect", None)
monkeypatch.setattr("rtsp_worker.sinks.jsonl._open", None)
self._mine = cls._theirs = row._replace(a=1)
y = obj.__class__
z = script._helper(dist.replace("-", "_"), getattr(obj, "_helper"))
'''
    owned = {"_Hidden", "_pool", "_runs", "_reconnect", "_open", "_mine", "_theirs"}
    found = list(private_uses(src, owned))
    assert [u.split(":")[0] for u in found] == ["2", "3", "4", "5", "6"], found
    assert {"_requirement", "_decode", "_client"} & package_private_names() == {"_decode", "_client"}
