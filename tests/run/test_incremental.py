"""Each kind of spec edit rebuilds exactly the expected nodes; a no-op rebuild runs nothing."""

from __future__ import annotations

import pytest

from tests.fixture_backend import reset
from tests.plan.test_keys import ALL, FROM_PRETRAIN, FROM_SFT
from tests.run.helpers import counts, fixture_build


@pytest.fixture
def built(project, fixture_env, tmp_path):
    store = tmp_path / "store"
    outcome = fixture_build(project, store)
    assert outcome.ok and outcome.count("built") == 14
    assert set(counts()) == ALL and set(counts().values()) == {1}
    reset()
    return project, store


def test_noop_rebuild_runs_nothing(built):
    project, store = built
    outcome = fixture_build(project, store)
    assert outcome.summary == "14 nodes, 14 cached"
    assert counts() == {}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["stage.sft.lr=1e-5"], FROM_SFT),
        (["eval.gen.max_new_tokens=10"], {"eval:gen@sft"}),
        (["architecture.layers=2"], FROM_PRETRAIN),
        (["parallelism.micro_batch=1", "stage.pretrain.log_every=1"], set()),
        (["data.sources.books.weight=2.0"], FROM_PRETRAIN),
        (["model.name=renamed"], set()),
        (["export[0].dtype='bfloat16'"], {"export:hf@dpo"}),
    ],
)
def test_edit_rebuilds_exactly(built, overrides, expected):
    project, store = built
    outcome = fixture_build(project, store, overrides)
    assert outcome.ok
    assert set(counts()) == expected
    assert all(n == 1 for n in counts().values())
    reset()
    assert fixture_build(project, store, overrides).count("built") == 0  # now cached
    assert counts() == {}


def test_restored_data_is_cached_again(built):
    """Keys follow content: data that goes back to an earlier state finds its artifacts."""
    project, store = built
    books = project.parent / "data" / "books"
    (books / "b.txt").rename(books / "b.keep")
    fixture_build(project, store)
    assert counts()["source:books"] == 1
    reset()
    (books / "b.keep").rename(books / "b.txt")
    outcome = fixture_build(project, store)
    assert counts() == {}
    assert outcome.count("cached") == 14


def test_early_cutoff_reuses_what_an_unchanged_output_feeds(built):
    """A data backend version bump gives every source a new key; their outputs are
    byte-identical, so nothing downstream runs: it reuses the earlier artifacts."""
    project, store = built
    outcome = fixture_build(project, store, versions={"data": "99"})
    assert set(counts()) == {"source:books", "source:chat", "source:prefs"}
    states = {n: r.state for n, r in outcome.results.items()}
    assert {states[n] for n in ALL if not n.startswith("source:")} == {"reused"}


def test_plan_foresees_early_cutoff_once_the_changed_nodes_are_built(built):
    """Built only as far as the sources, a version bump leaves the rest for early cut-off
    to decide: plan says what build then does (reuse), not a rebuild."""
    from llmbuild.plan import StatCache, plan_spec
    from llmbuild.spec.load import load_spec
    from llmbuild.store.store import Store
    from tests.fixture_backend import fixture_registry

    project, store = built
    sources = tuple(n for n in ALL if n.startswith("source:"))
    assert fixture_build(project, store, versions={"data": "99"}, until=sources).ok
    registry = fixture_registry({"data": "99"})
    planned = plan_spec(load_spec(project), Store(str(store)), StatCache(), registry)
    nodes = {n.name: n for n in planned.plan.nodes}
    assert {n.status for n in nodes.values()} == {"cached"}
    assert "(inputs' outputs unchanged)" in nodes["tokenizer"].reason
    # status, predict, generate and export find what plan says is cached: the reused one
    from llmbuild.cli.status_cmd import built_records

    at_own_keys = built_records(Store(str(store)), {n: k.key for n, k in planned.keys.items()})
    assert set(at_own_keys) == set(sources)
    held = built_records(Store(str(store)), {n: planned.held_key(n) for n in planned.keys})
    assert set(held) == set(ALL)
    reset()
    outcome = fixture_build(project, store, versions={"data": "99"})
    assert counts() == {} and outcome.count("built") == 0
    reset()
    again = fixture_build(project, store, versions={"data": "99"})
    assert counts() == {} and again.count("cached") == 14


def test_failure_skips_dependents_and_others_finish(project, fixture_env, tmp_path):
    from tests.fixture_backend import set_control

    set_control(fail=["stage:sft"])
    outcome = fixture_build(project, tmp_path / "store")
    states = {n: r.state for n, r in outcome.results.items()}
    assert states["stage:sft"] == "failed"
    assert "told to fail" in outcome.results["stage:sft"].detail
    for n in ("stage:dpo", "eval:ppl@sft", "eval:gen@sft", "export:hf@dpo"):
        assert states[n] == "skipped" and "stage:sft" in outcome.results[n].detail
    assert states["eval:ppl@pretrain"] == "built"
    assert not outcome.ok
    set_control()
    reset()
    outcome = fixture_build(project, tmp_path / "store")
    assert outcome.ok and set(counts()) == FROM_SFT


def test_a_failed_node_keeps_its_log_and_checkpoint_not_its_partial_files(
    project, fixture_env, tmp_path
):
    from llmbuild.store.store import Store
    from tests.fixture_backend import set_control

    set_control(fail=["stage:sft"], sleep={"stage:sft": 0.2})  # checkpoints, then fails
    store = tmp_path / "store"
    outcome = fixture_build(project, store)
    assert outcome.results["stage:sft"].state == "failed"
    key = outcome.record["nodes"]["stage:sft"]["key"]
    work = Store(str(store)).work_dir(key, create=False)
    assert sorted(p.name for p in work.iterdir()) == ["checkpoint.json", "node.log"]
    assert Store(str(store)).resumable(key) == "resume from step 2"


def test_only_and_until_select_with_dependencies(project, fixture_env, tmp_path):
    outcome = fixture_build(project, tmp_path / "store", only=("sft",))
    assert set(outcome.results) == {
        "source:books",
        "source:chat",
        "tokenizer",
        "tokenize:books",
        "tokenize:chat",
        "stage:pretrain",
        "stage:sft",
    }
    reset()
    outcome = fixture_build(project, tmp_path / "store", until=("eval:ppl@pretrain",))
    assert set(counts()) == {"eval:ppl@pretrain"}


def _renamed(spec: str) -> str:
    """The fixture spec with a stage, an eval suite and an export renamed."""
    return (
        spec.replace('name = "sft"', 'name = "chat-tuned"')
        .replace('from = "sft"', 'from = "chat-tuned"')
        .replace('stages = ["pretrain", "sft"]', 'stages = ["pretrain", "chat-tuned"]')
        .replace('stages = ["sft"]', 'stages = ["chat-tuned"]')
        .replace('name = "ppl"', 'name = "perplexity"')
        .replace('format = "hf"\nstage = "dpo"', 'format = "hf"\nstage = "dpo"\nname = "release"')
    )


def test_an_artifact_removed_by_hand_is_said_to_be_gone_not_new(built):
    import shutil

    from llmbuild.plan import StatCache, plan_spec
    from llmbuild.spec.load import load_spec
    from llmbuild.store.store import Store

    project, store = built
    planned = plan_spec(load_spec(project), store=Store(str(store)), cache=StatCache())
    shutil.rmtree(store / "artifacts" / planned.keys["stage:sft"].key)
    plan = plan_spec(load_spec(project), store=Store(str(store)), cache=StatCache()).plan
    nodes = {n.name: n for n in plan.nodes}
    assert nodes["stage:sft"].status == "build"
    assert nodes["stage:sft"].reason == "not in the store", nodes["stage:sft"]
    assert nodes["stage:dpo"].status == "cached"  # what it was built from stays its key
    outcome = fixture_build(project, store)
    assert outcome.ok and counts() == {"stage:sft": 1}


def test_renaming_rebuilds_and_copies_nothing(built, tmp_path):
    from llmbuild.plan import StatCache, plan_spec
    from llmbuild.spec.load import load_spec
    from llmbuild.store.store import Store
    from tests.conftest import FULL_SPEC, write_project

    _, store = built
    renamed = write_project(tmp_path / "renamed", _renamed(FULL_SPEC))
    plan = plan_spec(load_spec(renamed), store=Store(str(store)), cache=StatCache()).plan
    nodes = {n.name: n for n in plan.nodes}
    assert "stage:chat-tuned" in nodes and "export:release" in nodes
    assert {n.status for n in plan.nodes} == {"cached"}, plan.summary
    assert nodes["stage:chat-tuned"].reason == "renamed from stage:sft"
    assert nodes["eval:perplexity@chat-tuned"].reason == "renamed from eval:ppl@sft"
    assert nodes["export:release"].reason == "renamed from export:hf@dpo"
    artifacts = sorted((store / "artifacts").iterdir())
    outcome = fixture_build(renamed, store)
    assert outcome.summary == "14 nodes, 14 cached"
    assert counts() == {}
    assert sorted((store / "artifacts").iterdir()) == artifacts  # nothing copied
