"""Write a tiny Hugging Face checkpoint to fine-tune, as a published one is laid out: a
Qwen2 model (transformers' own ``Qwen2Config``, random weights, ``save_pretrained``), a
byte-level BPE tokenizer with ChatML special tokens and chat template, and a generation
config whose end-of-turn token stops chat replies. Nothing is downloaded.

    python examples/finetune/make_checkpoint.py [OUT]     # default: checkpoints/tiny-qwen2
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path

HERE = Path(__file__).parent
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tokenizer(texts: Iterable[str], vocab: int):
    """A byte-level BPE tokenizer of ``vocab`` tokens trained on ``texts``, with ChatML's
    special tokens and template; ``<|endoftext|>`` ends documents, as in Qwen's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIALS[1:],
    )
    fast.chat_template = CHATML
    return fast


def save(out: Path, model, tok) -> Path:
    """The model, its tokenizer and its generation config, as ``save_pretrained`` writes
    them (chat replies end at ``<|im_end|>``, documents at ``<|endoftext|>``)."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    ends = [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": ends}, indent=1))
    return out


def main(out: Path = HERE / "checkpoints" / "tiny-qwen2") -> Path:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    lines = [
        line for f in sorted((HERE / "data").glob("*.jsonl")) for line in f.read_text().splitlines()
    ]
    chats = [json.loads(line) for line in lines]
    texts = [m["content"] for c in chats for m in c["messages"]]
    tok = tokenizer(texts * 4, 512)
    config = Qwen2Config(
        hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=512, max_position_embeddings=512,
        tie_word_embeddings=True, rope_theta=1_000_000.0,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    return save(out, AutoModelForCausalLM.from_config(config), tok)


if __name__ == "__main__":
    print(main(Path(sys.argv[1])) if len(sys.argv) > 1 else main())
