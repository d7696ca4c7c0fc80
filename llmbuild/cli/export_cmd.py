"""``llmbuild export``: copy built exports out of the store, each into a folder named
after it, as they are used: a PEFT adapter's base path made absolute, so that
``AutoPeftModelForCausalLM.from_pretrained(folder)`` works from anywhere, offline."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from llmbuild.cli.common import add_spec_arguments, add_store_argument, build_command, open_store
from llmbuild.errors import UserError

PEFT_CONFIG = "adapter_config.json"


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    add_store_argument(p)
    p.add_argument("--to", required=True, metavar="DIR", help="where to write the exports")
    p.add_argument(
        "names",
        nargs="*",
        metavar="EXPORT",
        help="exports to copy, e.g. hf@sft or gguf@sft (default: every export of the spec)",
    )
    p.add_argument("--force", action="store_true", help="replace folders that exist in DIR")


def _rebase_peft(folder: Path) -> None:
    config = folder / PEFT_CONFIG
    if not config.is_file():
        return
    data = json.loads(config.read_text())
    base = data.get("base_model_name_or_path")
    if isinstance(base, str) and (folder / base).is_dir():
        data["base_model_name_or_path"] = str((folder / base).resolve())
        config.write_text(json.dumps(data, indent=2, sort_keys=True))


def copy_out(
    store: Any, planned: Any, names: list[str], to: Path, force: bool, build: str
) -> tuple[list[Path], list[str]]:
    """Copy the built exports ``names`` to ``to``; ``build`` is the command that builds
    them, said when one is missing. With no names, every export of the spec that is built
    (at least one): returns the folders written and the exports left out, not built."""
    exports = [n for n in planned.names if n.startswith("export:")]
    wanted = [f"export:{n}" if not n.startswith("export:") else n for n in names] or exports
    unknown = [n for n in wanted if n not in exports]
    if unknown:
        listed = ", ".join(n.split(":", 1)[1] for n in exports) or "none"
        given = names[wanted.index(unknown[0])]  # as the user wrote it
        raise UserError(f"no export {given!r} in this spec (exports: {listed})")
    found = {n: store.lookup(planned.held_key(n)) for n in wanted}
    for state in ("corrupt", "stale"):
        bad = [f"{n} ({f.problem})" for n, f in found.items() if f.state == state]
        if bad:
            raise UserError(f"{state} in the store: {', '.join(bad)}; run `{build}` to rebuild it")
    missing = [n for n, f in found.items() if not f.cached]
    if missing and (names or len(missing) == len(wanted)):
        raise UserError(f"not built yet: {', '.join(missing)}; run `{build}` first")
    targets = {node: to / node.split(":", 1)[1] for node in wanted if node not in missing}
    if to.exists() and not to.is_dir():
        raise UserError(f"{to} is a file: --to names the folder the exports go in")
    there = [t for t in targets.values() if t.exists()]
    if there and not force:  # said before anything is written
        raise UserError(f"{there[0]} exists; pass --force to replace it")
    to.mkdir(parents=True, exist_ok=True)
    written = []
    for node, target in targets.items():
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(
            store.local_dir(found[node].target),
            target,
            ignore=shutil.ignore_patterns("record.json"),
        )
        _rebase_peft(target)
        written.append(target)
    return written, missing


def run(args: argparse.Namespace) -> int:
    from llmbuild.plan import plan_spec
    from llmbuild.spec.load import load_spec

    resolved = load_spec(args.spec, args.overrides, missing_ok=True)
    store = open_store(args, resolved.path)
    planned = plan_spec(resolved, store=store, cache=store.cache)
    if not args.to.strip():
        raise UserError("--to is empty: name the folder the exports go in")
    to = Path(args.to)
    try:
        written, missing = copy_out(store, planned, args.names, to, args.force, build_command(args))
    except OSError as e:
        if not _within(e.filename, to):  # the store's or the cache dir's: said as theirs
            raise
        why = e.strerror or str(e)  # not the exception's own text, which shows PosixPath(...)
        where = f" ({e.filename})" if e.filename else ""
        raise UserError(f"cannot write to {to}: {why}{where}") from None
    for path in written:
        print(path)
    if missing:  # the built ones are out; the rest is said, and the exit status says so
        sys.stderr.write(
            f"not built yet, so not copied: {', '.join(missing)}; run "
            f"`{build_command(args)}` (`llmbuild status` says why a build failed)\n"
        )
        return 1
    return 0


def _within(filename: Any, to: Path) -> bool:
    if not isinstance(filename, (str, bytes, os.PathLike)):
        return True  # an error without a path, while copying to ``to``
    path, base = os.path.abspath(os.fsdecode(filename)), os.path.abspath(to)
    return os.path.commonpath([path, base]) in (path, base)  # in ``to``, or above it
