"""The README and docs/: every relative link resolves, the configuration reference lists exactly the config
model's keys (docs/configuration.md's tables are rendered by scripts/config_reference.py from the package's
`field_docs()`), and every full `cameras.yaml` example loads with the real loader."""

from __future__ import annotations

import importlib.util
import re
import sys
import types
import unicodedata
from pathlib import Path
from typing import Annotated, Literal, Union

import pytest
from pydantic import BaseModel, Discriminator, Field, Tag

from rtsp_worker.config import dotted_keys, field_docs, load_config

REPO = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())  # at any test depth
DOCS = REPO / "docs"
REGENERATE = "run: python scripts/config_reference.py --write"
# Pages other branches add, linked from here before they land. A missing one is tolerated; once it
# exists, its entry must go (the test says so), so this list never outlives the merge.
PENDING = {"docs/gpu-check.md"}


def _load_reference_script() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("config_reference", REPO / "scripts" / "config_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: its type hints resolve against it
    spec.loader.exec_module(module)
    return module


ref = _load_reference_script()  # the renderer of the tables; the keys come from rtsp_worker.config


def linked_pages() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md")), REPO / "OPTIMIZATION_SUMMARY.md",
            REPO / "benchmarks" / "results" / "README.md", REPO / "models" / "MODEL_CARD.md"]


# -- markdown: headings, slugs, links ------------------------------------------------------------------------


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fence = [], None
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"\s*(```+|~~~+)", line)
        if m:
            if fence is None:
                fence = m.group(1)[0] * 3
            elif m.group(1).startswith(fence):
                fence = None
            continue
        if fence is None:
            out.append((n, line))
    return out


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text, lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link or image: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = text.strip().lower()
    keep = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LMN")
    return keep.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file; repeated headings get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, line in _prose_lines(path.read_text()):
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = github_slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every inline link and image in `path`, code spans and blocks left out."""
    out = []
    for n, line in _prose_lines(path.read_text()):
        line = re.sub(r"`[^`]*`", "", line)
        for m in re.finditer(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", line):
            out.append((n, m.group(1)))
    return out


def broken_links(path: Path) -> list[str]:
    """What is wrong with the relative links of `path` (empty: every one resolves)."""
    problems = []
    for n, target in links(path):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto: ... not checked here
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(REPO)}:{n}: {target}"
        pending = dest.is_relative_to(REPO) and str(dest.relative_to(REPO)) in PENDING
        if pending and dest.exists():
            problems.append(f"{where}: {dest.relative_to(REPO)} exists now: remove it from PENDING in this test")
        elif pending:
            continue
        elif not dest.exists():
            problems.append(f"{where}: no such file {dest.relative_to(REPO) if dest.is_relative_to(REPO) else dest}")
        elif anchor:
            if dest.suffix != ".md":
                problems.append(f"{where}: an anchor into a file that is not markdown")
            elif anchor not in anchors(dest):
                problems.append(f"{where}: no heading with anchor #{anchor} in {dest.relative_to(REPO)}")
    return problems


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Changing cameras while the worker runs (reload and control API)",
         "changing-cameras-while-the-worker-runs-reload-and-control-api"),
        ("Docker and Kubernetes (`deploy/`)", "docker-and-kubernetes-deploy"),
        ("Your cameras: cameras.yaml", "your-cameras-camerasyaml"),
        ("Checks on a GPU machine: one script", "checks-on-a-gpu-machine-one-script"),
        ("rtsp-worker vs ultralytics `model.track`", "rtsp-worker-vs-ultralytics-modeltrack"),
        ("Top-level keys", "top-level-keys"),
        ("snake_case stays", "snake_case-stays"),
    ],
)
def test_github_slug(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_link_checker_finds_missing_files_and_anchors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "a.md").write_text("# Title\n\n## Same\n\n## Same\n")
    page = tmp_path / "b.md"
    page.write_text(
        "[ok](a.md) [ok](a.md#title) [ok](a.md#same-1) [ok](#here) [web](https://example.com/x#y)\n"
        "`[in code](nowhere.md)`\n```\n[in a block](nowhere.md)\n```\n"
        "## Here\n[gone](missing.md) [bad anchor](a.md#same-2) [bad local](#there)\n"
    )
    problems = broken_links(page)
    assert len(problems) == 3, problems
    assert "no such file missing.md" in problems[0]
    assert "#same-2" in problems[1] and "#there" in problems[2]


@pytest.mark.parametrize("page", linked_pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    assert page.exists(), f"{page.relative_to(REPO)} is missing"
    assert links(page) or page.name == "MODEL_CARD.md", f"{page.relative_to(REPO)} has no links at all"
    problems = broken_links(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


# -- the README: short, with the commands CI and the tests run -----------------------------------------------


def test_readme_is_short_and_one_click_from_the_answers_a_newcomer_needs() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200, "README.md is the front page: move detail into docs/"
    for command in ("bash scripts/setup.sh ", ".venv/bin/rtsp-worker demo ", ".venv/bin/python -m pytest -q "):
        assert f"\n{command}" in text, f"README.md lost the line starting {command!r} (CI and tests run it)"
    targets = {target.partition("#")[0] for _, target in links(REPO / "README.md")}
    for page in ("docs/configuration.md", "docs/outputs.md", "docs/gpu.md", "docs/operations.md"):
        assert page in targets, f"README.md does not link {page}"
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/setup.sh" in ci and ".venv/bin/python -m pytest -q" in ci


# -- the configuration reference -----------------------------------------------------------------------------


def documented_keys(path: Path) -> list[str]:
    """First cells of every row of the tables whose header starts with `key`."""
    keys: list[str] = []
    in_table = False
    for _, line in _prose_lines(path.read_text()):
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if not cells:
            in_table = False
        elif cells[0] == "key":
            in_table = True
        elif in_table and not set(cells[0]) <= set("-: "):
            keys.append(cells[0].strip("`"))
    return keys


def test_configuration_reference_lists_exactly_the_model_keys() -> None:
    listed = documented_keys(DOCS / "configuration.md")
    repeated = sorted({k for k in listed if listed.count(k) > 1})
    assert not repeated, f"docs/configuration.md lists these keys twice: {repeated}"
    model = dotted_keys()
    missing, unknown = sorted(model - set(listed)), sorted(set(listed) - model)
    assert not missing and not unknown, (
        f"keys of the config model missing from docs/configuration.md: {missing}; "
        f"keys listed there that the config model does not have: {unknown}; {REGENERATE}"
    )


def test_keys_named_in_the_prose_exist() -> None:
    """A `section.key` in backticks anywhere in the README or docs/ names a real key (a renamed or removed
    key leaves no stale advice behind). File names such as `cameras.yaml` are not keys."""
    keys = dotted_keys()
    sections = {k for k in keys if "." not in k and "[" not in k}
    stale = []
    for page in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]:
        for n, line in _prose_lines(page.read_text()):
            for m in re.finditer(r"`([^`]+)`", line):
                token = m.group(1).rstrip(":")
                parts = re.fullmatch(r"([a-z_]+)((?:\[\])?(?:\.[a-z_0-9]+(?:\[\])?)+)", token)
                if (parts and parts.group(1) in sections and token not in keys
                        and not re.search(r"\.(ya?ml|py|md|json|jsonl|onnx|sh)$", token)):
                    stale.append(f"{page.relative_to(REPO)}:{n}: `{token}`")
    assert not stale, "keys the config model does not have:\n" + "\n".join(stale)


def test_configuration_reference_tables_are_current() -> None:
    text = (DOCS / "configuration.md").read_text()
    assert ref.render_doc(text, ref.tables()) == text, (
        f"docs/configuration.md's tables differ from the model's descriptions and defaults; {REGENERATE}"
    )


def test_every_key_has_a_type_default_and_description() -> None:
    for doc in field_docs():
        assert doc.type and doc.default, doc.key
        assert doc.description, f"{doc.key}: no description (Field(description=...) in the model)"


class _Input(BaseModel):
    mean: tuple[float, float, float] | None = None


class _Onnx(BaseModel):
    backend: Literal["onnxruntime"] = "onnxruntime"
    path: str
    threads: int = Field(0, ge=0, le=64, description="intra-op threads")
    input: _Input | None = None


class _Trt(BaseModel):
    backend: Literal["tensorrt"]
    path: str
    contexts: int = 2


class _Zone(BaseModel):
    polygon: list[tuple[float, float]]


class _Camera(BaseModel):
    name: str
    zones: list[_Zone] = []


class _Root(BaseModel):
    cameras: list[Annotated[_Camera, Field(description="one camera")]]
    model: Annotated[Union[_Onnx, _Trt], Field(discriminator="backend")]  # noqa: UP007 - as pydantic docs write it
    named: dict[str, _Zone] | None = None
    extra: dict[str, object] | None = None


def test_walker_covers_lists_mappings_optionals_and_unions_of_models() -> None:
    assert dotted_keys(_Root) == {
        "cameras", "cameras[].name", "cameras[].zones", "cameras[].zones[].polygon",
        "model", "model.backend", "model.path", "model.threads", "model.input", "model.input.mean",
        "model.contexts", "named", "named.<name>.polygon", "extra",
    }
    docs = {d.key: d for d in field_docs(_Root)}
    assert docs["model.contexts"].only == ("backend=tensorrt",)
    assert docs["model.input.mean"].only == ("backend=onnxruntime",)  # nested in a member: still that member's
    assert docs["model.path"].only == ()  # in every member
    assert docs["model.threads"].type == "int, >= 0, <= 64"  # bounds in the type
    assert docs["model.backend"].type == "onnxruntime | tensorrt"  # the members' tags, merged
    assert docs["cameras"].type == "list[mapping]" and docs["named"].type == "mapping | null"
    table = ref.tables(_Root)
    assert "| `model.threads` | int, >= 0, <= 64 | `0` | Only with backend=onnxruntime. intra-op threads |" in table
    assert "| `model.path` | str | required |  |" in table  # in every member: no "Only with"
    assert "| `model.backend` | onnxruntime \\| tensorrt |" in table  # a | inside a cell is escaped


class _PlainUnionRoot(BaseModel):
    model: _Onnx | _Trt  # no discriminator named: the members' shared Literal field tells them apart


def test_walker_names_union_members_by_their_literal_field_without_a_discriminator() -> None:
    assert dotted_keys(_PlainUnionRoot) == {
        "model", "model.backend", "model.path", "model.threads", "model.input", "model.input.mean", "model.contexts",
    }
    assert {d.key: d for d in field_docs(_PlainUnionRoot)}["model.threads"].only == ("backend=onnxruntime",)


class _TaggedRoot(BaseModel):
    """As `Config.model`: a callable discriminator picks the member, a `Tag` names it."""

    model: Annotated[
        Union[Annotated[_Onnx, Tag("onnx")], Annotated[_Trt, Tag("trt")]],  # noqa: UP007 - tagged members
        Discriminator(lambda v: v.get("backend", "onnxruntime") if isinstance(v, dict) else "onnx"),
    ]


def test_walker_names_tagged_union_members_by_their_tag() -> None:
    docs = {d.key: d for d in field_docs(_TaggedRoot)}
    assert docs["model.contexts"].only == ("backend=trt",) and docs["model.threads"].only == ("backend=onnx",)
    assert docs["model.path"].only == ()


def test_the_real_model_union_marks_the_keys_of_some_backends() -> None:
    docs = {d.key: d for d in field_docs()}
    assert docs["model.contexts"].only == ("backend=tensorrt",)
    assert docs["model.fp16"].only == ("backend=torch", "backend=tensorrt")
    assert docs["model.path"].only == () and docs["model.input.letterbox"].only == ()
    assert {"cameras", "model", "output.redis", "model.input", "cameras[].lines"} <= dotted_keys()  # sections


# -- configuration examples -----------------------------------------------------------------------------------


def yaml_examples() -> list[tuple[str, str]]:
    """("file:line", text) of every ```yaml block of the README and docs/ that is a whole cameras.yaml (has a
    top-level `cameras:`); fragments (a `model:` alone, a list of alternatives) are left out."""
    out = []
    for page in [REPO / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = page.read_text()
        for m in re.finditer(r"^```ya?ml[ \t]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
            if re.search(r"^cameras:", m.group(1), re.MULTILINE):
                line = text.count("\n", 0, m.start()) + 1
                out.append((f"{page.relative_to(REPO)}:{line}", m.group(1)))
    return out


def test_the_readme_example_is_among_the_checked_examples() -> None:
    assert any(where.startswith("README.md:") for where, _ in yaml_examples()), "the README's cameras.yaml is not found"


@pytest.mark.parametrize(("where", "text"), yaml_examples(), ids=[w for w, _ in yaml_examples()])
def test_yaml_examples_load_with_the_real_loader(where: str, text: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text):
        monkeypatch.setenv(name, "example-secret")
    path = tmp_path / "cameras.yaml"
    path.write_text(text)
    try:
        load_config(path)
    except ValueError as e:  # ConfigError: say which example, not the tmp file
        pytest.fail(f"{where}: this example does not load: {str(e).replace(str(path), 'cameras.yaml')}")
