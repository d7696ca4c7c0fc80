"""The classifier example builds on this CPU: a bert-style encoder pretrained with
masked-LM tells five Shakespeare characters apart by their speeches well above the
majority rate, and the eval measures TF-IDF + logistic regression on the same split."""

from __future__ import annotations

import json

import pytest

from tests.examples.conftest import build_example


@pytest.mark.slow
def test_the_encoder_learns_who_speaks_and_is_measured_beside_tfidf(tmp_path, tmp_path_factory):
    outcome = build_example("classifier", tmp_path, tmp_path_factory)
    mlm = outcome.results["stage:mlm"].record.metrics
    assert mlm["val_loss"] < mlm["initial_val_loss"] - 1.0
    assert mlm["val_accuracy"] > mlm["unigram_accuracy"] + 0.04, mlm
    ev = outcome.results["eval:speakers@speaker"].record.metrics
    labels = [json.loads(line)["label"] for line in
              (tmp_path / "classifier" / "data" / "speeches.jsonl").read_text().splitlines()]  # fmt: skip
    assert ev["speeches.majority_accuracy"] > max(map(labels.count, set(labels))) / len(labels)
    # the held-out speeches' most frequent speaker, as the eval measures it
    assert ev["speeches.accuracy"] > ev["speeches.majority_accuracy"] + 0.08, ev
    assert 0.3 < ev["speeches.baseline_accuracy"] < 1.0, ev
    assert outcome.results["export:hf@speaker"].record.metrics["max_logit_diff"] < 1e-4
