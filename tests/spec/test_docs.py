"""The markdown spec reference: generated from the schema, committed, and kept current."""

from __future__ import annotations

import re

from llmbuild.cli import main
from llmbuild.spec.schema import DOCS_COMMAND, spec_reference, spec_schema
from tests.conftest import REPO


def test_committed_spec_reference_is_current():
    committed = (REPO / "docs" / "spec.md").read_text()
    assert committed == spec_reference(), f"run: {DOCS_COMMAND}"


def test_docs_command_writes_the_reference(tmp_path, capsys):
    assert main(["docs"]) == 0
    assert capsys.readouterr().out == spec_reference()
    out = tmp_path / "docs" / "spec.md"
    assert main(["docs", "-o", str(out)]) == 0
    assert out.read_text() == spec_reference()


def _sections(text: str) -> dict[str, str]:
    """``anchor -> body`` of every section."""
    parts = re.split(r'<a id="([^"]+)"></a>', text)
    return dict(zip(parts[1::2], parts[2::2]))


def _rows(body: str) -> dict[str, list[str]]:
    """``field -> [type, default, description]`` of a section's table."""
    rows = {}
    for line in body.splitlines():
        m = re.match(r"\| `([^`]+)` \| (.*) \|$", line)
        if m:
            rows[m.group(1)] = re.split(r"(?<!\\) \| ", m.group(2))
    return rows


def test_every_table_and_kind_has_a_section_listing_every_field():
    text = spec_reference()
    sections = _sections(text)
    schema = spec_schema()
    for name in schema["properties"]:
        assert f"`{name}`" in sections["top-level"]
    expected = {
        "model": "ModelInfo",
        "data": "Data",
        "data-sources": "Source",
        "data-clean": "Clean",
        "data-split": "Split",
        "tokenizer": "Tokenizer",
        "architecture": "Architecture",
        "parallelism": "Parallelism",
        "stage-schedule": "Schedule",
        "stage-adapter": "LoraAdapter",
    }
    for kinds, union in (
        (("pretrain", "sft", "lora", "dpo", "grpo", "reward"), "stage"),
        (("perplexity", "lm-eval", "samples"), "eval"),
        (("hf", "peft", "onnx", "gguf"), "export"),
        (("exact_match", "regex", "length", "model", "function"), "stage.rewards"),
    ):
        for kind in kinds:
            anchor = re.sub(r"[^a-z0-9]+", "-", f"{union}-{kind}")
            assert anchor in sections, anchor
    defs = schema["$defs"]
    for anchor, model in expected.items():
        assert set(_rows(sections[anchor])) == set(defs[model]["properties"]), anchor
    # A kind's own fields plus the fields every kind shares are exactly its model's fields.
    pretrain = set(_rows(sections["stage-pretrain"])) | set(_rows(sections["stage"]))
    assert pretrain == set(defs["Pretrain"]["properties"])
    gguf = set(_rows(sections["export-gguf"])) | set(_rows(sections["export"]))
    assert gguf == set(defs["GgufExport"]["properties"])


def test_fields_show_type_default_role_and_description():
    sections = _sections(spec_reference())
    lr = _rows(sections["stage-sft"])["lr"]
    assert lr[:2] == ["float, > 0", "`2e-5`"] and "Peak learning rate" in lr[2]
    tensor = _rows(sections["parallelism"])["tensor"]
    assert tensor[:2] == ["integer, > 0", "`1`"] and "Execution only" in tensor[2]
    path = _rows(sections["data-sources"])["path"]
    assert path[0].startswith("string or list of string") and path[1] == "required"
    assert "content digest" in path[2]
    dedup = _rows(sections["data-clean"])["dedup"]
    assert dedup[:2] == ['`"none"` \\| `"exact"` \\| `"minhash"`', '`"exact"`']
    # Every table row has exactly four cells: pipes inside cells are escaped.
    for line in spec_reference().splitlines():
        if line.startswith("| `"):
            assert len(re.split(r"(?<!\\)\|", line)) == 6, line


def test_reference_order_is_stable():
    first = spec_reference()
    assert first == spec_reference()
    anchors = list(_sections(first))
    assert anchors[:5] == ["top-level", "model", "data", "data-clean", "data-sources"]
    assert anchors.index("stage") < anchors.index("eval") < anchors.index("export")
