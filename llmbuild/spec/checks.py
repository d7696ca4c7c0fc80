"""Cross-field checks: the rules that span tables (shapes, layouts, references, cycles).

They read the raw composed data through typed getters, so a mistake in one field neither
hides a cross-field problem elsewhere nor invents one: a value of the wrong type is
simply not checked here (field validation reports it).
"""

from __future__ import annotations

from typing import Any

from llmbuild.errors import Path, Problem, did_you_mean
from llmbuild.spec.stages import STAGE_DATA_ROLE


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


def _strs(d: dict[str, Any], key: str) -> list[tuple[Path, str]]:
    """The strings of a string-or-array field, each with its sub-path."""
    v = d.get(key)
    if isinstance(v, str):
        return [((key,), v)]
    if isinstance(v, list):
        return [((key, i), s) for i, s in enumerate(v) if isinstance(s, str)]
    return []


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


def _ref(name: str, known: dict[str, int], what: str, path: Path) -> list[Problem]:
    if name in known:
        return []
    return [Problem(f"no {what} named {name!r}{did_you_mean(name, known)}", path)]


def check_layout(raw: dict[str, Any]) -> list[Problem]:
    """Shapes divide: heads | hidden, kv_heads | heads, tensor | heads and kv_heads,
    pipeline | layers."""
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
    for field, n in (("heads", heads), ("kv_heads", kv_heads)):
        if tensor and n and n % tensor:
            out.append(
                Problem(
                    f"tensor ({tensor}) must divide architecture.{field} ({n})",
                    ("parallelism", "tensor"),
                    related=(("architecture", field),),
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
                related=(("architecture", "layers"),),
            )
        )
    return out


def _cycles(stages: list[dict[str, Any]]) -> list[Problem]:
    parents = {
        _str(s, "name"): (_str(s, "from"), i)
        for i, s in enumerate(stages)
        if _str(s, "name") and _str(s, "from")
    }
    out, reported = [], set()
    for start in parents:
        seen, node = [], start
        while node in parents and node not in seen:
            seen.append(node)
            node = parents[node][0]
        if node in seen and node not in reported:
            loop = seen[seen.index(node) :]
            reported.update(loop)
            out.append(
                Problem(
                    f"stages form a cycle: {' -> '.join([*loop, node])}",
                    ("stage", parents[node][1], "from"),
                )
            )
    return out


def check_stages(raw: dict[str, Any]) -> list[Problem]:
    """Stage references exist, data roles fit the stage kind, batches divide, no cycles."""
    stages, sources = _array(raw, "stage"), _array(_table(raw, "data"), "sources")
    stage_idx, out = _index(stages, ("stage",), "stage")
    source_idx, dup = _index(sources, ("data", "sources"), "data source")
    out += dup + _cycles(stages)
    valid_roles = set(STAGE_DATA_ROLE.values())
    roles = {
        n: r
        for n, i in source_idx.items()
        if (r := _str(sources[i], "role", "pretrain")) in valid_roles
    }
    par = _table(raw, "parallelism")
    micro, dp = _int(par, "micro_batch", 1), _int(par, "data", 1)
    for i, stage in enumerate(stages):
        here: Path = ("stage", i)
        kind = _str(stage, "kind")
        for key in ("from", "reference"):
            if (name := _str(stage, key)) is not None:
                out += _ref(name, stage_idx, "stage", here + (key,))
        need = STAGE_DATA_ROLE.get(kind or "")
        for sub, name in _strs(stage, "data"):
            found = _ref(name, source_idx, "data source", here + sub)
            if not found and need and roles.get(name, need) != need:
                found = [
                    Problem(
                        f"a {kind} stage needs a {need}-role source, but {name!r} "
                        f"has role {roles[name]!r}",
                        here + sub,
                    )
                ]
            out += found
        if (
            kind == "pretrain"
            and "data" not in stage
            and len(roles) == len(source_idx) > 0
            and "pretrain" not in roles.values()
        ):
            out.append(Problem("no pretrain-role data source to train on", here))
        for j, reward in enumerate(_array(stage, "rewards")):
            if _str(reward, "kind") == "model" and (name := _str(reward, "stage")):
                path = here + ("rewards", j, "stage")
                found = _ref(name, stage_idx, "stage", path)
                if not found and _str(stages[stage_idx[name]], "kind") != "reward":
                    found = [Problem(f"stage {name!r} is not of kind 'reward'", path)]
                out += found
        parent = _str(stage, "from")
        if adapter_only(stage) and parent in stage_idx and adapter_only(stages[stage_idx[parent]]):
            out.append(
                Problem(
                    f"LoRA adapters need a base with full weights, but stage {parent!r} holds "
                    f"only adapters; set merge = true on {parent!r}",
                    here + ("from",),
                )
            )
        batch = _int(stage, "global_batch")
        replicas = dp
        if kind in NO_PIPELINE and dp:  # pipeline ranks serve as data-parallel ranks
            replicas = dp * (_int(par, "pipeline", 1) or 1)
        if batch and micro and replicas and batch % (micro * replicas):
            data = "parallelism.data" if replicas == dp else "parallelism.data x pipeline"
            out.append(
                Problem(
                    f"global_batch ({batch}) must be a multiple of parallelism."
                    f"micro_batch x {data} ({micro} x {replicas})",
                    here + ("global_batch",),
                )
            )
    return out


# Stage kinds that run without pipeline parallelism: their pipeline ranks become
# data-parallel ranks (two models and sampling per step do not fit the 1F1B schedule).
NO_PIPELINE = ("dpo", "reward", "grpo")


# Stage kinds that use sequence parallelism when it is on (with tensor > 1). The others
# read hidden states mid-model (LoRA adapters, value heads) or run the model on sequences
# of every length while sampling (GRPO), which sequence-split activations do not allow.
SEQUENCE_PARALLEL = ("pretrain", "sft", "dpo")


def sequence_parallel_applies(stage: Any) -> bool:
    """Whether a stage (a mapping or a stage model) trains with sequence parallelism."""
    get = stage.get if isinstance(stage, dict) else lambda k: getattr(stage, k, None)
    return get("kind") in SEQUENCE_PARALLEL and not get("adapter")


def adapter_only(stage: dict[str, Any]) -> bool:
    """Whether a stage's artifact holds only LoRA adapters (no merged weights)."""
    kind = stage.get("kind")
    if kind == "lora":
        return not stage.get("merge", False)
    return kind == "dpo" and isinstance(stage.get("adapter"), dict)


def check_outputs(raw: dict[str, Any]) -> list[Problem]:
    """Evals and exports name existing stages and sources; export node names are unique."""
    stages, sources = _array(raw, "stage"), _array(_table(raw, "data"), "sources")
    stage_idx = {_str(s, "name"): i for i, s in enumerate(stages) if _str(s, "name")}
    source_idx = {_str(s, "name"): i for i, s in enumerate(sources) if _str(s, "name")}
    suites = _array(raw, "eval")
    _, out = _index(suites, ("eval",), "eval suite")
    for i, suite in enumerate(suites):
        for sub, name in _strs(suite, "stages"):
            out += _ref(name, stage_idx, "stage", ("eval", i) + sub)
        for sub, name in _strs(suite, "sources"):
            out += _ref(name, source_idx, "data source", ("eval", i) + sub)
    seen: dict[str, int] = {}
    for i, export in enumerate(_array(raw, "export")):
        name = _str(export, "stage")
        if name is None:
            continue
        found = _ref(name, stage_idx, "stage", ("export", i, "stage"))
        base = stages[stage_idx[name]] if not found else {}
        has_adapter = base.get("kind") == "lora" or (
            base.get("kind") == "dpo" and base.get("adapter")
        )
        if not found and export.get("format") == "peft" and not has_adapter:
            found = [
                Problem(
                    f"a peft export needs a stage with LoRA adapters; {name!r} has none",
                    ("export", i, "stage"),
                )
            ]
        out += found
        node = export_node_name(_str(export, "format"), name, _str(export, "name"))
        if node in seen:
            out.append(
                Problem(
                    f"export {node!r} duplicates export[{seen[node]}]; give one of "
                    "them a distinct `name`",
                    ("export", i),
                )
            )
        seen.setdefault(node, i)
    for sub, name in _strs(_table(raw, "tokenizer"), "sources"):
        out += _ref(name, source_idx, "data source", ("tokenizer",) + sub)
    return out


def export_node_name(fmt: str | None, stage: str, name: str | None) -> str:
    """The graph node of an export: ``export:<format>@<stage>`` unless it has a name."""
    return f"export:{name}" if name else f"export:{fmt}@{stage}"


def cross_check(raw: dict[str, Any]) -> list[Problem]:
    return check_layout(raw) + check_stages(raw) + check_outputs(raw)
