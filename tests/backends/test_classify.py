"""The classify stage on megatron-core (CPU): a decoder with a linear head over each
text's last token learns labels from a labeled-role source; the label mapping is made once
from the data (or the spec) and checked before any rank starts."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmbuild.errors import UserError
from llmbuild.plan import plan_spec
from llmbuild.plan.digest import StatCache
from llmbuild.spec.load import load_spec
from tests.backends.conftest import artifact, run_nodes
from tests.backends.posttrain_spec import posttrain_spec
from tests.conftest import REPO, suite_store

SUMS = """
[[data.sources]]
name = "sums"
path = "data/sums.jsonl"
role = "labeled"
"""
CLASSIFY = """
[[stage]]
name = "cls"
kind = "classify"
from = "pretrain"
data = "sums"
steps = 80
global_batch = 16
lr = 2e-3
eval_batches = 4
checkpoint_every = 20
"""


def write_sums(path: Path, n: int = 600, seed: int = 3) -> None:
    """Sums of two numbers below 50, labeled by whether the sum reaches 50."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for _ in range(n):
            a, b = rng.randrange(50), rng.randrange(50)
            label = "big" if a + b >= 50 else "small"
            f.write(json.dumps({"text": f"{a:02d}+{b:02d}={a + b:02d}", "label": label}) + "\n")


def classify_spec(root: Path, stages: str = CLASSIFY) -> Path:
    spec = posttrain_spec(root, stages, SUMS)
    write_sums(root / "data" / "sums.jsonl")
    return spec


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("classify")
    spec = classify_spec(root)
    store = suite_store(tmp_path_factory)
    outcome = run_nodes(spec, store, ("stage:cls",))
    assert outcome.ok, outcome.log
    return spec, store, outcome


def test_the_classifier_learns_the_labels(built):
    _, store, outcome = built
    m = outcome.results["stage:cls"].record.metrics
    counts = json.loads((artifact(outcome, store, "tokenize:sums") / "datasets.json").read_text())
    valid = counts["labels"]["validation"]
    majority = max(valid.values()) / sum(valid.values())
    print(f"val accuracy {m['initial_val_accuracy']:.3f} -> {m['val_accuracy']:.3f}, "
          f"majority {majority:.3f}")  # fmt: skip
    assert m["val_accuracy"] > majority + 0.2, (m, majority)
    assert m["val_loss"] < m["initial_val_loss"]
    assert m["classes"] == 2 and m["truncated"] == 0
    out = artifact(outcome, store, "stage:cls")
    config = json.loads((out / "config.json").read_text())
    assert config["labels"] == ["big", "small"]  # the training split's labels, sorted
    from safetensors.torch import load_file

    head = load_file(str(out / "classifier.safetensors"))
    assert (
        list(head) == ["classifier.score.weight"] and head["classifier.score.weight"].shape[0] == 2
    )


def _metrics(store: Path, outcome, name: str) -> list[dict]:
    path = artifact(outcome, store, name) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_classifier_resumes_exactly_after_a_kill(built, tmp_path):
    from tests.backends.conftest import kill_after_checkpoint
    from tests.conftest import artifact_dirs, private_copy

    spec, kept, outcome = built
    store = private_copy(kept, tmp_path / "store")
    for d in artifact_dirs(store, "stage:cls"):
        shutil.rmtree(d)
    marker = kill_after_checkpoint(spec, store, "stage:cls")
    assert json.loads(marker.read_text())["step"] == 20
    resumed = run_nodes(spec, store, ("stage:cls",))
    assert resumed.ok, resumed.log
    assert "resume from step 20" in resumed.log
    a, b = _metrics(kept, outcome, "stage:cls"), _metrics(store, resumed, "stage:cls")
    assert [r["loss"] for r in a[20:]] == [r["loss"] for r in b[20:]]
    done = outcome.results["stage:cls"].record.output_digest
    assert done == resumed.results["stage:cls"].record.output_digest


def test_class_weights_train_the_same_at_any_micro_batch(built, tmp_path):
    """A class-weighted loss is a weighted mean over the step's texts: micro batches of 2
    (8 accumulated) train what micro batches of 8 do, and validation measures the
    same weighted mean (the layout is execution only), to float rounding. Averaged per
    micro batch, a text's weight had depended on the labels of the others beside it."""
    from tests.conftest import private_copy

    spec, kept, _ = built
    weighted = ["stage.cls.class_weights={big = 4.0}", "stage.cls.steps=6"]
    runs = []
    for micro in (8, 2):
        store = private_copy(kept, tmp_path / f"store-{micro}")
        done = run_nodes(
            spec, store, ("stage:cls",), [*weighted, f"parallelism.micro_batch={micro}"]
        )
        assert done.ok, done.log
        runs.append(_metrics(store, done, "stage:cls"))
    whole, split = runs
    assert [r["step"] for r in whole] == [r["step"] for r in split] == list(range(1, 7))
    for a, b in zip(whole, split):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), (a, b)
    assert split[-1]["val_loss"] == pytest.approx(whole[-1]["val_loss"], rel=1e-4)


def test_editing_the_labels_rebuilds_the_classifier_only(built):
    spec, _, _ = built

    def keys(overrides=()):
        planned = plan_spec(load_spec(spec, overrides), cache=StatCache())
        return {name: k.key for name, k in planned.keys.items()}

    before = keys()
    for edit in ('stage.cls.labels=["small", "big"]', "stage.cls.class_weights={big = 2.0}"):
        after = keys([edit])
        assert {n for n in before if before[n] != after[n]} == {"stage:cls"}, edit


def test_a_classifiers_onnx_export_reads_no_text_source(tmp_path):
    """It measures no held-out perplexity: a pretrain source added or edited must not
    rebuild it; naming sources for it is an error."""
    from llmbuild.errors import SpecError

    spec = classify_spec(tmp_path, CLASSIFY + EXPORTS)
    graph = plan_spec(load_spec(spec), cache=StatCache()).graph
    assert {s for s in graph["export:onnx@cls"].inputs if s.startswith("data:")} == set()
    with pytest.raises(SpecError) as e:
        load_spec(spec, ['export.onnx@cls.sources=["equations"]'])
    assert "export[1].sources: 'cls' is a classifier" in str(e.value)


def test_a_class_weight_for_a_label_the_data_lacks_names_the_nearest(tmp_path):
    from llmbuild.backends.megatron.labels import class_weights

    from llmbuild.errors import SpecError, UserError

    spec = classify_spec(tmp_path)
    stage = load_spec(spec, ["stage.cls.class_weights={bgi = 2.0}"]).spec.stage[1]
    with pytest.raises(UserError) as e:
        class_weights(stage, ("big", "small"))
    message = str(e.value)
    assert "stage.cls.class_weights names labels the data does not have: 'bgi'" in message
    assert "; did you mean 'big'? (its labels: 'big', 'small')" in message
    assert class_weights(load_spec(spec).spec.stage[1], ("big", "small")) == ()
    with pytest.raises(SpecError) as bad:
        load_spec(spec, ["stage.cls.class_weights={big = -1.0}"])
    assert "class_weights.big must be positive (got -1.0)" in str(bad.value)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ('["big", "small", "huge"]', "no training text has the label 'huge'"),
        ('["big", "medium"]', "the data has labels the stage does not list: 'small'"),
    ],
)
def test_a_label_mapping_that_does_not_fit_the_data_is_a_plain_error(
    built, tmp_path, labels, message
):
    from tests.conftest import private_copy

    spec, kept, _ = built
    store = private_copy(kept, tmp_path / "store")
    outcome = run_nodes(spec, store, ("stage:cls",), [f"stage.cls.labels={labels}"])
    assert not outcome.ok
    result = outcome.results["stage:cls"]
    assert message in result.detail and "Traceback" not in result.detail, result.detail


def _classify_stage():
    from llmbuild.backends.megatron.spec import Classify

    return Classify.model_validate(
        {"name": "c", "kind": "classify", "from": "p", "data": "d", "steps": 1, "global_batch": 1}
    )


def test_labels_only_in_validation_or_of_one_kind_are_refused():
    from llmbuild.backends.megatron.labels import label_names

    from llmbuild.errors import UserError

    stage = _classify_stage()
    both = {"train": {"a": 3, "b": 2}, "validation": {"a": 1}}
    assert label_names("stage:c", stage, both) == ("a", "b")
    with pytest.raises(UserError, match=r"validation split has labels no training text has: 'c'"):
        label_names("stage:c", stage, {"train": {"a": 3, "b": 1}, "validation": {"c": 2}})
    with pytest.raises(UserError, match="needs at least two labels"):
        label_names("stage:c", stage, {"train": {"a": 3}, "validation": {}})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"text": "01+02=03"}', "missing field 'label'"),
        ('{"text": "01+02=03", "label": ""}', "must be a non-empty string, an integer, or a list"),
        ('{"text": "01+02=03", "label": [""]}', "field 'label' must be"),
        ('{"text": "01+02=03", "label": {"a": 1}}', "field 'label' must be"),
        ('{"text": "01+02=03", "label": null}', "'label' must be a string or an integer or a "),
        ('{"text": 3, "label": "big"}', "field 'text' must be a string, got int"),
        ('{"label": "big"}', "missing field 'text'"),
    ],
)
def test_a_bad_labeled_record_is_located(tmp_path, line, message):
    spec = classify_spec(tmp_path)
    with (tmp_path / "data" / "sums.jsonl").open("a") as f:
        f.write(line + "\n")
    outcome = run_nodes(spec, tmp_path / "store", ("source:sums",))
    assert not outcome.ok
    error = outcome.results["source:sums"].detail
    assert message in error and "sums.jsonl:601" in error, error


@pytest.mark.parametrize(
    ("numbers", "line", "message"),
    [
        (False, '{"text": "01+02=03", "label": 3}', "label 3 is a number, but the source's"),
        (False, '{"text": "01+02=03", "label": ["big", 3]}', 'label ["big", 3] holds a number'),
        (True, '{"text": "01+02=03", "label": "1"}', 'label "1" is a string, but the source'),
    ],
)
def test_a_label_of_another_json_type_is_a_located_bad_record(tmp_path, numbers, line, message):
    """Labels are compared as names, so a stray ``3`` among strings (or ``"1"`` among
    numbers) would quietly become a class of its own: it is a bad record at its line, an
    error unless on_error = "skip" skips it, and then the node says so."""
    spec = classify_spec(tmp_path)
    path = tmp_path / "data" / "sums.jsonl"
    if numbers:
        path.write_text(path.read_text().replace('"big"', "1").replace('"small"', "0"))
    with path.open("a") as f:
        f.write(line + "\n")
    outcome = run_nodes(spec, tmp_path / "store", ("source:sums",))
    assert not outcome.ok
    error = outcome.results["source:sums"].detail
    assert f"sums.jsonl:601: {message}" in error and "(600 texts)" in error, error
    assert 'set on_error = "skip"' in error
    spec.write_text(
        spec.read_text().replace('role = "labeled"', 'role = "labeled"\non_error = "skip"')
    )
    outcome = run_nodes(spec, tmp_path / "store", ("source:sums",))
    assert outcome.ok, outcome.log
    record = outcome.results["source:sums"].record
    assert record.metrics["skipped"] == 1 and record.metrics["documents"] == 600
    (note,) = record.notes
    assert note.startswith('on_error = "skip" skipped 1 bad record: ') and message in note, note
    report = json.loads(
        (artifact(outcome, tmp_path / "store", "source:sums") / "report.json").read_text()
    )
    assert report["removed"].get("bad_label") == 1, report


def test_a_label_of_very_few_texts_is_said_when_the_labels_come_from_the_data():
    from llmbuild.backends.megatron.labels import rare_labels

    stage = _classify_stage()
    train = {"negative": 240, "positive": 248, "3": 1, "neutrl": 2}
    note = rare_labels(stage, train, 491)
    assert note is not None and note.startswith(
        "few of the 491 training texts have the labels '3' (1 text), 'neutrl' (2 texts): "
    ), note
    assert "misspelt label" in note and "`labels` of stage.c" in note
    # under 1% of the texts is rare too, however many; a label listed in the spec is not
    assert "'b' (9 texts)" in rare_labels(stage, {"a": 991, "b": 9}, 1000)
    assert rare_labels(stage, {"a": 990, "b": 10}, 1000) is None
    listed = stage.model_copy(update={"labels": ("negative", "positive", "3", "neutrl")})
    assert rare_labels(listed, train, 491) is None


CLASSIFICATION = """
[[eval]]
name = "labels"
kind = "classification"
stages = ["cls"]
files = ["data/more.jsonl"]
baseline = true
"""


def test_the_classification_eval_scores_as_scikit_learn_does(built, tmp_path):
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

    _, kept, _ = built
    spec = classify_spec(tmp_path, CLASSIFY + CLASSIFICATION)  # the same data, so the same keys
    write_sums(tmp_path / "data" / "more.jsonl", n=60, seed=11)
    store = kept  # its outputs are kept for the next run too
    outcome = run_nodes(spec, store, ("eval:labels@cls",))
    assert outcome.ok, outcome.log
    assert outcome.results["stage:cls"].state == "cached"
    out = artifact(outcome, store, "eval:labels@cls")
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results) == {"sums", "more.jsonl"}
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    labels = ["big", "small"]
    metrics = outcome.results["eval:labels@cls"].record.metrics

    def record_of(name: str) -> float:
        return metrics[f"{name}.baseline_accuracy"]

    listed = [json.loads(line) for line in (tmp_path / "data" / "more.jsonl").open()]
    mine = [x for x in rows if x["data"] == "more.jsonl"]
    assert [x["index"] for x in mine] == list(range(len(listed)))
    assert [x["text"] for x in mine] == [x["text"] for x in listed]  # matched to its text
    for name, r in results.items():
        truth = [x["label"] for x in rows if x["data"] == name]
        predicted = [x["predicted"] for x in rows if x["data"] == name]
        assert r["texts"] == len(truth) > 0
        assert r["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
        assert r["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
        assert r["micro_f1"] == pytest.approx(f1_score(truth, predicted, average="micro"))
        recall = recall_score(truth, predicted, average=None, labels=labels)
        assert [r["per_label"][n]["recall"] for n in labels] == pytest.approx(list(recall))
        assert r["confusion"] == confusion_matrix(truth, predicted, labels=labels).tolist()
        assert r["accuracy"] > 0.8, r
        assert r["majority_accuracy"] == max(map(truth.count, labels)) / len(truth)
        assert (out / f"confusion-{name}.png").read_bytes()[:4] == b"\x89PNG"
        # the baseline on the same texts: the source's validation split, the file's own
        assert r["baseline"]["texts"] == r["texts"], (name, r["baseline"])
        assert record_of(name) == r["baseline"]["accuracy"]
    # the file's true labels are the file's, in order
    more = [json.loads(line)["label"] for line in (tmp_path / "data" / "more.jsonl").open()]
    assert [x["label"] for x in rows if x["data"] == "more.jsonl"] == more
    record = outcome.results["eval:labels@cls"].record
    assert record.metrics["more.jsonl.accuracy"] == results["more.jsonl"]["accuracy"]
    assert "| true \\ predicted | big | small |" in (out / "results.md").read_text()
    assert "| more.jsonl, always its most common label | 60 |" in (out / "results.md").read_text()


def test_a_listed_file_is_read_by_the_evals_field_names(built, tmp_path):
    """A file whose records name their fields as the user's data does is measured as the
    same records under the standard names are."""
    _, store, _ = built
    renamed = (
        CLASSIFICATION.replace('"labels"', '"renamed"')
        .replace("more.jsonl", "renamed.jsonl")
        .replace("baseline = true", 'text_field = "q"\nlabel_field = "y"')
    )
    spec = classify_spec(tmp_path, CLASSIFY + CLASSIFICATION + renamed)
    write_sums(tmp_path / "data" / "more.jsonl", n=60, seed=11)
    rows = [json.loads(line) for line in (tmp_path / "data" / "more.jsonl").open()]
    with (tmp_path / "data" / "renamed.jsonl").open("w") as f:
        f.writelines(json.dumps({"q": r["text"], "y": r["label"]}) + "\n" for r in rows)
    outcome = run_nodes(spec, store, ("eval:labels@cls", "eval:renamed@cls"))
    assert outcome.ok, outcome.log

    def predictions(node: str, data: str) -> list:
        out = artifact(outcome, store, node)
        lines = (out / "predictions.jsonl").read_text().splitlines()
        got = [json.loads(x) for x in lines]
        return [{k: v for k, v in x.items() if k != "data"} for x in got if x["data"] == data]

    named = predictions("eval:renamed@cls", "renamed.jsonl")
    assert named == predictions("eval:labels@cls", "more.jsonl")
    assert [x["label"] for x in named] == [r["label"] for r in rows]


def test_an_empty_listed_file_is_a_plain_error(tmp_path):
    from llmbuild.backends.eval.classification import labeled_file
    from llmbuild.backends.eval.spec import Classification

    suite = Classification(name="c", kind="classification", stages=["cls"])
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(UserError, match="empty.jsonl: empty file"):
        labeled_file(tmp_path / "empty.jsonl", suite, None, ("a", "b"), 16, None)


def test_a_classification_eval_measures_each_stage_on_its_own_source_by_default(tmp_path):
    tags = SUMS.replace('"sums"', '"tags"').replace("sums.jsonl", "tags.jsonl")
    other = CLASSIFY.replace('"cls"', '"tagger"').replace('data = "sums"', 'data = "tags"')
    suite = CLASSIFICATION.replace('["cls"]', '["cls", "tagger"]').replace(
        'files = ["data/more.jsonl"]\n', ""
    )
    spec = posttrain_spec(tmp_path, CLASSIFY + other + suite, SUMS + tags)
    write_sums(tmp_path / "data" / "sums.jsonl")
    write_sums(tmp_path / "data" / "tags.jsonl", seed=5)
    graph = plan_spec(load_spec(spec), cache=StatCache()).graph
    for stage, source in (("cls", "sums"), ("tagger", "tags")):
        data = {s: n for s, n in graph[f"eval:labels@{stage}"].inputs.items() if s[:5] == "data:"}
        assert data == {f"data:{source}": f"tokenize:{source}"}
    explicit = suite.replace('stages = ["cls", "tagger"]', 'stages = ["cls"]\nsources = ["tags"]')
    spec = posttrain_spec(tmp_path, CLASSIFY + other + explicit, SUMS + tags)
    graph = plan_spec(load_spec(spec), cache=StatCache()).graph
    assert "data:tags" in graph["eval:labels@cls"].inputs


def test_predict_says_which_of_several_classifiers_it_uses(tmp_path, capsys):
    from llmbuild.cli.predict_cmd import _stage_node

    other = CLASSIFY.replace('"cls"', '"tagger"')
    resolved = load_spec(classify_spec(tmp_path, CLASSIFY + other))
    assert _stage_node(resolved, None) == "stage:tagger"
    assert "predicting with tagger, the last classifier (cls: --stage)" in capsys.readouterr().err
    assert _stage_node(resolved, "cls") == "stage:cls"
    assert capsys.readouterr().err == ""


def test_labels_the_classifier_does_not_know_are_a_plain_error(built):
    from llmbuild.backends.megatron.posttrain_data import LabeledSamples

    _, store, outcome = built
    sums = {"sums": str(artifact(outcome, store, "tokenize:sums"))}
    with pytest.raises(ValueError, match=r"record 1: label '(big|small)' is not one the classi"):
        LabeledSamples(sums, "validation", 16, 0, 1, ("yes", "no"), 0)
    with pytest.raises(ValueError, match="a list of labels, but the classifier gives one"):
        from llmbuild.backends.megatron.posttrain_data import label_ids

        label_ids(["yes"], {"yes": 0}, multi_label=False)


def test_a_classification_eval_of_a_stage_that_is_no_classifier_is_located(tmp_path):
    from llmbuild.errors import SpecError

    suite = CLASSIFICATION.replace('["cls"]', '["pretrain"]').replace(
        'files = ["data/more.jsonl"]\n', ""
    )
    spec = classify_spec(tmp_path, CLASSIFY + suite)
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    assert "eval[0].stages[0]: stage 'pretrain' is not of kind 'classify'" in str(e.value)
    suite = CLASSIFICATION.replace("baseline = true", 'sources = ["equations"]')
    with pytest.raises(SpecError) as e:
        load_spec(classify_spec(tmp_path, CLASSIFY + suite))
    assert "eval[0].sources[0]: a classification eval needs a labeled-role source" in str(e.value)


EXPORTS = """
[[export]]
format = "hf"
stage = "cls"

[[export]]
format = "onnx"
stage = "cls"

[[export]]
format = "onnx"
stage = "cls"
name = "cls-int8"
quantize = "int8"
"""


def test_the_classifier_exports_to_transformers_and_onnx_with_its_logits(built, tmp_path):
    import numpy as np
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    _, kept, _ = built
    spec = classify_spec(tmp_path, CLASSIFY + EXPORTS)
    store = kept  # its outputs are kept for the next run too
    outcome = run_nodes(spec, store, ("export:hf@cls", "export:onnx@cls", "export:cls-int8"))
    assert outcome.ok, outcome.log
    hf_dir = artifact(outcome, store, "export:hf@cls")
    m = outcome.results["export:hf@cls"].record.metrics
    assert m["architecture"] == "GPT2ForSequenceClassification" and m["max_logit_diff"] < 1e-4
    model = AutoModelForSequenceClassification.from_pretrained(str(hf_dir)).eval()
    assert model.config.id2label == {0: "big", 1: "small"}
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    texts = ["07+48=55", "12+03=15", "30+29=59", "01+01=02"]
    batch = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        predicted = model(**batch).logits.argmax(-1).tolist()
    assert [model.config.id2label[p] for p in predicted] == ["big", "small", "big", "small"]
    # a text longer than the model's context is cut to it, as transformers' pipelines ask
    seq_len = model.config.n_positions
    assert tok.model_max_length == seq_len
    long = pipeline("text-classification", model=model, tokenizer=tok)(
        "07+48=55 " * 200, truncation=True
    )
    assert long[0]["label"] in ("big", "small")
    onnx = outcome.results["export:onnx@cls"].record.metrics
    assert onnx["max_logit_diff"] < 1e-3 and onnx["labels"] == ["big", "small"]
    session = ort.InferenceSession(str(artifact(outcome, store, "export:onnx@cls") / "model.onnx"))
    feed = {k: batch[k].numpy().astype(np.int64) for k in ("input_ids", "attention_mask")}
    assert session.run(["logits"], feed)[0].argmax(-1).tolist() == predicted
    assert outcome.results["export:cls-int8"].record.metrics["int8_label_agreement"] >= 0.9


def test_the_export_check_feeds_no_empty_text_whatever_the_vocabulary(tmp_path):
    """The export's check puts random texts through the exported tokenizer; drawn from the
    whole vocabulary, a short one could be special tokens only, which decoding drops: an
    empty text, read by transformers at its last pad and by the stage elsewhere, failed
    the export as a wrong conversion. A char vocabulary of 66 (60 characters and six
    special tokens) drew one with the check's seed; texts now hold no special token."""
    import string

    chars = string.ascii_letters + "01234567"  # and six special tokens
    rng = random.Random(0)
    root = tmp_path / "p"
    (root / "data").mkdir(parents=True)
    texts = ["".join(rng.choice(chars) for _ in range(12)) + c for c in chars * 5]
    data = root / "data"
    (data / "names.txt").write_text("\n".join(texts) + "\n")
    (data / "names.jsonl").write_text(
        "".join(json.dumps({"text": t, "label": "ab"[i % 2]}) + "\n" for i, t in enumerate(texts))
    )
    spec = root / "spec.toml"
    spec.write_text("""\
extends = ["@gpt2-tiny"]
[model]
name = "v66"
[architecture]
layers = 1
hidden = 32
heads = 2
seq_len = 32
[[data.sources]]
name = "text"
path = "data/names.txt"
separator = "\\n"
[[data.sources]]
name = "names"
path = "data/names.jsonl"
role = "labeled"
[tokenizer]
kind = "char"
[[stage]]
name = "pretrain"
kind = "pretrain"
data = "text"
steps = 2
global_batch = 8
lr = 1e-3
[[stage]]
name = "cls"
kind = "classify"
from = "pretrain"
data = "names"
steps = 2
global_batch = 8
[[export]]
format = "hf"
stage = "cls"
""")
    outcome = run_nodes(spec, tmp_path / "store", ("export:hf@cls",))
    assert outcome.results["tokenizer"].record.metrics["vocab_size"] == 66
    assert outcome.ok, outcome.log
    assert outcome.results["export:hf@cls"].record.metrics["max_logit_diff"] < 1e-4


def test_pruning_a_classifier_is_a_located_error(tmp_path):
    """A prune stage ranks a model's parts by next-token loss and keeps no head of its
    own: from a classifier it would rank by the base's untrained language-model head and
    leave a model that classifies nothing. Refused, as a distill from one is."""
    from llmbuild.errors import SpecError

    prune = (
        '[[stage]]\nname = "small"\nkind = "prune"\nfrom = "cls"\narchitecture = { layers = 1 }\n'
    )
    spec = classify_spec(tmp_path, CLASSIFY + prune)
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    assert "stage[2].from: stage 'cls' is a classifier: pruning ranks its parts" in str(e.value)
    assert "prune the stage 'cls' was trained from" in str(e.value)


def test_a_classifier_exported_as_gguf_is_a_located_error(tmp_path):
    from llmbuild.errors import SpecError

    spec = classify_spec(tmp_path, CLASSIFY + '[[export]]\nformat = "gguf"\nstage = "cls"\n')
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    assert "export[0].format: 'cls' is a classifier, which exports as hf or onnx" in str(e.value)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "llmbuild", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_predict_gives_each_text_its_label_and_probabilities(built, tmp_path):
    spec, store, _ = built
    texts = ["07+48=55", "12+03=15"]
    r = _cli(
        "predict",
        str(spec),
        "--store",
        str(store),
        "--text",
        texts[0],
        "--text",
        texts[1],
        "--json",
    )
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["label"] for row in rows] == ["big", "small"]
    assert [row["text"] for row in rows] == texts
    for row in rows:
        assert set(row["probabilities"]) == {"big", "small"}
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["probabilities"][row["label"]] > 0.5
    listed = tmp_path / "texts.txt"
    listed.write_text("\n".join(texts) + "\n")
    r = _cli("predict", str(spec), "--store", str(store), "--stage", "cls", "--file", str(listed))
    assert r.returncode == 0, r.stderr
    assert [line.split("\t")[0] for line in r.stdout.splitlines()] == ["big", "small"]
    listed.write_text("\n \n")
    r = _cli("predict", str(spec), "--store", str(store), "--file", str(listed))
    assert r.returncode == 2 and "texts.txt holds no texts" in r.stderr, r.stderr
    # a pair given to a classifier of single texts is scored, with a warning
    r = _cli("predict", str(spec), "--store", str(store), "--text", texts[0], "--pair", "x")
    assert r.returncode == 0 and "stage:cls learned single texts, not pairs" in r.stderr, r.stderr
    # a text past the classifier's context, and an empty one, are scored, with warnings
    r = _cli("predict", str(spec), "--store", str(store), "--text", "01+02=03" * 20, "--text", "")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2, r.stderr
    assert "1 of the texts are longer than the classifier's 32 tokens" in r.stderr, r.stderr
    assert "1 of the texts are empty" in r.stderr
    assert "hold nothing the tokenizer knows" not in r.stderr, r.stderr
    # a text of characters the char tokenizer never saw is scored, with a warning
    r = _cli("predict", str(spec), "--store", str(store), "--text", "ζζζ", "--text", "01+02=03")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2, r.stderr
    assert "1 of the texts hold nothing the tokenizer knows" in r.stderr, r.stderr
    r = _cli("predict", str(spec), "--store", str(store), "--stage", "pretrain", "--text", "x")
    assert r.returncode == 2 and "'pretrain' is not a classify stage" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "01+02=03"}\n{"txt": 1}\n')
    r = _cli("predict", str(spec), "--store", str(store), "--file", str(bad))
    assert r.returncode == 2 and "bad.jsonl:2" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "predict reads the field 'text'" in r.stderr and "text_field" not in r.stderr


IMPORTED = """
[[data.sources]]
name = "sums"
path = "sums.jsonl"
role = "labeled"

[data.split]
validation = 0.1

[[stage]]
name = "cls"
kind = "classify"
from = "base"
data = "sums"
steps = 60
global_batch = 16
lr = 2e-3
eval_batches = 4

[[export]]
format = "hf"
stage = "cls"
"""


def test_a_classifier_from_an_imported_checkpoint_learns_and_exports(tmp_path_factory):
    from transformers import AutoTokenizer

    from tests.checkpoints import import_spec, write_checkpoint

    root = tmp_path_factory.mktemp("classify-import")
    # As in GPT-2 and Llama 3, the embedding has a row for each token and no spare one
    # for the pad token the export adds.
    ck = write_checkpoint(root / "ck", "llama", max_position_embeddings=32, vocab_size=320)
    assert len(AutoTokenizer.from_pretrained(ck)) == 320
    write_sums(root / "sums.jsonl")
    spec = import_spec(root, ck, IMPORTED)
    store = suite_store(tmp_path_factory)
    outcome = run_nodes(spec, store, ("export:hf@cls",))
    assert outcome.ok, outcome.log
    m = outcome.results["stage:cls"].record.metrics
    counts = json.loads((artifact(outcome, store, "tokenize:sums") / "datasets.json").read_text())
    valid = counts["labels"]["validation"]
    majority = max(valid.values()) / sum(valid.values())
    assert m["val_accuracy"] > majority + 0.15, (m, majority)
    hf = outcome.results["export:hf@cls"].record.metrics
    assert hf["architecture"] == "LlamaForSequenceClassification"
    assert hf["max_logit_diff"] < 1e-4


def test_a_pair_follows_its_text_after_a_separator_and_the_longer_gives_way():
    from llmbuild.backends.megatron.posttrain_data import fit_text

    ids, cut, types = fit_text([1, 2, 3], [4, 5], 8, 0)
    assert ids.tolist() == [1, 2, 3, 0, 4, 5] and not cut and types is None
    ids, cut, _ = fit_text(list(range(10, 30)), [4, 5], 8, 0)
    assert ids.tolist() == [10, 11, 12, 13, 14, 0, 4, 5] and cut
    ids, cut, _ = fit_text([1, 2], list(range(10, 30)), 8, 0)
    assert ids.tolist() == [1, 2, 0, 10, 11, 12, 13, 14] and cut
    ids, cut, _ = fit_text(list(range(10, 30)), None, 8, 0)
    assert ids.tolist() == list(range(10, 18)) and cut
    # An encoder's: [CLS] text [SEP] pair [SEP], token types 0 then 1.
    ids, cut, types = fit_text([1, 2, 3], [4, 5], 9, 0, start=7)
    assert ids.tolist() == [7, 1, 2, 3, 0, 4, 5, 0] and not cut
    assert types.tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    ids, cut, types = fit_text(list(range(10, 30)), None, 6, 0, start=7)
    assert ids.tolist() == [7, 10, 11, 12, 13, 0] and cut and types.tolist() == [0] * 6


def test_pairs_are_tokenized_beside_their_texts(tmp_path):
    from llmbuild.backends.megatron.posttrain_data import LabeledSamples
    from llmbuild.backends.tokenizer.artifact import TokenizerArtifact

    spec = classify_spec(tmp_path)
    records = [{"q": f"{a:02d}+{a:02d}", "a": f"{2 * a:02d}", "label": a % 2} for a in range(40)]
    (tmp_path / "data" / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    spec.write_text(
        spec.read_text().replace(
            'role = "labeled"', 'role = "labeled"\ntext_field = "q"\npair_field = "a"'
        )
    )
    outcome = run_nodes(spec, tmp_path / "store", ("tokenize:sums",))
    assert outcome.ok, outcome.log
    data = artifact(outcome, tmp_path / "store", "tokenize:sums")
    tok = TokenizerArtifact.open(artifact(outcome, tmp_path / "store", "tokenizer"))
    train = LabeledSamples({"sums": str(data)}, "train", 16, tok.pad_id, tok.eos_id, ("0", "1"), 0)
    valid = LabeledSamples(
        {"sums": str(data)}, "validation", 16, tok.pad_id, tok.eos_id, ("0", "1"), 0
    )
    assert len(train) + len(valid) == 40
    for ids, label, _ in train.docs + valid.docs:
        text, pair = tok.decode(ids.tolist(), skip_special_tokens=False).split(
            tok.decode([tok.eos_id], skip_special_tokens=False)
        )
        a = int(text.split("+")[0])
        assert pair == f"{2 * a:02d}" and label == a % 2


def test_a_pair_classifier_exports_with_the_separator_it_learned(built, tmp_path):
    """A decoder reads a pair after an end-of-sequence token: the exported tokenizer puts
    it there (``tok(text, pair)``) and pads with a token of its own, which transformers'
    classifier tells from that separator."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, store, _ = built
    stage = CLASSIFY.replace("steps = 80", "steps = 10")
    spec = classify_spec(tmp_path, stage + '[[export]]\nformat = "hf"\nstage = "cls"\n')
    records = [{"q": f"{a:02d}+{a:02d}", "a": f"{2 * a:02d}", "label": a % 2} for a in range(40)]
    (tmp_path / "data" / "sums.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    spec.write_text(
        spec.read_text().replace(
            'role = "labeled"', 'role = "labeled"\ntext_field = "q"\npair_field = "a"'
        )
    )
    outcome = run_nodes(spec, store, ("export:hf@cls",))
    assert outcome.ok, outcome.log
    assert outcome.results["export:hf@cls"].record.metrics["max_logit_diff"] < 1e-4
    out = artifact(outcome, store, "export:hf@cls")
    tok = AutoTokenizer.from_pretrained(str(out))
    alone = tok("12+12", add_special_tokens=False)["input_ids"]
    assert tok("12+12")["input_ids"] == alone
    pair = tok("24", add_special_tokens=False)["input_ids"]
    assert tok("12+12", "24")["input_ids"] == alone + [tok.eos_token_id] + pair
    model = AutoModelForSequenceClassification.from_pretrained(str(out))
    assert model.config.pad_token_id == tok.pad_token_id != tok.eos_token_id


MULTI = """
[[data.sources]]
name = "tags"
path = "data/tags.jsonl"
role = "labeled"

[[stage]]
name = "tagger"
kind = "classify"
from = "pretrain"
data = "tags"
multi_label = true
steps = 200
global_batch = 16
lr = 2e-3
eval_batches = 4

[[eval]]
name = "tags"
kind = "classification"
stages = ["tagger"]
baseline = true

[[export]]
format = "hf"
stage = "tagger"
"""


def write_tags(path: Path, n: int = 600, seed: int = 3) -> None:
    """Sums tagged with any of "big" (50 or more) and "odd": none, one or both."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            a, b = rng.randrange(50), rng.randrange(50)
            tags = [t for t, on in (("big", a + b >= 50), ("odd", (a + b) % 2)) if on]
            f.write(json.dumps({"text": f"{a:02d}+{b:02d}={a + b:02d}", "label": tags}) + "\n")


def test_a_multi_label_classifier_learns_every_label_of_a_text(tmp_path, tmp_path_factory):
    """One sigmoid per label: every label of a text right (accuracy), the eval's figures
    scikit-learn's on the same 0/1 rows, exported with transformers' multi-label problem
    type, and predict gives each text its labels, perhaps none."""
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.preprocessing import MultiLabelBinarizer

    spec = posttrain_spec(tmp_path, MULTI, "")
    write_tags(tmp_path / "data" / "tags.jsonl")
    store = suite_store(tmp_path_factory)
    outcome = run_nodes(spec, store, ("eval:tags@tagger", "export:hf@tagger"))
    assert outcome.ok, outcome.log
    m = outcome.results["stage:tagger"].record.metrics
    rows = [
        json.loads(line)
        for line in (artifact(outcome, store, "eval:tags@tagger") / "predictions.jsonl")
        .read_text()
        .splitlines()
    ]
    sets = [tuple(r["label"]) for r in rows]
    majority = max(sets.count(s) for s in set(sets)) / len(sets)
    assert m["val_accuracy"] > majority + 0.2, (m, majority)
    binarize = MultiLabelBinarizer(classes=["big", "odd"]).fit([[]])
    truth = binarize.transform([r["label"] for r in rows])
    predicted = binarize.transform([r["predicted"] for r in rows])
    ev = outcome.results["eval:tags@tagger"].record.metrics
    assert ev["tags.accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert ev["tags.macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert 0 <= ev["tags.baseline_accuracy"] <= 1
    assert ev["tags.majority_accuracy"] == pytest.approx(majority)  # the most common set's
    assert "| big | " in (artifact(outcome, store, "eval:tags@tagger") / "results.md").read_text()
    hf = outcome.results["export:hf@tagger"].record.metrics
    assert hf["max_logit_diff"] < 1e-4
    exported = json.loads(
        (artifact(outcome, store, "export:hf@tagger") / "config.json").read_text()
    )
    assert exported["problem_type"] == "multi_label_classification"
    r = _cli("predict", str(spec), "--store", str(store), "--stage", "tagger", "--json",
             "--text", "07+48=55", "--text", "12+02=14")  # fmt: skip
    assert r.returncode == 0, r.stderr
    said = [sorted(json.loads(line)["labels"]) for line in r.stdout.splitlines()]
    assert said == [["big", "odd"], []], said


def test_lists_of_labels_without_multi_label_are_a_plain_error(tmp_path):
    spec = posttrain_spec(tmp_path, MULTI.replace("multi_label = true\n", ""), "")
    write_tags(tmp_path / "data" / "tags.jsonl")
    outcome = run_nodes(spec, tmp_path / "store", ("stage:tagger",))
    assert not outcome.ok
    detail = outcome.results["stage:tagger"].detail
    assert "have a list of labels; set multi_label = true" in detail, detail
