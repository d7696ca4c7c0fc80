"""``llmbuild serve``: an OpenAI-compatible HTTP server for a built stage or ``hf`` export,
and the arguments and model lookup it shares with ``llmbuild chat``. The model, engine
and FastAPI app live in ``llmbuild.backends.serve``, imported only when the command
runs."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
from typing import Any

from llmbuild.cli.common import (
    add_spec_arguments,
    add_store_argument,
    open_store,
    ranged,
    stage_name,
)
from llmbuild.errors import UserError


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The spec and which of its built models to run."""
    add_spec_arguments(p)
    add_store_argument(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--stage",
        type=stage_name,
        help="stage to run, converted to transformers (default: the last)",
    )
    source.add_argument("--export", metavar="NAME", help="hf export to run, e.g. hf@sft")
    p.add_argument("--verbose", action="store_true", help="log the text of each prompt and answer")


def add_arguments(name: str, p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=ranged(int, 0, 65535), default=8000)
    p.add_argument("--api-key", help="require `Authorization: Bearer KEY` on every /v1 route")
    p.add_argument(
        "--max-batch", type=ranged(int, 1), default=16, help="requests decoded together at most"
    )


def _stage_node(planned: Any, stage: str | None) -> str:
    stages = [n for n in planned.names if n.startswith("stage:")]
    if not stages:
        raise UserError("the spec has no stage to run")
    if stage is None:
        return stages[-1]
    if f"stage:{stage}" not in stages:
        names = ", ".join(n.split(":", 1)[1] for n in stages)
        raise UserError(f"no stage {stage!r} in the spec (stages: {names})")
    return f"stage:{stage}"


def open_model(args: argparse.Namespace) -> Any:
    """The ``ServedModel`` of the stage or export these arguments name; a ``UserError``
    saying to build it when it is not built."""
    # Before torch loads OpenMP: its idle workers spin by default, and between the
    # engine's small forward passes they starve the HTTP thread of CPU (30-50x slower
    # answers on 2 cores). Passive workers sleep instead.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from llmbuild.cli.generate_cmd import _built, _export_node, writes_text
    from llmbuild.plan import plan_spec
    from llmbuild.spec.load import load_spec

    resolved = load_spec(args.spec, args.overrides, missing_ok=True)
    store = open_store(args, resolved.path)
    planned = plan_spec(resolved, store=store, cache=store.cache)
    if args.export:
        node = _export_node(resolved, args.export, args.command)
        export_dir = _built(store, planned, node, args).path
        from llmbuild.backends.serve.model import from_export

        return from_export(export_dir, node)
    node = _stage_node(planned, args.stage)
    writes_text(resolved, node.split(":", 1)[1], args.command)
    stage = _built(store, planned, node, args)
    tokenizer = _built(store, planned, "tokenizer", args)
    from llmbuild.backends.serve.model import from_stage

    return from_stage(stage, tokenizer, node)


def log_to_stderr(verbose: bool, level: int = logging.INFO) -> None:
    """The engine's log lines on stderr; ``verbose`` adds each prompt and answer."""
    logger = logging.getLogger("llmbuild.serve")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s.%(msecs)03d %(name)s: %(message)s", "%H:%M:%S")
    )
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else level)
    logger.propagate = False


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535 (got {args.port})")
    if args.max_batch < 1:
        raise UserError(f"--max-batch must be at least 1 (got {args.max_batch})")
    sock = bind(args.host, args.port)  # before the model loads: a busy port fails at once
    with sock:
        served = open_model(args)
        import uvicorn

        from llmbuild.backends.serve.api import create_app
        from llmbuild.backends.serve.engine import Engine

        log_to_stderr(args.verbose)
        engine = Engine(served, max_batch=args.max_batch).start()
        url = f"http://{args.host}:{args.port}/v1"
        sys.stderr.write(f"serving {served.name} at {url} (OpenAI API; Ctrl-C stops)\n")
        if not served.chats:
            from llmbuild.backends.serve.model import NO_TEMPLATE

            sys.stderr.write(f"note: {NO_TEMPLATE.format(name=served.name)}\n")
        try:
            config = uvicorn.Config(
                create_app(engine, args.api_key), host=args.host, port=args.port
            )
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            engine.stop()
    return 0


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` for the server to listen on; a ``UserError`` when
    the port is taken or the address is not this machine's."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as e:
        raise UserError(f"--host {host}: {e.strerror}") from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        hint = "; pick another --port" if e.errno == errno.EADDRINUSE else ""
        raise UserError(f"cannot serve at {host}:{port}: {e.strerror}{hint}") from None
    return sock
