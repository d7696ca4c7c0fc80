"""Everything downstream works from an imported base: sft and lora from a qwen2-style
checkpoint train and export (the PEFT adapter loads in peft over the original directory),
lm-eval scores it as lm-eval's own hf model scores the original, it trains at tensor = 2
and pipeline = 2 as at one rank, and the base is keyed by its content."""

from __future__ import annotations

import io
import json
import shutil

import pytest
import torch

from llmbuild.plan import StatCache, plan_spec
from llmbuild.spec.load import load_spec
from llmbuild.store.store import Store
from tests.backends.conftest import artifact, run_nodes
from tests.checkpoints import import_spec, write_checkpoint
from tests.conftest import REPO, suite_store

CHATS = [
    {"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                  {"role": "assistant", "content": f"{a} plus {b} is {a + b}."}]}
    for a in range(6) for b in range(6)
]  # fmt: skip
STAGES = """
[[data.sources]]
name = "chat"
path = "chat.jsonl"
role = "chat"

[data.split]
validation = 0.2

[[stage]]
name = "sft"
kind = "sft"
from = "base"
data = "chat"
steps = 8
global_batch = 4
lr = 3e-3

[[stage]]
name = "lora"
kind = "lora"
from = "base"
data = "chat"
steps = 8
global_batch = 4
lr = 1e-2
adapter = {{ rank = 4, alpha = 8.0, targets = ["qkv", "proj", "fc1", "fc2"] }}

[[eval]]
name = "bench"
kind = "lm-eval"
stages = ["base"]
tasks = ["llmbuild_mc"]
include_path = "tasks"

[[export]]
format = "hf"
stage = "sft"

[[export]]
format = "peft"
stage = "lora"
"""


def _project(root):
    ck = write_checkpoint(root / "ck", "qwen2", tie_word_embeddings=True)
    (root / "chat.jsonl").write_text("".join(json.dumps(c) + "\n" for c in CHATS))
    shutil.copytree(REPO / "tests" / "data" / "lm_eval", root / "tasks")
    return ck, import_spec(root, ck, STAGES.replace("{{", "{").replace("}}", "}"))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("import-train")
    ck, spec = _project(root)
    outcome = run_nodes(spec, root / "store")
    assert outcome.ok, outcome.log
    return root, ck, spec, outcome


def test_sft_and_lora_from_an_imported_base_train_and_export(built):
    _, _, _, outcome = built
    for stage in ("stage:sft", "stage:lora"):
        m = outcome.results[stage].record.metrics
        assert m["val_loss"] < m["initial_val_loss"] - 0.1, (stage, m)
    assert outcome.results["export:hf@sft"].record.metrics["max_logit_diff"] < 1e-4
    assert outcome.results["export:peft@lora"].record.metrics["max_logit_diff"] < 1e-4


def test_the_peft_adapter_loads_over_the_original_checkpoint(built):
    from llmbuild.backends.export.run import megatron_logits
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root, ck, _, outcome = built
    store = root / "store"
    adapter = artifact(outcome, store, "export:peft@lora")
    base = AutoModelForCausalLM.from_pretrained(str(ck), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    ids = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = model(ids).logits
    ours = megatron_logits(
        artifact(outcome, store, "stage:lora"), ids, artifact(outcome, store, "stage:base")
    )
    assert (theirs - ours).abs().max() < 1e-4


def test_lm_eval_scores_the_import_as_its_hf_model_scores_the_original(built, monkeypatch):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    root, ck, _, outcome = built
    ours = json.loads(
        (artifact(outcome, root / "store", "eval:bench@base") / "results.json").read_text()
    )["results"]["llmbuild_mc"]
    eos = json.loads((ck / "config.json").read_text())["eos_token_id"]
    monkeypatch.chdir(root / "tasks")
    hf = HFLM(
        pretrained=str(ck), device="cpu", batch_size=8, add_bos_token=False, prefix_token_id=eos
    )
    theirs = simple_evaluate(
        model=hf,
        tasks=["llmbuild_mc"],
        task_manager=TaskManager(include_path=".", include_defaults=False),
    )["results"]["llmbuild_mc"]
    assert abs(theirs["acc,none"] - ours["acc"]) < 1e-9
    assert abs(theirs["acc_norm,none"] - ours["acc_norm"]) < 1e-9


def test_the_base_is_keyed_by_its_content(built, tmp_path):
    root, ck, spec, _ = built
    store = Store(str(root / "store"))

    def plan(path=spec, overrides=()):
        planned = plan_spec(load_spec(path, overrides), store=store, cache=StatCache())
        return {n.name: n for n in planned.plan.nodes}

    assert {n.status for n in plan().values()} == {"cached"}
    # The same files under another path: one node, nothing rebuilds.
    moved = tmp_path / "elsewhere"
    shutil.copytree(ck, moved)
    assert {n.status for n in plan(overrides=[f"stage.base.checkpoint='{moved}'"]).values()} == {
        "cached"
    }
    # Other weights behind the same path: the base and all that follows rebuild.
    write_checkpoint(moved, "qwen2", seed=1, tie_word_embeddings=True)
    nodes = plan(overrides=[f"stage.base.checkpoint='{moved}'"])
    assert nodes["stage:base"].status == "build"
    assert "stage.base.checkpoint content changed" in nodes["stage:base"].reason
    # The checkpoint's tokenizer files, edited: the reason names where the spec has them
    config = moved / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "padding_side": "left"}))
    tokenizer = plan(overrides=[f"stage.base.checkpoint='{moved}'"])["tokenizer"]
    assert tokenizer.status == "build", tokenizer
    assert tokenizer.reason == "stage.base.checkpoint (its tokenizer files) content changed"
    for name in ("stage:sft", "stage:lora", "eval:bench@base"):
        assert nodes[name].status == "build" and "stage:base" in nodes[name].reason, name
    assert "upstream stage:lora" in nodes["export:peft@lora"].reason
    assert nodes["source:chat"].status == "cached"


ray = pytest.importorskip("ray")


@pytest.mark.parametrize("layout", ["parallelism.tensor=2", "parallelism.pipeline=2"])
def test_an_imported_base_trains_at_tensor_and_pipeline_parallelism(
    built, tmp_path_factory, layout, monkeypatch
):
    """Before any update, two ranks holding their slices of the imported weights measure
    the same validation loss as one rank; then they train the same way."""
    from llmbuild.run.build import BuildOptions, PlainReporter, build

    monkeypatch.setenv("PYTHONPATH", str(REPO))
    _, _, spec, one = built
    # A layout is execution only, so the stage would be cached at any layout: it is built
    # (import included) into a store of the layout's own, kept like the suite's.
    store = suite_store(tmp_path_factory) / "import-layouts" / layout.split(".")[1]
    try:
        two = build(
            load_spec(spec, [layout]),
            Store(str(store)),
            BuildOptions(executor="ray", live=False, only=("stage:sft",)),
            PlainReporter(io.StringIO()),
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert two.ok, {n: r.detail for n, r in two.results.items() if r.detail}
    a, b = one.results["stage:sft"].record.metrics, two.results["stage:sft"].record.metrics
    assert abs(a["initial_val_loss"] - b["initial_val_loss"]) < 1e-5 * a["initial_val_loss"]
    assert abs(a["val_loss"] - b["val_loss"]) < 1e-4 * a["val_loss"]
