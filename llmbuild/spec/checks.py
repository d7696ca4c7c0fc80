"""Cross-field checks: the rules that span tables (shapes, layouts, names, references,
cycles), then each kind's own checks.

Shapes and references are checked on the raw composed data through typed getters, so a
mistake in one field neither hides a cross-field problem elsewhere nor invents one: a
value of the wrong type is simply not checked here (field validation reports it). Every
reference of every kind is checked by the same walk that turns it into an edge.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from typing import Any

from pydantic import ValidationError

from llmbuild.errors import Path, Problem, did_you_mean
from llmbuild.kinds import SpecView
from llmbuild.spec.data import Source
from llmbuild.spec.model import Parallelism, Tokenizer
from llmbuild.spec.references import Reference, walk
from llmbuild.spec.tables import TABLES, TAG, node_name
from llmbuild.spec.validate import Validated


def _table(d: Any, key: str) -> dict[str, Any]:
    v = d.get(key) if isinstance(d, dict) else None
    return v if isinstance(v, dict) else {}


def _array(d: Any, key: str) -> list[dict[str, Any]]:
    v = d.get(key) if isinstance(d, dict) else None
    return [x if isinstance(x, dict) else {} for x in v] if isinstance(v, list) else []


def _int(d: dict[str, Any], key: str, default: int | None = None) -> int | None:
    v = d.get(key, default)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _str(d: dict[str, Any], key: str, default: str | None = None) -> str | None:
    v = d.get(key, default)
    return v if isinstance(v, str) else None


def _index(
    items: list[dict[str, Any]], section: Path, what: str
) -> tuple[dict[str, int], list[Problem]]:
    """``name -> index`` of named items, and a problem per duplicated name."""
    index: dict[str, int] = {}
    problems = []
    for i, item in enumerate(items):
        name = _str(item, "name")
        if name is None:
            continue
        if name in index:
            problems.append(
                Problem(
                    f"{what} name {name!r} is already used by {section[-1]}[{index[name]}]",
                    section + (i, "name"),
                )
            )
        else:
            index[name] = i
    return index, problems


def check_layout(raw: dict[str, Any]) -> list[Problem]:
    """Shapes divide: heads | hidden, kv_heads | heads, tensor | heads and kv_heads,
    pipeline | layers. A tensor or pipeline problem is located where that value was set
    (the spec's line, a ``--set``, a preset's line), not at the architecture line it
    names: a ``--set`` that breaks a spec's layout is what to fix."""
    arch, par = _table(raw, "architecture"), _table(raw, "parallelism")
    hidden, heads, layers = _int(arch, "hidden"), _int(arch, "heads"), _int(arch, "layers")
    kv_heads = _int(arch, "kv_heads", heads)
    tensor, pipeline = _int(par, "tensor", 1), _int(par, "pipeline", 1)
    out = []
    if hidden and heads and hidden % heads:
        out.append(
            Problem(
                f"heads ({heads}) must divide hidden ({hidden})",
                ("architecture", "heads"),
                related=(("architecture", "hidden"),),
            )
        )
    if heads and kv_heads and heads % kv_heads:
        out.append(
            Problem(
                f"kv_heads ({kv_heads}) must divide heads ({heads})",
                ("architecture", "kv_heads"),
                related=(("architecture", "heads"),),
            )
        )
    # kv_heads equal to heads (as it is when unset) is one cause: said once, of heads.
    divided = [("heads", heads)] + ([("kv_heads", kv_heads)] if kv_heads != heads else [])
    for field, n in divided:
        if tensor and n and n % tensor:
            out.append(
                Problem(
                    f"tensor ({tensor}) must divide architecture.{field} ({n})",
                    ("parallelism", "tensor"),
                )
            )
    if par.get("sequence_parallel") is True:
        seq_len = _int(arch, "seq_len")
        if tensor == 1:
            out.append(
                Problem(
                    "sequence_parallel splits activations over tensor-parallel ranks: it "
                    "needs parallelism.tensor > 1",
                    ("parallelism", "sequence_parallel"),
                    related=(("parallelism", "tensor"),),
                )
            )
        elif tensor and seq_len and seq_len % tensor:
            out.append(
                Problem(
                    f"with sequence_parallel, tensor ({tensor}) must divide "
                    f"architecture.seq_len ({seq_len})",
                    ("parallelism", "sequence_parallel"),
                    related=(("architecture", "seq_len"),),
                )
            )
    if pipeline and layers and layers % pipeline:
        out.append(
            Problem(
                f"pipeline ({pipeline}) must divide architecture.layers ({layers})",
                ("parallelism", "pipeline"),
            )
        )
    return out


SPECIAL_TOKENS = ("bos_token", "eos_token", "pad_token", "mask_token")


def check_tokenizer(raw: dict[str, Any]) -> list[Problem]:
    """A pretrained tokenizer's special tokens are its own: the spec cannot set them. A
    made tokenizer's are distinct strings that text cannot hold by chance: no blank one,
    none of one character (a char or byte tokenizer would read that character as it)."""
    tok = _table(raw, "tokenizer")
    if tok.get("kind") != "pretrained":
        return _special_tokens(tok)
    return [
        Problem(
            f"{key} does not apply to kind = 'pretrained': a pretrained tokenizer's special "
            "tokens are its own",
            ("tokenizer", key),
        )
        for key in SPECIAL_TOKENS[:3]
        if key in tok
    ]


CONVERSATIONS = ("chat", "preferences", "prompts")
"""The source roles a chat template writes out."""


def _has_chat_template(directory: str) -> bool | None:
    """Whether a local pretrained tokenizer's directory holds a chat template, as
    transformers finds one; None when that cannot be told here (not a local directory,
    an unreadable config)."""
    import json
    from pathlib import Path as FilePath

    where = FilePath(directory)
    if "://" in directory or not where.is_dir():
        return None
    if (where / "chat_template.jinja").is_file() or (where / "chat_template.json").is_file():
        return True
    config = where / "tokenizer_config.json"
    try:
        found = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    except (OSError, ValueError):
        return None
    return bool(isinstance(found, dict) and found.get("chat_template"))


def check_chat_template(raw: dict[str, Any]) -> list[Problem]:
    """Conversations need a chat template: a pretrained tokenizer without one of its own
    takes the spec's `chat_template`, or a conversation source cannot be written out (the
    build would fail at the source's tokenize node)."""
    tok = _table(raw, "tokenizer")
    path = tok.get("path")
    if tok.get("kind") != "pretrained" or "chat_template" in tok or not isinstance(path, str):
        return []
    sources = _array(_table(raw, "data"), "sources")
    talk = [(i, s) for i, s in enumerate(sources) if s.get("role") in CONVERSATIONS]
    if not talk or _has_chat_template(path) is not False:
        return []
    return [
        Problem(
            f"source {s.get('name')!r} holds conversations (role {s['role']!r}), and the "
            f"tokenizer at {path} has no chat template: set [tokenizer] chat_template = "
            '"chatml" (or a Jinja template of your own)',
            ("data", "sources", i, "role"),
        )
        for i, s in talk
    ]


def _special_tokens(tok: dict[str, Any]) -> list[Problem]:
    out: list[Problem] = []
    seen: dict[str, str] = {}
    from llmbuild.spec.model import Tokenizer

    for key in SPECIAL_TOKENS:
        value = tok.get(key, Tokenizer.model_fields[key].default)
        if not isinstance(value, str):
            continue
        if value.strip() != value or len(value) < 2:
            out.append(
                Problem(
                    f"{key} {value!r} could be read from ordinary text: a special token has "
                    "two or more characters and no blank at either end (e.g. '<|eos|>')",
                    ("tokenizer", key),
                )
            )
        elif value in seen:
            out.append(
                Problem(
                    f"{key} {value!r} is also the {seen[value]}: each special token is its own",
                    ("tokenizer", key),
                    related=(("tokenizer", seen[value]),),
                )
            )
        seen.setdefault(value, key)
    return out


def _missing(value: Any) -> list[tuple[Path, str]]:
    """The local patterns of a content field's value that match no file."""
    from llmbuild.plan.digest import expand

    values = value if isinstance(value, list) else [value]
    return [
        ((i,) if isinstance(value, list) else (), v)
        for i, v in enumerate(values)
        if isinstance(v, str) and "://" not in v and not expand(v)
    ]


def check_paths(raw: dict[str, Any], registry: Any, said: Collection[Path] = ()) -> list[Problem]:
    """Every local file a content field names exists (cheap: a glob, nothing read);
    fields in ``said`` have had their problem told."""
    from llmbuild.spec.compose import kind_content_fields

    fields: list[tuple[Path, Any]] = []
    for i, source in enumerate(_array(_table(raw, "data"), "sources")):
        fields.append((("data", "sources", i, "path"), source.get("path")))
    tok = _table(raw, "tokenizer")
    if "path" in tok:
        fields.append((("tokenizer", "path"), tok["path"]))
    for table in TABLES:
        for i, item in enumerate(_array(raw, table)):
            for alias in kind_content_fields(registry, table, item):
                if alias in item:
                    fields.append(((table, i, alias), item[alias]))
    out = []
    for where, value in fields:
        if where in said:
            continue
        for sub, pattern in _missing(value):
            said_how = "is empty" if not pattern.strip() else f"{pattern}: matches no file"
            out.append(Problem(said_how, (*where, *sub)))
    path = tok.get("path")
    if (
        tok.get("kind") == "pretrained"
        and isinstance(path, str)
        and "://" not in path
        and os.path.isfile(path)
        and ("tokenizer", "path") not in said
    ):
        out.append(
            Problem(
                f"{path} is a file: a pretrained tokenizer is the directory that holds "
                f"its files (tokenizer.json, tokenizer_config.json): path = "
                f'"{os.path.dirname(path) or "."}"',
                ("tokenizer", "path"),
            )
        )
    return out


def item_references(raw: dict[str, Any], registry: Any) -> list[tuple[Path, Reference]]:
    """Every reference written in the spec, with the path of the item that writes it."""
    out: list[tuple[Path, Reference]] = [
        (("tokenizer",), r) for r in walk(Tokenizer, _table(raw, "tokenizer"))[0]
    ]
    for table in TABLES:
        for i, item in enumerate(_array(raw, table)):
            kind = registry.kind_of(table, item)  # an unknown kind is a field error
            if kind is not None:
                out += [((table, i), r) for r in walk(kind.model, item)[0]]
    return out


def _stage_cycles(refs: list[tuple[Path, Reference]], raw: dict[str, Any]) -> list[Problem]:
    """A cycle through any stage reference (``from``, ``reference``, a reward model...)."""
    stages = _array(raw, "stage")
    names = [_str(s, "name") for s in stages]
    edges: dict[str, list[tuple[str, Path]]] = {}
    for where, r in refs:
        if where[0] == "stage" and r.mark.target == "stage":
            name = _str(stages[where[1]], "name")
            if name is not None and names.count(name) == 1:  # a duplicate is said as one
                edges.setdefault(name, []).append((r.name, where + r.path))
    out: list[Problem] = []
    done: set[str] = set()
    reported: set[frozenset[str]] = set()

    def visit(node: str, trail: list[str], paths: list[Path]) -> None:
        if node in trail:
            loop = trail[trail.index(node) :]
            if frozenset(loop) not in reported:
                reported.add(frozenset(loop))
                out.append(Problem(f"stages form a cycle: {' -> '.join([*loop, node])}", paths[-1]))
            return
        if node in done:
            return
        for target, path in edges.get(node, ()):
            visit(target, [*trail, node], [*paths, path])
        done.add(node)

    for start in sorted(edges):
        visit(start, [], [])
    return out


def check_references(raw: dict[str, Any], registry: Any) -> list[Problem]:
    """Every reference names an existing stage or source that fits it; no stage cycle;
    names are unique; export nodes are distinct."""
    stages, sources = _array(raw, "stage"), _array(_table(raw, "data"), "sources")
    stage_idx, out = _index(stages, ("stage",), "stage")
    source_idx, dup = _index(sources, ("data", "sources"), "data source")
    out += dup + _index(_array(raw, "eval"), ("eval",), "eval suite")[1]
    refs = item_references(raw, registry)
    for where, r in refs:
        path = where + r.path
        if r.mark.target == "stage":
            if r.name not in stage_idx:
                out.append(
                    Problem(f"no stage named {r.name!r}{did_you_mean(r.name, stage_idx)}", path)
                )
                continue
            kind = _str(stages[stage_idx[r.name]], "kind")
            known = registry.kind_of("stage", stages[stage_idx[r.name]]) is not None
            if r.mark.stage_kinds and known and kind not in r.mark.stage_kinds:  # else said
                want = " or ".join(repr(k) for k in r.mark.stage_kinds)
                out.append(Problem(f"stage {r.name!r} is not of kind {want}", path))
            continue
        if r.name not in source_idx:
            hint = did_you_mean(r.name, source_idx)
            out.append(Problem(f"no data source named {r.name!r}{hint}", path))
            continue
        role = sources[source_idx[r.name]].get("role", "pretrain")
        if r.mark.source_role and isinstance(role, str) and role != r.mark.source_role:
            item = _array(raw, where[0])[where[1]] if len(where) > 1 else {}
            kind = _str(item, "kind") or where[0]
            out.append(
                Problem(
                    f"a {kind} {where[0]} needs a {r.mark.source_role}-role source, but "
                    f"{r.name!r} has role {role!r}",
                    path,
                )
            )
    out += _stage_cycles(refs, raw)
    seen: dict[str, int] = {}
    for i, export in enumerate(_array(raw, "export")):
        node = node_name("export", export)
        if node is None:
            continue
        if node in seen:
            out.append(
                Problem(
                    f"export {node!r} duplicates export[{seen[node]}]; give one of "
                    "them a distinct `name`",
                    ("export", i),
                )
            )
        seen.setdefault(node, i)
    return out


def _view(raw: dict[str, Any], validated: Validated) -> SpecView:
    sources: dict[str, Source] = {}
    for item in _array(_table(raw, "data"), "sources"):
        try:
            source = Source.model_validate(item)
        except ValidationError:
            continue
        sources.setdefault(source.name, source)
    stages: dict[str, Any] = {}
    for item in validated.items.get("stage", {}).values():
        stages.setdefault(item.name, item)
    return SpecView(
        raw,
        stages,
        sources,
        validated.tables.get("architecture"),
        validated.tables.get("parallelism", None if "parallelism" in raw else Parallelism()),
    )


def check_kinds(raw: dict[str, Any], validated: Validated, registry: Any) -> list[Problem]:
    """Each validated item's own kind checks."""
    view = _view(raw, validated)
    out: list[Problem] = []
    for table in TABLES:
        for i, item in sorted(validated.items.get(table, {}).items()):
            kind = registry.kind(table, getattr(item, TAG[table]))
            out += kind.check(item, (table, i), view)
    return out


def cross_check(
    raw: dict[str, Any],
    validated: Validated,
    registry: Any,
    said: Collection[Path] = (),
    paths: bool = True,
) -> list[Problem]:
    """The checks across tables; ``said``: keys a problem was found at already (a kind
    that could not read the files it names), whose paths are not checked again;
    ``paths``: whether files that are missing are problems."""
    return (
        check_layout(raw)
        + check_tokenizer(raw)
        + check_chat_template(raw)
        + (check_paths(raw, registry, set(said)) if paths else [])
        + check_references(raw, registry)
        + check_kinds(raw, validated, registry)
    )
