"""Every mistake of a spec is reported at once, located, with exit code 2 and no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llmbuild.errors import SpecError
from llmbuild.spec.load import load_spec

FIVE_MISTAKES = """\
extends = ["@gpt2-tiny"]

[model]
name = "bad"
sed = 3

[[data.sources]]
name = "txt"
path = "x.txt"

[tokenizer]
kind = "char"

[architecture]
hidden = 130
layers = "four"

[[stage]]
name = "pretrain"
kind = "pretrain"
steps = 10
global_batch = 4
lr = -1e-4

[[stage]]
name = "chat"
kind = "pretrain"
from = "pretrian"
steps = 10
global_batch = 4
lr = 1e-4
"""


def problems(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return [str(p) for p in info.value.problems]


def test_five_mistakes_all_reported_with_file_line_and_key(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(FIVE_MISTAKES)
    (spec.parent / "x.txt").write_text("some text")  # the one file it names is there
    found = problems(spec)
    expected = [
        "spec.toml:5: model.sed: unknown key; did you mean 'seed'?",
        "spec.toml:15: architecture.heads: heads (4) must divide hidden (130)",
        "spec.toml:16: architecture.layers: must be an integer (got string 'four')",
        "spec.toml:23: stage[0].lr: must be > 0 (got -0.0001)",
        "spec.toml:28: stage[1].from: no stage named 'pretrian'; did you mean 'pretrain'?",
    ]
    for want in expected:
        assert any(want in f for f in found), f"{want!r} not in {found}"
    assert len(found) == len(expected)


def test_cli_exit_code_2_and_no_traceback(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(FIVE_MISTAKES)
    (spec.parent / "x.txt").write_text("some text")  # the one file it names is there
    for command in ("validate", "plan", "resolve"):
        r = subprocess.run(
            [sys.executable, "-m", "llmbuild", command, str(spec)], capture_output=True, text=True
        )
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr
        assert "5 problems in the spec" in r.stderr
        assert "model.sed: unknown key; did you mean 'seed'?" in r.stderr


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ('[model]\nname = "x"\nseed = = 3\n', 3, 8),
        ('[model]\nname = "unterminated\n', 2, None),
        ("[model\n", 1, None),
        ('[model]\nname = "a"\nname = "b"\n', 3, None),
    ],
)
def test_toml_syntax_errors_are_located(tmp_path, text, line, column):
    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    (p,) = info.value.problems
    assert p.line == line
    if column is not None:
        assert p.column == column
    assert (
        str(p).startswith(f"{spec}:{line}")
        or str(p).startswith(f"spec.toml:{line}")
        or f"spec.toml:{line}" in str(p)
    )
    assert "TOML syntax error" in p.message


@pytest.mark.parametrize(
    "nested", ["a = " + "[" * 600 + "]" * 600, "a = " + "{b = " * 400 + "1" + "}" * 400]
)
def test_toml_nested_past_the_parsers_depth_is_a_spec_error(tmp_path, nested):
    spec = tmp_path / "spec.toml"
    spec.write_text(nested + "\n")
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert [p.message for p in info.value.problems] == [
        "arrays or inline tables nested too deeply to read"
    ]


@pytest.mark.parametrize(
    ("path", "fmt", "named"),
    [
        ("data/books/*.txt", "auto", "data/books/*.txt"),
        ("data/chat.jsonl", "text", 'format = "text"'),
    ],
)
def test_a_chat_source_of_text_files_is_said_at_validate(tmp_path, path, fmt, named):
    """It failed as its build read the files."""
    from tests.conftest import write_project

    chats = f'[[data.sources]]\nname = "chats"\npath = "{path}"\nformat = "{fmt}"\nrole = "chat"\n'
    spec = write_project(
        tmp_path, _single_stage("steps = 10").replace("[[stage]]", chats + "[[stage]]")
    )
    found = problems(spec)
    assert len(found) == 1 and "data.sources[1]: a chat source cannot read text files (" in found[0]
    assert named in found[0] and "its records are read from jsonl, parquet or csv" in found[0]


def test_a_seed_numpy_cannot_take_is_refused(tmp_path):
    from tests.conftest import write_project

    spec = write_project(tmp_path, _single_stage("steps = 10"))
    with pytest.raises(SpecError) as info:
        load_spec(spec, ("model.seed=4294967296",))
    assert "model.seed: must be < 2147483648 (got 4294967296)" in str(info.value)
    assert load_spec(spec, ("model.seed=2147483647",)).spec.model.seed == 2**31 - 1


def test_a_boolean_given_for_a_number_on_the_command_line(tmp_path):
    from tests.conftest import write_project

    spec = write_project(tmp_path, _single_stage("steps = 10"))
    with pytest.raises(SpecError) as info:
        load_spec(spec, ("stage.pretrain.lr=true",))
    assert "stage[0].lr: must be a number (got boolean true)" in str(info.value)
    with pytest.raises(SpecError) as info:  # a number that may be left out, too
        load_spec(spec, ("architecture.vocab_size=true",))
    assert "architecture.vocab_size: must be an integer (got boolean true)" in str(info.value)
    # a boolean field still takes one
    assert load_spec(spec, ("architecture.bias=false",)).spec.architecture.bias is False
    # a number as a shell user writes it, which TOML would not read, is still a number
    loaded = load_spec(spec, ("stage.pretrain.lr=.002", "stage.pretrain.weight_decay=1."))
    assert (loaded.spec.stage[0].lr, loaded.spec.stage[0].weight_decay) == (0.002, 1.0)
    with pytest.raises(SpecError) as info:  # a string where a number belongs is not
        load_spec(spec, ("stage.pretrain.lr=fast",))
    assert "stage[0].lr: must be a number (got string 'fast')" in str(info.value)
    with pytest.raises(SpecError) as info:  # nor where a boolean does
        load_spec(spec, ('architecture.bias="no"',))
    assert "architecture.bias: must be a boolean (got string 'no')" in str(info.value)
    # a field that takes text takes a number's spelling as text
    assert load_spec(spec, ('model.name="123"',)).spec.model.name == "123"


def test_a_tables_own_check_of_a_value_a_flag_set_names_the_flag(tmp_path):
    """A check of the whole stage table that names a key a ``--set`` gave (a table's
    value, a conflict with another key) points at the flag, not at the table's line."""
    from tests.conftest import write_project

    spec = write_project(tmp_path, _single_stage("steps = 10"))
    flag = "stage.pretrain.schedule={kind='cosine', warmup=20}"
    with pytest.raises(SpecError) as info:
        load_spec(spec, (flag,))
    assert f"--set {flag}: stage[0]: schedule.warmup (20) exceeds steps" in str(info.value)
    with pytest.raises(SpecError) as info:  # the file's own mistake stays the file's
        load_spec(write_project(tmp_path, _single_stage("steps = 10\nschedule = {warmup = 20}")))
    assert f"{spec}:" in str(info.value) and "--set" not in str(info.value)


def test_an_empty_path_is_refused_not_read_as_the_specs_folder(tmp_path):
    """``path = ""`` joined to the spec's folder named the folder itself: a source would
    have read every file beside the spec (the spec included) as its text."""
    from tests.conftest import write_project

    spec = write_project(tmp_path, _single_stage("steps = 10"))
    with pytest.raises(SpecError) as info:
        load_spec(spec, ('data.sources.books.path=""',))
    assert "data.sources[0].path: is empty" in str(info.value)
    ck = '[[stage]]\nname = "base"\nkind = "import"\ncheckpoint = ""\n'
    spec = write_project(
        tmp_path, _single_stage("steps = 10").replace("[[stage]]", ck + "[[stage]]", 1)
    )
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert "stage[0].checkpoint: must be at least 1 character (got '')" in str(info.value)
    assert "config.json" not in str(info.value)


def test_missing_file_is_a_user_error(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "llmbuild", "validate", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "file not found" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("edit", "want"),
    [
        ('kind = "sftt"', "stage[0].kind: unknown kind 'sftt'; did you mean 'sft'?"),
        ("stepz = 3", "stage[0].stepz: unknown key; did you mean 'steps'?"),
        # transformers' name for it
        ("learning_rate = 3e-4", "stage[0].learning_rate: unknown key; did you mean 'lr'?"),
        ("max_steps = 3", "stage[0].max_steps: unknown key; did you mean 'steps'?"),
        ("betas = [0.9]", "stage[0].betas[1]: required"),
        ("lr = inf", "stage[0].lr: must be a finite number"),
        ('schedule = { kind = "cosin" }', "stage[0].schedule.kind: must be one of"),
        ("global_batch = 3", "stage[0].global_batch: global_batch (3) must be a multiple of"),
        ("steps = 1.5", "stage[0].steps: must be an integer"),
        ("steps = 99999999999999999999", "stage[0].steps: must be <= 1000000000"),
        # torch would refuse it at the first step, in its own words
        ("lr = 1e300", "stage[0].lr: 1e+300 is beyond a 32-bit float's range (3.4e38)"),
        # pydantic alone would read them as 1 and 0
        ("steps = true", "stage[0].steps: must be an integer (got boolean true)"),
        ("lr = false", "stage[0].lr: must be a number (got boolean false)"),
        ("betas = [0.9, true]", "stage[0].betas[1]: must be a number (got boolean true)"),
        # and strings as 300, 0.001 and true, which the spec's JSON Schema refuses
        ('steps = "300"', "stage[0].steps: must be an integer (got string '300')"),
        ('lr = "1e-3"', "stage[0].lr: must be a number (got string '1e-3')"),
        ('betas = [0.9, "0.99"]', "stage[0].betas[1]: must be a number (got string '0.99')"),
    ],
)
def test_stage_mistakes(tmp_path, edit, want):
    from tests.conftest import write_project

    spec = write_project(tmp_path, _single_stage(edit))
    found = problems(spec)
    assert any(want in f for f in found), found


def test_a_tokenizer_larger_than_the_architectures_vocab_size_is_located(tmp_path):
    from tests.conftest import write_project

    text = _single_stage("steps = 10").replace(
        'kind = "char"', 'kind = "bpe"\nvocab_size = 300\n[architecture]\nvocab_size = 100'
    )
    found = problems(write_project(tmp_path, text))
    assert found == [
        f"{tmp_path / 'spec.toml'}:9: tokenizer.vocab_size: this tokenizer would have 300 "
        "tokens but the embedding only 100 rows (architecture.vocab_size): raise it, or "
        "leave it unset to take the tokenizer's"
    ], found


PREFS = '[[data.sources]]\nname = "prefs"\npath = "data/prefs.jsonl"\nrole = "preferences"\n'
PROMPTS = '[[data.sources]]\nname = "qs"\npath = "data/prefs.jsonl"\nrole = "prompts"\n'
REWARD = (
    '[[stage]]\nname = "rm"\nkind = "reward"\nfrom = "pretrain"\ndata = "prefs"\nsteps = 1\n'
    "global_batch = 2\n"
)


def _single_stage(extra: str) -> str:
    lines = [
        'name = "pretrain"',
        'kind = "pretrain"',
        "steps = 10",
        "global_batch = 4",
        "lr = 1e-3",
    ]
    key = extra.split("=")[0].strip()
    lines = [ln for ln in lines if ln.split("=")[0].strip() != key] + [extra]
    return f"""\
extends = ["@gpt2-tiny"]
[model]
name = "m"
[[data.sources]]
name = "books"
path = "data/books"
[tokenizer]
kind = "char"
[parallelism]
micro_batch = 2
[[stage]]
{chr(10).join(lines)}
"""


@pytest.mark.parametrize(
    ("extra", "want"),
    [
        (
            "[parallelism]\ntensor = 3\n",
            "parallelism.tensor: tensor (3) must divide architecture.heads (4)",
        ),
        (
            "[parallelism]\npipeline = 3\n",
            "parallelism.pipeline: pipeline (3) must divide architecture.layers (4)",
        ),
        (
            "[parallelism]\nsequence_parallel = true\n",
            "parallelism.sequence_parallel: sequence_parallel splits activations over "
            "tensor-parallel ranks: it needs parallelism.tensor > 1",
        ),
        (
            "[parallelism]\ntensor = 4\nsequence_parallel = true\n[architecture]\nseq_len = 30\n",
            "parallelism.sequence_parallel: with sequence_parallel, tensor (4) must divide "
            "architecture.seq_len (30)",
        ),
        (
            "[architecture]\nkv_heads = 3\n",
            "architecture.kv_heads: kv_heads (3) must divide heads (4)",
        ),
        (
            '[[eval]]\nname = "e"\nkind = "perplexity"\nstages = ["pretrian"]\n',
            "eval[0].stages[0]: no stage named 'pretrian'; did you mean 'pretrain'?",
        ),
        (
            '[[export]]\nformat = "peft"\nstage = "pretrain"\n',
            "export[0].stage: a peft export needs a stage with LoRA adapters",
        ),
        (
            '[[stage]]\nname = "s"\nkind = "sft"\nfrom = "pretrain"\ndata = "books"\nsteps = 1\nglobal_batch = 2\n',
            "stage[1].data: a sft stage needs a chat-role source, but 'books' has role 'pretrain'",
        ),
        (
            '[[stage]]\nname = "a"\nkind = "sft"\nfrom = "b"\ndata = "books"\nsteps = 1\nglobal_batch = 2\n'
            '[[stage]]\nname = "b"\nkind = "sft"\nfrom = "a"\ndata = "books"\nsteps = 1\nglobal_batch = 2\n',
            "stages form a cycle: a -> b -> a",
        ),
        (
            '[[stage]]\nname = "pretrain"\nkind = "pretrain"\nsteps = 1\nglobal_batch = 2\nlr = 1.0\n',
            "stage[1].name: stage name 'pretrain' is already used by stage[0]",
        ),
        ('[tokenizer]\nkind = "bpe"\n', "tokenizer: vocab_size is required for kind = 'bpe'"),
        (
            '[tokenizer]\nkind = "char"\neos_token = "#"\n',
            "tokenizer.eos_token: eos_token '#' could be read from ordinary text",
        ),
        (
            '[tokenizer]\nkind = "char"\npad_token = ""\n',
            "tokenizer.pad_token: pad_token '' could be read from ordinary text",
        ),
        (
            '[tokenizer]\nkind = "byte"\npad_token = "<|eos|>"\n',
            "tokenizer.pad_token: pad_token '<|eos|>' is also the eos_token",
        ),
        ("[modle]\nname = 'x'\n", "modle: unknown table; did you mean 'model'?"),
        (
            '[[data.sources]]\nname = "more"\npath = "data/books"\nseparator = ""\n',
            "data.sources[1].separator: must be at least 1 character (got '')",
        ),
        (
            PREFS
            + REWARD
            + PROMPTS
            + '[[stage]]\nname = "g"\nkind = "grpo"\nfrom = "rm"\ndata = "qs"\nsteps = 1\n'
            'global_batch = 2\nrewards = [{kind = "exact_match"}]\n',
            "stage[2].from: stage 'rm' is a reward model: it scores texts, and its language-"
            "model head is its base's, untrained since; a grpo stage needs a model that writes "
            'text (to reward with it: rewards = [{kind = "model", stage = "rm"}])',
        ),
        (
            PREFS
            + REWARD
            + '[[stage]]\nname = "d"\nkind = "dpo"\nfrom = "pretrain"\nreference = "rm"\n'
            'data = "prefs"\nsteps = 1\nglobal_batch = 2\n',
            "stage[2].reference: stage 'rm' is a reward model",
        ),
        (
            PROMPTS
            + '[[stage]]\nname = "g"\nkind = "grpo"\nfrom = "pretrain"\ndata = "qs"\nsteps = 1\n'
            'global_batch = 2\nmax_new_tokens = 64\nrewards = [{kind = "exact_match"}]\n',
            "stage[1].max_new_tokens: max_new_tokens (64) must be less than the model's "
            "seq_len (64)",
        ),
        (  # every factor it names, with its value
            PROMPTS
            + '[[stage]]\nname = "g"\nkind = "grpo"\nfrom = "pretrain"\ndata = "qs"\nsteps = 1\n'
            'global_batch = 3\nrewards = [{kind = "exact_match"}]\n',
            "stage[1].global_batch: global_batch (3) must be a multiple of parallelism."
            "micro_batch x parallelism.data x pipeline (2 x 1 x 1)",
        ),
        (
            PROMPTS
            + '[[stage]]\nname = "g"\nkind = "grpo"\nfrom = "pretrain"\ndata = "qs"\nsteps = 1\n'
            'global_batch = 2\nrewards = [{kind = "regex", pattern = "("}]\n',
            "stage[1].rewards[0].pattern: not a valid regular expression: missing ), "
            "unterminated subpattern",
        ),
        (
            '[[data.sources]]\nname = "talk"\npath = "data/chat.jsonl"\nrole = "chat"\n'
            '[[stage]]\nname = "l"\nkind = "lora"\nfrom = "pretrain"\ndata = "talk"\nsteps = 1\n'
            'global_batch = 2\nadapter = {targets = ["qkv", "qkv"]}\n',
            "stage[1].adapter.targets: targets must be distinct (got ['qkv', 'qkv'])",
        ),
        (  # PEFT's names for the layers: each mapped to ours
            '[[data.sources]]\nname = "talk"\npath = "data/chat.jsonl"\nrole = "chat"\n'
            '[[stage]]\nname = "l"\nkind = "lora"\nfrom = "pretrain"\ndata = "talk"\nsteps = 1\n'
            'global_batch = 2\nadapter = {targets = ["q_proj", "v_proj"]}\n',
            "stage[1].adapter.targets: 'q_proj' is a transformers layer name; here the layers "
            "are qkv (q_proj, k_proj and v_proj as one), proj (o_proj), fc1 (gate_proj and "
            "up_proj as one) and fc2 (down_proj) (so 'q_proj' is 'qkv')",
        ),
        (  # it would fail once the stage had trained
            '[data.split]\nvalidation = 0.0\n[[eval]]\nname = "ppl"\nkind = "perplexity"\nstages = ["pretrain"]\n',
            "eval[0].files: nothing to measure: [data.split] validation = 0 holds out no",
        ),
    ],
)
def test_cross_field_checks(tmp_path, extra, want):
    from tests.conftest import write_project

    base = _single_stage("lr = 1e-3")
    if extra.startswith("[tokenizer]"):
        base = base.replace('[tokenizer]\nkind = "char"\n', "")
    if extra.startswith("[parallelism]"):
        base = base.replace("[parallelism]\nmicro_batch = 2\n", "")
        extra = extra + "micro_batch = 2\n"
    spec = write_project(tmp_path, base + extra)
    found = problems(spec)
    assert any(want in f for f in found), found


LAYOUT = "[architecture]\nheads = 4\nlayers = 4\n"


@pytest.mark.parametrize(
    ("extra", "override", "want"),
    [
        (  # kv_heads unset is heads: one cause, said once
            LAYOUT,
            "parallelism.tensor=3",
            "--set parallelism.tensor=3: parallelism.tensor: tensor (3) must divide "
            "architecture.heads (4)",
        ),
        (
            LAYOUT + "kv_heads = 2\n",
            "parallelism.tensor=4",
            "--set parallelism.tensor=4: parallelism.tensor: tensor (4) must divide "
            "architecture.kv_heads (2)",
        ),
        (  # at the --set that broke the layout, not at the spec's layers line
            LAYOUT,
            "parallelism.pipeline=3",
            "--set parallelism.pipeline=3: parallelism.pipeline: pipeline (3) must divide "
            "architecture.layers (4)",
        ),
        (  # set in the spec: at its line there
            LAYOUT + "[parallelism]\nmicro_batch = 2\npipeline = 3\n",
            None,
            "spec.toml:20: parallelism.pipeline: pipeline (3) must divide architecture.layers (4)",
        ),
    ],
)
def test_a_layout_problem_is_said_once_where_its_parallelism_was_set(
    tmp_path, extra, override, want
):
    from tests.conftest import write_project

    base = _single_stage("lr = 1e-3")
    if "[parallelism]" in extra:
        base = base.replace("[parallelism]\nmicro_batch = 2\n", "")
    spec = write_project(tmp_path, base + extra)
    found = problems_of(spec, [override] if override else [])
    assert [f.removeprefix(f"{spec.parent}/") for f in found] == [want]


def test_missing_tables_are_named(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text('[model]\nname = "x"\n')
    found = problems(spec)
    for table in ("[data] table", "[tokenizer] table", "[architecture] table", "[[stage]] tables"):
        assert any(table in f for f in found), found


@pytest.mark.parametrize(
    ("override", "want"),
    [
        ("architecture.hidden=1000000000000", "of weights and gradients"),
        ("architecture.seq_len=300000", "of activations per rank at micro_batch 4 and seq_len"),
    ],
)
def test_a_model_that_cannot_fit_is_located_with_its_memory_estimate(
    tmp_path, monkeypatch, override, want
):
    """Before anything runs: the estimate against this machine's memory (the ranks run
    here on CPUs), and against the largest accelerator's on a GPU layout."""
    from tests.conftest import write_project

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    spec = write_project(tmp_path, _single_stage('kind = "pretrain"'))
    load_spec(spec)  # the tiny model fits
    found = problems_of(spec, [override, "parallelism.device=cpu", "parallelism.micro_batch=4"])
    assert any(
        f.startswith(f"{spec}:")
        and "stage[0]: the model and batch need at least" in f
        and want in f
        and "more than this machine's memory" in f
        for f in found
    ), found
    on_gpus = [override, "parallelism.device=gpu", "parallelism.micro_batch=4"]
    if override.startswith("architecture.hidden"):  # too big for any accelerator
        found = problems_of(spec, on_gpus)
        assert any("more than the memory of the largest accelerator (192.0 GiB)" in f
                   for f in found), found  # fmt: skip
    else:  # 39 GiB of activations: more than this machine has, not more than a GPU's
        load_spec(spec, on_gpus)


def problems_of(path: Path, overrides: list[str]) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides)
    return [str(p) for p in info.value.problems]


CHAT_SPEC = """\
extends = ["@gpt2-tiny"]

[model]
name = "talk"

[[data.sources]]
name = "chat"
path = "chat.jsonl"
role = "chat"

[tokenizer]
kind = "pretrained"
path = "tok"

[[data.sources]]
name = "text"
path = "chat.jsonl"

[[stage]]
name = "pretrain"
kind = "pretrain"
steps = 2
global_batch = 2
lr = 1e-4

[[stage]]
name = "sft"
kind = "sft"
from = "pretrain"
data = "chat"
steps = 2
global_batch = 2
lr = 1e-4
"""


def test_conversations_with_a_pretrained_tokenizer_without_a_chat_template(tmp_path):
    """Said at validate, at the source (the build failed at its tokenize node); a
    template in the tokenizer's files, or in the spec, is enough."""
    spec = tmp_path / "spec.toml"
    spec.write_text(CHAT_SPEC)
    (tmp_path / "chat.jsonl").write_text('{"messages": []}\n')
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    (tok / "tokenizer_config.json").write_text('{"eos_token": "</s>"}')
    found = problems(spec)
    assert len(found) == 1, found
    assert "spec.toml:9: data.sources[0].role: source 'chat' holds " in found[0]
    assert 'has no chat template: set [tokenizer] chat_template = "chatml"' in found[0]
    load_spec(spec, ["tokenizer.chat_template='chatml'"])
    (tok / "chat_template.jinja").write_text("{{ messages }}")
    load_spec(spec)


def test_a_pretrained_tokenizer_named_by_its_file_names_its_directory(tmp_path):
    """`path` at tokenizer.json itself: said at validate with the directory to give (the
    build failed with transformers' words about a repo id)."""
    spec = tmp_path / "spec.toml"
    spec.write_text(CHAT_SPEC.replace('path = "tok"', 'path = "tok/tokenizer.json"'))
    (tmp_path / "chat.jsonl").write_text('{"messages": []}\n')
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    found = problems(spec)
    assert any("tokenizer.path: " in p and "tokenizer.json is a file: a pretrained tokenizer "
               'is the directory that holds its files' in p and f'path = "{tmp_path / "tok"}"'
               in p for p in found), found  # fmt: skip


def test_a_reward_function_that_is_not_there_is_located_without_running_it(tmp_path):
    """A misspelt function or module is a spec error at its key, found by reading the
    module's file (never running it: it may import torch, or do anything)."""
    from tests.conftest import function_reward_project

    ran = tmp_path / "ran"
    code = f"open({str(ran)!r}, 'w').close()\n\ndef score(prompt, completion, record):\n    return 1.0\n"
    spec = function_reward_project(tmp_path, "rewards_located", code, function="scor")
    line = (
        spec.read_text()
        .splitlines()
        .index('rewards = [{ kind = "function", function = "rewards_located:scor" }]')
    )
    where = f"spec.toml:{line + 1}: stage[3].rewards[0].function: reward function"
    (found,) = problems(spec)
    assert found.endswith(
        f"{where} 'rewards_located:scor': {tmp_path / 'rewards_located.py'} defines no "
        "'scor'; did you mean 'score'?"
    ), found
    assert not ran.exists()

    spec.write_text(spec.read_text().replace("rewards_located:scor", "nosuch_mod:score"))
    r = subprocess.run(
        [sys.executable, "-m", "llmbuild", "validate", str(spec)],
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert (
        f"{where} 'nosuch_mod:score': no module 'nosuch_mod' beside the spec file or on "
        "Python's path (put nosuch_mod.py beside the spec file, or install its package)"
    ) in r.stderr, r.stderr

    spec.write_text(spec.read_text().replace("nosuch_mod:score", "rewards_located.py:score"))
    (found,) = problems(spec)
    assert found.endswith(
        f"{where} 'rewards_located.py:score': name the module, not its file: "
        "function = 'rewards_located:score'"
    ), found


def test_a_reward_function_set_on_the_command_line_is_found_again(tmp_path, monkeypatch):
    """``--set`` of the function alone leaves no stale file behind: the module it names
    is looked up again (from the working directory, as paths set there are)."""
    from tests.conftest import function_reward_project

    code = "def score(prompt, completion, record):\n    return 1.0\n"
    spec = function_reward_project(tmp_path, "rewards_first", code)
    (tmp_path / "rewards_second.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    resolved = load_spec(spec, ["stage.rl.rewards[0].function='rewards_second:score'"])
    (reward,) = resolved.spec.stage[3].rewards
    assert reward.module_file == str(tmp_path / "rewards_second.py")


def test_a_copied_stage_keeping_its_name_is_one_problem(tmp_path):
    """A stage block copied below itself, its name left and `from` pointing at the
    original: a duplicate name, not also a cycle of the stage with itself."""
    from tests.conftest import write_project

    copy = (
        '[[stage]]\nname = "pretrain"\nkind = "pretrain"\nfrom = "pretrain"\nsteps = 1\n'
        "global_batch = 2\nlr = 1.0\n"
    )
    found = problems(write_project(tmp_path, _single_stage("lr = 1e-3") + copy))
    assert len(found) == 1, found
    assert found[0].endswith("stage[1].name: stage name 'pretrain' is already used by stage[0]")


def test_a_misspelt_stage_kind_is_said_once(tmp_path):
    """Not also by every reference that wants the kind it was meant to be."""
    from tests.conftest import write_project

    extra = (
        '[[stage]]\nname = "cls"\nkind = "clasify"\nfrom = "pretrain"\n'
        '[[eval]]\nname = "e"\nkind = "classification"\nstages = ["cls"]\n'
    )
    found = problems(write_project(tmp_path, _single_stage("lr = 1e-3") + extra))
    assert any("did you mean 'classify'" in f for f in found), found
    assert not any("is not of kind" in f for f in found), found
