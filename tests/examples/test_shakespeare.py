"""The main example builds on this CPU: validation loss below 2.0, evals, hf export."""

from __future__ import annotations

from tests.examples.conftest import build_example


def test_shakespeare_reaches_validation_loss_below_2(tmp_path, tmp_path_factory):
    outcome = build_example("shakespeare", tmp_path, tmp_path_factory)
    metrics = outcome.results["stage:pretrain"].record.metrics
    assert metrics["steps"] == 1500
    assert metrics["val_loss"] < 2.0, metrics
    assert outcome.results["eval:ppl@pretrain"].record.metrics["shakespeare.loss"] < 2.0
    assert outcome.results["export:hf@pretrain"].record.metrics["max_logit_diff"] < 1e-4
