"""Distillation on megatron-core: a small student trained against a frozen teacher beats
the same student trained from scratch for the same steps on the same data, resumes
exactly after a kill, and a changed teacher retrains the student and nothing else."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from tests.backends.conftest import artifact, kill_after_checkpoint, run_nodes
from tests.backends.test_megatron import tiny_spec
from tests.conftest import artifact_dirs, private_copy, suite_store

# The teacher is the tiny spec's 2 x 64 "pretrain"; both students are 1 x 32.
STUDENTS = """
[[stage]]
name = "student"
kind = "distill"
teacher = "pretrain"
architecture = {{ layers = 1, hidden = 32 }}
steps = {steps}
global_batch = 8
lr = 3e-3
schedule = {{ kind = "cosine", warmup = 2, min_lr = 3e-4 }}
alpha = {alpha}
temperature = 1.0
eval_every = 20
eval_batches = 4
checkpoint_every = 10

[[stage]]
name = "scratch"
kind = "pretrain"
architecture = {{ layers = 1, hidden = 32 }}
steps = {steps}
global_batch = 8
lr = 3e-3
schedule = {{ kind = "cosine", warmup = 2, min_lr = 3e-4 }}
eval_every = 20
eval_batches = 4
"""

TEACHER_STEPS, STUDENT_STEPS = 400, 200


def student_spec(root, steps=STUDENT_STEPS, alpha=0.9, extra=""):
    return tiny_spec(
        root,
        steps=TEACHER_STEPS,
        extra=STUDENTS.format(steps=steps, alpha=alpha) + extra,
    )


def rows(outcome, store, node):
    path = artifact(outcome, store, node) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    spec = student_spec(root)
    store = suite_store(tmp_path_factory)
    outcome = run_nodes(spec, store, ("stage:student", "stage:scratch"))
    assert outcome.ok, outcome.log
    return spec, store, outcome


def test_the_distilled_student_beats_the_same_student_from_scratch(built):
    _, store, outcome = built
    metrics = {n: outcome.results[f"stage:{n}"].record.metrics for n in ("student", "scratch")}
    teacher = outcome.results["stage:pretrain"].record.metrics["val_loss"]
    distilled, scratch = metrics["student"]["val_loss"], metrics["scratch"]["val_loss"]
    print(f"held-out loss: teacher {teacher:.4f}, distilled {distilled:.4f}, scratch {scratch:.4f}")
    assert distilled < scratch - 0.03, (distilled, scratch)
    last = rows(outcome, store, "stage:student")[-1]
    assert last["kl"] > 0 and last["ce"] > 0
    # status's train loss is the student's own cross-entropy, the measure of its val loss
    from llmbuild.cli.status_cmd import stage_table

    records = {n: r.record for n, r in outcome.results.items()}
    shown = stage_table(records)["student"]
    assert shown["loss"] == metrics["student"]["ce"] != metrics["student"]["loss"]
    assert not any(
        "more parameters than" in n for n in outcome.results["stage:student"].record.notes
    )
    # The student is the size its spec asked for.
    from safetensors import safe_open

    path = artifact(outcome, store, "stage:student") / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118
    assert not any(".layers.1." in k for k in shapes)
    assert shapes["embedding.word_embeddings.weight"][1] == 32
    # status counts each stage's weights: the student's are its file's, fewer than its teacher's
    config = json.loads((path.parent / "config.json").read_text())
    padding = config["padded_vocab_size"] - config["vocab_size"]  # rows for no token
    unused = padding * 32 * sum(k.startswith(("embedding.word", "output_layer")) for k in shapes)
    assert shown["parameters"] == sum(math.prod(s) for s in shapes.values()) - unused
    assert shown["parameters"] < stage_table(records)["pretrain"]["parameters"]


def test_distill_resumes_exactly_after_a_kill(built, tmp_path):
    spec, store, outcome = built
    copy = private_copy(store, tmp_path / "store")
    node = "stage:student"
    for d in artifact_dirs(copy, node):
        shutil.rmtree(d)
    marker = kill_after_checkpoint(spec, copy, node)
    assert json.loads(marker.read_text())["step"] == 10
    resumed = run_nodes(spec, copy, (node,))
    assert resumed.ok, resumed.log
    assert "resume from step 10" in resumed.log
    assert resumed.results["stage:pretrain"].state == "cached"
    a, b = rows(outcome, store, node), rows(resumed, copy, node)
    assert [r["loss"] for r in a[10:]] == [r["loss"] for r in b[10:]]
    assert outcome.results[node].record.output_digest == resumed.results[node].record.output_digest


@pytest.mark.parametrize(
    ("field", "said"),
    [  # one vocabulary is what a student learns the teacher's distribution over
        ("vocab_multiple = 64", ("stage[1].architecture.vocab_multiple", "teacher 'pretrain'")),
        # a GPT-2-style teacher has no position past its seq_len: a longer student's
        # sequences would fail inside the teacher's forward
        ("seq_len = 4096", ("stage[1].architecture.seq_len: the student's seq_len (4096) is "
                            "longer", "whose learned positions end there")),
    ],
)  # fmt: skip
def test_a_student_its_teacher_cannot_teach_is_a_located_error(tmp_path, field, said):
    from llmbuild.errors import SpecError
    from llmbuild.plan import StatCache, plan_spec
    from llmbuild.spec.load import load_spec

    spec = student_spec(tmp_path)
    spec.write_text(
        spec.read_text().replace(
            "architecture = { layers = 1, hidden = 32 }\nsteps",
            f"architecture = {{ layers = 1, hidden = 32, {field} }}\nsteps",
            1,
        )
    )
    with pytest.raises(SpecError) as e:
        plan_spec(load_spec(spec), cache=StatCache())
    assert all(part in str(e.value) for part in said), str(e.value)


@pytest.mark.parametrize(
    "shape, message",
    [
        ("hidden = 30", "heads (4) must divide hidden (30)"),
        ("heads = 4, kv_heads = 3", "kv_heads (3) must divide heads (4)"),
    ],
)
def test_a_student_shape_that_does_not_divide_says_which(tmp_path, shape, message):
    from llmbuild.errors import SpecError
    from llmbuild.plan import StatCache, plan_spec
    from llmbuild.spec.load import load_spec

    spec = student_spec(tmp_path)
    spec.write_text(
        spec.read_text().replace(
            "architecture = { layers = 1, hidden = 32 }\nsteps",
            f"architecture = {{ layers = 1, {shape} }}\nsteps",
            1,
        )
    )
    with pytest.raises(SpecError) as e:
        plan_spec(load_spec(spec), cache=StatCache())
    assert f"stage[1].architecture: {message}" in str(e.value)
    assert str(e.value).count("must divide") == 1


BIGGER = """
[[stage]]
name = "bigger"
kind = "distill"
teacher = "pretrain"
architecture = { layers = 3 }
steps = 2
global_batch = 8
lr = 1e-3
"""


def test_a_student_larger_than_its_teacher_is_noted(built):
    """Allowed (a teacher's logits can guide any model) but rarely meant: said."""
    spec, store, _ = built
    root = spec.parent / "bigger"
    root.mkdir(exist_ok=True)
    outcome = run_nodes(student_spec(root, extra=BIGGER), store, ("stage:bigger",))
    assert outcome.ok, outcome.log
    notes = outcome.results["stage:bigger"].record.notes
    assert any("the student has more parameters than its teacher stage:pretrain" in n
               for n in notes), notes  # fmt: skip


def test_the_kl_terms_by_hand():
    import torch
    from llmbuild.backends.megatron.objectives import distillation_kl

    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 3, 10, generator=gen), torch.randn(2, 3, 10, generator=gen)
    p, q = torch.softmax(teacher / 2, -1), torch.softmax(student / 2, -1)
    forward = (p * (p.log() - q.log())).sum(-1)
    reverse = (q * (q.log() - p.log())).sum(-1)
    assert torch.allclose(distillation_kl(student, teacher, 2.0, "forward", None), forward)
    assert torch.allclose(distillation_kl(student, teacher, 2.0, "reverse", None), reverse)
    # top_k: both renormalised over the teacher's k most likely tokens.
    idx = teacher.topk(4, -1).indices
    pk = torch.softmax(teacher.gather(-1, idx), -1)
    qk = torch.softmax(student.gather(-1, idx), -1)
    topk = (pk * (pk.log() - qk.log())).sum(-1)
    assert torch.allclose(distillation_kl(student, teacher, 1.0, "forward", 4), topk)
    assert (distillation_kl(teacher, teacher, 1.0, "reverse", None).abs() < 1e-6).all()


def test_a_top_k_of_one_token_is_a_located_error(tmp_path):
    from llmbuild.errors import SpecError
    from llmbuild.spec.load import load_spec

    with pytest.raises(SpecError) as e:
        load_spec(student_spec(tmp_path), ["stage.student.top_k=1"])
    assert "stage.student.top_k=1: stage[1].top_k: top_k = 1 leaves one token" in str(e.value)
    assert "the KL is 0 and teaches nothing" in str(e.value)
    load_spec(student_spec(tmp_path), ["stage.student.top_k=2"])


def test_a_temperature_too_low_to_teach_is_a_located_error(tmp_path):
    """The T^2 * KL term's gradient is T (q_T - p_T): at T = 0.01 a hundredth of
    cross-entropy's at most."""
    import torch
    from llmbuild.backends.megatron.objectives import distillation_kl

    from llmbuild.errors import SpecError
    from llmbuild.spec.load import load_spec

    teacher = torch.randn(2, 3, 16)
    for t in (0.01, 1.0):
        student = torch.randn(2, 3, 16, requires_grad=True)
        (t * t * distillation_kl(student, teacher, t, "forward", None)).sum().backward()
        size = student.grad.abs().sum(-1).max().item()
        assert size <= 2 * t + 1e-6 and (t < 1 or size > 0.1), (t, size)
    with pytest.raises(SpecError) as e:
        load_spec(student_spec(tmp_path), ["stage.student.temperature=0.01"])
    assert "stage[1].temperature: temperature = 0.01: the gradient of T^2 * KL" in str(e.value)
    load_spec(student_spec(tmp_path), ["stage.student.temperature=0.1"])


def test_a_layout_the_spec_cannot_split_is_said_once_not_per_stage(tmp_path):
    from llmbuild.errors import SpecError
    from llmbuild.spec.load import load_spec

    with pytest.raises(SpecError) as e:
        load_spec(student_spec(tmp_path), ["parallelism.tensor=3"])
    assert "tensor (3) must divide architecture.heads (4)" in str(e.value)
    assert str(e.value).count("tensor (3) must divide") == 1, str(e.value)
    # A stage whose own changes the layout cannot split is still said, with its numbers.
    spec = student_spec(tmp_path)
    spec.write_text(
        spec.read_text().replace(
            "{ layers = 1, hidden = 32 }", "{ layers = 1, hidden = 48, heads = 3, kv_heads = 3 }", 1
        )
    )
    with pytest.raises(SpecError) as e:
        load_spec(spec, ["parallelism.tensor=2"])
    assert "stage[1].architecture: tensor (2) must divide heads (3) and kv_heads (3)" in str(
        e.value
    )
