"""The ``[[eval]]`` suites and ``[[export]]`` targets: what is measured and shipped."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field

from llmbuild.spec.base import Name, PositiveInt, SpecModel, StrList, marked


class EvalBase(SpecModel):
    """Fields every eval suite has; one eval node runs per suite and stage."""

    name: Name = marked("label")
    """Name of the suite."""
    stages: StrList = marked("reference", min_length=1)
    """Stages to evaluate."""


class Perplexity(EvalBase):
    """Perplexity on the validation split of sources and on extra text files."""

    kind: Literal["perplexity"]
    """Suite kind."""
    sources: StrList | None = marked("reference", None)
    """Sources whose validation split is measured; all pretrain-role sources when omitted."""
    files: StrList = marked("content", ())
    """Extra text files to measure, relative to the spec file."""
    max_batches: PositiveInt | None = None
    """Cap on the batches measured per source; all when omitted."""
    batch_size: PositiveInt = marked("execution", 8)
    """Sequences per forward pass."""


class LmEval(EvalBase):
    """Tasks run by lm-eval through an adapter over the built model."""

    kind: Literal["lm-eval"]
    """Suite kind."""
    tasks: StrList = Field(min_length=1)
    """lm-eval task names."""
    include_path: str | None = marked("content", None)
    """Directory of local task YAMLs (and their data), relative to the spec file."""
    num_fewshot: int = Field(0, ge=0)
    """Few-shot examples per prompt."""
    limit: PositiveInt | None = None
    """Examples per task; all when omitted."""
    max_gen_toks: PositiveInt = 64
    """Token limit for generation tasks."""
    batch_size: PositiveInt = marked("execution", 8)
    """Requests per forward pass."""


class Samples(EvalBase):
    """Generations from fixed prompts, stored with the record."""

    kind: Literal["samples"]
    """Suite kind."""
    prompts: StrList = Field(min_length=1)
    """Prompts to complete."""
    max_new_tokens: PositiveInt = 64
    """Tokens generated per prompt."""
    temperature: float = Field(0.0, ge=0)
    """Sampling temperature; 0 is greedy."""
    top_k: PositiveInt | None = None
    """Sample from the k most likely tokens only."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling threshold."""


EvalSuite = Annotated[Union[Perplexity, LmEval, Samples], Field(discriminator="kind")]


class ExportBase(SpecModel):
    """Fields every export target has."""

    stage: Name = marked("reference")
    """The stage to export."""
    name: Name | None = marked("label", None)
    """Node name suffix, needed only when two exports share format and stage."""


class HfExport(ExportBase):
    """Hugging Face transformers format: safetensors, config, tokenizer files."""

    format: Literal["hf"]
    """Export format."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of the saved weights."""


class PeftExport(ExportBase):
    """A LoRA stage's adapter in PEFT format, over the hf export of its base."""

    format: Literal["peft"]
    """Export format."""


class OnnxExport(ExportBase):
    """ONNX from the HF model, optionally int8 with onnxruntime dynamic quantization."""

    format: Literal["onnx"]
    """Export format."""
    quantize: Literal["none", "int8"] = "none"
    """Weight quantization."""
    opset: int = Field(18, ge=18)
    """ONNX opset version; 18 is the lowest torch's exporter writes without converting
    down (which breaks GPT-2-style graphs)."""


class GgufExport(ExportBase):
    """GGUF for llama.cpp-style runtimes, with architecture and tokenizer metadata."""

    format: Literal["gguf"]
    """Export format."""
    quantization: Literal["f32", "f16", "q8_0"] = "f16"
    """Tensor type of the weights."""


Export = Annotated[
    Union[HfExport, PeftExport, OnnxExport, GgufExport], Field(discriminator="format")
]
