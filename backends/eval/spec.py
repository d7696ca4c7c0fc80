"""The spec models of the eval kinds: perplexity, lm-eval, samples and classification
(registered in ``kinds.py``). Torch-free: the planner imports them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llmbuild.spec.base import PositiveInt, StrList, added, content, marked, ref
from llmbuild.spec.tables import EvalTable


class Perplexity(EvalTable):
    """Perplexity on the validation split of sources and on extra text files."""

    kind: Literal["perplexity"]
    """Suite kind."""
    sources: StrList | None = ref("tokens", None, slot="data:{name}", omitted="pretrain")
    """Sources whose validation split is measured; all pretrain-role sources when omitted.
    A chat source is measured on its answers (the tokens an SFT stage learns, as its
    validation loss is), not its prompts and template."""
    files: StrList = content(())
    """Extra text files to measure, relative to the spec file."""
    max_batches: PositiveInt | None = None
    """Cap on the batches measured per source; all when omitted."""
    batch_size: PositiveInt = marked("execution", 8, unless="max_batches")
    """Sequences per forward pass (with `max_batches`, also how many are measured)."""


class LmEval(EvalTable):
    """Tasks run by lm-eval through an adapter over the built model."""

    kind: Literal["lm-eval"]
    """Suite kind."""
    tasks: StrList = Field(min_length=1)
    """lm-eval task names."""
    include_path: str | None = content(None, slot="tasks")
    """Directory of local task YAMLs (and their data), relative to the spec file."""
    num_fewshot: int = Field(0, ge=0)
    """Few-shot examples per prompt."""
    limit: PositiveInt | None = None
    """Examples per task; all when omitted."""
    max_gen_toks: PositiveInt = 64
    """Token limit for generation tasks."""
    batch_size: PositiveInt = marked("execution", 8)
    """Requests per forward pass."""


class Samples(EvalTable):
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
    chat: bool = added(False)
    """Prompts are a user's turn, written in the tokenizer's chat template; the answer ends
    at the end-of-turn token."""


class Classification(EvalTable):
    """A classifier's labels against the true ones: accuracy, macro and micro F1, each
    label's precision and recall, and the confusion matrix (a table, and a PNG beside it)."""

    kind: Literal["classification"]
    """Suite kind."""
    stages: StrList = ref("stage", slot="model", each=True, min_length=1, stage_kinds=("classify",))
    """Classifier stages (kind `classify`) to evaluate."""
    sources: StrList | None = ref(
        "tokens", None, slot="data:{name}", source_role="labeled", omitted="labeled", own=True
    )
    """Labeled sources whose validation split is measured; the one each stage trained on
    when omitted."""
    files: StrList = content(())
    """Extra files of labeled texts to measure (jsonl or parquet records with `text`,
    `label`, and `pair` for pairs, or the fields named below), relative to the spec file."""
    text_field: str = added("text")
    """Field of a listed file's records holding the text."""
    label_field: str = added("label")
    """Field of a listed file's records holding the label (or a list of labels)."""
    pair_field: str = added("pair")
    """Field of a listed file's records holding a pair's second text; records without it
    are scored alone."""
    batch_size: PositiveInt = marked("execution", 32)
    """Texts per forward pass."""
    baseline: bool = added(False)
    """Also measure the baseline a practitioner tries first on the same texts: TF-IDF
    (words and word pairs) and logistic regression from scikit-learn, fitted on the
    training split of the same labeled sources."""


SUITES = (Perplexity, LmEval, Samples, Classification)
