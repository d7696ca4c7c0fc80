"""The import node: a Hugging Face checkpoint's weights, read shard by shard, converted by
its family's rules into our canonical weights and written as a stage artifact
(``megatron/artifact.py`` reads it like any trained stage); then proven: our model's
logits against transformers' own on fixed inputs, the difference recorded, a difference
past the tolerance an error (nothing is committed)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from llmbuild.backends.checkpoint.config import ImportConfig
from llmbuild.backends.checkpoint.source import Checkpoint, open_checkpoint
from llmbuild.backends.megatron.artifact import CONFIG, MODEL

from llmbuild.errors import UserError
from llmbuild.run.context import RunContext
from llmbuild.spec.base import table_dump
from llmbuild.spec.model import Architecture

CHECK_TOKENS = 32
"""Length of the fixed inputs the logits are compared on (and there are two)."""


class VerificationError(RuntimeError):
    """The imported weights do not give transformers' logits: the conversion is wrong."""


def _shard(ck: Checkpoint, path: Path) -> dict[str, Any]:
    """One weight file's tensors, in float32."""
    import torch

    if path.suffix == ".bin":
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    else:
        from safetensors.torch import load_file

        tensors = load_file(str(path))
    return {k: v.float() for k, v in tensors.items() if not ck.family.is_ignored(k)}


def expected_shapes(ck: Checkpoint) -> dict[str, tuple[int, ...]]:
    """transformers' own shape of each tensor of the checkpoint's class, from a model its
    ``config.json`` builds on the meta device (no memory, no weights read)."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(ck.path), local_files_only=True)
    with torch.device("meta"):
        model = ck.family.auto_model().from_config(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def check_tensors(tensors: dict[str, Any], shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    """A ``UserError`` naming the tensor and file when a tensor's shape is not the one its
    ``config.json`` gives, or it holds NaN or infinite values: weights that would load,
    train and be wrong."""
    import torch

    for name, t in tensors.items():
        want = shapes.get(name)
        if want is not None and tuple(t.shape) != want:
            raise UserError(
                f"{path}: {name} has shape {list(t.shape)} but config.json gives "
                f"{list(want)}: the weights do not belong to this config"
            )
        if not bool(torch.isfinite(t).all()):
            raise UserError(
                f"{path}: {name} holds NaN or infinite values: the checkpoint is broken"
            )


def convert(ck: Checkpoint, arch: Architecture, progress: Any = None) -> dict[str, Any]:
    """The checkpoint's weights as our canonical weights."""
    from llmbuild.backends.megatron.vocab import padded_vocab

    vocab = arch.vocab_size or 0
    converter = ck.family.converter(arch, vocab, padded_vocab(vocab, arch))
    shapes = expected_shapes(ck)
    heads: dict[str, Any] = {}  # a tied head saved too, and the embedding it must equal
    saved_head = arch.tie_embeddings and _saves_a_tied_head(ck)
    for i, path in enumerate(ck.weights):
        tensors = _shard(ck, path)
        check_tensors(tensors, shapes, path)
        if arch.tie_embeddings:  # some writers save the tied head too
            for name in ck.family.tied:
                if (head := tensors.pop(name, None)) is not None:
                    heads[name] = head
        if saved_head:
            heads |= {n: t for n, t in tensors.items() if n.endswith(EMBEDDINGS)}
        try:
            converter.feed(tensors)
        except ValueError as e:
            raise UserError(f"{path}: {e}") from None
        if progress is not None:
            progress.update(completed=i + 1, total=len(ck.weights), unit="shards")
    _same_tied_head(ck, heads)
    try:
        return converter.result()
    except ValueError as e:
        raise UserError(f"{ck.path}: {e}") from None


EMBEDDINGS = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight")
"""How transformers' families name the token embedding a tied head shares."""


def _saves_a_tied_head(ck: Checkpoint) -> bool:
    """Whether a weight file holds a tensor tied to the embedding (read from the files'
    headers: the embedding is kept for comparing only then)."""
    from safetensors import safe_open

    for path in ck.weights:
        if path.suffix == ".bin":
            return True  # no header to read: compare
        with safe_open(str(path), "np") as f:
            if any(name in f.keys() for name in ck.family.tied):  # noqa: SIM118
                return True
    return False


def _same_tied_head(ck: Checkpoint, heads: dict[str, Any]) -> None:
    """A config that ties the output layer to the embedding, over weights whose saved
    output layer differs from it, is refused (importing either would give other logits
    than one of the two readings)."""
    import torch

    embedding = next((t for n, t in heads.items() if n.endswith(EMBEDDINGS)), None)
    for name, head in heads.items():
        if name.endswith(EMBEDDINGS) or embedding is None:
            continue
        if head.shape != embedding.shape or not torch.equal(head, embedding):
            raise UserError(
                f"{ck.path / 'config.json'}: tie_word_embeddings is true, but the weights "
                f"hold a {name} of their own, unlike the token embedding: set "
                "tie_word_embeddings to false in config.json to import the output layer "
                "as it is saved"
            )


def logit_difference(ck: Checkpoint, stage_dir: Path, arch: Architecture) -> tuple[float, float]:
    """The largest differences of our model's logits, and of its log-probabilities over
    all its rows (the padded ones too: what a loss or a perplexity sees), from
    transformers' on the checkpoint, both in float32, on two fixed random sequences."""
    import torch
    from llmbuild.backends.export.run import megatron_logits, random_ids

    auto = ck.family.auto_model()
    theirs = auto.from_pretrained(str(ck.path), dtype=torch.float32).eval()
    ids = random_ids(arch.vocab_size or 2, 2, min(arch.seq_len, CHECK_TOKENS))
    with torch.no_grad():
        reference = theirs(ids).logits.float()
    ours = megatron_logits(stage_dir, ids, padded=True)
    vocab = reference.shape[-1]
    logits = float((ours[..., :vocab] - reference).abs().max())
    logprobs = ours.log_softmax(-1)[..., :vocab] - reference.log_softmax(-1)
    return logits, float(logprobs.abs().max())


def run(ctx: RunContext[ImportConfig]) -> None:
    from llmbuild.backends.megatron.vocab import counted_parameters, padded_vocab
    from safetensors.torch import save_file

    config = ctx.config
    stage = config.stage
    started = time.perf_counter()
    ck = open_checkpoint(stage.checkpoint, stage.allow_pickle)
    table = {
        **ck.architecture(),
        "seq_len": config.seq_len,
        "vocab_multiple": config.vocab_multiple,
    }
    arch = Architecture.model_validate(table)
    weights = convert(ck, arch, ctx.progress)
    save_file(weights, str(ctx.out_dir / MODEL))
    vocab = arch.vocab_size or 0
    meta = {
        "architecture": table_dump(arch),
        "vocab_size": vocab,
        "padded_vocab_size": padded_vocab(vocab, arch),
        "stage": stage.name,
        "kind": "import",
        "family": ck.family.name,
        "checkpoint": {"hub": stage.hub or ck.hub, "hf_class": ck.family.hf_class},
    }
    (ctx.out_dir / CONFIG).write_text(json.dumps(meta, indent=1, sort_keys=True))
    converted = time.perf_counter()
    diff, logprob_diff = logit_difference(ck, ctx.out_dir, arch)
    ctx.timings.update(
        {
            "convert": round(converted - started, 3),
            "verify": round(time.perf_counter() - converted, 3),
        }
    )
    ctx.metrics.update(
        {
            "max_logit_diff": diff,
            "max_logprob_diff": logprob_diff,
            "family": ck.family.name,
            "hf_class": ck.family.hf_class,
            "parameters": counted_parameters(
                {k: t.shape for k, t in weights.items()}, vocab, meta["padded_vocab_size"]
            ),
            "weight_files": len(ck.weights),
        }
    )
    ctx.log.info(
        "imported %s: max logit difference %.2e, log-probability %.2e", ck.path, diff, logprob_diff
    )
    if not logprob_diff <= stage.tolerance and diff <= stage.tolerance:
        raise VerificationError(
            f"the imported weights give transformers' logits, but log-probabilities "
            f"{logprob_diff:.2e} away from theirs (tolerance {stage.tolerance:.0e}): the "
            f"padded vocabulary rows take a share of the softmax"
        )
    if not diff <= stage.tolerance:  # NaN fails too
        raise VerificationError(
            f"the imported weights give logits {diff:.2e} away from transformers' on the same "
            f"checkpoint (tolerance {stage.tolerance:.0e}): the conversion is wrong"
        )
