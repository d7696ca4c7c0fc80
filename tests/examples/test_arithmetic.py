"""The post-training example builds on this CPU: tokenizer -> pretrain -> sft -> lora ->
dpo -> grpo, each stage measured on held-out additions with the example's lm-eval task;
and GRPO, started from a model that gets the sums partly right, raises both its reward
and its held-out exact match."""

from __future__ import annotations

import pytest

from tests.examples.conftest import build_example

STAGES = ("pretrain", "sft", "lora", "dpo", "grpo")


@pytest.mark.slow
def test_arithmetic_chain_improves_stage_by_stage(tmp_path, tmp_path_factory):
    outcome = build_example("arithmetic", tmp_path, tmp_path_factory)

    def accuracy(stage: str) -> float:
        return outcome.results[f"eval:addition@{stage}"].record.metrics["addition.exact_match"]

    em = {s: accuracy(s) for s in STAGES}
    # The pretrained model has never seen a chat; fine-tuning teaches it the task.
    assert em["pretrain"] < 0.1 and em["sft"] >= 0.80, em
    assert em["lora"] >= em["sft"] - 0.05, em
    assert em["dpo"] >= em["sft"], em
    assert em["grpo"] >= min(em["dpo"] + 0.05, 0.95), em
    dpo = outcome.results["stage:dpo"].record.metrics
    # DPO's own target: the chosen answer over the rejected one, on held-out pairs.
    assert dpo["val_accuracy"] >= dpo["initial_val_accuracy"] + 0.5, dpo
    assert dpo["val_loss"] < dpo["initial_val_loss"] - 0.2 and dpo["val_margin"] > 0, dpo
    grpo = outcome.results["stage:grpo"].record.metrics
    assert grpo["val_reward"] >= 0.95, grpo
    assert outcome.results["export:hf@grpo"].record.metrics["max_logit_diff"] < 1e-4


@pytest.mark.slow
def test_grpo_raises_reward_and_exact_match_from_a_partly_right_model(tmp_path, tmp_path_factory):
    """The example's `grpo-short` starts from a fine-tune that gets some sums right."""
    outcome = build_example("arithmetic", tmp_path, tmp_path_factory)
    evals = {
        s: outcome.results[f"eval:addition@{s}"].record.metrics["addition.exact_match"]
        for s in ("sft-short", "grpo-short")
    }
    assert 0.05 < evals["sft-short"] < 0.9, evals  # partly right: there is something to learn
    assert evals["grpo-short"] >= evals["sft-short"] + 0.05, evals
    grpo = outcome.results["stage:grpo-short"].record.metrics
    # The mean partial-credit reward of greedy answers to held-out prompts, before and after.
    assert grpo["val_reward"] >= grpo["initial_val_reward"] + 0.05, grpo
    assert 0 < grpo["informative"] <= 1, grpo
