"""What a build shows while it runs: a live view on a terminal, plain lines elsewhere.

Backends feed progress as fields: ``completed``/``total``/``unit`` drive the bar, rate and
ETA; any other scalar (``loss``, ``lr``, ...) is shown beside it.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any, TextIO

DONE_STATES = {"cached", "built", "reused", "failed", "skipped"}


def _fmt_num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value / 1000:.1f}k"
    return str(value)


def _fmt_secs(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class _Rate:
    """Rate and ETA of one node's ``completed`` counter, over its last ``WINDOW``
    seconds: a slow start (a machine busy elsewhere, the first steps' warm-up) stops
    counting once it is past."""

    WINDOW = 30.0

    def __init__(self) -> None:
        self.seen: deque[tuple[float, float]] = deque()

    def text(self, fields: dict[str, Any]) -> str:
        done, total = fields.get("completed"), fields.get("total")
        if not isinstance(done, (int, float)):
            return ""
        now = time.monotonic()
        self.seen.append((now, float(done)))
        while len(self.seen) > 2 and now - self.seen[0][0] > self.WINDOW:
            self.seen.popleft()
        elapsed, count = now - self.seen[0][0], done - self.seen[0][1]
        if elapsed <= 0 or count <= 0:
            return ""
        rate = count / elapsed
        unit = fields.get("unit", "it")
        out = f"{_fmt_num(rate)} {unit}/s"
        if isinstance(total, (int, float)) and total > done:
            out += f"  ETA {_fmt_secs((total - done) / rate)}"
        return out


def describe_fields(fields: dict[str, Any], rate: str = "") -> str:
    parts = []
    done, total, unit = fields.get("completed"), fields.get("total"), fields.get("unit", "")
    if done is not None:
        parts.append(
            f"{unit} {_fmt_num(done)}/{_fmt_num(total)}" if total else f"{unit} {_fmt_num(done)}"
        )
    parts += [
        f"{k} {_fmt_num(v)}"
        for k, v in fields.items()
        if k not in ("completed", "total", "unit") and isinstance(v, (int, float, str))
    ]
    if rate:
        parts.append(rate)
    return "  ".join(p.strip() for p in parts)


class PlainReporter:
    """One line per event, progress at most every ``interval`` seconds per node (CI logs)."""

    def __init__(self, stream: TextIO | None = None, interval: float = 10.0) -> None:
        self.stream = stream or sys.stdout
        self.interval = interval
        self.started: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.rates: dict[str, _Rate] = {}

    def _line(self, text: str) -> None:
        self.stream.write(f"{time.strftime('%H:%M:%S')}  {text}\n")
        self.stream.flush()

    def node(self, name: str, state: str, detail: str = "", seconds: float | None = None) -> None:
        if state in ("queued", "running"):  # built in: the time it ran, or waited and ran
            self.started[name] = time.monotonic()
        took = ""
        if seconds is None and state in ("built", "failed") and name in self.started:
            seconds = time.monotonic() - self.started[name]
        if seconds is not None:
            took = f" in {_fmt_secs(seconds)}"
        self._line(f"{state:<8} {name}{took}" + (f"  {detail}" if detail else ""))

    def update(self, node: str, fields: dict[str, Any]) -> None:
        rate = self.rates.setdefault(node, _Rate()).text(fields)
        now = time.monotonic()
        if now - self.last.get(node, 0.0) >= self.interval:
            self.last[node] = now
            self._line(f"{'progress':<8} {node}  {describe_fields(fields, rate)}")

    def close(self) -> None:
        pass


class LiveReporter:
    """A rich live view: one row per node with its state and progress bar."""

    def __init__(self, names: list[str]) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self.console = Console()
        self.progress = Progress(
            TextColumn("{task.fields[state]:<8}"),
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
            refresh_per_second=4,
        )
        width = max((len(n) for n in names), default=0)
        self.tasks = {
            n: self.progress.add_task(
                f"{n:<{width}}", total=None, state="pending", info="", start=False
            )
            for n in names
        }
        self.rates: dict[str, _Rate] = {}
        self.progress.start()

    def node(self, name: str, state: str, detail: str = "", seconds: float | None = None) -> None:
        task = self.tasks.get(name)
        if task is None:
            return
        if state == "running":
            self.progress.start_task(task)
        kwargs: dict[str, Any] = {"state": state}
        if detail or state != "running":  # a queued node's detail stays as it starts
            kwargs["info"] = detail
        if state in DONE_STATES:
            kwargs.update(total=1, completed=1)
        self.progress.update(task, **kwargs)

    def update(self, node: str, fields: dict[str, Any]) -> None:
        task = self.tasks.get(node)
        if task is None:
            return
        rate = self.rates.setdefault(node, _Rate()).text(fields)
        self.progress.update(
            task,
            total=fields.get("total"),
            completed=fields.get("completed", 0),
            info=describe_fields(fields, rate),
        )

    def close(self) -> None:
        self.progress.stop()


def make_reporter(names: list[str], live: bool | None = None) -> PlainReporter | LiveReporter:
    if live is None:
        live = sys.stdout.isatty()
    return LiveReporter(names) if live else PlainReporter()
