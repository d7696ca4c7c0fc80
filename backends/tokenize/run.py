"""The ``tokenize:<source>`` node: cleaned shards -> megatron-core indexed datasets
(.bin/.idx), one task per shard. Each dataset is listed in ``datasets.json`` with its
split, form and token count, for training to blend by weight."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llmbuild.backends.data.shards import SPLITS, iter_shard, shard_paths

BATCH = 1024
FORMS = {
    "pretrain": ("",),
    "chat": ("", ".mask"),
    "preferences": (".prompt", ".chosen", ".rejected"),
    "prompts": (".prompt",),
}


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


def tokenize_shard(job: tuple[str, str, str, dict[str, Any], str, str]) -> dict[str, Any]:
    """Tokenize one shard into its datasets (runs in a worker)."""
    import numpy as np
    from llmbuild.backends.megatron.cpu import apply_cpu_patches
    from llmbuild.backends.tokenize.encode import Encoder

    apply_cpu_patches()
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    shard, prefix, tok_json, info, role, out_dir = job
    enc = Encoder(tok_json, info["eos_token"])
    dtype = _dtype(info["vocab_size"])
    base = Path(out_dir) / prefix
    builders = {
        form: IndexedDatasetBuilder(
            f"{base}{form}.bin", dtype=np.uint8 if form == ".mask" else dtype
        )
        for form in FORMS[role]
    }
    answers = open(f"{base}.answers.jsonl", "w") if role == "prompts" else None
    stats = {"documents": 0, "tokens": 0, "learned_tokens": 0}

    def add(form: str, ids: list[int]) -> None:
        arr = np.asarray(ids, dtype=builders[form].dtype)
        builders[form].add_document(arr, [arr.size])

    def flush(batch: list[dict[str, Any]]) -> None:
        if role == "pretrain":
            for ids in enc.encode([r["text"] for r in batch]):
                add("", ids + [enc.eos])
                stats["tokens"] += len(ids) + 1
        elif role == "chat":
            for ids, mask in enc.chats([r["messages"] for r in batch]):
                add("", ids)
                add(".mask", mask)
                stats["tokens"] += len(ids)
                stats["learned_tokens"] += sum(mask)
        elif role == "preferences":
            for prompt, chosen, rejected in enc.preferences(batch):
                add(".prompt", prompt)
                add(".chosen", chosen)
                add(".rejected", rejected)
                stats["tokens"] += len(prompt) + len(chosen) + len(rejected)
        else:
            from llmbuild.backends.tokenize.encode import prompt_text

            for r, ids in zip(batch, enc.encode([prompt_text(r["prompt"]) for r in batch])):
                add(".prompt", ids)
                answers.write(json.dumps({"answer": r.get("answer")}) + "\n")
                stats["tokens"] += len(ids)
        stats["documents"] += len(batch)

    for batch in _batches_read_ahead(Path(shard)):
        flush(batch)
    for form, builder in builders.items():
        builder.finalize(f"{base}{form}.idx")
    if answers is not None:
        answers.close()
    return {"prefix": prefix, **stats}


def run(ctx: Any) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    role = ctx.config.role
    docs = ctx.input("documents").path
    tok = ctx.input("tokenizer").path
    info = json.loads((tok / "tokenizer_info.json").read_text())
    jobs = []
    for split in SPLITS:
        for i, shard in enumerate(shard_paths(docs, split)):
            jobs.append(
                (
                    str(shard),
                    f"{split}-{i:06d}",
                    str(tok / "tokenizer" / "tokenizer.json"),
                    info,
                    role,
                    str(ctx.out_dir),
                )
            )
    ctx.progress.update(completed=0, total=len(jobs), unit="shards", force=True)
    results = ctx.map(tokenize_shard, jobs)
    datasets = [
        {
            "prefix": r["prefix"],
            "split": r["prefix"].split("-")[0],
            **{k: r[k] for k in ("documents", "tokens", "learned_tokens")},
        }
        for r in results
    ]
    totals = {split: sum(d["tokens"] for d in datasets if d["split"] == split) for split in SPLITS}
    index = {
        "role": role,
        "source": ctx.config.source,
        "vocab_size": info["vocab_size"],
        "forms": list(FORMS[role]),
        "datasets": datasets,
        "tokens": totals,
    }
    (ctx.out_dir / "datasets.json").write_text(json.dumps(index, indent=1, sort_keys=True))
    ctx.progress.update(
        completed=len(jobs), total=len(jobs), unit="shards", tokens=sum(totals.values()), force=True
    )
    ctx.metrics.update({f"{split}_tokens": n for split, n in totals.items()})
    ctx.metrics["documents"] = sum(d["documents"] for d in datasets)
