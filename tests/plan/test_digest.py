"""Content digests with the stat cache: unchanged files are never read again."""

from __future__ import annotations

import os

import pytest

from llmbuild.plan.digest import MissingInput, StatCache, digest_paths


def test_unchanged_files_are_not_reread(tmp_path):
    for name in "abc":
        (tmp_path / f"{name}.txt").write_text(name * 100)
    cache_file = tmp_path / "cache" / "stat.json"
    cache = StatCache(cache_file)
    first = digest_paths([str(tmp_path / "*.txt")], cache)
    cache.save()
    assert cache.reads == 3
    again = StatCache(cache_file)  # a later process
    assert digest_paths([str(tmp_path / "*.txt")], again) == first
    assert again.reads == 0
    (tmp_path / "b.txt").write_text("changed")
    changed = digest_paths([str(tmp_path / "*.txt")], again)
    assert again.reads == 1 and changed != first


def test_same_size_and_content_rewrite_keeps_digest(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello")
    cache = StatCache()
    before = digest_paths([str(f)], cache)
    os.utime(f, ns=(1, 1))  # new mtime: re-read, same digest
    assert digest_paths([str(f)], cache) == before
    assert cache.reads == 2


def test_paths_never_count_only_content_and_order(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "1.txt").write_text("one")
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "1.txt").write_text("one")
    cache = StatCache()
    assert digest_paths([str(tmp_path / "x")], cache) == digest_paths([str(tmp_path / "y")], cache)


def test_hidden_files_are_skipped_and_missing_paths_raise(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    cache = StatCache()
    before = digest_paths([str(tmp_path)], cache)
    (tmp_path / ".DS_Store").write_text("junk")
    assert digest_paths([str(tmp_path)], cache) == before
    (tmp_path / "__pycache__").mkdir()  # importing a task's utils.py writes these
    (tmp_path / "__pycache__" / "utils.cpython-311.pyc").write_bytes(b"\x00")
    (tmp_path / "old.pyc").write_bytes(b"\x00")
    assert digest_paths([str(tmp_path)], cache) == before
    with pytest.raises(MissingInput, match="matches no file"):
        digest_paths([str(tmp_path / "*.parquet")], cache)


def test_corrupt_cache_file_is_ignored(tmp_path):
    cache_file = tmp_path / "stat.json"
    cache_file.write_text("{not json")
    (tmp_path / "a.txt").write_text("a")
    assert digest_paths([str(tmp_path / "a.txt")], StatCache(cache_file))["files"] == 1


def test_missing_data_is_located_in_the_spec(project):
    from llmbuild.errors import SpecError
    from llmbuild.plan import plan_spec
    from llmbuild.spec.load import load_spec

    (project.parent / "data" / "prefs.jsonl").unlink()
    with pytest.raises(SpecError) as info:
        plan_spec(load_spec(project), cache=StatCache())
    (p,) = info.value.problems
    assert p.line == 19 and p.key == "data.sources[2].path"
    assert "prefs.jsonl: matches no file" in p.message


def test_unordered_and_suffixed_digests(tmp_path):
    for name, text in (("a.jsonl", "one"), ("b.jsonl", "two")):
        (tmp_path / name).write_text(text)
    cache = StatCache()

    def digest(**how):
        return digest_paths([str(tmp_path / "*")], cache, **how)

    ordered, unordered, suffixed = (
        digest(),
        digest(unordered=True),
        digest(unordered=True, suffixes=True),
    )
    (tmp_path / "a.jsonl").rename(tmp_path / "c.jsonl")  # the order of the two files flips
    assert digest() != ordered and digest(unordered=True) == unordered
    assert digest(unordered=True, suffixes=True) == suffixed
    (tmp_path / "c.jsonl").rename(tmp_path / "c.txt")
    assert digest(unordered=True) == unordered  # suffixes do not count unless asked
    renamed = digest(unordered=True, suffixes=True)
    assert renamed["blake3"] != suffixed["blake3"] and renamed["contents"] == suffixed["contents"]


@pytest.mark.parametrize(
    "name, suffix",
    [
        ("a.b.jsonl.gz", ".jsonl.gz"),
        ("notes.TXT", ".txt"),
        ("README", ""),
        (".gz", ""),
        ("x.zst", ".zst"),
    ],
)
def test_format_suffix(name, suffix):
    from llmbuild.plan.digest import format_suffix

    assert format_suffix(f"dir.v2/{name}") == suffix
