"""Load a spec file: compose it, validate it, check it, and locate every problem."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path as FsPath
from typing import Any

from pydantic import ValidationError

from llmbuild.errors import Path, Problem, SpecError
from llmbuild.registry import default_registry
from llmbuild.spec.checks import check_paths, cross_check
from llmbuild.spec.complete import complete
from llmbuild.spec.compose import Layer, Origin, apply_override, load_layers
from llmbuild.spec.root import Spec, spec_model
from llmbuild.spec.validate import problems_of

DEFAULT = Origin("default")


@dataclass(frozen=True)
class ResolvedSpec:
    """A validated spec with the origin of each of its values."""

    spec: Spec
    path: FsPath
    display: str
    """The spec's path as shown in messages."""
    origins: dict[Path, Origin]
    files: tuple[str, ...]
    missing: tuple[Problem, ...] = ()
    """Files the spec names that are not there, where loading allowed it (a command
    that reads what was built: the nodes reading them cannot be planned)."""

    def origin(self, path: Path) -> Origin:
        """Where the value at ``path`` was set; ``default`` for values nobody set."""
        return self.origins.get(path, DEFAULT)


def _locate(problem: Problem, origins: dict[Path, Origin], display: str) -> Problem:
    if problem.file is not None:
        return problem
    flag = _flag_below(problem, origins)
    if flag is not None:
        return replace(problem, file=flag)
    for path in (problem.path, *problem.related):
        origin = origins.get(path)
        if origin is not None and origin.source == display and origin.line is not None:
            return replace(problem, file=display, line=origin.line)
    for end in range(len(problem.path), -1, -1):
        origin = origins.get(problem.path[:end])
        if origin is not None:
            if origin.line is None:  # set by a flag
                return replace(problem, file=origin.source)
            return replace(problem, file=origin.source, line=origin.line)
    return replace(problem, file=display)


def _flag_below(problem: Problem, origins: dict[Path, Origin]) -> str | None:
    """The ``--set`` flag behind a problem found at a table that the flag set within: a
    table given whole by one flag (origins are kept per value), or a key of the table
    that the problem names (a table's own check: ``class_weights.romeo must be
    positive``)."""
    n = len(problem.path)
    inside = {p: o for p, o in origins.items() if len(p) > n and p[:n] == problem.path}
    flags = {o.source for o in inside.values() if o.line is None}
    own = origins.get(problem.path)
    whole = own is None or own.line is None
    if whole and len(flags) == 1 and all(o.line is None for o in inside.values()):
        return flags.pop()
    for p, o in inside.items():
        if o.line is None and re.search(rf"(?<![\w.]){re.escape(str(p[n]))}\b", problem.message):
            return o.source
    return None


def _display(path: FsPath) -> str:
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return rel if not rel.startswith("..") else str(path)


def compose(
    path: str | os.PathLike[str], overrides: Sequence[str] = (), registry: Any = None
) -> Layer:
    """The raw spec data with ``extends`` merged in and ``--set`` overrides applied."""
    registry = registry or default_registry()
    fs_path = FsPath(path)
    layer = load_layers(fs_path, _display(fs_path), registry)
    for assignment in overrides:
        layer = apply_override(layer, assignment, registry)
    return layer


def load_spec(
    path: str | os.PathLike[str],
    overrides: Sequence[str] = (),
    registry: Any = None,
    missing_ok: bool = False,
) -> ResolvedSpec:
    """Load, compose, validate and cross-check a spec; raise SpecError with every problem.
    With ``missing_ok``, files the spec names that are not there are no problem: they are
    listed in ``missing`` (for commands that read built artifacts, not the data)."""
    from llmbuild.spec.validate import validate_sections

    registry = registry or default_registry()
    fs_path = FsPath(path)
    display = _display(fs_path)
    layer = compose(fs_path, overrides, registry)
    problems, unfilled = complete(layer, registry)
    found, validated = validate_sections(layer.data, registry, unfilled)
    problems += found
    said = [p.path for p in problems]
    problems += cross_check(layer.data, validated, registry, said, paths=not missing_ok)
    missing = check_paths(layer.data, registry, set(said)) if missing_ok else []
    if not problems:
        model = spec_model(registry)
        try:
            spec = model.model_validate(layer.data)
        except ValidationError as exc:
            problems = problems_of(exc, model, ())
    if problems:
        located = [_locate(p, layer.origins, display) for p in problems]
        located.sort(key=lambda p: (p.file or "", p.line or 0, p.key))
        raise SpecError(_unique(located))
    return ResolvedSpec(
        spec,
        fs_path.resolve(),
        display,
        layer.origins,
        tuple(layer.files),
        tuple(_locate(p, layer.origins, display) for p in missing),
    )


def locate(problem: Problem, resolved: ResolvedSpec) -> Problem:
    """Give a problem found after loading (a missing data file, say) its file and line."""
    return _locate(problem, resolved.origins, resolved.display)


def _unique(problems: list[Problem]) -> list[Problem]:
    seen: set[Any] = set()
    out = []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out
