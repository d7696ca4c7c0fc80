"""The ``classification`` eval: a classifier stage's predictions on the validation split
of labeled sources and on listed files, scored by scikit-learn (accuracy, macro and micro
F1, each label's precision and recall, the confusion matrix), with the confusion matrix
drawn as a PNG beside the results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmbuild.errors import UserError


def _file_source(path: Path, suite: Any) -> Any:
    """A listed file read as a labeled source with the suite's field names."""
    from llmbuild.spec.data import Source

    return Source(
        name="file",
        path=str(path),
        role="labeled",
        text_field=suite.text_field,
        label_field=suite.label_field,
    )


def labeled_file(
    path: Path,
    suite: Any,
    tok: Any,
    labels: tuple[str, ...],
    seq_len: int,
    start: int | None,
    multi_label: bool = False,
) -> tuple[Any, int]:
    """The labeled texts of a listed file (records with the suite's text, label and, for
    pairs, pair fields), read as a labeled source's are and cut to fit as a classify
    stage's, and how many have no pair."""
    from llmbuild.backends.data.readers import BadRecord, normalise, read_records
    from llmbuild.backends.megatron.posttrain_data import LabeledTexts, fit_text, label_ids

    source = _file_source(path, suite)
    ids = {name: i for i, name in enumerate(labels)}
    docs, truncated, lone = [], 0, 0
    try:
        for rec in read_records(str(path), source):
            if isinstance(rec, BadRecord):
                raise rec
            r, pair = normalise(rec, source), rec.data.get(suite.pair_field)
            if pair is not None and not isinstance(pair, str):
                raise BadRecord(rec.where, f"field {suite.pair_field!r} must be a string", "field")
            try:
                label = label_ids(r["label"], ids, multi_label)
            except ValueError as e:
                raise BadRecord(rec.where, str(e), "field") from None
            lone += pair is None
            pair = None if pair is None else tok.encode(pair)
            tokens, cut, types = fit_text(tok.encode(r["text"]), pair, seq_len, tok.eos_id, start)
            docs.append((tokens, label, types))
            truncated += cut
    except BadRecord as e:
        fields = (
            f" (a listed file's records have {suite.text_field!r} and {suite.label_field!r}, "
            f"and {suite.pair_field!r} for pairs: the eval's text_field, label_field and "
            "pair_field)"
        )
        raise UserError(str(e) + (fields if "missing field" in e.reason else "")) from None
    if not docs:
        raise UserError(f"{path}: empty file (no labeled texts to measure)")
    classes = len(labels) if multi_label else None
    samples = LabeledTexts(docs, seq_len, tok.pad_id, truncated, start is not None, classes)
    return samples, lone


def source_texts(sources: dict[str, str], split: str, tok: Any) -> tuple[list[str], list[Any]]:
    """The texts (a pair after its text) and label names of a split of labeled sources,
    decoded whole from their tokens (not cut to a context)."""
    from llmbuild.backends.megatron.cpu import indexed_dataset
    from llmbuild.backends.megatron.posttrain_data import _datasets, _records

    IndexedDataset = indexed_dataset()

    texts, labels = [], []
    for prefix, d in _datasets(sources, split):
        ids = IndexedDataset(prefix, mmap=False)
        pairs = IndexedDataset(prefix + ".pair", mmap=False) if d.get("pairs") else None
        for i, record in enumerate(_records(prefix, "labels")):
            text = tok.tokenizer.decode(ids[i].tolist(), skip_special_tokens=False)
            if pairs is not None:
                text += " " + tok.tokenizer.decode(pairs[i].tolist(), skip_special_tokens=False)
            texts.append(text)
            labels.append(record["label"])
    return texts, labels


def file_texts(path: Path, suite: Any) -> tuple[list[str], list[Any]]:
    """The texts (a pair after its text) and labels of a listed file, as written there
    (``labeled_file`` has read it whole before)."""
    from llmbuild.backends.data.readers import BadRecord, normalise, read_records

    source = _file_source(path, suite)
    texts, labels = [], []
    for rec in read_records(str(path), source):
        if isinstance(rec, BadRecord):
            raise UserError(str(rec))
        r, pair = normalise(rec, source), rec.data.get(suite.pair_field)
        texts.append(r["text"] if pair is None else f"{r['text']} {pair}")
        labels.append(r["label"])
    return texts, labels


def baseline_predictions(
    train: tuple[list[str], list[Any]], texts: list[str], labels: tuple[str, ...], multi: bool
) -> Any:
    """TF-IDF over words and word pairs, then logistic regression (one per label when
    ``multi``), fitted on ``train``; the label id predicted for each of ``texts``, or with
    ``multi`` a row of 0/1 per text."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MultiLabelBinarizer

    classifier = LogisticRegression(max_iter=2000)
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        OneVsRestClassifier(classifier) if multi else classifier,
    )
    texts_seen, seen = train
    if multi:
        binarizer = MultiLabelBinarizer(classes=list(labels))
        model.fit(texts_seen, binarizer.fit_transform([_as_list(x) for x in seen]))
        return model.predict(texts).tolist()
    model.fit(texts_seen, seen)
    ids = {name: i for i, name in enumerate(labels)}
    return [ids[str(p)] for p in model.predict(texts)]


def _as_list(label: Any) -> list[str]:
    return label if isinstance(label, list) else [label]


def scores(truth: list[Any], predicted: list[Any], labels: tuple[str, ...]) -> dict[str, Any]:
    """scikit-learn's measures of ``predicted`` against ``truth``: label ids, or for a
    multi-label classifier rows of 0/1 (accuracy is then the share of texts with every
    label right, and ``confusion`` each label's ``[[tn, fp], [fn, tp]]``)."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        multilabel_confusion_matrix,
        precision_recall_fscore_support,
    )

    ids = list(range(len(labels)))
    multi = bool(truth) and isinstance(truth[0], list)
    confusion = (multilabel_confusion_matrix if multi else confusion_matrix)(
        truth, predicted, labels=ids
    ).tolist()
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=ids, zero_division=0
    )
    return {
        "texts": len(truth),
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, labels=ids, average="macro", zero_division=0)),
        "micro_f1": float(f1_score(truth, predicted, labels=ids, average="micro", zero_division=0)),
        "per_label": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(labels)
        },
        "confusion": confusion,
        "multi_label": multi,
    }


MULTI_COLUMNS = ("tn", "fp", "fn", "tp")
"""A multi-label classifier's confusion, per label: true and false negatives and
positives."""


def confusion_png(
    path: Path, title: str, confusion: list[Any], labels: tuple[str, ...], multi: bool = False
) -> None:
    """The confusion matrix (rows: true labels, columns: predicted) as a PNG; for a
    multi-label classifier, one row per label of its tn, fp, fn and tp."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if multi:
        confusion = [[v for row in m for v in row] for m in confusion]
    n = len(labels)
    columns = MULTI_COLUMNS if multi else labels
    size = min(2.5 + 0.45 * n, 14)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set(xlabel="" if multi else "predicted", ylabel="label" if multi else "true", title=title)
    top = max((max(row) for row in confusion), default=0)
    for i, row in enumerate(confusion):
        for j, v in enumerate(row):
            color = "white" if top and v > top / 2 else "black"
            ax.text(j, i, str(v), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def table(results: dict[str, Any], labels: tuple[str, ...], multi: bool = False) -> list[str]:
    """The results as markdown: one row per data set, then each one's matrix."""
    out = ["| data | texts | accuracy | macro F1 | micro F1 |", "| --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        for label, m in [(name, r), (f"{name}, TF-IDF + logistic regression", r.get("baseline"))]:
            if m is not None:
                out.append(
                    f"| {label} | {m['texts']} | {m['accuracy']:.4f} | {m['macro_f1']:.4f} | "
                    f"{m['micro_f1']:.4f} |"
                )
        if "majority_accuracy" in r:
            out.append(
                f"| {name}, always its most common {'set of labels' if multi else 'label'} | "
                f"{r['texts']} | "
                f"{r['majority_accuracy']:.4f} | | |"
            )
    for name, r in results.items():
        out += ["", f"{name}: precision and recall by label, then true label by predicted", ""]
        out += ["| label | precision | recall | support |", "| --- | --- | --- | --- |"]
        out += [
            f"| {label} | {m['precision']:.4f} | {m['recall']:.4f} | {m['support']} |"
            for label, m in r["per_label"].items()
        ]
        if r.get("multi_label"):
            out += ["", "| label | " + " | ".join(MULTI_COLUMNS) + " |", "| --- " * 5 + "|"]
            out += [
                f"| {label} | " + " | ".join(str(v) for row in m for v in row) + " |"
                for label, m in zip(labels, r["confusion"])
            ]
            continue
        out += ["", "| true \\ predicted | " + " | ".join(labels) + " |"]
        out += ["| --- " * (len(labels) + 1) + "|"]
        out += [
            f"| {label} | " + " | ".join(str(v) for v in row) + " |"
            for label, row in zip(labels, r["confusion"])
        ]
    return out


def _names(label: Any, labels: tuple[str, ...]) -> Any:
    """A label id as its name; a multi-label row of 0/1 as the list of names set."""
    if isinstance(label, list):
        return [name for name, on in zip(labels, label) if on]
    return labels[label]


def _baseline(
    ctx: Any,
    suite: Any,
    results: dict[str, Any],
    labels: tuple[str, ...],
    tok: Any,
    files: dict[str, Path],
) -> None:
    """TF-IDF and logistic regression, fitted on the training split of the labeled
    sources, on what the classifier was measured on: each one's validation split and
    each listed file."""
    sources = {s[5:]: str(a.path) for s, a in sorted(ctx.inputs.items()) if s.startswith("data:")}
    train = source_texts(sources, "train", tok)
    ids = {name: i for i, name in enumerate(labels)}
    for name in results:
        if name in sources:
            texts, truth = source_texts({name: sources[name]}, "validation", tok)
        elif name in files:
            texts, truth = file_texts(files[name], suite)
        else:
            continue
        multi = bool(results[name].get("multi_label"))
        predicted = baseline_predictions(train, texts, labels, multi)
        if multi:
            rows = [[int(n in _as_list(t)) for n in labels] for t in truth]
            results[name]["baseline"] = scores(rows, predicted, labels)
        else:
            results[name]["baseline"] = scores([ids[t] for t in truth], predicted, labels)


def classification(ctx: Any, suite: Any) -> tuple[dict[str, Any], list[str]]:
    """Scores on every labeled source's validation split and every listed file; writes
    each one's predictions (``predictions.jsonl``) and confusion matrix
    (``confusion-<data>.png``)."""
    from llmbuild.backends.megatron.artifact import StageArtifact
    from llmbuild.backends.megatron.classifier import class_logits, load_classifier, text_start
    from llmbuild.backends.megatron.posttrain_data import LabeledSamples
    from llmbuild.backends.tokenizer.artifact import TokenizerArtifact

    from llmbuild.plan.digest import expand

    stage = StageArtifact.open(ctx.input("model"))
    model, config, labels = load_classifier(stage)
    seq_len = config["architecture"]["seq_len"]
    tok = TokenizerArtifact.open(ctx.input("tokenizer").path)
    start = text_start(config, tok)
    multi = bool(config.get("multi_label", False))
    sets: dict[str, Any] = {}
    for slot, artifact in sorted(ctx.inputs.items()):
        if slot.startswith("data:"):
            source = {slot[5:]: str(artifact.path)}
            try:
                samples = LabeledSamples(
                    source, "validation", seq_len, tok.pad_id, tok.eos_id, labels, 0, start, multi
                )
            except ValueError as e:
                raise UserError(f"{ctx.node}: source {slot[5:]!r}, {e}") from None
            if len(samples):
                sets[slot[5:]] = samples
            else:
                ctx.note(f"source {slot[5:]!r} has no validation split: not measured")
    files: dict[str, Path] = {}
    for pattern in suite.files:
        for path in expand(pattern):
            name = Path(path).name
            files[name] = Path(path)
            sets[name], lone = labeled_file(Path(path), suite, tok, labels, seq_len, start, multi)
            if stage.paired and lone:
                ctx.note(
                    f"{ctx.config.stage} learned pairs of texts, but {lone} of the "
                    f"{len(sets[name])} texts of {name} have no {suite.pair_field!r} field: they "
                    "are scored alone (the eval's pair_field names the field of the pair)"
                )
    if not sets:
        raise UserError(
            "nothing to measure: the labeled sources have no validation texts and no files "
            "are listed; set [data.split] validation, or list jsonl files in `files`"
        )
    results = {}
    with open(ctx.out_dir / "predictions.jsonl", "w") as f:
        for name, samples in sets.items():
            logits = class_logits(model, samples, suite.batch_size)
            if multi:
                probs = logits.sigmoid()
                predicted = (probs > 0.5).int().tolist()
                truth = samples.batch(list(range(len(samples))))["label"].int().tolist()
            else:
                probs = logits.softmax(-1)
                predicted = probs.argmax(-1).tolist()
                truth = [doc[1] for doc in samples.docs]
            results[name] = scores(truth, predicted, labels)
            results[name]["truncated"] = samples.truncated
            if truth:  # what always answering its most common label (set of labels) scores
                sets = [tuple(t) if multi else t for t in truth]
                results[name]["majority_accuracy"] = max(map(sets.count, set(sets))) / len(sets)
            for i, (t, p, row) in enumerate(zip(truth, predicted, probs.tolist())):
                f.write(
                    json.dumps(
                        {
                            "data": name,
                            "index": i,  # its place among the data's texts
                            "text": tok.decode(list(samples.docs[i][0])),  # as it was read
                            "label": _names(t, labels),
                            "predicted": _names(p, labels),
                            "probabilities": [round(x, 6) for x in row],
                        }
                    )
                    + "\n"
                )
            title = f"{ctx.config.stage} on {name}"
            png = ctx.out_dir / f"confusion-{name}.png"
            confusion_png(png, title, results[name]["confusion"], labels, multi)
    if suite.baseline:
        _baseline(ctx, suite, results, labels, tok, files)
    for name, r in results.items():
        if "majority_accuracy" in r:
            ctx.metrics[f"{name}.majority_accuracy"] = r["majority_accuracy"]
        for k in ("accuracy", "macro_f1", "micro_f1"):
            ctx.metrics[f"{name}.{k}"] = r[k]
            if "baseline" in r:
                ctx.metrics[f"{name}.baseline_{k}"] = r["baseline"][k]
    ctx.metrics["labels"] = list(labels)
    return results, table(results, labels, multi)
