"""The JSON Schema of specs, generated from the pydantic models (for editors via #:schema),
and the markdown spec reference generated from that schema (``llmbuild docs``)."""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema

from llmbuild.spec.base import KEY_ROLE, KEY_UNLESS, REFERENCES, Name, _as_tuple
from llmbuild.spec.root import spec_model

SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"
DOCS_COMMAND = "llmbuild docs -o docs/spec.md"
# The constraints of a `Name`, which the reference calls "name" and defines once.
_NAME_RULE = TypeAdapter(Name).json_schema()


def spec_schema(registry: Any = None) -> dict[str, Any]:
    """The JSON Schema of specs with the registry's kinds (the default registry's)."""
    schema = spec_model(registry).model_json_schema(
        by_alias=True, mode="validation", schema_generator=_SpecSchema
    )
    schema["$schema"] = SCHEMA_URI
    schema["title"] = "llmbuild model spec"
    return schema


def editor_schema(registry: Any = None) -> dict[str, Any]:
    """The schema editors check a spec file against. A file is a fragment until its
    ``extends`` are merged (a spec that extends a preset need not repeat ``[model]``),
    so nothing is required but the ``kind`` that picks a table's variant; ``validate``
    reports what the composed spec lacks, with file and line."""

    def relax(node: Any) -> Any:
        if isinstance(node, dict):
            node = {k: relax(v) for k, v in node.items()}
            props = node.get("properties", {})
            if "required" in node:
                kept = [k for k in node["required"] if "const" in props.get(k, {})]
                if kept:
                    node["required"] = kept
                else:
                    del node["required"]
            return node
        if isinstance(node, list):
            return [relax(v) for v in node]
        return node

    return relax(spec_schema(registry))


def spec_schema_text(registry: Any = None) -> str:
    return json.dumps(editor_schema(registry), indent=2, sort_keys=False) + "\n"


# --- the markdown reference -------------------------------------------------------------

REFERENCE_NOTES = {
    "stage": "stages",
    "text": "data sources (their cleaned text)",
    "tokens": "data sources (their tokenized datasets)",
}
ROLE_NOTES = {
    "execution": "Execution only: never part of a node key.",
    "label": "A label: not part of node keys.",
    "reference": "Names other nodes: an input edge, not a key field.",
    "content": "Files: their content digest enters the key, never the path text.",
    "mixture": "Counts in the keys of the stages that blend the source, not the source's.",
    "added": "Counts in node keys only when set (a field added after keys were pinned).",
}


class _SpecSchema(GenerateJsonSchema):
    """The spec's schema as specs may be written: a string-or-list field (``StrList``,
    which takes ``path = "a.txt"`` as well as a list) accepts both forms."""

    def function_before_schema(self, schema: Any) -> dict[str, Any]:
        inner = super().function_before_schema(schema)
        if schema.get("function", {}).get("function") is _as_tuple and "items" in inner:
            return {"anyOf": [inner["items"], inner]}
        return inner


@dataclass
class _Section:
    """One table of the reference: a plain table, a union of kinds, or one kind of it."""

    anchor: str
    title: str
    description: str
    props: dict[str, Any] = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    level: int = 2
    variants: list[tuple[str, str, str]] = field(default_factory=list)  # (value, anchor, doc)
    note: str = ""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _first_line(text: str) -> str:
    return " ".join(text.split()).split(". ")[0].rstrip(".")


class _Reference:
    """Walks the schema from its root in declaration order, one section per table."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.defs: dict[str, Any] = schema.get("$defs", {})
        self.sections: list[_Section] = []
        self.anchors: dict[str, str] = {}  # $defs name -> anchor of its section
        self.union_anchors: dict[str, str] = {}  # table path -> anchor of its union section
        root = _Section(
            "top-level",
            "Top level",
            schema.get("description", ""),
            props=schema["properties"],
            required=frozenset(schema.get("required", ())),
        )
        self.sections.append(root)
        self._children(root.props, "")

    # Which tables a property leads to, and how (a table, an array of tables, a union).
    def _targets(self, prop: dict[str, Any]) -> list[tuple[str, Any, bool]]:
        options = prop.get("anyOf", [prop])
        out: list[tuple[str, Any, bool]] = []
        for opt in options:
            if "$ref" in opt:
                out.append(("table", _ref_name(opt["$ref"]), False))
            elif opt.get("type") == "array" and isinstance(opt.get("items"), dict):
                items = opt["items"]
                if "$ref" in items:
                    out.append(("table", _ref_name(items["$ref"]), True))
                elif "discriminator" in items:
                    out.append(("union", items, True))
        return out

    def _children(self, props: dict[str, Any], path: str) -> None:
        for name, prop in props.items():
            child = f"{path}.{name}" if path else name
            for how, target, array in self._targets(prop):
                if how == "table":
                    self._table(target, child, array)
                else:
                    self._union(target, child)

    def _header(self, path: str, array: bool) -> str:
        return f"`[[{path}]]`" if array else f"`[{path}]`"

    def _table(self, name: str, path: str, array: bool) -> None:
        if name in self.anchors:
            return
        d = self.defs[name]
        anchor = _slug(path)
        self.anchors[name] = anchor
        self.sections.append(
            _Section(
                anchor,
                self._header(path, array),
                d.get("description", ""),
                props=d.get("properties", {}),
                required=frozenset(d.get("required", ())),
            )
        )
        self._children(d.get("properties", {}), path)

    def _union(self, items: dict[str, Any], path: str) -> None:
        if path in self.union_anchors:
            return
        key = items["discriminator"]["propertyName"]
        mapping = items["discriminator"]["mapping"]
        order = [_ref_name(o["$ref"]) for o in items["oneOf"]]
        values = {_ref_name(ref): value for value, ref in mapping.items()}
        variants = [(values[n], n) for n in order]
        anchor = _slug(path)
        self.union_anchors[path] = anchor
        common = self._common([self.defs[n] for _, n in variants], key)
        union = _Section(
            anchor,
            self._header(path, True),
            f"Each `[[{path}]]` table is one of these kinds, chosen by `{key}`:",
            props=common,
            required=frozenset(
                k for k in common if all(k in self.defs[n].get("required", ()) for _, n in variants)
            ),
            note=f"Fields of every kind of `[[{path}]]`:" if common else "",
        )
        self.sections.append(union)
        for value, name in variants:
            d = self.defs[name]
            v_anchor = _slug(f"{path}-{value}")
            self.anchors.setdefault(name, v_anchor)
            union.variants.append((value, v_anchor, _first_line(d.get("description", ""))))
            props = {key: d["properties"][key]}
            props.update(
                (k, p) for k, p in d.get("properties", {}).items() if k not in common and k != key
            )
            self.sections.append(
                _Section(
                    v_anchor,
                    f'`[[{path}]]` {key} = "{value}"',
                    d.get("description", ""),
                    props=props,
                    required=frozenset(d.get("required", ())),
                    level=3,
                    note=f"With the [fields of every kind](#{anchor})." if common else "",
                )
            )
        for _, name in variants:
            self._children(self.defs[name].get("properties", {}), path)

    def _common(self, defs: list[dict[str, Any]], key: str) -> dict[str, Any]:
        """Fields every variant has, with the same schema and the same required-ness."""
        first = defs[0].get("properties", {})
        return {
            k: p
            for k, p in first.items()
            if k != key
            and all(
                d.get("properties", {}).get(k) == p
                and (k in d.get("required", ())) == (k in defs[0].get("required", ()))
                for d in defs[1:]
            )
        }

    # --- rendering ----------------------------------------------------------------------

    def _link(self, name: str) -> str:
        return f"[{name}](#{self.anchors[name]})"

    def type_of(self, prop: dict[str, Any], path: str = "") -> str:
        if "$ref" in prop:
            return f"table, {self._link(_ref_name(prop['$ref']))}"
        if "anyOf" in prop:
            parts = [self.type_of(p) for p in prop["anyOf"] if p.get("type") != "null"]
            return " or ".join(parts)
        if "const" in prop:
            return f"`{json.dumps(prop['const'])}`"
        if "enum" in prop:
            return " \\| ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
        kind = prop.get("type")
        if kind == "string" and all(prop.get(k) == v for k, v in _NAME_RULE.items()):
            return "name"
        if kind == "array":
            return self._array(prop)
        base = {"string": "string", "integer": "integer", "number": "float", "boolean": "bool"}
        text = base.get(str(kind), str(kind))
        return ", ".join([text, *self._bounds(prop)])

    def _array(self, prop: dict[str, Any]) -> str:
        if "prefixItems" in prop:
            return "[" + ", ".join(self.type_of(p) for p in prop["prefixItems"]) + "]"
        items = prop.get("items", {})
        if "$ref" in items:
            text = f"array of {self._link(_ref_name(items['$ref']))} tables"
        elif "discriminator" in items:
            values = {_ref_name(r): v for v, r in items["discriminator"]["mapping"].items()}
            kinds = ", ".join(
                f"[{values[n]}](#{self.anchors[n]})"
                for n in (_ref_name(o["$ref"]) for o in items["oneOf"])
            )
            text = f"array of tables, by `{items['discriminator']['propertyName']}`: {kinds}"
        else:
            text = f"list of {self.type_of(items)}"
        if prop.get("minItems"):
            text += f", at least {prop['minItems']}"
        if "maxItems" in prop:
            text += f", at most {prop['maxItems']}"
        return text

    @staticmethod
    def _bounds(prop: dict[str, Any]) -> list[str]:
        out = []
        for key, op in (
            ("minimum", ">="),
            ("exclusiveMinimum", ">"),
            ("maximum", "<="),
            ("exclusiveMaximum", "<"),
        ):
            if key in prop:
                out.append(f"{op} {_literal(prop[key])}")
        if "pattern" in prop:
            out.append(f"matching `{prop['pattern']}`")
        if prop.get("minLength") == 1:
            out.append("not empty")
        elif "minLength" in prop:
            out.append(f"at least {prop['minLength']} characters")
        if "maxLength" in prop:
            out.append(f"at most {prop['maxLength']} characters")
        return out

    def default_of(self, name: str, prop: dict[str, Any], required: frozenset[str]) -> str:
        if name in required:
            return "required"
        if "default" not in prop:
            return ""
        value = prop["default"]
        if value is None:
            return "unset"
        if isinstance(value, dict):
            return "its defaults"
        return f"`{_literal(value)}`"

    def render_table(self, section: _Section) -> list[str]:
        lines = ["| field | type | default | description |", "| --- | --- | --- | --- |"]
        for name, prop in section.props.items():
            desc = prop.get("description", "")
            if not desc and "$ref" in prop:  # pydantic drops a description equal to the table's
                desc = self.defs[_ref_name(prop["$ref"])].get("description", "")
            desc = " ".join(desc.split())
            role = prop.get(KEY_ROLE)
            if role == "reference":
                what = REFERENCE_NOTES[prop.get(REFERENCES, "stage")]
                desc = f"{desc} *Names {what}: an input edge, whose key enters this node's.*"
            elif role == "execution" and prop.get(KEY_UNLESS):
                desc = (
                    f"{desc} *Not part of node keys unless `{prop[KEY_UNLESS]}` is set: "
                    "then a value other than the default is.*"
                )
            elif role:
                desc = f"{desc} *{ROLE_NOTES[role]}*"
            cells = [
                f"`{name}`",
                self.type_of(prop),
                self.default_of(name, prop, section.required),
                desc,
            ]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        return lines

    def render(self) -> str:
        intro = (
            f"Generated from the spec's JSON Schema by `{DOCS_COMMAND}`: do not edit by "
            "hand. Tables appear in the order of the schema. Every field counts towards the "
            "key of the node that reads it, so changing it rebuilds that node, unless its "
            "description says otherwise in italics:"
        )
        terms = (
            "A *name* is a string of letters, digits, `_`, `.` and `-` that starts with a "
            f"letter or digit, at most {_NAME_RULE['maxLength']} characters. A *string or list "
            'of string* field takes one value or a list of them: `path = "a.txt"` or '
            '`path = ["a.txt", "b/*.txt"]`.'
        )
        out = ["# Spec reference", "", textwrap.fill(intro, 88), ""]
        out += [f"- {note}" for note in ROLE_NOTES.values()]
        out += ["", textwrap.fill(terms, 88)]
        out += ["", "## Contents", ""]
        for s in self.sections:
            indent = "  " * (s.level - 2)
            out.append(f"{indent}- [{s.title}](#{s.anchor})")
        for s in self.sections:
            out += ["", f'<a id="{s.anchor}"></a>', "", f"{'#' * s.level} {s.title}", ""]
            if s.description:
                out += [" ".join(s.description.split()), ""]
            if s.variants:
                out += [f"- [{value}](#{a}): {doc}" for value, a, doc in s.variants]
                out.append("")
            if s.note:
                out += [s.note, ""]
            if s.props:
                out += self.render_table(s)
        return "\n".join(out).rstrip() + "\n"


def _literal(value: Any) -> str:
    """A TOML-looking literal of a JSON value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value).replace("e-0", "e-").replace("e+0", "e+")
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return json.dumps(value)


def _cell(text: str) -> str:
    """Text safe in a markdown table cell (the only unescaped pipes are the separators)."""
    return re.sub(r"(?<!\\)\|", r"\\|", text)


def spec_reference(registry: Any = None) -> str:
    """The markdown reference of every spec table and field, in schema order."""
    return _Reference(spec_schema(registry)).render()
