"""The spec models of the export formats: hf, peft, onnx and gguf (registered in
``kinds.py``). Torch-free: the planner imports them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmbuild.spec.base import PositiveInt, StrList, ref
from llmbuild.spec.tables import ExportTable


class HfExport(ExportTable):
    """Hugging Face transformers format: safetensors, config, tokenizer files."""

    format: Literal["hf"]
    """Export format."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of the saved weights."""


class PeftExport(ExportTable):
    """A LoRA stage's adapter in PEFT format, over the hf export of its base."""

    format: Literal["peft"]
    """Export format."""


class MeasuredExport(ExportTable):
    """An export whose file's held-out perplexity is measured beside the unquantized
    model's."""

    sources: StrList | None = ref("tokens", None, slot="data:{name}", omitted="pretrain")
    """Sources whose validation split measures the file's held-out perplexity beside the
    unquantized model's; all pretrain sources when omitted."""
    max_batches: PositiveInt = 8
    """Cap on the batches of 8 sequences measured, over all the sources together."""


class OnnxExport(MeasuredExport):
    """ONNX from the HF model, optionally int8 with onnxruntime dynamic quantization."""

    format: Literal["onnx"]
    """Export format."""
    quantize: Literal["none", "int8"] = "none"
    """Weight quantization."""
    opset: int = Field(18, ge=18)
    """ONNX opset version; 18 is the lowest torch's exporter writes without converting
    down (which breaks GPT-2-style graphs)."""


class GgufExport(MeasuredExport):
    """GGUF for llama.cpp-style runtimes, with architecture and tokenizer metadata."""

    format: Literal["gguf"]
    """Export format."""
    quantization: Literal["f32", "f16", "q8_0", "q5_1", "q4_0"] = "f16"
    """Tensor type of the weights: float32, float16, or llama.cpp's 8-, 5- and 4-bit
    block quantizations (matrices whose rows do not fill whole blocks stay f16)."""


FORMATS = (HfExport, PeftExport, OnnxExport, GgufExport)
