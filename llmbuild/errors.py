"""Errors that are the user's to fix: reported plainly, never as a traceback (exit code 2)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

Path = tuple[str | int, ...]


class UserError(Exception):
    """A mistake in the user's input; the CLI prints it and exits with code 2."""


OS_HINTS = {
    "ENOSPC": "the disk is full: free some space, or build into another store with --store",
    "EDQUOT": "the disk quota is used up: free some space, or use another store (--store)",
    "EROFS": "the filesystem is read-only: use a writable store (--store)",
    "EACCES": "no permission: check the owner and mode of that path, or use --store",
    "ENOTDIR": "a path on the way is a file, not a directory",
}


def describe_os_error(e: OSError) -> str:
    """An operating-system failure (a full disk, a read-only store) said plainly, with
    the path and what to do, instead of a traceback."""
    import errno

    name = errno.errorcode.get(e.errno or 0, "")
    where = f" ({e.filename})" if e.filename else ""
    hint = f"; {OS_HINTS[name]}" if name in OS_HINTS else ""
    return f"{e.strerror or e}{where}{hint}"


@dataclass(frozen=True)
class Problem:
    """One mistake in a spec, located at a file line and a dotted TOML key."""

    message: str
    path: Path = ()
    file: str | None = None
    line: int | None = None
    column: int | None = None
    related: tuple[Path, ...] = ()
    """Other keys the problem involves; it is located at whichever the spec itself set."""

    @property
    def key(self) -> str:
        return format_path(self.path)

    def __str__(self) -> str:
        where = self.file or "<spec>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.key}: {self.message}" if self.path else f"{where}: {self.message}"


class SpecError(UserError):
    """Every problem found in a spec, reported together."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''} in the spec:"
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


def format_path(path: Path) -> str:
    """``('stage', 1, 'lr')`` -> ``stage[1].lr``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A "; did you mean 'x'?" suffix, or "" when nothing is close."""
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def human_bytes(n: float) -> str:
    """``1.5 GiB``, ``3.2 TiB``; past exbibytes, in powers of ten."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            return f"{n:.1f} {unit}" if n < 1024 else f"{n:.3g} B"
        n /= 1024
    return f"{n:.3g} B"
