"""GRPO's rewards and group handling on their own: partial credit for exact match, and a
group whose completions all earn the same reward neither teaches nor shrinks the step."""

from __future__ import annotations

import pytest
import torch
from llmbuild.backends.megatron.grpo import group_loss
from llmbuild.backends.megatron.rewards import Rewards


def score(spec: dict, outs: list[str], answer: str) -> list[float]:
    rewards = Rewards([{"weight": 1.0, **spec}], {})
    return rewards(["p"] * len(outs), outs, [{"answer": answer}] * len(outs), [])


def test_exact_match_partial_credit_orders_near_misses():
    outs = ["57", " 57 ", "58", "47", "5", "571", "12"]
    assert score({"kind": "exact_match"}, outs, "57") == [1, 1, 0, 0, 0, 0, 0]
    partial = score({"kind": "exact_match", "partial": True}, outs, "57")
    assert partial == pytest.approx([1, 1, 0.5, 0.5, 0.5, 2 / 3, 0])
    # All wrong by exact match, yet the group's rewards differ: it has an advantage.
    assert len(set(partial[2:])) > 1


def test_uniform_groups_leave_the_policy_mean():
    # Two groups of two: the first's rewards differ, the second's are equal.
    policy = torch.tensor([1.0, -1.0, 0.0, 0.0], requires_grad=True)
    kl = torch.tensor([0.1, 0.3, 0.2, 0.2])
    informative = torch.tensor([1.0, 1.0, 0.0, 0.0])

    skip = group_loss(policy * 3, kl, informative, 0.5, "skip")
    (grad,) = torch.autograd.grad(skip, policy)
    # Each informative completion weighs 1/2, as if the uniform group were not there.
    assert grad.tolist() == pytest.approx([1.5, 1.5, 0, 0])
    assert float(skip) == pytest.approx(0 + 0.5 * 0.2)

    keep = group_loss(policy * 3, kl, informative, 0.5, "keep")
    (grad,) = torch.autograd.grad(keep, policy)
    assert grad.tolist() == pytest.approx([0.75, 0.75, 0.75, 0.75])

    # No informative group at all: only the KL penalty is left, and no division by zero.
    none = group_loss(policy, kl, torch.zeros(4), 0.5, "skip")
    assert float(none) == pytest.approx(0.5 * 0.2)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_reward_function_giving_no_finite_number_is_named(tmp_path, value):
    module = tmp_path / f"{value}_rewards.py"
    module.write_text(f"def score(prompt, completion, record):\n    return float('{value}')\n")
    spec = {"kind": "function", "function": f"{value}_rewards:score", "module_file": str(module)}
    with pytest.raises(ValueError, match=f"'{value}_rewards:score' returned {value} .*finite"):
        score(spec, ["42"], "42")


@pytest.mark.parametrize(
    ("name", "body", "shown"),
    [("none", "None", "None (NoneType)"), ("text", "'1.0'", "'1.0' (str)"),
     ("list", "[1.0]", "[1.0] (list)"), ("bool", "True", "True (bool)")],
)  # fmt: skip
def test_a_reward_function_giving_no_number_is_named(tmp_path, name, body, shown):
    module = tmp_path / f"{name}_rewards.py"
    module.write_text(f"def score(prompt, completion, record):\n    return {body}\n")
    spec = {"kind": "function", "function": f"{name}_rewards:score", "module_file": str(module)}
    with pytest.raises(ValueError) as e:
        score(spec, ["42"], "42")
    assert f"'{name}_rewards:score' returned {shown} for the completion '42'" in str(e.value)
    assert str(e.value).endswith("a reward must be a number")


def test_a_reward_function_may_give_numpy_and_torch_numbers(tmp_path):
    module = tmp_path / "array_rewards.py"
    module.write_text(
        "import fractions, numpy, torch\n"
        "def score(prompt, completion, record):\n"
        "    if completion == 'c':\n"
        "        return fractions.Fraction(1, 4)\n"
        "    return numpy.float32(0.5) if completion == 'a' else torch.tensor([2])\n"
    )
    spec = {"kind": "function", "function": "array_rewards:score", "module_file": str(module)}
    assert score(spec, ["a", "b", "c"], "42") == [0.5, 2.0, 0.25]


def test_a_reward_past_floats_range_is_not_finite(tmp_path):
    module = tmp_path / "huge_rewards.py"
    module.write_text("def score(prompt, completion, record):\n    return 10 ** 400\n")
    spec = {"kind": "function", "function": "huge_rewards:score", "module_file": str(module)}
    with pytest.raises(ValueError, match=r"returned 1000.*\.\.\. for the completion .*finite"):
        score(spec, ["42"], "42")
