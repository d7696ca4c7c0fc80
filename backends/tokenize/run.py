"""The ``tokenize:<source>`` node: cleaned shards -> megatron-core indexed datasets
(.bin/.idx), one task per shard. Each dataset is listed in ``datasets.json`` with its
split, form and token count, for training to blend by weight."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from llmbuild.backends.data.shards import SPLITS, iter_shard, shard_paths
from llmbuild.backends.tokenize.encode import unknown_id
from llmbuild.backends.tokenizer.artifact import TokenizerArtifact, require_chat_template

from llmbuild.errors import UserError
from llmbuild.spec.model import TEXT_KINDS

BATCH = 1024
FORMS = {
    "pretrain": ("",),
    "chat": ("", ".mask"),
    "preferences": (".prompt", ".chosen", ".rejected"),
    "prompts": (".prompt",),
    "labeled": ("",),
}
"""The datasets each role writes (a labeled source with pairs also writes ``.pair``)."""


def _dtype(vocab_size: int) -> Any:
    import numpy as np

    return np.uint16 if vocab_size < 65500 else np.int32


def _batches_read_ahead(shard: Path) -> Any:
    """Batches of records, read and parsed by a thread while the previous batch encodes
    (the Rust encoder releases the GIL, so reading and encoding overlap)."""
    import queue
    import threading

    q: queue.Queue[Any] = queue.Queue(maxsize=4)
    done = object()

    def read() -> None:
        try:
            batch: list[dict[str, Any]] = []
            for record in iter_shard(shard):
                batch.append(record)
                if len(batch) == BATCH:
                    q.put(batch)
                    batch = []
            q.put(batch)
            q.put(done)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)

    threading.Thread(target=read, daemon=True, name=f"read {shard.name}").start()
    while (item := q.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def renders_own_template(info: dict[str, Any]) -> bool:
    """Whether chats are written in the saved tokenizer's template, rendered by
    transformers: a pretrained tokenizer's own, or a Jinja template the spec gave a
    tokenizer made here; not ChatML, which is written directly."""
    return info.get("chat_template") != "chatml"


def tokenize_shard(job: tuple[str, str, str, dict[str, Any], str, str, bool]) -> dict[str, Any]:
    """Tokenize one shard into its datasets (runs in a worker). The encoder uses threads
    only when the shards do not already keep every core busy: separate processes scale
    better than threads sharing one allocator."""
    import numpy as np
    from llmbuild.backends.tokenize.encode import Encoder
    from llmbuild.backends.tokenize.indexed import IndexedWriter

    shard, prefix, tok_json, info, role, out_dir, threads = job
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads else "false"
    own = renders_own_template(info) and role != "pretrain"
    enc = Encoder(tok_json, info["eos_token"], own_template=own, unk=info.get("unk_id"))
    start = enc.document_start if role == "pretrain" else []
    dtype = _dtype(info["vocab_size"])
    base = Path(out_dir) / prefix
    out = {
        form: IndexedWriter(f"{base}{form}", np.uint8 if form == ".mask" else dtype)
        for form in FORMS[role]
    }
    answers = open(f"{base}.answers.jsonl", "w") if role == "prompts" else None
    labels = open(f"{base}.labels.jsonl", "w") if role == "labeled" else None
    stats: dict[str, Any] = {"documents": 0, "tokens": 0, "learned_tokens": 0, "unknown": 0}
    if labels is not None:
        stats["labels"] = {}
    if answers is not None:
        stats["unanswered"] = 0

    def flush(batch: list[dict[str, Any]]) -> None:
        if role == "pretrain":
            texts = enc.encode([r["text"] for r in batch], True)
            docs = [start + ids + [enc.eos] for ids in texts]
            out[""].add(docs)
        elif role == "chat":
            chats = enc.chats([r["messages"] for r in batch])
            docs = [ids for ids, _ in chats]
            out[""].add(docs)
            out[".mask"].add([mask for _, mask in chats])
            stats["learned_tokens"] += sum(sum(mask) for _, mask in chats)
        elif role == "preferences":
            triples = enc.preferences(batch)
            for i, form in enumerate((".prompt", ".chosen", ".rejected")):
                out[form].add([t[i] for t in triples])
            docs = [ids for t in triples for ids in t]
        elif role == "labeled":
            docs = enc.encode([r["text"] for r in batch], True)
            out[""].add(docs)
            if batch and "pair" in batch[0]:
                if ".pair" not in out:
                    out[".pair"] = IndexedWriter(f"{base}.pair", dtype)
                pairs = enc.encode([r["pair"] for r in batch], True)
                out[".pair"].add(pairs)
                docs = docs + pairs
            labels.writelines(json.dumps({"label": r["label"]}) + "\n" for r in batch)
            for r in batch:
                several = isinstance(r["label"], list)  # a multi-label text
                for name in r["label"] if several else [r["label"]]:
                    stats["labels"][name] = stats["labels"].get(name, 0) + 1
                if several:
                    stats["label_lists"] = stats.get("label_lists", 0) + 1
        else:
            docs = enc.prompts([r["prompt"] for r in batch])
            out[".prompt"].add(docs)
            answers.writelines(json.dumps({"answer": r.get("answer")}) + "\n" for r in batch)
            stats["unanswered"] += sum(r.get("answer") is None for r in batch)
        stats["tokens"] += sum(len(ids) for ids in docs)
        stats["unknown"] += enc.unknown(docs)
        stats["documents"] += len(batch)

    for batch in _batches_read_ahead(Path(shard)):
        flush(batch)
    for writer in out.values():
        writer.finalize()
    for extra in (answers, labels):
        if extra is not None:
            extra.close()
    return {"prefix": prefix, "pairs": ".pair" in out, **stats}


def _label_counts(datasets: list[dict[str, Any]], split: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in datasets:
        if d["split"] == split:
            for label, n in d["labels"].items():
                counts[label] = counts.get(label, 0) + n
    return dict(sorted(counts.items()))


def run(ctx: Any) -> None:
    role = ctx.config.role
    docs = ctx.input("documents").path
    tokenizer = TokenizerArtifact.open(ctx.input("tokenizer").path)
    info = dataclasses.asdict(tokenizer.info)
    info["unk_id"] = unknown_id(tokenizer.json_path)  # read once, not per shard
    if role not in ("pretrain", "labeled") and renders_own_template(info):
        why = f"source {ctx.config.source!r} holds conversations (role {role!r})"
        require_chat_template(tokenizer.hf_tokenizer(), why)
    shards = [
        (split, i, shard) for split in SPLITS for i, shard in enumerate(shard_paths(docs, split))
    ]
    # Shards run side by side only as parallel tasks; one at a time, the encoder threads.
    threads = ctx.parallel is None or len(shards) < (os.cpu_count() or 1)
    tok_json = str(tokenizer.json_path)
    jobs = [
        (str(shard), f"{split}-{i:06d}", tok_json, info, role, str(ctx.out_dir), threads)
        for split, i, shard in shards
    ]
    ctx.progress.update(completed=0, total=len(jobs), unit="shards", force=True)
    results = ctx.map(tokenize_shard, jobs)
    datasets = [
        {
            "prefix": r["prefix"],
            "split": r["prefix"].split("-")[0],
            **{k: r[k] for k in ("documents", "tokens", "learned_tokens")},
            **({"labels": r["labels"], "pairs": r["pairs"]} if role == "labeled" else {}),
        }
        for r in results
    ]
    lists = sum(r.get("label_lists", 0) for r in results)
    totals = {split: sum(d["tokens"] for d in datasets if d["split"] == split) for split in SPLITS}
    index = {
        "role": role,
        "source": ctx.config.source,
        "vocab_size": info["vocab_size"],
        "forms": list(FORMS[role]),
        "datasets": datasets,
        "tokens": totals,
    }
    if role == "labeled":  # documents per label and split, for the stages to map labels
        index["labels"] = {split: _label_counts(datasets, split) for split in SPLITS}
        if lists:  # texts with a list of labels (multi-label)
            index["label_lists"] = lists
    (ctx.out_dir / "datasets.json").write_text(json.dumps(index, indent=1, sort_keys=True))
    ctx.progress.update(
        completed=len(jobs), total=len(jobs), unit="shards", tokens=sum(totals.values()), force=True
    )
    ctx.metrics.update({f"{split}_tokens": n for split, n in totals.items()})
    ctx.metrics["documents"] = sum(d["documents"] for d in datasets)
    if role == "prompts":  # an exact-match reward needs every prompt's answer
        ctx.metrics["unanswered"] = sum(r["unanswered"] for r in results)
    _note_unknown(ctx, tokenizer, sum(r["unknown"] for r in results), sum(totals.values()))


UNKNOWN_SHARE = 0.01
"""The share of unknown tokens past which a source is said to be badly spelled."""
UNKNOWN_REFUSED = 0.5
"""The share at which it is an error: the model would learn little but "unknown"."""


def _note_unknown(ctx: Any, tokenizer: Any, unknown: int, tokens: int) -> None:
    """Count the tokens the vocabulary could not spell; say so when they are many (a
    char tokenizer trained without this source's text: the model learns to predict
    "unknown"), and refuse the source when they are most of it, before a stage trains
    for minutes on a text it cannot see."""
    ctx.metrics["unknown_tokens"] = unknown
    share = unknown / tokens if tokens else 0.0
    if share <= UNKNOWN_SHARE:
        return
    source = ctx.config.source
    said = f"{share:.0%} of the tokens of source {source!r} are the tokenizer's unknown token"
    made_here = tokenizer.info.kind in TEXT_KINDS
    fix = (
        f"list {source!r} in [tokenizer] sources so that the tokenizer is made from its "
        "text as well"
        if made_here
        else "check the tokenizer's vocabulary: a tokenizer.json saved with a tiny "
        "vocabulary, or one made for another language or script, spells next to nothing"
    )
    if share >= UNKNOWN_REFUSED:
        raise UserError(
            f"{said} ({unknown} of {tokens}): its vocabulary of "
            f"{tokenizer.info.vocab_size} tokens cannot spell that text, so a model "
            f"would learn nothing from it; {fix}"
        )
    ctx.note(
        f"{said}: its vocabulary cannot spell that text (in a chat source, the chat "
        "template's too)" + (f"; {fix}" if made_here else "")
    )
