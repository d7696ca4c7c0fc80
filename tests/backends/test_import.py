"""Hugging Face checkpoints in: every family imported from a tiny checkpoint written by
transformers, its logits proven against transformers', exported back bit for bit, and
generating as the original does; bad checkpoints are clear errors naming the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from llmbuild.errors import SpecError
from llmbuild.spec.load import load_spec
from tests.backends.conftest import artifact, run_nodes
from tests.checkpoints import import_spec, write_checkpoint

HF_EXPORT = '[[export]]\nformat = "hf"\nstage = "base"\n'
GGUF_EXPORT = '[[export]]\nformat = "gguf"\nstage = "base"\nquantization = "f32"\n'
WITH_GGUF = ("mistral", "mistral-head-dim", "qwen2-tied", "qwen3", "gpt2-untied")

LLAMA31 = {
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
    "tie_word_embeddings": True,
}
CASES = {
    "gpt2": ("gpt2", {}),
    # vocabularies that are no multiple of 128: megatron pads the embedding with zero rows
    "gpt2-untied": ("gpt2", {"tie_word_embeddings": False, "vocab": 517}),
    "llama": ("llama", {"vocab": 450}),
    "llama3.1-scaled-tied": ("llama", LLAMA31),
    "llama-linear-rope": ("llama", {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    "mistral": ("mistral", {"sliding_window": 512}),
    # heads of their own size, written as a llama GGUF that transformers reads back
    "mistral-head-dim": ("mistral", {"head_dim": 32}),
    "qwen2-tied": ("qwen2", {"tie_word_embeddings": True}),
    "qwen3": ("qwen3", {"head_dim": 32}),
}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """name -> (checkpoint dir, build outcome, store) of each case, built once."""
    done = {}

    def get(case: str):
        if case not in done:
            family, over = CASES[case]
            root = tmp_path_factory.mktemp(case)
            ck = write_checkpoint(root / "ck", family, **over)
            spec = import_spec(root, ck, HF_EXPORT + (GGUF_EXPORT if case in WITH_GGUF else ""))
            outcome = run_nodes(spec, root / "store")
            assert outcome.ok, outcome.log
            done[case] = (ck, outcome, root / "store", spec)
        return done[case]

    return get


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_matches_transformers_and_exports_back_bit_for_bit(imported, case):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    ck, outcome, store, _ = imported(case)
    metrics = outcome.results["stage:base"].record.metrics
    assert metrics["max_logit_diff"] < 1e-4 and metrics["family"] == CASES[case][0]
    # what a loss or a perplexity sees: the padded rows take no share of the softmax
    assert metrics["max_logprob_diff"] < 1e-4, metrics
    exported = artifact(outcome, store, "export:hf@base")
    original = load_file(str(ck / "model.safetensors"))
    back = load_file(str(exported / "model.safetensors"))
    assert sorted(back) == sorted(original)
    for name, tensor in original.items():
        assert torch.equal(back[name], tensor.float()), name
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == json.loads((ck / "config.json").read_text())["architectures"]

    def greedy(path):
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
        ids = torch.tensor([[5, 17, 42, 9]])
        out = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
        return out[0].tolist()

    assert greedy(exported) == greedy(ck)
    # the weights counted as transformers counts them: the embedding's padding rows not
    hf = AutoModelForCausalLM.from_pretrained(str(ck), dtype=torch.float32)
    assert metrics["parameters"] == hf.num_parameters(), (metrics["parameters"], case)
    if case in WITH_GGUF:  # read back by transformers' GGUF loader, logits checked
        gguf = outcome.results["export:gguf@base"].record.metrics
        assert gguf["max_logit_diff"] < 1e-3, gguf


def test_an_export_pads_with_what_the_model_pads_with(tmp_path):
    """GPT-2's tokenizer has no pad token: the model pads with eos, and the exported
    tokenizer says so, so that transformers pads a batch with it."""
    from transformers import AutoTokenizer

    ck = write_checkpoint(tmp_path / "ck", "gpt2")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (ck / name).is_file():
            settings = json.loads((ck / name).read_text())
            settings.pop("pad_token", None)
            (ck / name).write_text(json.dumps(settings))
    assert AutoTokenizer.from_pretrained(str(ck)).pad_token is None
    outcome = run_nodes(import_spec(tmp_path, ck, HF_EXPORT), tmp_path / "store")
    assert outcome.ok, outcome.log
    exported = artifact(outcome, tmp_path / "store", "export:hf@base")
    tok = AutoTokenizer.from_pretrained(str(exported))
    config = json.loads((exported / "config.json").read_text())
    assert tok.pad_token == tok.eos_token == "<|endoftext|>"
    assert tok.pad_token_id == config["pad_token_id"]
    batch = tok(["to be", "or not to be, that is"], padding=True)
    assert len(batch["input_ids"][0]) == len(batch["input_ids"][1])
    assert batch["attention_mask"][0][-1] == 0


def test_rope_settings_are_carried_over(imported):
    _ck, _outcome, _store, spec = imported("llama3.1-scaled-tied")
    loaded = load_spec(spec)
    arch = loaded.spec.architecture
    assert arch.rope_base == 500000.0 and arch.tie_embeddings
    # what resolve says of each value: from the checkpoint, nested ones too
    assert loaded.origin(("architecture", "rope_scaling", "factor")).source.endswith("config.json")
    assert arch.rope_scaling.kind == "llama3" and arch.rope_scaling.original_max_positions == 64
    assert arch.max_positions == 131072 and arch.seq_len == 4096  # the training context


def test_a_gguf_export_of_rope_scaling_is_refused_before_training(imported, tmp_path):
    ck, _outcome, _store, _spec = imported("llama3.1-scaled-tied")
    spec = import_spec(tmp_path, ck, GGUF_EXPORT)
    with pytest.raises(SpecError, match=r"export\[0\].format: 'base' has rope scaling \(llama3\)"):
        load_spec(spec)


def test_a_gguf_export_of_a_sliding_window_is_refused_before_training(tmp_path):
    """llama.cpp's llama architecture attends to the whole context: past the window its
    answers would differ from the model's, with nothing said."""
    ck = write_checkpoint(tmp_path / "ck", "mistral", sliding_window=16)
    spec = import_spec(tmp_path, ck, "[architecture]\nseq_len = 16\n" + GGUF_EXPORT)
    with pytest.raises(SpecError, match=r"export\[0\].format: 'base' attends through a sliding"):
        load_spec(spec)


def test_the_check_catches_a_wrong_conversion(imported, tmp_path):
    """Swapping two tensors of the same shape (a classic mistake) fails the comparison."""
    from llmbuild.backends.checkpoint.run import logit_difference
    from llmbuild.backends.checkpoint.source import open_checkpoint
    from safetensors.torch import load_file, save_file

    ck, outcome, store, spec = imported("llama")
    stage = artifact(outcome, store, "stage:base")
    bad = tmp_path / "bad"
    shutil.copytree(stage, bad)
    weights = load_file(str(bad / "model.safetensors"))
    a, b = "decoder.layers.0.input_layernorm.weight", "decoder.layers.0.pre_mlp_layernorm.weight"
    weights[a], weights[b] = weights[b], weights[a]
    save_file(weights, str(bad / "model.safetensors"))
    arch = load_spec(spec).spec.architecture
    assert logit_difference(open_checkpoint(str(ck)), bad, arch)[0] > 1e-2


def test_an_import_build_reproduces_identically(imported, tmp_path):
    """The recorded spec of an import (its tokenizer and architecture filled in from the
    checkpoint) plans the same keys again, and the rebuild gives the same bytes."""
    from llmbuild.run.build import BuildOptions
    from llmbuild.run.reproduce import reproduce
    from llmbuild.store.store import Store

    _ck, outcome, store, _spec = imported("qwen2-tied")
    options = BuildOptions(executor="inline", live=False)
    _, comparisons = reproduce(Store(str(store)), outcome.spec_hash, options, scratch=tmp_path)
    assert {c.node: c.verdict for c in comparisons} == dict.fromkeys(outcome.results, "identical")


def test_only_the_files_an_import_reads_enter_its_keys(imported):
    """A Hub clone's README or ``original/`` folder (files the import does not read)
    rebuilds nothing."""
    ck, _outcome, store, spec = imported("gpt2")
    (ck / "README.md").write_text("# a model card\n")
    (ck / "original").mkdir()
    (ck / "original" / "consolidated.00.pth").write_bytes(b"not read")
    again = run_nodes(spec, store)
    assert (
        again.ok and set(again.results) and all(r.state == "cached" for r in again.results.values())
    ), again.log
    (ck / "README.md").unlink()
    shutil.rmtree(ck / "original")


def test_a_conflicting_architecture_field_is_located(tmp_path):
    ck = write_checkpoint(tmp_path / "ck", "llama")
    spec = import_spec(tmp_path, ck, "[architecture]\nhidden = 128\nseq_len = 64\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    (problem,) = info.value.problems
    assert problem.key == "architecture.hidden" and problem.line == 13
    assert "128 contradicts" in problem.message and "config.json, which has 64" in problem.message
    spec.write_text(spec.read_text().replace("hidden = 128\n", ""))
    assert load_spec(spec).spec.architecture.seq_len == 64  # the training context is free
    # fields that agree with the checkpoint are fine, flags too (True == 1 is no match)
    spec.write_text(spec.read_text().replace("[architecture]\n", "[architecture]\nbias = false\n"))
    assert load_spec(spec).spec.architecture.bias is False
    spec.write_text(spec.read_text().replace("bias = false", "bias = true"))
    with pytest.raises(SpecError, match="architecture.bias: True contradicts"):
        load_spec(spec)


def test_norm_biases_an_imported_gpt2_has_cannot_be_taken_out(tmp_path):
    ck = write_checkpoint(tmp_path / "ck", "gpt2")
    spec = import_spec(tmp_path, ck, "[architecture]\nseq_len = 32\nnorm_bias = false\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    (problem,) = info.value.problems
    assert problem.key == "architecture.norm_bias"
    assert "False contradicts" in problem.message and "which has True" in problem.message


def test_imports_of_two_architectures_are_one_located_problem(tmp_path):
    first = write_checkpoint(tmp_path / "qwen2", "qwen2")
    second = write_checkpoint(tmp_path / "qwen3", "qwen3", head_dim=32)
    extra = f'[[stage]]\nname = "other"\nkind = "import"\ncheckpoint = "{second}"\n'
    with pytest.raises(SpecError) as info:
        load_spec(import_spec(tmp_path, first, extra))
    (problem,) = info.value.problems
    assert problem.key == "stage[1]" and problem.line == 12, problem
    assert f"{first}/config.json and {second}/config.json disagree on [architecture]: " in (
        problem.message
    )
    assert "family ('qwen2' against 'qwen3')" in problem.message, problem.message
    assert "a spec has one architecture table" in problem.message
    twin = write_checkpoint(tmp_path / "twin", "qwen2", seed=1)  # other weights, one shape
    extra = f'[[stage]]\nname = "other"\nkind = "import"\ncheckpoint = "{twin}"\n'
    loaded = load_spec(import_spec(tmp_path, first, extra))
    assert loaded.origin(("architecture", "family")).source.endswith("config.json")


def _error(spec: Path) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    (problem,) = info.value.problems
    assert problem.key == "stage[0].checkpoint"
    return problem.message


def test_a_tied_config_over_a_saved_head_of_its_own_is_refused(tmp_path):
    """tie_word_embeddings = true, and the file's lm_head.weight is no copy of the
    embedding: neither reading would give both libraries' logits. A saved copy imports."""
    from safetensors.torch import load_file, save_file

    ck = write_checkpoint(tmp_path / "ck", "qwen2", tie_word_embeddings=True)
    weights = ck / "model.safetensors"
    state = load_file(str(weights))
    embedding = state["model.embed_tokens.weight"]
    save_file({**state, "lm_head.weight": embedding.clone()}, str(weights))
    spec = import_spec(tmp_path, ck)
    outcome = run_nodes(spec, tmp_path / "store", ("stage:base",))
    assert outcome.ok, outcome.log
    save_file({**state, "lm_head.weight": embedding + 0.5}, str(weights))
    outcome = run_nodes(spec, tmp_path / "store", ("stage:base",))
    detail = outcome.results["stage:base"].detail
    assert "tie_word_embeddings is true, but the weights hold a lm_head.weight of their" in detail
    assert "Traceback" not in detail


def test_bad_checkpoints_are_clear_errors_naming_the_file(tmp_path):
    from llmbuild.backends.families import Unsupported, family_of_config
    from safetensors.torch import load_file, save_file

    # No such directory: said once (not again as a path that matches no file).
    assert "no such checkpoint directory" in _error(import_spec(tmp_path, tmp_path / "ck"))
    hub = _error(import_spec(tmp_path, tmp_path / "Qwen" / "Qwen2.5-0.5B"))  # "Qwen/Qwen2.5-0.5B"
    assert "no such checkpoint directory (a Hugging Face Hub model is named hf://Qwen/Qw" in hub
    ck = write_checkpoint(tmp_path / "ck", "qwen2")
    weights = ck / "model.safetensors"
    assert f"a checkpoint is the directory that holds config.json and the weights ({ck})" in (
        _error(import_spec(tmp_path, weights))
    )
    spec = import_spec(tmp_path, ck)
    # A pickle checkpoint is refused unless allowed.
    torch.save(load_file(str(weights)), ck / "pytorch_model.bin")
    weights.rename(tmp_path / "keep.safetensors")
    assert "pickle files (pytorch_model.bin)" in _error(spec)
    assert "allow_pickle = true" in _error(spec)
    # A sharded index naming a missing shard.
    state = load_file(str(tmp_path / "keep.safetensors"))
    (ck / "pytorch_model.bin").unlink()
    names = sorted(state)
    half = len(names) // 2
    save_file({n: state[n] for n in names[:half]}, str(ck / "model-00001-of-00002.safetensors"))
    index = {
        "weight_map": {
            n: f"model-0000{1 + (i >= half)}-of-00002.safetensors" for i, n in enumerate(names)
        }
    }
    (ck / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "names shards that are not there: model-00002-of-00002.safetensors" in _error(spec)
    # A truncated shard.
    save_file({n: state[n] for n in names[half:]}, str(ck / "model-00002-of-00002.safetensors"))
    shard = ck / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    assert f"{shard}: it is truncated" in _error(spec)
    # A header whose entry the library could not read (a dtype edited to none of its types).
    save_file({n: state[n] for n in names[half:]}, str(shard))
    raw = shard.read_bytes()
    shard.write_bytes(raw.replace(b'"dtype":"F32"', b'"dtype":"XXX"', 1))
    assert f"{shard}: its header's entry for " in _error(spec)
    assert "has dtype 'XXX', which is none of safetensors' types" in _error(spec)
    # An architecture no family maps.
    for f in ck.glob("model*"):
        f.unlink()
    shutil.copy(tmp_path / "keep.safetensors", weights)
    config = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**config, "model_type": "falcon"}))
    message = _error(spec)
    assert "model_type 'falcon'" in message and "Qwen2ForCausalLM (qwen2)" in message
    # A model fine-tuned for a task: its head is not a language model's.
    task = {"architectures": ["Qwen2ForSequenceClassification"], "id2label": {0: "a", 1: "b"}}
    (ck / "config.json").write_text(json.dumps({**config, **task}))
    assert (
        "a Qwen2ForSequenceClassification checkpoint (a task head of 2 labels): llmbuild "
        "imports the language model a task is fine-tuned from (Qwen2ForCausalLM)"
    ) in _error(spec)
    bert = {"model_type": "bert", "architectures": ["BertForSequenceClassification"]}
    with pytest.raises(Unsupported) as e:  # an encoder's task is a classify stage's only
        family_of_config(bert, "config.json")
    assert str(e.value).endswith("(BertForMaskedLM); import that one and train your task on "
                                 "it (a classify stage)")  # fmt: skip
    with pytest.raises(Unsupported, match="config.json: no model_type .architectures: Llama"):
        family_of_config({"architectures": ["LlamaForCausalLM"]}, "config.json")
    # A tokenizer with more tokens than the embedding has rows.
    (ck / "config.json").write_text(json.dumps({**config, "vocab_size": 64}))
    assert "tokenizer has 320 tokens but its embedding only 64 rows" in _error(spec)


def test_broken_weights_are_clear_errors_naming_the_tensor(tmp_path):
    """A NaN in a weight or a tensor of another shape than config.json gives would load
    (or compare as NaN, which no tolerance catches): each fails the import, named."""
    from safetensors.torch import load_file, save_file

    ck = write_checkpoint(tmp_path / "ck", "gpt2")
    spec = import_spec(tmp_path, ck)
    weights = ck / "model.safetensors"
    good = load_file(str(weights))
    name = "transformer.h.1.mlp.c_fc.weight"
    for bad, message in (
        (good[name].clone().index_fill_(0, torch.tensor([3]), float("nan")), "holds NaN"),
        (good[name][:, :-1].contiguous(), "has shape [64, 95] but config.json gives [64, 96]"),
    ):
        save_file({**good, name: bad}, str(weights))
        outcome = run_nodes(spec, tmp_path / "store", until=("stage:base",))
        assert not outcome.ok
        detail = outcome.results["stage:base"].detail
        assert f"{weights}: {name} {message}" in detail and "Traceback" not in detail, detail


def test_a_missing_tensor_is_named_alone(tmp_path):
    """q, k and v go into one fused tensor: with k gone, the message names k only."""
    from safetensors.torch import load_file, save_file

    ck = write_checkpoint(tmp_path / "ck", "llama")
    weights = load_file(str(ck / "model.safetensors"))
    del weights["model.layers.1.self_attn.k_proj.weight"]
    save_file(weights, str(ck / "model.safetensors"), metadata={"format": "pt"})
    outcome = run_nodes(import_spec(tmp_path, ck), tmp_path / "store", until=("stage:base",))
    detail = outcome.results["stage:base"].detail
    assert "lacks tensors: ['model.layers.1.self_attn.k_proj.weight']" in detail, detail


def test_sharded_checkpoints_are_read_shard_by_shard(tmp_path):
    from transformers import AutoModelForCausalLM

    ck = write_checkpoint(tmp_path / "one", "llama")
    model = AutoModelForCausalLM.from_pretrained(str(ck))
    sharded = tmp_path / "sharded"
    model.save_pretrained(str(sharded), max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(ck / name, sharded / name)
    assert len(list(sharded.glob("model-*.safetensors"))) > 2
    outcome = run_nodes(import_spec(tmp_path, sharded), tmp_path / "store")
    assert outcome.ok, outcome.log
    metrics = outcome.results["stage:base"].record.metrics
    assert metrics["weight_files"] > 2 and metrics["max_logit_diff"] < 1e-4


def _hub_cache(root: Path, repo: str, checkpoint: Path) -> str:
    """The Hugging Face cache layout of ``repo`` at one commit, holding ``checkpoint``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    entry = root / f"models--{repo.replace('/', '--')}"
    shutil.copytree(checkpoint, entry / "snapshots" / commit)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(commit)
    return commit


def test_a_hub_model_resolves_to_its_commit_in_the_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    spec = import_spec(tmp_path, "hf://acme/tiny-qwen")  # type: ignore[arg-type]
    message = _error(spec)
    assert "'acme/tiny-qwen' at revision 'main'" in message and "offline" in message
    assert "point checkpoint at that local directory" in message
    commit = _hub_cache(
        tmp_path / "hub", "acme/tiny-qwen", write_checkpoint(tmp_path / "ck", "qwen2")
    )
    stage = load_spec(spec).spec.stage[0]
    assert stage.hub == f"acme/tiny-qwen@{commit}"
    assert stage.checkpoint.endswith(f"snapshots/{commit}")
    (tmp_path / "local").mkdir()
    local = load_spec(import_spec(tmp_path / "local", tmp_path / "ck"))
    from llmbuild.plan import StatCache, plan_spec

    keys = [
        plan_spec(r, cache=StatCache()).keys["stage:base"].key for r in (load_spec(spec), local)
    ]
    assert keys[0] == keys[1]  # the same files: the id text never counts


LLAMA3_TEMPLATE = (
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)


def test_chats_are_written_in_a_pretrained_tokenizers_own_template(tmp_path):
    """A Llama-3-style template: the model learns the answer and its <|eot_id|>, not the
    headers, and prompts end with the assistant's header."""
    from llmbuild.backends.tokenize.encode import Encoder

    from tests.checkpoints import tokenizer

    tok = tokenizer(320)
    tok.add_special_tokens(
        {"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
    )
    tok.chat_template = LLAMA3_TEMPLATE
    tok.save_pretrained(str(tmp_path))
    enc = Encoder(str(tmp_path / "tokenizer.json"), tok.eos_token, own_template=True)
    chat = [
        {"role": "user", "content": "What is two plus two?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And three?"},
        {"role": "assistant", "content": "Five."},
    ]
    ((ids, mask),) = enc.chats([chat])
    learned = tok.decode([i for i, m in zip(ids, mask) if m])
    assert learned == "Four.<|eot_id|>Five.<|eot_id|>"
    assert tok.decode(ids[:-1]) == tok.apply_chat_template(chat, tokenize=False)
    assert enc.template.prompt("Hi").endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    ((_prompt, chosen, _rejected),) = enc.preferences(
        [{"prompt": "Hi", "chosen": "Yes", "rejected": "No"}]
    )
    assert tok.decode(chosen[:-1]) == "Yes<|eot_id|>" and chosen[-1] == enc.eos


def test_a_tokenizer_of_the_specs_own_over_an_import_is_warned(tmp_path, capsys):
    from llmbuild.cli import main

    ck = write_checkpoint(tmp_path / "ck", "gpt2")
    spec = import_spec(tmp_path, ck, '[tokenizer]\nkind = "char"\n')
    assert main(["validate", str(spec)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {spec}:13: tokenizer.kind: stage 'base' imports a checkpoint" in err, err
    spec.write_text(spec.read_text().replace('kind = "char"', 'chat_template = "chatml"'))
    assert main(["validate", str(spec)]) == 0
    assert "tokenizer.kind" not in capsys.readouterr().err


ROPE_FORMS = {
    "parameters": {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}},
    "theta": {"rope_theta": 5e5},
    "scaling": {"rope_theta": 5e5, "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    "old type": {"rope_scaling": {"type": "linear", "factor": 3.0}},
    "parameters scaled": {
        "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}
    },
    "both": {  # a 5.x file given the scaling a model card says to add: transformers takes it
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
        "rope_scaling": {"rope_type": "linear", "factor": 4.0},
    },
    "both, unsupported": {
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    },
}


@pytest.mark.parametrize("form", sorted(ROPE_FORMS))
def test_rope_settings_are_read_as_transformers_reads_them(tmp_path, form):
    from llmbuild.backends.families import Unsupported
    from llmbuild.backends.families.llama.config import rope
    from transformers import AutoConfig

    from tests.checkpoints import config

    raw = config("llama").to_dict()
    for key in ("rope_parameters", "rope_scaling", "rope_theta"):
        raw.pop(key, None)
    raw.update(ROPE_FORMS[form])
    (tmp_path / "config.json").write_text(json.dumps(raw))
    theirs = AutoConfig.from_pretrained(str(tmp_path)).rope_parameters
    if theirs["rope_type"] not in ("default", "linear"):
        with pytest.raises(Unsupported, match=f"rope scaling '{theirs['rope_type']}'"):
            rope(raw, "config.json")
        return
    theta, scaling = rope(raw, "config.json")
    assert theta == theirs["rope_theta"]
    assert (scaling or {}).get("kind", "default") == theirs["rope_type"]
    assert (scaling or {}).get("factor") == theirs.get("factor")


def test_a_misspelt_checkpoint_field_is_said_without_what_it_would_fill(tmp_path):
    ck = write_checkpoint(tmp_path / "ck", "llama")
    spec = import_spec(tmp_path, ck)
    spec.write_text(spec.read_text().replace("checkpoint =", "chekpoint ="))
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    said = [p.key for p in info.value.problems]
    assert any("did you mean 'checkpoint'" in p.message for p in info.value.problems), said
    assert not [k for k in said if k.startswith(("architecture", "tokenizer"))], said
