"""Small real files of every source format, and specs that read them."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

TEXTS = [
    "To be, or not to be, that is the question.",
    "Whether 'tis nobler in the mind to suffer\nthe slings and arrows of outrageous fortune.",
    "All the world's a stage, and all the men and women merely players.",
    "Now is the winter of our discontent made glorious summer by this sun of York.",
    "Unicode: café, naïve, Ærø — ünïcödé ✓ 日本語",
]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_sources(root: Path) -> dict[str, Path]:
    """One file (or directory) per format; returns name -> path."""
    d = root / "data"
    (d / "plays").mkdir(parents=True, exist_ok=True)
    (d / "plays" / "a.txt").write_text("\n\n".join(TEXTS[:3]))
    (d / "plays" / "b.txt").write_text("\n\n".join(TEXTS[3:]))
    rows = [{"text": t, "id": i} for i, t in enumerate(TEXTS)]
    _jsonl(d / "docs.jsonl", rows)
    with gzip.open(d / "docs2.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps({"text": t + " (gz)"}) + "\n" for t in TEXTS))
    import zstandard

    raw = "".join(json.dumps({"text": t + " (zst)"}) + "\n" for t in TEXTS).encode()
    (d / "docs3.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [t + " (parquet)" for t in TEXTS]}), d / "docs.parquet")
    import csv

    for name, delimiter in (("docs.csv", ","), ("docs.tsv", "\t")):
        with (d / name).open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, delimiter=delimiter)  # quotes the commas and line breaks
            w.writerows([["id", "text"], *((i, t + f" ({name})") for i, t in enumerate(TEXTS))])
    import webdataset as wds

    with wds.TarWriter(str(d / "shard.tar")) as w:
        for i, t in enumerate(TEXTS[:3]):
            w.write({"__key__": f"txt{i}", "txt": t + " (tar)"})
        w.write({"__key__": "json0", "json": {"text": TEXTS[3] + " (tar json)"}})
    _jsonl(
        d / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "What is 2+2?"},
                    {"role": "assistant", "content": "4"},
                ]
            },
            {"prompt": "Say hi", "completion": "hi"},
        ],
    )
    _jsonl(
        d / "prefs.jsonl",
        [
            {"prompt": "2+2=", "chosen": "4", "rejected": "5"},
            {"prompt": "3+3=", "chosen": "6", "rejected": "7"},
            # TRL's conversational forms: the prompt a conversation, and implicit
            {
                "prompt": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "3+4="},
                ],
                "chosen": [{"role": "assistant", "content": "7"}],
                "rejected": [{"role": "assistant", "content": "8"}],
            },
            {
                "chosen": [
                    {"role": "user", "content": "1+5="},
                    {"role": "assistant", "content": "6"},
                ],
                "rejected": [
                    {"role": "user", "content": "1+5="},
                    {"role": "assistant", "content": "9"},
                ],
            },
        ],
    )
    _jsonl(
        d / "prompts.jsonl", [{"prompt": "1+1=", "answer": 2}, {"prompt": "2+3=", "answer": "5"}]
    )
    return {
        "plays": d / "plays",
        "docs": d / "docs.jsonl",
        "gz": d / "docs2.jsonl.gz",
        "zst": d / "docs3.jsonl.zst",
        "parquet": d / "docs.parquet",
        "csv": d / "docs.csv",
        "tsv": d / "docs.tsv",
        "tar": d / "shard.tar",
        "chat": d / "chat.jsonl",
        "prefs": d / "prefs.jsonl",
        "prompts": d / "prompts.jsonl",
    }


ROLES = {"chat": "chat", "prefs": "preferences", "prompts": "prompts"}


def spec_text(
    sources: dict[str, str],
    tokenizer: str = 'kind = "byte"',
    clean: str = "",
    extra_source: str = "",
) -> str:
    blocks = []
    for name, path in sources.items():
        block = f'[[data.sources]]\nname = "{name}"\npath = "{path}"\n'
        if name == "plays":
            block += 'format = "text"\nseparator = "\\n\\n"\n'
        if name in ROLES:
            block += f'role = "{ROLES[name]}"\n'
        blocks.append(block + (extra_source if name not in ROLES else ""))
    return f"""\
extends = ["@gpt2-tiny"]
[model]
name = "data-test"
{"".join(blocks)}
[data.clean]
{clean or "min_chars = 1"}
[data.split]
validation = 0.2
[tokenizer]
{tokenizer}
[[stage]]
name = "pretrain"
kind = "pretrain"
steps = 1
global_batch = 1
lr = 1e-3
"""


def write_spec(root: Path, text: str) -> Path:
    path = root / "spec.toml"
    path.write_text(text)
    return path
