"""The compression example builds on this CPU: a 2-layer student distilled from the
shakespeare teacher, and one cut from the teacher and then distilled, each beat the same
student trained from scratch for the same steps; the pruned one exports to transformers."""

from __future__ import annotations

import pytest

from tests.backends.conftest import run_nodes
from tests.conftest import suite_store
from tests.examples.conftest import copy_example


@pytest.mark.slow
def test_distilled_and_pruned_students_beat_the_student_from_scratch(tmp_path, tmp_path_factory):
    example = copy_example("compression", tmp_path)  # with the shakespeare data it reads
    outcome = run_nodes(example / "spec.toml", suite_store(tmp_path_factory))
    assert outcome.ok, outcome.log
    loss = {
        s: outcome.results[f"stage:{s}"].record.metrics["val_loss"]
        for s in ("pretrain", "scratch", "distilled", "pruned")
    }
    assert loss["distilled"] < loss["scratch"] - 0.02, loss
    assert loss["pruned"] < loss["scratch"] - 0.02, loss
    assert loss["pretrain"] < min(loss["scratch"], loss["distilled"], loss["pruned"]), loss
    cut = outcome.results["stage:cut"].record.metrics
    assert cut["dropped_layers"] == 2 and cut["parameters"] < cut["parameters_before"]
    assert outcome.results["export:hf@pruned"].record.metrics["max_logit_diff"] < 1e-4
