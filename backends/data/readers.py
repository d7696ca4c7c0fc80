"""Reading sources: text, jsonl, parquet, csv/tsv and webdataset tar files, plain or gzip/zstd
compressed, local or behind an fsspec URL, into records of the source's role.

Every record comes with its position (``file:line``, row or tar member) so that a bad
one is reported where it is. ``BadRecord`` carries that message; whether it stops the
build or is counted and skipped is the caller's choice (``on_error``).
"""

from __future__ import annotations

import codecs
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llmbuild.spec.data import CHAT_ROLES, Source

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}
CHUNK = 1 << 20
FORMATS = {
    ".txt": "text",
    ".md": "text",
    ".text": "text",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tar": "webdataset",
}


class BadRecord(Exception):
    """A record that cannot be read; the message starts with its position."""

    def __init__(self, where: str, reason: str, kind: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where, self.reason, self.kind = where, reason, kind


@dataclass(frozen=True)
class Record:
    where: str
    data: dict[str, Any]


def split_ext(path: str) -> tuple[str, str | None]:
    """(format extension, compression) of a file name."""
    lower = path.lower()
    compression = None
    for ext, name in COMPRESSIONS.items():
        if lower.endswith(ext):
            compression, lower = name, lower[: -len(ext)]
    dot = lower.rfind(".")
    return (lower[dot:] if dot >= 0 else ""), compression


def file_format(path: str, declared: str) -> str:
    if declared != "auto":
        return declared
    ext, _ = split_ext(path)
    if ext not in FORMATS:
        raise BadRecord(
            path,
            f"cannot tell the format from the extension {ext or '(none)'!r}; "
            "set `format` on the source",
            "setting",
        )
    return FORMATS[ext]


def open_binary(path: str) -> io.BufferedIOBase:
    """A decompressed binary stream of a local path or fsspec URL."""
    _, compression = split_ext(path)
    if "://" in path:
        import fsspec

        raw = fsspec.open(path, "rb").open()
    else:
        raw = open(path, "rb")
    if compression == "gzip":
        import gzip

        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if compression == "zstd":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))
    return raw  # type: ignore[return-value]


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRecord(
            where, f"not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})", "encoding"
        ) from None


def _text_docs(path: str, source: Source) -> Iterator[Record | BadRecord]:
    """Documents of a text file, streamed in chunks (a file may be larger than memory). A
    document holding bytes that are not UTF-8 is yielded as a BadRecord, so skipping it
    keeps the documents after it."""

    sep = source.separator
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    buf, line = "", 1
    with open_binary(path) as f:
        while True:
            chunk = f.read(CHUNK)
            buf += decoder.decode(chunk, final=not chunk)
            if sep is not None:
                *parts, buf = buf.split(sep)
                for part in parts:
                    yield _text_doc(path, line, part, source)
                    line += part.count("\n") + sep.count("\n")
            if not chunk:
                break
    yield _text_doc(path, line, buf, source)


_ESCAPED = re.compile("[\udc80-\udcff]")
"""A byte that is not UTF-8, as ``surrogateescape`` decoding keeps it."""


def _text_doc(path: str, line: int, text: str, source: Source) -> Record | BadRecord:
    """A document of a text file, or a BadRecord at its first byte that is not UTF-8 (the
    decoder kept such bytes as lone surrogates)."""
    found = _ESCAPED.search(text)
    if found is None:
        return Record(f"{path}:{line}", {source.text_field: text})
    bad = found.start()
    at = line + text.count("\n", 0, bad)
    byte = ord(text[bad]) - 0xDC00
    return BadRecord(f"{path}:{at}", f"not valid UTF-8 (byte 0x{byte:02x})", "encoding")


def _jsonl_docs(path: str) -> Iterator[Record | BadRecord]:
    with open_binary(path) as f:
        for n, raw in enumerate(f, start=1):
            where = f"{path}:{n}"
            if n == 1:  # a byte-order mark, as some Windows editors write: no part of the JSON
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                line = _decode(raw, where).strip()
                if not line:
                    continue
                value = json.loads(line)
            except BadRecord as e:
                yield e
                continue
            except json.JSONDecodeError as e:
                yield BadRecord(where, f"invalid JSON: {e.msg} (column {e.colno})", "json")
                continue
            if not isinstance(value, dict):
                yield BadRecord(
                    where, f"expected a JSON object, got {type(value).__name__}", "json"
                )
                continue
            yield Record(where, value)


def _csv_docs(path: str, delimiter: str) -> Iterator[Record | BadRecord]:
    """Rows of a CSV (or tab-separated) file with a header row: each a record of the
    header's fields, every value a string."""
    import csv

    with open_binary(path) as raw:
        # utf-8-sig: a byte-order mark before the header is no part of its first name
        f = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")  # type: ignore[arg-type]
        reader = csv.reader(f, delimiter=delimiter, strict=True)
        try:
            header = next(reader, None)
            if header is None:
                return
            if len(set(header)) < len(header) or not all(header):
                raise BadRecord(
                    f"{path}:1", f"the header row {header} must name each column once", "format"
                )
            line = reader.line_num
            for row in reader:
                where, line = f"{path}:{line + 1}", reader.line_num
                if not row:
                    continue
                if len(row) != len(header):
                    yield BadRecord(
                        where, f"{len(row)} values, but the header names {len(header)}", "row"
                    )
                    continue
                yield Record(where, dict(zip(header, row)))
        except UnicodeDecodeError as e:
            raise BadRecord(path, f"not valid UTF-8 ({e.reason})", "encoding") from None
        except csv.Error as e:
            raise BadRecord(
                f"{path}:{reader.line_num}", f"not readable CSV: {e}", "format"
            ) from None


def _parquet_docs(path: str) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open_binary(path) as f:
        try:
            table = pq.ParquetFile(f)
            batches = table.iter_batches(batch_size=1024)
            row = 0
            for batch in batches:
                for value in batch.to_pylist():
                    yield Record(f"{path}: row {row}", value)
                    row += 1
        except (pa.ArrowException, OSError) as e:  # an empty or cut file, say
            raise BadRecord(path, f"not a readable parquet file: {e}", "format") from None


def _webdataset_docs(path: str, source: Source) -> Iterator[Record]:
    import tarfile

    from llmbuild.backends.data.shards import tar_samples

    try:
        for sample in tar_samples(open_binary(path), path):
            where = f"{path}: sample {sample['__key__']}"
            if "json" in sample:
                try:
                    value = json.loads(_decode(sample["json"], where))
                except json.JSONDecodeError as e:
                    raise BadRecord(
                        where, f"invalid JSON in the .json member: {e.msg}", "json"
                    ) from None
                if not isinstance(value, dict):
                    raise BadRecord(where, "the .json member is not a JSON object", "json")
                yield Record(where, value)
            elif "txt" in sample:
                yield Record(where, {source.text_field: _decode(sample["txt"], where)})
            else:
                raise BadRecord(where, "no .txt or .json member", "field")
    except (tarfile.TarError, EOFError, OSError) as e:
        # webdataset's errors carry (message, stream, url): the message says it
        why = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
        raise BadRecord(path, f"not a readable tar file: {why.split(' @ ')[0]}", "format") from None


def _field(rec: Record, name: str, kinds: tuple[type, ...] = (str,)) -> Any:
    if name not in rec.data:
        has = ", ".join(repr(k) for k in list(rec.data)[:8]) or "no fields"
        raise BadRecord(
            rec.where,
            f"missing field {name!r} (the record has {has}: a source names the fields it "
            "reads, e.g. text_field)",
            "field",
        )
    value = rec.data[name]
    if not isinstance(value, kinds):
        wanted = {str: "a string", int: "an integer", list: "a list"}
        said = " or ".join(wanted.get(k, k.__name__) for k in kinds)
        raise BadRecord(
            rec.where, f"field {name!r} must be {said}, got {type(value).__name__}", "field"
        )
    return value


def _checked_messages(rec: Record, messages: Any, field: str) -> list[dict[str, str]]:
    """``messages`` as a list of {role, content} messages, or a located BadRecord."""
    if not isinstance(messages, list) or not messages:
        raise BadRecord(
            rec.where,
            f"field {field!r} must be a non-empty list of {{role, content}} messages",
            "field",
        )
    out = []
    for i, m in enumerate(messages):
        if not (
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
        ):
            raise BadRecord(
                rec.where, f"{field}: message {i} must have string 'role' and 'content'", "field"
            )
        if m["role"] not in CHAT_ROLES:
            raise BadRecord(
                rec.where,
                f"{field}: message {i} has role {m['role']!r}: a role is one of "
                + ", ".join(repr(r) for r in CHAT_ROLES),
                "field",
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _messages(rec: Record, source: Source) -> list[dict[str, str]]:
    if source.messages_field in rec.data:
        out = _checked_messages(rec, rec.data[source.messages_field], source.messages_field)
        answers = [m["content"] for m in out if m["role"] == "assistant"]
        if answers and not any(a.strip() for a in answers):
            raise BadRecord(
                rec.where, "every assistant message is empty: nothing to learn", "field"
            )
        if not answers:
            roles = ", ".join(dict.fromkeys(repr(m["role"]) for m in out))
            raise BadRecord(
                rec.where,
                f"the conversation has no assistant message (role 'assistant'; its roles: {roles})",
                "field",
            )
        return out
    if source.prompt_field in rec.data:
        return [
            {"role": "user", "content": _field(rec, source.prompt_field)},
            {"role": "assistant", "content": _field(rec, source.completion_field)},
        ]
    raise BadRecord(
        rec.where,
        f"missing field {source.messages_field!r} (or "
        f"{source.prompt_field!r}/{source.completion_field!r})",
        "field",
    )


def _answer(rec: Record, value: Any, field: str) -> str:
    """A preference's answer: a string, or (TRL's conversational form) one assistant
    message."""
    if isinstance(value, str):
        return value
    messages = _checked_messages(rec, value, field)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise BadRecord(
            rec.where,
            f"field {field!r} must be a string or one assistant message (the prompt's turns "
            "go in the prompt field)",
            "field",
        )
    return messages[0]["content"]


def _preference(rec: Record, source: Source) -> dict[str, Any]:
    """A prompt (a string, or a conversation up to the answer) and two answers, in any of
    TRL's forms: strings; conversational, the prompt a list of messages and each answer
    one assistant message; or with the prompt implicit, two whole conversations that
    share all but their last, assistant, message."""
    chosen = _field(rec, source.chosen_field, (str, list))
    rejected = _field(rec, source.rejected_field, (str, list))
    if source.prompt_field not in rec.data and isinstance(chosen, list):
        good = _checked_messages(rec, chosen, source.chosen_field)
        bad = _checked_messages(
            rec, _field(rec, source.rejected_field, (list,)), source.rejected_field
        )
        if not (
            len(good) > 1
            and good[:-1] == bad[:-1]
            and good[-1]["role"] == bad[-1]["role"] == "assistant"
        ):
            raise BadRecord(
                rec.where,
                f"without a {source.prompt_field!r} field, {source.chosen_field!r} and "
                f"{source.rejected_field!r} must be conversations that share every message "
                "but the last, each one's answer (role 'assistant')",
                "field",
            )
        return {"prompt": good[:-1], "chosen": good[-1]["content"], "rejected": bad[-1]["content"]}
    prompt = _field(rec, source.prompt_field, (str, list))
    if isinstance(prompt, list):
        prompt = _checked_messages(rec, prompt, source.prompt_field)
        if prompt[-1]["role"] == "assistant":
            raise BadRecord(
                rec.where,
                f"field {source.prompt_field!r} ends with an assistant message: the prompt is "
                "the conversation up to the answer",
                "field",
            )
    return {
        "prompt": prompt,
        "chosen": _answer(rec, chosen, source.chosen_field),
        "rejected": _answer(rec, rejected, source.rejected_field),
    }


def _label_name(value: Any) -> str | None:
    """A label as its name: a non-empty string or an integer; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        return None
    return str(value).strip()


def _labeled(rec: Record, source: Source) -> dict[str, Any]:
    """A labeled text: one label, or a list of labels (any number, for multi-label
    classifiers; kept sorted and distinct)."""
    raw = _field(rec, source.label_field, (str, int, list))
    names = [_label_name(v) for v in raw] if isinstance(raw, list) else [_label_name(raw)]
    if None in names:
        raise BadRecord(
            rec.where,
            f"field {source.label_field!r} must be a non-empty string, an integer, or a "
            "list of them",
            "field",
        )
    label: Any = sorted(set(names)) if isinstance(raw, list) else names[0]
    out = {"text": _field(rec, source.text_field), "label": label}
    if source.pair_field is not None:
        out["pair"] = _field(rec, source.pair_field)
    return out


def normalise(rec: Record, source: Source) -> dict[str, Any]:
    """The record in the standard form of the source's role."""
    if source.role == "pretrain":
        return {"text": _field(rec, source.text_field)}
    if source.role == "chat":
        return {"messages": _messages(rec, source)}
    if source.role == "preferences":
        pair = _preference(rec, source)
        if pair["chosen"] == pair["rejected"]:  # its loss has no gradient: it teaches nothing
            raise BadRecord(
                rec.where, "chosen and rejected are the same answer: nothing is preferred", "field"
            )
        return pair
    if source.role == "labeled":
        return _labeled(rec, source)
    answer = rec.data.get(source.answer_field)
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise BadRecord(
            rec.where, f"field {source.answer_field!r} must be a string or number", "field"
        )
    return {
        "prompt": _field(rec, source.prompt_field),
        "answer": None if answer is None else str(answer),
    }


def read_records(path: str, source: Source) -> Iterator[Record | BadRecord]:
    """Raw records of one file, in file order. A bad record is yielded (so reading can go
    on past it); a file that cannot be read at all raises BadRecord."""
    return _readable(path, _records(path, source))


def _readable(path: str, records: Iterator[Record | BadRecord]) -> Iterator[Record | BadRecord]:
    """A file that cannot be read or decompressed (a cut gzip, random bytes named .zst)
    raises BadRecord naming it, not the decompressor's bare message."""
    import zlib

    try:
        yield from records
    except BadRecord:
        raise
    except Exception as e:
        if not isinstance(e, (OSError, EOFError, zlib.error)) and not type(e).__module__.startswith(
            "zstandard"
        ):
            raise
        _, compression = split_ext(path)
        what = f"a readable {compression} file" if compression else "readable"
        raise BadRecord(path, f"not {what}: {type(e).__name__}: {e}", "format") from None


def _records(path: str, source: Source) -> Iterator[Record | BadRecord]:
    fmt = file_format(path, source.format)
    if fmt == "text":
        if source.role != "pretrain":
            raise BadRecord(
                path,
                f"text files hold pretrain documents, but the source has role "
                f"{source.role!r}; use jsonl, parquet or csv",
                "setting",
            )
        return _text_docs(path, source)
    if fmt == "jsonl":
        return _jsonl_docs(path)
    if fmt == "parquet":
        return _parquet_docs(path)
    if fmt in ("csv", "tsv"):
        return _csv_docs(path, "," if fmt == "csv" else "\t")
    return _webdataset_docs(path, source)
