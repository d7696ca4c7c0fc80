"""The fine-tuning example builds from the tiny checkpoint its script writes: the import
is proven, SFT and then LoRA each teach what they target (lm-eval accuracy over chance),
chat answers stop at the end of the turn, and the exports load in their libraries."""

from __future__ import annotations

import math

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
    # PEFT's adapters hold the trained ones, a fused layer's A once per part it splits
    # into (q, k and v; gate and up): each distinct A counts once
    lora, seen_a = 0, []
    for name, p in model.named_parameters():
        if ".lora_B" in name:
            lora += p.numel()
        elif ".lora_A" in name and not any(torch.equal(p, a) for a in seen_a):
            lora, seen_a = lora + p.numel(), [*seen_a, p]
    assert outcome.results["stage:lora"].record.metrics["adapter_parameters"] == lora > 0
    gguf = outcome.results["export:gguf@sft"].record.metrics
    assert gguf["quantization"] == "q8_0" and gguf["top1_agreement"] > 0.9
    assert gguf["heldout_tokens"] > 0 and abs(gguf["perplexity_ratio"] - 1) < 0.05, gguf
    few = [n for n in outcome.results["export:gguf@sft"].record.notes if "tokens only" in n]
    assert bool(few) == (gguf["heldout_tokens"] < 1000), (few, gguf)  # a ratio of few is said
    # of held-out chats, the answers SFT learned (not the prompts), as its val_loss measures
    val_loss = outcome.results["stage:sft"].record.metrics["val_loss"]
    assert abs(math.log(gguf["unquantized_perplexity"]) - val_loss) < 0.5, (gguf, val_loss)


def test_chat_answers_stop_at_the_end_of_the_turn_everywhere(tmp_path, tmp_path_factory, capsys):
    """transformers' generate() with the hf export's own defaults, `llmbuild generate
    --chat` from a stage and from the export, and the GGUF file's end-of-turn id."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmbuild.cli import main

    example = copy_example("finetune", tmp_path)
    store = suite_store(tmp_path_factory)
    outcome = run_nodes(example / "spec.toml", store)  # built by the test above
    hf_dir = artifact(outcome, store, "export:hf@lora")
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end in model.generation_config.eos_token_id
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt")
    ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
    new = model.generate(ids, max_new_tokens=40)[0, ids.shape[1] :].tolist()
    assert new[-1] == end and end not in new[:-1] and len(new) < 40, tok.decode(new)
    assert "Paris" in tok.decode(new)

    for source in (["--stage", "lora"], ["--export", "hf@lora"]):
        argv = ["generate", str(example / "spec.toml"), "--store", str(store), *source,
                "--chat", "--temperature", "0", "--max-new-tokens", "40",
                "--prompt", "What is the capital of France?"]  # fmt: skip
        assert main(argv) == 0
        said = capsys.readouterr()
        answer = said.out.strip()
        assert "Paris" in answer and "<|im_end|>" not in answer and len(answer) < 60, answer
        assert "max_length" not in said.err, said.err  # no warning of two length limits

    reader = gguf.GGUFReader(str(artifact(outcome, store, "export:gguf@sft") / "model.gguf"))
    assert reader.fields["tokenizer.ggml.eot_token_id"].contents() == end
