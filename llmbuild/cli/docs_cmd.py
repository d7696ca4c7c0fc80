"""``llmbuild docs``: the markdown spec reference, generated from the JSON Schema."""

from __future__ import annotations

import argparse
import sys


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o", "--output", help="write to this file (e.g. docs/spec.md) instead of stdout"
    )


def run(args: argparse.Namespace) -> int:
    from llmbuild.spec.schema import spec_reference

    text = spec_reference()
    if args.output:
        from pathlib import Path

        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
