"""Artifact store shared by the API and the workers: a local directory behind a small interface.

Keys are relative POSIX paths of lowercase letters, digits, `_`, `-`, `.` and `/`:

    uploads/<sha256>.<ext>                  photos and latents as uploaded (content-addressed)
    jobs/<job id>/<artifact>                what a job wrote (frames/frame_0000.png, edit.gif, ...)
    cache/inversions/<key>.npz              photo inversions by content hash, pack and effort

Writes are atomic (a temporary name, then a rename), so a reader never sees half a file and a job
retried after its worker died simply writes the same files again. Everything expires by age.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

_KEY = re.compile(r"^[a-z0-9_][a-z0-9_.\-]*(/[a-z0-9_][a-z0-9_.\-]*)*$")
TOP_LEVELS = ("uploads", "jobs", "cache")


class StoreKeyError(ValueError):
    """A key that is not a plain relative path of the allowed characters."""


def check_key(key: str) -> str:
    """Return `key` if it is a valid store key (no `..`, no absolute path), else raise `StoreKeyError`."""
    if len(key) > 512 or not _KEY.fullmatch(key) or ".." in key.split("/"):
        raise StoreKeyError(f"invalid store key {key!r}")
    return key


class ArtifactStore(Protocol):
    """What the API and the workers need of a store; an object-store backend can implement it."""

    def put(self, key: str, data: bytes) -> None:
        """Write `data` under `key` atomically, replacing what was there."""

    def open(self, key: str) -> BinaryIO:
        """Open a stored object for reading. Raises FileNotFoundError."""

    def exists(self, key: str) -> bool:
        """Whether `key` is stored."""

    def size(self, key: str) -> int:
        """Size of a stored object in bytes. Raises FileNotFoundError."""

    def touch(self, key: str) -> None:
        """Mark `key` as used now, so it does not expire before newer objects."""

    def list(self, prefix: str) -> list[str]:
        """Keys under the folder `prefix`, sorted."""

    def delete_prefix(self, prefix: str) -> None:
        """Delete everything under the folder `prefix`."""

    def expire(self, max_age_s: float, *, now: float | None = None) -> int:
        """Delete objects (job folders as a whole) unused for longer than `max_age_s`; return how many."""


class LocalStore:
    """`ArtifactStore` on a local (or shared, mounted) directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """The file of `key` (it may not exist)."""
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix="-" + target.name)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def open(self, key: str) -> BinaryIO:
        return self.path(key).open("rb")

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def touch(self, key: str) -> None:
        path = self.path(key)
        if path.exists():
            os.utime(path)

    def list(self, prefix: str) -> list[str]:
        folder = self.path(prefix)
        if not folder.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def _entries(self) -> Iterator[Path]:
        """Expiry units: job folders, and the files of the other top-level folders."""
        for top in TOP_LEVELS:
            folder = self.root / top
            if not folder.is_dir():
                continue
            if top == "jobs":
                yield from folder.iterdir()
            else:
                yield from (p for p in folder.rglob("*") if p.is_file())

    def expire(self, max_age_s: float, *, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - max_age_s
        removed = 0
        for entry in list(self._entries()):
            try:
                if entry.stat().st_mtime >= cutoff:
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed += 1
            except FileNotFoundError:
                continue
        return removed


def open_store(root: Path) -> LocalStore:
    """The store configured by `Settings.store_path`."""
    return LocalStore(root)
