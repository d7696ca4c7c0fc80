"""The tokenizer node's artifact, written and read only here: ``tokenizer/`` (files
``transformers.AutoTokenizer`` loads, with the chat template) and ``tokenizer_info.json``
(the special tokens and the vocabulary size). Every node that reads a tokenizer opens
it with ``TokenizerArtifact.open``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from llmbuild.backends.tokenizer.build import IM_END, text_turn_ends

from llmbuild.errors import UserError

INFO = "tokenizer_info.json"
FILES = "tokenizer"


def require_chat_template(tok: Any, why: str) -> None:
    """A ``UserError`` when ``tok`` (a transformers tokenizer) has no chat template, which
    ``why`` needs (a base model's tokenizer often has none)."""
    if tok.chat_template is None:
        raise UserError(
            f"the tokenizer has no chat template, and {why}: set [tokenizer] "
            'chat_template = "chatml" (or a Jinja template of your own) in the spec'
        )


@dataclass(frozen=True)
class TokenizerInfo:
    """What a tokenizer artifact records beside the tokenizer files."""

    kind: str
    vocab_size: int
    eos_token: str
    pad_token: str
    chat_template: str
    """`chatml`, a template string of the spec, or `own` (a pretrained tokenizer's)."""
    bos_token: str | None = None
    """None for a pretrained tokenizer that has none (Qwen's)."""
    mask_token: str | None = None
    """The mask token of masked-LM pretraining, when the tokenizer has one."""
    end_of_turn: list[str] | None = None
    """Tokens that end an assistant turn, which stop a chat model's generation as the
    end-of-sequence token does; for the chatml template, ``<|im_end|>``."""

    def write(self, out_dir: Path) -> None:
        info = {k: v for k, v in asdict(self).items() if v is not None}
        (out_dir / INFO).write_text(json.dumps(info, indent=1, sort_keys=True))

    @property
    def turn_ends(self) -> list[str]:
        if self.end_of_turn is not None:
            return list(self.end_of_turn)
        return [IM_END] if self.chat_template == "chatml" else []


@dataclass(frozen=True)
class TokenizerArtifact:
    """A built tokenizer, by its artifact directory."""

    path: Path
    info: TokenizerInfo

    @classmethod
    def open(cls, path: Path | str) -> TokenizerArtifact:
        path = Path(path)
        raw: dict[str, Any] = json.loads((path / INFO).read_text())
        return cls(path, TokenizerInfo(**raw))

    @property
    def files(self) -> Path:
        """The directory ``AutoTokenizer.from_pretrained`` loads."""
        return self.path / FILES

    @property
    def json_path(self) -> Path:
        return self.files / "tokenizer.json"

    @cached_property
    def tokenizer(self) -> Any:
        """The HF ``tokenizers.Tokenizer``."""
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(self.json_path))

    @cached_property
    def plain_tokenizer(self) -> Any:
        """The ``tokenizers.Tokenizer`` that reads a special token's spelling as text, as
        training reads documents."""
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(self.json_path))
        tok.encode_special_tokens = True
        return tok

    def hf_tokenizer(self) -> Any:
        """The ``transformers`` tokenizer (with the chat template)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(self.files))

    def token_id(self, token: str) -> int:
        found = self.tokenizer.token_to_id(token)
        if found is None:
            raise ValueError(f"the tokenizer has no {token!r} token")
        return int(found)

    @property
    def eos_id(self) -> int:
        return self.token_id(self.info.eos_token)

    @property
    def bos_id(self) -> int | None:
        return self.token_id(self.info.bos_token) if self.info.bos_token else None

    @property
    def mask_id(self) -> int | None:
        return self.token_id(self.info.mask_token) if self.info.mask_token else None

    @property
    def pad_id(self) -> int:
        return self.token_id(self.info.pad_token or self.info.eos_token)

    @property
    def special_ids(self) -> dict[str, int]:
        """``bos_token_id``, ``eos_token_id`` and ``pad_token_id``."""
        return {
            "bos_token_id": self.bos_id,
            "eos_token_id": self.eos_id,
            "pad_token_id": self.pad_id,
        }

    @property
    def stop_ids(self) -> list[int]:
        """Ids that end generation: end of sequence, then end of turn."""
        ids = [self.eos_id]
        for token in self.info.turn_ends:
            found = self.tokenizer.token_to_id(token)
            if found is not None and found not in ids:
                ids.append(int(found))
        return ids

    @property
    def unknown_id(self) -> int | None:
        """The id text outside the vocabulary becomes (a char tokenizer's unknown token);
        None for a vocabulary that spells everything (bytes)."""
        token = getattr(self.tokenizer.model, "unk_token", None)
        return self.tokenizer.token_to_id(token) if token else None

    @property
    def stop_texts(self) -> tuple[str, ...]:
        """End-of-turn markers the tokenizer spells with ordinary tokens: generation stops
        where their text appears (``text_turn_ends``)."""
        tok = self.hf_tokenizer()
        return text_turn_ends(tok.chat_template, tok.get_vocab())

    def encode(self, text: str) -> list[int]:
        """A document's or labeled text's ids, as training reads them: a special token's
        spelling in it is text (the tokenize backend's plain encoding)."""
        return list(self.plain_tokenizer.encode(text, add_special_tokens=False).ids)

    def prompt_ids(self, text: str) -> list[int]:
        """A prompt's ids, special tokens matched (a chat template's markers are in it);
        an empty prompt starts from the beginning-of-sequence token (or the end of one,
        for a tokenizer without one: documents are separated by it)."""
        ids = list(self.tokenizer.encode(text, add_special_tokens=False).ids)
        return ids or [self.eos_id if self.bos_id is None else self.bos_id]

    def completion_ids(self, text: str) -> list[int]:
        """A text prompt's ids as transformers encodes it: with the special tokens the
        tokenizer itself adds (a Llama tokenizer's beginning of sequence); ``prompt_ids``'s
        rule for an empty prompt."""
        return list(self.tokenizer.encode(text).ids) or self.prompt_ids(text)

    def chat_prompt(self, text: str) -> str:
        """``text`` as a user's turn in the chat template, followed by the start of the
        assistant's answer."""
        tok = self.hf_tokenizer()
        require_chat_template(tok, "a chat prompt needs one")
        return tok.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
