"""Running one node, wherever it runs: fetch inputs, build into a temp dir, record, commit.

``execute_node`` is what an executor calls, in-process or in a Ray worker on another
machine; everything it needs travels in a picklable ``NodeTask``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmbuild.backend import Backend, Resources
from llmbuild.errors import UserError, format_path
from llmbuild.locations import stat_cache_path
from llmbuild.plan.digest import MissingInput, StatCache
from llmbuild.plan.graph import External
from llmbuild.run.context import InputArtifact, Progress, ProgressSink, RunContext
from llmbuild.run.ranks import leave_process_groups
from llmbuild.store.fs import readable
from llmbuild.store.records import Record, environment, manifest, output_digest
from llmbuild.store.store import Store, node_ref


class NodeFailed(Exception):
    """A node's backend raised; the message says what, the log has the traceback."""

    def __init__(self, node: str, message: str, log: str | None = None) -> None:
        self.node, self.message, self.log = node, message, log
        super().__init__(f"{node}: {message}" + (f" (log: {log})" if log else ""))

    def __reduce__(self) -> tuple[Any, ...]:
        return (NodeFailed, (self.node, self.message, self.log))


@dataclass(frozen=True)
class NodeTask:
    """One node to build, with everything needed to build it anywhere."""

    name: str
    key: str
    preimage: dict[str, Any]
    backend: Backend
    config: dict[str, Any]
    inputs: dict[str, Record]
    """Slot -> the upstream's committed record (the one holding its outputs)."""
    resources: Resources
    store_url: str
    work_root: str
    build_id: str
    cutoff_key: str | None = None
    spec_dir: str | None = None
    external: tuple[External, ...] = ()
    """The files outside the store it reads, whose digests are in ``preimage``."""


def _is_report(path: str, reports: tuple[str, ...]) -> bool:
    """A file listed as a report, or inside a report folder (an entry ending in /)."""
    return any(path == r or (r.endswith("/") and path.startswith(r)) for r in reports)


def _logger(name: str, path: Path) -> tuple[logging.Logger, logging.Handler]:
    log = logging.getLogger(f"llmbuild.node.{name}")
    log.setLevel(logging.INFO)
    log.propagate = False
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return log, handler


LOW_DISK = 64 << 20
"""Free bytes below which a failure is put down to a full disk: libraries rarely say so
(torch's save reports "unexpected pos")."""


def _disk_full(out: Path, e: BaseException) -> str:
    """A note for a failure that a full disk explains, before the temp dir is freed."""
    full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
    try:
        free = shutil.disk_usage(out if out.exists() else out.parent).free
    except OSError:
        return ""
    if not full and free >= LOW_DISK:
        return ""
    return f"the disk is full ({free >> 20} MiB free where {out.parent} is)"


class InputChanged(Exception):
    """A file a node reads no longer holds the bytes its key was made from."""


def _same_inputs(task: NodeTask, cache: StatCache | None, when: str) -> None:
    """Raises InputChanged when a file of ``task.external`` changed since the plan digested
    it: an output made from other bytes must not be stored under that key. Costs a stat per
    unchanged file (this machine's stat cache knows them from the plan)."""
    if cache is None:  # no external files
        return
    changed = []
    for ext in task.external:
        if when == "while it ran" and any("://" in p for p in ext.patterns):
            continue  # a remote file is read again only to start (it may be downloaded)
        try:
            now = ext.digest(cache)
        except (MissingInput, OSError):
            now = None
        if now != task.preimage["inputs"].get(ext.slot):
            changed.append(format_path(ext.spec_path))
    with contextlib.suppress(OSError):  # a cache this machine cannot write: none kept
        cache.save()
    if changed:
        raise InputChanged(
            f"the files of {', '.join(changed)} changed {when}; nothing is stored: build "
            "again to read them as they are now"
        )


def _clear_work(work: Path, keep_checkpoint: bool) -> None:
    """After a failure, the node's work dir keeps its log and a checkpoint the next
    attempt resumes from; its partial files (a data pass, a checkpoint half written when
    the disk filled) go, for they can be large and nothing reads them again."""
    for path in work.iterdir():
        if path.name == "node.log":
            continue
        checkpoint = path.name.startswith("checkpoint") and path.suffix in (".pt", ".json")
        if keep_checkpoint and checkpoint:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def execute_node(
    task: NodeTask, sink: ProgressSink | None = None, run_ranks: Any = None, parallel: Any = None
) -> Record:
    """Build one node and commit it; return its record. Raises NodeFailed."""
    store = Store(task.store_url, work_root=Path(task.work_root))
    work = store.work_dir(task.key)
    log_path = work / "node.log"
    log, handler = _logger(task.name, log_path)
    # The libraries' warnings while it runs (lm-eval's, transformers') are the node's: in
    # its log, not on the build's console or a Ray worker's own files.
    logging.getLogger().addHandler(handler)
    out = store.scratch(task.name, task.key)
    started = time.time()
    try:
        inputs = {slot: InputArtifact.of(store, rec) for slot, rec in task.inputs.items()}
        ctx = RunContext(
            node=task.name,
            key=task.key,
            config=task.backend.Config.model_validate(task.config),
            inputs=inputs,
            out_dir=out,
            work_dir=work,
            resources=task.resources,
            progress=Progress(task.name, sink),
            log=log,
            spec_dir=Path(task.spec_dir) if task.spec_dir else None,
            run_ranks=run_ranks,
            parallel=parallel,
        )
        log.info("building %s (key %s) with %r", task.name, task.key, task.backend)
        par = task.config.get("parallelism")
        resume = store.resumable(task.key, par) or store.other_layout(task.key, par)
        if resume:
            log.info("%s (checkpoint in %s)", resume, work)
        digests = StatCache(stat_cache_path()) if task.external else None
        _same_inputs(task, digests, "before it started")
        task.backend.run(ctx)
        _same_inputs(task, digests, "while it ran")
        ctx.progress.update(force=True)
        readable(out)
        entries = manifest(out, store.cache)
        record = Record(
            name=task.name,
            key=task.key,
            preimage=task.preimage,
            inputs={slot: node_ref(rec) for slot, rec in task.inputs.items()},
            outputs=entries,
            output_digest=output_digest(
                [e for e in entries if not _is_report(e.path, task.backend.reports)]
            ),
            cutoff_key=task.cutoff_key,
            metrics=ctx.metrics,
            notes=ctx.notes,
            timings={
                **ctx.timings,
                "started": started,
                "finished": time.time(),
                "seconds": round(time.time() - started, 3),
            },
            environment=environment(ctx.spec_dir),
            build=task.build_id,
        )
        log.info("built %s in %.1fs", task.name, time.time() - started)
        return store.commit(out, record)
    except KeyboardInterrupt:
        log.error("interrupted")
        shutil.rmtree(out, ignore_errors=True)  # never a half-built temp dir left behind
        raise
    except Exception as e:
        log.error("failed:\n%s", traceback.format_exc())
        if isinstance(e, UserError):  # said for the user already: no class name before it
            message = str(e)
        else:
            message = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        full = _disk_full(out, e)
        if full and "the disk is full" not in message:  # said first: a library's words
            message = f"{full}: {message}"  # rarely say it
        shutil.rmtree(out, ignore_errors=True)
        _clear_work(work, keep_checkpoint=store.resumable(task.key) is not None)
        raise NodeFailed(task.name, message, str(log_path)) from None
    finally:
        leave_process_groups()  # a node's groups die with it: the process hosts others
        log.removeHandler(handler)
        logging.getLogger().removeHandler(handler)
        handler.close()
