"""``llmbuild generate``: sample from a built stage, or from a built ``hf`` export with
transformers' ``generate``."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import Any

from llmbuild.cli.common import (
    SEED,
    add_spec_arguments,
    add_store_argument,
    build_command,
    open_store,
    ranged,
    stage_name,
)
from llmbuild.errors import UserError


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    add_store_argument(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--stage", type=stage_name, help="stage to sample from (default: the last one)"
    )
    source.add_argument(
        "--export",
        metavar="NAME",
        help="hf export to generate from with transformers, e.g. hf@pretrain",
    )
    p.add_argument("--prompt", default="", help="text to continue (with --chat: the user's turn)")
    p.add_argument(
        "--chat",
        action="store_true",
        help="write the prompt as a user's turn in the model's chat template; the answer "
        "ends at the end-of-turn token",
    )
    p.add_argument("--max-new-tokens", type=ranged(int, 1), default=200)
    p.add_argument(
        "--temperature",
        type=ranged(float, 0),
        default=0.8,
        help="sampling temperature (default 0.8); 0 is greedy",
    )
    p.add_argument("--top-k", type=ranged(int, 1), default=None)
    p.add_argument("--top-p", type=ranged(float, 0, 1, above=True), default=1.0)
    p.add_argument("--seed", type=SEED, default=0)


def _built(store: Any, planned: Any, name: str, args: argparse.Namespace) -> Any:
    """The verified artifact of a node of the plan, as an input a backend reads."""
    from llmbuild.run.context import InputArtifact

    found = store.lookup(planned.held_key(name))
    if found.state in ("corrupt", "stale"):
        raise UserError(
            f"{name} is {found.state} in the store ({found.problem}): run "
            f"`{build_command(args)}` to rebuild it"
        )
    if not found.cached:
        raise UserError(
            f"{name} is not built with this spec yet: run `{build_command(args)}` first "
            f"(or `llmbuild plan` to see what is missing)"
        )
    try:
        return InputArtifact.of(store, found.target)
    except OSError as e:
        raise UserError(f"{name} cannot be read from the store: {e}") from None


def _export_node(resolved: Any, wanted: str, command: str) -> str:
    """The graph node of the hf export ``wanted`` names (``hf@sft``, a named export's
    name, or the node name itself), for ``command``."""
    from llmbuild.spec.tables import node_name

    exports = {node_name("export", e): e for e in resolved.spec.export}
    node = wanted if wanted.startswith("export:") else f"export:{wanted}"
    if node not in exports:
        names = ", ".join(n.split(":", 1)[1] for n in exports) or "none"
        raise UserError(f"no export {wanted!r} in {resolved.path} (exports: {names})")
    if exports[node].format != "hf":
        raise UserError(
            f"{node} is a {exports[node].format} export: {command} runs from stages and hf "
            f'exports (add an `[[export]]` with format = "hf")'
        )
    writes_text(resolved, exports[node].stage, command)
    return node


def writes_text(resolved: Any, stage: str, command: str) -> None:
    """A UserError when ``stage`` scores texts instead of writing them."""
    from llmbuild.backends.megatron.kinds import SCORING, stage_architecture

    stages = {s.name: s for s in resolved.spec.stage}
    found = stages.get(stage)
    kind = getattr(found, "kind", None)
    if kind in SCORING:
        source = stages.get(getattr(found, "from_", None) or "")
        writes = (
            source is not None
            and getattr(source, "kind", None) not in SCORING
            and not getattr(stage_architecture(resolved.spec, source), "encoder", False)
        )  # an encoder's base fills in masks: no stage of its chain writes text
        hint = f": {command} from {source.name!r}, the stage it was trained from" if writes else ""
        raise UserError(
            f"{stage!r} is a {SCORING[kind]}: it scores texts and does not write them{hint}"
            + ("; `llmbuild predict` scores texts with it" if kind == "classify" else "")
        )
    if found is not None and getattr(stage_architecture(resolved.spec, found), "encoder", False):
        raise UserError(
            f"{stage!r} is a bert-style encoder: it fills in masked tokens and classifies, "
            f"but does not write text, which {command} needs"
        )


def _generate_hf(args: argparse.Namespace, export_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # stderr is for notes and errors here
    tok = AutoTokenizer.from_pretrained(str(export_dir))
    model = AutoModelForCausalLM.from_pretrained(str(export_dir)).eval()
    limit = model.config.max_position_embeddings
    text = args.prompt
    if args.chat:
        from llmbuild.backends.tokenizer.artifact import require_chat_template

        require_chat_template(tok, "--chat needs one")
        text = tok.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    # a text prompt as transformers encodes it (a Llama tokenizer's beginning of sequence);
    # a chat prompt's template writes its own
    prompt = tok.encode(text, add_special_tokens=not args.chat) or [start]
    _note_cut(len(prompt), limit - 1)
    prompt = prompt[-(limit - 1) :]
    new = min(args.max_new_tokens, limit - len(prompt))
    if new < args.max_new_tokens:
        sys.stderr.write(f"note: {new} new tokens fit in the context of {limit} tokens\n")
    sampling: dict[str, Any] = {"do_sample": False}
    if args.temperature > 0:
        sampling = {
            "do_sample": True,
            "temperature": args.temperature,
            "top_k": args.top_k or 0,
            "top_p": args.top_p,
        }
    from llmbuild.backends.tokenizer.build import text_turn_ends

    ends = text_turn_ends(tok.chat_template, tok.get_vocab()) if args.chat else ()
    if ends:  # transformers stops at their text as it does at a token
        sampling.update(stop_strings=list(ends), tokenizer=tok)
    from transformers.generation.streamers import BaseStreamer

    from llmbuild.backends.tokenizer.continuation import Continuation

    decode = partial(tok.decode, skip_special_tokens=True)
    stream = _Stream(Continuation(decode, prompt), ends, "" if args.chat else args.prompt)

    class Shown(BaseStreamer):  # transformers hands it the prompt, then each new token
        def __init__(self) -> None:
            self.ids: list[int] | None = None

        def put(self, value: Any) -> None:
            if self.ids is None:
                self.ids = []
                return
            self.ids += value.flatten().tolist()
            stream.show(self.ids)

        def end(self) -> None:
            pass

    torch.manual_seed(args.seed)
    ids = torch.tensor([prompt])
    with torch.no_grad(), stream:
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            pad_token_id=tok.pad_token_id,
            streamer=Shown(),
            **sampling,
        )
        generated = out[0, len(prompt) :].tolist()
        stops = model.generation_config.eos_token_id  # eos, and a chat model's end of turn
        if generated and generated[-1] in (stops if isinstance(stops, list) else [stops]):
            generated = generated[:-1]
        stream.show(generated, last=True)


def _note_cut(tokens: int, context: int) -> None:
    """Say that a prompt longer than the model's context is read from its end only."""
    if tokens > context:
        sys.stderr.write(
            f"note: the prompt is {tokens} tokens and the model reads {context}: it sees the "
            f"prompt's last {context} tokens only\n"
        )


def _generate_stage(args: argparse.Namespace, stage_input: Any, tok_input: Any) -> None:
    from llmbuild.backends.megatron.artifact import StageArtifact
    from llmbuild.backends.megatron.generate import context, sample
    from llmbuild.backends.tokenizer.artifact import TokenizerArtifact

    tok = TokenizerArtifact.open(tok_input.path)
    stage = StageArtifact.open(stage_input)
    stage.require_decoder("generate text")
    try:
        model, config = stage.load_model()
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    text = tok.chat_prompt(args.prompt) if args.chat else args.prompt
    ids = tok.prompt_ids(text) if args.chat else tok.completion_ids(text)
    _note_cut(len(ids), context(config))
    if len(ids) < context(config) < len(ids) + args.max_new_tokens:  # the export stops there
        sys.stderr.write(
            f"note: past {context(config)} tokens, prompt and answer together, each new token "
            f"is predicted from the last {context(config)} only (the model's context)\n"
        )
    unknown = ids.count(tok.unknown_id) if tok.unknown_id is not None else 0
    if unknown:  # a char vocabulary's: the model never saw what they stand for
        sys.stderr.write(
            f"note: {unknown} of the prompt's {len(ids)} tokens are the unknown token: "
            "its text has characters outside the tokenizer's vocabulary\n"
        )
    ends = tok.stop_texts if args.chat else ()
    from llmbuild.backends.tokenizer.continuation import Continuation

    # special tokens left out, as transformers decodes them on an export's path
    decode = partial(tok.decode, skip_special_tokens=True)
    stream = _Stream(Continuation(decode, ids), ends, "" if args.chat else args.prompt)

    def until(out: list[int]) -> bool:
        stream.show(out)
        # each of a marker's tokens spells at least one of its characters: the last
        # len(marker) tokens hold it once it is written out
        return any(e in tok.decode(out[-len(e) :]) for e in ends)

    with stream:
        new = sample(
            model,
            config,
            ids,
            args.max_new_tokens,
            args.temperature,
            args.top_k,
            args.top_p,
            args.seed,
            stop=tok.stop_ids,
            until=until,
        )
        stream.show(new, last=True)


class _Stream:
    """A continuation written to stdout as its tokens come. What may still change is held
    back until the next token or the last: a character whose bytes are not all there yet
    (decoded as U+FFFD), and as much of the text's end as could begin an end-of-turn
    marker. A text prompt is written first, the text going on from it. Once all of it is
    shown up to a space, the tokens after it are decoded from there on, so that a long
    text is not decoded whole at every token. Interrupted, it ends the line it wrote."""

    def __init__(self, continuation: Any, ends: tuple[str, ...], lead: str) -> None:
        self.continuation, self.ends, self.lead = continuation, ends, lead
        self.hold = max((len(e) for e in ends), default=1) - 1
        self.shown = ""
        self.base = 0  # the new tokens before it are shown, and decoded no more

    def show(self, new: list[int], last: bool = False) -> None:
        whole = _before(self.continuation.text(new[self.base :]), self.ends)
        text = whole if last else whole[: len(whole) - self.hold].rstrip("\ufffd")
        if text.startswith(self.shown) and len(text) > len(self.shown):
            sys.stdout.write(text[len(self.shown) :])
            sys.stdout.flush()
            self.shown = text
        if not last and text == self.shown == whole and text[-1:].isspace():
            done = self.continuation.before + new[self.base :]
            self.continuation = type(self.continuation)(self.continuation.decode, done)
            self.base, self.shown = len(new), ""

    def __enter__(self) -> _Stream:
        sys.stdout.write(self.lead)
        sys.stdout.flush()
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.stdout.write("\n")
        sys.stdout.flush()


def _before(text: str, ends: tuple[str, ...]) -> str:
    """A reply up to the first end-of-turn marker written out in it (``stop_texts``)."""
    cut = min((text.find(e) for e in ends if e in text), default=-1)
    return text if cut < 0 else text[:cut]


def run(args: argparse.Namespace) -> int:
    from llmbuild.plan import plan_spec
    from llmbuild.spec.load import load_spec

    resolved = load_spec(args.spec, args.overrides, missing_ok=True)
    store = open_store(args, resolved.path)
    planned = plan_spec(resolved, store=store, cache=store.cache)
    if args.export:
        node = _export_node(resolved, args.export, args.command)
        export = _built(store, planned, node, args).path
        generate = partial(_generate_hf, args, export)
    else:
        stages = [n for n in planned.names if n.startswith("stage:")]
        name = f"stage:{args.stage}" if args.stage else stages[-1]
        if name not in stages:
            raise UserError(f"no stage {args.stage!r} (stages: {', '.join(s[6:] for s in stages)})")
        writes_text(resolved, name.split(":", 1)[1], args.command)
        stage = _built(store, planned, name, args)
        tokenizer = _built(store, planned, "tokenizer", args)
        generate = partial(_generate_stage, args, stage, tokenizer)
    generate()
    return 0
