"""``llmbuild generate``: sample from a built stage."""

from __future__ import annotations

import argparse
import json
import sys

from llmbuild.cli.common import add_spec_arguments, add_store_argument, open_store
from llmbuild.errors import UserError


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    add_store_argument(p)
    p.add_argument("--stage", help="stage to sample from (default: the last one)")
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from llmbuild.plan import plan_spec
    from llmbuild.spec.load import load_spec

    resolved = load_spec(args.spec, args.overrides)
    store = open_store(args, resolved.path)
    planned = plan_spec(resolved, store=store, cache=store.cache)
    stages = [n for n in planned.graph.nodes if n.startswith("stage:")]
    name = f"stage:{args.stage}" if args.stage else stages[-1]
    if name not in planned.keys:
        raise UserError(f"no stage {args.stage!r} (stages: {', '.join(s[6:] for s in stages)})")
    stage_rec = store.record(name, planned.keys[name].key)
    tok_rec = store.record("tokenizer", planned.keys["tokenizer"].key)
    if stage_rec is None or tok_rec is None:
        raise UserError(
            f"{name} is not built with this spec yet: run `llmbuild build "
            f"{args.spec}` first (or `llmbuild plan` to see what is missing)"
        )
    from tokenizers import Tokenizer

    from llmbuild.backends.megatron.generate import load_model, sample

    tok_dir = store.local_dir(tok_rec)
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer" / "tokenizer.json"))
    info = json.loads((tok_dir / "tokenizer_info.json").read_text())
    model, config = load_model(store.local_dir(stage_rec))
    prompt = tok.encode(args.prompt, add_special_tokens=False).ids or [
        tok.token_to_id(info["bos_token"])
    ]
    new = sample(
        model,
        config,
        prompt,
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        args.seed,
        stop=tok.token_to_id(info["eos_token"]),
    )
    sys.stdout.write(args.prompt + tok.decode(new) + "\n")
    return 0
