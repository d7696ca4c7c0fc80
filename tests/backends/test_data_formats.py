"""Every source format flows through cleaning and tokenizing into megatron-core indexed
datasets that read back; byte and BPE tokenization round-trip text exactly; the data
nodes are deterministic and cut off when their output does not change."""

from __future__ import annotations

import json

import pytest

from tests.backends.conftest import artifact, run_nodes
from tests.backends.datafiles import TEXTS, spec_text, write_sources, write_spec
from tests.conftest import suite_store

TEXT_SOURCES = ("plays", "docs", "gz", "zst", "parquet", "csv", "tsv", "tar")


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    paths = write_sources(root)
    spec = write_spec(root, spec_text({n: str(p) for n, p in paths.items()}))
    store = suite_store(tmp_path_factory)
    until = tuple(f"tokenize:{n}" for n in paths)
    outcome = run_nodes(spec, store, until)
    assert outcome.ok, outcome.log
    return root, spec, store, outcome


def _indexed(path):
    from llmbuild.backends.megatron.cpu import apply_cpu_patches

    apply_cpu_patches()  # before megatron is imported: later tests train in this process
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    return IndexedDataset(str(path))


def test_every_format_reaches_indexed_datasets(formats):
    _root, _spec, store, outcome = formats
    expected_docs = {
        "plays": 5,
        "docs": 5,
        "gz": 5,
        "zst": 5,
        "parquet": 5,
        "csv": 5,
        "tsv": 5,
        "tar": 4,
        "chat": 2,
        "prefs": 4,
        "prompts": 2,
    }
    for name, n_docs in expected_docs.items():
        report = json.loads(
            (artifact(outcome, store, f"source:{name}") / "report.json").read_text()
        )
        kept = sum(v.get("documents", 0) for v in report["kept"].values())
        assert kept == n_docs, (name, report)
        out = artifact(outcome, store, f"tokenize:{name}")
        index = json.loads((out / "datasets.json").read_text())
        assert sum(d["documents"] for d in index["datasets"]) == n_docs
        for d in index["datasets"]:
            for form in index["forms"]:
                ds = _indexed(out / f"{d['prefix']}{form}")
                assert len(ds) == d["documents"]


def _tokenizer(outcome, store):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(artifact(outcome, store, "tokenizer") / "tokenizer"))


def test_byte_tokens_round_trip_exactly(formats):
    _root, _spec, store, outcome = formats
    tok = _tokenizer(outcome, store)
    out = artifact(outcome, store, "tokenize:docs")
    index = json.loads((out / "datasets.json").read_text())
    decoded = set()
    for d in index["datasets"]:
        ds = _indexed(out / d["prefix"])
        for i in range(len(ds)):
            ids = [int(x) for x in ds[i]]
            assert ids[-1] == tok.eos_token_id
            decoded.add(tok.decode(ids[:-1]))
    assert decoded == set(TEXTS)


def test_chat_masks_cover_only_the_assistant(formats):
    _root, _spec, store, outcome = formats
    tok = _tokenizer(outcome, store)
    out = artifact(outcome, store, "tokenize:chat")
    index = json.loads((out / "datasets.json").read_text())
    learned = []
    for d in index["datasets"]:
        tokens, masks = _indexed(out / d["prefix"]), _indexed(out / f"{d['prefix']}.mask")
        for i in range(len(tokens)):
            ids, mask = list(tokens[i]), list(masks[i])
            assert len(ids) == len(mask)
            learned.append(tok.decode([t for t, m in zip(ids, mask) if m]))
    assert sorted(learned) == sorted(["4<|im_end|>", "hi<|im_end|>"])


def test_preferences_and_prompts_forms(formats):
    _root, _spec, store, outcome = formats
    tok = _tokenizer(outcome, store)
    out = artifact(outcome, store, "tokenize:prefs")
    index = json.loads((out / "datasets.json").read_text())
    pairs = []
    for d in index["datasets"]:
        p, c, r = (_indexed(out / f"{d['prefix']}{f}") for f in (".prompt", ".chosen", ".rejected"))
        pairs += [
            (tok.decode(list(p[i])), tok.decode(list(c[i])[:-1]), tok.decode(list(r[i])[:-1]))
            for i in range(len(p))
        ]
    assert (
        "<|im_start|>user\n2+2=<|im_end|>\n<|im_start|>assistant\n",
        "4<|im_end|>",
        "5<|im_end|>",
    ) in pairs
    system = "<|im_start|>system\nBe brief.<|im_end|>\n"
    assert (
        f"{system}<|im_start|>user\n3+4=<|im_end|>\n<|im_start|>assistant\n",
        "7<|im_end|>",
        "8<|im_end|>",
    ) in pairs
    assert (
        "<|im_start|>user\n1+5=<|im_end|>\n<|im_start|>assistant\n",
        "6<|im_end|>",
        "9<|im_end|>",
    ) in pairs
    out = artifact(outcome, store, "tokenize:prompts")
    answers = [
        json.loads(line)["answer"]
        for f in sorted(out.glob("*.answers.jsonl"))
        for line in f.read_text().splitlines()
    ]
    assert sorted(answers) == ["2", "5"]


@pytest.mark.parametrize(
    ("record", "said"),
    [
        (
            {"prompt": "hi", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
            "field 'chosen' must be a string or one assistant message",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "chosen": "x",
                "rejected": "y",
            },
            "field 'prompt' ends with an assistant message",
        ),
        (
            {
                "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "rejected": [
                    {"role": "user", "content": "p"},
                    {"role": "assistant", "content": "b"},
                ],
            },
            "must be conversations that share every message but the last",
        ),
        ({"prompt": [{"role": "user"}], "chosen": "x", "rejected": "y"}, "prompt: message 0 must"),
    ],
)
def test_a_preference_in_no_form_is_a_located_bad_record(record, said):
    from llmbuild.backends.data.readers import BadRecord, Record, normalise

    from llmbuild.spec.data import Source

    source = Source(name="p", path="p.jsonl", role="preferences")
    with pytest.raises(BadRecord, match=said):
        normalise(Record("p.jsonl:1", record), source)


def test_a_conversational_prompt_renders_as_chatml_in_a_tokenizers_own_template(tmp_path):
    """The same conversation, prompt and answer, through the ChatML writer and through a
    pretrained tokenizer's own (ChatML) Jinja template: the same tokens."""
    from llmbuild.backends.tokenize.encode import ChatML, Encoder

    from tests.checkpoints import tokenizer

    tokenizer(300).save_pretrained(str(tmp_path))
    own = Encoder(str(tmp_path / "tokenizer.json"), "<|endoftext|>", own_template=True)
    ours = Encoder(str(tmp_path / "tokenizer.json"), "<|endoftext|>")
    assert ours.template is ChatML and own.template is not ChatML
    prompt = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2="},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3="},
    ]
    pair = [{"prompt": prompt, "chosen": "6", "rejected": "7"}]
    ((theirs_prompt, theirs_chosen, _),) = own.preferences(pair)
    ((our_prompt, our_chosen, _),) = ours.preferences(pair)
    assert theirs_prompt == our_prompt  # every turn, then the answer's header
    # the answer alone, not the earlier assistant turn (the Jinja template's answer ends
    # with the newline after its end of turn)
    assert theirs_chosen[: len(our_chosen) - 1] == our_chosen[:-1]
    assert own.tok.decode(our_chosen[:-1], skip_special_tokens=False) == "6<|im_end|>"


def test_bpe_round_trips_and_is_deterministic(tmp_path):
    paths = write_sources(tmp_path)
    text = spec_text(
        {n: str(paths[n]) for n in ("plays", "docs")},
        tokenizer='kind = "bpe"\nvocab_size = 300\nmin_frequency = 1',
    )
    spec = write_spec(tmp_path, text)
    a = run_nodes(spec, tmp_path / "a", ("tokenize:docs", "tokenize:plays"))
    b = run_nodes(spec, tmp_path / "b", ("tokenize:docs", "tokenize:plays"))
    assert a.ok and b.ok
    for name in ("source:plays", "source:docs", "tokenizer", "tokenize:docs", "tokenize:plays"):
        assert a.results[name].record.output_digest == b.results[name].record.output_digest
    tok = _tokenizer(a, tmp_path / "a")
    assert 100 < len(tok) <= 300
    for t in TEXTS:
        assert tok.decode(tok.encode(t, add_special_tokens=False)) == t


def test_two_builds_are_byte_identical(formats, tmp_path):
    _root, spec, _store, outcome = formats
    again = run_nodes(
        spec, tmp_path / "other", tuple(n for n in outcome.results if n.startswith("tokenize:"))
    )
    for name, result in outcome.results.items():
        assert again.results[name].record.output_digest == result.record.output_digest, name


def test_a_duplicate_added_rebuilds_nothing_after_the_source(tmp_path):
    paths = write_sources(tmp_path)
    spec = write_spec(tmp_path, spec_text({"docs": str(paths["docs"])}, tokenizer='kind = "char"'))
    first = run_nodes(spec, tmp_path / "s", ("tokenize:docs",))
    assert first.ok
    with open(paths["docs"], "a") as f:
        f.write(json.dumps({"text": TEXTS[1]}) + "\n")
    second = run_nodes(spec, tmp_path / "s", ("tokenize:docs",))
    states = {n: r.state for n, r in second.results.items()}
    assert states == {"source:docs": "built", "tokenizer": "reused", "tokenize:docs": "reused"}
    report = json.loads(
        (artifact(second, tmp_path / "s", "source:docs") / "report.json").read_text()
    )
    assert report["removed"]["exact_duplicate"] == 1


def test_a_file_two_patterns_match_is_read_once(tmp_path):
    """``plays/*.txt`` and ``plays/**/*.txt`` both match each play: each is one file of
    the source, read once (its documents were counted twice, and removed again as
    duplicates)."""
    paths = write_sources(tmp_path)
    plays = paths["plays"]
    spec = write_spec(tmp_path, spec_text({"plays": str(plays)}, tokenizer='kind = "char"'))
    text = spec.read_text()
    once = run_nodes(spec, tmp_path / "s", ("source:plays",))
    spec.write_text(
        text.replace(f'path = "{plays}"', f'path = ["{plays}/*.txt", "{plays}/**/*.txt"]')
    )
    twice = run_nodes(spec, tmp_path / "s", ("source:plays",))
    assert once.ok and twice.ok, twice.log
    a, b = (o.results["source:plays"].record for o in (once, twice))
    assert b.metrics["documents"] == a.metrics["documents"] and b.notes == a.notes, b.notes
    assert b.output_digest == a.output_digest


def test_sources_behind_fsspec_urls(tmp_path):
    import time

    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/remote-{time.time_ns()}"
    for i, text in enumerate(TEXTS[:3]):
        fs.pipe(f"{root}/part-{i}.jsonl", (json.dumps({"text": text}) + "\n").encode())
    spec = write_spec(tmp_path, spec_text({"docs": f"memory://{root}/*.jsonl"}))
    outcome = run_nodes(spec, tmp_path / "store", ("tokenize:docs",))
    assert outcome.ok, outcome.log
    report = json.loads(
        (artifact(outcome, tmp_path / "store", "source:docs") / "report.json").read_text()
    )
    assert report["files"] == 3 and report["documents_read"] == 3
    again = run_nodes(spec, tmp_path / "store", ("tokenize:docs",))
    assert again.count("cached") == 3
    fs.pipe(f"{root}/part-3.jsonl", b'{"text": "one more remote document"}\n')
    changed = run_nodes(spec, tmp_path / "store", ("tokenize:docs",))
    assert changed.results["source:docs"].state == "built"


def test_tokenize_workers_load_neither_torch_nor_megatron(formats, tmp_path):
    """A shard tokenized in a fresh interpreter: the data workers stay light."""
    import subprocess
    import sys

    _root, _spec, store, outcome = formats
    docs = artifact(outcome, store, "source:plays")
    tok = artifact(outcome, store, "tokenizer")
    shard = sorted(docs.glob("train-*.tar"))[0]
    job = (
        str(shard),
        "train-000000",
        str(tok / "tokenizer" / "tokenizer.json"),
        json.loads((tok / "tokenizer_info.json").read_text()),
        "pretrain",
        str(tmp_path),
        False,
    )
    code = (
        "import json, sys\n"
        "from llmbuild.backends.tokenize.run import tokenize_shard\n"
        f"print(tokenize_shard(json.loads({json.dumps(json.dumps(job))}))['documents'])\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'megatron', 'ray'})\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    documents, heavy = out.stdout.split("\n")[:2]
    assert int(documents) > 0
    assert heavy == "[]"


def test_text_the_vocabulary_cannot_spell_is_counted_and_said(tmp_path):
    """A char tokenizer made from the pretraining text alone: a chat source in other
    characters tokenizes mostly to the unknown token, which is an error naming the fix
    (a model would train on nothing); one that it spells but for a few characters (the
    template's role names) is counted and said."""
    (tmp_path / "plain.txt").write_text("1+2=3\n4+4=8\n" * 20)
    chat = {
        "messages": [
            {"role": "user", "content": "what is one plus two?"},
            {"role": "assistant", "content": "three"},
        ]
    }
    (tmp_path / "talk.jsonl").write_text(json.dumps(chat) + "\n")
    sums = {
        "messages": [
            {"role": "user", "content": "1+2=3\n" * 10 + "4+4="},
            {"role": "assistant", "content": "8"},
        ]
    }
    (tmp_path / "math.jsonl").write_text(json.dumps(sums) + "\n")
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'extends = ["@gpt2-tiny"]\n[model]\nname = "m"\n'
        '[[data.sources]]\nname = "sums"\npath = "plain.txt"\nseparator = "\\n"\n'
        '[[data.sources]]\nname = "talk"\npath = "talk.jsonl"\nrole = "chat"\n'
        '[[data.sources]]\nname = "math"\npath = "math.jsonl"\nrole = "chat"\n'
        '[tokenizer]\nkind = "char"\n'
        '[[stage]]\nname = "p"\nkind = "pretrain"\nsteps = 1\nglobal_batch = 2\nlr = 1e-3\n'
    )
    store = tmp_path / "store"
    outcome = run_nodes(spec, store, ("tokenize:talk", "tokenize:math", "tokenize:sums"))
    talk = outcome.results["tokenize:talk"]
    assert talk.state == "failed"
    assert "of the tokens of source 'talk' are the tokenizer's unknown token (" in talk.detail
    assert "cannot spell that text, so a model would learn nothing" in talk.detail
    assert "list 'talk' in [tokenizer] sources" in talk.detail
    assert "Traceback" not in talk.detail
    math = outcome.results["tokenize:math"].record
    tokens = math.metrics["train_tokens"] + math.metrics["validation_tokens"]
    assert 0 < math.metrics["unknown_tokens"] < 0.5 * tokens
    (note,) = math.notes
    assert "of the tokens of source 'math' are the tokenizer's unknown token: its" in note, note
    assert "list 'math' in [tokenizer] sources" in note
    sums = outcome.results["tokenize:sums"].record
    assert sums.metrics["unknown_tokens"] == 0 and not sums.notes
    # made from both sources' text, the tokenizer spells the chat (the template's
    # newlines and role names too)
    spec.write_text(
        spec.read_text().replace('kind = "char"\n', 'kind = "char"\nsources = ["sums", "talk"]\n')
    )
    outcome = run_nodes(spec, store, ("tokenize:talk",))
    assert outcome.ok, outcome.log
    assert outcome.results["tokenize:talk"].record.metrics["unknown_tokens"] == 0


def test_a_tokenizer_that_spells_next_to_nothing_is_an_error(tmp_path):
    """A pretrained tokenizer.json saved with a tiny vocabulary turns the text into its
    unknown token: the tokenize node refuses it, pointing at the vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = models.WordLevel({"[UNK]": 0, "</s>": 1, "the": 2}, unk_token="[UNK]")
    tok = Tokenizer(words)
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="</s>")
    fast.save_pretrained(str(tmp_path / "tiny"))
    (tmp_path / "reviews.txt").write_text("A fine film, the best of the year.\n" * 5)
    spec = tmp_path / "spec.toml"
    spec.write_text(
        'extends = ["@gpt2-tiny"]\n[model]\nname = "m"\n'
        '[[data.sources]]\nname = "reviews"\npath = "reviews.txt"\n'
        f'[tokenizer]\nkind = "pretrained"\npath = "{tmp_path / "tiny"}"\n'
        '[[stage]]\nname = "p"\nkind = "pretrain"\nsteps = 1\nglobal_batch = 2\nlr = 1e-3\n'
    )
    outcome = run_nodes(spec, tmp_path / "store", ("tokenize:reviews",))
    result = outcome.results["tokenize:reviews"]
    assert result.state == "failed"
    assert "of the tokens of source 'reviews' are the tokenizer's unknown token" in result.detail
    assert "check the tokenizer's vocabulary: a tokenizer.json saved with a tiny" in result.detail
    assert "Traceback" not in result.detail
