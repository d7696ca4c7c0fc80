"""The ``llmbuild`` command line. Each command lives in its own module, imported only when
it runs, so answering ``plan`` or ``validate`` never imports torch, ray or megatron."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence

from llmbuild import __version__

COMMANDS = {
    "validate": ("llmbuild.cli.spec_cmds", "check a spec and report every problem in it"),
    "resolve": ("llmbuild.cli.spec_cmds", "print the resolved spec, each value with its origin"),
    "schema": ("llmbuild.cli.spec_cmds", "write the JSON Schema of specs (for editors)"),
    "docs": ("llmbuild.cli.docs_cmd", "write the markdown reference of every spec field"),
    "plan": ("llmbuild.cli.plan_cmd", "show what a build would do, node by node, and why"),
    "build": ("llmbuild.cli.build_cmd", "build what is not already in the store"),
    "runs": ("llmbuild.cli.store_cmds", "list recorded builds"),
    "reproduce": (
        "llmbuild.cli.build_cmd",
        "rebuild a recorded build from scratch and compare, node by node",
    ),
    "show": ("llmbuild.cli.store_cmds", "print the record of a node or a build"),
    "gc": ("llmbuild.cli.store_cmds", "remove artifacts no recent build references"),
    "generate": ("llmbuild.cli.generate_cmd", "sample text from a built stage"),
    "predict": ("llmbuild.cli.predict_cmd", "a built classifier's labels for texts"),
    "export": ("llmbuild.cli.export_cmd", "copy built exports out of the store into a folder"),
    "scaling": ("llmbuild.cli.scaling_cmd", "fitted scaling laws, and the optimum for a budget"),
    "status": ("llmbuild.cli.status_cmd", "what is built for a spec, and its eval results"),
    "serve": (
        "llmbuild.cli.serve_cmd",
        "serve a built stage or hf export over an OpenAI-compatible HTTP API",
    ),
    "chat": ("llmbuild.cli.chat_cmd", "chat with a built stage or hf export in the terminal"),
}


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="llmbuild", description="A declarative build system for language models."
    )
    parser.add_argument("--version", action="version", version=f"llmbuild {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands = {}
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(
            name, help=help_text, description=help_text[:1].upper() + help_text[1:] + "."
        )
        importlib.import_module(module).add_arguments(name, p)
        commands[name] = p
    return parser, commands


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Options and positionals in any order: a command's list of names may follow its
    options (`export SPEC --to DIR hf@sft`), which plain argparse would refuse, since it
    matches a trailing `nargs="*"` positional together with the first one."""
    parser, commands = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    rest = argv[argv.index(args.command) + 1 :]
    return commands[args.command].parse_intermixed_args(
        rest, argparse.Namespace(command=args.command)
    )


def main(argv: Sequence[str] | None = None) -> int:
    from llmbuild.errors import UserError, describe_os_error
    from llmbuild.locations import cache_dir_problem

    if hasattr(signal, "SIGPIPE"):  # `llmbuild resolve spec.toml | head` ends quietly
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    from llmbuild.run.signals import interrupted_exit, on_sigterm_interrupt

    on_sigterm_interrupt()
    args = _parse(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (which signals.py turns into one)
        code, word = interrupted_exit()
        print(word, file=sys.stderr)
        return code
    except OSError as e:  # the machine's, not the spec's: a full disk, a read-only store
        print(f"error: {cache_dir_problem(e) or describe_os_error(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
