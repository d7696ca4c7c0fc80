"""The main example builds on this CPU: validation loss below 2.0, evals, hf export."""

from __future__ import annotations

import shutil

from tests.backends.conftest import run_nodes
from tests.conftest import REPO


def test_shakespeare_reaches_validation_loss_below_2(tmp_path):
    example = tmp_path / "shakespeare"
    shutil.copytree(
        REPO / "examples" / "shakespeare", example, ignore=shutil.ignore_patterns(".llmbuild")
    )
    outcome = run_nodes(example / "spec.toml", tmp_path / "store")
    assert outcome.ok, outcome.log
    metrics = outcome.results["stage:pretrain"].record["metrics"]
    assert metrics["steps"] == 1500
    assert metrics["val_loss"] < 2.0, metrics
    assert outcome.results["eval:ppl@pretrain"].record["metrics"]["shakespeare.loss"] < 2.0
    assert outcome.results["export:hf@pretrain"].record["metrics"]["max_logit_diff"] < 1e-4
