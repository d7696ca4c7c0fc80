"""The few file operations the store needs, on a local directory or any fsspec URL.

Local stores use plain ``os`` calls (fast, and a directory rename is atomic). Remote
stores (``s3://``, ``gs://``, ``memory://``, ...) go through fsspec: an artifact's files
are uploaded first and its ``record.json`` last, so a record's presence means committed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from llmbuild.errors import UserError


def umask() -> int:
    """The process's umask. What the store creates is as readable as any file the user
    makes (a team store stays shared), though temp files and dirs start private. Read
    from /proc where it can be (setting it to read it races other threads' files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def readable(root: Path) -> None:
    """Every file and folder under ``root`` as readable as the user's umask makes new
    ones: a library that writes its files private (safetensors writes 0600) leaves no
    artifact that the store's other users, or an export's, cannot read."""
    mask = umask()
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                mode = os.stat(path).st_mode
                os.chmod(path, (0o666 | (mode & 0o111)) & ~mask)


class LocalFS:
    """A store root on the local filesystem."""

    local = True

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)
        # A path that can never be a store (a file, or a file on the way to it) is said
        # now, not when the first write fails; a missing store is merely empty.
        for path in (self.root, *self.root.parents):
            if not path.exists():
                continue
            if path.is_dir():
                break
            if path == self.root:
                raise UserError(f"the store {self.root} is a file, not a directory")
            raise UserError(f"{self.root} cannot be a store: {path} is a file, not a directory")

    def path(self, rel: str) -> Path:
        return self.root / rel

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def read_bytes(self, rel: str) -> bytes:
        return self.path(rel).read_bytes()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write atomically: a reader sees the old content or the new, never a part."""
        target = self.path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            os.fchmod(fd, 0o666 & ~umask())
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:  # a full disk, say: no part of a file is left behind
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Create a file only if it does not exist; True if this call created it."""
        target = self.path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
        try:
            tmp.write_bytes(data)
            os.link(tmp, target)  # atomic, fails if the target exists
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def listdir(self, rel: str) -> list[str]:
        p = self.path(rel)
        return sorted(os.listdir(p)) if p.is_dir() else []

    def remove(self, rel: str) -> None:
        p = self.path(rel)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)

    def rename(self, src: str, dst: str) -> None:
        self.path(dst).parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.path(src), self.path(dst))

    def mtime(self, rel: str) -> float:
        return self.path(rel).stat().st_mtime

    def put_dir(self, local_dir: Path, rel: str) -> None:
        """Move a finished local directory into the store (one rename on one filesystem)."""
        target = self.path(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(local_dir, target)
        except OSError:
            # Another filesystem: copy next to the target, then rename into place.
            staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
            shutil.copytree(local_dir, staging)
            os.rename(staging, target)
            shutil.rmtree(local_dir, ignore_errors=True)

    def scratch_dir(self, prefix: str) -> Path:
        """A fresh directory on the store's filesystem, so committing it is a rename."""
        base = self.root / "tmp"
        base.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(dir=base, prefix=prefix))
        path.chmod(0o777 & ~umask())
        return path


class FsspecFS:
    """A store root on any fsspec filesystem."""

    local = False

    def __init__(self, url: str, **options: Any) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.fs, self.base = fsspec.core.url_to_fs(self.url, **options)
        self.base = self.base.rstrip("/")

    def path(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.path(rel)))

    def read_bytes(self, rel: str) -> bytes:
        return bytes(self.fs.cat_file(self.path(rel)))

    def write_bytes(self, rel: str, data: bytes) -> None:
        parent = self.path(rel).rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        self.fs.pipe_file(self.path(rel), data)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        # Object stores have no atomic create-if-absent here: write, then read back and
        # keep the lease only if our bytes are the ones that stuck.
        if self.exists(rel):
            return False
        self.write_bytes(rel, data)
        return self.read_bytes(rel) == data

    def listdir(self, rel: str) -> list[str]:
        if not self.fs.exists(self.path(rel)):
            return []
        names = self.fs.ls(self.path(rel), detail=False)
        return sorted(n.rstrip("/").rsplit("/", 1)[-1] for n in names)

    def remove(self, rel: str) -> None:
        if self.fs.exists(self.path(rel)):
            self.fs.rm(self.path(rel), recursive=True)

    def rename(self, src: str, dst: str) -> None:
        self.fs.mv(self.path(src), self.path(dst), recursive=True)

    def mtime(self, rel: str) -> float:
        info = self.fs.info(self.path(rel))
        value = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
        return value.timestamp() if hasattr(value, "timestamp") else float(value)

    def put_dir(self, local_dir: Path, rel: str) -> None:
        for root, _, files in os.walk(local_dir):
            for name in sorted(files):
                src = Path(root) / name
                dst = f"{rel}/{src.relative_to(local_dir).as_posix()}"
                if dst.endswith("/record.json") and Path(root) == local_dir:
                    continue  # the record goes last: it marks the artifact committed
                self.write_bytes(dst, src.read_bytes())
        record = local_dir / "record.json"
        if record.exists():
            self.write_bytes(f"{rel}/record.json", record.read_bytes())
        shutil.rmtree(local_dir, ignore_errors=True)

    def get_dir(self, rel: str, local_dir: Path) -> None:
        prefix = self.path(rel)
        for remote in self.fs.find(prefix):
            dst = local_dir / remote[len(prefix) + 1 :]
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(bytes(self.fs.cat_file(remote)))

    def scratch_dir(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=prefix))


def open_fs(location: str | os.PathLike[str]) -> LocalFS | FsspecFS:
    """``file://`` URLs and plain paths are local; any other URL goes through fsspec."""
    text = str(location)
    if text.startswith("file://"):
        return LocalFS(text[len("file://") :])
    if "://" in text:
        return FsspecFS(text)
    return LocalFS(text)
