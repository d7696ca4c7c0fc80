"""The tokenizer over an imported base: a checkpoint that ships only a sentencepiece
``tokenizer.model`` is read as transformers reads it, and a spec's own tokenizer replaces
the checkpoint's; either one larger than the embedding is a located error at validate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmbuild.errors import SpecError
from llmbuild.spec.load import load_spec
from tests.backends.conftest import artifact, run_nodes
from tests.checkpoints import TEXT, import_spec, write_checkpoint

MORE = """
[[stage]]
name = "more"
kind = "pretrain"
from = "base"
steps = 2
global_batch = 4
lr = 1e-3
"""


def sentencepiece_only(ck: Path, pieces: int) -> None:
    """Replace the checkpoint's tokenizer by a sentencepiece model of ``pieces`` pieces,
    as a Llama 2 repository ships it (``tokenizer.model``, no ``tokenizer.json``)."""
    import sentencepiece

    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (ck / name).unlink(missing_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT.split(". ")),
        model_prefix=str(ck / "tokenizer"),
        vocab_size=pieces,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    (ck / "tokenizer.vocab").unlink()
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>"}
    (ck / "tokenizer_config.json").write_text(json.dumps({**config, "unk_token": "<unk>"}))


def _problem(spec: Path):
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    (problem,) = info.value.problems
    return problem


def test_a_sentencepiece_only_checkpoint_brings_its_tokenizer(tmp_path):
    ck = write_checkpoint(tmp_path / "ck", "llama")
    sentencepiece_only(ck, 120)
    spec = import_spec(tmp_path, ck, MORE)
    outcome = run_nodes(spec, tmp_path / "store", ("stage:more",))
    assert outcome.ok, outcome.log
    assert outcome.results["tokenizer"].record.metrics["vocab_size"] == 120
    more = json.loads(
        (artifact(outcome, tmp_path / "store", "stage:more") / "config.json").read_text()
    )
    assert more["vocab_size"] == 384  # the embedding's rows, which the 120 pieces fit
    # More pieces than the embedding has rows: said at validate, at the checkpoint.
    config = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**config, "vocab_size": 100}))
    problem = _problem(spec)
    assert problem.key == "stage[0].checkpoint"
    assert "tokenizer has 120 tokens but its embedding only 100 rows" in problem.message


def test_the_specs_own_tokenizer_replaces_the_checkpoints(tmp_path):
    ck = write_checkpoint(tmp_path / "ck", "qwen2")
    spec = import_spec(tmp_path, ck, '[tokenizer]\nkind = "char"\n' + MORE)
    outcome = run_nodes(spec, tmp_path / "store", ("stage:more",))
    assert outcome.ok, outcome.log
    chars = outcome.results["tokenizer"].record.metrics["vocab_size"]
    assert chars < 100  # the characters of the text, not the checkpoint's 320 tokens
    assert outcome.results["stage:more"].record.metrics["loss"] > 0
    # A tokenizer declared larger than the imported embedding: located at its vocab_size.
    spec.write_text(spec.read_text().replace('kind = "char"', 'kind = "bpe"\nvocab_size = 1000'))
    problem = _problem(spec)
    assert problem.key == "tokenizer.vocab_size" and problem.line == 14
    assert "1000 tokens but the imported embedding only 384 rows" in problem.message
