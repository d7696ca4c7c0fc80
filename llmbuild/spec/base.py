"""The base model of every spec table and the markers that say how a field enters node keys.

A field counts towards the key of the node that reads it unless its schema marks it
otherwise, here, in one place:

- ``execution``: how a node runs, never what it builds (parallel layout, intervals).
- ``label``: a human name; nodes are identified by name but keyed by content.
- ``reference``: names another node; it becomes an explicit input edge instead.
- ``content``: a path to external files; their content digest enters the key instead.
- ``mixture``: a source's blend weight; it counts in the keys of the training stages
  that blend the source, not in the source's own.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

KeyRole = Literal["execution", "label", "reference", "content", "mixture"]
KEY_ROLE = "x-key-role"


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


def marked(role: KeyRole, default: Any = ..., **kwargs: Any) -> Any:
    """A pydantic Field carrying its key role in the JSON Schema."""
    return Field(default, json_schema_extra={KEY_ROLE: role}, **kwargs)


def key_role(model: type[BaseModel], field: str) -> KeyRole | None:
    """The key role of ``model.field``, or None when the field counts in full."""
    extra = model.model_fields[field].json_schema_extra
    if isinstance(extra, dict):
        return extra.get(KEY_ROLE)  # type: ignore[return-value]
    return None


def _as_tuple(value: Any) -> Any:
    """Accept a single item where a list is expected (``path = "a.txt"``)."""
    if isinstance(value, (str, int, float, dict)):
        return (value,)
    return value


StrList = Annotated[tuple[str, ...], BeforeValidator(_as_tuple)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", max_length=64)]
PositiveInt = Annotated[int, Field(gt=0)]
