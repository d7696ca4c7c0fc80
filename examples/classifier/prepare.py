"""Writes this example's data from the shakespeare example's text (public domain):

- ``data/speeches.jsonl``: every speech of five characters, one from each of five plays,
  labeled with its speaker (the speaker's name itself is not in the text);
- ``data/others.txt``: speeches of everyone else (the first ``OTHERS`` characters of
  them), blank-line separated: the text the encoder is pretrained on, so that it never
  sees the labeled speeches in pretraining.

Run it again to regenerate the committed files: ``python examples/classifier/prepare.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
SOURCE = HERE.parent / "shakespeare" / "data" / "tinyshakespeare.txt"
SPEAKERS = ("GLOUCESTER", "DUKE VINCENTIO", "MENENIUS", "ROMEO", "PETRUCHIO")
"""Richard III, Measure for Measure, Coriolanus, Romeo and Juliet, The Taming of the
Shrew: the five characters with the most speeches, each from a different play."""
OTHERS = 400_000


def speeches(text: str) -> list[tuple[str, str]]:
    """(speaker, speech) for every blank-line separated block that starts with a name."""
    out = []
    for block in text.split("\n\n"):
        lines = block.strip().split("\n")
        if len(lines) > 1 and lines[0].endswith(":"):
            out.append((lines[0][:-1], " ".join(line.strip() for line in lines[1:])))
    return out


def main() -> None:
    data = HERE / "data"
    data.mkdir(exist_ok=True)
    labeled, others = [], []
    for speaker, speech in speeches(SOURCE.read_text()):
        if speaker in SPEAKERS:
            labeled.append({"text": speech, "label": speaker.split()[-1].lower()})
        else:
            others.append(speech)
    with (data / "speeches.jsonl").open("w") as f:
        for row in labeled:
            f.write(json.dumps(row) + "\n")
    (data / "others.txt").write_text("\n\n".join(others)[:OTHERS].rsplit("\n\n", 1)[0] + "\n")
    print(f"{len(labeled)} labeled speeches, {len(others)} others")


if __name__ == "__main__":
    main()
