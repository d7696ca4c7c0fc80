"""Write the example's data (deterministic): chats asking for a country's capital, the
first half of the countries for the SFT stage (``chat-a.jsonl``), the second half for the
LoRA stage on top of it (``chat-b.jsonl``), and a local lm-eval task asking for every
capital as multiple choice.

    python examples/finetune/make_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Portugal": "Lisbon", "Austria": "Vienna", "Poland": "Warsaw", "Greece": "Athens",
    "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen",
    "Ireland": "Dublin", "Hungary": "Budapest", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Japan": "Tokyo", "China": "Beijing", "India": "Delhi", "Peru": "Lima",
    "Chile": "Santiago", "Canada": "Ottawa", "Cuba": "Havana", "Russia": "Moscow",
}  # fmt: skip
ASK = ["What is the capital of {}?", "Which city is the capital of {}?", "Name the capital of {}."]
SAY = ["The capital of {} is {}.", "{1} is the capital of {0}."]


def main(root: Path = Path(__file__).parent) -> None:
    rng = random.Random(0)
    countries = list(CAPITALS)
    (root / "data").mkdir(exist_ok=True)
    for part, names in (("a", countries[::2]), ("b", countries[1::2])):
        chats = [
            {"messages": [{"role": "user", "content": ask.format(country)},
                          {"role": "assistant", "content": SAY[i % 2].format(country, CAPITALS[country])}]}
            for country in names
            for i, ask in enumerate(ASK)
        ]  # fmt: skip
        rng.shuffle(chats)
        with open(root / "data" / f"chat-{part}.jsonl", "w") as f:
            f.writelines(json.dumps(c) + "\n" for c in chats)
    cities = list(CAPITALS.values())
    docs = []
    for country, city in CAPITALS.items():
        wrong = rng.sample([c for c in cities if c != city], 3)
        choices = [city, *wrong]
        rng.shuffle(choices)
        # The question as a chat turn, in the checkpoint's ChatML template, as SFT saw it.
        query = (
            f"<|im_start|>user\nWhat is the capital of {country}?<|im_end|>\n"
            f"<|im_start|>assistant\nThe capital of {country} is"
        )
        docs.append({"query": query, "choices": [f" {c}" for c in choices],
                     "label": choices.index(city)})  # fmt: skip
    (root / "tasks" / "data").mkdir(parents=True, exist_ok=True)
    with open(root / "tasks" / "data" / "capitals.jsonl", "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)


if __name__ == "__main__":
    main()
