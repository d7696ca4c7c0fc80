"""An imported base at tensor = 2 and pipeline = 2: each rank reads only the slices of
the canonical weights file that it holds, and the ranks together give the logits one
rank gives (and transformers gives) on the same tokens."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.backends.conftest import artifact, run_nodes
from tests.checkpoints import import_spec, write_checkpoint
from tests.conftest import suite_store

SEQ = 24


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> Path:
    """A tiny llama-style import (SwiGLU, grouped-query attention, untied output) in the
    suite's store; its artifact directory."""
    root = tmp_path_factory.mktemp("layouts")
    checkpoint = write_checkpoint(root / "hf", "llama", seed=3)
    store = suite_store(tmp_path_factory)
    outcome = run_nodes(import_spec(root, checkpoint), store, ("stage:base",))
    assert outcome.ok, outcome.log
    return artifact(outcome, store, "stage:base")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, layout: tuple[int, int], stage_dir: str, port: int, out: str):
    """One rank: load the import at ``layout`` (tensor, pipeline), counting the elements
    read from the file, and run the fixed tokens forward; rank 0 saves the whole logits."""
    import torch.distributed as dist
    from llmbuild.backends.export.run import random_ids
    from llmbuild.backends.megatron import pipeline, weights
    from llmbuild.backends.megatron.cpu import apply_cpu_patches
    from llmbuild.backends.megatron.model import build_model, transformer_config
    from llmbuild.backends.megatron.shards import load_canonical

    from llmbuild.spec.model import Architecture

    torch.set_num_threads(1)
    apply_cpu_patches()
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    from megatron.core import parallel_state

    tp, pp = layout
    parallel_state.initialize_model_parallel(tp, pp)
    config = json.loads((Path(stage_dir) / "config.json").read_text())
    arch = Architecture.model_validate(config["architecture"])
    first = last = True
    if pp > 1:
        _, _, first, last = pipeline.stage_info(arch.layers)
    model = build_model(
        arch, config["vocab_size"], transformer_config(arch, tensor=tp, pipeline=pp), first, last
    ).eval()
    read = []
    full, part = weights.Stored.full, weights.Stored.part
    weights.Stored.full = lambda self: read.append(t := full(self)) or t  # type: ignore[method-assign]
    weights.Stored.part = lambda self, *a: read.append(t := part(self, *a)) or t  # type: ignore[method-assign]
    state = weights.rank_weights(Path(stage_dir))
    if pp > 1:
        state = pipeline.to_local(state, arch.layers, arch.tie_embeddings)
    load_canonical(model, state, arch.activation == "swiglu")
    held = sum(v.numel() for k, v in model.state_dict().items() if not k.endswith("_extra_state"))
    ids = random_ids(config["vocab_size"], 2, SEQ, seed=5)
    pos = torch.arange(SEQ).unsqueeze(0).expand(2, -1)
    with torch.no_grad():
        if pp > 1 and first:  # the first stage sends its hidden states on
            dist.send(model(ids, pos, None).contiguous(), dst=1)
            logits = None
        else:
            if pp > 1:
                hidden = torch.empty(SEQ, 2, arch.hidden)
                dist.recv(hidden, src=0)
                model.set_input_tensor(hidden)
            logits = model(ids, pos, None)
            if tp > 1:  # the output layer's vocabulary slices
                parts = [torch.empty_like(logits) for _ in range(tp)]
                dist.all_gather(parts, logits.contiguous())
                logits = torch.cat(parts, dim=-1)
    result = {"read": sum(t.numel() for t in read), "held": held}
    if logits is not None:
        result["logits"] = logits[..., : config["vocab_size"]]
    torch.save(result, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("layout", [(2, 1), (1, 2)], ids=["tensor2", "pipeline2"])
def test_an_import_gives_the_same_logits_at_two_ranks(imported, tmp_path, layout):
    from llmbuild.backends.export.run import megatron_logits, random_ids
    from safetensors import safe_open

    mp.spawn(
        _rank,
        args=(2, layout, str(imported), _free_port(), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    with safe_open(str(imported / "model.safetensors"), framework="pt") as f:
        total = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    for r in ranks:  # each rank read exactly what it holds: its own slices, not the file
        assert r["read"] == r["held"] < total
    vocab = json.loads((imported / "config.json").read_text())["vocab_size"]
    ids = random_ids(vocab, 2, SEQ, seed=5)
    one = megatron_logits(imported, ids)
    logits = next(r["logits"] for r in ranks if "logits" in r)
    assert logits.shape == one.shape
    assert float((logits - one).abs().max()) < 1e-5
