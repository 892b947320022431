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


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def atomic_write(path: str | Path, parts: Sequence[bytes | memoryview]) -> None:
    """Write `parts` to `path` via a temporary sibling, fsync and rename (never a half-written file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600 files; written data is shared: honour the umask
            os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            for part in parts:
                handle.write(part)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(error, OSError):
            raise write_error(path, error) from None
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, [data])


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


OWNER_MARK = ".saekit-output"  # in every directory saekit writes: what it may replace later


def check_replaceable(path: str | Path, overwrite: bool = False) -> None:
    """Refuse to replace what saekit did not write: a file, or a non-empty directory without saekit's
    marker (unless `overwrite`). Call it before expensive work, so a bad output path fails at once."""
    from saekit.errors import SaekitError

    path = Path(path)
    if path.name in ("", ".", ".."):
        raise SaekitError(f"{path} cannot be an output directory (it would replace its parent or the "
                          "current directory): name a new folder")
    if overwrite or (not path.exists() and not path.is_symlink()):
        return
    if path.is_symlink() or not path.is_dir():
        raise SaekitError(f"{path} exists and is not a directory saekit wrote: choose another output path "
                          "(or pass --overwrite to replace it)")
    if any(path.iterdir()) and not (path / OWNER_MARK).is_file():
        raise SaekitError(f"{path} exists and was not written by saekit: choose another output path, empty "
                          "it, or pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `path` as a whole.

    Only what saekit wrote is ever replaced (`check_replaceable`): the new directory carries a marker
    file. An existing `path` is moved aside first and deleted only after the new one is in place, so a
    kill between the two renames leaves the old copy under `.<name>.old-*`, never a mix of both. Such
    leftovers and temporaries of killed writes of the same path are removed by the next write.
    Directories get the permissions the umask gives (mkdtemp alone would make them private).
    """
    path = Path(path)
    check_replaceable(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    umask = current_umask()
    try:
        yield tmp
        (tmp / OWNER_MARK).write_text("written by saekit; saekit may replace this directory\n")
        for child in [tmp, *tmp.rglob("*")]:  # writers (mkdtemp, safetensors) make private files
            if child.is_symlink():
                continue
            os.chmod(child, (0o777 if child.is_dir() else 0o666) & ~umask)
            if child.is_file():
                with open(child, "rb") as handle:
                    os.fsync(handle.fileno())
        old = None
        if path.exists() or path.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, OSError):
            raise write_error(path, error) from None
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


def _remove_leftovers(path: Path) -> None:
    """Temporaries (`.<name>.*.tmp`) and set-aside copies (`.<name>.old-*`) of earlier writes of `path`
    that were killed before they finished. Only saekit's own names are matched."""
    for leftover in list(path.parent.glob(f".{glob_escape(path.name)}.*")):
        name = leftover.name[len(path.name) + 2:]
        if (name.endswith(".tmp") or name.startswith("old-")) and not leftover.is_symlink():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    leftover.unlink()


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def write_error(path: Path, error: OSError) -> Exception:
    """A failed write as a one-line error naming the file and the disk (ENOSPC: the disk is full). The
    previous contents of `path` are intact (writes are atomic)."""
    import errno

    from saekit.errors import SaekitError

    where = _mount_point(path.parent)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return SaekitError(f"no space left on the disk at {where} while writing {path}: free space (or write "
                           "elsewhere) and run again; the previous contents of that path are intact")
    return SaekitError(f"cannot write {path} (disk at {where}): {error.strerror or error}")


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not path.is_mount() and path != path.parent:
        path = path.parent
    return path


def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 text file's contents, or a one-line error naming the file (missing, unreadable, not
    UTF-8)."""
    from saekit.errors import SaekitError

    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SaekitError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise SaekitError(f"{what} {path} is a directory; pass a file") from None
    except UnicodeDecodeError as error:
        raise SaekitError(f"{what} {path} is not UTF-8 text (byte {error.start}): save it as UTF-8") from None
    except OSError as error:
        raise SaekitError(f"cannot read {what} {path}: {error.strerror or error}") from None


def read_json_file(path: str | Path, what: str = "JSON file") -> Any:
    """Parsed JSON from a UTF-8 file, or a one-line error naming the file and the problem."""
    from saekit.errors import SaekitError

    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise SaekitError(f"{what} {path} is not valid JSON ({error.msg} at line {error.lineno})") from None


def output_directory(path: str | Path, overwrite: bool = False) -> Path:
    """A directory saekit may write several files into (a demo's or a diff's results): absent, empty or
    saekit's own (`check_replaceable`); created and marked as saekit's."""
    path = Path(path)
    check_replaceable(path, overwrite)
    path.mkdir(parents=True, exist_ok=True)
    (path / OWNER_MARK).write_text("written by saekit; saekit may replace this directory\n")
    return path
