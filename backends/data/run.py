"""The ``source:<name>`` node: read, normalise, filter, deduplicate, split and shard.

Pass 1 runs one task per input file (Ray tasks under the Ray executor): records are read
and normalised, length-filtered and hashed, and the candidates streamed to a temp file.
The decisions that need the whole source (exact and near duplicates) are then taken in
content order (the files sorted by their blake3 and format suffix, as their key counts
them), so the result is deterministic and renaming or reordering files changes nothing. Pass 2 streams the kept documents into
size-bounded webdataset shards, ``train-NNNNNN.tar`` and ``validation-NNNNNN.tar``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from llmbuild.backends.data.clean import (
    NearDuplicates,
    content_hash,
    is_validation,
    length_problem,
    minhash_signature,
    normalise_record,
    record_text,
)
from llmbuild.backends.data.config import DataConfig
from llmbuild.backends.data.label_types import LabelTypes, odd_records, odd_type
from llmbuild.backends.data.readers import BadRecord, file_format, normalise, read_records
from llmbuild.backends.data.shards import ShardWriter

from llmbuild.errors import UserError
from llmbuild.plan.digest import expand, expand_url, file_digest, format_suffix

HASH_BYTES = 16
BLOCK_DOCS = 1024
BLOCK_BYTES = 1 << 20


class DataError(UserError):
    """Bad input data: the message names the file and line."""


def source_files(config: DataConfig) -> list[str]:
    """The source's files in the order its patterns name them, each once (two patterns
    may match one file: ``dir/*.jsonl`` and ``dir/**/*.jsonl``)."""
    files: list[str] = []
    for pattern in config.source.path:
        files += expand_url(pattern) if "://" in pattern else expand(pattern)
    return list(dict.fromkeys(files))


def read_file(job: tuple[int, str, dict[str, Any], str]) -> dict[str, Any]:
    """Pass 1 over one file (runs in a worker): candidates to a temp file, stats back."""
    index, path, config_json, tmp_dir = job
    config = DataConfig.model_validate(config_json)
    source, clean = config.source, config.clean
    tmp = Path(tmp_dir) / f"{index:05d}.jsonl"
    hashes, sigs = bytearray(), []
    stats: Counter[str] = Counter()
    removed_bytes: Counter[str] = Counter()
    skipped: list[str] = []
    labels = LabelTypes() if source.role == "labeled" else None

    def bad(e: BadRecord) -> None:
        if source.on_error == "error":
            raise e
        stats[f"bad_{e.kind}"] += 1
        skipped.append(str(e))

    try:
        with open(tmp, "w", encoding="utf-8") as out:
            try:
                for rec in read_records(path, source):
                    if isinstance(rec, BadRecord):
                        bad(rec)
                        continue
                    try:
                        data = normalise(rec, source)
                    except BadRecord as e:
                        bad(e)
                        continue
                    data = normalise_record(data, clean)
                    text = record_text(data)
                    size = len(text.encode("utf-8"))
                    stats["documents_read"] += 1
                    stats["bytes_read"] += size
                    problem = length_problem(text, clean)
                    if problem:
                        stats[problem] += 1
                        removed_bytes[problem] += size
                        continue
                    hashes += content_hash(text)
                    if labels is not None:
                        labels.add(rec.where, rec.data[source.label_field])
                    if clean.dedup == "minhash":
                        sigs.append(minhash_signature(text, clean))
                    out.write(json.dumps(data, ensure_ascii=False, sort_keys=True) + "\n")
            except BadRecord as e:
                if e.kind != "format" and e.kind != "encoding":
                    raise
                bad(e)  # the whole file is unreadable: with on_error = "skip", skip it
    except BadRecord as e:
        return {"error": str(e), "kind": e.kind}
    if not stats["documents_read"] and not any(k.startswith("bad_") for k in stats):
        if source.on_error == "error":
            return {"error": f"{path}: {EMPTY}"}
        stats["bad_empty_file"] += 1
        skipped.append(f"{path}: empty file")
    result = {
        "path": path,
        "order": (file_digest(path), format_suffix(path), path),
        "tmp": str(tmp),
        "stats": dict(stats),
        "removed_bytes": dict(removed_bytes),
        "hashes": bytes(hashes),
        "skipped": skipped[:20],
    }
    if stats["documents_read"] == 1 and _windows_lines(path, source):
        result["windows_lines"] = True
    if labels is not None:
        result["labels"] = labels.summary()
    if sigs:
        import numpy as np

        sig_path = Path(tmp_dir) / f"{index:05d}.sig.npy"
        np.save(sig_path, np.stack(sigs))
        result["signatures"] = str(sig_path)
    return result


def _decide(results: list[dict[str, Any]], config: DataConfig, odd: int) -> list[list[str]]:
    """Which candidates survive deduplication, in the order of ``results`` (the first
    occurrence wins). A label of the ``odd`` type makes a bad record, left out before
    deduplication so that it never stands in for a good text."""
    import numpy as np

    seen: set[bytes] = set()
    near = NearDuplicates(config.clean) if config.clean.dedup == "minhash" else None
    keep_all = []
    for i, res in enumerate(results):
        blob = res["hashes"]
        sigs = np.load(res["signatures"]) if "signatures" in res else None
        label_bits = res["labels"]["bits"] if odd else b""
        keep = []
        for j in range(len(blob) // HASH_BYTES):
            if label_bits and label_bits[j] & odd:
                keep.append("bad_label")
                continue
            h = blob[j * HASH_BYTES : (j + 1) * HASH_BYTES]
            if config.clean.dedup != "none" and h in seen:
                keep.append("exact_duplicate")
                continue
            seen.add(h)
            if near is not None and near.seen(f"{i}-{j}", sigs[j]):
                keep.append("near_duplicate")
                continue
            keep.append("kept")
        keep_all.append(keep)
    return keep_all


class BlockWriter:
    """Documents go into a shard in blocks: one webdataset sample (a ``jsonl`` member) per
    up to BLOCK_DOCS documents, so reading a shard costs one tar member per block, not per
    document. Blocks are numbered by kept documents, so dropping a duplicate leaves every
    shard's bytes unchanged (and the nodes after this one cut off)."""

    def __init__(self, writer: Any) -> None:
        self.writer, self.lines, self.size, self.count = writer, [], 0, 0

    def add(self, data: dict[str, Any]) -> None:
        line = json.dumps(data, ensure_ascii=False, sort_keys=True)
        self.lines.append(line)
        self.size += len(line)
        if len(self.lines) >= BLOCK_DOCS or self.size >= BLOCK_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.lines:
            return
        payload = ("\n".join(self.lines) + "\n").encode("utf-8")
        self.writer.write({"__key__": f"{self.count:012d}", "jsonl": payload})
        self.count += len(self.lines)
        self.lines, self.size = [], 0


def _windows_lines(path: str, source: Any) -> bool:
    """Whether a text file read as one document holds its source's separator with
    Windows line ends (``"\\r\\n"`` for each ``"\\n"``), which the separator does not match."""
    sep = source.separator
    if not sep or "\n" not in sep or not _is_text(path, source.format):
        return False
    from llmbuild.backends.data.readers import open_binary

    with open_binary(path) as f:
        head = f.read(1 << 20)
    return sep.replace("\n", "\r\n").encode("utf-8") in head


def _is_text(path: str, declared: str) -> bool:
    try:
        return file_format(path, declared) == "text"
    except BadRecord:
        return False


EMPTY = "empty file (no documents)"
SKIP_HINT = 'set on_error = "skip" on the source to skip and count bad records instead'
NOTABLE = 0.1
"""The share of a pretrain source's documents whose removal by cleaning the build says
out loud (of any other role's, every removal is said)."""


FILTERS = ("too_short", "too_long")
"""The length filters' reasons for removing a text (``min_chars``, ``max_chars``)."""
SHOWN_SKIPS = 2
"""The bad records a note names; report.json lists more."""


def _note_skipped(ctx: Any, examples: list[str], skipped: int) -> None:
    """Say how many bad records ``on_error = "skip"`` left out, naming the first ones: a
    count in report.json alone goes unseen, and a skipped record is data the user meant to
    train on (a misquoted line or a misnamed field may skip far more than expected)."""
    if not skipped:
        return
    shown = examples[:SHOWN_SKIPS]
    more = f"; and {skipped - len(shown)} more (report.json)" if skipped > len(shown) else ""
    noun = "record" if skipped == 1 else "records"
    ctx.note(f'on_error = "skip" skipped {skipped} bad {noun}: ' + "; ".join(shown) + more)


def run(ctx: Any) -> None:
    config: DataConfig = ctx.config
    files = source_files(config)
    tmp_dir = ctx.work_dir / "pass1"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    config_json = config.model_dump(mode="json", by_alias=True)
    ctx.progress.update(completed=0, total=len(files), unit="files", force=True)
    results = ctx.map(read_file, [(i, f, config_json, str(tmp_dir)) for i, f in enumerate(files)])
    failed = [r for r in results if "error" in r]
    errors = [r["error"] for r in failed]
    results.sort(key=lambda r: r.get("order", ()))  # content order: names never count
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        if all(e.endswith(EMPTY) for e in errors) and len(errors) == len(files):
            raise DataError(f"{errors[0]}{more}: the source has nothing to read")
        if failed[0].get("kind") == "setting":  # the source's settings: skipping mends nothing
            raise DataError(f"{errors[0]}{more}")
        raise DataError(f"{errors[0]}{more}; {SKIP_HINT}")
    odd, others = odd_type(results)
    oddities = [odd_records(res, odd, others) for res in results]
    if odd and config.source.on_error == "error":
        first = next(bad for file_bad in oddities for bad in file_bad)
        raise DataError(f"{first}; {SKIP_HINT}")
    decisions = _decide(results, config, odd)

    report: dict[str, Any] = {
        "files": len(files),
        "removed": Counter(),
        "removed_bytes": Counter(),
        "skipped_examples": [],
    }
    totals: Counter[str] = Counter()
    kept = {"train": Counter(), "validation": Counter()}
    writers = {
        split: ShardWriter(str(ctx.out_dir / f"{split}-%06d.tar"), config.shard_mb * 1_000_000)
        for split in ("train", "validation")
    }
    blocks = {split: BlockWriter(w) for split, w in writers.items()}
    labeled = config.source.role == "labeled"
    labels_of: dict[bytes, Any] = {}  # a kept labeled text's label, by its content hash
    conflicts: list[tuple[str, Any, Any]] = []  # duplicates labeled otherwise than kept
    try:
        for i, (res, keep) in enumerate(zip(results, decisions)):
            stats = res["stats"]
            totals.update({k: stats.get(k, 0) for k in ("documents_read", "bytes_read")})
            for k, v in stats.items():
                if k not in ("documents_read", "bytes_read"):
                    report["removed"][k] += v
            report["removed_bytes"].update(res["removed_bytes"])
            report["skipped_examples"] += res["skipped"][:5] + [str(b) for b in oddities[i]]
            with open(res["tmp"], encoding="utf-8") as f:
                for line, verdict in zip(f, keep):
                    data = json.loads(line)
                    text = record_text(data)
                    size = len(text.encode("utf-8"))
                    if labeled and verdict in ("kept", "exact_duplicate"):
                        h = content_hash(text)
                        if verdict == "kept":
                            labels_of[h] = data["label"]
                        elif labels_of.get(h, data["label"]) != data["label"]:
                            conflicts.append((text, labels_of[h], data["label"]))
                    if verdict != "kept":
                        report["removed"][verdict] += 1
                        if verdict.startswith("bad_"):  # a bad record is not a document read
                            totals.update(documents_read=-1, bytes_read=-size)
                        else:
                            report["removed_bytes"][verdict] += size
                        continue
                    split = (
                        "validation"
                        if is_validation(content_hash(text), config.split.validation)
                        else "train"
                    )
                    blocks[split].add(data)
                    kept[split].update(documents=1, bytes=size)
            os.remove(res["tmp"])
            ctx.progress.update(
                completed=i + 1,
                total=len(files),
                unit="files",
                documents=totals["documents_read"],
                mb=round(totals["bytes_read"] / 1e6, 2),
            )
    finally:
        for split, w in writers.items():
            blocks[split].flush()
            w.close()
    dups = report["removed"]["exact_duplicate"] + report["removed"]["near_duplicate"]
    report.update(
        {
            "documents_read": totals["documents_read"],
            "bytes_read": totals["bytes_read"],
            "kept": {k: dict(v) for k, v in kept.items()},
            "dedup_ratio": dups / totals["documents_read"] if totals["documents_read"] else 0.0,
            "removed": dict(report["removed"]),
            "removed_bytes": dict(report["removed_bytes"]),
        }
    )
    if not kept["train"]["documents"] and not kept["validation"]["documents"]:
        raise DataError(
            f"source {config.source.name!r}: no document is left after cleaning "
            f"(removed: {report['removed']})"
        )
    skipped = sum(v for k, v in report["removed"].items() if k.startswith("bad_"))
    seen = report["documents_read"] + skipped  # bad records never became documents
    removed = sum(report["removed"].values())
    # A record of a labeled, chat or preference source is an example: any one removed is
    # said; of plain text, a notable share.
    example = config.source.role != "pretrain" and removed > skipped  # bad ones said below
    if seen and (removed / seen >= NOTABLE or example):
        why = ", ".join(f"{k} {v}" for k, v in sorted(report["removed"].items()) if v)
        ctx.note(f"cleaning removed {removed} of {seen} documents ({removed / seen:.0%}): {why}")
    _note_skipped(ctx, report["skipped_examples"], skipped)
    if conflicts:
        text, kept_label, dropped = conflicts[0]
        shown = text if len(text) <= 60 else text[:57] + "..."
        report["label_conflicts"] = len(conflicts)
        ctx.note(
            f"{len(conflicts)} duplicate text(s) carry another label than the copy kept "
            f"(first: {shown!r} kept as {kept_label!r}, dropped as {dropped!r}): "
            'deduplication keeps the first copy; set dedup = "none" in [data.clean] to '
            "keep every copy, or mend the labels"
        )
    windows = [r["path"] for r in results if r.get("windows_lines")]
    if windows:
        sep = config.source.separator or ""
        crlf = json.dumps(sep.replace("\n", "\r\n"))
        ctx.note(
            f"the separator {json.dumps(sep)} never occurs in {len(windows)} file(s) (first: "
            f'{windows[0]}), whose lines end with "\\r\\n" (Windows): each is one '
            f"document; set separator = {crlf} to split them"
        )
    if config.split.validation > 0 and not kept["validation"]["documents"]:
        docs = kept["train"]["documents"]
        ctx.note(
            f"no validation documents: the split put all {docs} document(s) in training, so "
            "nothing trained on this source is measured held out"
            + (
                "; a text source without a separator is one document per file: set "
                '`separator` (e.g. "\\n\\n") to split it'
                if docs <= 2
                and config.source.separator is None
                and any(_is_text(f, config.source.format) for f in files)
                else ""
            )
        )
    (ctx.out_dir / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    ctx.metrics.update(
        {
            "documents": report["documents_read"],
            "train_documents": kept["train"]["documents"],
            "validation_documents": kept["validation"]["documents"],
            "dedup_ratio": report["dedup_ratio"],
            "skipped": skipped,
            "filtered": sum(report["removed"].get(k, 0) for k in FILTERS),
        }
    )
    ctx.log.info("report: %s", json.dumps(report))
