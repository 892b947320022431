"""Atomic file and directory writes, and checksums.

A run killed at any instant must leave either the old file or the new one, never half of one: write to a
temporary sibling, fsync, then `os.replace` (atomic on POSIX within one filesystem).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path, chunk_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, parts: Sequence[bytes | memoryview]) -> None:
    """Write `parts` to `path` via a temporary sibling, fsync and rename (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600 files; written data is shared: honour the umask
            os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as handle:
            for part in parts:
                handle.write(part)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, [data])


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `path` as a whole.

    An existing `path` is moved aside first and deleted only after the new one is in place, so a kill
    between the two renames leaves the old copy under `.<name>.old-*`, never a mix of both.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb") as handle:
                    os.fsync(handle.fileno())
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def member_path(folder: str | Path, name: Any, what: str = "file") -> Path:
    """`folder / name` for a name read from a file, refusing anything that could leave the folder: the
    name must be one plain path component (no separator, no `..`, not absolute, not hidden)."""
    from saekit.errors import SaekitError

    if not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".") or \
            "/" in name or "\\" in name or "\0" in name or os.path.isabs(name):
        raise SaekitError(f"{folder}: refusing {what} name {name!r} (it must be a plain file name inside "
                          "the folder); the file that names it is corrupted or hostile")
    return Path(folder) / name
