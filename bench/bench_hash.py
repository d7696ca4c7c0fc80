"""Data hashing: content digests of generated files (BENCH_HASH_MB, default 384 MB) with
an empty stat cache (every byte read and hashed with blake3) against the stat cache warm
(one stat per file), in the digest function and in `llmbuild plan` of a spec over them;
each pair alternates, 5 times (3 with --quick), and medians are compared."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FILE_MB = 4
SPEC = """\
extends = ["@gpt2-tiny"]
[model]
name = "bench-hash"
[[data.sources]]
name = "corpus"
path = "corpus/**/*.bin"
format = "text"
[tokenizer]
kind = "byte"
[[stage]]
name = "pretrain"
kind = "pretrain"
steps = 1
global_batch = 1
lr = 1e-3
"""


def _corpus(root: Path, megabytes: int) -> int:
    """Random bytes in FILE_MB files, 16 per directory."""
    files = max(1, megabytes // FILE_MB)
    for i in range(files):
        d = root / "corpus" / f"d{i // 16:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"part-{i:05d}.bin").write_bytes(os.urandom(FILE_MB << 20))
    (root / "spec.toml").write_text(SPEC)
    return files


def _medians(a, b, repeat: int) -> tuple[float, float]:
    """Median times of two functions run in alternation, so that changes in the machine's
    load affect both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for fn, out in zip((a, b), times):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


def run(quick: bool = False) -> list[dict]:
    from llmbuild.plan.digest import StatCache, digest_paths

    megabytes = int(os.environ.get("BENCH_HASH_MB", "128" if quick else "384"))
    repeat = 3 if quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = _corpus(root, megabytes)
        nbytes = files * (FILE_MB << 20)
        pattern = [str(root / "corpus" / "**" / "*.bin")]
        cache_file = root / "statcache.json"

        def cold() -> None:
            cache = StatCache()  # nothing known: every file is read and hashed
            digest_paths(pattern, cache)
            assert cache.reads == files

        def warm() -> None:
            cache = StatCache(cache_file)  # loaded from disk, as a new process would
            digest_paths(pattern, cache)
            assert cache.reads == 0

        first = StatCache(cache_file)
        digest_paths(pattern, first)
        first.save()
        cold_s, warm_s = _medians(cold, warm, repeat)

        # The same, as a user sees it: `llmbuild plan` with no stat cache, then with one.
        cache_dir = root / "cache"
        env = {**os.environ, "LLMBUILD_CACHE_DIR": str(cache_dir)}
        plan = [sys.executable, "-m", "llmbuild", "plan", str(root / "spec.toml")]
        plan += ["--store", str(root / "store")]

        def plan_cold() -> None:
            shutil.rmtree(cache_dir, ignore_errors=True)  # then this run fills it again
            subprocess.run(plan, env=env, check=True, stdout=subprocess.DEVNULL, cwd=REPO)

        def plan_warm() -> None:
            subprocess.run(plan, env=env, check=True, stdout=subprocess.DEVNULL, cwd=REPO)

        plan_cold_s, plan_warm_s = _medians(plan_cold, plan_warm, repeat)
    mb = nbytes / 1e6
    return [
        {
            "benchmark": f"digest {mb:.0f} MB in {files} files, stat cache warm",
            "result": f"{warm_s * 1000:.1f} ms",
            "baseline": f"cold (blake3 of every byte): {cold_s * 1000:.0f} ms, "
            f"{mb / cold_s:.0f} MB/s",
            "ratio": cold_s / warm_s,
            "unit": "faster",
        },
        {
            "benchmark": f"`llmbuild plan` over those {mb:.0f} MB, stat cache warm",
            "result": f"{plan_warm_s * 1000:.0f} ms",
            "baseline": f"no stat cache: {plan_cold_s * 1000:.0f} ms",
            "ratio": plan_cold_s / plan_warm_s,
            "unit": "faster",
        },
    ]


if __name__ == "__main__":
    from bench.run import print_table

    print_table(run(quick="--quick" in sys.argv))
