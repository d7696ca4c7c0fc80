"""A classifier's labels: names mapped to ids once, from the stage's `labels` or the
training split's labels sorted, checked against the data before any rank starts.
Torch-free (the driver runs it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmbuild.errors import UserError, did_you_mean


def label_lists(dataset_dirs: list[Path]) -> int:
    """Texts labeled with a list of labels (multi-label) in the tokenized sources."""
    return sum(
        json.loads((d / "datasets.json").read_text()).get("label_lists", 0) for d in dataset_dirs
    )


def paired(dataset_dirs: list[Path]) -> bool:
    """Whether the tokenized labeled sources hold pairs of texts (a ``pair`` field)."""
    return any(
        d.get("pairs", False)
        for path in dataset_dirs
        for d in json.loads((path / "datasets.json").read_text())["datasets"]
    )


def label_counts(dataset_dirs: list[Path]) -> dict[str, dict[str, int]]:
    """Texts per label and split over the tokenized labeled sources (a multi-label text
    counts once for each of its labels)."""
    out: dict[str, dict[str, int]] = {"train": {}, "validation": {}}
    for d in dataset_dirs:
        index = json.loads((d / "datasets.json").read_text())
        for split, counts in index.get("labels", {}).items():
            for label, n in counts.items():
                out[split][label] = out[split].get(label, 0) + n
    return out


def _listed(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def label_names(node: str, stage: Any, counts: dict[str, dict[str, int]]) -> tuple[str, ...]:
    """The label names in id order. Raises a UserError for a label the data has and the
    mapping lacks, a listed label with no training text, or fewer than two labels."""
    train, valid = counts["train"], counts["validation"]
    where = f"{node} (stage.{stage.name}"
    if not train:
        raise UserError(f"{node}: the source {stage.data!r} has no training texts")
    if stage.labels is not None:
        names = tuple(stage.labels)
        unknown = sorted((set(train) | set(valid)) - set(names))
        if unknown:
            raise UserError(
                f"{where}.labels): the data has labels the stage does not list: "
                f"{_listed(unknown)}; add them to `labels`, or remove those texts"
            )
        empty = [n for n in names if n not in train]
        if empty:
            raise UserError(
                f"{where}.labels): no training text has the label {_listed(empty)}, so "
                "the classifier cannot learn it; remove it from `labels` or add texts"
            )
    else:
        names = tuple(sorted(train))
        unseen = sorted(set(valid) - set(train))
        if unseen:
            raise UserError(
                f"{where}.data): the validation split has labels no training text has: "
                f"{_listed(unseen)} ({sum(valid[n] for n in unseen)} texts); the "
                "classifier cannot learn them: add training texts with them, or remove them"
            )
    if len(names) < 2:
        raise UserError(
            f"{where}.data): every training text has the label {names[0]!r}; a classifier "
            "needs at least two labels"
        )
    return names


RARE_TEXTS = 3
RARE_SHARE = 0.01
"""A label is rare with fewer than RARE_TEXTS training texts or under RARE_SHARE of them:
too few to learn it from, and often a misspelt label or a stray value."""


def train_texts(dataset_dirs: list[Path]) -> int:
    """Texts in the training split of the tokenized labeled sources."""
    return sum(
        d["documents"]
        for path in dataset_dirs
        for d in json.loads((path / "datasets.json").read_text())["datasets"]
        if d["split"] == "train"
    )


def rare_labels(stage: Any, train: dict[str, int], total: int) -> str | None:
    """A note naming the rare labels of ``train`` (texts per label of the ``total``
    training texts) when the labels are taken from the data: with `labels` listed in the
    spec each is there on purpose, and a stray one is an error."""
    if stage.labels is not None or not total:
        return None
    rare = sorted(
        (n, name) for name, n in train.items() if n < RARE_TEXTS or n < RARE_SHARE * total
    )
    if not rare:
        return None
    each = ", ".join(f"{name!r} ({n} text{'' if n == 1 else 's'})" for n, name in rare[:8])
    more = f" and {len(rare) - 8} more" if len(rare) > 8 else ""
    return (
        f"few of the {total} training texts have the label{'s' if len(rare) > 1 else ''} "
        f"{each}{more}: too few to learn from (under {RARE_TEXTS}, or under "
        f"{RARE_SHARE:.0%} of them); a misspelt label or a stray value? Listing the "
        f"labels in `labels` of stage.{stage.name} makes any other label an error"
    )


def class_weights(stage: Any, names: tuple[str, ...]) -> tuple[float, ...]:
    """The loss weight of each label id (1 where the stage gives none); empty when the
    stage weighs none."""
    weights = stage.class_weights or {}
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise UserError(
            f"stage.{stage.name}.class_weights names labels the data does not have: "
            f"{_listed(unknown)}{did_you_mean(unknown[0], names)} (its labels: {_listed(list(names))})"
        )
    return tuple(float(weights.get(n, 1.0)) for n in names) if weights else ()
