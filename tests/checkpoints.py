"""Tiny Hugging Face checkpoints, written by transformers from each family's real config
class (random weights, every tensor perturbed so that a mapping mistake shows), with a
small BPE tokenizer carrying a ChatML template, as a published model would have."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TEXT = (
    "The quick brown fox jumps over the lazy dog. A model reads text and writes text. "
    "Two plus two is four, and three plus four is seven. Hello, how are you today? "
) * 20
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SMALL = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "ffn": 96, "vocab": 384}


def config(family: str, **over: Any) -> Any:
    """The transformers config of a tiny model of ``family``."""
    import transformers

    s = {**SMALL, **{k: v for k, v in over.items() if k in SMALL}}
    rest = {k: v for k, v in over.items() if k not in SMALL}
    if family == "bert":
        return transformers.BertConfig(
            hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
            intermediate_size=s["ffn"], vocab_size=s["vocab"], max_position_embeddings=128, **rest,
        )  # fmt: skip
    if family == "gpt2":
        return transformers.GPT2Config(
            n_embd=s["hidden"], n_layer=s["layers"], n_head=s["heads"], n_inner=s["ffn"],
            vocab_size=s["vocab"], n_positions=128, **rest,
        )  # fmt: skip
    common = {
        "hidden_size": s["hidden"],
        "num_hidden_layers": s["layers"],
        "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv_heads"],
        "intermediate_size": s["ffn"],
        "vocab_size": s["vocab"],
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-6,
        **rest,
    }
    classes = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
    }
    return classes[family](**common)


def tokenizer(vocab: int, specials: list[str] = SPECIALS) -> Any:
    """A byte-level BPE tokenizer of ``vocab`` tokens with ChatML specials (or only those
    of ``specials``) and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([TEXT], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
    )
    fast.chat_template = CHATML
    return fast


def wordpiece_tokenizer(vocab: int) -> Any:
    """A BERT-style WordPiece tokenizer (``[CLS]``, ``[SEP]``, ``[MASK]``, ``[PAD]``)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    # Few enough merges that numbers stay digits ("4", "##5") and sums are spelt out.
    numbers = " ".join(f"{i:02d}+{i:02d}=" for i in range(100))
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab, special_tokens=specials, limit_alphabet=200
    )
    tok.train_from_iterator([TEXT, numbers], trainer)
    return BertTokenizerFast(tokenizer_object=tok)


def perturb(model: Any, seed: int = 0) -> None:
    """Every weight random and away from its initial value (norms not all ones, biases
    not zero), so that a tensor mapped wrong changes the logits."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.1 * noise if p.dim() == 1 else 0.08 * noise)


def write_checkpoint(root: Path, family: str, seed: int = 0, **over: Any) -> Path:
    """A checkpoint directory of a tiny ``family`` model, as ``save_pretrained`` writes it."""
    import torch
    from transformers import AutoModelForCausalLM

    root.mkdir(parents=True, exist_ok=True)
    cfg = config(family, **over)
    if family == "bert":  # BertForPreTraining: the masked-LM head, a pooler, next-sentence
        from transformers import BertForPreTraining

        tok = wordpiece_tokenizer(min(cfg.vocab_size, 120))
        cfg.pad_token_id = tok.pad_token_id
        torch.manual_seed(seed)
        model = BertForPreTraining(cfg)
        perturb(model, seed)
        model.save_pretrained(str(root))
        tok.save_pretrained(str(root))
        return root
    tok = tokenizer(min(cfg.vocab_size, 320))
    cfg.eos_token_id = tok.eos_token_id
    cfg.pad_token_id = tok.pad_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    perturb(model, seed)
    model.save_pretrained(str(root))
    tok.save_pretrained(str(root))
    generation = {"eos_token_id": [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]}
    (root / "generation_config.json").write_text(json.dumps(generation))
    return root


IMPORT_SPEC = """\
[model]
name = "imported"

[[data.sources]]
name = "text"
path = "text.txt"

[[stage]]
name = "base"
kind = "import"
checkpoint = "{checkpoint}"
{extra}"""


def import_spec(root: Path, checkpoint: Path, extra: str = "") -> Path:
    """A spec that imports ``checkpoint`` (and whatever ``extra`` adds)."""
    (root / "text.txt").write_text(TEXT)
    spec = root / "spec.toml"
    spec.write_text(IMPORT_SPEC.format(checkpoint=checkpoint, extra=extra))
    return spec
