"""Serving: 8 streaming clients at once against the same 8 requests one after another,
on one ``llmbuild serve`` of an imported Qwen2 checkpoint (random weights; 4 x 256
hidden, 2 x 64 with --quick), in alternating rounds (BENCH_SERVE_ROUNDS, default 3, 1
with --quick; BENCH_SERVE_TOKENS new tokens each, default 64, 32 with --quick, greedy);
tokens/s (ratio = concurrent / sequential) and the time to first token, p50 and p99
over every request of the rounds."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLIENTS = 8
PROMPTS = [
    "The quick brown fox",
    "Hello, how are you",
    "Two plus two is four, and",
    "A model reads text and",
    "three plus four is",
    "The lazy dog",
    "writes text. Hello",
    "Today is",
]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
HF_EXPORT = '[[export]]\nformat = "hf"\nstage = "base"\n'


WRITE = """
import sys
from pathlib import Path
from tests.checkpoints import import_spec, write_checkpoint
root, shape = Path(sys.argv[1]), {shape!r}
import_spec(root, write_checkpoint(root / "ck", "qwen2", **shape), {export!r})
"""


def _build(root: Path, quick: bool) -> Path:
    """The spec of an imported checkpoint with its hf export, built; written in another
    process so that this one (the clients) does not load torch."""
    shape = {} if quick else {"hidden": 256, "layers": 4, "heads": 4, "kv_heads": 2, "ffn": 688}
    code = WRITE.format(shape=shape, export=HF_EXPORT)
    subprocess.run([sys.executable, "-c", code, str(root)], env=ENV, check=True)
    spec = root / "spec.toml"
    subprocess.run(
        [sys.executable, "-m", "llmbuild", "build", str(spec), "--executor", "inline", "--plain"],
        env=ENV, check=True, capture_output=True,
    )  # fmt: skip
    return spec


@contextlib.contextmanager
def _server(spec: Path, log: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmbuild", "serve", str(spec), "--export", "hf@base",
             "--port", str(port)],
            env=ENV, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                json.loads(urllib.request.urlopen(f"{url}/health", timeout=2).read())
                break
            time.sleep(0.2)
        yield url
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _request(client, prompt: str, tokens: int, start: float) -> tuple[float, int]:
    """Time to first token (from ``start``) and the tokens of one streamed completion."""
    first, used = None, 0
    stream = client.completions.create(
        model="hf@base",
        prompt=prompt,
        max_tokens=tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text:
            first = time.perf_counter() - start
        if chunk.usage is not None:
            used = chunk.usage.completion_tokens
    return (first if first is not None else time.perf_counter() - start), used


def _sequential(clients, tokens: int) -> tuple[float, list[float]]:
    total, ttft, start = 0, [], time.perf_counter()
    for client, prompt in zip(clients, PROMPTS):
        t, n = _request(client, prompt, tokens, time.perf_counter())
        ttft.append(t)
        total += n
    return total / (time.perf_counter() - start), ttft


def _concurrent(clients, tokens: int) -> tuple[float, list[float]]:
    results: list[tuple[float, int]] = [(0.0, 0)] * CLIENTS
    go = threading.Barrier(CLIENTS + 1)
    start = [0.0]

    def one(i: int) -> None:
        go.wait()
        results[i] = _request(clients[i], PROMPTS[i], tokens, start[0])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    start[0] = time.perf_counter()
    go.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start[0]
    return sum(n for _, n in results) / elapsed, [t for t, _ in results]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(quick: bool = False) -> list[dict]:
    from openai import OpenAI

    rounds = int(os.environ.get("BENCH_SERVE_ROUNDS", 1 if quick else 3))
    tokens = int(os.environ.get("BENCH_SERVE_TOKENS", 32 if quick else 64))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = _build(root, quick)
        with _server(spec, root / "server.log") as url:
            clients = [OpenAI(base_url=f"{url}/v1", api_key="-") for _ in range(CLIENTS)]
            _sequential(clients[:2], 4)  # warm up, both ways
            _concurrent(clients, 4)
            rates: dict[str, list[float]] = {"seq": [], "conc": []}
            ttft: dict[str, list[float]] = {"seq": [], "conc": []}
            for _ in range(rounds):
                for name, measure in (("seq", _sequential), ("conc", _concurrent)):
                    rate, firsts = measure(clients, tokens)
                    rates[name].append(rate)
                    ttft[name] += firsts
    seq, conc = statistics.median(rates["seq"]), statistics.median(rates["conc"])
    model = "2 x 64" if quick else "4 x 256"
    rows = [
        {
            "benchmark": f"serve, qwen2 {model}: {CLIENTS} concurrent streaming clients, "
            f"{tokens} tokens each, median of {rounds} rounds",
            "result": f"{conc:,.0f} tok/s",
            "baseline": f"the same {CLIENTS} requests one after another: {seq:,.0f} tok/s",
            "ratio": conc / seq,
            "unit": "the sequential throughput",
            "target": "2x",
        }
    ]
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        c, s = _pct(ttft["conc"], q), _pct(ttft["seq"], q)
        rows.append(
            {
                "benchmark": f"serve: time to first token {label}, {CLIENTS} concurrent clients",
                "result": f"{c * 1000:.0f} ms",
                "baseline": f"one request at a time: {s * 1000:.0f} ms",
                "ratio": c / s,
                "unit": "the sequential time",
            }
        )
    return rows


if __name__ == "__main__":
    from bench.run import print_table

    print_table(run(quick="--quick" in sys.argv))
