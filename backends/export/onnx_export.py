"""``onnx`` export: the transformers model through ``torch.onnx`` (the dynamo exporter,
``input_ids, attention_mask [batch, sequence] -> logits``; positions count the unmasked
tokens, so a left-padded batch scores each prompt as it scores alone), proven with
onnxruntime against the megatron model and on a padded batch against transformers; ``quantize = "int8"`` then applies onnxruntime dynamic quantization and proves the
int8 model picks the same top-1 token as the float32 one at most positions. The file's
held-out perplexity is measured beside the unquantized model's (``heldout.py``)."""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from llmbuild.backends.export.heldout import heldout_perplexity
from llmbuild.backends.export.run import (
    VerificationError,
    hf_model,
    inputs,
    megatron_logits,
    random_ids,
    save_hf_extras,
)

TOLERANCE = 1e-3
"""Largest logit difference between onnxruntime (float32) and the megatron model."""
MIN_INT8_AGREEMENT = 0.9
"""Smallest share of positions where the int8 model's top-1 token is the float32 one's."""
EXTERNAL_DATA_BYTES = 1 << 30
"""Above this many bytes of weights, tensors go to ``model.onnx.data`` (protobuf stops at
2 GiB)."""


def _session(path: Path) -> Any:
    """An onnxruntime session on as many threads as torch has (the node's CPUs)."""
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _logits(session: Any, ids: Any, mask: Any = None) -> Any:
    import numpy as np

    ids = np.asarray(ids, dtype=np.int64)
    mask = np.ones_like(ids) if mask is None else np.asarray(mask, dtype=np.int64)
    return session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]


def positions(mask: Any) -> Any:
    """Position ids of a (left- or right-) padded batch: the count of unmasked tokens
    before each one, as transformers' ``generate`` makes them."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def padded_batch(vocab: int, lengths: tuple[int, ...], seed: int = 7) -> tuple[Any, Any]:
    """Random prompts of ``lengths``, left-padded with token 0 into one batch, and its mask."""
    import torch

    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros((len(lengths), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, width - n :] = torch.randint(0, vocab, (n,), generator=g)
        mask[row, width - n :] = 1
    return ids, mask


def _torch_export(model: Any, seq_len: int, path: Path, opset: int, external: bool) -> None:
    import torch

    class Logits(torch.nn.Module):
        """``input_ids, attention_mask -> logits``: positions from the mask, no cache."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=positions(attention_mask),
                use_cache=False,
            ).logits

    export_program(Logits(model), seq_len, path, opset, external)


def export_program(
    module: Any, seq_len: int, path: Path, opset: int, external: bool = False, types: bool = False
) -> None:
    """``module(input_ids, attention_mask)`` through the dynamo exporter, batch and sequence
    dynamic (up to ``seq_len``); with ``types``, ``module(input_ids, attention_mask,
    token_type_ids)`` (an encoder's pairs)."""
    import torch

    # A size-1 example dimension would be specialised away by torch.export.
    example = torch.zeros((2, max(2, min(8, seq_len))), dtype=torch.long)
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=max(seq_len, example.shape[1]))
    axes = {0: batch, 1: sequence}  # the mask shares the ids' axes (hence their names)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if types else [])
    examples = (example, torch.ones_like(example)) + ((torch.zeros_like(example),) if types else ())
    # What the exporter says of itself, not of this model: torchvision's ops it skips
    # (torchvision is not needed), torch's own deprecated pytree call, shared initialisers.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
        program = torch.onnx.export(
            module.eval(),
            examples,
            dynamo=True,
            input_names=names,
            output_names=["logits"],
            dynamic_shapes={name: axes for name in names},
            opset_version=opset,
            verbose=False,
        )
        program.save(str(path), external_data=external)


def _padded_check(hf: Any, session: Any, seq_len: int) -> float:
    """A left-padded batch of two prompts: onnxruntime against transformers given the same
    mask and positions, on the real tokens (each also as scored alone)."""
    import torch

    lengths = (min(seq_len, 12), min(seq_len, 5))
    ids, mask = padded_batch(hf.vocab, lengths)
    ours = _logits(session, ids, mask)
    with torch.no_grad():
        theirs = hf.model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
        alone = hf.model(input_ids=ids[1:, -lengths[1] :]).logits[0]
    real = mask.bool().numpy()
    diff = float(abs(ours[real] - theirs.numpy()[real]).max())
    diff = max(diff, float(abs(ours[1, -lengths[1] :] - alone.numpy()).max()))
    if not diff <= TOLERANCE:  # NaN fails too
        raise VerificationError(
            f"on a padded batch onnxruntime's logits differ from transformers' by {diff:.2e} "
            f"(tolerance {TOLERANCE:.0e}): the exported attention mask is wrong"
        )
    return diff


def _quantize_int8(src: Path, dst: Path, external: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), weight_type=QuantType.QInt8, use_external_data_format=external
    )


def export_onnx(ctx: Any, export: Any) -> None:
    stage, tokenizer = inputs(ctx)
    if stage.head_outputs:  # a classifier, a reward model: scores, no perplexity to measure
        from llmbuild.backends.export.classifier import export_onnx_classifier

        return export_onnx_classifier(ctx, export, stage, tokenizer)
    hf = hf_model(stage, tokenizer, ctx.node)
    out: Path = ctx.out_dir
    external = sum(p.numel() * 4 for p in hf.model.parameters()) > EXTERNAL_DATA_BYTES
    seq = hf.arch.seq_len
    with tempfile.TemporaryDirectory(dir=ctx.work_dir) as tmp:
        fp32 = Path(tmp) / "model.onnx"
        _torch_export(hf.model, seq, fp32, export.opset, external)
        # Another shape than the traced example, so a lost dynamic axis shows here.
        ids = random_ids(hf.vocab, 3, min(seq, 32))
        stage_dir, base_dir = stage.dirs
        reference = megatron_logits(stage_dir, ids, base_dir).numpy()
        fp32_logits = _logits(_session(fp32), ids)
        diff = float(abs(fp32_logits - reference).max())
        metrics: dict[str, Any] = {
            "format": "onnx",
            "opset": export.opset,
            "quantize": export.quantize,
            "max_logit_diff": diff,
        }
        if not diff <= TOLERANCE:  # NaN fails too
            raise VerificationError(
                f"onnxruntime's logits differ from the trained model's by {diff:.2e} "
                f"(tolerance {TOLERANCE:.0e}): the onnx export is wrong"
            )
        metrics["padded_max_logit_diff"] = _padded_check(hf, _session(fp32), seq)
        if export.quantize == "int8":
            _quantize_int8(fp32, out / "model.onnx", external)
            int8_logits = _logits(_session(out / "model.onnx"), ids)
            agreement = float((int8_logits.argmax(-1) == fp32_logits.argmax(-1)).mean())
            metrics["int8_top1_agreement"] = agreement
            metrics["int8_max_logit_diff"] = float(abs(int8_logits - fp32_logits).max())
            if agreement < MIN_INT8_AGREEMENT:
                raise VerificationError(
                    f"the int8 model picks the float32 model's top-1 token at only "
                    f"{agreement:.0%} of positions (needed {MIN_INT8_AGREEMENT:.0%})"
                )
        else:
            for f in Path(tmp).iterdir():
                shutil.move(str(f), out / f.name)
    import torch

    session = _session(out / "model.onnx")
    metrics |= heldout_perplexity(
        ctx, lambda ids: torch.from_numpy(_logits(session, ids)), hf, export.max_batches
    )
    hf.model.config.save_pretrained(str(out))
    save_hf_extras(hf, out, tokenizer)
    metrics["onnx_bytes"] = sum(f.stat().st_size for f in out.glob("model.onnx*"))
    ctx.metrics.update(metrics)
    ctx.log.info(
        "onnx export verified: max logit difference %.2e%s",
        diff,
        f", int8 top-1 agreement {metrics['int8_top1_agreement']:.1%}"
        if "int8_top1_agreement" in metrics
        else "",
    )
