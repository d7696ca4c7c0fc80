"""plan: statuses and reasons, explaining a rebuild field by field against the last build."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from llmbuild.cli.plan_cmd import plan_json, render_plan
from llmbuild.plan import StatCache, plan_spec
from llmbuild.plan.status import MISSING, Lookup
from llmbuild.spec.load import load_spec
from tests.conftest import function_reward_project


class MemoryStore:
    """A store view holding the records of earlier plans as if they had been built."""

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.last: dict[str, dict[str, Any]] = {}
        self.leases: dict[str, str] = {}
        self.checkpoints: dict[str, str] = {}
        self.corrupt: dict[str, str] = {}
        self.names: dict[str, str] = {}

    def commit(self, planned) -> None:
        for name, k in planned.keys.items():
            self.keys.add(k.key)
            self.last[name] = k.preimage
            self.names[k.key] = name

    def lookup(self, key: str, verify: bool = True) -> Lookup:
        if key in self.corrupt:
            return Lookup("corrupt", problem=self.corrupt[key])
        record = SimpleNamespace(name=self.names[key]) if key in self.names else None
        return Lookup("cached", record=record) if key in self.keys else MISSING

    def last_preimage(self, name: str):
        return self.last.get(name)

    def running_elsewhere(self, key: str):
        return self.leases.get(key)

    def resumable(self, key: str, parallelism=None):
        return self.checkpoints.get(key)

    def other_layout(self, key: str, parallelism):
        return None


def plan(spec, store, overrides=()):
    return plan_spec(load_spec(spec, overrides), store=store, cache=StatCache())


def by_name(planned):
    return {n.name: n for n in planned.plan.nodes}


def test_empty_store_builds_everything(project):
    planned = plan(project, MemoryStore())
    assert {n.status for n in planned.plan.nodes} == {"build"}
    assert {n.reason for n in planned.plan.nodes} == {"new"}
    assert planned.plan.summary == "14 nodes, 0 cached, 14 to build"


def test_rebuild_names_the_changed_field_with_old_and_new_values(project):
    store = MemoryStore()
    store.commit(plan(project, store, ["stage.sft.lr=2e-5"]))
    planned = plan(project, store, ["stage.sft.lr=1e-5"])
    nodes = by_name(planned)
    assert nodes["source:books"].status == "cached"
    assert nodes["tokenizer"].status == "cached"
    assert nodes["stage:pretrain"].status == "cached"
    assert nodes["stage:sft"].status == "build"
    assert nodes["stage:sft"].reason == "stage.sft.lr 2e-5 -> 1e-5"
    assert [(c.field, c.old, c.new) for c in nodes["stage:sft"].changes] == [
        ("stage.sft.lr", 2e-5, 1e-5)
    ]
    assert nodes["stage:dpo"].reason == "upstream stage:sft changed"
    assert nodes["eval:gen@sft"].reason == "upstream stage:sft changed"
    assert planned.plan.summary == "14 nodes, 9 cached, 5 to build"
    text = render_plan(planned.plan, "spec.toml")
    assert "stage:sft" in text and "stage.sft.lr 2e-5 -> 1e-5" in text
    assert plan_json(planned.plan, "spec.toml")["nodes"][8]["changes"] == [
        {"field": "stage.sft.lr", "old": 2e-5, "new": 1e-5}
    ]


def test_an_upstream_cached_now_is_not_said_to_have_changed(project):
    """The last build (with --set) used another sft than the spec's own, which is
    cached: a dpo rebuilt for new preference data names only the data as changed."""
    store = MemoryStore()
    store.commit(plan(project, store))
    store.commit(plan(project, store, ["stage.sft.lr=1e-5"]))
    prefs = project.parent / "data" / "prefs.jsonl"
    prefs.write_text(prefs.read_text() * 2)
    nodes = by_name(plan(project, store))
    assert nodes["stage:sft"].status == "cached"
    assert nodes["stage:dpo"].status == "build"
    reason = nodes["stage:dpo"].reason
    assert reason.startswith("upstream tokenize:prefs changed; "), reason
    assert "stage:sft is cached, another than its last build used" in reason, reason


def test_several_fields_and_nested_fields(project):
    store = MemoryStore()
    store.commit(plan(project, store))
    planned = plan(
        project,
        store,
        [
            "architecture.layers=2",
            "stage.pretrain.schedule.warmup=5",
            "data.sources.books.weight=3.0",
        ],
    )
    reason = by_name(planned)["stage:pretrain"].reason
    assert "architecture.layers 4 -> 2" in reason
    assert "stage.pretrain.schedule.warmup 0 -> 5" in reason
    assert "data.sources.books.weight 1.0 -> 3.0" in reason


def test_data_edit_is_explained_as_content(project):
    store = MemoryStore()
    store.commit(plan(project, store))
    (project.parent / "data" / "books" / "c.txt").write_text("new text\n")
    nodes = by_name(plan(project, store))
    assert nodes["source:books"].reason == "data.sources.books.path content changed (2 -> 3 files)"
    assert (
        nodes["tokenizer"].reason
        == "upstream source:books changed (reused if its output is unchanged)"
    )
    assert nodes["source:chat"].status == "cached"


def test_a_field_edit_with_new_data_names_both(project):
    store = MemoryStore()
    store.commit(plan(project, store))
    prefs = project.parent / "data" / "prefs.jsonl"
    prefs.write_text(prefs.read_text() * 2)
    reason = by_name(plan(project, store, ["stage.dpo.beta=0.2"]))["stage:dpo"].reason
    assert reason == "stage.dpo.beta 0.1 -> 0.2; upstream tokenize:prefs changed", reason


def test_running_elsewhere_and_resume(project):
    store = MemoryStore()
    first = plan(project, store)
    store.leases[first.keys["stage:pretrain"].key] = "host-a pid 12"
    store.checkpoints[first.keys["stage:sft"].key] = "checkpoint at step 5"
    nodes = by_name(plan(project, store))
    assert nodes["stage:pretrain"].status == "running elsewhere"
    assert nodes["stage:pretrain"].reason == "host-a pid 12"
    assert nodes["stage:sft"].status == "resume"
    assert nodes["stage:sft"].reason.startswith("checkpoint at step 5")


def test_spec_hash_ignores_execution_fields(project):
    a = plan(project, MemoryStore()).plan.spec_hash
    assert plan(project, MemoryStore(), ["parallelism.tensor=2"]).plan.spec_hash == a
    assert plan(project, MemoryStore(), ["stage.sft.lr=1e-4"]).plan.spec_hash != a


def test_lora_targets_are_a_set(project):
    """The same layers listed in another order are the same adapters: the same key."""
    project.write_text(
        project.read_text()
        + '\n[[stage]]\nname = "lora"\nkind = "lora"\nfrom = "pretrain"\ndata = "chat"\n'
        'steps = 2\nglobal_batch = 2\nadapter = { targets = ["qkv", "fc1"] }\n'
    )
    store = MemoryStore()
    store.commit(plan(project, store))
    nodes = by_name(plan(project, store, ['stage.lora.adapter.targets=["fc1", "qkv"]']))
    assert nodes["stage:lora"].status == "cached", nodes["stage:lora"].reason


def test_a_corrupt_artifact_is_the_whole_reason(project):
    """Its key was built: what the last build of the node differed in is beside the point."""
    store = MemoryStore()
    base = plan(project, store)
    store.commit(base)
    store.commit(plan(project, store, ["stage.sft.lr=1e-5"]))
    store.corrupt[base.keys["stage:sft"].key] = "out.txt does not match its recorded digest"
    sft = by_name(plan(project, store))["stage:sft"]
    assert sft.status == "build"
    assert (
        sft.reason == "the stored artifact is corrupt (out.txt does not match its recorded digest)"
    )
    assert sft.changes == ()


def test_a_reference_to_another_stage_is_named_as_the_spec_names_it(project):
    store = MemoryStore()
    store.commit(plan(project, store))
    nodes = by_name(plan(project, store, ["stage.dpo.from='pretrain'"]))
    assert nodes["stage:dpo"].reason == "stage.dpo.from 'sft' -> 'pretrain'", nodes["stage:dpo"]


SCORE = """\
def score(prompt, completion, record):
    return float(len(completion))
"""


def test_editing_a_reward_function_rebuilds_its_stage_and_says_why(tmp_path):
    """The spec names only ``module:function``: the module's file enters the stage's key
    by its content, so an edit to the function rebuilds the stage, and plan says so."""
    spec = function_reward_project(tmp_path, "rewards_edited", SCORE)
    store = MemoryStore()
    first = plan(spec, store)
    store.commit(first)
    assert first.keys["stage:rl"].preimage["inputs"]["function:0"]["files"] == 1
    assert by_name(plan(spec, store))["stage:rl"].status == "cached"
    (tmp_path / "rewards_edited.py").write_text(SCORE.replace("len(completion)", "1"))
    nodes = by_name(plan(spec, store))
    assert nodes["stage:rl"].status == "build"
    assert nodes["stage:rl"].reason == "stage.rl.rewards[0].module_file content changed"
    assert nodes["stage:dpo"].status == "cached"


def test_a_reward_module_beside_the_spec_is_found_from_any_directory(tmp_path, monkeypatch):
    """Found beside the spec at plan time, and imported from there by the stage whatever
    its working directory (a Ray worker's is not the user's)."""
    from llmbuild.backends.megatron.rewards import Rewards

    spec = function_reward_project(tmp_path / "project", "rewards_beside", SCORE)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    stage = plan(spec, MemoryStore()).graph["stage:rl"].config.stage
    assert stage.rewards[0].module_file == str(tmp_path / "project" / "rewards_beside.py")
    monkeypatch.chdir("/")
    rewards = Rewards(stage.model_dump(mode="json")["rewards"], {})  # as a rank gets them
    assert rewards(["p", "p"], ["abc", ""], [{}, {}], []) == [3.0, 0.0]
