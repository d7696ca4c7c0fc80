"""Encoders (``style = "bert"``) on megatron-core (CPU): masked-LM pretraining, a pooled
classifier on top, BERT imported from a tiny transformers checkpoint, and every export
loaded in its library (``BertForMaskedLM``, ``BertForSequenceClassification``, ONNX)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from llmbuild.errors import SpecError
from llmbuild.spec.load import load_spec
from tests.backends.conftest import artifact, run_nodes
from tests.backends.posttrain_spec import _generator
from tests.backends.test_classify import write_sums
from tests.conftest import suite_store

SPEC = """\
[model]
name = "encoder"
seed = 5

[architecture]
style = "bert"
layers = 2
hidden = 64
heads = 4
ffn_hidden = 128
seq_len = 32

[[data.sources]]
name = "equations"
path = "data/equations.txt"
separator = "\\n"

[[data.sources]]
name = "sums"
path = "data/sums.jsonl"
role = "labeled"

[data.clean]
dedup = "none"

[data.split]
validation = 0.1

[tokenizer]
kind = "char"
sources = ["equations"]
mask_token = "<|mask|>"

[parallelism]
micro_batch = 8

[[stage]]
name = "mlm"
kind = "mlm"
steps = 500
global_batch = 16
lr = 2e-3
eval_batches = 4
checkpoint_every = 50

[[stage]]
name = "cls"
kind = "classify"
from = "mlm"
data = "sums"
steps = 150
global_batch = 16
lr = 1e-3
eval_batches = 4

[[eval]]
name = "labels"
kind = "classification"
stages = ["cls"]
baseline = true

[[export]]
format = "hf"
stage = "mlm"

[[export]]
format = "hf"
stage = "cls"

[[export]]
format = "onnx"
stage = "cls"
"""


def encoder_spec(root: Path, text: str = SPEC) -> Path:
    """Two-digit sums as text to pretrain on (``07+38=45``), and labeled sums (is the sum
    50 or more?) to classify."""
    gen = _generator()
    gen.SIZES.update(equations=1500, chat=10, preferences=10, prompts=10, heldout=10)
    gen.generate(root / "data", seed=1)
    write_sums(root / "data" / "sums.jsonl")
    spec = root / "spec.toml"
    spec.write_text(text)
    return spec


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoder")
    spec = encoder_spec(root)
    store = suite_store(tmp_path_factory)
    outcome = run_nodes(spec, store)
    assert outcome.ok, outcome.log
    return spec, store, outcome


def _metrics(outcome, node: str) -> dict:
    return outcome.results[node].record.metrics


def test_masked_lm_loss_falls_and_beats_the_unigram_baseline(built):
    _, _, outcome = built
    m = _metrics(outcome, "stage:mlm")
    assert m["val_loss"] < m["initial_val_loss"] - 1.0  # from ln(vocabulary) at the start
    # Digits of a sum are predictable from the rest of the equation; a model that always
    # says the most frequent character gets few of them.
    assert m["val_accuracy"] > m["unigram_accuracy"] + 0.1, m


def test_a_classifier_from_the_masked_lm_learns_the_labels(built):
    _, _, outcome = built
    m = _metrics(outcome, "stage:cls")
    majority = 1 - 0.3650793664985233  # the validation split's larger class
    assert m["val_accuracy"] > majority + 0.15, m
    ev = _metrics(outcome, "eval:labels@cls")
    assert ev["sums.accuracy"] > majority + 0.15


def test_the_eval_figures_are_scikit_learns(built):
    from sklearn.metrics import accuracy_score, f1_score

    _, store, outcome = built
    rows = [
        json.loads(line)
        for line in (artifact(outcome, store, "eval:labels@cls") / "predictions.jsonl")
        .read_text()
        .splitlines()
    ]
    truth, predicted = [r["label"] for r in rows], [r["predicted"] for r in rows]
    ev = _metrics(outcome, "eval:labels@cls")
    assert ev["sums.accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert ev["sums.macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    # TF-IDF's words here are whole equations, each seen once: it has nothing to go on.
    assert 0 <= ev["sums.baseline_accuracy"] <= 1
    results = (artifact(outcome, store, "eval:labels@cls") / "results.md").read_text()
    assert f"| sums, TF-IDF + logistic regression | {len(rows)} |" in results


def test_the_exports_are_bert_in_transformers_and_onnx(built):
    """Each export node proved its logits against ours; here the exported classifier,
    used as transformers users do (its own tokenizer adds [CLS] and [SEP]), gives the
    eval's predictions."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, store, outcome = built
    mlm, cls, onnx = (
        _metrics(outcome, n) for n in ("export:hf@mlm", "export:hf@cls", "export:onnx@cls")
    )
    assert mlm["architecture"] == "BertForMaskedLM" and mlm["max_logit_diff"] < 1e-4
    assert cls["architecture"] == "BertForSequenceClassification"
    assert cls["max_logit_diff"] < 1e-4 and onnx["max_logit_diff"] < 1e-3
    out = artifact(outcome, store, "export:hf@cls")
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    rows = [
        json.loads(line)
        for line in (artifact(outcome, store, "eval:labels@cls") / "predictions.jsonl")
        .read_text()
        .splitlines()
    ]
    texts = [
        json.loads(line)["text"]
        for line in (Path(built[0]).parent / "data" / "sums.jsonl").read_text().splitlines()
    ]
    first = tok(texts[0])["input_ids"]
    assert first[0] == tok.convert_tokens_to_ids("<|bos|>") and first[-1] == tok.eos_token_id
    # The eval's texts are the validation split; find them by their probabilities.
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1).numpy()
    labels = model.config.id2label
    for r in rows:  # each validation text is one of the file's: the nearest probabilities
        distance = np.abs(probs - np.array(r["probabilities"])).sum(-1)
        nearest = int(distance.argmin())
        assert distance[nearest] < 1e-4
        assert labels[int(probs[nearest].argmax())] == r["predicted"]


def test_masked_lm_resumes_exactly_after_a_kill(built, tmp_path):
    from tests.backends.conftest import kill_after_checkpoint
    from tests.conftest import artifact_dirs, private_copy

    spec, kept, outcome = built
    store = private_copy(kept, tmp_path / "store")
    for d in artifact_dirs(store, "stage:mlm"):
        shutil.rmtree(d)
    marker = kill_after_checkpoint(spec, store, "stage:mlm")
    assert json.loads(marker.read_text())["step"] == 50
    resumed = run_nodes(spec, store, ("stage:mlm",))
    assert resumed.ok, resumed.log
    assert "resume from step 50" in resumed.log
    done = outcome.results["stage:mlm"].record.output_digest
    assert done == resumed.results["stage:mlm"].record.output_digest


def test_bert_masking_follows_the_80_10_10_rule_and_whole_words():
    from llmbuild.backends.megatron.mlm import Masking

    stage = {"mask_rate": 0.15, "mask_token_rate": 0.8, "random_token_rate": 0.1}
    masking = Masking({**stage, "whole_words": False}, 99, 90, {0, 1}, seed=3)
    tokens = np.arange(2, 82) % 88 + 2
    counts = {"mask": 0, "random": 0, "kept": 0}
    for i in range(400):
        out, mask = masking.apply(tokens, i, 0)
        assert mask.sum() == round(0.15 * 80)
        chosen = mask > 0
        assert (out[~chosen] == tokens[~chosen]).all()
        counts["mask"] += int((out[chosen] == 99).sum())
        counts["kept"] += int((out[chosen] == tokens[chosen]).sum())
        counts["random"] += int(((out[chosen] != 99) & (out[chosen] != tokens[chosen])).sum())
    total = sum(counts.values())
    assert abs(counts["mask"] / total - 0.8) < 0.02
    assert abs(counts["kept"] / total - 0.1) < 0.02  # a random token may be the same one
    again, _ = masking.apply(tokens, 7, 0)
    assert (again == masking.apply(tokens, 7, 0)[0]).all()  # the index decides
    # Special tokens are never chosen.
    with_specials = np.array([0, 5, 6, 1, 7, 8] * 5)
    _, mask = masking.apply(with_specials, 0, 0)
    assert mask[np.isin(with_specials, [0, 1])].sum() == 0
    # Whole words: "##" pieces go with their word.
    pieces = ["[PAD]", "[SEP]", "play", "##ing", "the", "##s", ",", "go"]
    whole = Masking({**stage, "whole_words": True}, 99, 8, {0, 1}, seed=3, pieces=pieces)
    words = np.array([2, 3, 4, 5, 6, 7] * 6)
    for i in range(50):
        _, mask = whole.apply(words, i, 0)
        pairs = mask.reshape(-1, 6)
        assert (pairs[:, 0] == pairs[:, 1]).all() and (pairs[:, 2] == pairs[:, 3]).all()


IMPORTED = """
[architecture]
seq_len = 32

[[data.sources]]
name = "sums"
path = "data/sums.jsonl"
role = "labeled"

[data.split]
validation = 0.1

[parallelism]
micro_batch = 8

[[stage]]
name = "cls"
kind = "classify"
from = "base"
data = "sums"
steps = 150
global_batch = 16
lr = 1e-3
eval_batches = 4

[[stage]]
name = "more"
kind = "mlm"
from = "base"
steps = 4
global_batch = 8
lr = 1e-4
whole_words = true

[[export]]
format = "hf"
stage = "base"

[[export]]
format = "hf"
stage = "cls"
"""


def test_an_imported_bert_gives_transformers_logits_and_classifies(tmp_path):
    """A tiny BertForPreTraining checkpoint (WordPiece tokenizer): imported with its
    masked-LM logits proven, exported back as BertForMaskedLM bit for bit, trained
    further with whole-word masking, and classified above the majority rate."""
    from safetensors.torch import load_file

    from tests.checkpoints import import_spec, write_checkpoint

    ck = write_checkpoint(tmp_path / "ck", "bert")
    write_sums(tmp_path / "data" / "sums.jsonl")
    spec = import_spec(tmp_path, ck, IMPORTED)
    outcome = run_nodes(spec, tmp_path / "store")
    assert outcome.ok, outcome.log
    base = _metrics(outcome, "stage:base")
    assert base["hf_class"] == "BertForMaskedLM" and base["max_logit_diff"] < 1e-4
    exported = load_file(
        str(artifact(outcome, tmp_path / "store", "export:hf@base") / "model.safetensors")
    )
    original = load_file(str(ck / "model.safetensors"))
    for name, tensor in exported.items():
        assert (tensor == original[name]).all(), name
    assert _metrics(outcome, "stage:more")["loss"] > 0
    cls = _metrics(outcome, "stage:cls")
    assert cls["val_accuracy"] > (1 - 0.3650793664985233) + 0.15, cls
    hf = _metrics(outcome, "export:hf@cls")
    assert hf["architecture"] == "BertForSequenceClassification" and hf["max_logit_diff"] < 1e-4


PAIRED = (
    SPEC.replace(
        "[data.clean]",
        '[[data.sources]]\nname = "checks"\npath = "data/checks.jsonl"\nrole = "labeled"\n'
        'pair_field = "pair"\n\n'
        "[data.clean]",
    )
    + """
[[stage]]
name = "pcls"
kind = "classify"
from = "mlm"
data = "checks"
steps = 40
global_batch = 16
lr = 1e-3
eval_batches = 2

[[eval]]
name = "checked"
kind = "classification"
stages = ["pcls"]
files = ["data/lone.jsonl"]

[[export]]
format = "hf"
stage = "pcls"

[[export]]
format = "onnx"
stage = "pcls"
"""
)


def test_an_encoder_pair_classifier_exports_its_token_types(built, tmp_path):
    """BERT reads a pair's second text as token type 1: the exported tokenizers give the
    types, the ONNX graph takes them, and both exports score pairs as transformers does."""
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, store, _ = built
    spec = encoder_spec(tmp_path, PAIRED)
    rows = [
        {"text": f"{a:02d}+{b:02d}", "pair": f"{(a + b + k % 2) % 100:02d}", "label": k % 2}
        for k, (a, b) in enumerate((a, (7 * a + 3) % 50) for a in range(50))
    ]
    (tmp_path / "data" / "checks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lone = "".join(json.dumps({"text": r["text"], "label": r["label"]}) + "\n" for r in rows[:6])
    (tmp_path / "data" / "lone.jsonl").write_text(lone)
    outcome = run_nodes(spec, store, ("export:hf@pcls", "export:onnx@pcls", "eval:checked@pcls"))
    assert outcome.ok, outcome.log
    notes = outcome.results["eval:checked@pcls"].record.notes
    assert any(
        "pcls learned pairs of texts, but 6 of the 6 texts of lone.jsonl have no 'pair' field" in n
        for n in notes
    ), notes
    assert _metrics(outcome, "export:hf@pcls")["max_logit_diff"] < 1e-4
    assert _metrics(outcome, "export:onnx@pcls")["max_logit_diff"] < 1e-3
    onnx_dir = artifact(outcome, store, "export:onnx@pcls")
    session = ort.InferenceSession(str(onnx_dir / "model.onnx"))
    assert [i.name for i in session.get_inputs()] == [
        "input_ids", "attention_mask", "token_type_ids",
    ]  # fmt: skip
    tok = AutoTokenizer.from_pretrained(str(onnx_dir))
    texts, pairs = [r["text"] for r in rows[:6]], [r["pair"] for r in rows[:6]]
    batch = tok(texts, pairs, padding=True, return_tensors="pt")
    assert batch["token_type_ids"].sum() > 0
    model = AutoModelForSequenceClassification.from_pretrained(
        str(artifact(outcome, store, "export:hf@pcls"))
    ).eval()
    with torch.no_grad():
        theirs = model(**batch).logits.numpy()
        untyped = model(**{**batch, "token_type_ids": torch.zeros_like(batch["input_ids"])})
    ours = session.run(["logits"], {k: v.numpy() for k, v in batch.items()})[0]
    assert np.abs(ours - theirs).max() < 1e-4
    assert np.abs(untyped.logits.numpy() - theirs).max() > 1e-6  # the types reach the model


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('kind = "mlm"', 'kind = "pretrain"', "trains a decoder"),
        ('style = "bert"', 'style = "gpt2"', "trains an encoder"),
        ('mask_token = "<|mask|>"\n', "", "the tokenizer has none"),
        (
            'kind = "classification"\nstages = ["cls"]\nbaseline = true',
            'kind = "perplexity"\nstages = ["mlm"]',
            "is a bert-style encoder",
        ),
        ('format = "hf"\nstage = "mlm"', 'format = "gguf"\nstage = "mlm"', "exports as hf"),
    ],
)
def test_an_encoder_where_a_decoder_is_needed_is_a_located_error(tmp_path, old, new, message):
    from llmbuild.plan import plan_spec
    from llmbuild.plan.digest import StatCache

    assert old in SPEC
    spec = encoder_spec(tmp_path, SPEC.replace(old, new, 1))
    with pytest.raises(SpecError, match=message):
        plan_spec(load_spec(spec), cache=StatCache())


def test_editing_the_labels_rebuilds_the_classifier_and_what_reads_it_only(built):
    from llmbuild.plan import plan_spec
    from llmbuild.plan.digest import StatCache

    spec, _, _ = built

    def keys(overrides=()):
        planned = plan_spec(load_spec(spec, overrides), cache=StatCache())
        return {name: k.key for name, k in planned.keys.items()}

    before = keys()
    readers = {"stage:cls", "eval:labels@cls", "export:hf@cls", "export:onnx@cls"}
    for edit in ('stage.cls.labels=["small", "big"]', "stage.cls.multi_label=true"):
        after = keys([edit])
        assert {n for n in before if before[n] != after[n]} == readers, edit


def test_a_classifier_of_an_encoder_points_nowhere_to_write_text(built, capsys):
    from llmbuild.cli import main

    spec, store, _ = built
    assert main(["generate", str(spec), "--stage", "cls", "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert "'cls' is a classifier: it scores texts and does not write them" in err
    assert "from 'mlm'" not in err  # its base fills in masks and writes no text either
    assert main(["chat", str(spec), "--stage", "mlm", "--store", str(store)]) == 2
    assert "bert-style encoder" in capsys.readouterr().err
    for command in ("serve", "chat", "generate"):  # its hf export too, before loading it
        assert main([command, str(spec), "--export", "hf@mlm", "--store", str(store)]) == 2
        err = capsys.readouterr().err
        assert "'mlm' is a bert-style encoder" in err and f"which {command} needs" in err, err
