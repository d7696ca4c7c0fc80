"""The content-addressed artifact store: artifacts are found by key, never by name.

artifacts/<key>/            outputs + record.json (present = committed)
leases/<key>                who is building a key right now
work/<key>/                 resumable work (checkpoints) until the node commits
nodes/<name>.json           the last committed key and preimage of each node name
cutoff/<cutoff key>         early cut-off: which artifact an output-identical build made
builds/<spec hash>.json     build records: resolved spec, node keys, environment
logs/<key>.log              the build log of each committed node
corrupt/<key>-<time>/       artifacts whose record or files no longer verify, or built from
                            an input's outputs that were since replaced (stale)

A node renamed in the spec keeps its key, so it finds its artifact and rebuilds nothing.
``lookup`` is the one notion of "cached", used by ``plan``, ``build`` and every command
that reads an artifact: the record must parse and match its digest, (local stores)
every output file must match the manifest, and the artifacts it read must still hold
the outputs it read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from llmbuild.locations import cache_dir
from llmbuild.plan.digest import StatCache
from llmbuild.plan.status import MISSING, Lookup
from llmbuild.store.fs import FsspecFS, LocalFS, open_fs
from llmbuild.store.lease import Lease, describe, live_holder, try_acquire
from llmbuild.store.records import RECORD, CorruptRecord, NodeRef, Record, verify_manifest


def safe_name(name: str) -> str:
    """A node name as a file name: ``eval:ppl@pretrain`` -> ``eval_ppl_pretrain``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _spec_file(spec_path: str) -> str:
    """Where a store keeps the keys a spec file's nodes were last built under."""
    return f"specs/{hashlib.sha256(spec_path.encode()).hexdigest()[:16]}.json"


class Store:
    """Artifacts under their keys, on a local directory or any fsspec URL."""

    def __init__(
        self, location: str, cache: StatCache | None = None, work_root: Path | None = None
    ) -> None:
        self.fs: LocalFS | FsspecFS = open_fs(location)
        self.cache = cache or StatCache()
        if work_root is None:
            work_root = self.fs.root if isinstance(self.fs, LocalFS) else cache_dir("work")
        self.work_root = Path(work_root)
        self._parsed: dict[str, tuple[tuple[int, int, int], Record]] = {}
        """Records read from a local store, by key, with the file's inode, size and
        modification time: read again only when the file is another."""

    @property
    def url(self) -> str:
        return self.fs.url

    # -- records ---------------------------------------------------------------------
    def _read_json(self, rel: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.fs.read_bytes(rel))
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _record(self, key: str) -> Record | None:
        """The record committed under ``key``; None if there is none. Raises
        ``CorruptRecord`` for one that does not verify."""
        rel = f"artifacts/{key}/{RECORD}"
        sig = None
        if isinstance(self.fs, LocalFS):
            try:
                st = os.stat(self.fs.path(rel))
            except (FileNotFoundError, NotADirectoryError):
                return None
            sig = (st.st_ino, st.st_size, st.st_mtime_ns)
            hit = self._parsed.get(key)
            if hit is not None and hit[0] == sig:
                return hit[1]
        try:
            data = self.fs.read_bytes(rel)
        except (FileNotFoundError, NotADirectoryError):
            return None
        rec = Record.from_json(data)
        if rec.key != key:
            raise CorruptRecord(f"record.json holds key {rec.key[:12]}, not {key[:12]}")
        if sig is not None:
            self._parsed[key] = (sig, rec)
        return rec

    def lookup(self, key: str, verify: bool = True) -> Lookup:
        """Whether ``key`` is cached: its record verifies, an alias's target exists, and
        (``verify``, on local stores) every output file matches the manifest."""
        try:
            rec = self._record(key)
            if rec is None:
                # A local artifact is committed with its record in one rename: one without
                # it was edited (a remote one may be an upload a kill cut short).
                if isinstance(self.fs, LocalFS) and self.fs.exists(f"artifacts/{key}"):
                    return Lookup("corrupt", problem="its record.json is missing")
                return MISSING
            target = rec
            if rec.alias_of is not None:
                target = self._record(rec.alias_of.key)
                if target is None:
                    return Lookup("corrupt", rec, None, f"it reuses {rec.alias_of.node}, gone")
        except CorruptRecord as e:
            return Lookup("corrupt", problem=str(e))
        except OSError as e:
            return Lookup("corrupt", problem=f"cannot be read: {e}")
        if verify and isinstance(self.fs, LocalFS):
            problem = self.verify(target)
            if problem is not None:
                return Lookup("corrupt", rec, target, problem)
        problem = self._changed_input(rec)
        if problem is not None:
            return Lookup("stale", rec, target, problem)
        return Lookup("cached", rec, target)

    def _changed_input(self, rec: Record) -> str | None:
        """Whether an artifact ``rec`` read, or one those read in turn, was rebuilt since
        under its key with other outputs (removed or corrupt, then built again where
        training rounds otherwise: another processor or thread count). ``rec`` then
        describes outputs that are no longer there, and is built again from the new
        ones."""
        seen: set[str] = set()

        def changed(rec: Record, path: tuple[str, ...]) -> str | None:
            for ref in rec.inputs.values():
                if not ref.output_digest or ref.key in seen:
                    continue
                seen.add(ref.key)
                try:
                    now = self._record(ref.key)
                except (CorruptRecord, OSError):
                    continue  # its own lookup says what is wrong with it
                if now is None:
                    continue
                if now.output_digest != ref.output_digest:
                    through = f" (through {', '.join(path)})" if path else ""
                    return (
                        f"it was built from earlier outputs of {ref.node} {ref.key[:12]}"
                        f"{through}, which was rebuilt since with other contents"
                    )
                found = changed(now, (*path, ref.node))
                if found is not None:
                    return found
            return None

        return changed(rec, ())

    def record(self, key: str) -> Record | None:
        """The verified record of a committed key (an alias's own record), or None; a
        stale one too: its outputs are still what its record says."""
        found = self.lookup(key, verify=False)
        return found.record if found.state in ("cached", "stale") else None

    def resolve(self, rec: Record) -> Record:
        """The record holding the outputs (an alias points at the artifact it reuses)."""
        if rec.alias_of is not None:
            target = self.record(rec.alias_of.key)
            if target is not None:
                return target
        return rec

    def last_preimage(self, name: str) -> dict[str, Any] | None:
        ref = self._read_json(f"nodes/{safe_name(name)}.json")
        return ref.get("preimage") if ref else None

    def lease_holder(self, key: str) -> dict[str, Any] | None:
        """Who holds the live lease of ``key``, if anyone."""
        return live_holder(self.fs, f"leases/{key}")

    def running_elsewhere(self, key: str) -> str | None:
        holder = self.lease_holder(key)
        return f"running elsewhere: {describe(holder)}" if holder else None

    def resumable(self, key: str, parallelism: Any = None) -> str | None:
        """ "resume from step N" when the work dir of ``key`` holds a resumable checkpoint
        that a build at ``parallelism`` (the node's ``[parallelism]``, a model or a
        mapping; any when None) can resume; None otherwise (``other_layout`` says why)."""
        marker = checkpoint_marker(self.work_dir(key, create=False))
        if marker is None or layout_change(marker, parallelism):
            return None
        return f"resume from step {marker['step']}"

    def other_layout(self, key: str, parallelism: Any) -> str | None:
        """What becomes of a resumable checkpoint of ``key`` written at another layout
        than ``parallelism``: the ranks cannot read it, so training starts over."""
        marker = checkpoint_marker(self.work_dir(key, create=False))
        change = layout_change(marker, parallelism) if marker is not None else None
        if change is None:
            return None
        was, now = change
        return f"the checkpoint at step {marker['step']} was written at {was}: {now} starts over"

    # -- building --------------------------------------------------------------------
    def work_dir(self, key: str, create: bool = True) -> Path:
        path = self.work_root / "work" / key
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path

    def work_keys(self) -> list[str]:
        """The keys that have a work dir: nodes begun that have not committed (a killed
        or failed build's), sorted."""
        root = self.work_root / "work"
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def scratch(self, name: str, key: str) -> Path:
        """A temp dir to build a node into; committing it is one rename (local stores)."""
        return self.fs.scratch_dir(f"{safe_name(name)}-{key[:12]}-")

    def drop_scratch(self, name: str, key: str) -> None:
        """Remove the temp dirs of a node whose process was ended before it could (a
        worker killed with its Ray cluster); only its lease holder may call this."""
        if isinstance(self.fs, LocalFS):
            for path in (self.fs.root / "tmp").glob(f"{safe_name(name)}-{key[:12]}-*"):
                shutil.rmtree(path, ignore_errors=True)

    def lease(self, key: str, owner: dict[str, Any]) -> Lease | None:
        return try_acquire(self.fs, f"leases/{key}", owner)

    def announce(self, build_id: str, keys: list[str], owner: dict[str, Any]) -> Lease | None:
        """Say, while the build runs, which keys it makes (``running/<build>``, kept alive
        by a heartbeat): gc keeps their artifacts before the build is recorded."""
        return try_acquire(self.fs, f"running/{build_id}", {**owner, "keys": keys})

    def running_keys(self) -> set[str]:
        """Keys the builds running now make."""
        keys: set[str] = set()
        for name in self.fs.listdir("running"):
            holder = live_holder(self.fs, f"running/{name}")
            if holder is not None:
                keys.update(k for k in holder.get("keys", []) if isinstance(k, str))
        return keys

    def commit(self, out_dir: Path, record: Record) -> Record:
        """Commit a built node: its record is written into ``out_dir`` last, then the dir
        becomes ``artifacts/<key>``. The first committed result for a key is canonical:
        if one exists already, it is kept and returned."""
        existing = self.lookup(record.key, verify=False)
        if existing.cached and existing.record is not None:
            shutil.rmtree(out_dir, ignore_errors=True)
            return existing.record
        if existing.state in ("corrupt", "stale"):
            self.quarantine(record.key)
        record = record.sealed()
        (out_dir / RECORD).write_bytes(record.to_json())
        target = f"artifacts/{record.key}"
        if self.fs.exists(target):  # a half-uploaded remote attempt without a record
            self.fs.remove(target)
        self.fs.put_dir(out_dir, target)
        self._after_commit(record)
        return record

    def alias(self, record: Record) -> Record:
        """Commit a node that reuses another artifact (early cut-off): a record only."""
        return self.commit(self.scratch(record.name, record.key), record)

    def _after_commit(self, record: Record) -> None:
        ref = {"key": record.key, "preimage": record.preimage, "committed": time.time()}
        self.fs.write_bytes(f"nodes/{safe_name(record.name)}.json", json.dumps(ref).encode())
        if record.cutoff_key and record.alias_of is None:
            pointer = {"name": record.name, "key": record.key}
            self.fs.write_bytes(f"cutoff/{record.cutoff_key}", json.dumps(pointer).encode())
        work = self.work_dir(record.key, create=False)
        log = work / "node.log"  # every attempt's log, kept beside the artifact
        if log.exists():
            self.fs.write_bytes(self.log_path(record.key), log.read_bytes())
        shutil.rmtree(work, ignore_errors=True)

    def cutoff_target(self, cutoff_key: str) -> Record | None:
        """The committed record an earlier build made with this cut-off key."""
        ptr = self._read_json(f"cutoff/{cutoff_key}")
        return self.record(ptr["key"]) if ptr and isinstance(ptr.get("key"), str) else None

    # -- reading ---------------------------------------------------------------------
    def artifact_path(self, key: str) -> str:
        """Where a key's artifact lies, as a path or URL a user can open."""
        return f"{self.url.rstrip('/')}/artifacts/{key}"

    def local_dir(self, rec: Record) -> Path:
        """A local directory holding the artifact's outputs (remote stores are fetched,
        and what is fetched is verified)."""
        rec = self.resolve(rec)
        rel = f"artifacts/{rec.key}"
        if isinstance(self.fs, LocalFS):
            return self.fs.path(rel)
        local = cache_dir("artifacts") / rec.key
        if verify_manifest(local, rec.outputs, self.cache) is not None:
            shutil.rmtree(local, ignore_errors=True)
            staging = local.with_name(f".{local.name}.{uuid.uuid4().hex}")
            self.fs.get_dir(rel, staging)
            problem = verify_manifest(staging, rec.outputs, self.cache)
            if problem is not None:
                shutil.rmtree(staging, ignore_errors=True)
                raise OSError(f"{rec.name} {rec.short} in {self.url} is corrupt: {problem}")
            staging.rename(local)
        return local

    def verify(self, rec: Record) -> str | None:
        """None if the artifact's files match its manifest, else the problem."""
        try:
            return verify_manifest(self.local_dir(rec), rec.outputs, self.cache)
        except OSError as e:
            return f"cannot be read: {e}"

    def quarantine(self, key: str) -> str:
        """Move a corrupt or stale artifact aside (never deleted silently, never used
        again)."""
        dest = f"corrupt/{key}-{int(time.time())}"
        self.fs.rename(f"artifacts/{key}", dest)
        return dest

    def artifacts(self) -> list[Record]:
        """Every committed record that verifies."""
        out = []
        for key in self.fs.listdir("artifacts"):
            try:
                rec = self._record(key)
            except (CorruptRecord, OSError):
                continue
            if rec is not None:
                out.append(rec)
        return out

    def remove_artifact(self, key: str) -> None:
        self.fs.remove(f"artifacts/{key}")
        self.fs.remove(self.log_path(key))

    @staticmethod
    def log_path(key: str) -> str:
        """Where a committed node's build log is kept, relative to the store."""
        return f"logs/{key}.log"

    # -- builds ----------------------------------------------------------------------
    def save_build(self, build: dict[str, Any]) -> None:
        """Record ``build`` under its spec hash, unless it built nothing and the record
        there is of another spec file's build of it that did (a copy of the spec found
        everything cached): reproduce checks the inputs of the spec that built the nodes."""
        before = self._read_json(f"builds/{build['spec_hash']}.json")
        states = {n.get("state") for n in build.get("nodes", {}).values()}
        copy = (
            isinstance(before, dict)
            and before.get("ok")
            and before.get("spec_path") != build.get("spec_path")
            and build.get("ok")
            and states <= {"cached", "not selected"}
        )
        if not copy:
            self.fs.write_bytes(
                f"builds/{build['spec_hash']}.json",
                json.dumps(build, indent=1, sort_keys=True).encode(),
            )
        path = build.get("spec_path")
        if path:  # what each node of this spec file was last built as, for plan's "why"
            keys = self.spec_keys(path)
            keys.update(
                {
                    name: node["key"]
                    for name, node in build.get("nodes", {}).items()
                    if node.get("state") in ("built", "cached")
                }
            )
            self.fs.write_bytes(_spec_file(path), json.dumps(keys, sort_keys=True).encode())

    def spec_keys(self, spec_path: str) -> dict[str, str]:
        """The key each node of the spec file at ``spec_path`` was last built or found
        cached under, by node name."""
        found = self._read_json(_spec_file(spec_path))
        return found if isinstance(found, dict) else {}

    def spec_preimages(self, spec_path: str) -> Callable[[str], dict[str, Any] | None]:
        """The preimage a node last had in a build of the spec file at ``spec_path``; None
        for a node that spec never built (a node of the same name another spec built in a
        shared store is no earlier version of it: it is new to this spec)."""
        keys = self.spec_keys(spec_path)

        def preimage(name: str) -> dict[str, Any] | None:
            if name not in keys:
                return None
            found = self.lookup(keys[name], verify=False).record
            if found is not None:
                return found.preimage
            # Its artifact is gone (removed by hand, say): the name's last commit still
            # knows the preimage, if that was this key. The node is not new.
            ref = self._read_json(f"nodes/{safe_name(name)}.json")
            return ref.get("preimage") if ref and ref.get("key") == keys[name] else None

        return preimage

    def nearest_spec(
        self,
        spec_path: str,
        keys: Mapping[str, str],
        distance: Callable[[str, dict[str, Any]], int] | None = None,
    ) -> tuple[str, Callable[[str], dict[str, Any] | None]] | None:
        """For a spec file new to this store (a copy, say): the other spec file whose last
        build shares the most node keys with ``keys`` (at least one), and the preimage each
        node had there: what plan compares a node new to this spec with. Among files that
        share as many, the one that has the most of this spec's nodes, then whose other
        nodes differ in the fewest fields (``distance(node, its preimage there)``)."""
        latest: dict[str, dict[str, str]] = {}
        for build in self.builds():  # oldest first: each path's last build wins
            path = build.get("spec_path")
            if path and path != spec_path:
                nodes = build.get("nodes", {})
                latest[path] = {n: v.get("key") for n, v in nodes.items() if isinstance(v, dict)}
        shared = {p: sum(keys.get(n) == k for n, k in ks.items()) for p, ks in latest.items()}
        most = max(shared.values(), default=0)
        if not most:
            return None
        tied = sorted(p for p in shared if shared[p] == most)

        def preimage_in(path: str) -> Callable[[str], dict[str, Any] | None]:
            there = latest[path]

            def preimage(name: str) -> dict[str, Any] | None:
                found = self.lookup(there[name], verify=False).record if name in there else None
                return found.preimage if found is not None else None

            return preimage

        if len(tied) == 1 or distance is None:
            return tied[0], preimage_in(tied[0])

        def apart(path: str) -> tuple[int, int, int]:
            """Its differing nodes that were never stored (a failed build's: nothing to
            compare them with), then this spec's nodes it has none of (nothing to compare
            them with either), then the fields the others differ in."""
            old, there = preimage_in(path), latest[path]
            differing = [(n, old(n)) for n in there if n in keys and keys[n] != there[n]]
            unknown = sum(pre is None for _, pre in differing)
            absent = sum(n not in there for n in keys)
            fields = sum(distance(n, pre) for n, pre in differing if pre is not None)
            return unknown, absent, fields

        best = min(tied, key=apart)
        return best, preimage_in(best)

    def builds(self) -> list[dict[str, Any]]:
        out = [
            b
            for f in self.fs.listdir("builds")
            if f.endswith(".json")
            if (b := self._read_json(f"builds/{f}")) is not None
        ]
        return sorted(out, key=lambda b: b.get("finished") or b.get("started") or 0)

    def unreadable_builds(self) -> list[str]:
        """The build records that cannot be read (cut short, edited into something that is
        no JSON object): which artifacts they name is not known."""
        return [
            f"builds/{f}"
            for f in self.fs.listdir("builds")
            if f.endswith(".json") and self._read_json(f"builds/{f}") is None
        ]

    def find_build(self, prefix: str) -> dict[str, Any] | None:
        """The build recorded under a spec hash starting with ``prefix``, else the one whose
        run id does (``show`` prints a node's as "by build ..."); None unless one matches."""
        matches = [f for f in self.fs.listdir("builds") if f.startswith(prefix)]
        if len(matches) == 1:
            return self._read_json(f"builds/{matches[0]}")
        if matches:
            return None
        runs = [b for b in self.builds() if str(b.get("build", "")).startswith(prefix)]
        return runs[0] if len(runs) == 1 else None


def node_ref(rec: Record) -> NodeRef:
    return NodeRef(node=rec.name, key=rec.key, output_digest=rec.output_digest)


CHECKPOINT_MARKER = "checkpoint.json"
"""In a node's work dir: the step its resumable checkpoint reached (written last)."""


def mark_checkpoint(work_dir: Path, step: int, **info: Any) -> None:
    """Record, atomically, that a resumable checkpoint at ``step`` is in ``work_dir``."""
    marker = work_dir / CHECKPOINT_MARKER
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"step": step, **info}))
    tmp.replace(marker)


def checkpoint_marker(work_dir: Path) -> dict[str, Any] | None:
    """The marker of the resumable checkpoint in a node's work dir, if any: its ``step``
    and, where the node wrote it, the ``layout`` (``[parallelism]`` fields) it was
    written at."""
    try:
        marker = json.loads((work_dir / CHECKPOINT_MARKER).read_text())
        return marker if isinstance(marker.get("step"), int) else None
    except (OSError, ValueError, AttributeError):
        return None


def checkpoint_step(work_dir: Path) -> int | None:
    """The step of the resumable checkpoint a node marked in its work dir, if any."""
    marker = checkpoint_marker(work_dir)
    return None if marker is None else marker["step"]


def layout_change(marker: dict[str, Any], parallelism: Any) -> tuple[str, str] | None:
    """(the layout a checkpoint was written at, this one) where ``parallelism`` differs in
    a field the marker's ``layout`` names; None where it does not, or either is unknown."""
    layout = marker.get("layout")
    if parallelism is None or not isinstance(layout, dict):
        return None
    if not isinstance(parallelism, Mapping):
        parallelism = parallelism.model_dump()
    now = {k: parallelism.get(k) for k in layout}
    if now == layout:
        return None

    def shown(values: Mapping[str, Any]) -> str:
        return ", ".join(f"{k} = {json.dumps(v)}" for k, v in values.items())

    return shown(layout), f"this layout ({shown(now)})"
