"""The ``stage:<name>`` node of a ``prune`` stage: measure what matters on calibration
text, cut the rest out of the pruned stage's canonical weights, and commit them as a stage
artifact of the smaller shape, checked by loading them into a model of that shape."""

from __future__ import annotations

import json
import time
from typing import Any

from llmbuild.backends.megatron.artifact import CONFIG, MODEL, StageArtifact
from llmbuild.backends.prune.config import PruneConfig

from llmbuild.errors import UserError
from llmbuild.run.context import RunContext
from llmbuild.spec.base import table_dump

SEQUENCES_PER_BATCH = 8


def _calibration(ctx: RunContext[PruneConfig], arch: Any, eod: int, vocab: int) -> list[Any]:
    """Batches ``[8, seq_len + 1]`` of the calibration sources' training text."""
    import torch
    from llmbuild.backends.megatron.data import build_datasets
    from llmbuild.backends.megatron.objectives import GptSamples

    sources = {
        slot[len("data:") :]: str(a.path)
        for slot, a in ctx.inputs.items()
        if slot.startswith("data:")
    }
    count = ctx.config.stage.calibration_batches
    train, _ = build_datasets(
        sources, ctx.config.mixture, arch.seq_len, 0, eod, vocab,
        count * SEQUENCES_PER_BATCH, SEQUENCES_PER_BATCH, ctx.work_dir / "index_cache",
    )  # fmt: skip
    samples = GptSamples(train)
    batches = []
    for b in range(count):
        batch = samples.batch(list(range(b * SEQUENCES_PER_BATCH, (b + 1) * SEQUENCES_PER_BATCH)))
        batches.append(torch.cat([batch["tokens"], batch["labels"][:, -1:]], dim=1))
    return batches


def run(ctx: RunContext[PruneConfig]) -> None:
    from llmbuild.backends.megatron.cpu import node_threads

    with node_threads(ctx):
        _run(ctx)


def _run(ctx: RunContext[PruneConfig]) -> None:
    from llmbuild.backends.megatron.generate import load_model
    from llmbuild.backends.megatron.model import canonical_state
    from llmbuild.backends.megatron.vocab import counted_parameters
    from llmbuild.backends.prune.importance import calibration_loss, choose
    from llmbuild.backends.prune.slicing import Shape, prune_state
    from llmbuild.backends.tokenizer.artifact import TokenizerArtifact
    from safetensors.torch import save_file

    config = ctx.config
    began = time.perf_counter()
    parent = StageArtifact.open(ctx.input("from"))
    if parent.adapters_only:
        raise UserError(
            f"{ctx.node}: {parent.node} holds only LoRA adapters; prune a stage with full "
            f"weights (set merge = true on stage {parent.name!r})"
        )
    before, after = parent.architecture, config.architecture
    model, meta = parent.load_model()
    tok = TokenizerArtifact.open(ctx.input("tokenizer").path)
    batches = _calibration(ctx, before, tok.eos_id, meta["vocab_size"])
    ctx.timings["load"] = round(time.perf_counter() - began, 3)
    mark = time.perf_counter()
    ctx.progress.update(phase="measuring importance")
    shape = Shape.of(before)
    keep, report = choose(model, shape, Shape.of(after), batches)
    ctx.timings["importance"] = round(time.perf_counter() - mark, 3)
    full = canonical_state(model)
    state = prune_state(full, shape, keep)
    save_file(state, str(ctx.out_dir / MODEL))
    meta = {
        **{k: v for k, v in meta.items() if k != "adapter"},  # a merged LoRA's: not this one's
        "architecture": table_dump(after),
        "stage": config.stage.name,
        "kind": "prune",
        "pruned": {"node": parent.node, "key": parent.artifact.record.key},
    }
    (ctx.out_dir / CONFIG).write_text(json.dumps(meta, indent=1, sort_keys=True))
    mark = time.perf_counter()
    pruned, _ = load_model(ctx.out_dir)  # strict: the weights fit the smaller shape
    pruned_loss = calibration_loss(pruned, batches)
    ctx.timings["verify"] = round(time.perf_counter() - mark, 3)
    report = {
        **report,
        "kept_layers": keep.layers,
        "pruned_calibration_loss": pruned_loss,
    }
    (ctx.out_dir / "importance.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    rows = (meta["vocab_size"], meta.get("padded_vocab_size", meta["vocab_size"]))

    def counted(weights: dict[str, Any]) -> int:
        return counted_parameters({k: t.shape for k, t in weights.items()}, *rows)

    parameters = counted(state)
    ctx.metrics.update(
        {
            "parameters": parameters,
            "parameters_before": counted(full),
            "calibration_loss_before": report["calibration_loss"],
            "calibration_loss": pruned_loss,
            "dropped_layers": len(report["dropped_layers"]),
        }
    )
    ctx.log.info(
        "pruned %s to %d parameters: calibration loss %.4f -> %.4f",
        parent.node, parameters, report["calibration_loss"], pruned_loss,
    )  # fmt: skip
