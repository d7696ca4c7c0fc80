"""Pretraining on megatron-core (CPU): it learns, it is deterministic, it resumes exactly
after a real kill, and a parallelism change never rebuilds a trained stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.backends.conftest import artifact, kill_after_checkpoint, run_nodes
from tests.conftest import REPO, artifact_dirs

SHAKESPEARE = REPO / "examples" / "shakespeare" / "data" / "tinyshakespeare.txt"


def tiny_spec(root: Path, style: str = "gpt2", steps: int = 30, extra: str = "") -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "text.txt").write_text(SHAKESPEARE.read_text()[:60_000])
    preset = "gpt2-tiny" if style == "gpt2" else "llama-tiny"
    spec = root / "spec.toml"
    spec.write_text(f"""\
extends = ["@{preset}"]
[model]
name = "tiny"
seed = 3
[[data.sources]]
name = "text"
path = "data/text.txt"
separator = "\\n\\n"
[tokenizer]
kind = "char"
[architecture]
layers = 2
hidden = 64
heads = 4
kv_heads = {2 if style == "llama" else 4}
ffn_hidden = 128
seq_len = 32
[parallelism]
micro_batch = 4
[[stage]]
name = "pretrain"
kind = "pretrain"
steps = {steps}
global_batch = 8
lr = 3e-3
schedule = {{ kind = "cosine", warmup = 2, min_lr = 3e-4 }}
eval_every = 10
eval_batches = 2
checkpoint_every = 10
{extra}""")
    return spec


def _metrics(outcome, store, name="stage:pretrain") -> list[dict]:
    path = artifact(outcome, store, name) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_pretraining_learns_and_commits_weights(tmp_path, style):
    spec = tiny_spec(tmp_path, style)
    outcome = run_nodes(spec, tmp_path / "store", ("stage:pretrain",))
    assert outcome.ok, outcome.log
    out = artifact(outcome, tmp_path / "store", "stage:pretrain")
    rows = _metrics(outcome, tmp_path / "store")
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5
    assert "val_loss" in rows[9] and "val_loss" in rows[-1]
    from safetensors.torch import load_file

    weights = load_file(str(out / "model.safetensors"))
    config = json.loads((out / "config.json").read_text())
    assert config["padded_vocab_size"] % 128 == 0
    assert weights["embedding.word_embeddings.weight"].shape == (config["padded_vocab_size"], 64)
    record = outcome.results["stage:pretrain"].record
    assert record.metrics["steps"] == 30 and record.metrics["val_loss"] > 0
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(out / "tensorboard")).Reload()  # as `tensorboard` reads it
    losses = board.Scalars("pretrain/loss")
    assert [e.step for e in losses] == [r["step"] for r in rows]
    assert losses[-1].value == pytest.approx(rows[-1]["loss"], rel=1e-6)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # safetensors writes its files 0600: committed, they are as readable as the umask lets
    # any new file be, for the store's other users and an export's
    from llmbuild.store.fs import umask

    readable = 0o444 & ~umask()
    assert all(f.stat().st_mode & 0o444 == readable for f in out.rglob("*") if f.is_file())


def test_a_source_of_one_document_is_said_to_have_no_validation_split(tmp_path):
    """A text file without a separator is one document, which the split can put on one
    side only: the data node says so, the stage measures nothing held out (never its
    training data in place of validation data), and the perplexity eval names the fix."""
    ppl = '[[eval]]\nname = "ppl"\nkind = "perplexity"\nstages = ["pretrain"]\n'
    spec = tiny_spec(tmp_path, steps=4, extra=ppl)
    spec.write_text(spec.read_text().replace('separator = "\\n\\n"\n', ""))
    outcome = run_nodes(spec, tmp_path / "store")
    source = outcome.results["source:text"].record
    assert source.metrics["validation_documents"] == 0, source.metrics
    assert any("set `separator`" in n for n in source.notes), source.notes
    stage = outcome.results["stage:pretrain"].record
    assert not [k for k in stage.metrics if "val_" in k], stage.metrics
    note = next(n for n in stage.notes if "no validation data" in n)
    assert note.endswith("they hold one document: give a text source a separator that cuts "
                         "it into documents, and set [data.split] validation"), note  # fmt: skip
    failed = outcome.results["eval:ppl@pretrain"]
    assert failed.state == "failed" and "no validation documents" in failed.detail


def test_data_shorter_than_a_sequence_is_said(tmp_path):
    spec = tiny_spec(tmp_path, steps=2, extra="[data.split]\nvalidation = 0.0\n")
    (tmp_path / "data" / "text.txt").write_text("To be,\n\nor not to be.")
    outcome = run_nodes(spec, tmp_path / "store", ("stage:pretrain",))
    assert outcome.ok, outcome.log
    notes = outcome.results["stage:pretrain"].record.notes
    assert any("no more than one sequence (seq_len = 32)" in n for n in notes), notes
    # two documents, none held out: the advice is the split's, not a separator
    assert any("the split held none of their 2 documents out" in n for n in notes), notes


def test_a_tokenizer_larger_than_the_embedding_says_what_to_set():
    """A vocab_size set by hand (a sweep's axis, say) below the tokenizer's: the fix named
    is the field, not only a checkpoint's tokenizer."""
    from llmbuild.backends.megatron.vocab import model_vocab

    from llmbuild.spec.model import Architecture

    arch = Architecture.model_validate(
        {"layers": 2, "hidden": 32, "heads": 4, "seq_len": 16, "vocab_size": 10}
    )
    assert model_vocab(8, arch) == 10
    with pytest.raises(ValueError, match=r"only 10 rows \(architecture.vocab_size\): give it at "
                       "least 300"):  # fmt: skip
        model_vocab(300, arch)


@pytest.mark.parametrize(("kind", "said"), [("pretrain", True), ("distill", True),
                                            ("classify", False), ("sft", False)])  # fmt: skip
def test_short_data_is_said_of_packed_text_only(kind, said):
    """Three labeled texts of 9 tokens are three samples, not one sequence repeated."""
    from types import SimpleNamespace as NS

    from llmbuild.backends.megatron.run import _note_short_data

    notes = []
    tokens = NS(record=NS(name="tokenize:x", metrics={"train_tokens": 9}))
    stage = NS(kind=kind, steps=10, global_batch=2)
    ctx = NS(config=NS(stage=stage), inputs={"data:x": tokens}, note=notes.append)
    _note_short_data(ctx, 32)
    assert bool(notes) == said, notes
    # 10 steps of 2 x 32 tokens over 9,000 tokens: less than a pass; over 100: six
    notes.clear()
    tokens.record.metrics["train_tokens"] = 9_000
    _note_short_data(ctx, 32)
    assert not notes, notes
    tokens.record.metrics["train_tokens"] = 100
    _note_short_data(ctx, 32)
    assert notes == ([
        "the stage trains on 640 tokens, 6 passes over its 100 training tokens: past about 4 "
        "passes, repeated tokens teach less than as many new ones would (a scaling fit's D "
        "counts tokens seen)"
    ] if said else []), notes  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "loss", "said"),
    [("pretrain", 4.2, True), ("pretrain", 4.1, False), ("sft", 122.0, True), ("dpo", 9.0, False)],
)
def test_a_held_out_loss_no_better_than_uniform_is_noted(kind, loss, said):
    """A run that blew up short of a NaN (lr far too high, no clipping) ends with a finite
    held-out loss above ln V: it is said, for the next-token stages whose val_loss that is."""
    from types import SimpleNamespace as NS

    from llmbuild.backends.megatron.run import _note_no_better_than_uniform

    notes = []
    ctx = NS(metrics={"val_loss": loss}, note=notes.append)
    _note_no_better_than_uniform(ctx, kind, 65)  # ln 65 = 4.174
    assert bool(notes) == said, notes
    if said:
        assert notes[0].startswith(f"the held-out loss ({loss:.4g}) is no better than guessing ")
        assert "each of the 65 tokens alike (ln 65 = 4.174): training diverged" in notes[0]


def test_a_diverging_run_stops_with_a_clear_error_and_keeps_nothing(tmp_path):
    """A learning rate far too high: the loss stops being a number, the stage stops at
    that step and says what to change; no weights of NaN are committed."""
    spec = tiny_spec(tmp_path, steps=30)
    spec.write_text(spec.read_text().replace("lr = 3e-3", "lr = 1e4\ngrad_clip = 0.0"))
    outcome = run_nodes(spec, tmp_path / "store", ("stage:pretrain",))
    assert not outcome.ok
    detail = outcome.results["stage:pretrain"].detail
    assert "stage:pretrain: training diverged: the loss is nan at step" in detail, detail
    assert "Lower lr" in detail and "Traceback" not in detail
    assert detail.startswith("stage:pretrain: training diverged"), detail  # no class name
    assert not artifact_dirs(tmp_path / "store", "stage:pretrain")


def test_reproduce_computes_with_the_recorded_threads(tmp_path, monkeypatch, capsys):
    """On a machine with more cores, an unset cpus_per_rank would mean more threads and
    other sums, and an eval takes the machine's cores: reproduce trains and evaluates with
    the threads the build recorded, bit for bit."""
    import io
    import os

    from llmbuild.run.build import BuildOptions, PlainReporter
    from llmbuild.run.reproduce import reproduce
    from llmbuild.store.store import Store

    ppl = '[[eval]]\nname = "ppl"\nkind = "perplexity"\nstages = ["pretrain"]\n'
    spec = tiny_spec(tmp_path, steps=4, extra=ppl)
    outcome = run_nodes(spec, tmp_path / "store", ("eval:ppl@pretrain",))
    assert outcome.ok, outcome.log
    timings = outcome.results["stage:pretrain"].record.timings
    threads = timings["rank0.threads"]
    assert outcome.results["eval:ppl@pretrain"].record.timings["threads"] == os.cpu_count()
    phases = ("setup", "data", "optimizer", "steps", "save")  # where the time went
    assert sum(timings[f"rank0.{p}"] for p in phases) + timings["curves"] <= timings["seconds"]
    from llmbuild.cli import main

    assert main(["show", "stage:pretrain", "--store", str(tmp_path / "store")]) == 0
    shown = capsys.readouterr().out  # the phases and threads, in the text as in --json
    assert f"rank0.threads {threads:g}" in shown and "rank0.steps " in shown, shown
    monkeypatch.setattr(os, "cpu_count", lambda: 4 * threads)
    _, comparisons = reproduce(
        Store(str(tmp_path / "store")), outcome.spec_hash,
        BuildOptions(executor="inline", live=False), scratch=tmp_path / "again",
        reporter=PlainReporter(io.StringIO()),
    )  # fmt: skip
    verdicts = {c.node: c.verdict for c in comparisons}
    assert verdicts["stage:pretrain"] == verdicts["eval:ppl@pretrain"] == "identical"
    again = {r.name: r for r in Store(str(tmp_path / "again")).artifacts()}
    assert again["stage:pretrain"].timings["rank0.threads"] == threads
    assert again["eval:ppl@pretrain"].timings["threads"] == threads


def test_reproduce_keeps_an_unset_cpus_per_rank_that_gives_the_recorded_threads(
    tmp_path, monkeypatch
):
    """Four ranks on two cores, cpus_per_rank unset: a local cluster runs them a thread
    each. Reproduced here, the recorded one thread is what unset gives, so it stays unset
    (set to 1, the four ranks would ask for four CPUs of two); on a machine of more
    cores it is set, so that each rank computes with the recorded thread."""
    import os
    from types import SimpleNamespace

    from llmbuild.run.reproduce import _recorded_threads
    from llmbuild.spec.load import load_spec

    spec = tiny_spec(tmp_path, steps=4)
    layout = ("parallelism.tensor=2", "parallelism.data=2", "parallelism.micro_batch=4")
    loaded = load_spec(spec, layout).spec
    stage = SimpleNamespace(timings={"rank0.threads": 1})
    store = SimpleNamespace(lookup=lambda key, verify: SimpleNamespace(target=stage))
    build = {"nodes": {"stage:pretrain": {"key": "k"}}}
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert _recorded_threads(store, build, loaded).parallelism.cpus_per_rank is None
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert _recorded_threads(store, build, loaded).parallelism.cpus_per_rank == 1


def test_reproduce_trains_at_the_layout_the_stage_was_trained_at(tmp_path):
    """A layout is not in keys: a later build at tensor = 2 finds the stage cached and
    records its own spec under the same hash. The stage's own layout is kept in the build
    record, and reproduce trains at it (here: one rank inline, bit for bit)."""
    import io

    from llmbuild.run.build import BuildOptions, PlainReporter
    from llmbuild.run.reproduce import reproduce
    from llmbuild.store.store import Store

    spec = tiny_spec(tmp_path, steps=3)
    first = run_nodes(spec, tmp_path / "store", ("stage:pretrain",))
    assert first.ok, first.log
    again = run_nodes(spec, tmp_path / "store", ("stage:pretrain",), ["parallelism.tensor=2"])
    assert again.ok and again.spec_hash == first.spec_hash
    assert again.results["stage:pretrain"].state == "cached"
    recorded = Store(str(tmp_path / "store")).find_build(first.spec_hash)
    assert recorded["spec"]["parallelism"]["tensor"] == 2
    assert recorded["nodes"]["stage:pretrain"]["parallelism"]["tensor"] == 1
    _, comparisons = reproduce(
        Store(str(tmp_path / "store")), first.spec_hash,
        BuildOptions(executor="inline", live=False), scratch=tmp_path / "again",
        reporter=PlainReporter(io.StringIO()),
    )  # fmt: skip
    assert {c.node: c.verdict for c in comparisons}["stage:pretrain"] == "identical"


def test_two_builds_commit_identical_weights(tmp_path):
    spec = tiny_spec(tmp_path, steps=12)
    a = run_nodes(spec, tmp_path / "a", ("stage:pretrain",))
    b = run_nodes(spec, tmp_path / "b", ("stage:pretrain",))
    assert a.ok and b.ok
    assert (
        a.results["stage:pretrain"].record.output_digest
        == b.results["stage:pretrain"].record.output_digest
    )


def test_validating_during_training_changes_nothing_it_trains(tmp_path):
    """With dropout on, validating every 2 steps (eval_every, execution only) trains the
    same weights as validating once at the end, and measures with dropout off."""
    spec = tiny_spec(tmp_path, steps=6)
    dropout = ["architecture.dropout=0.1"]
    once = run_nodes(spec, tmp_path / "once", ("stage:pretrain",), dropout)
    often = run_nodes(
        spec, tmp_path / "often", ("stage:pretrain",), [*dropout, "stage.pretrain.eval_every=2"]
    )
    a, b = once.results["stage:pretrain"].record, often.results["stage:pretrain"].record
    assert a.key == b.key and a.output_digest == b.output_digest
    assert a.metrics["val_loss"] == b.metrics["val_loss"]
    metrics = next((tmp_path / "often").glob("artifacts/*/metrics.jsonl"))
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 4, 6]
    log = (tmp_path / "often" / "logs" / f"{b.key}.log").read_text()  # every log_every
    assert [ln.split(" step ")[1].split()[0] for ln in log.splitlines() if " step " in ln] == [
        "6/6"
    ]


def test_parallelism_change_keeps_the_trained_stage(tmp_path):
    spec = tiny_spec(tmp_path, steps=12)
    assert run_nodes(spec, tmp_path / "s", ("stage:pretrain",)).ok
    again = run_nodes(
        spec,
        tmp_path / "s",
        ("stage:pretrain",),
        ["parallelism.micro_batch=2", "parallelism.recompute='full'"],
    )
    assert again.results["stage:pretrain"].state == "cached"


def test_resume_after_a_real_kill_matches_the_uninterrupted_run(tmp_path, capsys):
    spec = tiny_spec(tmp_path, steps=20)
    whole = run_nodes(spec, tmp_path / "whole", ("stage:pretrain",))
    assert whole.ok
    store = tmp_path / "killed"
    marker = kill_after_checkpoint(spec, store, "stage:pretrain")
    assert json.loads(marker.read_text())["step"] == 10
    assert not artifact_dirs(store, "stage:pretrain")
    broken = tmp_path / "broken"  # the same kill, its checkpoint then cut short
    shutil.copytree(store, broken, symlinks=True)
    work = broken / marker.parent.relative_to(store)
    for path in work.glob("checkpoint-*.pt"):
        path.write_bytes(path.read_bytes()[:-100])
    moved = tmp_path / "moved"  # the same kill, then built at another layout
    shutil.copytree(store, moved, symlinks=True)
    resumed = run_nodes(spec, store, ("stage:pretrain",))
    assert resumed.ok, resumed.log
    assert "resume from step 10" in resumed.log
    a, b = _metrics(whole, tmp_path / "whole"), _metrics(resumed, store)
    assert [r["loss"] for r in a[10:]] == [r["loss"] for r in b[10:]]
    assert (
        whole.results["stage:pretrain"].record.output_digest
        == resumed.results["stage:pretrain"].record.output_digest
    )
    _another_layout_starts_over(spec, moved, capsys)
    over = run_nodes(spec, broken, ("stage:pretrain",))
    assert over.ok, over.log
    note = over.results["stage:pretrain"].record.notes
    assert any("checkpoint at step 10 cannot be read" in n for n in note), note
    assert "steps 1/20" in over.log  # from the first step
    assert (
        whole.results["stage:pretrain"].record.output_digest
        == over.results["stage:pretrain"].record.output_digest
    )


def _another_layout_starts_over(spec: Path, store: Path, capsys) -> None:
    """A checkpoint written at one layout is not resumed at another, whose ranks hold
    other slices: plan and build say training starts over, and it does."""
    from llmbuild.cli import main

    layout = ["parallelism.distributed_optimizer=true"]
    capsys.readouterr()
    assert main(["plan", str(spec), "--store", str(store), "--json", "--set", layout[0]]) == 0
    node = {n["name"]: n for n in json.loads(capsys.readouterr().out)["nodes"]}["stage:pretrain"]
    assert node["status"] == "build", node
    assert "the checkpoint at step 10 was written at " in node["reason"], node
    assert "distributed_optimizer = false" in node["reason"], node
    assert (
        "this layout (" in node["reason"]
        and "distributed_optimizer = true) starts over" in node["reason"]
    )
    over = run_nodes(spec, store, ("stage:pretrain",), layout)
    assert over.ok, over.log
    assert "resume from step" not in over.log and "steps 1/20" in over.log
    notes = over.results["stage:pretrain"].record.notes
    assert any("checkpoint at step 10 was written at" in n and "started over" in n for n in notes)


def test_generate_from_a_built_stage(tmp_path, capsys):
    from llmbuild.cli import main

    spec = tiny_spec(tmp_path, steps=12)
    store = str(tmp_path / "store")
    args = ["generate", str(spec), "--store", store, "--prompt", "ROMEO:", "--max-new-tokens", "20"]
    over = ["--set", "stage.pretrain.lr=0.01"]
    assert main([*args, *over]) == 2  # not built yet: a clear error, with the command
    error = capsys.readouterr().err
    assert "is not built with this spec yet" in error
    assert f"run `llmbuild build {spec} --set stage.pretrain.lr=0.01 --store {store}`" in error
    assert run_nodes(spec, tmp_path / "store", ("stage:pretrain",)).ok
    assert main([*args, "--temperature", "0"]) == 0
    greedy = capsys.readouterr().out
    assert greedy.startswith("ROMEO:") and len(greedy) > len("ROMEO:")
    assert main([*args, "--temperature", "0"]) == 0
    assert capsys.readouterr().out == greedy
    assert main([*args, "--temperature", "1.0", "--top-k", "1"]) == 0
    assert capsys.readouterr().out == greedy  # top-1 sampling is greedy
    assert main([*args, "--temperature", "1.0", "--top-p", "0.9", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")
    # characters the char vocabulary lacks: generated from all the same, and said
    args[args.index("ROMEO:")] = "ΩROMEO€:"
    assert main([*args, "--temperature", "0"]) == 0
    err = capsys.readouterr().err
    assert "note: 2 of the prompt's 8 tokens are the unknown token: its text has" in err, err
    assert "predicted from the last" not in err  # 8 + 20 tokens fit in the context
    args[args.index("20")] = "80"
    assert main([*args, "--temperature", "0"]) == 0
    err = capsys.readouterr().err
    assert "note: past 32 tokens, prompt and answer together, each new token is predicted" in err


def test_bf16_training_follows_fp32(tmp_path):
    spec = tiny_spec(tmp_path, steps=20)
    fp32 = run_nodes(spec, tmp_path / "a", ("stage:pretrain",))
    bf16 = run_nodes(spec, tmp_path / "b", ("stage:pretrain",), ["stage.pretrain.precision='bf16'"])
    assert fp32.ok and bf16.ok, bf16.log
    a, b = _metrics(fp32, tmp_path / "a"), _metrics(bf16, tmp_path / "b")
    assert b[-1]["loss"] < b[0]["loss"] - 0.5  # it learns
    assert abs(a[-1]["val_loss"] - b[-1]["val_loss"]) < 0.1  # and close to fp32
    assert a[0]["loss"] != b[0]["loss"]  # computed in another precision


@pytest.mark.parametrize("recompute", ["full", "selective"])
def test_recompute_gives_the_same_losses(tmp_path, recompute):
    spec = tiny_spec(tmp_path, steps=6)
    plain = run_nodes(spec, tmp_path / "a", ("stage:pretrain",))
    recomputed = run_nodes(
        spec, tmp_path / "b", ("stage:pretrain",), [f"parallelism.recompute='{recompute}'"]
    )
    assert plain.ok and recomputed.ok, recomputed.log
    assert recomputed.results["stage:pretrain"].record.key == (
        plain.results["stage:pretrain"].record.key
    )
    a, b = _metrics(plain, tmp_path / "a"), _metrics(recomputed, tmp_path / "b")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    from llmbuild.backends.megatron.cpu import apply_cpu_patches

    apply_cpu_patches()
    from llmbuild.backends.megatron.model import transformer_config

    from llmbuild.spec.load import load_spec

    arch = load_spec(spec).spec.architecture
    assert transformer_config(arch, recompute=recompute).recompute_granularity == recompute
    assert transformer_config(arch).recompute_granularity is None


def test_selective_recompute_reruns_only_attention_in_backward(tmp_path):
    """With ``selective``, megatron re-runs the core attention during backward (so its
    activations are not kept); the layer's other modules run once."""
    from llmbuild.backends.megatron.cpu import apply_cpu_patches

    apply_cpu_patches()
    import torch
    from llmbuild.backends.megatron.model import build_model, transformer_config
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from llmbuild.run.ranks import join_single_rank_group
    from llmbuild.spec.load import load_spec

    arch = load_spec(tiny_spec(tmp_path)).spec.architecture
    owned = join_single_rank_group()
    parallel_state.initialize_model_parallel(1, 1)
    try:
        model_parallel_cuda_manual_seed(0)
        calls = {}
        for recompute in ("none", "selective"):
            model = build_model(arch, 64, transformer_config(arch, recompute=recompute))
            counts = calls[recompute] = {"attention": 0, "mlp": 0}
            layer = model.decoder.layers[0]
            for name, module in (
                ("attention", layer.self_attention.core_attention),
                ("mlp", layer.mlp),
            ):
                module.register_forward_hook(
                    lambda *_, name=name, counts=counts: counts.update({name: counts[name] + 1})
                )
            tokens = torch.randint(0, 64, (2, arch.seq_len))
            positions = torch.arange(arch.seq_len).expand(2, -1)
            model(tokens, positions, None).sum().backward()
    finally:
        parallel_state.destroy_model_parallel()
        if owned:
            torch.distributed.destroy_process_group()
    assert calls["none"] == {"attention": 1, "mlp": 1}
    assert calls["selective"] == {"attention": 2, "mlp": 1}


def test_a_stage_of_another_style_takes_that_styles_defaults(tmp_path):
    """A stage's `style` change brings the new style's norm, activation, positions, biases
    and tying, as `[architecture]`'s style does: not a mix of both."""
    from llmbuild.backends.megatron.kinds import stage_architecture

    from llmbuild.spec.load import load_spec

    extra = (
        '[[stage]]\nname = "other"\nkind = "pretrain"\nsteps = 2\nglobal_batch = 8\nlr = 1e-3\n'
        'architecture = { style = "llama" }\n'
    )
    spec = load_spec(tiny_spec(tmp_path, "gpt2", extra=extra)).spec
    other = stage_architecture(spec, next(s for s in spec.stage if s.name == "other"))
    assert (other.style, other.norm, other.activation, other.position) == (
        "llama", "rmsnorm", "swiglu", "rope",
    )  # fmt: skip
    assert not other.bias and not other.tie_embeddings
    assert (other.layers, other.hidden, other.heads) == (2, 64, 4)  # the rest is kept


@pytest.mark.parametrize(
    ("change", "said"),
    [("layers = 1", "stage[1].architecture.layers: layers (1) differs from stage 'pretrain'"),
     ("norm_bias = false", "stage[1].architecture.norm_bias: norm_bias (False) differs"),
     ('style = "llama"', "stage[1].architecture.style: style ('llama') differs")],
)  # fmt: skip
def test_a_stage_from_another_keeps_the_shape_of_its_weights(tmp_path, change, said):
    from llmbuild.errors import SpecError
    from llmbuild.spec.load import load_spec

    extra = (
        '[[stage]]\nname = "more"\nkind = "pretrain"\nfrom = "pretrain"\nsteps = 2\n'
        f"global_batch = 8\nlr = 1e-3\narchitecture = {{ {change} }}\n"
    )
    with pytest.raises(SpecError) as e:
        load_spec(tiny_spec(tmp_path, "gpt2", extra=extra))
    assert said in str(e.value) and "whose weights this stage starts from" in str(e.value)
    # what leaves the weights' layout alone is fine
    load_spec(tiny_spec(tmp_path, "gpt2", extra=extra.replace(change, "dropout = 0.1")))


def test_full_recomputation_where_it_gives_no_gradient_is_refused(tmp_path):
    from llmbuild.errors import SpecError
    from llmbuild.spec.load import load_spec

    spec = tiny_spec(tmp_path, "gpt2")
    with pytest.raises(SpecError) as e:
        load_spec(spec, ["parallelism.recompute=full", "stage.pretrain.precision=bf16"])
    said = "parallelism.recompute: recompute = 'full' with precision = 'bf16' (stage 'pretrain')"
    assert said in str(e.value)
    load_spec(spec, ["parallelism.recompute=full"])  # fp32: fine
    load_spec(spec, ["parallelism.recompute=selective", "stage.pretrain.precision=bf16"])
