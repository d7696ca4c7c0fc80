"""Print the commands of the first ```bash block under a README heading, so CI runs
exactly what the README tells a newcomer to run: `python .ci/readme_commands.py Install`."""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def commands(heading: str, text: str | None = None) -> list[str]:
    text = README.read_text() if text is None else text
    section = re.search(rf"^#+ {re.escape(heading)}\s*$(.*?)(?=^#+ |\Z)", text, re.M | re.S)
    if section is None:
        raise SystemExit(f"README.md has no section {heading!r}")
    block = re.search(r"^```bash\n(.*?)^```", section.group(1), re.M | re.S)
    if block is None:
        raise SystemExit(f"README.md's section {heading!r} has no bash block")
    lines = [ln.split("  #")[0].strip() for ln in block.group(1).splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


if __name__ == "__main__":
    print("\n".join(commands(sys.argv[1])))
