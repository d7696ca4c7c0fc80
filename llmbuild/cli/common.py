"""Arguments and helpers shared by commands."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path


def add_spec_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="path of the spec TOML file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value, e.g. --set stage.pretrain.lr=3e-4 (repeatable)",
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
    from llmbuild.plan.digest import StatCache
    from llmbuild.store.store import Store

    return Store(store_root(args, spec_path), cache=StatCache(stat_cache_path()))


def stat_cache_path() -> Path:
    """Where this machine keeps file digests by stat identity."""
    from llmbuild.locations import cache_dir

    return cache_dir() / "statcache.json"
