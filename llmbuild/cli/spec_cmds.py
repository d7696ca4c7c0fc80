"""``validate``, ``resolve`` and ``schema``: the spec commands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from llmbuild.cli.common import add_spec_arguments


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    if name == "schema":
        p.add_argument("-o", "--output", help="write to this file instead of stdout")
        return
    add_spec_arguments(p)
    p.add_argument(  # one command line serves every command
        "--store", default=None, help="accepted and unused: the spec alone is checked"
    )
    if name == "resolve":
        p.add_argument("--json", action="store_true", help="print JSON: values and origins")


def _flatten(
    value: Any, prefix: str, out: list[tuple[str, tuple[Any, ...], Any]], path: tuple[Any, ...] = ()
) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else k, out, path + (k,))
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            _flatten(v, f"{prefix}[{i}]", out, path + (i,))
    else:
        out.append((prefix, path, value))


def run(args: argparse.Namespace) -> int:
    if args.command == "schema":
        from llmbuild.spec.schema import spec_schema_text

        text = spec_schema_text()
        if args.output:
            from pathlib import Path

            out = Path(args.output)  # its folder made, as docs -o makes one
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
            print(f"wrote {args.output}", file=sys.stderr)
        else:
            sys.stdout.write(text)
        return 0

    from llmbuild.spec.load import load_spec

    resolved = load_spec(args.spec, args.overrides)
    spec = resolved.spec
    if args.command == "validate":
        from llmbuild.spec.advice import warn

        warn(resolved)
        print(
            f"{resolved.display}: ok ({len(spec.data.sources)} sources, {len(spec.stage)} "
            f"stages, {len(spec.eval)} evals, {len(spec.export)} exports)"
        )
        return 0
    rows: list[tuple[str, tuple[Any, ...], Any]] = []
    _flatten(spec.model_dump(mode="json", by_alias=True), "", rows)
    if args.json:
        print(
            json.dumps(
                {
                    "spec": spec.model_dump(mode="json", by_alias=True),
                    "origins": {key: str(resolved.origin(path)) for key, path, _ in rows},
                },
                indent=2,
            )
        )
        return 0
    if spec.tokenizer.kind == "pretrained":  # its special tokens are its own, whatever
        # the spec's defaults say (the spec cannot set them)
        own = {("tokenizer", name) for name in ("bos_token", "eos_token", "pad_token")}
        rows = [row for row in rows if row[1] not in own]
    shown = [(key, json.dumps(value), str(resolved.origin(path))) for key, path, value in rows]
    width = min(max(len(k) + len(v) + 3 for k, v, _ in shown), 72)
    for key, value, origin in shown:
        print(f"{f'{key} = {value}':<{width}}  # {origin}")
    return 0
