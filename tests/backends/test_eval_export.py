"""Perplexity and samples evals, and the hf export proven against transformers."""

from __future__ import annotations

import json
import math

import pytest

from tests.backends.conftest import artifact, run_nodes
from tests.backends.test_megatron import tiny_spec

OUTPUTS = """
[[eval]]
name = "ppl"
kind = "perplexity"
stages = ["pretrain"]
files = ["data/text.txt"]
max_batches = 2
batch_size = 4
[[eval]]
name = "gen"
kind = "samples"
stages = ["pretrain"]
prompts = ["ROMEO:", "JULIET:"]
max_new_tokens = 12
[[export]]
format = "hf"
stage = "pretrain"
"""


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_evals_and_hf_export(tmp_path, style):
    spec = tiny_spec(tmp_path, style, steps=12, extra=OUTPUTS)
    store = tmp_path / "store"
    outcome = run_nodes(spec, store)
    assert outcome.ok, outcome.log

    ppl = json.loads((artifact(outcome, store, "eval:ppl@pretrain") / "results.json").read_text())
    text, data = ppl["results"]["text.txt"], ppl["results"]["text"]
    assert text["tokens"] == 2 * 4 * 32 and abs(text["perplexity"] - math.exp(text["loss"])) < 1e-6
    val_loss = outcome.results["stage:pretrain"].record.metrics["val_loss"]
    assert abs(data["loss"] - val_loss) < 0.5  # the same model on the same split
    md = (artifact(outcome, store, "eval:ppl@pretrain") / "results.md").read_text()
    assert md.startswith("| data | tokens | loss | perplexity |")
    gen = json.loads((artifact(outcome, store, "eval:gen@pretrain") / "results.json").read_text())
    assert [r["prompt"] for r in gen["results"]] == ["ROMEO:", "JULIET:"]

    import torch
    from llmbuild.backends.megatron.generate import load_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_dir = artifact(outcome, store, "export:hf@pretrain")
    record = outcome.results["export:hf@pretrain"].record
    assert record.metrics["max_logit_diff"] < 1e-4
    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    assert type(hf).__name__ == ("GPT2LMHeadModel" if style == "gpt2" else "LlamaForCausalLM")
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    assert "<|im_start|>" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False
    )
    ours, config = load_model(artifact(outcome, store, "stage:pretrain"))
    vocab = config["vocab_size"]
    ids = torch.randint(0, vocab, (3, 32), generator=torch.Generator().manual_seed(42))
    with torch.no_grad():
        a = ours(ids, torch.arange(32).unsqueeze(0).expand(3, -1), None)[..., :vocab]
        b = hf(ids).logits
    assert (a - b).abs().max() < 1e-4


def test_status_shows_the_eval_table(tmp_path, capsys):
    from llmbuild.cli import main

    spec = tiny_spec(tmp_path, steps=6, extra=OUTPUTS.split("[[export]]")[0])
    store = str(tmp_path / "store")
    assert main(["status", str(spec), "--store", store]) == 0
    assert "no eval results yet" in capsys.readouterr().out
    assert run_nodes(spec, tmp_path / "store").ok
    assert main(["status", str(spec), "--store", store]) == 0
    out = capsys.readouterr().out
    assert "| metric | pretrain |" in out and "| ppl.text.loss |" in out
    assert main(["status", str(spec), "--store", store, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["evals"]["ppl.text.loss"]) == {"pretrain"}
    assert data["nodes"]["eval:ppl@pretrain"] == "cached"
