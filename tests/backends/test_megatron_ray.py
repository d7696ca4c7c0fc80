"""Data-parallel pretraining as two TorchTrainer ranks (gloo) matches one rank on the same
global batch."""

from __future__ import annotations

import io
import json

import pytest

from llmbuild.run.build import BuildOptions, PlainReporter, build
from llmbuild.spec.load import load_spec
from llmbuild.store.store import Store
from tests.backends.conftest import artifact, run_nodes
from tests.backends.test_megatron import tiny_spec
from tests.conftest import REPO

ray = pytest.importorskip("ray")


def test_data_parallel_two_ranks_match_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    spec = tiny_spec(tmp_path, steps=6)
    one = run_nodes(spec, tmp_path / "one", ("stage:pretrain",))
    try:
        two = build(
            load_spec(spec, ["parallelism.data=2", "parallelism.micro_batch=2"]),
            Store(str(tmp_path / "two")),
            BuildOptions(executor="ray", live=False, until=("stage:pretrain",)),
            PlainReporter(io.StringIO()),
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert two.ok, {n: r.detail for n, r in two.results.items() if r.detail}
    assert two.planned.keys["stage:pretrain"].key == one.planned.keys["stage:pretrain"].key

    def losses(outcome, store):
        path = artifact(outcome, store, "stage:pretrain") / "metrics.jsonl"
        return [json.loads(line)["loss"] for line in path.read_text().splitlines()]

    a, b = losses(one, tmp_path / "one"), losses(two, tmp_path / "two")
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-5 * abs(x), (a, b)


MORE = """
[[stage]]
name = "more"
kind = "pretrain"
from = "pretrain"
steps = 3
global_batch = 8
lr = 1e-3
"""


def test_tensor_parallel_two_ranks_match_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    spec = tiny_spec(tmp_path, steps=6, extra=MORE)
    one = run_nodes(spec, tmp_path / "one", ("stage:pretrain",))
    try:
        two = build(
            load_spec(spec, ["parallelism.tensor=2"]),
            Store(str(tmp_path / "two")),
            BuildOptions(executor="ray", live=False, until=("stage:pretrain",)),
            PlainReporter(io.StringIO()),
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert two.ok, {n: r.detail for n, r in two.results.items() if r.detail}
    a = [
        json.loads(x)["loss"]
        for x in (artifact(one, tmp_path / "one", "stage:pretrain") / "metrics.jsonl")
        .read_text()
        .splitlines()
    ]
    b = [
        json.loads(x)["loss"]
        for x in (artifact(two, tmp_path / "two", "stage:pretrain") / "metrics.jsonl")
        .read_text()
        .splitlines()
    ]
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-5 * abs(x), (a, b)
    from safetensors.torch import load_file

    wa = load_file(str(artifact(one, tmp_path / "one", "stage:pretrain") / "model.safetensors"))
    wb = load_file(str(artifact(two, tmp_path / "two", "stage:pretrain") / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4

    # The same spec at another layout: the trained stage is cached, and the stage after it
    # trains at tensor = 2 from the layout-independent artifact made at tensor = 1.
    try:
        more = build(
            load_spec(spec, ["parallelism.tensor=2"]),
            Store(str(tmp_path / "one")),
            BuildOptions(executor="ray", live=False),
            PlainReporter(io.StringIO()),
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert more.ok, {n: r.detail for n, r in more.results.items() if r.detail}
    assert more.results["stage:pretrain"].state == "cached"
    assert more.results["stage:more"].state == "built"
    first = json.loads(
        (artifact(more, tmp_path / "one", "stage:more") / "metrics.jsonl")
        .read_text()
        .splitlines()[0]
    )
    assert first["loss"] < a[-1] + 0.3  # it starts from the trained weights, not from scratch


def test_llama_tensor_parallel_starts_from_the_same_model(tmp_path, monkeypatch):
    """SwiGLU's fc1 is split per rank as [gate_r; up_r]: initial and final weights are
    still the layout-independent ones."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    spec = tiny_spec(tmp_path, "llama", steps=4)
    one = run_nodes(spec, tmp_path / "one", ("stage:pretrain",))
    try:
        two = build(
            load_spec(spec, ["parallelism.tensor=2"]),
            Store(str(tmp_path / "two")),
            BuildOptions(executor="ray", live=False, until=("stage:pretrain",)),
            PlainReporter(io.StringIO()),
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert two.ok, {n: r.detail for n, r in two.results.items() if r.detail}
    a = [
        json.loads(x)["loss"]
        for x in (artifact(one, tmp_path / "one", "stage:pretrain") / "metrics.jsonl")
        .read_text()
        .splitlines()
    ]
    b = [
        json.loads(x)["loss"]
        for x in (artifact(two, tmp_path / "two", "stage:pretrain") / "metrics.jsonl")
        .read_text()
        .splitlines()
    ]
    for x, y in zip(a, b):
        assert abs(x - y) <= 1e-5 * abs(x), (a, b)


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_pipeline_parallel_two_stages_match_one(tmp_path, monkeypatch, style):
    """Two pipeline stages (1F1B schedule over gloo) train the same model as one: tied
    embeddings (gpt2) are kept in sync between the first and the last stage."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    spec = tiny_spec(tmp_path, style, steps=4)
    one = run_nodes(spec, tmp_path / "one", ("stage:pretrain",))
    try:
        two = build(
            load_spec(spec, ["parallelism.pipeline=2"]),
            Store(str(tmp_path / "two")),
            BuildOptions(executor="ray", live=False, until=("stage:pretrain",)),
            PlainReporter(io.StringIO()),
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert two.ok, {n: r.detail for n, r in two.results.items() if r.detail}
    a = [
        json.loads(x)
        for x in (artifact(one, tmp_path / "one", "stage:pretrain") / "metrics.jsonl")
        .read_text()
        .splitlines()
    ]
    b = [
        json.loads(x)
        for x in (artifact(two, tmp_path / "two", "stage:pretrain") / "metrics.jsonl")
        .read_text()
        .splitlines()
    ]
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= 1e-5 * abs(x["loss"]), (a, b)
    assert abs(a[-1]["val_loss"] - b[-1]["val_loss"]) <= 1e-5 * a[-1]["val_loss"]
    from safetensors.torch import load_file

    wa = load_file(str(artifact(one, tmp_path / "one", "stage:pretrain") / "model.safetensors"))
    wb = load_file(str(artifact(two, tmp_path / "two", "stage:pretrain") / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4
