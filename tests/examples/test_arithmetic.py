"""The post-training example builds on this CPU: tokenizer -> pretrain -> sft -> lora ->
dpo -> grpo, each stage measured on held-out additions with the example's lm-eval task."""

from __future__ import annotations

import pytest

from tests.examples.conftest import build_example


@pytest.mark.slow
def test_arithmetic_chain_builds_and_sft_learns_the_task(tmp_path, tmp_path_factory):
    outcome = build_example("arithmetic", tmp_path, tmp_path_factory)

    def accuracy(stage: str) -> float:
        return outcome.results[f"eval:addition@{stage}"].record.metrics["addition.exact_match"]

    # The pretrained model has never seen a chat; fine-tuning teaches it to answer.
    assert accuracy("sft") >= accuracy("pretrain") + 0.05, {
        s: accuracy(s) for s in ("pretrain", "sft", "lora", "dpo", "grpo")
    }
    dpo = outcome.results["stage:dpo"].record.metrics
    assert dpo["val_margin"] > 0 and dpo["val_accuracy"] > 0.5, dpo
    grpo = outcome.results["stage:grpo"].record.metrics
    assert "reward" in grpo and "val_reward" in grpo
    assert outcome.results["export:hf@grpo"].record.metrics["max_logit_diff"] < 1e-4
