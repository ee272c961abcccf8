"""The config's keys as a reference: every dotted key with its type, default and description, read from the
models themselves, so that a documented key list can be checked against the code both ways.

This is the one walker of the config models: `scripts/config_reference.py` renders its rows as the tables of
docs/configuration.md, and tests/test_docs.py compares those tables with `dotted_keys()`.
"""

from __future__ import annotations

import types
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin

from pydantic import BaseModel, RootModel, SecretStr, Tag
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from rtsp_worker.config.schema import Config


class FieldDoc(NamedTuple):
    """One key of `cameras.yaml`."""

    key: str  # dotted, e.g. "model.path", "cameras[].lines[].points", "output.redis"
    type: str  # as a user writes it, with its bounds: "int, >= 1, <= 100", "auto | nvdec | cpu", "mapping | null"
    default: str  # YAML-like ("null", "true", "[in, out]"), "required", or "(its keys' defaults)" for a section
    description: str
    only: tuple[str, ...] = ()  # in a union of sections: the members that have this key ("backend=tensorrt");
    # empty when every member has it (or it is in no union)


# -- the models a field holds ---------------------------------------------------------------------------------


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


_LISTS = (list, set, frozenset, typing.Sequence, typing.AbstractSet)


class _Member(NamedTuple):
    suffix: str  # how a key reaches the model's keys: "" (a section), "[]" (list items), ".<name>" (a mapping)
    model: type[BaseModel]
    tag: str | None  # the pydantic `Tag` it has in a tagged union


def _members(tp: Any, tag: str | None = None) -> list[_Member]:
    """The models a field's annotation holds (several for a union of sections)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        tags = [m.tag for m in args[1:] if isinstance(m, Tag)]
        return _members(args[0], tags[0] if tags else tag)
    if _is_union(tp):
        return [m for a in args for m in _members(a)]
    if origin in _LISTS or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        return [m._replace(suffix="[]" + m.suffix) for m in _members(args[0])]
    if origin is tuple:
        return [m._replace(suffix="[]" + m.suffix) for a in args for m in _members(a)]
    if origin in (dict, typing.Mapping):
        return [m._replace(suffix=".<name>" + m.suffix) for m in _members(args[1])]
    if isinstance(tp, type) and issubclass(tp, RootModel):
        return _members(tp.model_fields["root"].annotation, tag)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [_Member("", tp, tag)]
    return []


def _discriminator_name(field: FieldInfo, models: list[type[BaseModel]]) -> str | None:
    """The field that tells a union's members apart: the field's discriminator when it names one, else the
    first field every member declares as a Literal (a callable discriminator or a plain union names none)."""
    if isinstance(field.discriminator, str):
        return field.discriminator
    for name in models[0].model_fields:
        if all(name in m.model_fields and get_origin(m.model_fields[name].annotation) is Literal for m in models):
            return name
    return None


def _label(member: _Member, disc: str | None) -> str:
    """A union member as a user selects it: "backend=tensorrt" (by its tag, else its one Literal value)."""
    value = member.tag
    if value is None and disc is not None:
        args = get_args(member.model.model_fields[disc].annotation)
        value = "/".join(str(a) for a in args)
    if value is None:
        return member.model.__name__
    return f"{disc}={value}" if disc else value


# -- one key's type, default and description ------------------------------------------------------------------


_NAMES = {bool: "bool", int: "int", float: "float", str: "str", Path: "path", SecretStr: "secret string",
          type(None): "null", Any: "any", object: "any"}


def _type_name(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _type_name(args[0])
    if tp in _NAMES:
        return _NAMES[tp]
    if _is_union(tp):
        return " | ".join(dict.fromkeys(_type_name(a) for a in args))
    if origin is Literal:
        return " | ".join(str(a.value if isinstance(a, Enum) else a) for a in args)
    if origin in _LISTS:
        return f"list[{_type_name(args[0])}]"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list[{_type_name(args[0])}]"
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if origin in (dict, typing.Mapping) or (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "min length"),
           ("max_length", "max length"))


def _bounds(field: FieldInfo) -> str:
    """The field's constraints as a user reads them: ">= 1, <= 100", "min length 3", "pattern `...`"."""
    parts = []
    for meta in field.metadata:
        for attr, sign in _BOUNDS:
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{sign} {value}")
        pattern = getattr(meta, "pattern", None)
        if pattern is not None:
            parts.append(f"pattern `{pattern}`")
    return ", ".join(parts)


def _render(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return _render(value.value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_render(v)}" for k, v in value.items()) + "}"
    return str(value)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if value is PydanticUndefined:
        return "null"
    if isinstance(value, BaseModel):
        return "(its keys' defaults)"
    return _render(value)


# -- the walk -------------------------------------------------------------------------------------------------


class _Row:
    """One key while walking: the values of every union member that has it, merged when the rows are made."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.types: list[tuple[str, str]] = []  # (type, bounds)
        self.defaults: list[str] = []
        self.descriptions: list[str] = []
        self.only: list[str] = []  # union members that have it (empty: not inside a union)

    def add(self, field: FieldInfo) -> None:
        for values, value in ((self.types, (_type_name(field.annotation), _bounds(field))),
                              (self.defaults, _default(field)),
                              (self.descriptions, " ".join((field.description or "").split()))):
            if value not in values:
                values.append(value)  # type: ignore[arg-type]

    def merge(self, other: _Row) -> None:
        for mine, theirs in ((self.types, other.types), (self.defaults, other.defaults),
                             (self.descriptions, other.descriptions), (self.only, other.only)):
            mine.extend(v for v in theirs if v not in mine)  # type: ignore[attr-defined]

    def doc(self, only: tuple[str, ...]) -> FieldDoc:
        if all(not bounds for _, bounds in self.types):  # e.g. the tags of a union's members: one type
            kind = " | ".join(dict.fromkeys(p for t, _ in self.types for p in t.split(" | ")))
        else:
            kind = " / ".join(f"{t}, {b}" if b else t for t, b in self.types)
        return FieldDoc(self.key, kind, " / ".join(self.defaults), " / ".join(d for d in self.descriptions if d),
                        only)


def _walk(model: type[BaseModel], prefix: str, rows: dict[str, _Row], unions: dict[str, list[str]],
          seen: tuple[type, ...] = ()) -> None:
    """Add a row for every key of `model` under `prefix` to `rows`, depth first.

    `unions` maps a key inside a union of sections to every member of that union (to tell "some" from "all")."""
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        rows.setdefault(key, _Row(key)).add(field)
        members = [m for m in _members(field.annotation) if m.model not in seen]  # a recursive model: once
        models = list(dict.fromkeys(m.model for m in members))
        if len(models) <= 1:
            for m in members:
                _walk(m.model, f"{key}{m.suffix}.", rows, unions, (*seen, model))
            continue
        disc = _discriminator_name(field, models)
        labels = list(dict.fromkeys(_label(m, disc) for m in members))
        for m in members:
            part: dict[str, _Row] = {}
            _walk(m.model, f"{key}{m.suffix}.", part, unions, (*seen, model))
            for k, row in part.items():
                if not row.only:  # a key of a union nested in this one keeps the inner union's members
                    row.only = [_label(m, disc)]
                    unions[k] = labels
                rows.setdefault(k, _Row(k)).merge(row)


def field_docs(model: type[BaseModel] = Config) -> list[FieldDoc]:
    """Every key of `cameras.yaml` (or of `model`), in the models' order.

    Conventions: a section's keys are dotted under it (`output.redis.url`); the items of a list of sections
    are written `[]` (`cameras[].name`, `cameras[].zones[].polygon`), the values of a mapping keyed by names
    `<name>` (`section.<name>.key`). A section is a key too (`output.redis`, `cameras[].lines`): its row says
    what it is for and whether it may be null. `defaults` is one row: it takes any camera key but `name` and
    `url`. A union of sections (`model:`, one section per backend) contributes the keys of all its members,
    once each; a key that only some members have lists them in `only` by the value that selects them
    (`backend=tensorrt`).
    """
    rows: dict[str, _Row] = {}
    unions: dict[str, list[str]] = {}
    _walk(model, "", rows, unions)
    out = []
    for key, row in rows.items():
        only = tuple(row.only) if len(set(row.only)) < len(unions.get(key, ())) else ()
        out.append(row.doc(only))
    return out


def dotted_keys(model: type[BaseModel] = Config) -> set[str]:
    """Every key of `cameras.yaml` (or of `model`) as a dotted name (conventions: `field_docs`)."""
    return {row.key for row in field_docs(model)}
