"""Hypothesis over data files: whatever bytes a source file holds, in any format the data
backend reads, its node either builds or fails with an error that names the file (or the
source, when nothing is left of it), never with an error from deep inside a library."""

from __future__ import annotations

import gzip
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.backends.conftest import run_nodes
from tests.backends.datafiles import spec_text, write_spec

LINES = st.one_of(
    st.just(json.dumps({"text": "a fine document"})),
    st.builds(json.dumps, st.dictionaries(st.sampled_from(["text", "body", ""]), st.integers())),
    st.text(max_size=30),
)
CONTENT = st.one_of(
    st.binary(max_size=200),
    st.lists(LINES, max_size=5).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass")),
    st.binary(max_size=60).map(lambda b: b"PAR1" + b + b"PAR1"),  # parquet's magic, cut
    st.binary(max_size=60).map(gzip.compress),
)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same cases on every run: a CI run finds what a local one did
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    suffix=st.sampled_from([".txt", ".jsonl", ".parquet", ".tar", ".jsonl.gz", ".txt.zst"]),
    content=CONTENT,
)
def test_any_bytes_in_a_source_file_build_or_fail_naming_it(tmp_path_factory, suffix, content):
    root = tmp_path_factory.mktemp("bytes")
    path = root / f"docs{suffix}"
    path.write_bytes(content)
    spec = write_spec(root, spec_text({"docs": str(path)}))
    outcome = run_nodes(spec, root / "store", ("source:docs",))
    result = outcome.results["source:docs"]
    assert result.state in ("built", "failed"), result
    if result.state == "failed":
        assert path.name in result.detail or "source 'docs'" in result.detail, result.detail
        assert "Traceback" not in result.detail
