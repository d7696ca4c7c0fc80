"""Line numbers of TOML keys, which ``tomllib`` does not report.

A small scanner over a document that ``tomllib`` has already accepted: it follows table
headers (with array-of-table indices) and ``key = value`` lines, skipping over strings and
values that span lines. Keys inside inline tables and multi-line arrays are not listed;
``line_of`` falls back to the nearest enclosing key that is.
"""

from __future__ import annotations

import re

Path = tuple[str | int, ...]

_BARE = re.compile(r"[A-Za-z0-9_\-]+")


def _parse_key(text: str, i: int) -> tuple[list[str], int]:
    """Parse a dotted key starting at ``text[i]``; return its parts and the index after it."""
    parts: list[str] = []
    while True:
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] in "\"'":
            quote = text[i]
            j = i + 1
            buf = []
            while j < len(text) and text[j] != quote:
                if quote == '"' and text[j] == "\\" and j + 1 < len(text):
                    buf.append(text[j + 1])
                    j += 2
                    continue
                buf.append(text[j])
                j += 1
            parts.append("".join(buf))
            i = j + 1
        else:
            m = _BARE.match(text, i)
            if not m:
                return parts, i
            parts.append(m.group())
            i = m.end()
        while i < len(text) and text[i] in " \t":
            i += 1
        if i < len(text) and text[i] == ".":
            i += 1
            continue
        return parts, i


class _ValueScanner:
    """Tracks brackets and multi-line strings so continuation lines are not read as keys."""

    def __init__(self) -> None:
        self.depth = 0
        self.ml_quote: str | None = None

    @property
    def open(self) -> bool:
        return self.depth > 0 or self.ml_quote is not None

    def feed(self, text: str, i: int = 0) -> None:
        n = len(text)
        while i < n:
            if self.ml_quote:
                end = text.find(self.ml_quote, i)
                if end < 0:
                    return
                i = end + 3
                self.ml_quote = None
                continue
            c = text[i]
            if c == "#":
                return
            if text.startswith('"""', i) or text.startswith("'''", i):
                self.ml_quote = text[i : i + 3]
                i += 3
                continue
            if c in "\"'":
                j = i + 1
                while j < n and text[j] != c:
                    j += 2 if (c == '"' and text[j] == "\\") else 1
                i = j + 1
                continue
            if c in "[{":
                self.depth += 1
            elif c in "]}":
                self.depth -= 1
            i += 1


def key_lines(text: str) -> dict[Path, int]:
    """Map every table header and key assignment of a TOML document to its 1-based line."""
    lines: dict[Path, int] = {}
    aot_count: dict[tuple[str, ...], int] = {}
    table: Path = ()
    scanner = _ValueScanner()

    def resolve(parts: list[str], array_last: bool) -> Path:
        out: list[str | int] = []
        bare: list[str] = []
        for k, part in enumerate(parts):
            out.append(part)
            bare.append(part)
            last = k == len(parts) - 1
            if tuple(bare) in aot_count and not (last and array_last):
                out.append(aot_count[tuple(bare)] - 1)
        return tuple(out)

    for lineno, raw in enumerate(text.splitlines(), start=1):
        if scanner.open:
            scanner.feed(raw)
            continue
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("[["):
            parts, _ = _parse_key(stripped, 2)
            bare = tuple(parts)
            aot_count[bare] = aot_count.get(bare, 0) + 1
            table = resolve(parts, array_last=True) + (aot_count[bare] - 1,)
            lines.setdefault(table[:-1], lineno)
            lines[table] = lineno
            continue
        if stripped.startswith("["):
            parts, _ = _parse_key(stripped, 1)
            table = resolve(parts, array_last=False)
            lines[table] = lineno
            continue
        parts, i = _parse_key(raw, 0)
        if parts and i < len(raw) and raw[i] == "=":
            for k in range(1, len(parts) + 1):
                lines.setdefault(table + tuple(parts[:k]), lineno)
            scanner.feed(raw, i + 1)
    return lines


def line_of(lines: dict[Path, int], path: Path) -> int | None:
    """The line of ``path``, or of its nearest enclosing key that has one."""
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None
