"""``llmbuild chat``: an interactive terminal chat with a built stage or ``hf`` export, in
the model's own chat template, answers streamed as they come (the loop is
``llmbuild.backends.serve.chat``, imported only when the command runs)."""

from __future__ import annotations

import argparse
import logging
import sys

from llmbuild.cli.common import SEED, ranged
from llmbuild.cli.serve_cmd import add_model_arguments, log_to_stderr, open_model
from llmbuild.errors import UserError


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument(
        "--max-tokens", type=ranged(int, 1), default=256, help="longest answer, in tokens"
    )
    p.add_argument(
        "--temperature", type=ranged(float, 0, 2), default=0.7, help="0 is greedy; at most 2"
    )
    p.add_argument("--top-p", type=ranged(float, 0, 1, above=True), default=1.0)
    p.add_argument("--seed", type=SEED, default=None, help="sampling seed (default: random)")
    p.add_argument("--system", help="a system message opening the conversation")


def run(args: argparse.Namespace) -> int:
    served = open_model(args)
    from llmbuild.backends.serve.chat import ChatOptions, chat
    from llmbuild.backends.serve.engine import Engine
    from llmbuild.backends.serve.model import NO_TEMPLATE

    if not served.chats:
        raise UserError(NO_TEMPLATE.format(name=served.name))

    log_to_stderr(args.verbose, level=logging.WARNING)
    if sys.stdin.isatty():
        import readline  # noqa: F401  (line editing and history for input())
    engine = Engine(served, max_batch=1).start()
    options = ChatOptions(args.max_tokens, args.temperature, args.top_p, args.seed, args.system)
    try:
        return chat(engine, options)
    finally:
        engine.stop()
