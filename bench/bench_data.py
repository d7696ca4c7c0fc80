"""Data pipeline: tokenize-node throughput against a naive per-document encode loop
writing the same .bin (same run; BENCH_TOKENIZE_MB, default 64, 16 with --quick), and peak
memory of cleaning + tokenizing a large generated corpus (BENCH_DATA_MB, default 1024;
skipped with --quick or BENCH_DATA_MEMORY=0)."""

from __future__ import annotations

import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / "examples" / "shakespeare" / "data" / "tinyshakespeare.txt"
SPEC = """\
extends = ["@gpt2-tiny"]
[model]
name = "bench-data"
[data]
shard_mb = {shard_mb}
[[data.sources]]
name = "corpus"
path = "corpus"
[[data.sources]]
name = "sample"
path = "sample.jsonl"
[tokenizer]
kind = "bpe"
vocab_size = 4096
sources = ["sample"]
[[stage]]
name = "pretrain"
kind = "pretrain"
steps = 1
global_batch = 1
lr = 1e-3
"""


def _corpus(root: Path, megabytes: float, files: int, shard_mb: int = 64) -> int:
    """Paragraphs of Shakespeare with a random word swapped in, as jsonl files."""
    paras = [p for p in SHAKESPEARE.read_text().split("\n\n") if len(p) > 40]
    words = SHAKESPEARE.read_text().split()
    rng = random.Random(0)
    (root / "corpus").mkdir(parents=True)
    target = int(megabytes * 1e6 / files)
    total = 0
    for i in range(files):
        with open(root / "corpus" / f"part-{i:04d}.jsonl", "w") as f:
            size = 0
            while size < target:
                p = paras[rng.randrange(len(paras))].split(" ")
                p[rng.randrange(len(p))] = words[rng.randrange(len(words))]
                line = json.dumps({"text": " ".join(p) + f" ({rng.random():.6f})"}) + "\n"
                f.write(line)
                size += len(line)
            total += size
    with open(root / "sample.jsonl", "w") as f:
        for p in paras[:3000]:
            f.write(json.dumps({"text": p}) + "\n")
    (root / "spec.toml").write_text(SPEC.format(shard_mb=shard_mb))
    return total


def _build(spec: Path, store: Path, until: tuple[str, ...], executor: str = "inline"):
    from llmbuild.run.build import BuildOptions, PlainReporter, build
    from llmbuild.spec.load import load_spec
    from llmbuild.store.store import Store

    outcome = build(
        load_spec(spec),
        Store(str(store)),
        BuildOptions(executor=executor, live=False, until=until),
        PlainReporter(io.StringIO()),
    )
    assert outcome.ok, {n: r.detail for n, r in outcome.results.items() if r.detail}
    return outcome


def _naive(source_dir: Path, tok_dir: Path, out: Path) -> tuple[float, int, int]:
    """The script people write: transformers' tokenizer.encode once per document, appended
    to an IndexedDatasetBuilder, reading the same shards."""
    import numpy as np
    from llmbuild.backends.data.shards import SPLITS, iter_split
    from llmbuild.backends.megatron.cpu import apply_cpu_patches

    apply_cpu_patches()  # before megatron is imported: bench_train trains in this process
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir / "tokenizer"))
    eos = tok.eos_token_id
    start = time.perf_counter()
    tokens = nbytes = 0
    for split in SPLITS:
        builder = IndexedDatasetBuilder(str(out / f"naive-{split}.bin"), dtype=np.uint16)
        for record in iter_split(source_dir, split):
            ids = tok.encode(record["text"], add_special_tokens=False) + [eos]
            builder.add_document(np.asarray(ids, dtype=np.uint16), [len(ids)])
            tokens += len(ids)
            nbytes += len(record["text"].encode())
        builder.finalize(str(out / f"naive-{split}.idx"))
    return time.perf_counter() - start, tokens, nbytes


def throughput(megabytes: float = 64, rounds: int = 2, shard_mb: int = 4) -> list[dict]:
    """The node under the default (Ray) executor on a corpus of several shards, as a
    larger corpus always is, against the naive loop; the two alternate for ``rounds``
    rounds and the best of each counts, so a burst of load on the machine hits both."""
    import shutil

    from llmbuild.store.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _corpus(root, megabytes, files=8, shard_mb=shard_mb)
        store = root / "store"
        outcome = _build(root / "spec.toml", store, ("tokenizer", "source:corpus"))
        s = Store(str(store))
        src = s.local_dir(outcome.results["source:corpus"].record)
        tok = s.local_dir(outcome.results["tokenizer"].record)
        shards = len(list(src.glob("*.tar")))
        naive, ours, digests = [], [], set()
        for i in range(rounds):
            naive_s, tokens, nbytes = _naive(src, tok, root)
            naive.append(naive_s)
            fresh = root / f"store-{i}"  # the node's inputs built, the node not yet
            shutil.copytree(store, fresh)
            rec = (
                _build(root / "spec.toml", fresh, ("tokenize:corpus",), "ray")
                .results["tokenize:corpus"]
                .record
            )
            ours.append(rec.timings["seconds"])
            digests.add(rec.output_digest)
            assert rec.metrics["train_tokens"] + rec.metrics["validation_tokens"] == tokens
        assert len(digests) == 1, "the tokenize node is not deterministic"
    naive_s, ours_s = min(naive), min(ours)
    cores = os.cpu_count() or 1
    mb = nbytes / 1e6
    return [
        {
            "benchmark": f"tokenize node, {mb:.0f} MB jsonl in {shards} shards, BPE 4096, "
            f"Ray executor, {cores} cores (best of {rounds})",
            "result": f"{mb / ours_s:.1f} MB/s, {tokens / ours_s / 1e3:.0f}k tok/s "
            f"({tokens / ours_s / cores / 1e3:.0f}k per core)",
            "baseline": f"per-document `tokenizer.encode` loop (transformers), same shards: "
            f"{mb / naive_s:.1f} MB/s, {tokens / naive_s / 1e3:.0f}k tok/s",
            "ratio": naive_s / ours_s,
            "unit": "the naive loop's speed",
            "target": "3x",
        }
    ]


def memory(megabytes: float) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        total = _corpus(root, megabytes, files=max(1, int(megabytes // 16)))
        env = {**os.environ, "LLMBUILD_CACHE_DIR": str(root / "cache")}
        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "llmbuild",
                "build",
                str(root / "spec.toml"),
                "--executor",
                "inline",
                "--plain",
                "--until",
                "tokenize:corpus",
                "--store",
                str(root / "store"),
            ],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        seconds = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return [
        {
            "benchmark": f"clean + tokenize a {total / 1e9:.2f} GB jsonl corpus, inline: peak RSS",
            "result": f"{peak_mb:.0f} MB in {seconds:.0f} s",
            "baseline": f"the corpus size: {total / 1e6:.0f} MB",
            "ratio": peak_mb * 1e6 / total,
            "unit": "the corpus size",
            "target": "< 1.5 GB",
        }
    ]


def run(quick: bool = False) -> list[dict]:
    rows = throughput(
        float(os.environ.get("BENCH_TOKENIZE_MB", "16" if quick else "64")),
        rounds=1 if quick else 2,
    )
    if os.environ.get("BENCH_DATA_MEMORY", "0" if quick else "1") != "0":
        rows += memory(float(os.environ.get("BENCH_DATA_MB", "1024")))
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    from bench.run import print_table

    print_table(run(quick="--quick" in sys.argv))
