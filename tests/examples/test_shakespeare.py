"""The main example builds on this CPU: validation loss below 2.0, evals, hf export."""

from __future__ import annotations

from tests.examples.conftest import build_example


def test_shakespeare_reaches_validation_loss_below_2(tmp_path, tmp_path_factory):
    outcome = build_example("shakespeare", tmp_path, tmp_path_factory, seed="shakespeare")
    metrics = outcome.results["stage:pretrain"].record.metrics
    assert metrics["steps"] == 1500
    assert metrics["val_loss"] < 2.0, metrics
    assert outcome.results["eval:ppl@pretrain"].record.metrics["shakespeare.loss"] < 2.0
    assert outcome.results["export:hf@pretrain"].record.metrics["max_logit_diff"] < 1e-4


QUANTIZED = "".join(
    f'[[export]]\nformat = "gguf"\nstage = "pretrain"\nname = "{q}"\nquantization = "{q}"\n'
    for q in ("f16", "q8_0", "q5_1", "q4_0")
)


def test_quantized_gguf_exports_of_the_trained_model_keep_its_perplexity(
    tmp_path, tmp_path_factory, capsys
):
    """GGUF f16, q8_0, q5_1 and q4_0 of the trained model: each file read back by gguf and
    by transformers, its held-out perplexity measured beside the unquantized model's;
    fewer bits, a smaller file and a perplexity that stays close."""
    import gguf

    from llmbuild.cli import main
    from tests.backends.conftest import artifact, run_nodes
    from tests.examples.conftest import copy_example, example_store

    store = example_store("shakespeare", tmp_path_factory, seed="shakespeare")
    example = copy_example("shakespeare", tmp_path)
    spec = example / "spec.toml"
    spec.write_text(spec.read_text() + QUANTIZED)
    outcome = run_nodes(spec, store)
    assert outcome.ok, outcome.log
    m = {q: outcome.results[f"export:{q}"].record.metrics for q in ("f16", "q8_0", "q5_1", "q4_0")}
    T = gguf.GGMLQuantizationType
    for q, qtype in (("q8_0", T.Q8_0), ("q5_1", T.Q5_1), ("q4_0", T.Q4_0)):
        reader = gguf.GGUFReader(str(artifact(outcome, store, f"export:{q}") / "model.gguf"))
        assert reader.get_tensor(1).tensor_type in (qtype, T.F32)
        assert {t.tensor_type for t in reader.tensors} == {qtype, T.F32}, q
    sizes = [m[q]["gguf_bytes"] for q in ("f16", "q8_0", "q5_1", "q4_0")]
    assert sizes == sorted(sizes, reverse=True)
    unquantized = m["f16"]["unquantized_perplexity"]
    assert 3 < unquantized < 8  # a trained model (a uniform one would be 65)
    assert m["f16"]["heldout_tokens"] == 8 * 8 * 64  # max_batches of 8 sequences
    ppl = {q: m[q]["perplexity"] for q in m}
    assert abs(ppl["f16"] / unquantized - 1) < 1e-3
    assert abs(ppl["q8_0"] / ppl["f16"] - 1) < 0.01
    assert abs(ppl["q4_0"] / ppl["f16"] - 1) < 0.10
    assert abs(ppl["q5_1"] / ppl["f16"] - 1) <= abs(ppl["q4_0"] / ppl["f16"] - 1) + 0.005
    capsys.readouterr()
    assert main(["status", str(spec), "--store", str(store)]) == 0
    shown = capsys.readouterr().out
    assert (
        "| export | quantization | size (MB) | held-out perplexity | unquantized | ratio |" in shown
    )
    assert f"| q4_0 | q4_0 | {round(m['q4_0']['gguf_bytes'] / 1e6, 3):.4g} |" in shown
