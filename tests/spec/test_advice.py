"""Warnings of ``validate`` and ``plan``: what a valid spec will do that its author most
likely does not mean, located and said before anything is built."""

from __future__ import annotations

from pathlib import Path

from llmbuild.cli import main

SPEC = """\
extends = ["@gpt2-tiny"]
[model]
name = "m"

[[data.sources]]
name = "text"
path = "text.txt"
{separator}
[data.split]
validation = 0.1

[tokenizer]
kind = "char"

[[stage]]
name = "pretrain"
kind = "pretrain"
steps = 2
global_batch = 2
lr = 1e-3
"""


def _spec(root: Path, separator: str = "") -> Path:
    (root / "text.txt").write_text("To be, or not to be.\n\nThat is the question.\n" * 20)
    spec = root / "spec.toml"
    spec.write_text(SPEC.format(separator=separator))
    return spec


def test_one_text_file_without_a_separator_is_said_to_hold_nothing_out(tmp_path, capsys):
    spec = _spec(tmp_path)
    for command in (["validate", str(spec)], ["plan", str(spec), "--store", str(tmp_path / "s")]):
        assert main(command) == 0
        err = capsys.readouterr().err
        assert f"warning: {spec}:7: data.sources[0].path: source 'text'" in err, err
        assert "validation = 0.1 holds out none of them" in err and "Set separator" in err
    # With a separator, or with nothing to hold out, there is nothing to say.
    for fix in ('separator = "\\n\\n"\n', ""):
        spec = _spec(tmp_path, fix)
        if not fix:
            spec.write_text(spec.read_text().replace("validation = 0.1", "validation = 0.0"))
        assert main(["validate", str(spec)]) == 0
        assert "warning" not in capsys.readouterr().err


def test_an_lm_eval_task_spelt_nearly_as_a_local_one_is_said(tmp_path, capsys):
    """It failed at build, in each eval node; lm-eval's own tasks are not known here."""
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "capitals.yaml").write_text(
        "task: capitals\noutput_type: loglikelihood\n"
    )
    suite = (
        '[[eval]]\nname = "qa"\nkind = "lm-eval"\nstages = ["pretrain"]\ninclude_path = "tasks"\n'
    )
    spec = _spec(tmp_path, 'separator = "\\n\\n"\n')
    text = spec.read_text()
    for tasks, said in ((["capital"], True), (["capitals"], False), (["hellaswag"], False)):
        spec.write_text(text + suite + f"tasks = {tasks}\n".replace("'", '"'))
        assert main(["validate", str(spec)]) == 0
        err = capsys.readouterr().err
        assert ("'capital' is no task of" in err and "did you mean 'capitals'?" in err) == said, err


def test_an_lm_eval_task_of_its_own_is_said_to_need_its_dataset_cached(tmp_path, capsys):
    """A task not among the local YAMLs is one of lm-eval's own, whose dataset is the
    Hub's; eval nodes download nothing, so it builds only from the local cache."""
    suite = (
        '[[eval]]\nname = "qa"\nkind = "lm-eval"\nstages = ["pretrain"]\ntasks = ["hellaswag"]\n'
    )
    spec = _spec(tmp_path, 'separator = "\\n\\n"\n')
    spec.write_text(spec.read_text() + suite)
    assert main(["validate", str(spec)]) == 0
    err = capsys.readouterr().err
    assert "eval[0].tasks: 'hellaswag' is not a local task (no include_path): as one of" in err
    assert "which an eval node never downloads from, so it builds only if the dataset" in err
