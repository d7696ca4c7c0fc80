"""``llmbuild serve`` and ``llmbuild chat`` on a tiny imported Qwen2 checkpoint: the
server runs as a subprocess on 127.0.0.1 and is spoken to with the real ``openai``
client; the chat runs in a real terminal (pexpect)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.backends.conftest import run_nodes
from tests.checkpoints import import_spec, write_checkpoint
from tests.conftest import REPO

openai = pytest.importorskip("openai")

HF_EXPORT = '[architecture]\nseq_len = 64\n\n[[export]]\nformat = "hf"\nstage = "base"\n'
"""Fine-tuned at a seq_len shorter than its positions: it is still served over them."""
KEY = "sk-test-serve"
ENV = {
    **os.environ,
    "PYTHONPATH": str(REPO),
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
PROMPTS = [
    "The quick brown",
    "Hello, how",
    "Two plus two is",
    "A model reads text and writes",
    "x",
    "The lazy dog jumps over the quick brown fox and",
    "Hi",
    "seven",
]
CONTEXT = 2048
"""Long enough that an answer of ``LONG`` tokens cannot end before its client hangs up."""
LONG = 2000


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """The spec (an imported stage ``base`` and its hf export) and its store, built."""
    root = tmp_path_factory.mktemp("serve")
    checkpoint = write_checkpoint(root / "ck", "qwen2", max_position_embeddings=CONTEXT)
    spec = import_spec(root, checkpoint, HF_EXPORT)
    outcome = run_nodes(spec, root / "store")
    assert outcome.ok, outcome.log
    return spec, root / "store"


@dataclass
class Server:
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, api_key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0)

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/health", timeout=5) as r:
            return json.loads(r.read())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(server: Server, deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"the server exited: {server.log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            server.health()
            return
        time.sleep(0.1)
    pytest.fail(f"the server did not answer /health: {server.log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def servers(built, tmp_path_factory):
    """Two servers started side by side: ``stage`` (``--stage base``, no key) and
    ``export`` (``--export hf@base --api-key KEY``); stopped by their pids at the end."""
    spec, store = built
    logs = tmp_path_factory.mktemp("serve-logs")
    started = {}
    for name, extra in (
        ("stage", ["--stage", "base"]),
        ("export", ["--export", "hf@base", "--api-key", KEY]),
    ):
        port, log = _free_port(), logs / f"{name}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "llmbuild", "serve", str(spec), "--store", str(store),
                 "--port", str(port), *extra],
                env=ENV, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        started[name] = Server(port, proc, log)
    try:
        deadline = time.monotonic() + 120
        for server in started.values():
            _wait_healthy(server, deadline)
        yield started
    finally:
        for server in started.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.proc.pid, signal.SIGTERM)
        for server in started.values():
            try:
                server.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(server.proc.pid, signal.SIGKILL)
                server.proc.wait()


def _greedy(client, prompt: str, tokens: int, model: str = "hf@base") -> str:
    out = client.completions.create(model=model, prompt=prompt, max_tokens=tokens, temperature=0)
    return out.choices[0].text


def _streamed(client, prompt: str, tokens: int, model: str = "hf@base") -> str:
    stream = client.completions.create(
        model=model, prompt=prompt, max_tokens=tokens, temperature=0, stream=True
    )
    return "".join(chunk.choices[0].text for chunk in stream if chunk.choices)


def test_models_are_named_after_the_stage_and_the_export(servers):
    assert [m.id for m in servers["stage"].client().models.list()] == ["base"]
    assert [m.id for m in servers["export"].client().models.list()] == ["hf@base"]
    assert servers["stage"].health()["status"] == "ok"


def test_a_renamed_stage_is_served_under_its_new_name(built):
    """A stage's name is a label: renamed, its artifact is the one built under the old
    name, and the server names it as the spec does now."""
    import argparse

    from llmbuild.cli.serve_cmd import open_model

    spec, store = built
    renamed = spec.with_name("renamed.toml")
    text = spec.read_text().replace('name = "base"', 'name = "tuned"')
    renamed.write_text(text.replace('stage = "base"', 'stage = "tuned"'))
    args = argparse.Namespace(spec=str(renamed), overrides=[], store=str(store), export=None,
                              stage="tuned", command="serve")  # fmt: skip
    served = open_model(args)
    assert (served.name, served.aliases) == ("tuned", ("stage:tuned",))


def test_greedy_completion_equals_llmbuild_generate(built, servers):
    spec, store = built
    # longer than the seq_len the spec trains at, within the model's positions: generate
    # reads it whole, as the server does
    prompt, tokens = "A fox. " * 40 + "The quick brown", 16
    done = subprocess.run(
        [sys.executable, "-m", "llmbuild", "generate", str(spec), "--store", str(store),
         "--stage", "base", "--prompt", prompt, "--temperature", "0",
         "--max-new-tokens", str(tokens)],
        env=ENV, capture_output=True, text=True, check=True,
    )  # fmt: skip
    generated = done.stdout
    assert "note: the prompt is" not in done.stderr, done.stderr
    client = servers["stage"].client()
    whole = client.completions.create(model="base", prompt=prompt, max_tokens=tokens, temperature=0)
    assert whole.usage.prompt_tokens > 64
    assert generated == prompt + whole.choices[0].text + "\n"
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == tokens
    assert _streamed(client, prompt, tokens, model="base") == whole.choices[0].text
    # the export holds the same weights: the same answer
    assert _greedy(servers["export"].client(), prompt, tokens) == whole.choices[0].text


def test_chat_whole_and_streamed(servers):
    client = servers["export"].client()
    messages = [{"role": "user", "content": "Hello, how are you today?"}]
    whole = client.chat.completions.create(
        model="hf@base", messages=messages, max_tokens=12, temperature=0
    )
    answer = whole.choices[0].message.content
    assert whole.choices[0].message.role == "assistant" and answer
    assert whole.usage.completion_tokens <= 12
    chunks = list(
        client.chat.completions.create(
            model="hf@base",
            messages=messages,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[
        0
    ].finish_reason
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens
    # a stop string ends the answer before it
    stop = answer[len(answer) // 2 :][:2]
    cut = client.chat.completions.create(
        model="hf@base", messages=messages, max_tokens=12, temperature=0, stop=[stop]
    )
    assert cut.choices[0].message.content == answer[: answer.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    # seeded sampling repeats itself
    sampled = [
        client.chat.completions.create(
            model="hf@base", messages=messages, max_tokens=12, temperature=1.0, top_p=0.9, seed=3
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]
    # a top_p below float32's least number keeps the most likely token: greedy
    narrow = client.chat.completions.create(
        model="hf@base", messages=messages, max_tokens=12, temperature=1.0, top_p=5e-324, seed=3
    )
    assert narrow.choices[0].message.content == whole.choices[0].message.content


def _raw(
    server: Server, path: str, body: bytes, key: str | None = KEY, scheme: str = "Bearer"
) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"{scheme} {key}"
    request = urllib.request.Request(server.url + path, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_concurrent_streams_share_the_batch_and_a_disconnect_stalls_nobody(servers):
    server = servers["export"]
    client = server.client()
    tokens = 24
    expected = [_greedy(client, p, tokens) for p in PROMPTS]
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def stream(i: int) -> None:
        try:
            results[i] = _streamed(server.client(), PROMPTS[i], tokens)
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    def together(*extra: threading.Thread) -> None:
        """Runs the streams of every prompt at once, beside ``extra``."""
        results.clear()
        threads = [
            *extra,
            *(threading.Thread(target=stream, args=(i,)) for i in range(len(PROMPTS))),
        ]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        assert time.monotonic() - start < 60
        assert [results.get(i) for i in range(len(PROMPTS))] == expected

    # one forward pass serves many streams: far fewer decode steps than tokens streamed
    before = server.health()
    together()
    assert server.health()["steps"] - before["steps"] < len(PROMPTS) * tokens / 2

    # The stream that hangs up asks for an answer that only its length ends (greedy: the
    # same one as here), far longer than the time its client takes to leave, so that the
    # server must cancel it rather than see it finish.
    long = client.completions.create(
        model="hf@base", prompt="Hello", max_tokens=LONG, temperature=0
    )
    assert long.choices[0].finish_reason == "length"
    before = server.health()
    gone = threading.Event()

    def leave() -> None:  # reads a few chunks of a long answer, then hangs up
        with server.client().completions.create(
            model="hf@base", prompt="Hello", max_tokens=LONG, temperature=0, stream=True
        ) as s:
            for n, _ in enumerate(s):
                if n == 3:
                    break
        gone.set()

    together(threading.Thread(target=leave))
    assert gone.is_set()
    deadline = time.monotonic() + 10
    while (after := server.health())["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert after["running"] == 0 and after["cancelled"] == before["cancelled"] + 1
    assert after["finished"] == before["finished"] + len(PROMPTS)


def test_bad_requests_get_openai_errors_and_the_server_goes_on(servers):
    server = servers["export"]
    client = server.client()
    ok = {"model": "hf@base", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}

    def succeeds() -> None:
        status, body = _raw(server, "/v1/chat/completions", json.dumps(ok).encode())
        assert status == 200 and body["choices"][0]["message"]["role"] == "assistant"

    def shaped(body: dict) -> dict:
        assert set(body) == {"error"}
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["message"]
        return body["error"]

    cases = [
        ("/v1/chat/completions", b'{"model": "hf@base", "messages": [', KEY, 400, None),
        ("/v1/chat/completions", b'{"model": "hf@base"}', KEY, 400, "messages"),
        ("/v1/completions", b'{"prompt": "Hi"}', KEY, 400, "model"),
        ("/v1/chat/completions", json.dumps(ok).encode(), None, 401, None),
        ("/v1/chat/completions", json.dumps(ok).encode(), "wrong", 401, None),
        # a lone surrogate is no text for the tokenizer (it was a 500)
        ("/v1/completions", b'{"model": "hf@base", "prompt": "\\ud800"}', KEY, 400, None),
        (
            "/v1/chat/completions",
            json.dumps({**ok, "temperature": math.nan}).encode(),
            KEY,
            400,
            "temperature",
        ),
        # a user's message of null content (it was answered as an empty message)
        (
            "/v1/chat/completions",
            json.dumps({**ok, "messages": [{"role": "user", "content": None}]}).encode(),
            KEY,
            400,
            "messages[0]",
        ),
    ]
    for path, body, key, status, param in cases:
        got, answer = _raw(server, path, body, key)
        assert got == status, (path, body, answer)
        assert shaped(answer)["param"] == param
        succeeds()
    for ids, said in (([], "an empty list"), ([0, 10**6], "must be in [0, ")):
        body = json.dumps({"model": "hf@base", "prompt": ids}).encode()
        got, answer = _raw(server, "/v1/completions", body, KEY)
        assert got == 400 and said in shaped(answer)["message"], answer

    with pytest.raises(openai.AuthenticationError) as e:
        server.client(api_key="wrong").models.list()
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    succeeds()
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-nope", messages=ok["messages"])
    assert e.value.code == "model_not_found" and e.value.param == "model"
    succeeds()
    assert _raw(server, "/v1/chat/completions", json.dumps(ok).encode(), KEY, "bearer")[0] == 200
    for bad in ({"max_tokens": 0}, {"max_tokens": -3}, {"n": 2}, {"seed": 2**64},
                {"logprobs": True, "top_logprobs": 3}, {"logit_bias": {"5": 100}}):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="hf@base", messages=ok["messages"], **bad)
        assert e.value.status_code == 400 and e.value.param == next(iter(bad)), e.value.body
        succeeds()
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    for bad in ({"tools": tools}, {"frequency_penalty": 1.5},
                {"response_format": {"type": "json_object"}}):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="hf@base", messages=ok["messages"], **bad)
        assert e.value.code == "unsupported_parameter" and e.value.param == next(iter(bad))
    for extra in ({"top_k": 5}, {"min_p": 0.1}, {"repetition_penalty": 1.2}):  # vLLM's
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(
                model="hf@base", messages=ok["messages"], max_tokens=2, extra_body=extra
            )
        assert e.value.code == "unsupported_parameter" and e.value.param == next(iter(extra))
    client.chat.completions.create(  # each turned off: answered
        model="hf@base", messages=ok["messages"], max_tokens=2,
        extra_body={"top_k": -1, "min_p": 0, "repetition_penalty": 1},
    )  # fmt: skip
    deep = b'{"model": "hf@base", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    got, answer = _raw(server, "/v1/chat/completions", deep)
    assert got == 400 and shaped(answer)["code"] == "invalid_json", answer
    for bad, said in (({"stop": 5}, "Invalid 'stop': expected a string or an array of strings"),
                      ({"stop": list("abcde")}, "Invalid 'stop': List should have at most 4"),
                      ({"max_tokens": "2"}, "Invalid 'max_tokens': Input should be a valid integer"),
                      ({"temperature": "0"}, "Invalid 'temperature'"),
                      ({"stream": "yes"}, "Invalid 'stream'")):  # fmt: skip
        got, answer = _raw(server, "/v1/chat/completions", json.dumps({**ok, **bad}).encode())
        assert got == 400 and shaped(answer)["param"] == next(iter(bad)), answer
        assert answer["error"]["message"].startswith(said), answer
    greedy = client.chat.completions.create(model="hf@base", messages=ok["messages"], top_p=0,
                                            temperature=1, max_tokens=2)  # fmt: skip
    cold = json.dumps({**ok, "temperature": 0}).encode()
    answer = _raw(server, "/v1/chat/completions", cold)[1]["choices"][0]["message"]["content"]
    assert greedy.choices[0].message.content == answer  # top_p 0: the most likely token only
    # asked for, not given (a completion's logprobs 0 asks for the chosen token's)
    for bad in ({"logprobs": 2}, {"logprobs": 0}, {"echo": True}, {"best_of": 2}):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model="hf@base", prompt="Hi", max_tokens=2, **bad)
        assert e.value.code == "unsupported_parameter" and e.value.param == next(iter(bad))
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="hf@base", prompt="fox jumps " * CONTEXT, max_tokens=4)
    assert e.value.code == "context_length_exceeded" and e.value.param == "prompt"
    succeeds()
    with pytest.raises(openai.BadRequestError) as e:  # also when streaming
        client.chat.completions.create(
            model="hf@base", messages=[{"role": "user", "content": "fox " * CONTEXT}], stream=True
        )
    assert e.value.code == "context_length_exceeded"
    succeeds()
    assert server.proc.poll() is None


def test_a_huge_prompt_stalls_no_other_request(servers):
    """Megabytes of prompt take seconds to tokenize, away from the server's event loop:
    a health check and a small request are answered meanwhile, and the huge one gets
    its 400 for the context."""
    import threading

    server = servers["export"]
    huge = {"model": "hf@base", "messages": [{"role": "user", "content": "a b " * 1_500_000}]}
    answers = {}
    thread = threading.Thread(
        target=lambda: answers.update(
            huge=_raw(server, "/v1/chat/completions", json.dumps(huge).encode())
        )
    )
    thread.start()
    time.sleep(0.3)
    with urllib.request.urlopen(server.url + "/health", timeout=30) as r:
        assert r.status == 200
    small = {"model": "hf@base", "prompt": "Hi", "max_tokens": 2}
    assert _raw(server, "/v1/completions", json.dumps(small).encode())[0] == 200
    still_reading = thread.is_alive()
    thread.join(timeout=120)
    status, body = answers["huge"]
    assert status == 400 and body["error"]["code"] == "context_length_exceeded", body
    assert still_reading  # both were answered while the huge prompt was being tokenized


@pytest.mark.parametrize("source", [["--stage", "base"], ["--export", "hf@base"]])
def test_an_unbuilt_model_says_to_build_it(built, tmp_path, source):
    spec, _ = built
    r = subprocess.run(
        [sys.executable, "-m", "llmbuild", "serve", str(spec), "--store", str(tmp_path / "empty"),
         "--port", str(_free_port()), *source],
        env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    # The command that builds it: this spec into this store.
    assert f"llmbuild build {spec} --store {tmp_path / 'empty'}`" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_a_busy_port_is_said_before_anything_loads(built):
    import socket

    spec, store = built
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "llmbuild", "serve", str(spec), "--store", str(store),
             "--port", str(port), "--stage", "base"],
            env=ENV, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert f"cannot serve at 127.0.0.1:{port}: Address already in use; pick another --port" in (
        r.stderr
    )
    assert "serving" not in r.stderr and "Traceback" not in r.stderr


def test_chat_in_a_terminal_remembers_the_conversation(built):
    pexpect = pytest.importorskip("pexpect")
    spec, store = built
    child = pexpect.spawn(
        sys.executable,
        ["-m", "llmbuild", "chat", str(spec), "--store", str(store), "--stage", "base",
         "--temperature", "0", "--max-tokens", "8", "--verbose"],
        env={**ENV, "TERM": "dumb"}, encoding="utf-8", timeout=90,
    )  # fmt: skip
    try:

        def logged(rid: int, what: str) -> str:
            # pexpect's patterns are DOTALL: keep the match on one line.
            child.expect(rf"request {rid} {what} (\"[^\r\n]*\")\r\n")
            return json.loads(child.match.group(1))

        child.expect("/exit quits")
        child.expect_exact("> ")
        child.sendline("Hello there")
        first_prompt = logged(1, "prompt")
        first_answer = logged(1, "answer")
        assert first_prompt.endswith("Hello there<|im_end|>\n<|im_start|>assistant\n")
        child.expect_exact("> ")
        child.sendline("And then?")
        second = logged(2, "prompt")
        assert second.startswith(first_prompt + first_answer)
        assert second.endswith("And then?<|im_end|>\n<|im_start|>assistant\n")
        logged(2, "answer")
        child.expect_exact("> ")
        child.sendline("/reset")
        child.expect("forgotten")
        child.expect_exact("> ")
        child.sendline("Fresh start")
        third = logged(3, "prompt")
        assert "Hello there" not in third and "Fresh start" in third
        child.expect_exact("> ")
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_chat_exits_on_exit_command(built):
    spec, store = built
    r = subprocess.run(
        [sys.executable, "-m", "llmbuild", "chat", str(spec), "--store", str(store),
         "--export", "hf@base", "--temperature", "0", "--max-tokens", "4"],
        input="Hi\n/exit\nnever read\n", env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("chatting with hf@base") and r.stdout.count("> ") == 2


def test_a_model_without_a_chat_template_says_how_to_chat_with_it():
    """A base model's tokenizer often has no chat template: a chat request, and `llmbuild
    chat`, are told what to set in the spec instead of transformers' own message."""
    from llmbuild.backends.serve.model import PromptError, ServedModel
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"hi": 0, "[UNK]": 1}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=words, eos_token="[UNK]")
    served = ServedModel("base", (), None, tok, (1,), 1, 16)
    assert not served.chats and served.prompt_ids("hi") == [0]
    with pytest.raises(PromptError, match="base has no chat template, so it answers completi"):
        served.chat_ids([{"role": "user", "content": "hi"}])


def test_an_answer_cut_inside_a_character_ends_before_it():
    """Byte-level tokens: max_tokens may fall between a character's bytes, whose start
    decodes to U+FFFD; the answer (streamed or whole) ends before that character."""
    from llmbuild.backends.serve.sequence import SamplingParams, Sequence

    def decode(ids):
        return bytes(ids).decode("utf-8", errors="replace")

    word = "hé".encode()  # h, then é in two bytes
    events = []
    seq = Sequence(0, [], SamplingParams(max_tokens=2), events.append, (), decode)
    assert not seq.accept(word[0])
    assert seq.accept(word[1]) and seq.finish_reason == "length"
    assert seq.answer == "h" == "".join(e.text for e in events)
    whole = Sequence(1, [], SamplingParams(max_tokens=3), [].append, (), decode)
    assert [whole.accept(b) for b in word] == [False, False, True] and whole.answer == "hé"


def test_a_chatml_template_over_a_vocabulary_without_its_tokens_ends_replies_at_its_text(
    tmp_path,
):
    """GPT-2's vocabulary has no <|im_end|>: a model fine-tuned with the chatml template
    writes it out in ordinary tokens, and a chat answer (served, or ``generate --chat``)
    ends where its text appears, as it would at the token; a completion does not."""
    import json

    from llmbuild.backends.serve.api import Api
    from llmbuild.backends.serve.engine import Engine
    from llmbuild.backends.serve.model import from_export
    from llmbuild.backends.serve.sequence import Sequence
    from llmbuild.backends.tokenizer.build import CHATML, IM_END
    from transformers import AutoTokenizer

    from llmbuild.cli.generate_cmd import _before
    from tests.checkpoints import tokenizer

    checkpoint = write_checkpoint(tmp_path / "ck", "gpt2")
    tokenizer(300, specials=["<|endoftext|>"]).save_pretrained(str(checkpoint))  # GPT-2's
    tok = AutoTokenizer.from_pretrained(str(checkpoint))
    assert IM_END not in tok.get_vocab() and tok.chat_template == CHATML
    served = from_export(checkpoint, "export:hf@sft")
    assert served.turn_texts == (IM_END,)
    api = Api(Engine(served))
    chat = {"model": "hf@sft", "messages": [{"role": "user", "content": "Snow?"}]}
    assert api.chat_job(json.dumps({**chat, "stop": ["."]}).encode()).params.stop == (".", IM_END)
    completion = {"model": "hf@sft", "prompt": "Snow?"}
    assert api.completion_job(json.dumps(completion).encode()).params.stop == ()

    reply = served.encode("White as milk<|im_end|>\n<|endoftext|>")
    seq = Sequence(0, [], api.chat_job(json.dumps(chat).encode()).params, [].append,
                   served.stop_ids, served.decode)  # fmt: skip
    assert any(seq.accept(i) for i in reply)
    assert seq.answer == "White as milk" and seq.finish_reason == "stop"
    assert _before("White as milk<|im_end|>\n<|im_", (IM_END,)) == "White as milk"


def test_a_chat_turn_too_long_for_the_context_says_what_would_help():
    """/reset helps only where earlier turns take the room: a system message or a message
    that alone does not fit is said to be that."""
    from llmbuild.backends.serve.chat import _too_long
    from llmbuild.backends.serve.model import ServedModel
    from llmbuild.backends.tokenizer.build import CHATML
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"hi": 0, "[UNK]": 1}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=words, eos_token="[UNK]")
    tok.chat_template = CHATML
    served = ServedModel("base", (), None, tok, (1,), 1, 16)
    system = [{"role": "system", "content": "hi " * 20}]
    said = _too_long(served, system, system, 40)
    assert "the system message alone does not fit" in said and "--system" in said
    said = _too_long(served, [], [], 40)
    assert "this message does not fit: 40 tokens" in said and "/reset" not in said
    earlier = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hi"}]
    assert "no longer fits" in _too_long(served, earlier, [], 40)
