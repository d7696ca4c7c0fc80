"""The ``[data]`` tables: sources, cleaning and the train/validation split."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmbuild.spec.base import Name, SourceRole, SpecModel, StrList, added, content, marked

SourceFormat = Literal["auto", "text", "jsonl", "parquet", "csv", "tsv", "webdataset"]
__all__ = ["Clean", "Data", "Source", "SourceFormat", "SourceRole", "Split"]


CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
"""The roles of a conversation's messages (OpenAI's): in training data and requests alike."""


class Clean(SpecModel):
    """Normalisation, filtering and deduplication applied to every source."""

    normalize: Literal["nfc", "none"] = "nfc"
    """Unicode normalisation form applied to every document, with whitespace and
    control characters normalised."""
    min_chars: int = Field(1, ge=0)
    """Documents shorter than this many characters are dropped."""
    max_chars: int | None = Field(None, gt=0)
    """Documents longer than this many characters are dropped; no limit when omitted."""
    dedup: Literal["none", "exact", "minhash"] = "exact"
    """Deduplication: none, exact (content hash) or near-duplicates with MinHash-LSH
    (which also removes exact duplicates)."""
    minhash_threshold: float = Field(0.8, gt=0, le=1)
    """Estimated Jaccard similarity above which two documents are near-duplicates."""
    minhash_perms: int = Field(128, ge=16, le=1024)
    """Number of MinHash permutations."""
    shingle_size: int = Field(5, ge=1)
    """Length in characters of the shingles compared by MinHash."""

    @model_validator(mode="after")
    def _lengths(self) -> Clean:
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(f"max_chars ({self.max_chars}) is below min_chars ({self.min_chars})")
        return self


class Source(SpecModel):
    """One data source: files in one format, playing one role."""

    name: Name = marked("label")
    """Name of the source, used by stages and evals to refer to it. Renaming it keeps the
    source's and its tokenized data's nodes cached; the stages and evals that read it
    name it as their input, and rebuild."""
    path: StrList = content(slot="files", unordered=True, suffixes=True, min_length=1)
    """File, directory, glob or fsspec URL (or a list of them), relative to the spec file.
    Only the content of the matched files and their suffixes (which tell their format and
    compression) count, never their names or order: files are read in content order."""
    format: SourceFormat = "auto"
    """File format; `auto` infers it from the extension (.txt, .jsonl, .parquet, .csv,
    .tsv, .tar), looking through .gz and .zst compression. A CSV or TSV file has a header
    row naming its fields; every value is read as a string."""
    role: SourceRole = "pretrain"
    """What the documents are for: `pretrain` text, `chat` conversations or
    prompt/completion pairs, `preferences` (prompt, chosen, rejected: strings, or TRL's
    conversational form, the prompt a list of messages and each answer one assistant
    message, or without a prompt two conversations that differ in their last, assistant,
    message), `prompts` for GRPO, or `labeled` texts (a text, optionally a second text,
    and a label) for classifiers."""
    weight: float = marked("mixture", 1.0, gt=0)
    """Mixture weight of this source in the pretraining blend (relative to other sources)."""
    separator: str | None = Field(None, min_length=1)
    """For text files: the string separating documents (e.g. "\\n\\n"); no separator
    means one document per file."""
    text_field: str = "text"
    """Field holding the document text in jsonl, parquet and webdataset .json members."""
    messages_field: str = "messages"
    """Field holding a chat as a list of {role, content} messages (roles: system,
    developer, user, assistant, tool)."""
    prompt_field: str = "prompt"
    """Field holding the prompt of prompt/completion, preference and GRPO records."""
    completion_field: str = "completion"
    """Field holding the completion of a prompt/completion record."""
    chosen_field: str = "chosen"
    """Field holding the preferred answer of a preference record."""
    rejected_field: str = "rejected"
    """Field holding the dispreferred answer of a preference record."""
    answer_field: str = "answer"
    """Field holding the reference answer of a GRPO prompt record."""
    label_field: str = added("label")
    """Field holding the label of a labeled record: a string, or an integer taken as its
    name."""
    pair_field: str | None = added(None)
    """Field holding a labeled record's second text (the hypothesis of an entailment pair,
    say); single texts when omitted."""
    on_error: Literal["error", "skip"] = "error"
    """What a malformed record does: stop with an error naming file and line, or be
    skipped, counted and reported."""
    clean: Clean | None = added(None)
    """This source's cleaning, in place of `[data.clean]` (a chat source and a web corpus
    want different filters)."""

    @model_validator(mode="after")
    def _records_in_text(self) -> Source:
        """A chat, preference, prompt or labeled source of text files fails as it reads
        them: said here, from the format or the suffix its paths name."""
        if self.role == "pretrain":
            return self
        text = [p for p in self.path if names_text(p)]
        if self.format == "text" or (self.format == "auto" and text):
            named = 'format = "text"' if self.format == "text" else ", ".join(text)
            raise ValueError(
                f"a {self.role} source cannot read text files ({named}): text files hold "
                "pretrain documents; its records are read from jsonl, parquet or csv"
            )
        return self


def names_text(path: str) -> bool:
    """Whether a path (or glob) names text files by its suffix, through compression (the
    suffixes the data backend reads as text)."""
    lower = path.lower().removesuffix(".gz").removesuffix(".zst")
    return lower.endswith((".txt", ".md", ".text"))


class Split(SpecModel):
    """The deterministic train/validation split, by document hash."""

    validation: float = Field(0.05, ge=0, lt=1)
    """Fraction of documents held out for validation; stable when documents are added."""


class Data(SpecModel):
    """All the data the build reads."""

    clean: Clean = Clean()
    """Cleaning applied to every source (unless a source has its own)."""
    sources: tuple[Source, ...] = Field(min_length=1)
    """The data sources, as an array of tables `[[data.sources]]`."""
    split: Split = Split()
    """The train/validation split."""
    shard_mb: int = Field(64, gt=0)
    """Upper bound in MB of each cleaned webdataset shard."""
