"""What a valid spec will do that its author most likely does not mean: said by
``validate`` and ``plan`` as located warnings, never refused (the build notes it again
in the node's record). Cheap: globs, and at most two tokenizer files compared."""

from __future__ import annotations

import re
import sys
from typing import Any

from llmbuild.errors import Problem


def _text(source: Any, files: list[str]) -> bool:
    from llmbuild.spec.data import names_text

    if source.format == "text":
        return True
    return source.format == "auto" and all(names_text(f) for f in files)


def empty_validation(spec: Any) -> list[Problem]:
    """Text sources without a separator are one document per file: with fewer files than
    the validation fraction needs for one, the split holds out nothing."""
    from llmbuild.plan.digest import expand

    share = spec.data.split.validation
    out = []
    for i, source in enumerate(spec.data.sources):
        if share == 0 or source.separator is not None or source.role != "pretrain":
            continue
        if any("://" in p for p in source.path):
            continue
        files = [f for p in source.path for f in expand(p)]
        if files and _text(source, files) and len(files) * share < 1:
            out.append(
                Problem(
                    f"source {source.name!r}: {len(files)} text file(s) without a separator "
                    f"are {len(files)} document(s), and [data.split] validation = {share} "
                    "holds out none of them: nothing trained on it is measured held out. "
                    'Set separator (e.g. "\\n\\n") to split the text into documents',
                    ("data", "sources", i, "path"),
                )
            )
    return out


def tokenizer_over_import(spec: Any) -> list[Problem]:
    """An imported checkpoint's embedding rows stand for its own tokenizer's tokens: a
    tokenizer the spec makes gives them other meanings."""
    imports = [s for s in spec.stage if getattr(s, "kind", None) == "import"]
    tokenizer = spec.tokenizer
    if not imports or tokenizer is None:
        return []
    if tokenizer.kind == "pretrained":
        return _another_pretrained(imports[0], tokenizer)
    said = f"; this {tokenizer.kind!r} tokenizer gives the same ids to other text, so"
    return [_not_carried(imports[0], said, "kind")]


def _not_carried(stage: Any, why: str, key: str) -> Problem:
    """The warning that a spec's tokenizer over an imported checkpoint wastes what it
    learned, ``why`` said between its cause and its remedy."""
    return Problem(
        f"stage {stage.name!r} imports a checkpoint whose embeddings stand for its own "
        f"tokenizer's tokens{why} what the model learned does not carry over. Leave "
        "[tokenizer] out (or set only chat_template in it) to keep the checkpoint's",
        ("tokenizer", key),
    )


def _another_pretrained(stage: Any, tokenizer: Any) -> list[Problem]:
    """A pretrained tokenizer from another directory than the checkpoint's, whose
    tokenizer.json (where both have one) differs from the checkpoint's."""
    from pathlib import Path

    ours, theirs = Path(tokenizer.path), Path(stage.checkpoint)
    if "://" in stage.checkpoint or ours.resolve() == theirs.resolve():
        return []
    files = [d / "tokenizer.json" for d in (ours, theirs)]
    try:
        if all(f.is_file() for f in files) and files[0].read_bytes() == files[1].read_bytes():
            return []  # the same tokenizer, copied
    except OSError:
        return []
    said = f", and this tokenizer ({tokenizer.path}) is another one: unless it gives the same "
    return [_not_carried(stage, said + "ids to the same text,", "path")]


TASK_LINE = re.compile(r"^(?:task|group|tag):\s*['\"]?([^\s'\"#]+)", re.MULTILINE)


def misspelt_tasks(spec: Any) -> list[Problem]:
    """An lm-eval task that is not among the local YAMLs' but is spelt nearly as one of
    them is most likely a typo; any other is one of lm-eval's own, whose dataset only
    the local Hugging Face cache can give (lm-eval is not imported here, so its own
    thousands of tasks stay possible: warnings, which the build would otherwise give as
    an error of every eval node, one by one)."""
    import difflib

    out = []
    for i, suite in enumerate(getattr(spec, "eval", ())):
        if getattr(suite, "kind", None) != "lm-eval":
            continue
        root = getattr(suite, "include_path", None)
        local: set[str] = set()
        for yaml in _yamls(root):
            try:
                local.update(TASK_LINE.findall(yaml.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError):
                continue
        for name in suite.tasks:
            if name in local:
                continue
            near = difflib.get_close_matches(name, sorted(local), n=1, cutoff=0.8)
            if near:
                out.append(
                    Problem(
                        f"{name!r} is no task of {root}; did you mean {near[0]!r}? (unless it "
                        "is one of lm-eval's own tasks)",
                        ("eval", i, "tasks"),
                    )
                )
            else:  # lm-eval's own task: its dataset is the Hub's, and eval nodes download nothing
                where = f"no task of {root}" if root else "not a local task (no include_path)"
                out.append(
                    Problem(
                        f"{name!r} is {where}: as one of lm-eval's own tasks it reads its "
                        "dataset from the Hugging Face Hub, which an eval node never "
                        "downloads from, so it builds only if the dataset is in the local "
                        "Hugging Face cache; give include_path a task YAML of it over local "
                        "data",
                        ("eval", i, "tasks"),
                    )
                )
    return out


def _yamls(root: Any) -> list[Any]:
    from pathlib import Path

    if not root or not Path(root).is_dir():
        return []
    return [*Path(root).rglob("*.yaml"), *Path(root).rglob("*.yml")]


FIT_PARAMETERS = 5
"""Approach 3's law, E + A/N^alpha + B/D^beta: a scaling fit needs as many points."""


def thin_sweeps(spec: Any) -> list[Problem]:
    """A sweep of fewer points than approach 3 has parameters fits no law (said only by
    `llmbuild scaling`, after every point is trained)."""
    out = []
    for i, suite in enumerate(getattr(spec, "eval", ())):
        if getattr(suite, "kind", None) != "scaling" or len(suite.stages) >= FIT_PARAMETERS:
            continue
        n = len(suite.stages)
        out.append(
            Problem(
                f"sweep {suite.name!r} has {n} point{'' if n == 1 else 's'}: approach 3 fits "
                f"{FIT_PARAMETERS} parameters and needs at least {FIT_PARAMETERS} points (and "
                "approach 2 three sizes per budget), so no law would be fitted; add sizes or "
                "budgets",
                ("eval", i, "stages"),
            )
        )
    return out


def warn(resolved: Any) -> None:
    """Print the spec's warnings to stderr, located."""
    from llmbuild.spec.load import locate

    spec = resolved.spec
    found = empty_validation(spec) + tokenizer_over_import(spec) + misspelt_tasks(spec)
    for problem in found + thin_sweeps(spec):
        print(f"warning: {locate(problem, resolved)}", file=sys.stderr)
