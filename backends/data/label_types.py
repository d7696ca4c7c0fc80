"""A labeled source keeps to one JSON type of label. Label names are compared as strings,
so a stray ``"label": 3`` among ``"positive"``/``"negative"`` would otherwise become a
class of its own with one text. Which type is the odd one out needs the whole source, so
each file's pass records its candidates' types and the decision is taken with the others
(in ``run``): a candidate of the rarer type is a bad record, located at its file:line."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from llmbuild.backends.data.readers import BadRecord

STRING, NUMBER = 1, 2
"""The JSON types of a label's names, as bits (a list of names may hold both)."""
EXAMPLES = 5
"""Records of each type kept per file, to locate the odd ones in messages."""


def types_of(value: Any) -> int:
    """The JSON types of a label's names as bits; a list's names each count (a list is a
    multi-label text's labels, not a type of its own)."""
    names = value if isinstance(value, list) else [value]
    return (STRING if any(isinstance(v, str) for v in names) else 0) | (
        NUMBER if any(isinstance(v, (int, float)) for v in names) else 0
    )


class LabelTypes:
    """One file's label types: one byte per candidate (beside its content hash), the
    candidates counted by their bits, and the first few of each type with their position."""

    def __init__(self) -> None:
        self.bits = bytearray()
        self.counts: Counter[int] = Counter()
        self.examples: dict[int, list[tuple[str, Any]]] = {STRING: [], NUMBER: []}

    def add(self, where: str, value: Any) -> None:
        bits = types_of(value)
        self.bits.append(bits)
        self.counts[bits] += 1
        for bit in (STRING, NUMBER):
            if bits & bit and len(self.examples[bit]) < EXAMPLES:
                self.examples[bit].append((where, value))

    def summary(self) -> dict[str, Any]:
        """What a file's pass hands back (plain data: it may cross a Ray task)."""
        return {"bits": bytes(self.bits), "counts": dict(self.counts), "examples": self.examples}


def odd_type(results: list[dict[str, Any]]) -> tuple[int, int]:
    """(the type of label that is the odd one out in the source, 0 if none; how many
    texts have only the other type). The type fewer texts have is odd; at a tie, numbers."""
    counts: Counter[int] = Counter()
    for res in results:
        counts.update(res.get("labels", {}).get("counts", {}))
    strings, numbers = (
        counts[STRING] + counts[STRING | NUMBER],
        counts[NUMBER] + counts[STRING | NUMBER],
    )
    if not strings or not numbers:
        return 0, 0
    odd, usual = (STRING, NUMBER) if strings < numbers else (NUMBER, STRING)
    return odd, counts[usual]


def odd_records(res: dict[str, Any], odd: int, others: int) -> list[BadRecord]:
    """The first few of a file's records whose label is of the odd type."""
    examples = res.get("labels", {}).get("examples", {}).get(odd, []) if odd else []
    return [bad_label(where, value, odd, others) for where, value in examples]


def bad_label(where: str, value: Any, odd: int, others: int) -> BadRecord:
    """The bad record of a label whose JSON type differs from the source's others."""
    kind, usual = ("a number", "strings") if odd == NUMBER else ("a string", "numbers")
    verb = "holds" if isinstance(value, list) else "is"  # a multi-label text's list
    return BadRecord(
        where,
        f"label {json.dumps(value, ensure_ascii=False)} {verb} {kind}, but the source's other "
        f"labels are {usual} ({others} texts), so it would become a label of its own; "
        "fix the record, or write every label the same way",
        "label",
    )
