"""The command line: validate, resolve, schema, plan (text and JSON), and number arguments."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llmbuild.cli import main


def test_validate(project, capsys, tmp_path):
    assert main(["validate", str(project)]) == 0
    assert "ok (3 sources, 3 stages, 2 evals, 1 exports)" in capsys.readouterr().out
    # a command line written for the other commands works too, and makes no store
    assert main(["validate", str(project), "--store", str(tmp_path / "store")]) == 0
    assert not (tmp_path / "store").exists()


def test_resolve_shows_origins(project, capsys):
    assert main(["resolve", str(project), "--set", "stage.sft.lr=1e-5"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split(" = ")[0]: ln for ln in out.splitlines()}
    assert lines["architecture.layers"].endswith("presets/gpt2-tiny.toml:4")
    assert lines["stage[1].lr"].endswith("# --set stage.sft.lr=1e-5")
    assert lines["stage[0].eps"].endswith("# default")
    assert main(["resolve", str(project), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["spec"]["model"]["name"] == "fixture"
    assert data["origins"]["model.seed"].endswith("spec.toml:5")


def test_resolve_leaves_out_the_special_tokens_a_pretrained_tokenizer_has_of_its_own(
    tmp_path, capsys
):
    from tests.checkpoints import import_spec, write_checkpoint

    spec = import_spec(tmp_path, write_checkpoint(tmp_path / "ck", "gpt2"))
    assert main(["resolve", str(spec)]) == 0
    lines = {ln.split(" = ")[0]: ln for ln in capsys.readouterr().out.splitlines()}
    assert lines["tokenizer.kind"].startswith('tokenizer.kind = "pretrained"')
    assert not {"tokenizer.bos_token", "tokenizer.eos_token", "tokenizer.pad_token"} & set(lines)


def test_schema(tmp_path, capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "stage" in schema["properties"]
    out = tmp_path / "new" / "s.json"  # its folder made, as docs -o makes one
    assert main(["schema", "-o", str(out)]) == 0
    assert json.loads(out.read_text()) == schema


def test_plan_text_and_json(project, capsys):
    assert main(["plan", str(project)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("spec ")
    assert out[-1] == "14 nodes, 0 cached, 14 to build"
    assert main(["plan", str(project), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["nodes"]) == 14 and len(data["spec_hash"]) == 64


def test_console_script_is_installed(project):
    r = subprocess.run(["llmbuild", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("llmbuild ")
    r = subprocess.run(
        [sys.executable, "-m", "llmbuild", "plan", str(project)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def test_commands_work_when_the_cache_dir_cannot_be_written(project, tmp_path, monkeypatch, capsys):
    """The stat cache only saves hashing: a cache dir that cannot be made (here, under a
    regular file; a read-only home does the same) costs one note, not the command."""
    (tmp_path / "a-file").write_text("")
    cache = tmp_path / "a-file" / "cache"
    monkeypatch.setenv("LLMBUILD_CACHE_DIR", str(cache))
    store = ["--store", str(tmp_path / "store")]
    assert main(["plan", str(project), *store]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().endswith("14 nodes, 0 cached, 14 to build")
    assert "error" not in captured.err
    (note,) = [ln for ln in captured.err.splitlines() if ln.startswith("note: ")]
    assert str(cache) in note and "LLMBUILD_CACHE_DIR" in note
    assert main(["validate", str(project)]) == 0
    assert main(["status", str(project), *store]) == 0
    assert "error" not in capsys.readouterr().err


def test_a_remote_store_build_with_no_writable_cache_dir_says_so_once(
    project, tmp_path, monkeypatch, capsys
):
    """A remote store's work dirs live in the cache dir: a build that cannot make them
    fails before any node starts, naming the cache dir and the fix."""
    (tmp_path / "a-file").write_text("")
    cache = tmp_path / "a-file" / "cache"
    monkeypatch.setenv("LLMBUILD_CACHE_DIR", str(cache))
    assert main(["build", str(project), "--store", "memory://no-cache-dir"]) != 0
    err = capsys.readouterr().err
    assert err.count("error: ") == 1, err
    assert f"llmbuild's cache dir {cache} cannot be written" in err
    assert "LLMBUILD_CACHE_DIR" in err and "running" not in err


def test_naming_the_cache_dir_creates_nothing(project, tmp_path, monkeypatch):
    """A remote store keeps its work dirs in the cache dir; planning with one makes no
    directory there, only the stat cache file it writes."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("LLMBUILD_CACHE_DIR", str(cache))
    assert main(["plan", str(project), "--store", "memory://naming-creates-nothing"]) == 0
    assert sorted(p.name for p in cache.iterdir()) == ["statcache.json"]


def test_an_os_error_in_the_cache_dir_names_it(tmp_path, monkeypatch):
    """Where the cache is needed (a remote store's work dirs and fetched artifacts), its
    failure says how to move the cache, not to pick another store."""
    import errno

    from llmbuild.locations import cache_dir_problem

    monkeypatch.setenv("LLMBUILD_CACHE_DIR", str(tmp_path / "cache"))
    inside = OSError(errno.EROFS, "Read-only file system", str(tmp_path / "cache" / "work"))
    said = cache_dir_problem(inside)
    assert said == (
        f"Read-only file system ({tmp_path / 'cache' / 'work'}): llmbuild's cache dir "
        f"{tmp_path / 'cache'} cannot be written; set LLMBUILD_CACHE_DIR to a writable directory"
    )
    assert cache_dir_problem(OSError(errno.EROFS, "Read-only file system", "/elsewhere")) is None
    assert cache_dir_problem(OSError(errno.EROFS, "Read-only file system")) is None


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "s.toml", "--top-p", "0"], "--top-p: must be a number > 0 and <= 1 (got 0)"),
        (
            ["generate", "s.toml", "--top-p", "nan"],
            "--top-p: must be a finite number > 0 and <= 1 (got nan)",
        ),
        (["generate", "s.toml", "--max-new-tokens", "0"], "must be an integer >= 1 (got 0)"),
        (["generate", "s.toml", "--temperature", "-1"], "--temperature: must be a number >= 0"),
        (
            ["generate", "s.toml", "--top-k", "many"],
            "--top-k: must be an integer >= 1 (got 'many')",
        ),
        (["chat", "s.toml", "--seed", str(2**64)], "--seed: must be an integer >= 0 and <= "),
        (["gc", "--keep", "-1"], "--keep: must be an integer >= 0 (got -1)"),
        (["serve", "s.toml", "--port", "70000"], "--port: must be an integer >= 0 and <= 65535"),
        (["scaling", "s.toml", "--budget", "0"], "--budget: must be a number > 0 (got 0)"),
        (
            ["generate", "s.toml", "--temperature", "inf"],
            "--temperature: must be a finite number >= 0 (got inf)",
        ),
    ],
)
def test_numbers_out_of_range_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_generate_writes_its_text_as_it_comes_and_holds_back_what_may_change(capsys):
    """A reply streamed a token (here a byte) at a time: no half character, no piece of
    an end-of-turn marker, the same text in the end as written at once."""
    from llmbuild.backends.tokenizer.continuation import Continuation

    from llmbuild.cli.generate_cmd import _Stream

    def decode(ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    ids = list("Paris, ville lumière.<|im_end|> and on".encode())
    writes = []
    with _Stream(Continuation(decode, []), ("<|im_end|>",), lead="") as stream:
        for n in range(1, len(ids) + 1):
            stream.show(ids[:n])
            writes.append(capsys.readouterr().out)
        stream.show(ids, last=True)
    writes.append(capsys.readouterr().out)
    assert "".join(writes) == "Paris, ville lumière.\n"
    assert all("\ufffd" not in w and "<" not in w for w in writes)
    assert "".join(writes[: len("Paris, ville")]).startswith("Paris")  # before the end

    # A long text is decoded from its last space shown on, not whole at every token.
    lengths: list[int] = []

    def counted(ids: list[int]) -> str:
        lengths.append(len(ids))
        return decode(ids)

    long = list(("word " * 200 + "end").encode())
    with _Stream(Continuation(counted, []), (), "") as stream:
        for n in range(1, len(long) + 1):
            stream.show(long[:n])
        stream.show(long, last=True)
    assert capsys.readouterr().out == "word " * 200 + "end\n"
    assert max(lengths) <= 4 + len(b"word ")  # the context kept, and a word

    # Ctrl-C: what was written stays, on a line of its own
    with pytest.raises(KeyboardInterrupt), _Stream(Continuation(decode, []), (), "Once") as stream:
        stream.show(list(b" upon"))
        raise KeyboardInterrupt
    assert capsys.readouterr().out == "Once upon\n"
