"""A plain-PyTorch character-level GPT trainer in the manner of nanoGPT's shakespeare_char
CPU run (4 layers x 128, block 64, batch 12, AdamW with warmup and cosine decay, gradient
clipping): the baseline ``bench_e2e`` builds the same model with llmbuild against. One
file, no llmbuild imports.

    python bench/nanogpt.py TRAIN.txt VAL.txt [--steps 2000]

Prints one JSON line: the held-out loss (mean next-character loss over VAL in windows of
the block size) and the seconds of each phase."""

from __future__ import annotations

import argparse
import json
import math
import time

began = time.perf_counter()
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

LAYERS, HIDDEN, HEADS, BLOCK, BATCH = 4, 128, 4, 64, 12
LR, MIN_LR, WARMUP, DECAY, CLIP = 1e-3, 1e-4, 100, 0.1, 1.0


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(HIDDEN, bias=False), nn.LayerNorm(HIDDEN, bias=False)
        self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN, bias=False)
        self.proj = nn.Linear(HIDDEN, HIDDEN, bias=False)
        self.fc1 = nn.Linear(HIDDEN, 4 * HIDDEN, bias=False)
        self.fc2 = nn.Linear(4 * HIDDEN, HIDDEN, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, HEADS, HIDDEN // HEADS).unbind(2)
        a = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.proj(a.transpose(1, 2).reshape(b, s, HIDDEN))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.tok, self.pos = nn.Embedding(vocab, HIDDEN), nn.Embedding(BLOCK, HIDDEN)
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln = nn.LayerNorm(HIDDEN, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:  # GPT-2's init: output projections scaled by depth
                std = (
                    0.02 / math.sqrt(2 * LAYERS)
                    if name.endswith(("proj.weight", "fc2.weight"))
                    else 0.02
                )
                nn.init.normal_(p, 0.0, std)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.tok(tokens) + self.pos(torch.arange(tokens.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.ln(x) @ self.tok.weight.T  # tied embeddings
        return F.cross_entropy(logits.view(-1, self.vocab), labels.reshape(-1))


def lr_at(step: int, steps: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, steps - WARMUP)
    return MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * progress))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("train")
    parser.add_argument("val")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args()
    timings = {"imports": time.perf_counter() - began}
    mark = time.perf_counter()
    train_text = open(args.train, encoding="utf-8").read()
    val_text = open(args.val, encoding="utf-8").read()
    chars = sorted(set(train_text) | set(val_text))
    index = {c: i for i, c in enumerate(chars)}
    train = torch.tensor([index[c] for c in train_text], dtype=torch.long)
    val = torch.tensor([index[c] for c in val_text], dtype=torch.long)
    timings["data"] = time.perf_counter() - mark

    mark = time.perf_counter()
    torch.manual_seed(args.seed)
    model = GPT(len(chars))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": DECAY}, {"params": rest, "weight_decay": 0.0}],
        lr=LR,
        betas=(0.9, 0.99),
    )
    for step in range(args.steps):
        starts = torch.randint(len(train) - BLOCK - 1, (BATCH,))
        x = torch.stack([train[s : s + BLOCK] for s in starts])
        y = torch.stack([train[s + 1 : s + BLOCK + 1] for s in starts])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps)
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
    timings["train"] = time.perf_counter() - mark

    mark = time.perf_counter()
    model.eval()
    n = (len(val) - 1) // BLOCK
    x = val[: n * BLOCK].view(n, BLOCK)
    y = val[1 : n * BLOCK + 1].view(n, BLOCK)
    with torch.no_grad():
        losses = [model(x[i : i + 64], y[i : i + 64]) * len(x[i : i + 64]) for i in range(0, n, 64)]
    val_loss = float(sum(losses) / n)
    timings["eval"] = time.perf_counter() - mark
    print(json.dumps({"val_loss": val_loss, "train_loss": loss.item(), "timings": timings}))


if __name__ == "__main__":
    main()
