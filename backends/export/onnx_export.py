"""``onnx`` export: the transformers model through ``torch.onnx`` (the dynamo exporter,
``input_ids [batch, sequence] -> logits``), proven with onnxruntime against the megatron
model; ``quantize = "int8"`` then applies onnxruntime dynamic quantization and proves the
int8 model picks the same top-1 token as the float32 one at most positions."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

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
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _logits(session: Any, ids: Any) -> Any:
    import numpy as np

    return session.run(["logits"], {"input_ids": np.asarray(ids, dtype=np.int64)})[0]


def _torch_export(model: Any, seq_len: int, path: Path, opset: int, external: bool) -> None:
    import torch

    class Logits(torch.nn.Module):
        """``input_ids -> logits`` alone: no cache, no attention mask, one output."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any) -> Any:
            return self.inner(input_ids=input_ids, use_cache=False).logits

    # A size-1 example dimension would be specialised away by torch.export.
    example = torch.zeros((2, max(2, min(8, seq_len))), dtype=torch.long)
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=max(seq_len, example.shape[1]))
    program = torch.onnx.export(
        Logits(model).eval(),
        (example,),
        dynamo=True,
        input_names=["input_ids"],
        output_names=["logits"],
        dynamic_shapes={"input_ids": {0: batch, 1: sequence}},
        opset_version=opset,
        verbose=False,
    )
    program.save(str(path), external_data=external)


def _quantize_int8(src: Path, dst: Path, external: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), weight_type=QuantType.QInt8, use_external_data_format=external
    )


def export_onnx(ctx: Any, export: Any) -> None:
    stage, tokenizer = inputs(ctx)
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
        if diff > TOLERANCE:
            raise VerificationError(
                f"onnxruntime's logits differ from the trained model's by {diff:.2e} "
                f"(tolerance {TOLERANCE:.0e}): the onnx export is wrong"
            )
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
