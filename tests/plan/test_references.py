"""References are edges: every name a reference field writes becomes an input of the node
that reads it and enters its key through the upstream's key; a missing name or a cycle
through any reference is a located spec error, found at once."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from llmbuild.errors import SpecError
from llmbuild.plan import StatCache, plan_spec
from llmbuild.registry import default_registry
from llmbuild.spec.base import key_mark
from llmbuild.spec.load import load_spec
from llmbuild.spec.references import _members, walk
from llmbuild.spec.tables import TABLES, node_name
from tests.conftest import FULL_SPEC, REPO, write_project

EVERY_KIND = FULL_SPEC.replace(
    '[[eval]]\nname = "ppl"',
    """\
[[data.sources]]
name = "prompts"
path = "data/prefs.jsonl"
role = "prompts"

[[stage]]
name = "more"
kind = "pretrain"
from = "pretrain"
data = "books"
steps = 2
global_batch = 4
lr = 1e-3

[[stage]]
name = "student"
kind = "distill"
teacher = "more"
from = "pretrain"
data = "books"
steps = 2
global_batch = 4
lr = 1e-3

[[stage]]
name = "encoder"
kind = "mlm"
data = "books"
steps = 2
global_batch = 4
lr = 1e-3
architecture = { style = "bert" }

[[stage]]
name = "encoder-more"
kind = "mlm"
from = "encoder"
steps = 2
global_batch = 4
lr = 1e-3

[[stage]]
name = "pruned"
kind = "prune"
from = "pretrain"
data = "books"
architecture = { layers = 1 }

[[stage]]
name = "lora"
kind = "lora"
from = "sft"
data = "chat"
steps = 2
global_batch = 4

[[stage]]
name = "dpo-ref"
kind = "dpo"
from = "lora"
reference = "pretrain"
data = "prefs"
steps = 2
global_batch = 4

[[stage]]
name = "rm"
kind = "reward"
from = "sft"
data = "prefs"
steps = 2
global_batch = 4

[[data.sources]]
name = "labeled"
path = "data/prefs.jsonl"
role = "labeled"

[[stage]]
name = "cls"
kind = "classify"
from = "sft"
data = "labeled"
steps = 2
global_batch = 4

[[stage]]
name = "rl"
kind = "grpo"
from = "dpo"
data = "prompts"
steps = 2
global_batch = 4
rewards = [{ kind = "exact_match" }, { kind = "model", stage = "rm" }]

[[eval]]
name = "lm"
kind = "lm-eval"
stages = ["rl", "lora"]
tasks = ["t"]

[[export]]
format = "peft"
stage = "lora"

[[export]]
format = "gguf"
stage = "rl"

[[export]]
format = "onnx"
stage = "dpo-ref"

[[eval]]
name = "labels"
kind = "classification"
stages = ["cls"]

[[eval]]
name = "fit"
kind = "scaling"
stages = ["pretrain", "sft", "dpo"]
tokens = { pretrain = 1e6, sft = 1e6, dpo = 1e6 }

[[eval]]
name = "ppl\"""",
)
EVERY_KIND = EVERY_KIND.replace(
    '[tokenizer]\nkind = "char"',
    '[tokenizer]\nkind = "char"\nsources = ["books"]\nmask_token = "<|mask|>"',
)


def _planned(tmp_path, text, overrides=()):
    return plan_spec(load_spec(write_project(tmp_path, text), overrides), cache=StatCache())


def _declared(model, prefix=()) -> set[tuple[str, ...]]:
    """Every reference field a kind's model declares, as a path of aliases from the item
    (nested tables and arrays of tables included, indices left out)."""
    found = set()
    for name, f in model.model_fields.items():
        alias = f.alias or name
        mark = key_mark(model, name)
        if mark is not None and mark.role == "reference":
            found.add((*prefix, alias))
            continue
        for sub in _members(f.annotation):
            found |= _declared(sub, (*prefix, alias))
    return found


def test_every_reference_field_of_every_kind_is_written_in_the_guard_spec(tmp_path):
    """Field by field, not kind by kind: a reference field the guard spec never writes
    (nor omits, where omitting it stands for a role's sources) would go unchecked."""
    spec = load_spec(write_project(tmp_path, EVERY_KIND)).spec
    registry = default_registry()
    for table in TABLES:
        tag = "format" if table == "export" else "kind"
        for name, kind in registry.kinds(table).items():
            written = set()
            for item in getattr(spec, table):
                if getattr(item, tag) == name:
                    refs, omitted = walk(kind.model, item.model_dump(mode="json", by_alias=True))
                    written |= {tuple(p for p in r.path if isinstance(p, str)) for r in refs}
                    written |= {(o.field,) for o in omitted}
            assert _declared(kind.model) <= written, (table, name, _declared(kind.model) - written)


def test_every_reference_is_an_edge_whose_key_enters_the_node_key(tmp_path):
    planned = _planned(tmp_path, EVERY_KIND)
    spec, registry = load_spec(tmp_path / "spec.toml").spec, default_registry()
    checked = 0
    for table in TABLES:
        for item in getattr(spec, table):
            kind = registry.kind(table, getattr(item, "format" if table == "export" else "kind"))
            refs, omitted = walk(kind.model, item.model_dump(mode="json", by_alias=True))
            each = [r.name for r in refs if r.mark.each]
            for r in refs:
                node = node_name(table, item, r.name if r.mark.each else (each or [None])[0])
                inputs = planned.graph[node].inputs
                assert inputs.get(r.slot) == r.node, (node, r)
                preimage = planned.keys[node].preimage["inputs"]
                assert preimage[r.slot] == planned.keys[r.node].key, (node, r.slot)
                checked += 1
            for o in omitted:
                node = node_name(table, item, (each or [None])[0])
                inputs = planned.graph[node].inputs
                # an omitted reference stands for every source of its role
                named = {"pretrain": "books", "labeled": "labeled"}[o.mark.omitted]
                assert inputs[o.slot(named)] == f"tokenize:{named}", (node, o.field)
    tok = planned.graph["tokenizer"]
    assert tok.inputs == {"text:books": "source:books"}
    assert checked >= 20


@pytest.mark.parametrize(
    ("override", "changed"),
    [
        ("stage.dpo-ref.reference=sft", {"stage:dpo-ref", "export:onnx@dpo-ref"}),
        ("stage.student.teacher=sft", {"stage:student"}),
        ("stage.rl.rewards[1].stage=rm2", None),
        ("export.gguf@rl.stage=dpo", None),
        ("stage.pretrain.data=books", set()),  # the same as leaving it out
        ("eval.ppl.sources=chat", {"eval:ppl@pretrain", "eval:ppl@sft"}),
    ],
)
def test_changing_a_reference_changes_the_key(tmp_path, override, changed):
    text = EVERY_KIND + (
        '\n[[stage]]\nname = "rm2"\nkind = "reward"\nfrom = "pretrain"\ndata = "prefs"\n'
        "steps = 2\nglobal_batch = 4\n"
    )
    before = {n: k.key for n, k in _planned(tmp_path, text).keys.items()}
    if override.startswith("export.gguf@rl"):
        override = "export[1].stage=dpo"  # gguf@rl
    after_plan = _planned(tmp_path, text, [override])
    after = {n: k.key for n, k in after_plan.keys.items()}
    diff = {n for n in after if before.get(n) != after[n]}
    if changed is None:
        assert diff, override
    else:
        assert diff == changed


CYCLES = {
    "from": (
        '[[stage]]\nname = "a"\nkind = "sft"\nfrom = "b"\ndata = "chat"\nsteps = 1\nglobal_batch = 4\n'
        '[[stage]]\nname = "b"\nkind = "sft"\nfrom = "a"\ndata = "chat"\nsteps = 1\nglobal_batch = 4\n',
        "stages form a cycle: a -> b -> a",
        "stage[4].from",
    ),
    "reference": (
        '[[stage]]\nname = "a"\nkind = "dpo"\nfrom = "sft"\nreference = "b"\ndata = "prefs"\n'
        "steps = 1\nglobal_batch = 4\n"
        '[[stage]]\nname = "b"\nkind = "dpo"\nfrom = "sft"\nreference = "a"\ndata = "prefs"\n'
        "steps = 1\nglobal_batch = 4\n",
        "stages form a cycle: a -> b -> a",
        "stage[4].reference",
    ),
    "reward model": (
        '[[data.sources]]\nname = "prompts"\npath = "data/prefs.jsonl"\nrole = "prompts"\n'
        '[[stage]]\nname = "rm"\nkind = "reward"\nfrom = "rl"\ndata = "prefs"\n'
        "steps = 1\nglobal_batch = 4\n"
        '[[stage]]\nname = "rl"\nkind = "grpo"\nfrom = "sft"\ndata = "prompts"\nsteps = 1\n'
        'global_batch = 4\nrewards = [{ kind = "model", stage = "rm" }]\n',
        "stages form a cycle: rl -> rm -> rl",
        "stage[3].from",
    ),
}


@pytest.mark.parametrize("through", sorted(CYCLES))
def test_a_cycle_through_any_reference_is_a_located_error_at_once(tmp_path, through):
    extra, message, key = CYCLES[through]
    spec = write_project(tmp_path, FULL_SPEC + extra)
    started = time.monotonic()
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert time.monotonic() - started < 1.0
    found = [p for p in info.value.problems if "cycle" in p.message]
    assert len(found) == 1 and found[0].message == message, info.value.problems
    assert found[0].key == key and found[0].line is not None
    r = subprocess.run(
        [sys.executable, "-m", "llmbuild", "plan", str(spec)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_a_missing_reference_is_located(tmp_path):
    spec = write_project(
        tmp_path,
        FULL_SPEC
        + '[[stage]]\nname = "x"\nkind = "dpo"\nfrom = "sft"\nreference = "sfft"\ndata = "prefs"\n'
        "steps = 1\nglobal_batch = 4\n",
    )
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    (problem,) = info.value.problems
    assert problem.key == "stage[3].reference"
    assert problem.message == "no stage named 'sfft'; did you mean 'sft'?"
