"""Building the fixture pipeline from tests (and from subprocesses of tests)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from llmbuild.run.build import BuildOptions, BuildOutcome, PlainReporter, build
from llmbuild.spec.load import load_spec
from llmbuild.store.store import Store
from tests.fixture_backend import fixture_registry, invocations


def fixture_build(
    spec: Path,
    store: Path | str,
    overrides=(),
    executor: str = "inline",
    quiet: bool = True,
    versions: dict[str, str] | None = None,
    **options,
) -> BuildOutcome:
    import io

    reporter = PlainReporter(io.StringIO() if quiet else sys.stdout, interval=0.0)
    return build(
        load_spec(spec, overrides),
        Store(str(store)),
        BuildOptions(executor=executor, live=False, **options),
        reporter,
        registry=fixture_registry(versions),
    )


def counts() -> Counter:
    return Counter(invocations())


if __name__ == "__main__":  # python -m tests.run.helpers SPEC STORE [executor]
    from llmbuild.run.signals import interrupted_exit, on_sigterm_interrupt

    on_sigterm_interrupt()  # as the command line does
    try:
        outcome = fixture_build(
            Path(sys.argv[1]),
            sys.argv[2],
            executor=sys.argv[3] if len(sys.argv) > 3 else "inline",
            quiet=False,
        )
    except KeyboardInterrupt:
        code, word = interrupted_exit()
        print(word, flush=True)
        sys.exit(code)
    print(f"summary: {outcome.summary}", flush=True)
    sys.exit(0 if outcome.ok else 1)
