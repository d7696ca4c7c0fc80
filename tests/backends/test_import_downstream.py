"""The rest of what follows an imported base (sft, lora, lm-eval, hf and peft exports are
in test_import_train.py): continued pretraining, dpo, a reward model, grpo with that
reward model, perplexity, and onnx and gguf exports, from an untied llama checkpoint."""

from __future__ import annotations

import json

import pytest

from tests.backends.conftest import run_nodes
from tests.checkpoints import import_spec, write_checkpoint
from tests.conftest import suite_store

LINES = [
    f"{w} {n} is a number and {n} plus one is {n + 1}." for n in range(40) for w in ("Say", "Note")
]
STAGES = """
[[data.sources]]
name = "lines"
path = "lines.txt"
separator = "\\n"

[[data.sources]]
name = "prefs"
path = "prefs.jsonl"
role = "preferences"

[[data.sources]]
name = "prompts"
path = "prompts.jsonl"
role = "prompts"

[data.split]
validation = 0.2

[[stage]]
name = "more"
kind = "pretrain"
from = "base"
data = "lines"
steps = 8
global_batch = 4
lr = 3e-3

[[stage]]
name = "dpo"
kind = "dpo"
from = "base"
data = "prefs"
steps = 4
global_batch = 4
lr = 1e-3

[[stage]]
name = "rm"
kind = "reward"
from = "base"
data = "prefs"
steps = 4
global_batch = 4
lr = 1e-3

[[stage]]
name = "rl"
kind = "grpo"
from = "base"
data = "prompts"
steps = 2
global_batch = 2
lr = 1e-4
num_generations = 2
max_new_tokens = 4
rewards = [{ kind = "exact_match" }, { kind = "model", stage = "rm" }]

[[eval]]
name = "ppl"
kind = "perplexity"
stages = ["base", "more"]
sources = ["lines"]

[[export]]
format = "onnx"
stage = "base"

[[export]]
format = "gguf"
stage = "more"
quantization = "f16"
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("import-downstream")
    ck = write_checkpoint(root / "ck", "llama", tie_word_embeddings=False)
    (root / "lines.txt").write_text("\n".join(LINES) + "\n")
    pairs = [
        {"prompt": f"What is {n} plus one?", "chosen": f"{n + 1}.", "rejected": "I do not know."}
        for n in range(40)
    ]
    (root / "prefs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    prompts = [{"prompt": f"What is {n} plus one?", "answer": str(n + 1)} for n in range(40)]
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    outcome = run_nodes(import_spec(root, ck, STAGES), suite_store(tmp_path_factory))
    assert outcome.ok, outcome.log
    return outcome


def test_every_other_kind_trains_from_an_imported_base(built):
    def metrics(node):
        return built.results[node].record.metrics

    assert metrics("stage:more")["steps"] == 8
    assert {"val_margin", "val_accuracy"} <= set(metrics("stage:dpo")), metrics("stage:dpo")
    assert "val_accuracy" in metrics("stage:rm"), metrics("stage:rm")
    assert {"reward", "val_reward"} <= set(metrics("stage:rl")), metrics("stage:rl")
    # Continued pretraining on the lines lowers their held-out loss well below the base's.
    base, more = metrics("eval:ppl@base")["lines.loss"], metrics("eval:ppl@more")["lines.loss"]
    assert more < base - 0.5, (base, more)


def test_onnx_and_gguf_exports_of_an_imported_base_are_verified(built):
    assert built.results["export:onnx@base"].record.metrics["max_logit_diff"] < 1e-3
    assert built.results["export:onnx@base"].record.metrics["padded_max_logit_diff"] < 1e-3
    assert built.results["export:gguf@more"].record.metrics["top1_agreement"] > 0.9
