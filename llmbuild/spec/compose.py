"""Composition: ``extends`` presets and fragments, ``--set`` overrides, and provenance.

Each file is a *layer*: its raw TOML data plus the origin (file and line, or flag) of
every key in it. Layers deep-merge: tables merge key by key; arrays (including arrays of
tables) replace. The result remembers, for every key, which layer set it.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from llmbuild.errors import Path, Problem, SpecError, did_you_mean, format_path
from llmbuild.spec.base import key_role
from llmbuild.spec.positions import key_lines, line_of
from llmbuild.spec.tables import TABLES, node_name

PRESET_DIR = FsPath(__file__).resolve().parents[1] / "presets"

# Fields of the fixed tables holding paths to external files; a relative path is
# relative to the file that wrote it. The content fields of `[[stage]]`, `[[eval]]` and
# `[[export]]` items are found from their kind's model. A test checks this list against
# the schema's `content` fields.
CONTENT_PATHS: tuple[Path, ...] = (
    ("data", "sources", "*", "path"),
    ("tokenizer", "path"),
)
# Arrays of tables whose items `--set` may address by their `name`.
NAMED_ARRAYS = {("stage",), ("eval",), ("export",), ("data", "sources")}


@dataclass(frozen=True)
class Origin:
    """Where a value came from: a file and line, a command-line flag, or a default."""

    source: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.source}:{self.line}" if self.line is not None else self.source


@dataclass
class Layer:
    """Raw spec data and the origin of each key path in it."""

    data: dict[str, Any]
    origins: dict[Path, Origin] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)


def preset_dirs() -> list[FsPath]:
    extra = os.environ.get("LLMBUILD_PRESET_PATH", "")
    return [FsPath(p) for p in extra.split(os.pathsep) if p] + [PRESET_DIR]


def available_presets() -> list[str]:
    return sorted({p.stem for d in preset_dirs() if d.is_dir() for p in d.glob("*.toml")})


def _walk(value: Any, prefix: Path = ()):
    """Yield every key path in ``value`` (tables, array items and leaves)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield prefix + (k,)
            yield from _walk(v, prefix + (k,))
    elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            yield prefix + (i,)
            yield from _walk(v, prefix + (i,))


def kind_content_fields(registry: Any, table: str, item: Any) -> list[str]:
    """The content fields (aliases) of a table item, by the model its tag registers."""
    kind = registry.kind_of(table, item)
    if kind is None:
        return []
    return [
        f.alias or name
        for name, f in kind.model.model_fields.items()
        if key_role(kind.model, name) == "content"
    ]


def _rebase_paths(data: dict[str, Any], base: FsPath, registry: Any) -> None:
    """Make relative content paths absolute against ``base`` (the writing file's folder),
    and let each item's kind resolve what else it names relative to that folder."""

    def fix(p: Any) -> Any:
        if not isinstance(p, str) or "://" in p or not p.strip():
            return p  # an empty path stays empty, for validation to refuse
        return os.path.normpath(os.path.join(base, os.path.expanduser(p)))

    def visit(node: Any, pattern: Path) -> None:
        head, rest = pattern[0], pattern[1:]
        if head == "*":
            for item in node if isinstance(node, list) else []:
                visit(item, rest)
            return
        if not isinstance(node, dict) or head not in node:
            return
        if not rest:
            value = node[head]
            node[head] = [fix(v) for v in value] if isinstance(value, list) else fix(value)
        else:
            visit(node[head], rest)

    for pattern in CONTENT_PATHS:
        visit(data, pattern)
    for table in TABLES:
        items = data.get(table)
        for item in items if isinstance(items, list) else []:
            for alias in kind_content_fields(registry, table, item):
                visit(item, (alias,))
            kind = registry.kind_of(table, item)
            if kind is not None:
                kind.rebase(item, str(base))


def read_layer(path: FsPath, display: str, registry: Any) -> Layer:
    """Parse one TOML file into a layer; a syntax error becomes a located Problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([Problem(f"file not found: {path}", file=display)]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError([Problem(f"cannot read file: {e}", file=display)]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        line = col = None
        if "(at line " in msg:
            msg, _, where = msg.partition(" (at line ")
            line_s, _, col_s = where.rstrip(")").partition(", column ")
            line, col = int(line_s), int(col_s) if col_s else None
        elif "(at end of document)" in msg:
            msg = msg.replace(" (at end of document)", "")
            line = text.count("\n") + 1
        raise SpecError(
            [
                Problem(
                    f"TOML syntax error: {msg[:1].lower()}{msg[1:]}",
                    file=display,
                    line=line,
                    column=col,
                )
            ]
        ) from None
    except RecursionError:  # the parser recurses once per level of nesting
        raise SpecError(
            [Problem("arrays or inline tables nested too deeply to read", file=display)]
        ) from None
    lines = key_lines(text)
    _rebase_paths(data, path.resolve().parent, registry)
    origins = {p: Origin(display, line_of(lines, p)) for p in _walk(data)}
    return Layer(data, origins, [str(path)])


def merge(base: Layer, over: Layer) -> Layer:
    """Deep-merge ``over`` onto ``base``: tables merge, everything else replaces."""
    origins = dict(base.origins)

    def go(a: dict[str, Any], b: dict[str, Any], prefix: Path) -> dict[str, Any]:
        out = dict(a)
        for k, v in b.items():
            p = prefix + (k,)
            if isinstance(v, dict) and isinstance(out.get(k), dict):
                out[k] = go(out[k], v, p)
                continue
            for stale in [q for q in origins if q[: len(p)] == p]:
                del origins[stale]
            out[k] = v
        return out

    data = go(base.data, over.data, ())
    origins.update(over.origins)
    return Layer(data, origins, base.files + over.files)


def _resolve_extend(ref: Any, from_file: FsPath, display: str, key: Path) -> FsPath:
    if not isinstance(ref, str):
        raise SpecError([Problem(f"must be a string (got {ref!r})", key, display)])
    if "\0" in ref:
        raise SpecError([Problem(f"not a file name (it holds a NUL byte): {ref!r}", key, display)])
    if ref.startswith("@"):
        name = ref[1:]
        for d in preset_dirs():
            if (d / f"{name}.toml").is_file():
                return d / f"{name}.toml"
        known_names = [f"@{p}" for p in available_presets()]
        hint = did_you_mean(ref, known_names)
        known = ", ".join(known_names)
        raise SpecError([Problem(f"no preset {ref!r}{hint} (presets: {known})", key, display)])
    target = (from_file.parent / ref).resolve()
    if not target.is_file():
        raise SpecError([Problem(f"extended file not found: {target}", key, display)])
    return target


def load_layers(path: FsPath, display: str, registry: Any, chain: tuple[FsPath, ...] = ()) -> Layer:
    """A file merged over everything it extends, recursively (cycles are an error)."""
    real = path.resolve()
    if real in chain:
        cycle = " -> ".join(str(p) for p in (*chain, real))
        raise SpecError([Problem(f"extends cycle: {cycle}", ("extends",), display)])
    layer = read_layer(path, display, registry)
    extends = layer.data.get("extends", [])
    refs = extends if isinstance(extends, list) else [extends]
    merged: Layer | None = None
    for i, ref in enumerate(refs):
        key: Path = ("extends", i) if isinstance(extends, list) else ("extends",)
        target = _resolve_extend(ref, path, display, key)
        shown = _display_path(target)
        parent = load_layers(target, shown, registry, (*chain, real))
        merged = parent if merged is None else merge(merged, parent)
    return layer if merged is None else merge(merged, layer)


def _display_path(path: FsPath) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
"""A number as a shell user writes it, which TOML may not read (``.001``, ``1.``)."""


def _parse_value(text: str, flag: str) -> Any:
    """A ``--set`` value as TOML; text that is no TOML value is a string, except where it
    opens as a table or an array (JSON's ``{"a": 1}``, say): a string there is a mistake."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except RecursionError:
        where = flag.partition("=")[0]  # not the value itself: it is too long to show
        raise SpecError([Problem(f"{where}: arrays or tables nested too deeply to read")]) from None
    except tomllib.TOMLDecodeError as e:
        if NUMBER.fullmatch(text):  # a number TOML would not write: .001, 1., 1e3.
            return float(text)
        if text[:1] in ("{", "["):
            why = re.sub(r" \(at line \d+, column \d+\)$", "", str(e))  # of "v = ..."
            raise SpecError(
                [
                    Problem(
                        f"{flag}: the value is no TOML ({why}): a table is written "
                        "{ key = value, ... }, an array [1, 2]"
                    )
                ]
            ) from None
        return text


def _item_name(array: Path, item: Any) -> str | None:
    """How ``--set`` names an item of a named array: its ``name``; an export without one
    as ``<format>@<stage>``, the name its node and ``llmbuild export`` give it."""
    if not isinstance(item, dict):
        return None
    if array == ("export",):
        made = node_name("export", item)
        return made.split(":", 1)[1] if made else None
    name = item.get("name")
    return name if isinstance(name, str) else None


def _override_path(data: dict[str, Any], dotted: str, flag: str) -> Path:
    """``stage.pretrain.lr`` -> ``('stage', 0, 'lr')``, resolving array items by name."""
    out: list[str | int] = []
    node: Any = data
    tokens = [t for t in dotted.replace("[", ".[").split(".") if t]
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("[") and tok.endswith("]") and tok[1:-1].isdigit():
            idx = int(tok[1:-1])
            if not isinstance(node, list) or idx >= len(node):
                raise SpecError([Problem(f"{flag}: {format_path(tuple(out))} has no item [{idx}]")])
            out.append(idx)
            node = node[idx]
        elif tuple(out) in NAMED_ARRAYS and (isinstance(node, list) or node is None):
            names = [_item_name(tuple(out), item) for item in node or []]
            if tok not in names:
                named = [n for n in names if isinstance(n, str)]
                formats = [n for n in named if n.startswith(f"{tok}@")]  # hf -> hf@sft
                if formats:
                    hint = f"; did you mean {' or '.join(map(repr, formats))}?"
                else:
                    hint = did_you_mean(tok, named)
                    if not hint and named:
                        hint = f" (named: {', '.join(named)})"
                    elif not named:  # an item cannot be made by --set: it has no kind
                        hint = f" (the spec has none: write a [[{format_path(tuple(out))}]] table)"
                raise SpecError(
                    [Problem(f"{flag}: no {format_path(tuple(out))} named {tok!r}{hint}")]
                )
            idx = names.index(tok)
            out.append(idx)
            node = node[idx]
        else:
            out.append(tok)
            node = node.get(tok) if isinstance(node, dict) else None
        i += 1
    return tuple(out)


def apply_override(layer: Layer, assignment: str, registry: Any) -> Layer:
    """Apply one ``--set dotted.key=value`` on top of a layer."""
    flag = f"--set {assignment}"
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise SpecError([Problem(f"{flag}: expected dotted.key=value")])
    if key.strip().split(".")[0] == "extends":  # composed before any --set is applied
        raise SpecError(
            [
                Problem(
                    f"{flag}: extends cannot be set: the files a spec extends are merged "
                    "before --set applies; edit the spec's extends, or --set the values"
                )
            ]
        )
    path = _override_path(layer.data, key.strip(), flag)
    value = _parse_value(text.strip(), flag)
    data = _set_in(layer.data, path, value)
    _rebase_paths(data, FsPath.cwd(), registry)
    origin = Origin(flag)
    origins = {p: o for p, o in layer.origins.items() if p[: len(path)] != path}
    origins[path] = origin
    for sub in _walk(value, path):
        origins[sub] = origin
    return Layer(data, origins, layer.files)


def _set_in(node: Any, path: Path, value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(node, list) and isinstance(head, int):
        copy = list(node)
        copy[head] = _set_in(copy[head], rest, value)
        return copy
    copy = dict(node) if isinstance(node, dict) else {}
    copy[head] = _set_in(copy.get(head), rest, value)
    return copy
