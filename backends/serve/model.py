"""What is served: a transformers causal LM in float32 eval mode with its tokenizer, chat
template, end-of-turn stop tokens and context length, loaded from a built stage
(converted in memory) or from a built ``hf`` export directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmbuild.backends.tokenizer.build import text_turn_ends

from llmbuild.errors import UserError


class PromptError(ValueError):
    """A conversation the chat template cannot render."""


NO_TEMPLATE = (
    "{name} has no chat template, so it answers completions only: set [tokenizer] "
    'chat_template = "chatml" (or a Jinja template of your own) in its spec and build it '
    "again to chat with it"
)


@dataclass(frozen=True)
class ServedModel:
    name: str
    """The name clients ask for: the stage's name, or the export's (``hf@base``)."""
    aliases: tuple[str, ...]
    """Other names accepted for it (the graph node's)."""
    model: Any
    tokenizer: Any
    """The transformers tokenizer, with the chat template."""
    stop_ids: tuple[int, ...]
    """End of sequence, then end of turn: generation stops at any of them."""
    start_id: int
    """The id an empty prompt starts from (beginning of sequence, else end of one)."""
    context: int
    """Positions the model can attend over: prompt and answer together."""
    turn_texts: tuple[str, ...] = ()
    """End-of-turn markers the tokenizer has no token for: a chat answer stops at their
    text (``text_turn_ends``)."""

    def encode(self, text: str, specials: bool = False) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=specials))

    def prompt_ids(self, text: str) -> list[int]:
        """A completion prompt's ids, with the special tokens the tokenizer adds itself
        (a Llama tokenizer's beginning of sequence), as transformers and vLLM encode it
        (``llmbuild generate``'s rule for an empty prompt)."""
        return self.encode(text, specials=True) or [self.start_id]

    @property
    def chats(self) -> bool:
        """Whether the model has a chat template (a base model's tokenizer often has none)."""
        return self.tokenizer.chat_template is not None

    def chat_text(self, messages: list[dict[str, str]]) -> str:
        """The conversation in the model's chat template, up to the start of the answer."""
        if not self.chats:
            raise PromptError(NO_TEMPLATE.format(name=self.name))
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as e:  # jinja's TemplateError, or a tokenizer with no template
            raise PromptError(f"the chat template cannot render these messages: {e}") from e

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        return self.encode(self.chat_text(messages))

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(
            ids, skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False
        )


def _context(model: Any) -> int:
    return int(model.config.max_position_embeddings)


def from_stage(stage_input: Any, tokenizer_input: Any, node: str) -> ServedModel:
    """A built stage, converted to transformers in memory as its ``hf`` export would be."""
    from llmbuild.backends.export.run import hf_model
    from llmbuild.backends.megatron.artifact import StageArtifact
    from llmbuild.backends.tokenizer.artifact import TokenizerArtifact

    tokenizer = TokenizerArtifact.open(tokenizer_input.path)
    stage = StageArtifact.open(stage_input)
    stage.require_decoder("generate text")
    hf = hf_model(stage, tokenizer, node)
    start = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
    return ServedModel(
        name=node.partition(":")[2] or hf.name,  # as the spec names the stage now: a
        aliases=(node,),  # renamed stage keeps its key, and its artifact the old name
        model=hf.model.float().eval(),
        tokenizer=tokenizer.hf_tokenizer(),
        stop_ids=tuple(tokenizer.stop_ids),
        start_id=start,
        context=_context(hf.model),
        turn_texts=tokenizer.stop_texts,
    )


def _generation_stops(export_dir: Path, tokenizer: Any) -> tuple[int, ...]:
    """``eos_token_id`` of the export's generation config (an id or a list), else the
    tokenizer's end of sequence."""
    path = export_dir / "generation_config.json"
    found = json.loads(path.read_text()).get("eos_token_id") if path.is_file() else None
    if found is None:
        found = tokenizer.eos_token_id
    ids = [found] if isinstance(found, int) else list(found or ())
    return tuple(int(i) for i in ids)


def from_export(export_dir: Path, node: str) -> ServedModel:
    """A built ``hf`` export, loaded as transformers loads any model directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(export_dir))
        model = AutoModelForCausalLM.from_pretrained(str(export_dir), dtype=torch.float32)
    except OSError as e:
        raise UserError(f"{node} cannot be loaded with transformers: {e}") from None
    start = tokenizer.bos_token_id
    if start is None:
        start = tokenizer.eos_token_id
    return ServedModel(
        name=node.split(":", 1)[1],
        aliases=(node,),
        model=model.eval(),
        tokenizer=tokenizer,
        stop_ids=_generation_stops(export_dir, tokenizer),
        start_id=int(start),
        context=_context(model),
        turn_texts=text_turn_ends(tokenizer.chat_template, tokenizer.get_vocab()),
    )
