"""The source node's shard writer: webdataset's bytes, without webdataset's torch."""

from __future__ import annotations

import json
import subprocess
import sys

from llmbuild.backends.data.shards import ShardWriter, iter_shard

from tests.conftest import REPO


def _samples(n: int) -> list[dict]:
    rows = [{"text": f"document {i} " + "x" * (i * 37 % 500), "id": i} for i in range(n)]
    return [
        {"__key__": f"{i:012d}", "jsonl": (json.dumps(r) + "\n").encode()}
        for i, r in enumerate(rows)
    ]


def test_same_bytes_as_webdataset_shard_writer(tmp_path):
    import webdataset as wds

    samples = _samples(60)
    ours = ShardWriter(str(tmp_path / "ours-%06d.tar"), maxsize=4000)
    theirs = wds.ShardWriter(str(tmp_path / "theirs-%06d.tar"), maxsize=4000, verbose=0, mtime=0.0)
    for s in samples:
        ours.write(s)
        theirs.write(s)
    ours.close()
    theirs.close()
    mine = sorted(tmp_path.glob("ours-*.tar"))
    assert len(mine) > 3  # the size bound rolled over to new shards
    assert [p.name[4:] for p in mine] == [p.name[6:] for p in sorted(tmp_path.glob("theirs-*"))]
    for p in mine:
        assert p.read_bytes() == (tmp_path / f"theirs{p.name[4:]}").read_bytes()
    read = [r for p in mine for r in iter_shard(p)]
    assert [r["id"] for r in read] == list(range(60))
    samples_back = [s for p in mine for s in wds.WebDataset(str(p), shardshuffle=False)]
    assert len(samples_back) == 60  # and webdataset reads them


def test_a_writer_without_samples_leaves_no_shard(tmp_path):
    ShardWriter(str(tmp_path / "empty-%06d.tar"), maxsize=1000).close()
    assert list(tmp_path.iterdir()) == []


def test_a_source_node_loads_no_torch(tmp_path):
    """The cleaning node in a fresh interpreter: it writes shards without torch or Ray."""
    (tmp_path / "a.txt").write_text("To be, or not to be.\n\nThat is the question.\n" * 3)
    (tmp_path / "spec.toml").write_text(
        'extends = ["@gpt2-tiny"]\n[model]\nname = "light"\n'
        '[[data.sources]]\nname = "plays"\npath = "a.txt"\nseparator = "\\n\\n"\n'
        '[tokenizer]\nkind = "char"\n[[stage]]\nname = "pretrain"\nkind = "pretrain"\n'
        "steps = 2\nglobal_batch = 2\nlr = 1e-3\n"
    )
    args = ["build", str(tmp_path / "spec.toml"), "--executor", "inline", "--plain"]
    args += ["--only", "source:plays", "--store", str(tmp_path / "store")]
    code = (
        "import sys\nfrom llmbuild.cli import main\n"
        f"assert main({args!r}) == 0\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'megatron', 'ray'}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert list((tmp_path / "store").glob("artifacts/*/train-000000.tar"))
