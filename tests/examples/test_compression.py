"""The compression example builds on this CPU: a 2-layer student distilled from the
shakespeare teacher, and one cut from the teacher and then distilled, each beat the same
student trained from scratch for the same steps; the pruned one exports to transformers."""

from __future__ import annotations

import pytest

from tests.examples.conftest import build_example


@pytest.mark.slow
def test_distilled_and_pruned_students_beat_the_student_from_scratch(tmp_path, tmp_path_factory):
    # The teacher is the main example's model, the same node: read from its build.
    outcome = build_example("compression", tmp_path, tmp_path_factory, seed="shakespeare")
    loss = {
        s: outcome.results[f"stage:{s}"].record.metrics["val_loss"]
        for s in ("pretrain", "scratch", "distilled", "pruned")
    }
    assert loss["distilled"] < loss["scratch"] - 0.05, loss
    # Cut from the teacher, then healed: far ahead of both students, near the teacher.
    assert loss["pruned"] < loss["distilled"] - 0.1, loss
    assert loss["pruned"] < loss["pretrain"] + 0.05, loss
    cut = outcome.results["stage:cut"].record.metrics
    assert cut["dropped_layers"] == 2 and cut["parameters"] < cut["parameters_before"]
    assert outcome.results["export:hf@pruned"].record.metrics["max_logit_diff"] < 1e-4
