"""The progress view: plain lines for logs, a live rich view on terminals."""

from __future__ import annotations

import io
import time

from llmbuild.run.context import Progress
from llmbuild.run.progress import LiveReporter, PlainReporter, describe_fields


def test_plain_lines_with_rate_and_eta():
    out = io.StringIO()
    rep = PlainReporter(out, interval=0)
    rep.node("stage:pretrain", "running")
    rep.update("stage:pretrain", {"completed": 10, "total": 100, "unit": "steps", "loss": 2.5})
    time.sleep(0.05)
    rep.update("stage:pretrain", {"completed": 20, "total": 100, "unit": "steps", "loss": 2.25})
    rep.node("stage:pretrain", "built")
    lines = out.getvalue().splitlines()
    assert "running  stage:pretrain" in lines[0]
    assert "steps 20/100  loss 2.25" in lines[2] and "steps/s  ETA " in lines[2]
    assert "built    stage:pretrain in 0s" in lines[3]


def test_a_built_node_is_timed_by_its_record_not_its_wait():
    """Under Ray a submitted node may wait for a worker: the time said is the one its
    record measured where it ran."""
    out = io.StringIO()
    rep = PlainReporter(out, interval=0)
    rep.node("stage:b", "running")
    time.sleep(1.1)
    rep.node("stage:b", "built", seconds=0.2)
    rep.node("stage:c", "running")
    time.sleep(1.1)
    rep.node("stage:c", "failed", "boom")  # no record: from when it was submitted
    lines = out.getvalue().splitlines()
    assert "built    stage:b in 0s" in lines[1] and "failed   stage:c in 1s  boom" in lines[3]


def test_describe_fields():
    assert (
        describe_fields({"completed": 12000, "total": 50000, "unit": "tokens"})
        == "tokens 12.0k/50.0k"
    )
    assert describe_fields({"loss": 1.23456}) == "loss 1.235"


def test_progress_is_throttled():
    seen = []

    class Sink:
        def update(self, node, fields):
            seen.append(dict(fields))

    p = Progress("n", Sink(), interval=60)
    for i in range(100):
        p.update(completed=i)
    p.update(force=True)
    assert len(seen) == 2 and seen[-1]["completed"] == 99


def test_live_view_renders():
    rep = LiveReporter(["source:a", "stage:b"])
    rep.console.file = io.StringIO()
    rep.node("source:a", "cached")
    rep.node("stage:b", "running")
    rep.update("stage:b", {"completed": 5, "total": 10, "unit": "steps", "loss": 3.0})
    rep.close()
    rendered = rep.console.file.getvalue()
    assert "stage:b" in rendered and "loss 3" in rendered


def test_the_rate_follows_the_last_seconds_not_a_slow_start(monkeypatch):
    """An ETA from the average since the first update stayed wildly long after a slow
    start (a machine busy elsewhere); over the last WINDOW seconds it follows the pace."""
    from llmbuild.run import progress

    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    rate = progress._Rate()
    rate.text({"completed": 0, "total": 1000})
    clock[0] = 60.0  # one step in the first minute
    assert rate.text({"completed": 1, "total": 1000}).startswith("0.01667 it/s")
    for i in range(2, 100):  # then ten steps a second
        clock[0] = 60.0 + i / 10
        shown = rate.text({"completed": i, "total": 1000, "unit": "steps"})
    assert shown.startswith("9.899 steps/s  ETA 1m31s"), shown  # from step 1 at 60 s
