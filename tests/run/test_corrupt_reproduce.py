"""A corrupt artifact is reported and rebuilt; reproduce compares a rebuild node by node."""

from __future__ import annotations

import io
import shutil

from llmbuild.run.build import BuildOptions
from llmbuild.run.progress import PlainReporter
from llmbuild.run.reproduce import compare, reproduce
from llmbuild.store.records import ManifestEntry, Record
from llmbuild.store.store import Store
from tests.conftest import artifact_dirs
from tests.fixture_backend import fixture_registry, reset, set_control
from tests.run.helpers import counts, fixture_build


def _artifact(store, name):
    (d,) = artifact_dirs(store, name)
    return d


def _logged_build(project, store):
    """A build of the fixture pipeline, inline; its outcome and what it reported."""
    from llmbuild.run.build import build
    from llmbuild.spec.load import load_spec

    log = io.StringIO()
    outcome = build(
        load_spec(project),
        Store(str(store)),
        BuildOptions(executor="inline", live=False),
        PlainReporter(log, interval=0),
        registry=fixture_registry(),
    )
    return outcome, log.getvalue()


def _reproduce(store, spec_hash):
    """``reproduce`` of the build recorded under ``spec_hash``, inline, with the fixtures."""
    return reproduce(
        Store(str(store)),
        spec_hash,
        BuildOptions(executor="inline", live=False),
        reporter=PlainReporter(io.StringIO()),
        registry=fixture_registry(),
    )


def test_flipped_byte_is_reported_and_rebuilt(project, fixture_env, tmp_path):
    store = tmp_path / "store"
    fixture_build(project, store)
    reset()
    out = _artifact(store, "stage:sft") / "out.txt"
    data = bytearray(out.read_bytes())
    data[3] ^= 0x01
    out.write_bytes(bytes(data))
    outcome, log = _logged_build(project, store)
    assert "corrupt  stage:sft  out.txt does not match its recorded blake3 digest" in log
    assert counts() == {"stage:sft": 1}  # rebuilt; the same bytes, so downstream is cached
    assert outcome.ok
    assert artifact_dirs(store, "stage:sft", "corrupt")
    assert (_artifact(store, "stage:sft") / "out.txt").read_bytes() != bytes(data)


def test_missing_file_is_corruption_too(project, fixture_env, tmp_path):
    store = tmp_path / "store"
    fixture_build(project, store)
    reset()
    (_artifact(store, "tokenizer") / "out.txt").unlink()
    assert fixture_build(project, store).ok
    assert counts() == {"tokenizer": 1}


def test_reproduce_deterministic_pipeline_is_identical(project, fixture_env, tmp_path):
    store = tmp_path / "store"
    outcome = fixture_build(project, store)
    build, comparisons = _reproduce(store, outcome.spec_hash[:10])
    assert build["spec_hash"] == outcome.spec_hash
    assert len(comparisons) == 14
    assert {c.verdict for c in comparisons} == {"identical"}


def test_reproduce_compares_with_no_corrupt_original(project, fixture_env, tmp_path):
    """An original whose file was edited, and one whose record was: each is said to be
    corrupt, not identical to its rebuild (the record's digests still agree with it)."""
    import json

    store = tmp_path / "store"
    outcome = fixture_build(project, store)
    out = _artifact(store, "stage:sft") / "out.txt"
    out.write_bytes(out.read_bytes()[::-1])
    record = _artifact(store, "stage:dpo") / "record.json"
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "metrics": {"loss": 0.5}}))
    _build, comparisons = _reproduce(store, outcome.spec_hash)
    verdicts = {c.node: c for c in comparisons}
    assert verdicts["stage:sft"].verdict == "corrupt", verdicts["stage:sft"]
    assert "out.txt does not match its recorded blake3 digest" in verdicts["stage:sft"].detail
    assert verdicts["stage:dpo"].verdict == "corrupt", verdicts["stage:dpo"]
    assert verdicts["stage:pretrain"].verdict == "identical"


def test_reproduce_reports_the_nondeterministic_node(project, fixture_env, tmp_path):
    store = tmp_path / "store"
    set_control(random=["eval:gen@sft"])
    outcome = fixture_build(project, store)
    _, comparisons = _reproduce(store, outcome.spec_hash)
    verdicts = {c.node: c.verdict for c in comparisons}
    assert verdicts.pop("eval:gen@sft") == "diverged"
    assert set(verdicts.values()) == {"identical"}


def test_a_node_that_fails_to_rebuild_says_why_and_where_its_scratch_is(
    project, fixture_env, tmp_path
):
    """The rebuild's failure is said with the node, and the temp scratch store that
    keeps its log is named, not left behind unsaid."""
    import shutil
    from pathlib import Path

    store = tmp_path / "store"
    outcome = fixture_build(project, store)
    set_control(fail=["tokenize:chat"])
    _, comparisons = _reproduce(store, outcome.spec_hash)
    failed = {c.node: c for c in comparisons}["tokenize:chat"]
    assert failed.verdict == "failed" and "tokenize:chat was told to fail" in failed.detail
    kept = failed.detail.split("the scratch store ")[1].split(" is kept")[0]
    assert Path(kept).is_dir() and "llmbuild-reproduce-" in kept, failed.detail
    shutil.rmtree(kept)


def test_reproduce_names_what_changed_where_it_enters(project, fixture_env, tmp_path):
    """A data file edited, a backend's version bumped since the build: reproduce names
    the file or the backend, at the nodes it enters, not every node made from them."""
    import pytest

    from llmbuild.errors import UserError

    store = tmp_path / "store"
    outcome = fixture_build(project, store)
    chat = project.parent / "data" / "chat.jsonl"
    was = chat.read_text()
    chat.write_text(was + '{"messages": [{"role": "user", "content": "x"}]}\n')
    with pytest.raises(UserError) as e:
        _reproduce(store, outcome.spec_hash)
    assert str(e.value) == (
        "the inputs of this build changed since it was recorded, so it cannot be "
        "reproduced: source:chat: data.sources.chat.path content changed "
        "(data/chat.jsonl); and 6 nodes made from it"  # tokenize:chat, sft, dpo, ...
    )
    chat.write_text(was)
    outcome = fixture_build(project, store)  # as recorded; then a new eval backend
    with pytest.raises(UserError) as e:
        reproduce(
            Store(str(store)),
            outcome.spec_hash,
            BuildOptions(executor="inline", live=False),
            reporter=PlainReporter(io.StringIO()),
            registry=fixture_registry({"eval": "99"}),
        )
    from llmbuild.registry import default_registry

    version = default_registry().get("eval").version
    assert str(e.value).endswith(
        "reproduced: eval:ppl@pretrain, eval:ppl@sft, eval:gen@sft: backend eval "
        f"'eval v{version}' -> 'eval v99'"
    ), e.value


def _rec(digest: str, blake3: str, loss: float) -> Record:
    return Record(
        name="stage:x",
        key="k",
        preimage={},
        output_digest=digest,
        metrics={"loss": loss, "n": 10},
        outputs=[ManifestEntry(path="w", size=1, blake3=blake3)],
    )


def test_compare_within_tolerance():
    old, new = _rec("a", "x", 2.0), _rec("b", "y", 2.0000001)
    c = compare("stage:x", old, new, rtol=1e-6)
    assert c.verdict == "within tolerance" and "loss" in c.detail
    assert compare("stage:x", old, _rec("b", "y", 2.1), 1e-6).verdict == "diverged"
    # how fast a stage ran is not what it made: never the same twice, never compared
    old.metrics["tokens_per_s"], new.metrics["tokens_per_s"] = 75970.3, 24887.9
    assert compare("stage:x", old, new, rtol=1e-6).verdict == "within tolerance"


def _plan_status(project, store, name):
    from llmbuild.plan import StatCache, plan_spec
    from llmbuild.spec.load import load_spec

    planned = plan_spec(load_spec(project), store=Store(str(store)), cache=StatCache())
    return {n.name: n for n in planned.plan.nodes}[name]


def test_a_same_size_edit_with_its_time_restored_is_found(project, fixture_env, tmp_path):
    """The stat cache vouches for a file only while its change time stands: an edit that
    keeps the size and puts the modification time back is read again and caught."""
    import os

    store = tmp_path / "store"
    fixture_build(project, store)
    out = _artifact(store, "stage:sft") / "out.txt"
    st = out.stat()
    data = bytearray(out.read_bytes())
    data[0] = ord("0") if data[0] != ord("0") else ord("1")
    out.write_bytes(bytes(data))
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert out.stat().st_size == st.st_size and out.stat().st_mtime_ns == st.st_mtime_ns
    node = _plan_status(project, store, "stage:sft")
    assert node.status == "build" and "corrupt" in node.reason and "out.txt" in node.reason


def test_an_edited_or_cut_record_is_corrupt_and_moved_aside(project, fixture_env, tmp_path, capsys):
    import json

    from llmbuild.cli import main

    store = tmp_path / "store"
    fixture_build(project, store)
    record = _artifact(store, "eval:ppl@sft") / "record.json"
    edited = json.loads(record.read_text())
    edited["metrics"]["value"] = 0.999
    record.write_text(json.dumps(edited))
    node = _plan_status(project, store, "eval:ppl@sft")
    assert node.status == "build" and "edited" in node.reason
    assert main(["status", str(project), "--store", str(store), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert "does not match its digest" in shown["corrupt"]["eval:ppl@sft"]
    assert "0.999" not in json.dumps(shown["evals"])  # an edited metric is never shown
    key = record.parent.name
    assert main(["show", key[:12], "--store", str(store)]) == 2  # named, and said corrupt
    err = capsys.readouterr().err
    assert f"artifact {key[:12]} is corrupt: record.json does not match its digest" in err, err
    cut = _artifact(store, "tokenizer") / "record.json"
    cut.write_bytes(cut.read_bytes()[:100])
    assert "not valid JSON" in _plan_status(project, store, "tokenizer").reason
    assert main(["show", "tokenizer", "--store", str(store)]) == 2  # by the name builds
    err = capsys.readouterr().err  # recorded for it: its own record cannot tell it
    assert f"artifact {cut.parent.name[:12]} is corrupt: record.json" in err, err
    bare = _artifact(store, "stage:sft") / "record.json"
    bare.write_text(json.dumps({"metrics": {}}))  # JSON, but no record's
    assert "no schema_version: it is no llmbuild record" in (
        _plan_status(project, store, "stage:sft").reason
    )
    gone = _artifact(store, "export:hf@dpo")
    (gone / "record.json").unlink()  # its folder left without it: not "new"
    assert "its record.json is missing" in _plan_status(project, store, "export:hf@dpo").reason
    reset()
    log = io.StringIO()
    from llmbuild.run.build import build
    from llmbuild.spec.load import load_spec

    build(load_spec(project), Store(str(store)), BuildOptions(executor="inline", live=False),
          PlainReporter(log, interval=0), registry=fixture_registry())  # fmt: skip
    assert "corrupt  eval:ppl@sft  record.json does not match its digest" in log.getvalue()
    assert "corrupt  tokenizer  record.json is not valid JSON" in log.getvalue()
    assert "corrupt  export:hf@dpo  its record.json is missing" in log.getvalue()
    assert "corrupt  stage:sft  record.json has no schema_version" in log.getvalue()
    assert len(list((store / "corrupt").iterdir())) == 4
    from llmbuild.store.gc import collect

    assert collect(Store(str(store))).quarantined_removed == 4  # gc is where they end
    assert not any((store / "corrupt").iterdir())
    assert counts()["eval:ppl@sft"] == 1 and counts()["tokenizer"] == 1
    assert counts()["export:hf@dpo"] == 1
    assert main(["status", str(project), "--store", str(store), "--json"]) == 0


def test_generate_refuses_a_corrupt_stage(project, fixture_env, tmp_path, capsys):
    from llmbuild.cli import main

    store = tmp_path / "store"
    fixture_build(project, store)
    out = _artifact(store, "stage:dpo") / "out.txt"
    out.write_bytes(b"x" + out.read_bytes()[1:])
    assert main(["status", str(project), "--store", str(store)]) == 0
    assert "corrupt  stage:dpo: out.txt" in capsys.readouterr().out
    assert main(["show", "stage:dpo", "--store", str(store)]) == 0
    assert "  CORRUPT: out.txt does not match its recorded blake3" in capsys.readouterr().out
    code = main(["generate", str(project), "--store", str(store), "--stage", "dpo"])
    assert code == 2
    err = capsys.readouterr().err
    assert "stage:dpo is corrupt in the store" in err and "out.txt" in err
    (export,) = artifact_dirs(store, "export:hf@dpo")
    (export / "out.txt").write_bytes(b"x" + (export / "out.txt").read_bytes()[1:])
    assert main(["export", str(project), "--store", str(store), "--to", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "corrupt in the store: export:hf@dpo" in err and "out.txt" in err
    assert not (tmp_path / "out").exists()  # refused before anything is written
    assert not (tmp_path / "out" / "hf@dpo").exists()


def _rebuilt_otherwise(project, store, name):
    """Build, then remove ``name``'s artifact and build it alone again with other bits
    (as training does on another processor): its dependents are left as they were."""
    fixture_build(project, store)
    shutil.rmtree(_artifact(store, name))
    reset()
    set_control(random=[name])
    assert fixture_build(project, store, only=(name,)).ok
    assert counts() == {name: 1}
    reset()


def test_dependents_of_an_artifact_rebuilt_with_other_outputs_are_stale(
    project, fixture_env, tmp_path, capsys
):
    """Records keep the digest of each input's outputs as they were read; an artifact
    whose input now holds other outputs under the same key describes what is gone (an
    eval of other weights, an export of them), so it is not used and is rebuilt."""
    from llmbuild.cli import main

    store = tmp_path / "store"
    _rebuilt_otherwise(project, store, "stage:sft")
    old = {n: (_artifact(store, n) / "out.txt").read_text() for n in ("stage:dpo", "eval:ppl@sft")}

    assert main(["status", str(project), "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "stale    stage:dpo: it was built from earlier outputs of stage:sft" in out
    assert "stale    eval:ppl@sft: it was built from earlier outputs of stage:sft" in out
    assert main(["plan", str(project), "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "the stored artifact is stale: it was built from earlier outputs of stage:sft" in out
    assert main(["show", "stage:dpo", "--store", str(store)]) == 0
    assert "  STALE: it was built from earlier outputs of stage:sft" in capsys.readouterr().out
    assert main(["generate", str(project), "--store", str(store), "--stage", "dpo"]) == 2
    assert "stage:dpo is stale in the store (it was built from" in capsys.readouterr().err

    outcome, log = _logged_build(project, store)
    assert outcome.ok
    assert "stale    stage:dpo  it was built from earlier outputs of stage:sft" in log
    built = counts()
    assert built["stage:dpo"] == 1 and built["eval:ppl@sft"] == 1 and "stage:sft" not in built
    for name, was in old.items():  # moved aside, not deleted, and built from the new outputs
        assert artifact_dirs(store, name, "corrupt")
        assert (_artifact(store, name) / "out.txt").read_text() != was
    reset()
    assert fixture_build(project, store).ok and not counts()  # and then all cached


def test_an_export_of_a_stale_stage_is_not_exported(project, fixture_env, tmp_path, capsys):
    from llmbuild.cli import main

    store = tmp_path / "store"
    _rebuilt_otherwise(project, store, "stage:sft")
    code = main(["export", str(project), "--store", str(store), "--to", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code != 0 and "stale in the store: export:" in err
    assert "earlier outputs of stage:sft" in err and "(through stage:dpo)" in err
    assert not (tmp_path / "out").exists()
