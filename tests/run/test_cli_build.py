"""build, runs, show, gc and reproduce from the command line (fixture backends)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

import llmbuild.registry
from llmbuild.cli import main
from tests.fixture_backend import fixture_registry, invocations, reset, set_control
from tests.run.helpers import counts

LR = ["--set", "stage.sft.lr=1e-5"]


@pytest.fixture
def cli(fixture_env, monkeypatch, project):
    monkeypatch.setattr(llmbuild.registry, "_default", fixture_registry())
    return project


def test_build_then_cached(cli, capsys):
    store = cli.parent / ".llmbuild"
    assert main(["build", str(cli), "--executor", "inline", "--plain"]) == 0
    out = capsys.readouterr().out
    assert f"into {store}" in out
    assert "built    stage:pretrain" in out
    assert out.strip().splitlines()[-1].endswith("14 nodes, 14 built")
    # inline, one node at a time: each is said built before the next one runs
    said = [
        ln.split()[1:3] for ln in out.splitlines() if ln.split()[1:2] in (["running"], ["built"])
    ]
    assert len(said) == 28 and all(
        said[i] == ["running", said[i + 1][1]] and said[i + 1][0] == "built"
        for i in range(0, 28, 2)
    ), said
    reset()
    assert main(["build", str(cli), "--executor", "inline", "--plain"]) == 0
    assert capsys.readouterr().out.strip().endswith("14 nodes, 14 cached")
    assert counts() == {}
    assert main(["plan", str(cli)]) == 0
    assert capsys.readouterr().out.strip().endswith("14 nodes, 14 cached, 0 to build")
    assert main(["plan", str(cli), "--set", "stage.sft.lr=1e-5"]) == 0
    plan = capsys.readouterr().out
    assert "stage:sft" in plan and "stage.sft.lr 2e-5 -> 1e-5" in plan


def test_a_build_leaves_no_library_progress_bars_in_its_output(cli, monkeypatch):
    """Libraries' tqdm bars (transformers converting a GGUF file, lm-eval's requests)
    would break into the build's own progress lines: the processes that run its nodes
    (Ray's workers inherit the build's environment) show none."""
    import subprocess
    import sys

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    assert main(["build", str(cli), "--executor", "inline", "--plain"]) == 0
    bar = "from tqdm import tqdm; import sys; sys.exit(0 if tqdm(range(3)).disable else 1)"
    assert subprocess.run([sys.executable, "-c", bar], env=dict(os.environ)).returncode == 0


def test_a_librarys_warning_goes_to_its_nodes_log_not_the_console(cli, capsys):
    import logging

    set_control(library_warning=["tokenizer"])
    assert main(["build", str(cli), "--executor", "inline", "--plain"]) == 0
    out, err = capsys.readouterr()
    assert "a library's warning" not in out + err
    assert main(["show", "tokenizer", "--store", str(cli.parent / ".llmbuild")]) == 0
    log = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("log"))
    logged = Path(log.split()[-1]).read_text()
    assert "WARNING tokenizer: a library's warning" in logged
    files = [getattr(h, "baseFilename", "") for h in logging.getLogger().handlers]
    assert not [f for f in files if f.endswith("node.log")]  # the node's, gone with it


def test_failed_build_exits_nonzero_and_names_skipped(cli, capsys):
    set_control(fail=["stage:pretrain"])
    assert main(["build", str(cli), "--executor", "inline", "--plain"]) == 1
    err = capsys.readouterr().err
    assert "failed: stage:pretrain: RuntimeError: stage:pretrain was told to fail (log: " in err
    assert "skipped (an input failed): stage:sft, stage:dpo" in err
    set_control(mistake=["stage:pretrain"])  # a message that names its node: named once
    assert main(["build", str(cli), "--executor", "inline", "--plain"]) == 1
    assert "failed: stage:pretrain: the data says no (log: " in capsys.readouterr().err
    set_control(fail=["stage:pretrain"])
    # status says so, with the log, until the stage is built
    assert main(["status", str(cli)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("failed"))
    assert line.startswith("failed   stage:pretrain when it last ran; its log: "), out
    log = line.split("its log: ")[1]
    assert "was told to fail" in open(log).read()
    # the failed attempt's partial files are gone; its log stays
    assert [p.name for p in Path(log).parent.iterdir()] == ["node.log"]
    set_control()
    assert main(["build", str(cli), "--executor", "inline", "--plain"]) == 0
    capsys.readouterr()
    assert main(["status", str(cli), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["failed"] == {}


def test_runs_show_reproduce_gc(cli, capsys, monkeypatch):
    monkeypatch.chdir(cli.parent)
    assert main(["build", str(cli), "--executor", "inline", "--plain"]) == 0
    spec_hash = capsys.readouterr().out.strip().splitlines()[-1].split()[1].rstrip(":")
    assert main(["runs"]) == 0
    assert capsys.readouterr().out.startswith(spec_hash)
    assert main(["runs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["ok"] is True
    assert main(["show", "stage:sft"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("stage:sft ") and "input from: stage:pretrain" in shown
    assert "output out.txt" in shown and "python 3." in shown and "llmbuild 0." in shown
    log = shown.split("\n  log ")[1].split()[0]  # the node's build log, kept in the store
    assert "building stage:sft" in open(log.removeprefix("file://")).read()
    assert main(["show", spec_hash]) == 0
    assert "build " in capsys.readouterr().out
    # with two variants of a node built, show says which it shows and names the other
    assert main(["build", str(cli), "--executor", "inline", "--plain"] + LR) == 0
    capsys.readouterr()
    assert main(["show", "stage:sft"]) == 0
    shown = capsys.readouterr().out
    other = shown.splitlines()[1]
    assert other.startswith("  the newest of 2 built in this store; the others: "), other
    run = shown.split(" by build ", 1)[1].split()[0]  # the run it names can be shown
    assert main(["show", run]) == 0 and capsys.readouterr().out.startswith("build ")
    assert main(["show", "nothing-like-this"]) == 2
    assert main(["show", ""]) == 2  # not the newest artifact of all
    assert "show what?" in capsys.readouterr().err
    assert main(["show", "stage:stf"]) == 2  # a misspelt name
    assert "nothing named 'stage:stf'" in (err := capsys.readouterr().err)
    assert err.rstrip().endswith("did you mean 'stage:sft'?"), err
    assert main(["show", "books"]) == 2  # two nodes answer to it: neither is picked
    assert "'books' is ambiguous: source:books, tokenize:books" in capsys.readouterr().err
    assert main(["show", "stage:sft", "--store", str(cli.parent / "elsewhere")]) == 2
    assert "nothing is built in this store; name the one the build used with --store" in (
        capsys.readouterr().err
    )
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(cli.parent / "tmp"))
    (cli.parent / "tmp").mkdir()
    assert main(["reproduce", spec_hash, "--executor", "inline", "--plain"]) == 0
    out = capsys.readouterr().out
    assert "14 identical" in out
    assert not list((cli.parent / "tmp").iterdir())  # its scratch store is gone
    kept = cli.parent / "kept"
    assert (
        main(["reproduce", spec_hash, "--executor", "inline", "--plain", "--scratch", str(kept)])
        == 0
    )
    assert "14 identical" in capsys.readouterr().out and (kept / "artifacts").is_dir()
    # again into the kept one: its nodes would be found cached there, not rebuilt
    again = ["reproduce", spec_hash, "--executor", "inline", "--plain", "--scratch", str(kept)]
    assert main(again) == 2
    assert "already holds built nodes: reproduce rebuilds every node" in capsys.readouterr().err
    again[-1] = str(cli.parent / ".llmbuild")  # the store itself
    assert main(again) == 2 and "already holds built nodes" in capsys.readouterr().err
    assert main(["gc", "--keep", "0", "--dry-run"]) == 0
    assert "would remove 19 artifacts" in capsys.readouterr().out


def test_a_ray_address_where_nothing_listens_fails_at_once(cli, capsys):
    import socket
    import time

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    began = time.monotonic()
    args = ["build", str(cli), "--ray-address", f"127.0.0.1:{port}", "--plain"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"could not connect to the Ray cluster at 127.0.0.1:{port}" in err
    assert "token authentication" not in err  # nothing answers: no token would help
    assert f"nothing answers at 127.0.0.1:{port}" in err and "--executor inline" in err
    assert time.monotonic() - began < 30
    assert main(["build", str(cli), "--ray-address", "no-port", "--plain"]) == 2
    assert "'no-port' is not host:port" in capsys.readouterr().err
    # an address the inline executor would ignore is said, not dropped
    assert main([*args, "--executor", "inline"]) == 2
    assert "but --executor inline builds in this process" in capsys.readouterr().err


def test_a_source_file_edited_while_its_node_runs_is_not_stored_under_the_old_key(cli, capsys):
    from tests.conftest import artifact_dirs

    store = cli.parent / ".llmbuild"
    edited = cli.parent / "data" / "books" / "a.txt"
    set_control(edit={"source:books": str(edited)})
    assert main(["build", str(cli), "--executor", "inline", "--plain"]) == 1
    err = capsys.readouterr().err
    assert "failed: source:books: InputChanged: the files of" in err
    assert "build again to read them as they are now" in err
    assert not artifact_dirs(store, "source:books")
    reset()  # built again, the node reads the file as it is now: stored under its new key
    assert main(["build", str(cli), "--executor", "inline", "--plain"]) == 0
    assert capsys.readouterr().out.strip().endswith("14 nodes, 2 cached, 12 built")


def test_plan_says_why_against_what_this_spec_file_built_last(cli, capsys):
    other = cli.parent / "other.toml"  # another spec, the same store beside them
    other.write_text(cli.read_text().replace("lr = 2e-5", "lr = 5e-5"))
    assert main(["build", str(cli), "--executor", "inline", "--plain"]) == 0
    assert main(["build", str(other), "--executor", "inline", "--plain"]) == 0
    capsys.readouterr()
    assert main(["plan", str(cli), "--set", "stage.sft.lr=1e-5"]) == 0
    out = capsys.readouterr().out
    assert "stage.sft.lr 2e-5 -> 1e-5" in out and "5e-5" not in out
    assert main(["plan", str(other), "--set", "stage.sft.lr=1e-5"]) == 0
    assert "stage.sft.lr 5e-5 -> 1e-5" in capsys.readouterr().out


def test_a_moved_data_file_hides_only_what_is_made_from_it(cli, capsys):
    """Raw data moved away after a build: status and export still read what does not
    come from it, say what they cannot look up, and build still refuses."""
    assert main(["build", str(cli), "--executor", "inline", "--plain"]) == 0
    prefs = cli.parent / "data" / "prefs.jsonl"
    prefs.rename(cli.parent / "prefs.jsonl")
    capsys.readouterr()
    assert main(["status", str(cli), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert set(shown["unavailable"]) == {
        "source:prefs",
        "tokenize:prefs",
        "stage:dpo",
        "export:hf@dpo",
    }
    assert "stage:sft" in shown["artifacts"] and "stage:dpo" not in shown["artifacts"]
    assert main(["status", str(cli)]) == 0
    out = capsys.readouterr().out
    assert "spec.toml:19: data.sources[2].path: " in out, out
    assert (
        "prefs.jsonl: matches no file (not shown: source:prefs, tokenize:prefs, stage:dpo, " in out
    )
    assert out.splitlines()[1].startswith("missing  ")
    assert main(["export", str(cli), "--to", str(cli.parent / "out")]) == 2
    err = capsys.readouterr().err
    assert "export:hf@dpo cannot be looked up: it is made from a file that is missing" in err
    assert main(["build", str(cli), "--executor", "inline", "--plain"]) == 2
    assert "prefs.jsonl: matches no file" in capsys.readouterr().err
    # with every file gone, nothing can be looked up: said, not "nothing built yet"
    books = cli.parent / "data" / "books"
    books.rename(cli.parent / "books")
    (cli.parent / "data" / "chat.jsonl").rename(cli.parent / "chat.jsonl")
    assert main(["status", str(cli)]) == 0
    out = capsys.readouterr().out
    assert "nothing to show: every node is made from a missing file" in out, out
    (cli.parent / "books").rename(books)
    (cli.parent / "chat.jsonl").rename(cli.parent / "data" / "chat.jsonl")
    # a missing item of a list of files names the nodes that read the list
    assert main(["status", str(cli), "--set", 'eval.ppl.files=["data/gone.txt"]']) == 0
    out = capsys.readouterr().out
    assert "gone.txt: matches no file (not shown: eval:ppl@pretrain, eval:ppl@sft)" in out, out


def test_status_names_a_kept_checkpoint_and_its_step(cli, capsys):
    """A stage that failed or was stopped after a checkpoint: status says the next build
    resumes it, from which step."""
    from llmbuild.store.store import Store, mark_checkpoint

    set_control(sleep={"stage:pretrain": 0.2}, fail=["stage:pretrain"])
    assert main(["build", str(cli), "--executor", "inline", "--plain"]) == 1
    capsys.readouterr()
    assert main(["status", str(cli)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("failed"))
    assert line.startswith(
        "failed   stage:pretrain when it last ran (the next build will resume from step 2); "
        "its log: "
    ), line
    set_control()
    assert main(["build", str(cli), "--executor", "inline", "--plain"]) == 0
    capsys.readouterr()
    assert main(["plan", str(cli), "--set", "stage.sft.lr=1e-5", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    (sft,) = [n for n in planned["nodes"] if n["name"] == "stage:sft"]
    mark_checkpoint(Store(str(cli.parent / ".llmbuild")).work_dir(sft["key"]), 5)  # a kill
    assert main(["status", str(cli), "--set", "stage.sft.lr=1e-5"]) == 0
    out = capsys.readouterr().out
    assert "stopped  stage:sft before it ended; the next build will resume from step 5" in out
    assert main(["status", str(cli), "--set", "stage.sft.lr=1e-5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["resume"] == {"stage:sft": "resume from step 5"}


def test_gc_keeps_everything_while_a_build_record_cannot_be_read(cli, capsys):
    """A cut-short record of the newest build: gc cannot tell what it kept, so it removes
    nothing and says which file; runs warns that the build is left out."""
    store = cli.parent / ".llmbuild"
    assert main(["build", str(cli), "--executor", "inline", "--plain"]) == 0
    (record,) = (store / "builds").iterdir()
    record.write_text(record.read_text()[:50])
    capsys.readouterr()
    assert main(["gc", "--store", str(store), "--keep", "1"]) == 2
    err = capsys.readouterr().err
    assert f"cannot read builds/{record.name}" in err and "gc would not know" in err, err
    assert len(list((store / "artifacts").iterdir())) == 14
    assert main(["runs", "--store", str(store)]) == 0
    assert f"warning: builds/{record.name} cannot be read" in capsys.readouterr().err
    for command in ("gc", "runs"):  # a misspelt --store is said, not an empty store
        assert main([command, "--store", str(cli.parent / "nothing-here")]) == 2
        assert "no store at" in capsys.readouterr().err
    # a store below a file can never be made: plan says so instead of planning into it
    beside = cli.parent / "a-file"
    beside.write_text("")
    assert main(["plan", str(cli), "--store", str(beside / "store")]) == 2
    assert f"{beside} is a file, not a directory" in capsys.readouterr().err


def test_a_cached_build_of_a_copy_keeps_the_record_of_the_build_that_built(cli, capsys):
    """The copy's build finds everything cached: the spec hash's record stays the one of
    the spec file whose build made the nodes (reproduce checks that one's inputs)."""
    from llmbuild.store.store import Store

    assert main(["build", str(cli), "--executor", "inline", "--plain"]) == 0
    copy = cli.parent / "copy.toml"
    copy.write_text(cli.read_text())
    assert main(["build", str(copy), "--executor", "inline", "--plain"]) == 0
    store = Store(str(cli.parent / ".llmbuild"))
    (record,) = store.builds()
    assert record["spec_path"] == str(cli) and record["ok"]
    assert {n["state"] for n in record["nodes"].values()} == {"built"}
    assert store.spec_keys(str(copy)) == store.spec_keys(str(cli))  # plan's "why" for both


def _plan_line(capsys, spec, node: str, *sets: str) -> tuple[str, str]:
    """``plan`` of ``spec`` with ``--set`` each of ``sets``: the line of ``node``, and the
    whole plan."""
    capsys.readouterr()
    assert main(["plan", str(spec), *(a for s in sets for a in ("--set", s))]) == 0
    plan = capsys.readouterr().out
    return next(ln for ln in plan.splitlines() if f"{node} " in ln), plan


def test_a_copied_spec_is_explained_against_the_spec_it_was_copied_from(cli, capsys):
    """A node that a spec file has never built is compared with the same node of the
    other spec file in the store that shares the most of its keys."""
    assert main(["build", str(cli), "--executor", "inline", "--plain"]) == 0
    copy = cli.parent / "copy.toml"
    copy.write_text(cli.read_text())
    line, plan = _plan_line(capsys, copy, "stage:sft", "stage.sft.lr=1e-5")
    assert line.endswith(f"new to this spec; against {cli}: stage.sft.lr 2e-5 -> 1e-5"), plan
    assert "  cached  stage:pretrain" in plan
    # Another file sharing as many keys, yet further off (two fields, not one), and first
    # by name: the copy is still explained against the nearer one.
    other = cli.parent / "a-other.toml"
    other.write_text(cli.read_text())
    edits = ["--set", "stage.sft.lr=3e-5", "--set", "stage.sft.steps=3"]
    assert main(["build", str(other), "--executor", "inline", "--plain", *edits]) == 0
    line, plan = _plan_line(capsys, copy, "stage:sft", "stage.sft.lr=1e-5")
    assert line.endswith(f"new to this spec; against {cli}: stage.sft.lr 2e-5 -> 1e-5"), plan
    # A file whose last build failed at that node has nothing stored to compare it with:
    # not the nearest, though nothing it stored differs.
    failed = cli.parent / "a-failed.toml"
    failed.write_text(cli.read_text())
    set_control(fail=["stage:sft"])
    edits = ["--set", "stage.sft.lr=4e-5"]
    assert main(["build", str(failed), "--executor", "inline", "--plain", *edits]) == 1
    set_control()
    line, plan = _plan_line(capsys, copy, "stage:sft", "stage.sft.lr=1e-5")
    assert line.endswith(f"new to this spec; against {cli}: stage.sft.lr 2e-5 -> 1e-5"), plan


def test_a_copy_is_explained_against_the_spec_that_has_its_nodes(cli, capsys):
    """Of two spec files that share as many keys with a copy, the one that has the copy's
    nodes is what it is compared with, not one that shares only its data (whose stages,
    named otherwise, leave nothing to compare)."""
    assert main(["build", str(cli), "--executor", "inline", "--plain"]) == 0
    renamed = cli.read_text()
    for old, new in [("pretrain", "p2"), ("sft", "s2"), ("dpo", "d2")]:
        for field in ("name", "from", "stage"):
            renamed = renamed.replace(f'{field} = "{old}"', f'{field} = "{new}"')
    renamed = renamed.replace('["pretrain", "sft"]', '["p2", "s2"]').replace('["sft"]', '["s2"]')
    other = cli.parent / "a-renamed.toml"
    other.write_text(renamed)
    assert main(["build", str(other), "--executor", "inline", "--plain"]) == 0
    copy = cli.parent / "copy.toml"
    copy.write_text(cli.read_text())
    line, plan = _plan_line(capsys, copy, "stage:pretrain", "stage.pretrain.lr=2e-3")
    assert line.endswith(f"new to this spec; against {cli}: stage.pretrain.lr 0.001 -> 0.002"), plan


@pytest.mark.parametrize(
    ("signum", "code", "word"),
    [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")],
)
def test_a_stopped_build_exits_with_the_status_of_its_signal(cli, capsys, signum, code, word):
    """SIGTERM stops a build as Ctrl-C does, but job schedulers read the exit status as
    128 + the signal: 143 for SIGTERM, 130 for Ctrl-C's SIGINT."""
    set_control(sleep={"stage:pretrain": 60})

    def stop_in_pretrain() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if "stage:pretrain" in invocations():
                os.kill(os.getpid(), signum)
                return
            time.sleep(0.05)

    # Ctrl-C raises KeyboardInterrupt, as in a terminal, even where this test runs in the
    # background of a shell (which starts it with SIGINT ignored).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=stop_in_pretrain, daemon=True).start()
    began = time.monotonic()
    try:
        assert main(["build", str(cli), "--executor", "inline", "--plain"]) == code
    finally:
        signal.signal(signal.SIGINT, before)
    assert time.monotonic() - began < 30
    assert capsys.readouterr().err.splitlines()[-1] == word
    store = cli.parent / ".llmbuild"
    assert not list((store / "leases").iterdir())  # the cleanup is the same
    (build,) = [json.loads(p.read_text()) for p in (store / "builds").glob("*.json")]
    assert build["interrupted"] and build["nodes"]["stage:pretrain"]["state"] == "interrupted"


def test_export_copies_what_is_built_and_names_what_is_not(cli, capsys):
    """One export failed: the others are still copied out, the failed one is named and
    the exit status says that not everything came out; asked for by name, it is an error."""
    with cli.open("a") as f:
        f.write('\n[[export]]\nformat = "hf"\nstage = "sft"\n')
    assert main(["build", str(cli), "--executor", "inline", "--plain", "--only", "books"]) == 2
    assert (
        main(["build", str(cli), "--executor", "inline", "--plain", "--only", "source:books"]) == 0
    )
    capsys.readouterr()
    assert main(["show", "stage:sft", "--store", str(cli.parent / ".llmbuild")]) == 2
    err = capsys.readouterr().err  # a node of the spec, not a misspelling of another's name
    assert "stage:sft is not built in " in err and "left it out (--only, --until)" in err, err
    set_control(fail=["export:hf@dpo"])
    assert main(["build", str(cli), "--executor", "inline", "--plain"]) == 1
    set_control()
    capsys.readouterr()
    assert main(["plan", str(cli)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "export:hf@dpo" in ln)
    assert line.endswith("new; it failed when it last ran (`llmbuild status` shows its log)")
    out = cli.parent / "out"
    assert main(["export", str(cli), "--to", str(out)]) == 1
    printed, err = capsys.readouterr()
    assert printed.split() == [str(out / "hf@sft")], printed
    assert "not built yet, so not copied: export:hf@dpo; run `llmbuild build " in err, err
    assert (out / "hf@sft").is_dir() and not (out / "hf@dpo").exists()
    assert main(["export", str(cli), "--to", str(out), "hf@dpo"]) == 2
    assert "not built yet: export:hf@dpo" in capsys.readouterr().err
    store = ["--store", str(cli.parent / ".llmbuild")]
    assert main(["show", "export:hf@dpo", *store]) == 2  # a node the builds name, built or not
    assert "export:hf@dpo is not built in " in capsys.readouterr().err
    assert main(["export", str(cli), "--to", str(out), "hf@dop"]) == 2  # as it was written
    assert "no export 'hf@dop' in this spec (exports: " in capsys.readouterr().err
    (cli.parent / "a-file").write_text("")
    assert main(["export", str(cli), "--to", str(cli.parent / "a-file"), "--force"]) == 2
    assert "a-file is a file: --to names the folder the exports go in" in capsys.readouterr().err
    assert main(["export", str(cli), "--to", ""]) == 2  # not the working directory
    assert "--to is empty" in capsys.readouterr().err
    blocked = cli.parent / "blocked"  # a file where an export's folder would go
    blocked.mkdir()
    (blocked / "hf@sft").write_text("")
    assert main(["export", str(cli), "--to", str(blocked), "hf@sft", "--force"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write to {blocked}: Not a directory ({blocked / 'hf@sft'})" in err, err
    assert "PosixPath" not in err
