"""The config's keys as a reference: every dotted key with its type, default and description, read from the
models themselves, so that a documented key list can be checked against the code both ways."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from rtsp_worker.config.schema import Config


class FieldDoc(NamedTuple):
    """One key of `cameras.yaml`."""

    key: str  # dotted, e.g. "model.path", "cameras[].lines[].points"
    type: str  # as a user writes it, e.g. "int", "auto | nvdec | cpu", "list[str] | null"
    default: str  # YAML-like ("null", "true", "[in, out]"), or "required"
    description: str


def _strip(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _sections(tp: Any) -> tuple[list[type[BaseModel]], bool]:
    """The models a field holds (several for a union of sections) and whether it holds a list of them."""
    tp = _strip(tp)
    if _is_union(tp):
        found: list[type[BaseModel]] = []
        is_list = False
        for arg in get_args(tp):
            models, listed = _sections(arg)
            found += models
            is_list |= listed
        return found, is_list
    if get_origin(tp) is list:
        return _sections(get_args(tp)[0])[0], True
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp], False
    return [], False


_NAMES = {bool: "bool", int: "int", float: "float", str: "str", Path: "path", SecretStr: "secret string",
          type(None): "null", Any: "any"}


def _type_name(tp: Any) -> str:
    tp = _strip(tp)
    if tp in _NAMES:
        return _NAMES[tp]
    origin, args = get_origin(tp), get_args(tp)
    if _is_union(tp):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin is list:
        return f"list[{_type_name(args[0])}]"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list[{_type_name(args[0])}]"
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _render(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_render(v) for v in value) + "]"
    return str(value)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return _render(field.default_factory())  # type: ignore[call-arg]
    return _render(None if field.default is PydanticUndefined else field.default)


def _label(model: type[BaseModel]) -> str:
    return str(getattr(model, "BACKEND", "") or model.__name__)


def _walk(model: type[BaseModel], prefix: str, rows: dict[str, FieldDoc]) -> None:
    for name, field in model.model_fields.items():
        key = prefix + name
        models, is_list = _sections(field.annotation)
        if not models:
            rows.setdefault(key, FieldDoc(key, _type_name(field.annotation), _default(field), field.description or ""))
            continue
        sub = key + ("[]" if is_list else "") + "."
        if len(models) == 1:
            _walk(models[0], sub, rows)
            continue
        # A union of sections (`model:`, one per backend): a key of only some of them says which.
        holders: dict[str, tuple[FieldDoc, list[str]]] = {}
        for m in models:
            part: dict[str, FieldDoc] = {}
            _walk(m, sub, part)
            for k, row in part.items():
                holders.setdefault(k, (row, []))[1].append(_label(m))
        for k, (row, labels) in holders.items():
            if len(labels) < len(models):
                row = row._replace(description=f"({', '.join(labels)}) {row.description}")
            rows.setdefault(k, row)


def field_docs() -> list[FieldDoc]:
    """Every leaf key of `cameras.yaml`, in the models' order.

    Conventions: a section's keys are dotted under it (`output.redis.url`); the items of a list of sections
    are written `[]` (`cameras[].name`, `cameras[].zones[].polygon`); sections themselves (`output`,
    `cameras`, `model.input`) are not rows, only their keys are. `defaults` is one row: it takes any camera
    key but `name` and `url`. `model:` is one section per backend: a key every backend reads is one row; a
    key of some backends only is one row whose description begins with those backends in parentheses, e.g.
    `(tensorrt) ...`.
    """
    rows: dict[str, FieldDoc] = {}
    _walk(Config, "", rows)
    return list(rows.values())


def dotted_keys() -> set[str]:
    """Every leaf key of `cameras.yaml` as a dotted name (conventions: `field_docs`)."""
    return {row.key for row in field_docs()}
