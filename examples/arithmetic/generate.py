"""Write the arithmetic example's data: additions of numbers below 50, written at a fixed
width of two digits (``07+38=45``) so that each digit keeps its place, as plain equations (for
pretraining), as chats (SFT, LoRA), as preference pairs with a wrong answer rejected (DPO),
as prompts with their answers (GRPO), and held-out problems no other file contains (for
the lm-eval task in tasks/).

    python examples/arithmetic/generate.py [--out DIR] [--seed N]

Deterministic: the same seed writes the same bytes."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

LIMIT = 50  # operands below this
SIZES = {"equations": 6000, "chat": 2000, "preferences": 1000, "prompts": 600, "heldout": 150}


def _problem(a: int, b: int) -> str:
    """Both operands at two digits, as the answer is: each digit has a fixed place."""
    return f"{a:02d}+{b:02d}"


def _answer(n: int) -> str:
    return f"{n:02d}"


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")


def generate(out: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    problems = [(a, b) for a in range(LIMIT) for b in range(LIMIT)]
    rng.shuffle(problems)
    heldout, rest = problems[: SIZES["heldout"]], problems[SIZES["heldout"] :]

    def pick(n: int) -> list[tuple[int, int]]:
        return [rest[rng.randrange(len(rest))] for _ in range(n)]

    out.mkdir(parents=True, exist_ok=True)
    (out / "equations.txt").write_text(
        "".join(f"{_problem(a, b)}={_answer(a + b)}\n" for a, b in pick(SIZES["equations"]))
    )
    _write_jsonl(
        out / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": _problem(a, b)},
                    {"role": "assistant", "content": _answer(a + b)},
                ]
            }
            for a, b in pick(SIZES["chat"])
        ],
    )
    prefs = []
    for a, b in pick(SIZES["preferences"]):
        # Rejected: a near miss, an answer that runs on, or another operation's result.
        wrong = rng.choice(
            [
                abs(a + b + rng.choice([-10, -2, -1, 1, 2, 10])),
                (a + b) * 10 + rng.randrange(10),
                a * b,
            ]
        )
        if wrong == a + b:
            wrong += 1
        prefs.append(
            {"prompt": _problem(a, b), "chosen": _answer(a + b), "rejected": _answer(wrong)}
        )
    _write_jsonl(out / "preferences.jsonl", prefs)
    _write_jsonl(
        out / "prompts.jsonl",
        [{"prompt": _problem(a, b), "answer": _answer(a + b)} for a, b in pick(SIZES["prompts"])],
    )
    tasks = out.parent / "tasks"  # the lm-eval task reads the held-out problems from here
    tasks.mkdir(parents=True, exist_ok=True)
    _write_jsonl(
        tasks / "heldout.jsonl",
        [{"prompt": _problem(a, b), "answer": _answer(a + b)} for a, b in heldout],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    generate(args.out, args.seed)


if __name__ == "__main__":
    main()
