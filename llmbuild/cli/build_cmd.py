"""``llmbuild build`` and ``llmbuild reproduce``."""

from __future__ import annotations

import argparse
import os
import sys

from llmbuild.cli.common import add_spec_arguments, add_store_argument, open_store, ranged
from llmbuild.errors import UserError


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    if name == "build":
        add_spec_arguments(p)
    else:
        p.add_argument(
            "spec_hash", metavar="HASH", help="spec hash of a recorded build (a prefix will do)"
        )
        p.add_argument(
            "--rtol",
            type=ranged(float, 0),
            default=1e-3,
            help="relative tolerance on metrics for 'within tolerance' (default 1e-3)",
        )
        p.add_argument(
            "--scratch",
            help="directory of the scratch store, kept (default: a temp dir, removed after unless "
            "a node failed to rebuild)",
        )
    add_store_argument(p, "beside the spec" if name == "build" else "in the current directory")
    p.add_argument(
        "--executor",
        choices=["ray", "inline"],
        default="ray",
        help="ray (default): nodes as Ray tasks; inline: one process, one node at a time",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster (default: $RAY_ADDRESS, else start a local one)",
    )
    if name == "build":
        p.add_argument(
            "--only",
            action="append",
            default=[],
            metavar="NODE",
            help="build only this node and what it needs (repeatable)",
        )
        p.add_argument(
            "--until",
            action="append",
            default=[],
            metavar="NODE",
            help="build up to this node, with everything upstream (repeatable)",
        )
    p.add_argument("--plain", action="store_true", help="plain line output, no live view")


def run(args: argparse.Namespace) -> int:
    from llmbuild.run.build import BuildOptions

    if args.executor == "inline" and args.ray_address:
        raise UserError(
            "--ray-address names a Ray cluster, but --executor inline builds in this "
            "process without one: give one of them"
        )
    options = BuildOptions(
        executor=args.executor,
        ray_address=args.ray_address,
        only=tuple(getattr(args, "only", ())),
        until=tuple(getattr(args, "until", ())),
        live=False if args.plain else None,
    )
    # A node's progress is the build's to show: transformers', huggingface_hub's and
    # lm-eval's bars (loading, converting and writing weights; requests) would only break
    # into it. A user's setting wins.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.command == "reproduce":
        return _reproduce(args, options)

    from llmbuild.run.build import build
    from llmbuild.spec.load import load_spec

    resolved = load_spec(args.spec, args.overrides)
    store = open_store(args, resolved.path)
    print(f"building {resolved.display} into {store.url}")
    outcome = build(resolved, store, options)
    failed = [r for r in outcome.results.values() if r.state == "failed"]
    skipped = [r.name for r in outcome.results.values() if r.state == "skipped"]
    for r in failed:
        print(f"failed: {r.name}: {r.detail.removeprefix(f'{r.name}: ')}", file=sys.stderr)
    if skipped:
        print(f"skipped (an input failed): {', '.join(skipped)}", file=sys.stderr)
    print(f"spec {outcome.spec_hash[:12]}: {outcome.summary}")
    if outcome.unrecorded:
        print(f"note: this build is not recorded: {outcome.unrecorded}", file=sys.stderr)
    return 0 if outcome.ok else 1


def _reproduce(args: argparse.Namespace, options) -> int:
    from pathlib import Path

    from llmbuild.run.reproduce import reproduce

    store = open_store(args, Path.cwd() / "spec.toml")
    build, comparisons = reproduce(
        store,
        args.spec_hash,
        options,
        rtol=args.rtol,
        scratch=Path(args.scratch) if args.scratch else None,
    )
    print(f"reproduced spec {build['spec_hash'][:12]} ({build['spec_path']}):")
    width = max(len(c.node) for c in comparisons)
    for c in comparisons:
        print(f"  {c.verdict:<16}  {c.node:<{width}}  {c.detail}".rstrip())
    counts = {}
    for c in comparisons:
        counts[c.verdict] = counts.get(c.verdict, 0) + 1
    print(", ".join(f"{n} {v}" for v, n in counts.items()))
    return 0 if all(c.verdict in ("identical", "within tolerance") for c in comparisons) else 1
