"""Checkpoint import: converting a gpt2-124m-shaped Hugging Face checkpoint (random
weights, written by transformers) into our canonical weights, and the whole import node's
work (conversion plus the logit check against transformers), against transformers' own
``from_pretrained`` of the same directory; each in a fresh process, alternating, best of
BENCH_IMPORT_ROUNDS (default 3, 1 with --quick); seconds and peak memory (ratio = ours /
from_pretrained)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
import torch
from pathlib import Path
what, ck_dir, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
start = time.perf_counter()
if what == "transformers":
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(ck_dir), dtype=torch.float32)
else:
    from llmbuild.backends.checkpoint.run import convert, logit_difference
    from llmbuild.backends.checkpoint.source import open_checkpoint
    from llmbuild.backends.megatron.artifact import CONFIG, MODEL
    from llmbuild.backends.megatron.vocab import padded_vocab
    from llmbuild.spec.base import table_dump
    from llmbuild.spec.model import Architecture
    from safetensors.torch import save_file
    ck = open_checkpoint(str(ck_dir))
    arch = Architecture.model_validate({{**ck.architecture(), "seq_len": 128}})
    weights = convert(ck, arch)
    save_file(weights, str(out / MODEL))
    meta = {{"architecture": table_dump(arch), "vocab_size": arch.vocab_size,
             "padded_vocab_size": padded_vocab(arch.vocab_size, arch)}}
    (out / CONFIG).write_text(json.dumps(meta))
    if what == "import":
        del weights
        assert max(logit_difference(ck, out, arch)) < 1e-4  # logits, log-probabilities
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def _checkpoint(root: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(GPT2Config())  # 12 x 768, 50257 tokens
    model.save_pretrained(str(root / "gpt2-124m"))
    return root / "gpt2-124m"


def _measure(what: str, ck: Path, root: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=root))
    code = CHILD.format(repo=str(REPO))
    r = subprocess.run(
        [sys.executable, "-c", code, what, str(ck), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    rounds = int(os.environ.get("BENCH_IMPORT_ROUNDS", 1 if quick else 3))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ck = _checkpoint(root)
        best: dict[str, dict] = {}
        for _ in range(rounds):
            for what in ("transformers", "convert", "import"):
                m = _measure(what, ck, root)
                if what not in best or m["seconds"] < best[what]["seconds"]:
                    best[what] = m
    base = best["transformers"]
    rows = []
    for what, label in (("convert", "conversion"), ("import", "import node (conversion + check)")):
        m = best[what]
        rows.append(
            {
                "benchmark": f"gpt2-124m {label}, time",
                "result": f"{m['seconds']:.2f} s",
                "baseline": f"from_pretrained {base['seconds']:.2f} s",
                "ratio": m["seconds"] / base["seconds"],
                "unit": "from_pretrained's",
            }
        )
        rows.append(
            {
                "benchmark": f"gpt2-124m {label}, peak memory",
                "result": f"{m['peak_mb']:.0f} MB",
                "baseline": f"from_pretrained {base['peak_mb']:.0f} MB",
                "ratio": m["peak_mb"] / base["peak_mb"],
                "unit": "from_pretrained's",
            }
        )
    return rows
