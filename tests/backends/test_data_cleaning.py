"""Cleaning and deduplication counts, and every kind of bad data: a clear error naming
file and line, or with on_error = "skip" a counted skip."""

from __future__ import annotations

import gzip
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from llmbuild.errors import SpecError
from llmbuild.spec.load import load_spec
from tests.backends.conftest import artifact, run_nodes
from tests.backends.datafiles import spec_text, write_spec

BASE = (
    "The quick brown fox jumps over the lazy dog while the cat watches from the warm window sill."
)
NEAR = BASE.replace("warm", "sunny")  # a near duplicate: one word differs
OTHER = "Completely different text about ships, sealing wax, cabbages and kings, and more."


def _report(tmp_path, rows, clean, on_error=""):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    extra = f'on_error = "{on_error}"\n' if on_error else ""
    spec = write_spec(tmp_path, spec_text({"docs": str(path)}, clean=clean, extra_source=extra))
    outcome = run_nodes(spec, tmp_path / "store", ("source:docs",))
    assert outcome.ok, outcome.log
    return json.loads(
        (artifact(outcome, tmp_path / "store", "source:docs") / "report.json").read_text()
    )


def test_exact_and_near_duplicates_are_counted(tmp_path):
    rows = [BASE, BASE, NEAR, OTHER, "  " + BASE + "\u00a0"]  # the last normalises to BASE
    exact = _report(tmp_path / "e", rows, 'dedup = "exact"')
    assert exact["removed"] == {"exact_duplicate": 2}
    assert exact["documents_read"] == 5
    near = _report(tmp_path / "n", rows, 'dedup = "minhash"\nminhash_threshold = 0.7')
    assert near["removed"] == {"exact_duplicate": 2, "near_duplicate": 1}
    assert near["removed_bytes"]["near_duplicate"] == len(NEAR)
    assert abs(near["dedup_ratio"] - 3 / 5) < 1e-9
    none = _report(tmp_path / "x", rows, 'dedup = "none"')
    assert none["removed"] == {}


def test_a_duplicate_text_with_another_label_is_said(tmp_path):
    rows = [("a fine film", "pos"), ("a dull film", "neg"), ("a fine film", "neg")]
    path = tmp_path / "labeled.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    (tmp_path / "docs.txt").write_text(OTHER)
    labeled = f'[[data.sources]]\nname = "lab"\npath = "{path}"\nrole = "labeled"\n'
    text = spec_text({"docs": str(tmp_path / "docs.txt")})
    spec = write_spec(tmp_path, text.replace("[data.clean]", labeled + "[data.clean]"))
    outcome = run_nodes(spec, tmp_path / "store", ("source:lab",))
    assert outcome.ok, outcome.log
    notes = outcome.results["source:lab"].record.notes
    said = [n for n in notes if "another label" in n]
    assert said == [
        "1 duplicate text(s) carry another label than the copy kept (first: 'a fine film' "
        "kept as 'pos', dropped as 'neg'): deduplication keeps the first copy; set dedup = "
        '"none" in [data.clean] to keep every copy, or mend the labels'
    ], notes


def test_length_filters_and_normalisation(tmp_path):
    rows = ["short", "x" * 50, "y" * 500, "café\r\nline\u0007two"]
    report = _report(tmp_path, rows, "min_chars = 10\nmax_chars = 100")
    assert report["removed"] == {"too_short": 1, "too_long": 1}
    assert report["removed_bytes"] == {"too_short": 5, "too_long": 500}


def _bad(tmp_path, name: str, content: bytes, fmt: str = "", on_error: str = ""):
    path = tmp_path / name
    path.write_bytes(content)
    extra = (f'format = "{fmt}"\n' if fmt else "") + (
        f'on_error = "{on_error}"\n' if on_error else ""
    )
    spec = write_spec(tmp_path, spec_text({"docs": str(path)}, extra_source=extra))
    return run_nodes(spec, tmp_path / "store", ("source:docs",)), path


GOOD = b'{"text": "a fine document"}\n'


def _tar(samples: int) -> bytes:
    """A webdataset tar of ``samples`` .json members."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(samples):
            data = json.dumps({"text": f"document {i} " * 50}).encode()
            info = tarfile.TarInfo(f"{i:04d}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


TAR = _tar(3)
MEMBER = 512 + -(-len(json.dumps({"text": "document 0 " * 50})) // 512) * 512
"""One member's bytes: its header block, its data padded to blocks."""


@pytest.mark.parametrize(
    ("name", "content", "fmt", "message"),
    [
        (
            "bad.jsonl",
            GOOD + b'{"text": "caf\xe9"}\n',
            "",
            "bad.jsonl:2: not valid UTF-8 (byte 0xe9",
        ),
        ("bad.txt", b"fine\nline two \xff\n", "text", "bad.txt:2: not valid UTF-8 (byte 0xff"),
        (
            "broken.jsonl",
            GOOD + GOOD + b'{"text": "oops"\n',
            "",
            "broken.jsonl:3: invalid JSON: Expecting ',' delimiter",
        ),
        (
            "field.jsonl",
            GOOD + b'{"body": "no text field"}\n',
            "",
            "field.jsonl:2: missing field 'text' (the record has 'body': a source names",
        ),
        ("type.jsonl", b'{"text": 42}\n', "", "type.jsonl:1: field 'text' must be a string"),
        ("empty.jsonl", b"", "", "empty.jsonl: empty file (no documents)"),
        ("notar.tar", b"this is not a tar file", "", "notar.tar: not a readable tar file"),
        ("mid.tar", TAR[: MEMBER + 700], "", "mid.tar: not a readable tar file: unexpected end"),
        (
            "cut.tar",
            TAR[: 2 * MEMBER],  # between members: tarfile takes it for the end
            "",
            "cut.tar: not a readable tar file: it ends without the end-of-archive blocks",
        ),
        ("zero.parquet", b"", "", "zero.parquet: not a readable parquet file"),
        ("cut.parquet", b"PAR1 and then nothing", "", "cut.parquet: not a readable parquet file"),
        ("cut.jsonl.gz", gzip.compress(GOOD * 9)[:20], "", "cut.jsonl.gz: not a readable gzip"),
        ("plain.txt.zst", b"not zstd at all", "", "plain.txt.zst: not a readable zstd file"),
        ("rows.csv", b'text,id\n"a, b",1\nc,2,3\n', "", "rows.csv:3: 3 values, but the header"),
        ("head.tsv", b"text\ttext\nx\ty\n", "", "head.tsv:1: the header row ['text', 'text']"),
        ("quote.csv", b'text\n"open\n', "", "quote.csv:2: not readable CSV: unexpected end"),
        ("notes.rtf", b"hi", "", "notes.rtf: cannot tell the format from the extension '.rtf'"),
    ],
)
def test_bad_data_is_a_located_error(tmp_path, name, content, fmt, message):
    outcome, _path = _bad(tmp_path, name, content, fmt)
    result = outcome.results["source:docs"]
    assert result.state == "failed"
    assert message in result.detail, result.detail
    assert "Traceback" not in result.detail
    if name == "empty.jsonl":  # the source's only file: skipping it would leave nothing
        assert "(no documents): the source has nothing to read" in result.detail
    elif name == "notes.rtf":  # the source's settings: skipping would mend nothing
        assert "on_error" not in result.detail and "set `format` on the source" in result.detail
    else:
        assert 'set on_error = "skip"' in result.detail


@pytest.mark.parametrize(
    ("name", "content", "counted"),
    [
        ("bad.jsonl", GOOD + b'{"text": "caf\xe9"}\n', {"bad_encoding": 1}),
        ("broken.jsonl", GOOD + b"{nope\n" + GOOD.replace(b"fine", b"second"), {"bad_json": 1}),
        ("field.jsonl", GOOD + b'{"body": "x"}\n', {"bad_field": 1}),
    ],
)
def test_bad_records_can_be_skipped_and_counted(tmp_path, name, content, counted):
    outcome, _ = _bad(tmp_path, name, content, on_error="skip")
    assert outcome.ok, outcome.log
    report = json.loads(
        (artifact(outcome, tmp_path / "store", "source:docs") / "report.json").read_text()
    )
    assert report["removed"] == counted
    assert report["skipped_examples"] and name in report["skipped_examples"][0]
    # the build's output, `status` and `show` say it too, with where and why
    record = outcome.results["source:docs"].record
    assert record.metrics["skipped"] == 1
    assert f'on_error = "skip" skipped 1 bad record: {report["skipped_examples"][0]}' in (
        record.notes
    )


def test_an_empty_file_among_others_can_be_skipped(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_bytes(GOOD)
    (tmp_path / "d" / "b.jsonl").write_bytes(b"")
    spec = write_spec(
        tmp_path, spec_text({"docs": str(tmp_path / "d")}, extra_source='on_error = "skip"\n')
    )
    outcome = run_nodes(spec, tmp_path / "store", ("source:docs",))
    assert outcome.ok
    report = json.loads(
        (artifact(outcome, tmp_path / "store", "source:docs") / "report.json").read_text()
    )
    assert report["removed"] == {"bad_empty_file": 1}


def test_any_labeled_example_cleaning_removes_is_said(tmp_path):
    """One empty text of 20 labeled ones is under the share said of plain text, but it is
    a training example the user wrote: it is said."""
    spec_dir = tmp_path / "p"
    spec_dir.mkdir()
    (spec_dir / "docs.jsonl").write_text(json.dumps({"text": BASE}) + "\n")
    rows = [{"text": f"review number {i}", "label": "good"} for i in range(19)]
    rows.insert(7, {"text": "", "label": "bad"})
    (spec_dir / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = spec_text({"docs": str(spec_dir / "docs.jsonl")})
    text += f'[[data.sources]]\nname = "reviews"\npath = "{spec_dir / "reviews.jsonl"}"\n'
    text += 'role = "labeled"\n'
    outcome = run_nodes(write_spec(spec_dir, text), spec_dir / "store", ("source:reviews",))
    assert outcome.ok, outcome.log
    record = outcome.results["source:reviews"].record
    assert record.notes == ["cleaning removed 1 of 20 documents (5%): too_short 1"], record.notes


def test_a_path_matching_nothing_is_located_before_anything_runs(tmp_path):
    """``validate`` (loading the spec) finds it: no data is read, nothing is planned."""
    spec = write_spec(tmp_path, spec_text({"docs": str(tmp_path / "nothing" / "*.jsonl")}))
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    (problem,) = info.value.problems
    assert problem.key == "data.sources[0].path" and problem.line == 6
    assert "matches no file" in problem.message


def test_cleaning_that_removes_much_says_so_and_a_source_may_clean_its_own_way(tmp_path):
    rows = [BASE, OTHER] + [f"short {i}" for i in range(6)]
    spec_dir = tmp_path / "p"
    spec_dir.mkdir()
    path = spec_dir / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    text = spec_text({"docs": str(path)}, clean="min_chars = 20")
    outcome = run_nodes(write_spec(spec_dir, text), spec_dir / "store", ("source:docs",))
    assert outcome.ok, outcome.log
    record = outcome.results["source:docs"].record
    assert record.notes == ["cleaning removed 6 of 8 documents (75%): too_short 6"]
    assert record.metrics["filtered"] == 6 and record.metrics["skipped"] == 0
    assert "built    source:docs" in outcome.log and "cleaning removed 6 of 8" in outcome.log
    # `show` and `status` say it too, and `show` prints where the artifact is.
    from llmbuild.cli import main

    spec, store = str(spec_dir / "spec.toml"), str(spec_dir / "store")
    with redirect_stdout(io.StringIO()) as shown:
        assert main(["show", "source:docs", "--store", store]) == 0
    assert "note cleaning removed 6 of 8 documents" in shown.getvalue()
    folder = next(line.split()[1] for line in shown.getvalue().splitlines() if "artifact" in line)
    assert (Path(folder) / "record.json").is_file()
    with redirect_stdout(io.StringIO()) as status:
        assert main(["status", spec, "--store", store]) == 0
    assert "note source:docs: cleaning removed 6 of 8 documents" in status.getvalue()
    # The source's own cleaning replaces [data.clean] for it alone.
    own = text.replace(f'path = "{path}"\n', f'path = "{path}"\nclean = {{ min_chars = 1 }}\n')
    assert own != text
    outcome = run_nodes(write_spec(spec_dir, own), spec_dir / "store", ("source:docs",))
    assert outcome.results["source:docs"].record.notes == []


def test_renaming_files_into_another_order_rebuilds_nothing_but_a_new_suffix_does(tmp_path):
    """Files are read in content order, so a rename that reorders them keeps the key and
    the documents; a suffix tells the format, so renaming x.jsonl to x.txt is new input."""
    from llmbuild.plan import StatCache, plan_spec
    from llmbuild.store.store import Store

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text(
        json.dumps({"text": BASE}) + "\n" + json.dumps({"text": OTHER}) + "\n"
    )
    (data / "b.jsonl").write_text(
        json.dumps({"text": BASE}) + "\n" + json.dumps({"text": NEAR}) + "\n"
    )
    spec = write_spec(tmp_path, spec_text({"docs": str(data)}))
    store = tmp_path / "store"
    first = run_nodes(spec, store, ("source:docs",))
    assert first.ok, first.log
    built = first.results["source:docs"].record

    (data / "a.jsonl").rename(data / "z.jsonl")  # now b.jsonl sorts first
    plan = plan_spec(load_spec(spec), store=Store(str(store)), cache=StatCache()).plan
    assert {n.name: n.status for n in plan.nodes}["source:docs"] == "cached"
    fresh = run_nodes(spec, tmp_path / "fresh", ("source:docs",))  # built anew in this order
    assert fresh.results["source:docs"].record.output_digest == built.output_digest

    (data / "z.jsonl").rename(data / "z.txt")  # the same bytes, now read as text
    plan = plan_spec(load_spec(spec), store=Store(str(store)), cache=StatCache()).plan
    (node,) = [n for n in plan.nodes if n.name == "source:docs"]
    assert node.status == "build" and "file suffixes changed" in node.reason, node.reason


def test_a_text_document_that_is_not_utf8_is_skipped_alone(tmp_path):
    content = b"first document\n\nsecond \xff document\non two lines\n\nthird document\n"
    path = tmp_path / "docs.txt"
    path.write_bytes(content)
    extra = 'separator = "\\n\\n"\non_error = "skip"\n'
    spec = write_spec(tmp_path, spec_text({"docs": str(path)}, extra_source=extra))
    outcome = run_nodes(spec, tmp_path / "store", ("source:docs",))
    assert outcome.ok, outcome.log
    out = artifact(outcome, tmp_path / "store", "source:docs")
    report = json.loads((out / "report.json").read_text())
    assert report["removed"] == {"bad_encoding": 1}
    assert report["skipped_examples"] == [f"{path}:3: not valid UTF-8 (byte 0xff)"]
    assert report["documents_read"] == 2  # the one after it kept


def test_the_share_removed_counts_bad_records_among_those_seen(tmp_path):
    content = GOOD + b"{nope\n" * 4
    outcome, _ = _bad(tmp_path, "mostly_bad.jsonl", content, on_error="skip")
    assert outcome.ok, outcome.log
    notes = outcome.results["source:docs"].record.notes
    assert any("cleaning removed 4 of 5 documents (80%): bad_json 4" in n for n in notes), notes
    # the skip note names the first two bad records, and how many more there are
    (skips,) = [n for n in notes if n.startswith('on_error = "skip" skipped 4 bad records: ')]
    assert "mostly_bad.jsonl:2: invalid JSON" in skips and "mostly_bad.jsonl:3: " in skips
    assert skips.endswith("; and 2 more (report.json)"), skips


def test_a_tar_compressed_under_a_plain_name_is_read_whole(tmp_path):
    """tarfile unpacks a gzip'd tar itself: its last bytes are the gzip stream's, not the
    archive's end, and the file is whole."""
    path = tmp_path / "packed.tar"
    path.write_bytes(gzip.compress(TAR))
    extra = 'format = "webdataset"\n'
    spec = write_spec(tmp_path, spec_text({"docs": str(path)}, extra_source=extra))
    outcome = run_nodes(spec, tmp_path / "store", ("source:docs",))
    assert outcome.ok, outcome.log
    out = artifact(outcome, tmp_path / "store", "source:docs")
    assert json.loads((out / "report.json").read_text())["documents_read"] == 3


def test_a_conversation_without_an_assistant_names_the_roles_it_has():
    from llmbuild.backends.data.readers import BadRecord, Record, normalise

    from llmbuild.spec.data import Source

    source = Source.model_validate({"name": "talk", "path": "talk.jsonl", "role": "chat"})
    turns = [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}]
    with pytest.raises(BadRecord) as e:
        normalise(Record("talk.jsonl:3", {"messages": turns}), source)
    assert str(e.value) == (
        "talk.jsonl:3: the conversation has no assistant message (role 'assistant'; its "
        "roles: 'system', 'user')"
    )
    # a role no chat template knows, and answers with nothing in them, are bad records too
    turns = [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}]
    with pytest.raises(BadRecord, match="message 1 has role 'bot': a role is one of 'system'"):
        normalise(Record("talk.jsonl:4", {"messages": turns}), source)
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}]
    with pytest.raises(BadRecord, match="every assistant message is empty"):
        normalise(Record("talk.jsonl:5", {"messages": turns}), source)


def test_a_preference_pair_of_one_answer_twice_is_a_bad_record():
    from llmbuild.backends.data.readers import BadRecord, Record, normalise

    from llmbuild.spec.data import Source

    source = Source.model_validate({"name": "p", "path": "p.jsonl", "role": "preferences"})
    pair = {"prompt": "2+2=", "chosen": "4", "rejected": "4"}
    with pytest.raises(BadRecord) as e:
        normalise(Record("p.jsonl:7", pair), source)
    assert (
        str(e.value) == "p.jsonl:7: chosen and rejected are the same answer: nothing is preferred"
    )
    assert e.value.kind == "field"  # counted as such with on_error = "skip"
    assert normalise(Record("p.jsonl:8", {**pair, "rejected": "5"}), source)["rejected"] == "5"


def test_a_separator_that_windows_line_ends_hide_is_said(tmp_path):
    """A text file with "\\r\\n" line ends never holds the separator "\\n\\n": it is one
    document, and the build says why and what separator splits it."""
    path = tmp_path / "docs.txt"
    path.write_bytes(b"first document\r\n\r\nsecond document\r\non two lines\r\n\r\nthird\r\n")
    extra = 'separator = "\\n\\n"\n'
    spec = write_spec(tmp_path, spec_text({"docs": str(path)}, extra_source=extra))
    outcome = run_nodes(spec, tmp_path / "store", ("source:docs",))
    assert outcome.ok, outcome.log
    notes = outcome.results["source:docs"].record.notes
    said = [n for n in notes if "never occurs" in n]
    assert said and '"\\n\\n" never occurs in 1 file(s)' in said[0], notes
    assert 'set separator = "\\r\\n\\r\\n" to split them' in said[0]
    assert not any("without a separator" in n for n in notes)  # it has one
    crlf = spec.read_text().replace('separator = "\\n\\n"', 'separator = "\\r\\n\\r\\n"')
    outcome = run_nodes(write_spec(tmp_path, crlf), tmp_path / "store", ("source:docs",))
    record = outcome.results["source:docs"].record
    assert record.metrics["documents"] == 3 and not any("never occurs" in n for n in record.notes)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("docs.jsonl", b'\xef\xbb\xbf{"text": "a first document"}\n{"text": "a second one"}\n'),
        ("docs.csv", b"\xef\xbb\xbftext,id\na first document,1\na second one,2\n"),
    ],
)
def test_a_byte_order_mark_before_the_first_record_is_read_past(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    spec = write_spec(tmp_path, spec_text({"docs": str(path)}))
    outcome = run_nodes(spec, tmp_path / "store", ("source:docs",))
    assert outcome.ok, outcome.log
    assert outcome.results["source:docs"].record.metrics["documents"] == 2
