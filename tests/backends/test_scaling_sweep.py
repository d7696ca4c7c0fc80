"""A sweep declared once expands into its points and a fit over them, sharing one set of
data, tokenizer and tokenize nodes; a new point rebuilds only itself and the fit, a
removed one keeps the others cached; bad sweeps are located errors."""

from __future__ import annotations

import pytest

from llmbuild.errors import SpecError
from llmbuild.plan import StatCache, plan_spec
from llmbuild.spec.load import load_spec
from tests.conftest import write_project

SWEEP = """\
extends = ["@gpt2-tiny"]

[model]
name = "sweep"

[[data.sources]]
name = "books"
path = "data/books/*.txt"
format = "text"

[tokenizer]
kind = "char"

[parallelism]
micro_batch = 2

[[stage]]
name = "pretrain"
kind = "pretrain"
steps = 20
global_batch = 4
lr = 1e-3

[[stage]]
name = "grid"
kind = "sweep"
base = "pretrain"
axes = {{ hidden = {hidden}, layers = [2] }}
budgets = [1e9, 3e9]
fit_budget = 1e12
"""


def _plan(tmp_path, hidden="[16, 32, 64]"):
    spec = write_project(tmp_path, SWEEP.format(hidden=hidden))
    return load_spec(spec), plan_spec(load_spec(spec), cache=StatCache())


def test_a_sweep_expands_into_its_points_and_a_fit(tmp_path):
    resolved, planned = _plan(tmp_path)
    stages = {s.name: s for s in resolved.spec.stage}
    points = [n for n in stages if n.startswith("grid-")]
    assert len(points) == 6 and "grid" not in stages  # the sweep itself makes no node
    assert "grid-c1e9-hidden16-layers2" in points and "grid-c3e9-hidden64-layers2" in points
    small, large = stages["grid-c1e9-hidden16-layers2"], stages["grid-c1e9-hidden64-layers2"]
    assert small.architecture.hidden == 16 and small.architecture.ffn_hidden == 64
    assert small.steps > large.steps  # one budget: the smaller model sees more tokens
    assert stages["grid-c3e9-hidden16-layers2"].steps == pytest.approx(3 * small.steps, rel=0.01)
    fit = planned.graph["eval:grid"]
    assert fit.backend == "scaling"
    assert sorted(fit.inputs.values()) == sorted(f"stage:{p}" for p in points)
    suite = resolved.spec.eval[0]
    assert suite.budgets["grid-c1e9-hidden16-layers2"] == 1e9 and suite.fit_budget == 1e12
    # Every point shares the data, tokenizer and tokenize nodes.
    for p in points:
        assert planned.graph[f"stage:{p}"].inputs["tokenizer"] == "tokenizer"
        assert planned.graph[f"stage:{p}"].inputs["data:books"] == "tokenize:books"
    arch = planned.keys["stage:grid-c1e9-hidden32-layers2"].preimage["config"]["architecture"]
    assert arch["hidden"] == 32 and arch["layers"] == 2
    assert resolved.origin(("stage", 1, "steps")).source == "sweep 'grid'"


def test_points_keep_the_base_stages_own_architecture(tmp_path):
    """A base stage's own `architecture` is part of what each point copies: the point
    varies the axes' fields and keeps the others, and its budget's steps are those of
    the shape it trains."""
    text = SWEEP.format(hidden="[16, 32]").replace(
        "lr = 1e-3\n", "lr = 1e-3\narchitecture = { layers = 3, seq_len = 32 }\n", 1
    )
    text = text.replace(", layers = [2] }", " }")
    stages = {s.name: s for s in load_spec(write_project(tmp_path, text)).spec.stage}
    small = stages["grid-c1e9-hidden16"]
    assert small.architecture.layers == 3 and small.architecture.seq_len == 32
    assert small.architecture.hidden == 16
    deeper = text.replace("layers = 3", "layers = 6")
    again = {s.name: s for s in load_spec(write_project(tmp_path, deeper)).spec.stage}
    assert again["grid-c1e9-hidden16"].steps < small.steps  # a deeper point: fewer steps


def test_a_second_sweeps_problem_is_located_at_its_own_line(tmp_path):
    """A first sweep that expands fine leaves the array before a second one's problem is
    located: the problem is said at the second sweep's line, not as the first's."""
    second = (
        '\n[[stage]]\nname = "other"\nkind = "sweep"\nbase = "pretrain"\n'
        "axes = { hidden = [16, 30] }\n"
    )
    text = SWEEP.format(hidden="[16, 32]") + second
    with pytest.raises(SpecError) as info:
        load_spec(write_project(tmp_path, text))
    (problem,) = info.value.problems
    line = text.splitlines().index("axes = { hidden = [16, 30] }") + 1
    assert "heads (4) must divide hidden (30)" in problem.message
    assert problem.file.endswith("spec.toml") and problem.line == line, problem
    assert "sweep 'grid'" not in str(info.value)


def test_a_new_point_rebuilds_only_itself_and_the_fit(tmp_path):
    before = {n: k.key for n, k in _plan(tmp_path)[1].keys.items()}
    after = {n: k.key for n, k in _plan(tmp_path, "[16, 32, 64, 128]")[1].keys.items()}
    new = set(after) - set(before)
    assert new == {"stage:grid-c1e9-hidden128-layers2", "stage:grid-c3e9-hidden128-layers2"}
    changed = {n for n in before if n in after and before[n] != after[n]}
    assert changed == {"eval:grid"}
    fewer = {n: k.key for n, k in _plan(tmp_path, "[16, 32]")[1].keys.items()}
    assert all(before[n] == fewer[n] for n in fewer if n != "eval:grid")


@pytest.mark.parametrize(
    ("edit", "message", "key"),
    [
        ('base = "pretrain"', "no pretrain stage from scratch named 'pretrian'", "stage[1].base"),
        ("layers = [2]", "unknown axis 'depth'", "stage[1].axes"),
        (
            'style = ["llama"]',
            "axis 'style' lists 'llama': a sweep varies numbers",
            "stage[1].axes",
        ),
        ("fit_budget = 1e12", "steps is not an axis", "stage[1].axes"),
        (
            "hidden = [16, 32]",
            "not a valid architecture: heads (4) must divide hidden (",
            "stage[1].axes",
        ),
        ("budgets = [1e9, 3e9]", "the budget 1e+03 buys no training step", "stage[1].budgets"),
        ("hidden = [16, 16]", "axis 'hidden' lists 16 twice", "stage[1].axes"),
        ("hidden = []", "must have at least 1 item", "stage[1].axes.hidden"),
        ("budgets = [1e9, 1e9]", "the budget 1e+09 is listed twice", "stage[1].budgets"),
        ("budgets = [-1e9, 3e9]", "must be > 0", "stage[1].budgets[0]"),
        ("budgets = [1e30]", "more than a stage's 1e+09: lower the budget", "stage[1].budgets"),
        (
            "steps = [0, 10]",
            "the steps axis lists 0: a stage trains a whole",
            "stage[1].axes.steps",
        ),
        (
            "steps = [2.5]",
            "the steps axis lists 2.5: a stage trains a whole",
            "stage[1].axes.steps",
        ),
        (
            "a stage named as a point",
            "the point 'grid-c1e9-hidden16-layers2' has the name of "
            "another stage: rename that stage",
            "stage[1].name",
        ),
    ],
)
def test_bad_sweeps_are_located(tmp_path, edit, message, key):
    text = SWEEP.format(hidden="[16, 32]")
    text = {
        'base = "pretrain"': text.replace('base = "pretrain"', 'base = "pretrian"'),
        "layers = [2]": text.replace("layers = [2]", "depth = [2]"),
        'style = ["llama"]': text.replace("layers = [2]", 'style = ["llama"]'),
        "fit_budget = 1e12": text.replace("layers = [2] }", "layers = [2], steps = [5] }"),
        "hidden = [16, 32]": text.replace("hidden = [16, 32]", "hidden = [16, 30]"),
        "budgets = [1e9, 3e9]": text.replace("budgets = [1e9, 3e9]", "budgets = [1e3, 3e9]"),
        "hidden = [16, 16]": text.replace("hidden = [16, 32]", "hidden = [16, 16]"),
        "hidden = []": text.replace("hidden = [16, 32]", "hidden = []"),
        "budgets = [1e9, 1e9]": text.replace("budgets = [1e9, 3e9]", "budgets = [1e9, 1e9]"),
        "budgets = [-1e9, 3e9]": text.replace("budgets = [1e9, 3e9]", "budgets = [-1e9, 3e9]"),
        "budgets = [1e30]": text.replace("budgets = [1e9, 3e9]", "budgets = [1e30]"),
        "steps = [0, 10]": text.replace("budgets = [1e9, 3e9]\n", "").replace(
            "layers = [2] }", "layers = [2], steps = [0, 10] }"
        ),
        "steps = [2.5]": text.replace("budgets = [1e9, 3e9]\n", "").replace(
            "layers = [2] }", "layers = [2], steps = [2.5] }"
        ),
        "a stage named as a point": text
        + '\n[[stage]]\nname = "grid-c1e9-hidden16-layers2"\nkind = "pretrain"\nsteps = 2\n'
        + "global_batch = 4\nlr = 1e-3\n",
    }[edit]
    with pytest.raises(SpecError) as info:
        load_spec(write_project(tmp_path, text))
    problem = info.value.problems[0]  # a budget too small for two points: said for each
    assert message in problem.message and problem.key == key and problem.line is not None
    # said at the sweep alone, not again at the stages and fit it would have made
    assert all(p.key.startswith("stage[1]") for p in info.value.problems), info.value.problems


def test_a_hand_written_fit_names_every_points_tokens(tmp_path):
    """A `scaling` eval written by hand (not by a sweep) gives each stage's training
    tokens: one missing, or one naming no stage of it, is a located error at validate,
    not a failed build."""
    fit = '\n[[eval]]\nname = "fit"\nkind = "scaling"\nstages = ["pretrain"]\n'
    text = SWEEP.format(hidden="[16, 32]") + fit
    with pytest.raises(SpecError) as info:
        load_spec(write_project(tmp_path, text))
    (problem,) = info.value.problems
    assert problem.key == "eval[0].tokens" and "no training tokens for 'pretrain'" in str(problem)
    text += "tokens = { pretrain = 8e4, pretrian = 8e4 }\n"
    with pytest.raises(SpecError) as info:
        load_spec(write_project(tmp_path, text))
    (problem,) = info.value.problems
    assert problem.key == "eval[0].tokens" and "names 'pretrian', not among" in str(problem)
    load_spec(write_project(tmp_path, text.replace(", pretrian = 8e4", "")))
