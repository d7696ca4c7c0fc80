"""Field validation: every pydantic error of every table, as plain located problems.

Tables (and each item of an array of tables) are validated on their own, so one mistake
hides no other.
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from llmbuild.errors import Path, Problem, did_you_mean
from llmbuild.spec.base import Boolean, Quoted
from llmbuild.spec.root import REQUIRED_SECTIONS, section_adapter, sections

_TOML_TYPES = {
    bool: "boolean",
    Boolean: "boolean",
    Quoted: "string",
    int: "integer",
    float: "float",
    str: "string",
    list: "array",
    dict: "table",
}


def _toml_type(value: Any) -> str:
    return _TOML_TYPES.get(type(value), type(value).__name__)


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, dict) else "{...}"
    return text if len(text) <= 60 else text[:57] + "..."


def _unwrap(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin is Annotated:
        return _unwrap(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _tagged_member(tp: Any, tag: Any) -> Any:
    """The member of a discriminated union of models whose tag literal is ``tag``."""
    if get_origin(tp) not in (Union, types.UnionType):
        return None
    for member in map(_unwrap, get_args(tp)):
        if not _is_model(member):
            continue
        for name in ("kind", "format"):
            f = member.model_fields.get(name)
            if (
                f is not None
                and get_origin(f.annotation) is Literal
                and tag in get_args(f.annotation)
            ):
                return member
    return None


def _field(model: type[BaseModel], key: Any) -> Any:
    for name, f in model.model_fields.items():
        if key in (name, f.alias):
            return f
    return None


def walk_loc(tp: Any, loc: tuple[Any, ...]) -> tuple[Path, Any]:
    """Follow a pydantic error location through the schema types: the location as the user
    wrote it (union tags removed) and the type found there (None when lost)."""
    shown: list[str | int] = []
    for part in loc:
        tp = _unwrap(tp)
        member = _tagged_member(tp, part) if tp is not None else None
        if member is not None:
            tp = member
            continue
        shown.append(part)
        if _is_model(tp):
            f = _field(tp, part)
            tp = f.annotation if f is not None else None
        elif get_origin(tp) in (tuple, list):
            args = [a for a in get_args(tp) if a is not Ellipsis]
            if get_origin(tp) is list or Ellipsis in get_args(tp):
                tp = args[0] if args else None
            else:
                tp = args[part] if isinstance(part, int) and part < len(args) else None
        else:
            tp = None
    return tuple(shown), (_unwrap(tp) if tp is not None else None)


SYNONYMS = {
    "learning_rate": "lr",
    "max_steps": "steps",
    "num_steps": "steps",
    "train_steps": "steps",
    "batch_size": "global_batch",
    "per_device_train_batch_size": "micro_batch",
    "gradient_clipping": "grad_clip",
    "max_grad_norm": "grad_clip",
    "lr_scheduler": "schedule",
    "lr_scheduler_type": "schedule",
    "warmup_steps": "schedule",
    "num_layers": "layers",
    "n_layer": "layers",
    "hidden_size": "hidden",
    "n_embd": "hidden",
    "num_attention_heads": "heads",
    "n_head": "heads",
    "num_key_value_heads": "kv_heads",
    "intermediate_size": "ffn_hidden",
    "max_position_embeddings": "seq_len",
    "block_size": "seq_len",
    "lora_r": "rank",
    "r": "rank",
    "lora_alpha": "alpha",
    "target_modules": "targets",
}
"""Other tools' names for a key (transformers', TRL's, PEFT's, nanoGPT's): an unknown key
named so is pointed at ours, where the table has it."""


def _suggest(word: str, names: list[str]) -> str:
    ours = SYNONYMS.get(word)
    if ours is not None and ours in names:
        return f"; did you mean {ours!r}?"
    return did_you_mean(word, names)


def _field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _message(err: dict[str, Any], tp: Any, loc: tuple[Any, ...]) -> tuple[Path, str]:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    path, _ = walk_loc(tp, loc)
    got = f" (got {_show(value)})"
    if kind == "extra_forbidden":
        _, parent = walk_loc(tp, loc[:-1])
        names = _field_names(parent) if _is_model(parent) else []
        return path, f"unknown key{_suggest(str(loc[-1]), names)}"
    if kind == "missing":
        return path, "required"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        disc = str(ctx.get("discriminator", "kind")).strip("'")
        if kind == "union_tag_not_found":
            return path + (disc,), "required"
        tags = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
        hint = did_you_mean(str(ctx.get("tag")), tags)
        return path + (
            disc,
        ), f"unknown {disc} {ctx.get('tag')!r}{hint} (expected one of: {', '.join(tags)})"
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = did_you_mean(str(value), options) if isinstance(value, str) else ""
        return path, f"must be one of: {', '.join(options)}{got}{hint}"
    bounds = {
        "greater_than": ">",
        "greater_than_equal": ">=",
        "less_than": "<",
        "less_than_equal": "<=",
    }
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        return path, f"must be {bounds[kind]} {limit}{got}"
    if kind in ("too_short", "too_long"):
        which = "at least" if kind == "too_short" else "at most"
        n = ctx.get("min_length" if kind == "too_short" else "max_length")
        return path, f"must have {which} {n} item{'s' if n != 1 else ''}{got}"
    if kind == "string_too_long":
        return path, f"must be at most {ctx.get('max_length')} characters"
    if kind == "string_too_short":
        n = ctx.get("min_length")
        return path, f"must be at least {n} character{'s' if n != 1 else ''}{got}"
    if kind == "string_pattern_mismatch":
        return path, f"must match the pattern {ctx.get('pattern')}{got}"
    if kind == "value_error":
        return path, str(ctx.get("error", err["msg"]))
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return path, f"must be a table (got {_toml_type(value)} {_show(value)})"
    if kind in ("list_type", "tuple_type"):
        return path, f"must be an array (got {_toml_type(value)} {_show(value)})"
    if kind == "finite_number":
        return path, f"must be a finite number{got}"
    expected = {"int": "an integer", "float": "a number", "bool": "a boolean", "string": "a string"}
    for prefix, words in expected.items():
        if kind.startswith(prefix + "_"):
            return path, f"must be {words} (got {_toml_type(value)} {_show(value)})"
    msg = err["msg"]
    return path, f"{msg[:1].lower()}{msg[1:]}{got}"


def problems_of(exc: ValidationError, tp: Any, prefix: Path) -> list[Problem]:
    errors = exc.errors(include_url=False)
    locs = [tuple(e["loc"]) for e in errors]
    out: list[Problem] = []
    for err, loc in zip(errors, locs):
        # An array whose items failed is also reported too short; the items say it all.
        if err["type"] == "too_short" and any(o[: len(loc)] == loc and o != loc for o in locs):
            continue
        path, message = _message(err, tp, loc)
        out.append(Problem(message, prefix + path))
    return out


@dataclass
class Validated:
    """What validated on its own: each top-level table, and each item of an array of
    tables (by index), for the cross-field checks to look at."""

    tables: dict[str, Any] = field(default_factory=dict)
    items: dict[str, dict[int, Any]] = field(default_factory=dict)


def _validate(section: str, value: Any, prefix: Path, registry: Any) -> tuple[Any, list[Problem]]:
    try:
        return section_adapter(section, registry).validate_python(value), []
    except ValidationError as exc:
        return None, problems_of(exc, sections(registry)[section][0], prefix)


def validate_sections(
    data: dict[str, Any],
    registry: Any = None,
    unfilled: set[str] = frozenset(),  # type: ignore[assignment]
) -> tuple[list[Problem], Validated]:
    """Validate each top-level table, and each item of an array of tables, on its own;
    return every problem found, and what validated. Missing tables in ``unfilled`` (a
    kind would fill them, but its files have problems of their own) are not reported."""
    problems: list[Problem] = []
    known = sections(registry)
    done = Validated()
    for key in data:
        if key not in known:
            problems.append(Problem(f"unknown table{did_you_mean(key, known)}", (key,)))
    for section in REQUIRED_SECTIONS:
        if section not in data and section not in unfilled:
            kind = "[[stage]] tables" if section == "stage" else f"[{section}] table"
            problems.append(Problem(f"required: the spec has no {kind}", (section,)))
    for section, (_, is_array) in known.items():
        if section not in data or section in unfilled:  # what the kind would fill is missing
            continue
        value = data[section]
        if not is_array:
            valid, found = _validate(section, value, (section,), registry)
            problems += found
            if not found:
                done.tables[section] = valid
        elif not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            problems.append(
                Problem(
                    f"must be an array of tables, written [[{section}]] (got {_toml_type(value)})",
                    (section,),
                )
            )
        else:
            items = done.items.setdefault(section, {})
            for i, item in enumerate(value):
                valid, found = _validate(section, item, (section, i), registry)
                problems += found
                if not found:
                    items[i] = valid
    return problems, done
