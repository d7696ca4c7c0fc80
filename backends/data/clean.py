"""Cleaning: Unicode and whitespace normalisation, length filters, exact and near
(MinHash-LSH) deduplication, and the hash-based train/validation split."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from blake3 import blake3

from llmbuild.spec.data import Clean

# Control characters other than tab and newline; Unicode spaces become a plain space.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\ufeff]")
_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
SCHEME = "affine32"  # datasketch's MinHash permutation scheme, fixed for reproducibility
_NEWLINES = re.compile(r"\r\n?|[\u2028\u2029\x85]")


def normalise_text(text: str, clean: Clean) -> str:
    if clean.normalize == "none":
        return text
    text = unicodedata.normalize("NFC", text)
    text = _NEWLINES.sub("\n", text)
    text = _CONTROL.sub("", text)
    text = _SPACES.sub(" ", text)
    return text.strip()


def normalise_record(record: dict[str, Any], clean: Clean) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in record.items():
        if isinstance(v, str):
            out[k] = normalise_text(v, clean)
        elif isinstance(v, list) and k == "label":  # a multi-label text's label names
            out[k] = sorted({normalise_text(name, clean) for name in v})
        elif isinstance(v, list):
            out[k] = [
                {"role": m["role"], "content": normalise_text(m["content"], clean)} for m in v
            ]
        else:
            out[k] = v
    return out


def record_text(record: dict[str, Any]) -> str:
    """The text a record is filtered and deduplicated on."""
    if "label" in record:  # a labeled text (and its pair): deduplicated on the texts
        return "\n".join(record[k] for k in ("text", "pair") if k in record)
    if "text" in record:
        return record["text"]
    if "messages" in record:
        return "\n".join(f"{m['role']}: {m['content']}" for m in record["messages"])
    prompt = record.get("prompt") or ""
    if isinstance(prompt, list):  # a conversation up to the answer
        prompt = "\n".join(f"{m['role']}: {m['content']}" for m in prompt)
    parts = [
        prompt,
        record.get("chosen") or "",
        record.get("rejected") or "",
        record.get("answer") or "",
    ]
    return "\n".join(p for p in parts if p)


def length_problem(text: str, clean: Clean) -> str | None:
    if len(text) < clean.min_chars:
        return "too_short"
    if clean.max_chars is not None and len(text) > clean.max_chars:
        return "too_long"
    return None


def content_hash(text: str) -> bytes:
    return blake3(text.encode("utf-8")).digest(length=16)


def is_validation(digest: bytes, fraction: float) -> bool:
    """Stable per document: adding documents never moves another across the split."""
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def minhash_signature(text: str, clean: Clean) -> Any:
    """MinHash of the document's character shingles (datasketch), as a uint64 array."""
    from datasketch import MinHash

    k = clean.shingle_size
    shingles = {text[i : i + k] for i in range(max(len(text) - k + 1, 1))}
    m = MinHash(num_perm=clean.minhash_perms, seed=1, scheme=SCHEME)
    m.update_batch([s.encode("utf-8") for s in shingles])
    return m.hashvalues


class NearDuplicates:
    """MinHash-LSH index: a document is a near duplicate when it matches a kept one."""

    def __init__(self, clean: Clean) -> None:
        from datasketch import MinHashLSH

        self.clean = clean
        self.lsh = MinHashLSH(threshold=clean.minhash_threshold, num_perm=clean.minhash_perms)

    def seen(self, key: str, signature: Any) -> bool:
        from datasketch import LeanMinHash

        mh = LeanMinHash(seed=1, hashvalues=signature, scheme=SCHEME)
        if self.lsh.query(mh):
            return True
        self.lsh.insert(key, mh)
        return False
