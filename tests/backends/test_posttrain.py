"""Post-training stages on megatron-core (CPU): SFT learns only the assistant's tokens,
LoRA trains only adapters and merges exactly, DPO and reward models learn the preferred
answers, GRPO raises its reward, every kind resumes exactly after a real kill."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmbuild.plan import plan_spec
from llmbuild.plan.digest import StatCache
from llmbuild.spec.load import load_spec
from tests.backends.conftest import artifact, kill_after_checkpoint, run_nodes
from tests.backends.posttrain_spec import posttrain_spec
from tests.conftest import artifact_dirs, private_copy, suite_store

SFT = """
[[stage]]
name = "sft"
kind = "sft"
from = "pretrain"
data = "chat"
steps = 12
global_batch = 8
lr = 2e-3
eval_batches = 2
checkpoint_every = 3
"""
LORA = """
[[stage]]
name = "lora"
kind = "lora"
from = "sft"
data = "chat"
steps = 6
global_batch = 8
lr = 2e-3
eval_batches = 1
checkpoint_every = 3
adapter = { rank = 2, targets = ["qkv", "proj"] }
"""
DPO = """
[[stage]]
name = "dpo"
kind = "dpo"
from = "sft"
data = "prefs"
steps = 12
global_batch = 8
lr = 3e-4
beta = 0.5
eval_batches = 2
checkpoint_every = 3
"""
REWARD = """
[[stage]]
name = "rm"
kind = "reward"
from = "sft"
data = "prefs"
steps = 12
global_batch = 8
lr = 1e-3
eval_batches = 2
checkpoint_every = 3
"""
GRPO = """
[[stage]]
name = "grpo"
kind = "grpo"
from = "sft"
data = "prompts"
steps = 8
global_batch = 4
lr = 2e-3
num_generations = 4
max_new_tokens = 4
eval_batches = 2
checkpoint_every = 3
rewards = [{ kind = "length", target = 1, weight = -1.0 }]
"""
ALL = SFT + LORA + DPO + REWARD + GRPO


def _metrics(store: Path, outcome, name: str) -> list[dict]:
    path = artifact(outcome, store, name) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Every post-training kind built once: pretrain -> sft -> lora, dpo, rm, grpo."""
    root = tmp_path_factory.mktemp("chain")
    spec = posttrain_spec(root, ALL)
    store = suite_store(tmp_path_factory)
    outcome = run_nodes(spec, store)
    assert outcome.ok, outcome.log
    return spec, store, outcome


def test_sft_batches_learn_only_the_assistant_and_keep_documents_apart(chain):
    from llmbuild.backends.megatron.posttrain_data import ChatSamples
    from tokenizers import Tokenizer

    _spec, store, outcome = chain
    chat = artifact(outcome, store, "tokenize:chat")
    tok_dir = artifact(outcome, store, "tokenizer")
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer" / "tokenizer.json"))
    packed = ChatSamples({"chat": str(chat)}, "train", 32, 0, 0, packing=True).batch([0, 1, 2])
    learned = set(
        tok.decode(packed["labels"][packed["loss_mask"] > 0].tolist(), skip_special_tokens=False)
    )
    assert learned <= set("0123456789") | {"<", "|", "i", "m", "_", "e", "n", "d", ">"}
    assert "<|im_end|>" in tok.decode(packed["labels"][0].tolist(), skip_special_tokens=False)
    hidden = packed["attention_mask"][0, 0]  # True: may not attend
    starts = (packed["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert len(starts) >= 2, "several conversations share one packed sequence"
    second = starts[1]
    assert hidden[second:, :second].all(), "a conversation never sees the one before it"
    assert not hidden[second + 1, second], "but sees its own earlier tokens"
    padded = ChatSamples({"chat": str(chat)}, "train", 32, 0, 0, packing=False).batch([0])
    assert "attention_mask" not in padded
    assert padded["position_ids"][0].tolist() == list(range(32))


def test_sft_lowers_the_answer_loss(chain):
    _, _store, outcome = chain
    metrics = outcome.results["stage:sft"].record.metrics
    assert metrics["val_loss"] < metrics["initial_val_loss"] - 1.0


def test_sft_learns_the_same_at_any_micro_batch(tmp_path):
    """Answers of 1 to 24 tokens, unpacked: the step's loss is the mean over all its
    learned tokens, so micro batches of 1 (8 accumulated) train what micro batches of 4
    do (the layout is execution only), to float rounding. Averaged per micro batch, a
    short answer's tokens weighed more at 1 than at 4."""
    import random

    rng = random.Random(0)
    lines = [
        json.dumps({"messages": [{"role": "user", "content": f"{i} + {i}"},
                                 {"role": "assistant", "content": "7" * rng.randint(1, 24)}]})
        for i in range(120)
    ]  # fmt: skip
    varied = '[[data.sources]]\nname = "varied"\npath = "varied.jsonl"\nrole = "chat"\n'
    stage = SFT.replace('data = "chat"', 'data = "varied"\npacking = false')
    spec = posttrain_spec(tmp_path / "p", stage, extra=varied)
    (tmp_path / "p" / "varied.jsonl").write_text("\n".join(lines) + "\n")
    runs = []
    for micro in (4, 1):
        store = tmp_path / f"store-{micro}"
        done = run_nodes(spec, store, ("stage:sft",), [f"parallelism.micro_batch={micro}"])
        assert done.ok, done.log
        runs.append(_metrics(store, done, "stage:sft"))
    first, second = runs
    assert [r["step"] for r in first] == [r["step"] for r in second]
    for a, b in zip(first, second):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)
    assert second[-1]["val_loss"] == pytest.approx(first[-1]["val_loss"], rel=1e-4)


def test_lora_artifact_holds_only_small_adapters_over_its_base(chain):
    from safetensors.torch import load_file

    _spec, store, outcome = chain
    lora = artifact(outcome, store, "stage:lora")
    base = artifact(outcome, store, "stage:sft")
    assert not (lora / "model.safetensors").exists()
    adapter = load_file(str(lora / "adapter.safetensors"))
    assert adapter and all(k.endswith((".lora_A", ".lora_B")) for k in adapter)
    ratio = (lora / "adapter.safetensors").stat().st_size / (
        base / "model.safetensors"
    ).stat().st_size
    assert ratio < 0.05, ratio
    config = json.loads((lora / "config.json").read_text())
    assert config["base"]["node"] == "stage:sft"
    # The adapters learned something: B moved away from its zero start.
    assert any(float(v.abs().max()) > 0 for k, v in adapter.items() if k.endswith("lora_B"))


def test_dpo_raises_preference_accuracy_and_margin(chain):
    _, _store, outcome = chain
    m = outcome.results["stage:dpo"].record.metrics
    assert m["initial_val_margin"] == pytest.approx(0.0, abs=1e-6)  # the policy is the reference
    assert m["val_margin"] > 0.05
    assert m["val_accuracy"] >= 0.6
    assert m["val_logp_accuracy"] >= m["initial_val_logp_accuracy"]


def test_reward_model_learns_to_rank_the_chosen_answer(chain):
    _, store, outcome = chain
    m = outcome.results["stage:rm"].record.metrics
    assert m["val_loss"] < m["initial_val_loss"]
    assert m["val_margin"] > m["initial_val_margin"]
    assert m["val_accuracy"] >= 0.7
    assert (artifact(outcome, store, "stage:rm") / "value_head.safetensors").exists()


def test_grpo_raises_the_mean_reward(chain):
    _, store, outcome = chain
    rows = _metrics(store, outcome, "stage:grpo")
    first, last = rows[0]["reward"], sum(r["reward"] for r in rows[-2:]) / 2
    assert last > first, [r["reward"] for r in rows]
    m = outcome.results["stage:grpo"].record.metrics
    assert m["val_reward"] > m["initial_val_reward"]


def test_status_shows_the_held_out_reward(chain, capsys):
    from llmbuild.cli import main

    spec, store, _ = chain
    assert main(["status", str(spec), "--store", str(store)]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if "| stage |" in line)
    assert "| reward | val reward |" in header, header


def test_grpo_skipping_uniform_groups_learns_the_same_at_any_micro_batch(chain, tmp_path):
    """Uniform groups skipped (the default), the policy loss is a mean over the step's
    informative completions: one prompt per micro batch (4 accumulated) trains what one
    micro batch of 4 does, to float rounding. Averaged per micro batch, a micro batch's
    completions weighed more when a group beside them had been skipped."""
    spec, built, outcome = chain
    whole = _metrics(built, outcome, "stage:grpo")  # built at micro_batch 4
    assert any(r["informative"] < 1 for r in whole), "a step with a uniform group to skip"
    store = private_copy(built, tmp_path / "store")
    for d in artifact_dirs(store, "stage:grpo"):
        shutil.rmtree(d)
    done = run_nodes(spec, store, ("stage:grpo",), ["parallelism.micro_batch=1"])
    assert done.ok, done.log
    split = _metrics(store, done, "stage:grpo")
    assert [r["step"] for r in whole] == [r["step"] for r in split]
    for a, b in zip(whole, split):
        assert b["informative"] == pytest.approx(a["informative"]), (a, b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4), (a, b)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6), (a, b)


def test_editing_a_dpo_setting_rebuilds_only_dpo(chain):
    spec, _, _ = chain

    def keys(overrides=()):
        planned = plan_spec(load_spec(spec, overrides), cache=StatCache())
        return {name: k.key for name, k in planned.keys.items()}

    before, after = keys(), keys(["stage.dpo.beta=0.2"])
    assert {n for n in before if before[n] != after[n]} == {"stage:dpo"}


@pytest.mark.parametrize("kind", ["sft", "lora", "dpo", "rm", "grpo"])
def test_every_kind_resumes_after_a_real_kill(chain, tmp_path, kind):
    """Kill the build after the step-3 checkpoint; the resumed stage's losses and weights
    equal the uninterrupted build's."""
    spec, built, outcome = chain
    store = private_copy(built, tmp_path / "store")
    node = f"stage:{kind}"
    for d in artifact_dirs(store, node):
        shutil.rmtree(d)
    marker = kill_after_checkpoint(spec, store, node)
    assert json.loads(marker.read_text())["step"] == 3
    resumed = run_nodes(spec, store, (node,))
    assert resumed.ok, resumed.log
    assert "resume from step 3" in resumed.log
    a, b = _metrics(built, outcome, node), _metrics(store, resumed, node)
    assert [r["loss"] for r in a[3:]] == [r["loss"] for r in b[3:]]
    assert outcome.results[node].record.output_digest == resumed.results[node].record.output_digest


def test_answers_past_seq_len_are_counted_and_a_source_of_only_those_refused(chain):
    from types import SimpleNamespace

    from llmbuild.backends.megatron.objective_builders import _splits
    from llmbuild.backends.megatron.posttrain_data import ChatSamples, PairSamples, PromptSamples

    _spec, store, outcome = chain
    chat = {"chat": str(artifact(outcome, store, "tokenize:chat"))}
    prefs = {"prefs": str(artifact(outcome, store, "tokenize:prefs"))}
    assert ChatSamples(chat, "train", 64, 0, 0, packing=True).cut_off == 0
    assert PairSamples(prefs, "train", 64, 0).cut_off == 0
    # an answer that starts within seq_len and goes on past it is counted as cut short
    whole = ChatSamples(chat, "train", 10**6, 0, 0, packing=False)
    assert whole.cut_off == whole.cut_short == 0
    answer = whole.docs[0][1].nonzero()[0]
    seq = int(answer[0] + answer[-1]) // 2
    assert answer[0] < seq + 1 <= answer[-1]
    part = ChatSamples(chat, "train", seq, 0, 0, packing=False)
    assert part.cut_short >= 1 and part.cut_off + part.cut_short <= len(part)
    # GRPO's prompts: those leaving no room for max_new_tokens of completion are counted
    prompts = {"prompts": str(artifact(outcome, store, "tokenize:prompts"))}
    assert PromptSamples(prompts, "train", 64).long == 0
    tight = PromptSamples(prompts, "train", 2)
    assert tight.long == len(tight) > 0
    for sources, make, what in (
        (chat, lambda split: ChatSamples(chat, split, 2, 0, 0, packing=False), "conversations"),
        (prefs, lambda split: PairSamples(prefs, split, 2, 0), "preference pairs"),
    ):
        short = make("train")
        assert short.cut_off == len(short) > 0
        with pytest.raises(
            ValueError, match=f"training {what} of source .* has its answer past seq_len = 2"
        ):
            _splits(SimpleNamespace(sources=sources), make, what)


RM_EXPORTS = """
[[export]]
format = "hf"
stage = "rm"

[[export]]
format = "onnx"
stage = "rm"
quantize = "int8"
"""


def test_a_reward_model_exports_as_a_sequence_classifier_with_its_scores(chain, tmp_path):
    import torch
    from llmbuild.backends.megatron.artifact import StageArtifact
    from llmbuild.backends.megatron.classifier import class_logits, load_classifier
    from llmbuild.backends.megatron.posttrain_data import LabeledTexts
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from llmbuild.run.context import InputArtifact

    _spec, store, _ = chain
    spec = posttrain_spec(tmp_path, ALL + RM_EXPORTS)  # the same data, so the same keys
    outcome = run_nodes(spec, store, ("export:hf@rm", "export:onnx@rm"))
    assert outcome.ok, outcome.log
    hf = outcome.results["export:hf@rm"].record
    assert hf.metrics["architecture"] == "GPT2ForSequenceClassification"
    assert hf.metrics["labels"] == ["reward"] and hf.metrics["max_logit_diff"] < 1e-4
    assert "score_offset" not in hf.metrics  # GPT-2's final layer norm took the score's bias
    onnx = outcome.results["export:onnx@rm"].record.metrics
    assert onnx["max_logit_diff"] < 1e-3 and onnx["int8_rank_agreement"] >= 0.9
    # transformers' scores are the reward model's, text by text
    rm = InputArtifact(artifact(outcome, store, "stage:rm"), outcome.results["stage:rm"].record)
    ours, _config, _ = load_classifier(StageArtifact.open(rm))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(artifact(outcome, store, "export:hf@rm"))
    )
    tok = AutoTokenizer.from_pretrained(str(artifact(outcome, store, "export:hf@rm")))
    eos = tok.eos_token_id  # a reward model's texts end with it, as its answers do
    assert model.config.pad_token_id == tok.pad_token_id != eos
    texts = [[5, 9, 12, eos, 7, 3, eos], [8, 8, 2, eos], [14, 1, 6, 6, 2, 9, eos]]
    assert tok("a b")["input_ids"] == tok("a b", add_special_tokens=False)["input_ids"] + [eos]
    expected = class_logits(ours, LabeledTexts([(t, 0) for t in texts], 32, eos), 3)[:, 0]
    batch = tok.pad({"input_ids": texts}, return_tensors="pt")  # right-padded
    with torch.no_grad():
        got = torch.stack([model(input_ids=torch.tensor([t])).logits[0, 0] for t in texts])
        padded = model(**batch).logits[:, 0]
    assert torch.allclose(padded, expected, atol=1e-4), (padded, expected)
    assert model.config.num_labels == 1 and model.config.id2label == {0: "reward"}
    assert torch.allclose(got, expected, atol=1e-4), (got, expected)
    assert expected.std() > 1e-3  # texts that score differently: the comparison can fail


ANSWERS = """
[[eval]]
name = "answers"
kind = "perplexity"
stages = ["sft"]
sources = ["chat"]
"""


def test_perplexity_on_conversations_measures_their_answers(chain, tmp_path):
    """A chat source's perplexity counts the answers' tokens only, the ones SFT learns
    and its validation loss measures, not the prompts and the template around them."""
    from llmbuild.backends.eval.run import _nll, _validation_tokens, _windows, heldout_windows
    from llmbuild.backends.megatron.artifact import StageArtifact

    from llmbuild.run.context import InputArtifact

    _spec, store, _ = chain
    spec = posttrain_spec(tmp_path, ALL + ANSWERS)
    outcome = run_nodes(spec, store, ("eval:answers@sft",))
    assert outcome.ok, outcome.log
    out = artifact(outcome, store, "eval:answers@sft")
    chat = json.loads((out / "results.json").read_text())["results"]["chat"]
    tokens, _ = _validation_tokens(artifact(outcome, store, "tokenize:chat"))
    seq = 32
    _, masks = heldout_windows(artifact(outcome, store, "tokenize:chat"), seq, None)
    learned = sum(sum(m[1:]) for m in masks)  # each conversation on its own
    assert chat["measured"] == "answers" and chat["tokens"] == learned < len(tokens) - 1
    sft = InputArtifact(artifact(outcome, store, "stage:sft"), outcome.results["stage:sft"].record)
    model, _ = StageArtifact.open(sft).load_model()
    everything, n = _nll(model, _windows(tokens, seq, None), 8)
    assert n == len(tokens) - 1 and chat["loss"] < everything / n  # the answers are learned
    val_loss = outcome.results["stage:sft"].record.metrics["val_loss"]
    print(f"answers {chat['loss']:.4f}, every token {everything / n:.4f}, SFT's {val_loss:.4f}")
    assert abs(chat["loss"] - val_loss) < abs(everything / n - val_loss)


def test_a_lora_rank_at_the_models_width_is_noted(tmp_path):
    """Allowed (it trains) but rarely meant: the adapters outgrow the layers they wrap."""
    from types import SimpleNamespace

    from llmbuild.backends.megatron.run import _note_full_rank

    spec = posttrain_spec(tmp_path, SFT + LORA)
    notes: list[str] = []
    for rank, said in ((2, 0), (64, 1)):
        resolved = load_spec(spec, [f"stage.lora.adapter.rank={rank}"]).spec
        lora = next(s for s in resolved.stage if s.name == "lora")
        config = SimpleNamespace(stage=lora, architecture=resolved.architecture)
        _note_full_rank(SimpleNamespace(config=config, note=notes.append))
        assert len(notes) == said, notes
    assert "LoRA rank 64 is at least the model's hidden size (64)" in notes[0]


def test_a_score_bias_with_no_final_norm_bias_to_take_it_is_left_over():
    import torch
    from llmbuild.backends.export.classifier import fold_score_bias
    from llmbuild.backends.families import family_of

    from llmbuild.spec.model import Architecture

    arch = Architecture.model_validate(
        {"style": "llama", "layers": 1, "hidden": 4, "heads": 1, "seq_len": 8}
    )
    head = {
        "classifier.score.weight": torch.ones(1, 4),
        "classifier.score.bias": torch.tensor([0.5]),
    }
    state = {"model.norm.weight": torch.ones(4)}
    assert fold_score_bias(family_of(arch), arch, state, head) == 0.5
    assert list(state) == ["model.norm.weight"]


def test_a_score_bias_moves_into_the_zero_norm_bias_of_a_model_without_norm_biases():
    """``norm_bias = false``: GPT-2's final LayerNorm bias is exported as zeros, and the
    score bias moves into it as into a trained one."""
    import torch
    from llmbuild.backends.export.classifier import fold_score_bias
    from llmbuild.backends.families import family_of

    from llmbuild.spec.model import Architecture

    arch = Architecture.model_validate(
        {"style": "gpt2", "layers": 1, "hidden": 4, "heads": 1, "seq_len": 8, "norm_bias": False}
    )
    w = torch.tensor([[1.0, 2.0, 0.0, -1.0]])
    head = {"classifier.score.weight": w, "classifier.score.bias": torch.tensor([0.5])}
    state = {"transformer.ln_f.weight": torch.ones(4), "transformer.ln_f.bias": torch.zeros(4)}
    assert fold_score_bias(family_of(arch), arch, state, head) == 0.0
    assert float(torch.dot(w[0], state["transformer.ln_f.bias"])) == pytest.approx(0.5)


def test_a_reward_model_exports_only_as_hf_or_onnx(tmp_path):
    from llmbuild.errors import SpecError

    spec = posttrain_spec(tmp_path, SFT + REWARD + '[[export]]\nformat = "gguf"\nstage = "rm"\n')
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    assert "'rm' is a reward model, which exports as hf or onnx" in str(e.value)


def test_rewards_that_all_weigh_nothing_are_a_located_error(tmp_path):
    from llmbuild.errors import SpecError

    spec = posttrain_spec(tmp_path, SFT + GRPO.replace("weight = -1.0", "weight = 0"))
    with pytest.raises(SpecError) as e:
        load_spec(spec)
    assert "stage[2].rewards: every reward has weight 0" in str(e.value)
    spec = posttrain_spec(
        tmp_path, SFT + GRPO.replace("weight = -1.0 }", 'weight = 0 }, { kind = "exact_match" }')
    )
    load_spec(spec)  # one reward left out of the sum is fine


def test_an_exact_match_reward_over_prompts_without_answers_is_refused(chain, tmp_path):
    _spec, store, _ = chain
    exact = GRPO.replace(
        '{ kind = "length", target = 1, weight = -1.0 }', '{ kind = "exact_match" }'
    )
    spec = posttrain_spec(tmp_path, SFT + exact)
    path = tmp_path / "data" / "prompts.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows[::4]:
        del row["answer"]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    outcome = run_nodes(spec, store, ("stage:grpo",))
    result = outcome.results["stage:grpo"]
    assert result.state == "failed"
    assert outcome.results["stage:sft"].state == "cached"
    assert (
        "the exact_match reward compares each completion with its prompt's `answer`, but "
        f"{len(rows[::4])} of the {len(rows)} prompts of source 'prompts' have none"
    ) in result.detail


def test_a_reward_model_is_not_asked_to_write_text(chain, tmp_path, capsys):
    from llmbuild.cli import main
    from llmbuild.errors import SpecError

    _spec, store, _ = chain
    spec = posttrain_spec(tmp_path, ALL)
    for command in ("generate", "chat"):
        args = [command, str(spec), "--stage", "rm", "--store", str(store)]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "'rm' is a reward model: it scores texts and does not write them" in err
        assert f"{command} from 'sft', the stage it was trained from" in err
    ppl = '[[eval]]\nname = "ppl"\nkind = "perplexity"\nstages = ["sft", "rm"]\n'
    with pytest.raises(SpecError) as e:
        load_spec(posttrain_spec(tmp_path, ALL + ppl))
    assert "eval[0].stages[1]: 'rm' is a reward model: it scores texts" in str(e.value)


def test_full_recomputation_cannot_train_lora_adapters(tmp_path):
    from llmbuild.errors import SpecError

    spec = posttrain_spec(tmp_path, SFT + LORA)
    with pytest.raises(SpecError) as e:
        load_spec(spec, ["parallelism.recompute=full"])
    assert "recompute = 'full' cannot train the LoRA adapters of stage 'lora'" in str(e.value)
    load_spec(spec, ["parallelism.recompute=selective"])
