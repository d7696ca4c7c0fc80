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
    assert "progress eval:gen@pretrain  tokens 0/24" in outcome.log  # two prompts x 12
    if style == "gpt2":  # a file that is not UTF-8 is said plainly, the stage kept
        (spec.parent / "data" / "bad.txt").write_bytes(b"fine text \xff\xfe more")
        spec.write_text(spec.read_text().replace('"data/text.txt"]', '"data/bad.txt"]'))
        bad = run_nodes(spec, store, ("eval:ppl@pretrain",))
        assert bad.results["stage:pretrain"].state == "cached"
        detail = bad.results["eval:ppl@pretrain"].detail
        assert "bad.txt: not valid UTF-8 (byte 0xff at offset 10)" in detail, detail
        assert "Traceback" not in detail

    import torch
    from llmbuild.backends.megatron.generate import load_model, sample
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_dir = artifact(outcome, store, "export:hf@pretrain")
    record = outcome.results["export:hf@pretrain"].record
    assert record.metrics["max_logit_diff"] < 1e-4
    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    assert type(hf).__name__ == ("GPT2LMHeadModel" if style == "gpt2" else "LlamaForCausalLM")
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    # as transformers 4 reads it too: 5 calls the class TokenizersBackend, which 4 lacks
    settings = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert settings["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "<|im_start|>" in settings["additional_special_tokens"]  # a list, as 4 reads it
    assert "extra_special_tokens" not in settings and "<|im_start|>" in tok.all_special_tokens
    assert "<|im_start|>" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False
    )
    ours, config = load_model(artifact(outcome, store, "stage:pretrain"))
    vocab = config["vocab_size"]
    told: list[int] = []  # a samples eval's progress: the count after each new token
    new = sample(ours, config, [1, 2, 3], 40, temperature=1.0, seed=3, progress=told.append)
    assert told == list(range(1, len(new) + 1)) and new
    ids = torch.randint(0, vocab, (3, 32), generator=torch.Generator().manual_seed(42))
    with torch.no_grad():
        a = ours(ids, torch.arange(32).unsqueeze(0).expand(3, -1), None)[..., :vocab]
        b = hf(ids).logits
    assert (a - b).abs().max() < 1e-4


def test_status_shows_losses_evals_samples_and_compares(tmp_path, capsys):
    from llmbuild.cli import main

    spec = tiny_spec(tmp_path, steps=6, extra=OUTPUTS.split("[[export]]")[0])
    store = str(tmp_path / "store")
    assert main(["status", str(spec), "--store", store]) == 0
    assert "nothing built yet" in capsys.readouterr().out
    assert run_nodes(spec, tmp_path / "store").ok
    assert main(["status", str(spec), "--store", store, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["nodes"]["eval:ppl@pretrain"] == "cached"
    stage, evals = data["stages"]["pretrain"], data["evals"]
    assert stage["steps"] == 6 and stage["loss"] > 0 and stage["val_loss"] > 0
    loss = evals["ppl.text.loss"]["pretrain"]
    assert abs(evals["ppl.text.perplexity"]["pretrain"] - math.exp(loss)) < 1e-9
    assert "gen.samples" not in evals  # a count says nothing: the texts are shown
    (romeo, juliet) = data["samples"]["eval:gen@pretrain"]
    assert romeo["prompt"] == "ROMEO:" and juliet["prompt"] == "JULIET:"

    assert main(["status", str(spec), "--store", store]) == 0
    out = capsys.readouterr().out
    assert "| stage | parameters | steps | train loss | val loss | tokens/s |" in out
    assert "| metric | pretrain |" in out and "| ppl.text.perplexity |" in out
    assert f"ROMEO: -> {json.dumps(romeo['completion'])[1:-1][:20]}" in out

    longer = tiny_spec(tmp_path / "longer", steps=8, extra=OUTPUTS.split("[[export]]")[0])
    assert run_nodes(longer, tmp_path / "store").ok
    assert main(["status", str(spec), "--store", store, "--compare", str(longer)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| stage:pretrain.steps |"))
    assert row.split("|")[2:5] == [" 6 ", " 8 ", " +2 (+33.3%) "], row
    assert "| eval:ppl@pretrain.text.perplexity |" in out  # beside its loss, as status shows it
    assert main(["runs", "--store", store, "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    (spec_hash,) = {b["spec_hash"] for b in runs if b["spec_path"] == str(longer)}
    assert main(["status", str(spec), "--store", store, "--compare", spec_hash[:8]]) == 0
    assert row in capsys.readouterr().out  # a recorded build compares as its spec does
    assert main(["status", str(spec), "--store", store, "--compare", "nosuchbuild"]) == 2
    assert "neither a spec file nor the spec hash" in capsys.readouterr().err
