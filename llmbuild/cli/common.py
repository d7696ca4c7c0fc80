"""Arguments and helpers shared by commands."""

from __future__ import annotations

import argparse
import math
import os
import shlex
from pathlib import Path
from typing import Any


def ranged(
    kind: type, low: float | None = None, high: float | None = None, above: bool = False
) -> Any:
    """An argparse type: a ``kind`` number from ``low`` (or above it, with ``above``) to
    ``high``; anything else is a usage error naming the range."""
    shown = "{}" if kind is int else "{:g}"
    lo = "" if low is None else ("> " if above else ">= ") + shown.format(low)
    hi = "" if high is None else "<= " + shown.format(high)
    bounds = " and ".join(b for b in (lo, hi) if b)
    wanted = f"{'an integer' if kind is int else 'a number'} {bounds}".strip()

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted} (got {text!r})") from None
        if not math.isfinite(value):
            finite = wanted.replace("a number", "a finite number", 1)
            raise argparse.ArgumentTypeError(f"must be {finite} (got {text})")
        if (low is not None and (value <= low if above else value < low)) or (
            high is not None and value > high
        ):
            raise argparse.ArgumentTypeError(f"must be {wanted} (got {text})")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its own messages
    return parse


SEED = ranged(int, 0, 2**63 - 1)
"""A seed (a torch generator takes these and more)."""


def add_spec_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="path of the spec TOML file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value, e.g. --set stage.pretrain.lr=3e-4 (repeatable; a path "
        "given this way is relative to the working directory, as on any command line)",
    )


def add_store_argument(p: argparse.ArgumentParser, where: str = "beside the spec") -> None:
    p.add_argument(
        "--store",
        default=None,
        help=f"artifact store (default: $LLMBUILD_STORE or .llmbuild/ {where})",
    )


def build_command(args: argparse.Namespace) -> str:
    """The ``llmbuild build`` command that builds what these arguments name: the spec
    with its ``--set`` overrides (other values are other nodes) and ``--store``."""
    words = ["llmbuild", "build", str(args.spec)]
    for override in getattr(args, "overrides", None) or []:
        words += ["--set", override]
    if getattr(args, "store", None):
        words += ["--store", args.store]
    return shlex.join(words)


def store_root(args: argparse.Namespace, spec_path: Path) -> str:
    """The store location: --store, then $LLMBUILD_STORE, then .llmbuild/ beside the spec."""
    return args.store or os.environ.get("LLMBUILD_STORE") or str(spec_path.parent / ".llmbuild")


def open_store(args: argparse.Namespace, spec_path: Path):
    """The store these arguments name, with this machine's stat cache."""
    from llmbuild.locations import stat_cache_path
    from llmbuild.plan.digest import StatCache
    from llmbuild.store.store import Store

    return Store(store_root(args, spec_path), cache=StatCache(stat_cache_path()))


def stage_name(text: str) -> str:
    """A ``--stage`` value: a stage's name, or its node's as plan and show print it
    (``stage:pretrain``)."""
    return text.removeprefix("stage:")
