"""ONNX (float32 and int8) and GGUF (f16, q8_0) exports of both architectures, proven with
onnxruntime, gguf's reader and an independent rope check; ``generate`` from an hf export;
and an edit of one export's setting rebuilds that export alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.backends.conftest import Built, artifact, builds_by_style, run_nodes
from tests.backends.test_megatron import tiny_spec
from tests.conftest import private_copy

EXPORTS = """
[[export]]
format = "hf"
stage = "pretrain"
[[export]]
format = "onnx"
stage = "pretrain"
[[export]]
format = "onnx"
stage = "pretrain"
name = "int8"
quantize = "int8"
[[export]]
format = "gguf"
stage = "pretrain"
[[export]]
format = "gguf"
stage = "pretrain"
name = "q8"
quantization = "q8_0"
"""
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec:FutureWarning")
GGUF_NODES = {"f16": "export:gguf@pretrain", "q8_0": "export:q8"}


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """Builds of the tiny spec with every export, one per architecture, shared by the module."""
    return builds_by_style(
        tmp_path_factory, lambda root, style: tiny_spec(root, style, steps=6, extra=EXPORTS)
    )


@pytest.fixture(params=["gpt2", "llama"])
def built(request, build) -> Built:
    return build(request.param)


def _megatron_logits(built: Built, ids: np.ndarray) -> np.ndarray:
    import torch
    from llmbuild.backends.export.run import megatron_logits

    return megatron_logits(built.dir("stage:pretrain"), torch.from_numpy(ids)).numpy()


def _onnx_logits(path: Path, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    mask = np.ones_like(ids) if mask is None else mask
    return session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]


def test_onnx_matches_the_trained_model_at_any_shape(built):
    import onnx
    from transformers import AutoTokenizer

    out = built.dir("export:onnx@pretrain")
    assert built.metrics("export:onnx@pretrain")["max_logit_diff"] < 1e-3
    model = onnx.load(str(out / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 18
    rng = np.random.default_rng(1)
    for shape in [(1, 5), (4, 32)]:  # the export traced (2, 8): both axes are dynamic
        ids = rng.integers(0, 60, shape)
        logits = _onnx_logits(out / "model.onnx", ids)
        assert logits.shape == (*shape, 65)
        assert np.abs(logits - _megatron_logits(built, ids)).max() < 1e-3
    tok = AutoTokenizer.from_pretrained(str(out))  # the directory is usable as it is
    assert tok.decode(tok.encode("ROMEO:", add_special_tokens=False)) == "ROMEO:"
    assert (out / "config.json").exists() and not list(out.glob("*.data"))


def test_onnx_runs_a_padded_batch_as_transformers_does(built):
    """Two prompts of different lengths, left-padded into one batch with an attention
    mask: onnxruntime's logits on the real tokens are transformers' (given the same mask
    and the positions its generate makes), and each prompt's are its logits alone."""
    import torch
    from transformers import AutoModelForCausalLM

    assert built.metrics("export:onnx@pretrain")["padded_max_logit_diff"] < 1e-3
    hf = AutoModelForCausalLM.from_pretrained(str(built.dir("export:hf@pretrain"))).eval()
    rng = np.random.default_rng(3)
    long, short = rng.integers(1, 60, 9), rng.integers(1, 60, 4)
    ids = np.zeros((2, 9), dtype=np.int64)
    mask = np.zeros_like(ids)
    ids[0], mask[0] = long, 1
    ids[1, 5:], mask[1, 5:] = short, 1
    ours = _onnx_logits(built.dir("export:onnx@pretrain") / "model.onnx", ids, mask)
    t_ids, t_mask = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        positions = (t_mask.cumsum(-1) - 1).clamp(min=0)
        theirs = hf(input_ids=t_ids, attention_mask=t_mask, position_ids=positions).logits.numpy()
        alone = hf(input_ids=torch.from_numpy(short[None])).logits.numpy()[0]
    real = mask.astype(bool)
    assert np.abs(ours[real] - theirs[real]).max() < 1e-3
    assert np.abs(ours[1, 5:] - alone).max() < 1e-3
    assert np.abs(ours[0] - _megatron_logits(built, long[None])[0]).max() < 1e-3


def test_int8_onnx_is_quantized_and_agrees_on_the_top_token(built):
    import onnx

    metrics = built.metrics("export:int8")
    assert metrics["int8_top1_agreement"] >= 0.9 and metrics["max_logit_diff"] < 1e-3
    int8, fp32 = built.dir("export:int8") / "model.onnx", built.dir("export:onnx@pretrain")
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    assert int8.stat().st_size < 0.75 * (fp32 / "model.onnx").stat().st_size
    ids = np.random.default_rng(2).integers(0, 60, (2, 32))
    a, b = _onnx_logits(int8, ids), _onnx_logits(fp32 / "model.onnx", ids)
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.9
    # Each file's held-out perplexity, as onnxruntime scores it, beside the unquantized
    # model's: float32 the same, int8 close.
    plain = built.metrics("export:onnx@pretrain")
    assert plain["heldout_tokens"] == metrics["heldout_tokens"] > 0
    assert abs(plain["perplexity_ratio"] - 1) < 1e-4
    assert plain["unquantized_perplexity"] == metrics["unquantized_perplexity"]
    assert abs(metrics["perplexity_ratio"] - 1) < 0.05


def _expected_tensors(style: str, layers: int, untied_llama: bool) -> set[str]:
    if style == "llama":
        per = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
        per = [f"{p}.weight" for p in [*per, "attn_norm", "ffn_norm"]]
        top = ["token_embd.weight", "output_norm.weight"] + ["output.weight"] * untied_llama
    else:
        per = ["attn_qkv", "attn_output", "ffn_up", "ffn_down", "attn_norm", "ffn_norm"]
        per = [f"{p}.{s}" for p in per for s in ("weight", "bias")]
        top = ["token_embd.weight", "position_embd.weight", "output.weight"]
        top += ["output_norm.weight", "output_norm.bias"]
    return set(top) | {f"blk.{i}.{p}" for i in range(layers) for p in per}


@pytest.mark.parametrize("quantization", ["f16", "q8_0"])
def test_gguf_reads_back_with_names_types_and_metadata(built, quantization):
    import gguf
    from tokenizers import Tokenizer

    node = GGUF_NODES[quantization]
    metrics = built.metrics(node)
    assert metrics["top1_agreement"] >= 0.9 and metrics["tokenizer_model"] == "gpt2"
    # Its held-out perplexity, as transformers reads the file, beside the unquantized model's.
    assert metrics["heldout_tokens"] > 0
    assert abs(metrics["perplexity"] / metrics["unquantized_perplexity"] - 1) < 0.01
    reader = gguf.GGUFReader(str(built.dir(node) / "model.gguf"))
    field = {k: f.contents() for k, f in reader.fields.items()}
    arch = built.style
    assert field["general.architecture"] == arch
    assert field["general.name"] == "tiny" and field["general.finetune"] == "pretrain"
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == _expected_tensors(arch, 2, untied_llama=True)
    T = gguf.GGMLQuantizationType
    weight_type = T.F16 if quantization == "f16" else T.Q8_0
    for name, t in tensors.items():
        if len(t.shape) == 1 or name == "position_embd.weight":
            assert t.tensor_type == T.F32, name
        else:
            assert t.tensor_type == weight_type, name
    dims = {n: tuple(int(d) for d in reversed(t.shape)) for n, t in tensors.items()}
    assert dims["token_embd.weight"] == (65, 64)
    if arch == "llama":
        assert dims["blk.0.attn_q.weight"] == (64, 64) and dims["blk.1.attn_k.weight"] == (32, 64)
        assert dims["blk.0.ffn_gate.weight"] == (128, 64)
        assert field["llama.attention.head_count_kv"] == 2
        assert field["llama.rope.freq_base"] == 10000.0
        assert field["llama.rope.dimension_count"] == 16
        assert abs(field["llama.attention.layer_norm_rms_epsilon"] - 1e-5) < 1e-9
    else:
        assert dims["blk.0.attn_qkv.weight"] == (192, 64) and dims["blk.1.ffn_up.weight"] == (
            128,
            64,
        )
        assert dims["position_embd.weight"] == (32, 64)
        assert abs(field["gpt2.attention.layer_norm_epsilon"] - 1e-5) < 1e-9
    assert field[f"{arch}.context_length"] == 32 and field[f"{arch}.embedding_length"] == 64
    assert field[f"{arch}.block_count"] == 2 and field[f"{arch}.attention.head_count"] == 4
    assert field["general.file_type"] == (1 if quantization == "f16" else 7)

    tok = Tokenizer.from_file(str(built.dir("tokenizer") / "tokenizer" / "tokenizer.json"))
    tokens = field["tokenizer.ggml.tokens"]
    assert len(tokens) == 65 and field["tokenizer.ggml.merges"] == []
    assert field["tokenizer.ggml.bos_token_id"] == tok.token_to_id("<|bos|>")
    assert field["tokenizer.ggml.eos_token_id"] == tok.token_to_id("<|eos|>")
    assert field["tokenizer.ggml.padding_token_id"] == tok.token_to_id("<|pad|>")
    assert tokens[tok.token_to_id(" ")] == "Ġ" and tokens[tok.token_to_id("\n")] == "Ċ"
    assert field["tokenizer.ggml.token_type"][tok.token_to_id("<|eos|>")] == 3  # control
    assert "<|im_start|>" in field["tokenizer.chat_template"]


@pytest.mark.parametrize("kind", ["bpe", "byte", "unigram"])
def test_gguf_vocabularies_of_the_other_tokenizer_kinds(tmp_path, kind):
    import gguf
    from llmbuild.backends.export.gguf_export import gguf_writer
    from llmbuild.backends.export.gguf_vocab import gguf_vocab, write_vocab
    from llmbuild.backends.tokenizer.artifact import TokenizerArtifact
    from transformers import AutoTokenizer

    size = [] if kind == "byte" else ["tokenizer.vocab_size=300"]
    store = tmp_path / "store"
    outcome = run_nodes(
        tiny_spec(tmp_path), store, ("tokenizer",), [f"tokenizer.kind='{kind}'", *size]
    )
    assert outcome.ok, outcome.log
    tok_dir = artifact(outcome, store, "tokenizer")
    n = outcome.results["tokenizer"].record.metrics["vocab_size"]
    vocab = gguf_vocab(TokenizerArtifact.open(tok_dir), n)
    assert len(vocab.tokens) == len(vocab.types) == n
    assert vocab.special["eos"] == 1 and vocab.types[1] == gguf.TokenType.CONTROL
    if kind == "unigram":  # llama.cpp's unigram (UGM) tokenizer, with the model's scores
        assert vocab.model == "t5" and len(vocab.scores) == n and vocab.scores[10] < 0
        return
    assert vocab.model == "gpt2" and vocab.pre == ("gpt-2" if kind == "bpe" else "default")
    assert (len(vocab.merges) > 0) == (kind == "bpe")
    writer = gguf_writer(tmp_path / "vocab.gguf", "llama")
    write_vocab(writer, vocab)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    # transformers builds its own tokenizer from the GGUF metadata: it must split text alike
    theirs = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="vocab.gguf")
    ours = AutoTokenizer.from_pretrained(str(tok_dir / "tokenizer"))
    for text in [
        "ROMEO: Good morrow,\n  what's the news?",
        "<|im_start|>user\nhi<|im_end|>",
        "héllo",
    ]:
        assert theirs.encode(text, add_special_tokens=False) == ours.encode(
            text, add_special_tokens=False
        )


def test_a_gguf_names_the_split_of_llama_3_and_qwen_2_tokenizers(tmp_path):
    """A byte-level BPE that splits text with Llama 3's or Qwen 2's regex (an imported
    checkpoint's) is written with the name llama.cpp gives that split, not ``default``:
    llama.cpp splits by the name. Llama 3 keeps runs of up to three digits together,
    Qwen 2 splits every digit, as the tokenizers themselves do."""
    import json
    import shutil

    import gguf
    from llmbuild.backends.export.gguf_export import gguf_writer
    from llmbuild.backends.export.gguf_vocab import NAMED_SPLITS, gguf_vocab, write_vocab
    from llmbuild.backends.tokenizer.artifact import TokenizerArtifact
    from tokenizers import Tokenizer

    store = tmp_path / "store"
    bpe = ["tokenizer.kind='bpe'", "tokenizer.vocab_size=300"]
    outcome = run_nodes(tiny_spec(tmp_path), store, ("tokenizer",), bpe)
    assert outcome.ok, outcome.log
    built = artifact(outcome, store, "tokenizer")
    n = outcome.results["tokenizer"].record.metrics["vocab_size"]
    digits = {"llama-bpe": ["123", "45"], "qwen2": ["1", "2", "3", "4", "5"]}
    by_name = {name: regex for regex, name in NAMED_SPLITS.items()}
    for name, regex in [*by_name.items(), ("default", r"\p{N}+|[^\p{N}]+")]:
        tok_dir = tmp_path / name
        shutil.copytree(built, tok_dir)
        path = TokenizerArtifact.open(tok_dir).json_path
        tok = json.loads(path.read_text())
        tok["pre_tokenizer"] = {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated",
                 "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                 "use_regex": False},
            ],
        }  # fmt: skip
        if name == "llama-bpe":  # and Llama 3's <|begin_of_text|> before every text
            tok["post_processor"] = {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<|bos|>": {"id": "<|bos|>", "ids": [0],
                                               "tokens": ["<|bos|>"]}},
            }  # fmt: skip
        path.write_text(json.dumps(tok))
        ours = TokenizerArtifact.open(tok_dir)
        vocab = gguf_vocab(ours, n)
        assert (vocab.model, vocab.pre) == ("gpt2", name)
        # a runtime starts a prompt with bos where the tokenizer itself does, as the hf
        # export and `generate` do (completion_ids)
        assert vocab.add_bos == (name == "llama-bpe") and not vocab.add_eos
        assert (ours.completion_ids("the fox")[0] == ours.bos_id) == vocab.add_bos
        writer = gguf_writer(tmp_path / f"{name}.gguf", "llama")
        write_vocab(writer, vocab)
        for write in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.close):
            write()
        fields = gguf.GGUFReader(str(tmp_path / f"{name}.gguf")).fields
        assert fields["tokenizer.ggml.add_bos_token"].contents() == vocab.add_bos
        if name in digits:  # the tokenizers library reads the split as llama.cpp names it
            pieces = Tokenizer.from_file(str(path)).pre_tokenizer.pre_tokenize_str("12345")
            assert [p for p, _ in pieces] == digits[name]


def _rope(x, base: float, interleaved: bool):
    """Rotary embedding of ``x [seq, heads, dim]``: llama.cpp's (adjacent pairs) or HF's
    (rotate_half: dimension i with i + dim/2)."""
    import torch

    seq, _, d = x.shape
    angle = torch.arange(seq)[:, None] * base ** (-torch.arange(0, d, 2) / d)
    cos, sin = angle.cos()[:, None], angle.sin()[:, None]
    if interleaved:
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)
    a, b = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)


def _scores(wq, wk, x, heads: int, kv_heads: int, interleaved: bool):
    q = _rope((x @ wq.T).reshape(len(x), heads, -1), 10000.0, interleaved)
    k = _rope((x @ wk.T).reshape(len(x), kv_heads, -1), 10000.0, interleaved)
    k = k.repeat_interleave(heads // kv_heads, dim=1)
    return (q.transpose(0, 1) @ k.transpose(0, 1).transpose(1, 2)).detach()


def test_gguf_llama_q_and_k_are_laid_out_for_llama_cpp_rope(build):
    import gguf
    import torch
    from safetensors.torch import load_file

    built = build("llama")
    hf = load_file(str(built.dir("export:hf@pretrain") / "model.safetensors"))
    reader = gguf.GGUFReader(str(built.dir("export:gguf@pretrain") / "model.gguf"))

    def weight(name: str):
        t = next(t for t in reader.tensors if t.name == name)
        shape = tuple(int(d) for d in reversed(t.shape))
        return torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape))

    x = torch.randn(7, 64, generator=torch.Generator().manual_seed(0))
    for i in range(2):
        hq, hk = (
            hf[f"model.layers.{i}.self_attn.q_proj.weight"],
            hf[f"model.layers.{i}.self_attn.k_proj.weight"],
        )
        ref = _scores(hq, hk, x, 4, 2, interleaved=False)
        ours = _scores(
            weight(f"blk.{i}.attn_q.weight"), weight(f"blk.{i}.attn_k.weight"), x, 4, 2, True
        )
        tol = 1e-2 * float(ref.abs().max())
        assert (ours - ref).abs().max() < tol  # f16 weights, llama.cpp's rope: same attention
        unpermuted = _scores(hq, hk, x, 4, 2, interleaved=True)
        assert (unpermuted - ref).abs().max() > 10 * tol  # the check can tell the layouts apart


def test_generate_from_an_hf_export_matches_the_stage(built, capsys):
    from llmbuild.cli import main

    base = ["generate", str(built.spec), "--store", str(built.store), "--prompt", "ROMEO:"]
    greedy = [*base, "--max-new-tokens", "20", "--temperature", "0"]
    assert main([*greedy, "--stage", "pretrain"]) == 0
    from_stage = capsys.readouterr().out
    assert main([*greedy, "--export", "hf@pretrain"]) == 0
    from_export = capsys.readouterr().out
    assert from_export.startswith("ROMEO:") and len(from_export) > len("ROMEO:\n")
    assert from_export == from_stage  # the same greedy tokens through transformers
    assert main([*greedy, "--stage", "stage:pretrain"]) == 0  # the node's name, as plan says
    assert capsys.readouterr().out == from_stage
    assert (
        main([*base, "--export", "export:hf@pretrain", "--temperature", "1.0", "--seed", "3"]) == 0
    )
    assert capsys.readouterr().out.startswith("ROMEO:")
    assert main([*base, "--export", "hf@pretrain", "--max-new-tokens", "100"]) == 0
    assert "fit in the context of 32 tokens" in capsys.readouterr().err
    long = ["--prompt", "ROMEO: " * 20, "--max-new-tokens", "2", "--temperature", "0"]
    for source in (["--stage", "pretrain"], ["--export", "hf@pretrain"]):  # said, not silent
        assert main([*base[:-2], *long, *source]) == 0
        assert "the prompt is 140 tokens and the model reads " in capsys.readouterr().err
    assert main([*base, "--export", "q8"]) == 2
    assert "export:q8 is a gguf export" in capsys.readouterr().err
    assert main([*base, "--export", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no export 'nope'" in err and "hf@pretrain" in err and "Traceback" not in err


def test_editing_one_export_rebuilds_only_that_export(build, tmp_path):
    from llmbuild.plan import plan_spec
    from llmbuild.spec.load import load_spec
    from llmbuild.store.store import Store

    built = build("gpt2")
    store = private_copy(built.store, tmp_path / "store")

    def to_build(overrides: list[str]) -> set[str]:
        planned = plan_spec(load_spec(built.spec, overrides), store=Store(str(store)))
        return {n.name for n in planned.plan.nodes if n.status != "cached"}

    assert to_build([]) == set()
    # Made int8, onnx@pretrain has the content of the int8 export: the same artifact.
    assert to_build(["export[1].quantize='int8'"]) == set()
    assert to_build(["export[1].opset=19"]) == {"export:onnx@pretrain"}
    edit = ["export[3].quantization='f32'"]
    assert to_build(edit) == {"export:gguf@pretrain"}
    again = run_nodes(built.spec, store, overrides=edit)
    assert again.ok, again.log
    states = {n: r.state for n, r in again.results.items()}
    assert states.pop("export:gguf@pretrain") == "built"
    assert set(states.values()) == {"cached"}
    metrics = again.results["export:gguf@pretrain"].record.metrics
    assert metrics["quantization"] == "f32" and metrics["max_logit_diff"] < 1e-3


def test_an_opset_below_18_is_a_clear_spec_error(tmp_path):
    from llmbuild.errors import SpecError
    from llmbuild.spec.load import load_spec

    spec = tiny_spec(
        tmp_path, extra='[[export]]\nformat = "onnx"\nstage = "pretrain"\nopset = 17\n'
    )
    with pytest.raises(SpecError, match=r"export\[0\]\.opset"):
        load_spec(spec)


def test_a_gguf_that_cannot_carry_what_was_asked_says_so(tmp_path):
    """Rows of 48 fill no q4_0 block of 32, and a char vocabulary beyond ASCII has no GGUF
    form: the export still proves its file, and says both, in the build's notes."""
    spec = tiny_spec(tmp_path, steps=2, extra='[[export]]\nformat = "gguf"\nstage = "pretrain"\n'
                     'quantization = "q4_0"\n')  # fmt: skip
    text = tmp_path / "data" / "text.txt"
    text.write_text(text.read_text()[:20_000] + "\n\nUn café, s'il vous plaît.\n")
    narrow = ["architecture.hidden=48", "architecture.ffn_hidden=100"]
    outcome = run_nodes(spec, tmp_path / "store", ("export:gguf@pretrain",), narrow)
    assert outcome.ok, outcome.log
    record = outcome.results["export:gguf@pretrain"].record
    assert record.metrics["quantized_tensors"] == 0
    notes = " ".join(record.notes)
    assert "no matrix has rows that fill whole q4_0 blocks of 32" in notes, notes
    assert "the tokenizer has no GGUF form (a char vocabulary beyond ASCII)" in notes, notes


def test_an_export_with_no_held_out_text_says_where_to_name_some():
    """The finetune example's GGUF before it named its sources: an imported model tuned
    on chats, no pretrain source, so nothing to measure the file's perplexity on."""
    from types import SimpleNamespace

    from llmbuild.backends.export.heldout import heldout_perplexity

    notes = []
    ctx = SimpleNamespace(inputs={}, note=notes.append)
    hf = SimpleNamespace(arch=SimpleNamespace(seq_len=16))
    assert heldout_perplexity(ctx, lambda ids: None, hf, 8) == {}
    (note,) = notes
    assert "pretrain sources when `sources` is left out, and there are none" in note
    assert "name sources with a validation split in the export's `sources`" in note


def test_layernorms_without_biases_train_and_export_as_gpt2(tmp_path):
    """``norm_bias = false`` (nanoGPT's ``bias = False``, with ``bias = false``): the
    model has no LayerNorm biases; GPT-2's are written as zeros, and the HF and GGUF
    exports give the trained model's logits."""
    import json

    from gguf import GGUFReader
    from safetensors.torch import load_file

    spec = tiny_spec(
        tmp_path, "gpt2", steps=6, extra=EXPORTS.split('[[export]]\nformat = "onnx"')[0]
    )
    spec.write_text(
        spec.read_text().replace(
            "seq_len = 32\n", "seq_len = 32\nbias = false\nnorm_bias = false\n", 1
        )
    )
    spec.write_text(spec.read_text() + '[[export]]\nformat = "gguf"\nstage = "pretrain"\n')
    store = tmp_path / "store"
    outcome = run_nodes(spec, store)
    assert outcome.ok, outcome.log
    weights = load_file(str(artifact(outcome, store, "stage:pretrain") / "model.safetensors"))
    assert not [k for k in weights if "norm" in k and k.endswith("bias")]
    assert "decoder.final_layernorm.weight" in weights
    assert outcome.results["export:hf@pretrain"].record.metrics["max_logit_diff"] < 1e-4
    hf = load_file(str(artifact(outcome, store, "export:hf@pretrain") / "model.safetensors"))
    assert float(hf["transformer.h.0.ln_1.bias"].abs().max()) == 0.0
    assert float(hf["transformer.ln_f.bias"].abs().max()) == 0.0
    gguf = artifact(outcome, store, "export:gguf@pretrain")
    reader = GGUFReader(str(next(gguf.glob("*.gguf"))))
    assert "output_norm.bias" in {t.name for t in reader.tensors}
    # transformers reads the GGUF back: the same top tokens and held-out perplexity
    metrics = outcome.results["export:gguf@pretrain"].record.metrics
    assert metrics["top1_agreement"] >= 0.9
    assert abs(metrics["perplexity"] / metrics["unquantized_perplexity"] - 1) < 0.01
    config = json.loads((artifact(outcome, store, "stage:pretrain") / "config.json").read_text())
    assert config["architecture"]["norm_bias"] is False


@pytest.mark.parametrize(
    ("fields", "said"),
    [({"style": "llama"}, "applies to style = 'gpt2' only, not 'llama'"),
     ({"style": "bert"}, "applies to style = 'gpt2' only, not 'bert'"),
     ({"norm": "rmsnorm"}, "RMSNorm has no biases to remove")],
)  # fmt: skip
def test_layernorm_biases_come_off_a_gpt2_style_model_only(fields, said):
    from pydantic import ValidationError

    from llmbuild.spec.model import Architecture

    with pytest.raises(ValidationError, match=said):
        Architecture(layers=1, hidden=32, heads=4, seq_len=8, norm_bias=False, **fields)


@pytest.mark.parametrize(
    ("eos", "turn_ends", "template", "eot"),
    [
        # a Qwen 2: eos is the end of a turn, <|endoftext|> another stop
        ("<|im_end|>", ["<|endoftext|>"], "{{ '<|im_start|>' + m + '<|im_end|>' }}", "<|im_end|>"),
        # a Llama 3 instruct: <|eot_id|> ends a turn, <|end_of_text|> a text
        ("<|end_of_text|>", ["<|eot_id|>"], "{{ m + '<|eot_id|>' }}", "<|eot_id|>"),
        # a tokenizer of ours with chatml: <|im_end|> ends a turn, <|eos|> a document
        ("<|eos|>", ["<|im_end|>"], "{{ m + '<|im_end|>' }}", "<|im_end|>"),
        ("<|eos|>", ["<|im_end|>"], None, "<|im_end|>"),  # no template: the first turn end
        ("<|eos|>", [], None, None),
    ],
)
def test_a_ggufs_end_of_turn_is_the_stop_its_chat_template_writes(eos, turn_ends, template, eot):
    from types import SimpleNamespace

    from llmbuild.backends.export.gguf_vocab import _end_of_turn

    info = SimpleNamespace(eos_token=eos, turn_ends=turn_ends)
    assert _end_of_turn(info, template) == eot
