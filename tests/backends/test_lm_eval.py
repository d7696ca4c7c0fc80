"""The lm-eval suite: local tasks run offline on a built stage, our adapter scores exactly
as lm-eval's own ``hf`` model on the stage's hf export, and task mistakes read plainly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.backends.conftest import artifact, run_nodes
from tests.backends.test_megatron import tiny_spec
from tests.conftest import REPO, suite_store

TASKS = REPO / "tests" / "data" / "lm_eval"
LOCAL = ["llmbuild_mc", "llmbuild_gen", "llmbuild_rolling"]
SUITE = """
[[eval]]
name = "bench"
kind = "lm-eval"
stages = ["pretrain"]
tasks = {tasks}
include_path = "tasks"
batch_size = 8
"""
EXPORT = """
[[export]]
format = "hf"
stage = "pretrain"
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny gpt2 stage, its hf export and the local tasks run on it; the tasks folder
    is copied next to the spec, so relative data paths never meet the working directory."""
    root = tmp_path_factory.mktemp("lm_eval")
    shutil.copytree(TASKS, root / "tasks")
    spec = tiny_spec(root, steps=12, extra=SUITE.format(tasks=json.dumps(LOCAL)) + EXPORT)
    store = suite_store(tmp_path_factory)
    outcome = run_nodes(spec, store)
    assert outcome.ok, outcome.log
    return root, spec, store, outcome


def _samples(out_dir: Path, task: str) -> list[dict]:
    rows = [json.loads(line) for line in (out_dir / "samples.jsonl").read_text().splitlines()]
    return sorted((r for r in rows if r["task"] == task), key=lambda r: r["doc_id"])


def test_local_tasks_run_end_to_end_into_the_record(built, capsys):
    _root, spec, store, outcome = built
    out = artifact(outcome, store, "eval:bench@pretrain")
    results = json.loads((out / "results.json").read_text())
    assert results["kind"] == "lm-eval" and set(results["results"]) == set(LOCAL)
    mc, gen = results["results"]["llmbuild_mc"], results["results"]["llmbuild_gen"]
    assert mc["samples"] == gen["samples"] == 20
    assert 0 <= mc["acc"] <= 1 and mc["acc_stderr"] > 0 and 0 <= gen["exact_match"] <= 1
    assert results["results"]["llmbuild_rolling"]["bits_per_byte"] > 0
    metrics = outcome.results["eval:bench@pretrain"].record.metrics
    assert metrics["llmbuild_mc.acc"] == mc["acc"] and "llmbuild_gen.exact_match" in metrics
    md = (out / "results.md").read_text()
    assert md.startswith("| task | metric | value | stderr |") and "| llmbuild_mc | acc |" in md

    generated = [r["responses"][0] for r in _samples(out, "llmbuild_gen")]
    assert len(generated) == 20 and all("\n" not in g and len(g) <= 8 for g in generated)
    assert all(len(r["responses"]) == 3 for r in _samples(out, "llmbuild_mc"))

    from llmbuild.cli import main

    assert main(["status", str(spec), "--store", str(store)]) == 0
    shown = capsys.readouterr().out
    assert "| bench.llmbuild_mc.acc |" in shown and "| bench.llmbuild_gen.exact_match |" in shown


def test_adapter_scores_as_lm_eval_hf_model_on_the_export(built, monkeypatch):
    """Plain lm-eval (run from the tasks folder, so it finds the data itself) with its
    ``hf`` model on the export: the same log-likelihoods, accuracy and generations. Our
    adapter encodes without special tokens and scores an empty context after EOS, as
    training saw documents; ``hf`` is told the same."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    root, _, store, outcome = built
    hf_dir = artifact(outcome, store, "export:hf@pretrain")
    ours = artifact(outcome, store, "eval:bench@pretrain")
    eos = json.loads((hf_dir / "config.json").read_text())["eos_token_id"]
    monkeypatch.chdir(root / "tasks")
    hf = HFLM(
        pretrained=str(hf_dir), device="cpu", batch_size=8, add_bos_token=False, prefix_token_id=eos
    )
    theirs = simple_evaluate(
        model=hf,
        tasks=LOCAL,
        num_fewshot=0,
        task_manager=TaskManager(include_path=".", include_defaults=False),
    )
    recorded = json.loads((ours / "results.json").read_text())["results"]
    assert abs(theirs["results"]["llmbuild_mc"]["acc,none"] - recorded["llmbuild_mc"]["acc"]) < 1e-6

    def scores(rows, key):
        return [choice[0] for row in rows for choice in row[key]]

    hf_mc = sorted(theirs["samples"]["llmbuild_mc"], key=lambda r: r["doc_id"])
    a, b = scores(hf_mc, "filtered_resps"), scores(_samples(ours, "llmbuild_mc"), "responses")
    assert len(a) == len(b) == 60 and max(abs(x - y) for x, y in zip(a, b)) < 1e-4
    hf_rolling = sorted(theirs["samples"]["llmbuild_rolling"], key=lambda r: r["doc_id"])
    a = [r["filtered_resps"][0] for r in hf_rolling]
    b = [r["responses"][0] for r in _samples(ours, "llmbuild_rolling")]
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-3
    hf_gen = sorted(theirs["samples"]["llmbuild_gen"], key=lambda r: r["doc_id"])
    assert [r["filtered_resps"] for r in hf_gen] == [
        r["responses"] for r in _samples(ours, "llmbuild_gen")
    ]


def test_the_adapter_scores_without_a_progress_bar(built, capfd):
    """lm-eval's "Tokenizing inputs" bar would break into a build's progress lines."""
    from llmbuild.backends.eval.lm_eval_adapter import BuiltModel
    from lm_eval.api.instance import Instance

    _, _, store, outcome = built
    model = BuiltModel(
        artifact(outcome, store, "stage:pretrain"),
        artifact(outcome, store, "tokenizer"),
        batch_size=8,
        max_gen_toks=4,
    )
    asked = [("The", " cat"), ("", " dog")]
    requests = [Instance("loglikelihood", {}, pair, idx=i) for i, pair in enumerate(asked)]
    scores = model.loglikelihood(requests)
    assert len(scores) == 2 and all(s[0] < 0 for s in scores)
    assert "Tokenizing" not in capfd.readouterr().err


def test_an_unknown_task_is_a_plain_error(built):
    root, _, store, _ = built
    shutil.copytree(TASKS, root / "typo" / "tasks")
    spec = tiny_spec(root / "typo", steps=12, extra=SUITE.format(tasks='["llmbuild_mcq"]'))
    outcome = run_nodes(spec, store)
    assert outcome.results["stage:pretrain"].state == "cached"
    failed = outcome.results["eval:bench@pretrain"]
    assert failed.state == "failed"
    assert "unknown lm-eval task 'llmbuild_mcq'" in failed.detail
    assert "did you mean 'llmbuild_mc'?" in failed.detail and "Traceback" not in outcome.log


def test_task_data_outside_include_path_is_refused(tmp_path):
    from llmbuild.backends.eval.lm_eval_suite import TaskError, task_manager, task_specs
    from llmbuild.backends.eval.spec import LmEval

    (tmp_path / "tasks").mkdir()
    (tmp_path / "outside.jsonl").write_text('{"text": "hi"}\n')
    yaml = (TASKS / "llmbuild_rolling.yaml").read_text()
    (tmp_path / "tasks" / "t.yaml").write_text(yaml.replace("data/text.jsonl", "../outside.jsonl"))
    suite = LmEval(
        name="x", kind="lm-eval", stages=["s"], tasks=["llmbuild_rolling"],
        include_path=str(tmp_path / "tasks"),
    )  # fmt: skip
    with pytest.raises(TaskError, match="lies outside include_path"):
        task_specs(task_manager(suite), suite, tmp_path / "cache")


def test_generation_stops_at_stop_strings_eos_and_the_token_limit():
    """Greedy decoding over a stand-in model that continues a -> b -> c -> newline -> d
    -> EOS, whatever the window."""
    import torch
    from llmbuild.backends.eval.lm_eval_adapter import BuiltModel
    from llmbuild.backends.tokenizer.build import char_tokenizer
    from lm_eval.api.instance import Instance
    from lm_eval.api.model import LM

    tok = char_tokenizer(["abcd\n"], ["<|eos|>", "<|unk|>"])
    ids = {c: tok.token_to_id(c) for c in "abcd\n"}
    nxt = {ids["a"]: ids["b"], ids["b"]: ids["c"], ids["c"]: ids["\n"], ids["\n"]: ids["d"]}

    def model(window, pos, mask):
        target = torch.tensor([[nxt.get(int(t), 0) for t in row] for row in window])
        return torch.nn.functional.one_hot(target, 8).float() * 10

    lm = BuiltModel.__new__(BuiltModel)
    LM.__init__(lm)
    lm.model, lm.tok, lm.vocab, lm.seq_len, lm.eos_id = model, tok, 8, 2, 0
    lm.stop_ids = {0}  # the end-of-text id, and a chat model's end of turn beside it
    lm.batch_size, lm.max_gen_toks = 2, 16

    def gen(prompt, **kwargs):
        return Instance("generate_until", {}, (prompt, kwargs), 0)

    requests = [
        gen("a", until=["\n"]),
        gen("a", until=[]),
        gen("ba", until=[], max_gen_toks=1),
        gen("a", until=["c"]),
        gen("c", until="d"),
    ]
    assert lm.generate_until(requests) == ["bc", "bc\nd", "b", "b", "\n"]
    lm.stop_ids = {0, ids["d"]}  # an end-of-turn token stops as EOS does, unprinted
    assert lm.generate_until([gen("a", until=[])]) == ["bc\n"]


def test_lm_eval_goes_without_its_environment_probe(tmp_path, monkeypatch, capfd):
    """collect_env's subprocesses and a git call that complains outside a repository are
    left out while an eval runs, and put back after."""
    from llmbuild.backends.eval.lm_eval_suite import without_environment_probe
    from lm_eval import evaluator

    saved = evaluator.add_env_info, evaluator.get_git_commit_hash
    monkeypatch.chdir(tmp_path)  # no repository
    with without_environment_probe():
        results: dict = {}
        evaluator.add_env_info(results)
        assert results == {} and evaluator.get_git_commit_hash() is None
    assert "not a git repository" not in capfd.readouterr().err
    assert (evaluator.add_env_info, evaluator.get_git_commit_hash) == saved
