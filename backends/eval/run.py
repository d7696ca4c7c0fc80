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
    """Summed negative log-likelihood and token count. Without ``masks``, full-length
    windows go through the model ``batch`` at a time, a shorter last window on its own.
    With ``masks`` (one per window, 1 where a token is learned: a conversation's answers),
    only the tokens they mark are counted, and windows of any length go ``batch`` at a
    time, padded on the right (a causal model's earlier positions never see the pad)."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    order = list(range(len(windows)))
    if masks is None:
        full = max((len(w) for w in windows), default=0)
        groups = [order[i : i + batch] for i in range(0, len(order), batch)]
        groups = [[i for i in g if len(windows[i]) == full] for g in groups] + [
            [i] for i in order if len(windows[i]) != full
        ]
    else:
        groups = [order[i : i + batch] for i in range(0, len(order), batch)]
    with torch.no_grad():
        for group in (g for g in groups if g):
            width = max(len(windows[i]) for i in group)
            ids = torch.tensor([windows[i] + [0] * (width - len(windows[i])) for i in group])
            inputs, targets = ids[:, :-1], ids[:, 1:]
            pos = torch.arange(inputs.shape[1]).unsqueeze(0).expand(len(group), -1)
            logits = model(inputs, pos, None).float()
            losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
            if masks is not None:
                kept = [masks[i] + [0] * (width - len(masks[i])) for i in group]
                losses = losses[torch.tensor(kept)[:, 1:].flatten().bool()]
            total += float(losses.sum())
            count += losses.numel()
    return total, count


def _validation_docs(dataset_dir: Path) -> tuple[list[list[int]], list[list[int]] | None]:
    """The validation split's documents, and for conversations each one's loss mask (1
    on the answers), None for plain text."""
    from llmbuild.backends.megatron.cpu import indexed_dataset

    IndexedDataset = indexed_dataset()

    index = json.loads((dataset_dir / "datasets.json").read_text())
    docs, masks = [], []
    for d in index["datasets"]:
        if d["split"] == "validation":
            prefix = str(dataset_dir / d["prefix"])
            ds = IndexedDataset(prefix)
            docs += [ds[i].astype("int64").tolist() for i in range(len(ds))]
            if Path(prefix + ".mask.idx").exists():
                mask = IndexedDataset(prefix + ".mask")
                masks += [mask[i].astype("int64").tolist() for i in range(len(mask))]
    return docs, (masks if masks else None)


def _validation_tokens(dataset_dir: Path) -> tuple[list[int], list[int] | None]:
    """The validation split's tokens, one document after another, and for conversations
    their loss mask (1 on the answers), None for plain text."""
    docs, masks = _validation_docs(dataset_dir)
    tokens = [t for doc in docs for t in doc]
    return tokens, (None if masks is None else [m for mask in masks for m in mask])


def heldout_windows(
    dataset_dir: Path, seq: int, limit: int | None
) -> tuple[list[list[int]], list[list[int]] | None]:
    """The windows a source's validation split is measured over, and their masks: plain
    text one document after another, cut into windows of ``seq`` tokens; conversations
    each on its own (as an SFT stage reads them), a long one cut into windows, and only
    windows with answers in them."""
    docs, masks = _validation_docs(dataset_dir)
    if masks is None:
        return _windows([t for doc in docs for t in doc], seq, limit), None
    windows, marks = [], []
    for doc, mask in zip(docs, masks):
        for w, m in zip(_windows(doc, seq, None), _windows(mask, seq, None)):
            if any(m[1:]):
                windows.append(w)
                marks.append(m)
    return (windows[:limit], marks[:limit]) if limit else (windows, marks)


def perplexity(ctx: Any, suite: Any, model: Any, config: dict[str, Any]) -> dict[str, Any]:
    from llmbuild.backends.tokenizer.artifact import TokenizerArtifact

    seq = config["architecture"]["seq_len"]
    limit = suite.max_batches * suite.batch_size if suite.max_batches else None
    results = {}
    for slot, artifact in sorted(ctx.inputs.items()):
        if slot.startswith("data:"):
            windows, masks = heldout_windows(artifact.path, seq, limit)
            if not windows and masks is None:
                ctx.note(f"source {slot[5:]!r} has no validation split: not measured")
                continue
            total, n = _nll(model, windows, suite.batch_size, masks)
            if not n:
                ctx.note(f"source {slot[5:]!r} has no answers to measure in its validation split")
                continue
            results[slot[5:]] = {
                "tokens": n,
                "loss": total / n,
                "perplexity": math.exp(total / n),
            }
            if masks is not None:  # as an SFT stage's validation loss is
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
    from llmbuild.backends.tokenizer.continuation import Continuation

    tok = TokenizerArtifact.open(ctx.input("tokenizer").path)
    out = []
    most = len(suite.prompts) * suite.max_new_tokens  # a prompt may stop early
    ctx.progress.update(completed=0, total=most, unit="tokens", force=True)
    for i, prompt in enumerate(suite.prompts):
        before = i * suite.max_new_tokens
        # a text prompt as transformers encodes it (a Llama tokenizer's <s> first)
        ids = tok.prompt_ids(tok.chat_prompt(prompt)) if suite.chat else tok.completion_ids(prompt)
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
            progress=lambda n, before=before: ctx.progress.update(completed=before + n),
        )
        out.append({"prompt": prompt, "completion": Continuation(tok.decode, ids).text(new)})
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
