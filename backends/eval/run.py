"""The ``eval:<suite>@<stage>`` node: perplexity on validation splits and text files,
samples from fixed prompts, lm-eval tasks (``lm_eval_suite.py``) and a classifier's
scores (``classification.py``). Results go to
``results.json`` and a markdown table."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from llmbuild.errors import UserError


def _windows(tokens: list[int], seq: int, limit: int | None) -> list[list[int]]:
    out = [tokens[i : i + seq + 1] for i in range(0, len(tokens) - 1, seq)]
    out = [w for w in out if len(w) > 1]
    return out[:limit] if limit else out


def _nll(
    model: Any, windows: list[list[int]], batch: int, masks: list[list[int]] | None = None
) -> tuple[float, int]:
    """Summed negative log-likelihood and token count; full-length windows go through the
    model ``batch`` at a time, a shorter last window on its own. With ``masks`` (one per
    window, 1 where a token is learned: a conversation's answers), only the tokens they
    mark are counted."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    full = max((len(w) for w in windows), default=0)
    order = list(range(len(windows)))
    groups = [order[i : i + batch] for i in range(0, len(order), batch)]
    groups = [[i for i in g if len(windows[i]) == full] for g in groups] + [
        [i] for i in order if len(windows[i]) != full
    ]
    with torch.no_grad():
        for group in (g for g in groups if g):
            ids = torch.tensor([windows[i] for i in group])
            inputs, targets = ids[:, :-1], ids[:, 1:]
            pos = torch.arange(inputs.shape[1]).unsqueeze(0).expand(len(group), -1)
            logits = model(inputs, pos, None).float()
            losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
            if masks is not None:
                losses = losses[torch.tensor([masks[i] for i in group])[:, 1:].flatten().bool()]
            total += float(losses.sum())
            count += losses.numel()
    return total, count


def _validation_tokens(dataset_dir: Path) -> tuple[list[int], list[int] | None]:
    """The validation split's tokens, one document after another, and for conversations
    their loss mask (1 on the answers), None for plain text."""
    from llmbuild.backends.megatron.cpu import apply_cpu_patches

    apply_cpu_patches()
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    index = json.loads((dataset_dir / "datasets.json").read_text())
    import numpy as np

    parts, masks = [], []
    for d in index["datasets"]:
        if d["split"] == "validation":
            prefix = str(dataset_dir / d["prefix"])
            ds = IndexedDataset(prefix)
            parts += [ds[i] for i in range(len(ds))]
            if Path(prefix + ".mask.idx").exists():
                mask = IndexedDataset(prefix + ".mask")
                masks += [mask[i] for i in range(len(mask))]
    if not parts:
        return [], None
    tokens = np.concatenate(parts).astype(np.int64).tolist()
    return tokens, (np.concatenate(masks).astype(np.int64).tolist() if masks else None)


def perplexity(ctx: Any, suite: Any, model: Any, config: dict[str, Any]) -> dict[str, Any]:
    from llmbuild.backends.tokenizer.artifact import TokenizerArtifact

    seq = config["architecture"]["seq_len"]
    limit = suite.max_batches * suite.batch_size if suite.max_batches else None
    results = {}
    for slot, artifact in sorted(ctx.inputs.items()):
        if slot.startswith("data:"):
            tokens, mask = _validation_tokens(artifact.path)
            if not tokens:
                ctx.note(f"source {slot[5:]!r} has no validation split: not measured")
                continue
            masks = None if mask is None else _windows(mask, seq, limit)
            total, n = _nll(model, _windows(tokens, seq, limit), suite.batch_size, masks)
            if not n:
                ctx.note(f"source {slot[5:]!r} has no answers to measure in its validation split")
                continue
            results[slot[5:]] = {
                "tokens": n,
                "loss": total / n,
                "perplexity": math.exp(total / n),
            }
            if mask is not None:  # as an SFT stage's validation loss is
                results[slot[5:]]["measured"] = "answers"
    if suite.files:
        tok = TokenizerArtifact.open(ctx.input("tokenizer").path)
        from llmbuild.plan.digest import expand

        for pattern in suite.files:
            for path in expand(pattern):
                ids = tok.encode(_text_file(path)) + [tok.eos_id]
                total, n = _nll(model, _windows(ids, seq, limit), suite.batch_size)
                results[Path(path).name] = {
                    "tokens": n,
                    "loss": total / n,
                    "perplexity": math.exp(total / n),
                }
    if not results:
        raise UserError(
            "nothing to measure: the sources have no validation documents and no files are "
            "listed; set [data.split] validation, give a text source a separator so that it "
            "holds more than one document, or list text files in `files`"
        )
    return results


def _text_file(path: str) -> str:
    """A file of text to measure: UTF-8 with something in it, or a UserError saying not."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}): "
            "the perplexity suite measures UTF-8 text files"
        ) from None
    if not text.strip():
        raise UserError(f"{path}: empty: there is no text to measure")
    return text


def samples(ctx: Any, suite: Any, model: Any, config: dict[str, Any]) -> list[dict[str, str]]:
    from llmbuild.backends.megatron.generate import sample
    from llmbuild.backends.tokenizer.artifact import TokenizerArtifact

    tok = TokenizerArtifact.open(ctx.input("tokenizer").path)
    out = []
    for i, prompt in enumerate(suite.prompts):
        ids = tok.prompt_ids(tok.chat_prompt(prompt) if suite.chat else prompt)
        new = sample(
            model,
            config,
            ids,
            suite.max_new_tokens,
            suite.temperature,
            suite.top_k,
            suite.top_p,
            seed=i,
            stop=tok.stop_ids,
        )
        out.append({"prompt": prompt, "completion": tok.decode(new)})
    return out


def run(ctx: Any) -> None:
    from llmbuild.backends.megatron.cpu import node_threads

    with node_threads(ctx):
        _run(ctx)


def _run(ctx: Any) -> None:
    from llmbuild.backends.megatron.generate import load_input

    suite = ctx.config.suite
    if suite.kind == "lm-eval":
        from llmbuild.backends.eval.lm_eval_suite import run_lm_eval

        results, table = run_lm_eval(ctx, suite)
    elif suite.kind == "classification":
        from llmbuild.backends.eval.classification import classification

        results, table = classification(ctx, suite)
    elif suite.kind == "perplexity":
        model, config = load_input(ctx)
        results = perplexity(ctx, suite, model, config)
        table = ["| data | tokens | loss | perplexity |", "| --- | --- | --- | --- |"]
        table += [
            f"| {k}{' (answers)' if v.get('measured') else ''} | {v['tokens']} | "
            f"{v['loss']:.4f} | {v['perplexity']:.3f} |"
            for k, v in results.items()
        ]
        ctx.metrics.update({f"{k}.loss": v["loss"] for k, v in results.items()})
    else:
        model, config = load_input(ctx)
        results = samples(ctx, suite, model, config)
        table = ["| prompt | completion |", "| --- | --- |"]
        table += [f"| {json.dumps(r['prompt'])} | {json.dumps(r['completion'])} |" for r in results]
        ctx.metrics["samples"] = len(results)
    (ctx.out_dir / "results.json").write_text(
        json.dumps(
            {
                "suite": suite.name,
                "kind": suite.kind,
                "stage": ctx.config.stage,
                "results": results,
            },
            indent=1,
            sort_keys=True,
        )
    )
    (ctx.out_dir / "results.md").write_text("\n".join(table) + "\n")
