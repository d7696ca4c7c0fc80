"""The base model of every spec table and the markers that say how a field enters node keys.

A field counts towards the key of the node that reads it unless its schema marks it
otherwise, here, in one place:

- ``execution``: how a node runs, never what it builds (parallel layout, intervals).
- ``label``: a human name; nodes are identified by name but keyed by content.
- ``reference``: names another node; it becomes an explicit input edge instead (``ref``).
- ``content``: a path to external files; their content digest enters the key instead
  (``content``).
- ``mixture``: a source's blend weight; it counts in the keys of the training stages
  that blend the source, not in the source's own.
- ``added``: a field added after keys were first pinned; it counts only when it differs
  from its default, so adding it changed no existing key (``added``).
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from enum import Enum
from pathlib import PurePath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

KeyRole = Literal["execution", "label", "reference", "content", "mixture", "added"]
KEY_ROLE = "x-key-role"
KEY_UNLESS = "x-key-unless"
REFERENCES = "x-references"

RefTarget = Literal["stage", "text", "tokens"]
"""What a reference names: a `[[stage]]` (its trained artifact), a data source's cleaned
text (``source:<name>``) or its tokenized datasets (``tokenize:<name>``)."""
SourceRole = Literal["pretrain", "chat", "preferences", "prompts", "labeled"]


FLOAT32_MAX = 3.4028234663852886e38
"""The largest finite 32-bit float: numbers the spec gives become torch's float32."""


class SpecModel(BaseModel):
    """A table of the spec: immutable, closed to unknown keys, documented field by field."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
        allow_inf_nan=False,
        populate_by_name=True,
        validate_default=True,
    )

    @model_validator(mode="before")
    @classmethod
    def _no_other_scalars(cls, data: Any) -> Any:
        """``true``/``false`` where a number belongs (``lr = true``, ``--set
        stage.x.steps=true``), and a quoted string where a number or a boolean belongs
        (``steps = "300"``, ``distributed_optimizer = "yes"``), fail as a value of another
        type does: pydantic would read them as 1 and 0, 300 and true, which the spec's
        JSON Schema (and so an editor) refuses."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            key = field.alias if field.alias in data else name
            if key in data and _other_scalar(data[key], field.annotation):
                out[key] = _marked(data[key])
        return out

    @field_validator("*", mode="after")
    @classmethod
    def _float32(cls, value: Any) -> Any:
        """A real number too large for a 32-bit float (``lr = 1e300``), refused here rather
        than by torch's conversion at the first step."""
        if isinstance(value, float) and abs(value) > FLOAT32_MAX:
            raise ValueError(f"{value:g} is beyond a 32-bit float's range (3.4e38)")
        return value


class Boolean(str):
    """A boolean where a number belongs, kept as text so that it fails number
    validation and is shown as written."""

    def __repr__(self) -> str:
        return str(self)


class Quoted:
    """A string where a number or a boolean belongs, kept out of pydantic's reach (it
    would parse ``"300"`` as 300, ``"yes"`` as true): it fails as any other type does."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return repr(self.text)


def _marked(value: Any) -> Any:
    if isinstance(value, bool):
        return Boolean(str(value).lower())
    if isinstance(value, str):
        return Quoted(value)
    if isinstance(value, (list, tuple)):
        return [_marked(v) for v in value]
    if isinstance(value, dict):
        return {k: _marked(v) for k, v in value.items()}
    return value


TAKEN_AS = {bool: (bool,), str: (str, PurePath, Enum)}
"""The types that take a boolean, a string, as one (a path or an enum takes its text)."""


def _takes(annotation: Any, scalar: type) -> bool:
    """Whether a type takes a ``scalar`` (``bool`` or ``str``) as one: the type itself
    (``TAKEN_AS``), a literal of one, ``Any``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _takes(args[0], scalar)
    if origin is Literal:
        return any(isinstance(a, scalar) for a in args)
    if annotation in (Any, object):
        return True
    return isinstance(annotation, type) and issubclass(annotation, TAKEN_AS[scalar])


def _other_scalar(value: Any, annotation: Any) -> bool:
    """Whether ``value`` holds a boolean where ``annotation`` takes a number and no
    boolean, or a string where it takes a number or a boolean and no string (in arrays
    and tables of them too; nested spec tables check their own)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return _other_scalar(value, args[0])
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in args if a is not type(None)]
        if isinstance(value, bool) and any(_takes(a, bool) for a in arms):
            return False
        if isinstance(value, str) and any(_takes(a, str) for a in arms):
            return False
        return any(_other_scalar(value, arm) for arm in arms)
    if isinstance(value, bool):
        return annotation in (int, float)
    if isinstance(value, str):
        return annotation in (int, float, bool)
    if isinstance(value, (list, tuple)) and origin in (list, tuple) and args:
        items = args[:1] if origin is list or args[-1] is Ellipsis else args
        return any(_other_scalar(v, items[min(i, len(items) - 1)]) for i, v in enumerate(value))
    if isinstance(value, dict) and origin is dict and len(args) == 2:
        return any(_other_scalar(v, args[1]) for v in value.values())
    return False


@dataclass(frozen=True)
class KeyMark:
    """How a marked field enters node keys; written into the field's JSON Schema."""

    role: KeyRole
    target: RefTarget | None = None
    """References: what the field names."""
    slot: str | None = None
    """References and content: the input slot of the node that reads it. A list's items
    are told apart by ``{name}`` (the item) or ``{index}`` (the enclosing table's index)."""
    each: bool = False
    """References: the table makes one node per name listed (an eval per stage)."""
    source_role: SourceRole | None = None
    """References to sources: the role the source must play."""
    omitted: SourceRole | None = None
    """References to sources: omitted, the field names every source of this role."""
    stage_kinds: tuple[str, ...] = ()
    """References to stages: the kinds the stage must be of (any when empty)."""
    unordered: bool = False
    """Content: the order of the files does not count; the node reads them in content
    order, so renames that reorder them rebuild nothing."""
    suffixes: bool = False
    """Content: each file's suffix counts, for the node reads its format and compression
    from it (``x.jsonl`` and ``x.txt`` of the same bytes are different inputs)."""
    files: tuple[str, ...] = ()
    """Content: of a directory, only the files directly in it whose names match one of
    these globs count (the ones the node reads: a checkpoint's README or an ``original/``
    folder beside its weights changes nothing); empty: every file in it."""
    own: bool = False
    """References to sources, with ``omitted`` and ``each``: omitted, the field names the
    sources of that role the node's own stage trains on (when it trains on any)."""
    unless: str | None = None
    """Execution: while this other field of the table is set, the field decides the
    output too, and enters keys as an added field does (at its default, left out)."""

    def __call__(self, schema: dict[str, Any]) -> None:
        schema[KEY_ROLE] = self.role
        if self.unless is not None:
            schema[KEY_UNLESS] = self.unless
        if self.target is not None:
            schema[REFERENCES] = self.target


def table_dump(model: BaseModel) -> dict[str, Any]:
    """A table as JSON, leaving out ``added`` fields at their default (so what was written
    before such a field existed is written the same)."""
    out = model.model_dump(mode="json", by_alias=True)
    for name, f in type(model).model_fields.items():
        if key_role(type(model), name) == "added" and getattr(model, name) == f.default:
            out.pop(f.alias or name, None)
    return out


def marked(role: KeyRole, default: Any = ..., unless: str | None = None, **kwargs: Any) -> Any:
    """A pydantic Field carrying its key role (execution, label or mixture); ``unless``
    names the field whose being set makes an execution field decide the output."""
    return Field(default, json_schema_extra=KeyMark(role, unless=unless), **kwargs)


def added(default: Any = None, **kwargs: Any) -> Any:
    """A field that counts in keys only when set to something other than ``default``: a
    new field (a new architecture option, say) keeps every key built before it."""
    return Field(default, json_schema_extra=KeyMark("added"), **kwargs)


def ref(
    target: RefTarget,
    default: Any = ...,
    *,
    slot: str | None = None,
    each: bool = False,
    source_role: SourceRole | None = None,
    omitted: SourceRole | None = None,
    stage_kinds: tuple[str, ...] = (),
    own: bool = False,
    **kwargs: Any,
) -> Any:
    """A field naming other nodes. The planner makes every name an input edge of the node
    that reads the field (so the named node's key enters this node's key), checks that it
    exists and fits, and finds cycles through it: a name can never be a silent string."""
    mark = KeyMark("reference", target, slot, each, source_role, omitted, stage_kinds, own=own)
    return Field(default, json_schema_extra=mark, **kwargs)


def content(
    default: Any = ...,
    *,
    slot: str | None = None,
    unordered: bool = False,
    suffixes: bool = False,
    files: tuple[str, ...] = (),
    **kwargs: Any,
) -> Any:
    """A field holding paths to external files, relative to the spec file that writes it;
    their content digest enters the key of the node that reads them, never the path (with
    ``suffixes``, the suffix of each file too; with ``unordered``, not their order; with
    ``files``, of a directory only the files it names)."""
    mark = KeyMark("content", slot=slot, unordered=unordered, suffixes=suffixes, files=files)
    return Field(default, json_schema_extra=mark, **kwargs)


def key_mark(model: type[BaseModel], field: str) -> KeyMark | None:
    """The mark of ``model.field``, or None when the field counts in full."""
    extra = model.model_fields[field].json_schema_extra
    return extra if isinstance(extra, KeyMark) else None


def key_role(model: type[BaseModel], field: str) -> KeyRole | None:
    """The key role of ``model.field``, or None when the field counts in full."""
    mark = key_mark(model, field)
    return mark.role if mark is not None else None


def _as_tuple(value: Any) -> Any:
    """Accept a single item where a list is expected (``path = "a.txt"``)."""
    if isinstance(value, (str, int, float, dict)):
        return (value,)
    return value


StrList = Annotated[tuple[str, ...], BeforeValidator(_as_tuple)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=64)]
PositiveInt = Annotated[int, Field(gt=0)]
