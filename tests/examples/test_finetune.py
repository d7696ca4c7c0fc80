"""The fine-tuning example builds from the tiny checkpoint its script writes: the import
is proven, SFT and then LoRA each teach what they target (lm-eval accuracy over chance),
chat answers stop at the end of the turn, and the exports load in their libraries."""

from __future__ import annotations

import torch

from tests.backends.conftest import artifact, run_nodes
from tests.conftest import suite_store
from tests.examples.conftest import copy_example


def test_finetune_example(tmp_path, tmp_path_factory):
    example = copy_example("finetune", tmp_path)
    store = suite_store(tmp_path_factory)
    outcome = run_nodes(example / "spec.toml", store)
    assert outcome.ok, outcome.log
    metric = "capitals.acc"
    acc = {
        s: outcome.results[f"eval:capitals@{s}"].record.metrics[metric]
        for s in ("base", "sft", "lora")
    }
    assert acc["base"] < 0.4  # four choices: chance is 0.25
    assert acc["sft"] > acc["base"] + 0.2  # SFT teaches the first half of the capitals
    assert acc["lora"] > acc["sft"] + 0.1  # LoRA on top teaches more
    assert outcome.results["stage:base"].record.metrics["max_logit_diff"] < 1e-4
    samples = outcome.results["eval:answers@sft"].record
    answers = (artifact(outcome, store, "eval:answers@sft") / "results.json").read_text()
    assert "Paris" in answers and "<|im_end|>" not in answers, answers
    assert samples.metrics["samples"] == 2

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    peft_dir = artifact(outcome, store, "export:peft@lora")
    base = AutoModelForCausalLM.from_pretrained(str(peft_dir / "base"), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(peft_dir)).eval()
    assert model(torch.tensor([[1, 2, 3]])).logits.shape[-1] == 512
    gguf = outcome.results["export:gguf@sft"].record.metrics
    assert gguf["quantization"] == "q8_0" and gguf["top1_agreement"] > 0.9
