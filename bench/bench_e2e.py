"""End to end: ``llmbuild build`` of a nanoGPT shakespeare_char-equivalent spec (4 x 128,
block 64, batch 12, BENCH_E2E_STEPS steps, default 2000, 300 with --quick; char
tokenizer; the default executor, a fresh store) against ``bench/nanogpt.py``, a plain
PyTorch script of the same model, data and schedule, in the same run: wall-clock ratio
(ours / plain; the plain script runs before and after the build, and the baseline is
the mean of the two), and each side's held-out loss on the same last 10% of the text; and the
speed of the training steps alone under the Ray executor against the plain loop's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TEXT = REPO / "examples" / "shakespeare" / "data" / "tinyshakespeare.txt"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

SPEC = """\
extends = ["@gpt2-tiny"]

[model]
name = "nanogpt-shakespeare-char"
seed = 1337

[[data.sources]]
name = "train"
path = "train.txt"
format = "text"  # one document, as nanoGPT reads it: a separator would drop the blank
                 # lines between speeches from training, and the held-out text has them

[data.clean]
dedup = "none"

[data.split]
validation = 0.0

[tokenizer]
kind = "char"

[architecture]
layers = 4
hidden = 128
heads = 4
seq_len = 64
bias = false
dropout = 0.0

[parallelism]
micro_batch = 12

[[stage]]
name = "pretrain"
kind = "pretrain"
steps = {steps}
global_batch = 12
lr = 1e-3
weight_decay = 0.1
betas = [0.9, 0.99]
grad_clip = 1.0
schedule = {{ kind = "cosine", warmup = 100, min_lr = 1e-4 }}

[[eval]]
name = "heldout"
kind = "perplexity"
stages = ["pretrain"]
sources = []
files = ["val.txt"]
"""


def _split(root: Path) -> None:
    """nanoGPT's split: the first 90% of the characters train, the last 10% are held out."""
    text = TEXT.read_text(encoding="utf-8")
    cut = int(0.9 * len(text))
    (root / "train.txt").write_text(text[:cut], encoding="utf-8")
    (root / "val.txt").write_text(text[cut:], encoding="utf-8")


def _ours(root: Path, store: Path) -> dict:
    began = time.perf_counter()
    cmd = [sys.executable, "-m", "llmbuild", "build", str(root / "spec.toml"), "--plain"]
    done = subprocess.run([*cmd, "--store", str(store)], env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if done.returncode:
        raise RuntimeError(done.stdout[-3000:] + done.stderr[-3000:])
    records = {}
    for record in store.glob("artifacts/*/record.json"):
        rec = json.loads(record.read_text())
        records[rec["name"]] = rec
    stage = records["stage:pretrain"]
    heldout = records["eval:heldout@pretrain"]["metrics"]
    loss = next(v for k, v in heldout.items() if k.endswith(".loss"))
    return {"wall": wall, "val_loss": loss, "stage": stage, "records": records}


def _plain(root: Path, steps: int) -> dict:
    began = time.perf_counter()
    script = [sys.executable, str(REPO / "bench" / "nanogpt.py")]
    args = [str(root / "train.txt"), str(root / "val.txt"), "--steps", str(steps)]
    done = subprocess.run([*script, *args], env=ENV, capture_output=True, text=True, check=True)
    return {"wall": time.perf_counter() - began, **json.loads(done.stdout.splitlines()[-1])}


def run(quick: bool = False) -> list[dict]:
    steps = int(os.environ.get("BENCH_E2E_STEPS", "300" if quick else "2000"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _split(root)
        (root / "spec.toml").write_text(SPEC.format(steps=steps))
        # The plain script runs before and after the build, and its mean is the baseline:
        # this machine's speed drifts by 10-20% within minutes, and a run before or after
        # alone would put all of the drift into the ratio.
        before = _plain(root, steps)
        ours = _ours(root, root / "store")
        after = _plain(root, steps)
    plain = {
        "wall": (before["wall"] + after["wall"]) / 2,
        "val_loss": before["val_loss"],
        "timings": {k: (before["timings"][k] + after["timings"][k]) / 2 for k in before["timings"]},
    }
    stage = ours["stage"]
    timings = {k: v for k, v in stage["timings"].items() if k not in ("started", "finished")}
    phases = ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    nodes = ", ".join(
        f"{name} {rec['timings']['seconds']:.1f}" for name, rec in sorted(ours["records"].items())
    )
    print(f"   stage timings (s): {phases}", file=sys.stderr)
    print(f"   nodes (s): {nodes}", file=sys.stderr)
    for side, run_ in (("before", before), ("after", after)):
        print(
            f"   plain timings, {side} (s): {run_['timings']}, wall {run_['wall']:.1f}",
            file=sys.stderr,
        )
    return [
        {
            "benchmark": f"`llmbuild build`, nanoGPT shakespeare_char on CPU (4 x 128, block 64, "
            f"batch 12, {steps} steps), default executor, fresh store: wall clock",
            "result": f"{ours['wall']:.0f} s, held-out loss {ours['val_loss']:.3f}",
            "baseline": f"plain-PyTorch script of the same model and schedule "
            f"(`bench/nanogpt.py`), mean of a run before and after: {plain['wall']:.0f} s, "
            f"held-out loss {plain['val_loss']:.3f}",
            "ratio": ours["wall"] / plain["wall"],
            "unit": "the plain script's wall time",
            "target": "1.0x, loss within 0.03",
        },
        {
            "benchmark": f"the same build's {steps} training steps, Ray executor (the stage "
            f"record's `rank0.steps`): speed",
            "result": f"{steps / timings['rank0.steps']:.1f} steps/s",
            "baseline": f"the plain script's training loop, same run: "
            f"{steps / plain['timings']['train']:.1f} steps/s",
            "ratio": plain["timings"]["train"] / timings["rank0.steps"],
            "unit": "the plain loop's speed",
            "target": "1.0x",
        },
    ]


if __name__ == "__main__":
    from bench.run import print_table

    print_table(run(quick="--quick" in sys.argv))
