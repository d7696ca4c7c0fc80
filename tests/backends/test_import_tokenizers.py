"""The tokenizer over an imported base: a checkpoint that ships only a sentencepiece
``tokenizer.model`` is read as transformers reads it, and a spec's own tokenizer replaces
the checkpoint's; either one larger than the embedding is a located error at validate, and
so is a checkpoint with no tokenizer at all."""

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
    assert not outcome.results["tokenizer"].record.notes
    # chatml over a vocabulary without its markers: the build says what that means
    chatml = tmp_path / "chatml.toml"
    chatml.write_text(spec.read_text() + '\n[tokenizer]\nchat_template = "chatml"\n')
    outcome = run_nodes(chatml, tmp_path / "store", ("tokenizer",))
    assert outcome.ok, outcome.log
    (note,) = outcome.results["tokenizer"].record.notes
    assert "has no <|im_start|> and <|im_end|> tokens" in note, note
    assert "leave chat_template unset" in note and note in outcome.log
    # without a template of its own, the note suggests none to keep
    (ck / "chat_template.jinja").unlink()
    outcome = run_nodes(chatml, tmp_path / "store", ("tokenizer",))
    assert outcome.ok, outcome.log
    (note,) = outcome.results["tokenizer"].record.notes
    assert "leave chat_template unset" not in note, note
    assert (
        "generate, serve and chat end a reply where <|im_end|> is written out); give a "
        "Jinja template written with its special tokens" in note
    )
    # A text prompt is encoded as transformers encodes it: a Llama tokenizer that adds <s>
    # (add_bos_token, as Llama 2's has) starts it with <s> in `generate` and the server.
    from llmbuild.backends.tokenizer.artifact import TokenizerArtifact
    from transformers import AutoTokenizer

    settings = json.loads((ck / "tokenizer_config.json").read_text())
    (ck / "tokenizer_config.json").write_text(json.dumps({**settings, "add_bos_token": True}))
    outcome = run_nodes(spec, tmp_path / "store", ("tokenizer",))
    assert outcome.ok, outcome.log
    ours = TokenizerArtifact.open(artifact(outcome, tmp_path / "store", "tokenizer"))
    theirs = AutoTokenizer.from_pretrained(str(ck))
    assert ours.completion_ids("the fox") == theirs("the fox")["input_ids"]
    assert ours.completion_ids("the fox")[0] == theirs.bos_token_id != ours.prompt_ids("the")[0]
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


def test_another_pretrained_tokenizer_than_the_checkpoints_is_warned_of(tmp_path):
    """Its ids mean other text to the imported embedding; a copy of the checkpoint's own
    tokenizer (the same tokenizer.json) is not warned of."""
    import shutil

    from llmbuild.spec.advice import tokenizer_over_import
    from tests.checkpoints import tokenizer

    ck = write_checkpoint(tmp_path / "ck", "qwen2")
    other, copy = tmp_path / "other", tmp_path / "copy"
    tokenizer(300).save_pretrained(str(other))
    shutil.copytree(ck, copy)

    def warned(path: Path) -> list[str]:
        spec = import_spec(tmp_path, ck, f'[tokenizer]\nkind = "pretrained"\npath = "{path}"\n')
        return [p.message for p in tokenizer_over_import(load_spec(spec).spec)]

    (said,) = warned(other)
    assert f"this tokenizer ({other}) is another one" in said
    assert warned(copy) == [] and warned(ck) == []


def test_a_tokenizer_known_larger_than_the_embedding_is_refused_at_validate(tmp_path):
    """The byte tokenizer's 256 bytes and special tokens, or a pretrained tokenizer's
    files, against an embedding of fewer rows: located at the key that decides it."""
    ck = write_checkpoint(tmp_path / "ck", "qwen2")
    config = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**config, "vocab_size": 200}))
    spec = import_spec(tmp_path, ck, '[tokenizer]\nkind = "byte"\n')
    problem = _problem(spec)
    assert problem.key == "tokenizer.kind" and problem.line == 13
    assert "262 tokens but the imported embedding only 200 rows" in problem.message
    other = write_checkpoint(tmp_path / "other", "qwen2")
    spec.write_text(
        spec.read_text().replace('kind = "byte"', f'kind = "pretrained"\npath = "{other}"')
    )
    problem = _problem(spec)
    assert problem.key == "tokenizer.path"
    assert "320 tokens but the imported embedding only 200 rows" in problem.message


def test_a_special_token_its_vocabulary_lacks_counts_as_transformers_adds_it(tmp_path):
    """A tokenizer_config.json naming an eos token the vocabulary does not have: transformers
    adds it as a new id, one past the embedding; validate counts it and says why."""
    from transformers import AutoTokenizer

    ck = write_checkpoint(tmp_path / "ck", "llama", vocab_size=320)  # as many as its tokens
    rows = json.loads((ck / "config.json").read_text())["vocab_size"]
    config = json.loads((ck / "tokenizer_config.json").read_text())
    (ck / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": "<|nope|>"}))
    assert len(AutoTokenizer.from_pretrained(str(ck))) == rows + 1  # the reference's count
    problem = _problem(import_spec(tmp_path, ck))
    assert f"the checkpoint's tokenizer has {rows + 1} tokens but its embedding only {rows}" in (
        problem.message
    )
    assert "tokenizer_config.json names '<|nope|>' as special, and its vocabulary has no" in (
        problem.message
    )


def test_a_checkpoint_without_a_tokenizer_is_a_clear_error(tmp_path):
    """No tokenizer files: said at validate (transformers would make an empty tokenizer,
    and training on no tokens reach a loss of zero); a pretrained [tokenizer] pointing at
    such a directory fails its node, plainly."""
    ck = write_checkpoint(tmp_path / "ck", "gpt2")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (ck / name).unlink(missing_ok=True)
    spec = import_spec(tmp_path, ck)
    problem = _problem(spec)
    assert problem.key == "stage[0].checkpoint"
    assert "holds no tokenizer (no tokenizer.json, tokenizer.model" in problem.message
    assert "give the spec a [tokenizer] table" in problem.message
    spec.write_text(spec.read_text() + f'\n[tokenizer]\nkind = "pretrained"\npath = "{ck}"\n')
    outcome = run_nodes(spec, tmp_path / "store", ("tokenizer",))
    assert not outcome.ok
    detail = outcome.results["tokenizer"].detail
    assert "turns text into no tokens" in detail and "Traceback" not in detail, detail


def test_a_tokenizer_without_an_end_or_separator_token_says_which_it_lacks(tmp_path):
    ck = write_checkpoint(tmp_path / "ck", "bert")
    config = json.loads((ck / "tokenizer_config.json").read_text())
    bare = {k: v for k, v in config.items() if k not in ("sep_token", "cls_token")}
    (ck / "tokenizer_config.json").write_text(
        json.dumps({**bare, "tokenizer_class": "PreTrainedTokenizerFast"})
    )
    outcome = run_nodes(import_spec(tmp_path, ck), tmp_path / "store", ("tokenizer",))
    assert not outcome.ok
    detail = outcome.results["tokenizer"].detail
    assert (
        "has no end-of-sequence token: a decoder's tokenizer names one (eos_token), an "
        "encoder's a separator (sep_token, BERT's [SEP]"
    ) in detail, detail


def test_a_checkpoint_whose_tokenizer_json_is_broken_is_located(tmp_path):
    ck = write_checkpoint(tmp_path / "ck", "gpt2")
    (ck / "tokenizer.json").write_text('{"model": {"vocab": ')  # cut short
    problem = _problem(import_spec(tmp_path, ck))
    assert problem.key == "stage[0].checkpoint"
    assert f"{ck / 'tokenizer.json'}: not a readable tokenizer (Expecting value" in problem.message
    (ck / "tokenizer.json").write_text('["a list, not a tokenizer"]')
    problem = _problem(import_spec(tmp_path, ck))
    assert "tokenizer.json: not a readable tokenizer (AttributeError" in problem.message


CHAT_SOURCE = """
[[data.sources]]
name = "talk"
path = "talk.jsonl"
role = "chat"
"""


def test_a_tokenizer_without_a_chat_template_is_said_where_chats_need_one(tmp_path):
    """A base model's tokenizer has no chat template: chat data, a chat prompt and the
    spec's own template each behave plainly."""
    from llmbuild.backends.tokenizer.artifact import TokenizerArtifact

    from llmbuild.errors import UserError

    ck = write_checkpoint(tmp_path / "ck", "llama")
    (ck / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((ck / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (ck / "tokenizer_config.json").write_text(json.dumps(config))
    chat = {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    }
    (tmp_path / "talk.jsonl").write_text(json.dumps(chat) + "\n")
    # chat data: said at validate, at the source, before anything builds
    spec = import_spec(tmp_path, ck, CHAT_SOURCE)
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    (problem,) = e.value.problems
    assert problem.key == "data.sources[1].role", problem
    assert "source 'talk' holds conversations (role 'chat'), and the tokenizer at" in str(problem)
    assert 'has no chat template: set [tokenizer] chat_template = "chatml"' in str(problem)
    # a chat prompt to the checkpoint's own tokenizer
    outcome = run_nodes(import_spec(tmp_path, ck), tmp_path / "store", ("tokenizer",))
    assert outcome.ok, outcome.log
    tok = TokenizerArtifact.open(artifact(outcome, tmp_path / "store", "tokenizer"))
    with pytest.raises(UserError, match="a chat prompt needs one"):
        tok.chat_prompt("Hi")
    spec = import_spec(tmp_path, ck, CHAT_SOURCE)
    # as the message says: the table sets the template, the checkpoint the rest
    spec.write_text(spec.read_text() + '\n[tokenizer]\nchat_template = "chatml"\n')
    tokenizer = load_spec(spec).spec.tokenizer
    assert (tokenizer.kind, tokenizer.path) == ("pretrained", str(ck))
    outcome = run_nodes(spec, tmp_path / "store", ("tokenize:talk",))
    assert outcome.ok, outcome.log


def test_a_chat_template_that_drops_the_answer_is_said_at_tokenize(tmp_path):
    """A template that renders no message content (``"hello"``) leaves no answer to learn:
    the tokenize node says so, instead of the stage blaming seq_len."""
    ck = write_checkpoint(tmp_path / "ck", "llama")
    chat = {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    }
    (tmp_path / "talk.jsonl").write_text(json.dumps(chat) + "\n")
    spec = import_spec(tmp_path, ck, CHAT_SOURCE)
    spec.write_text(spec.read_text() + '\n[tokenizer]\nchat_template = "hello"\n')
    outcome = run_nodes(spec, tmp_path / "store", ("tokenize:talk",))
    assert not outcome.ok
    detail = outcome.results["tokenize:talk"].detail
    assert "the tokenizer's chat template renders an assistant turn without its content" in detail
    assert "(a turn ending 'Hello' is rendered as ''" in detail, detail


def test_a_sentencepiece_bpe_goes_into_a_gguf_as_llama_cpps_own(tmp_path):
    """Llama 2's and Mistral's tokenizer (sentencepiece BPE with byte fallback, spaces as
    "▁") is written as llama.cpp's ``llama`` (SPM) vocabulary: tokens, scores by merge
    rank, byte pieces typed as bytes. transformers builds its tokenizer back from the
    file: it splits text as the checkpoint's own does."""
    import gguf
    import sentencepiece
    from llmbuild.backends.export.gguf_export import gguf_writer
    from llmbuild.backends.export.gguf_vocab import BYTE, gguf_vocab, write_vocab
    from llmbuild.backends.tokenizer.artifact import TokenizerArtifact
    from transformers import AutoTokenizer

    from tests.backends.test_megatron import tiny_spec

    ck = write_checkpoint(tmp_path / "ck", "llama")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (ck / name).unlink(missing_ok=True)
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT.split(". ")), model_prefix=str(ck / "tokenizer"),
        vocab_size=400, model_type="bpe", byte_fallback=True, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, minloglevel=2,
    )  # fmt: skip
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>"}
    config |= {"unk_token": "<unk>", "add_bos_token": True}  # as Llama 2's says
    (ck / "tokenizer_config.json").write_text(json.dumps(config))
    store = tmp_path / "store"
    pretrained = ["tokenizer.kind='pretrained'", f"tokenizer.path='{ck}'"]
    outcome = run_nodes(tiny_spec(tmp_path), store, ("tokenize:text",), pretrained)
    assert outcome.ok, outcome.log
    ours = TokenizerArtifact.open(artifact(outcome, store, "tokenizer"))
    # a pretraining document starts with <s>, as Llama 2 was pretrained and is prompted
    import numpy as np

    tokenized = artifact(outcome, store, "tokenize:text")
    (first,) = [d for d in json.loads((tokenized / "datasets.json").read_text())["datasets"]][:1]
    ids = np.fromfile(tokenized / f"{first['prefix']}.bin", dtype=np.uint16)
    assert ids[0] == ours.bos_id == 1 and ids[1] != ours.bos_id
    vocab = gguf_vocab(ours, 512)
    assert vocab.model == "llama" and vocab.add_space_prefix and vocab.add_bos
    assert vocab.types[vocab.tokens.index("<0x0A>")] == BYTE, vocab.special
    writer = gguf_writer(tmp_path / "vocab.gguf", "llama")
    write_vocab(writer, vocab)
    for write in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.close):
        write()
    fields = gguf.GGUFReader(str(tmp_path / "vocab.gguf")).fields
    assert fields["tokenizer.ggml.model"].contents() == "llama"
    theirs = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="vocab.gguf")
    original = AutoTokenizer.from_pretrained(str(ck))
    for text in ["The quick brown fox", " jumps\nover  the lazy dog.", "héllo 東京 ✓", "a"]:
        assert theirs.encode(text) == original.encode(text), text
