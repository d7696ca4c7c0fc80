"""The ``import`` stage kind: a Hugging Face checkpoint, its weights converted to ours by
its family, run by the ``checkpoint`` backend. It completes the spec: the checkpoint's
``config.json`` fills ``[architecture]`` (the spec may set only what training chooses:
``seq_len``, ``dropout``...) and its tokenizer becomes the spec's unless the spec has a
``[tokenizer]`` table of its own. Registered through the ``llmbuild.kinds`` entry point."""

from __future__ import annotations

import os
from pathlib import Path as PathLib
from typing import Any

from llmbuild.backends.checkpoint.config import ImportConfig
from llmbuild.backends.checkpoint.source import CheckpointError, open_checkpoint, tokenizer_vocab
from llmbuild.backends.checkpoint.spec import Import
from llmbuild.backends.families import Unsupported
from llmbuild.backends.families.llama.config import TRAIN_CONTEXT
from llmbuild.backends.tokenizer.build import special_tokens
from pydantic import ValidationError

from llmbuild.errors import Path, Problem
from llmbuild.kinds import Completion, Kind, NodeRefs
from llmbuild.spec.model import Tokenizer as TokenizerSpec

FILLS = ("architecture", "tokenizer")
FREE = ("seq_len",)
"""Architecture fields a spec may set to its own values over a checkpoint's."""


def _shown(path: Any) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return rel if not rel.startswith("..") else str(path)


def known_tokens(own: dict[str, Any]) -> tuple[int | None, str]:
    """How many tokens the spec's own tokenizer will have, where that is known before it
    is built (a trained one's ``vocab_size``, the byte tokenizer's bytes and special
    tokens, a pretrained one's files; not a char tokenizer's, which its text decides),
    and the key that decides it."""
    try:
        tok = TokenizerSpec.model_validate(own)
    except ValidationError:  # field validation reports it
        return None, "kind"
    if tok.vocab_size is not None:
        return tok.vocab_size, "vocab_size"
    if tok.kind == "byte":
        return 256 + len(special_tokens(tok)), "kind"
    if tok.kind == "pretrained" and tok.path is not None:
        try:
            return tokenizer_vocab(PathLib(tok.path)), "path"
        except CheckpointError:  # the tokenizer node says so when it reads it
            return None, "path"
    return None, "kind"


class ImportKind(Kind):
    def __init__(self) -> None:
        super().__init__(Import, "checkpoint")

    def config(self, item: Any, spec: Any, refs: NodeRefs) -> ImportConfig:
        arch = spec.architecture
        return ImportConfig(stage=item, seq_len=arch.seq_len, vocab_multiple=arch.vocab_multiple)

    def inputs(self, item: Any, spec: Any) -> dict[str, str]:
        return {}

    def labels(self, item: Any) -> dict[str, str]:
        return {"stage": f"stage.{item.name}", "seq_len": "architecture.seq_len"}

    def complete(self, raw: dict[str, Any], where: Path, spec: dict[str, Any]) -> Completion | None:
        ref = raw.get("checkpoint")
        if (
            not isinstance(ref, str) or not ref.strip()
        ):  # field validation reports it; what it would fill waits
            return Completion(origin="", fills=FILLS)
        at = (*where, "checkpoint")
        try:
            ck = open_checkpoint(ref, raw.get("allow_pickle") is True)
            arch = ck.architecture()
        except (CheckpointError, Unsupported) as e:
            return Completion(origin=ref, problems=[Problem(str(e), at)], fills=FILLS)
        origin = f"{_shown(ck.path)}/config.json"
        arch["seq_len"] = min(arch["max_positions"], TRAIN_CONTEXT)
        done = Completion(
            origin=origin,
            fields={"architecture": arch},
            free={"architecture": FREE},
            tables={"tokenizer": {"kind": "pretrained", "path": str(ck.path)}},
        )
        if ck.hub is not None:
            done.item = {"checkpoint": str(ck.path), "hub": ck.hub}
        own = spec.get("tokenizer")
        if isinstance(own, dict) and "kind" in own:  # the spec's own replaces the checkpoint's
            tokens, key = known_tokens(own)
            if tokens is not None and tokens > arch["vocab_size"]:
                done.problems.append(
                    Problem(
                        f"this tokenizer would have {tokens} tokens but the imported "
                        f"embedding only {arch['vocab_size']} rows (vocab_size in {origin}): "
                        "use the checkpoint's own tokenizer, or one that fits",
                        ("tokenizer", key),
                    )
                )
            return done
        if not ck.has_tokenizer():
            done.problems.append(
                Problem(
                    f"{_shown(ck.path)} holds no tokenizer (no tokenizer.json, tokenizer.model, "
                    "vocab.json or vocab.txt): copy the model's tokenizer files into it, or "
                    "give the spec a [tokenizer] table of its own",
                    at,
                )
            )
            return done
        try:
            tokens = ck.tokenizer_vocab()
        except CheckpointError as e:
            done.problems.append(Problem(str(e), at))
            return done
        if tokens is not None and tokens > arch["vocab_size"]:
            done.problems.append(
                Problem(
                    f"the checkpoint's tokenizer has {tokens} tokens but its embedding only "
                    f"{arch['vocab_size']} rows (vocab_size in {origin}){_added(ck.path)}",
                    at,
                )
            )
        return done


def _added(path: Any) -> str:
    """Why a tokenizer has more ids than its vocabulary: special tokens its config names
    that the vocabulary lacks."""
    from llmbuild.backends.checkpoint.source import lacked_specials

    new = lacked_specials(path)
    if not new:
        return ""
    listed = ", ".join(repr(t) for t in new)
    return (
        f": tokenizer_config.json names {listed} as special, and its vocabulary has no such "
        "token, so transformers adds it as a new id; name a token of the vocabulary there"
    )


KINDS = (ImportKind(),)
