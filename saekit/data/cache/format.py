"""The activation cache's on-disk format: names, dtypes, the manifest and its checks.

Computing activations (a model forward over text) is the slow part of training a dictionary, and a sweep
or a second run wants the very same activations again. The cache stores them once, as plain `.npy` shards,
and streams them back through memory mapping, so reading costs little more than the page cache.

Layout of a cache directory::

    manifest.json                      format, version, model, dtype, hookpoints (name, d, folder),
                                       shard_tokens, total_tokens, complete, metadata, and per shard its
                                       token count and, per hookpoint, file path, size and sha256;
                                       plus `manifest_sha256` over all of that
    <hookpoint folder>/shard-00000.npy one [tokens, d] array per shard and hookpoint (`np.load`-able;
    <hookpoint folder>/shard-00001.npy bfloat16 is stored as uint16 bit patterns, '<u2')
    .lock                              held by a writer while it writes

Shard k of every hookpoint holds the same token rows, so several hookpoints can be read in lockstep.
Every shard holds `shard_tokens` rows except possibly the last. Files not listed in the manifest (a shard
written just before a kill) are ignored and overwritten on resume.

Corruption is never half-read: `open_cache` checks the manifest's own checksum, its structure, and the
presence and size of every shard file; the sha256 of each shard file is checked either on open
(`verify="full"`) or, by default, the first time a shard is read, before any of its rows are yielded
(`verify="lazy"`), which spreads the cost (~1.3 s per GB at sha256 speed) over training. The writer is
`saekit.data.cache.writer` (`write_cache`, `CacheWriter`), re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import torch

from saekit.errors import SaekitError

FORMAT_NAME = "saekit-activation-cache"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".lock"
# dtype name -> (numpy dtype string on disk, torch dtype in memory). bfloat16 has no numpy dtype, so its bit
# patterns are stored as little-endian uint16 and reinterpreted on read.
DTYPES: dict[str, tuple[str, torch.dtype]] = {
    "float32": ("<f4", torch.float32),
    "float16": ("<f2", torch.float16),
    "bfloat16": ("<u2", torch.bfloat16),
}
REBUILD = "re-run `saekit cache` to rebuild the cache"
Verify = Literal["lazy", "full", "none"]


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest without its own checksum field, in a canonical JSON form.

    Stored in the manifest so that an edited manifest (a changed token count or shard checksum that would
    make the reader trust bad data) is detected rather than believed."""
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sha256_of_file(path: Path, chunk_size: int = 1 << 23) -> str:
    """Stream a file through sha256 with one reusable buffer (hashlib releases the GIL on large chunks)."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while n := handle.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def _read_ahead(path: Path) -> None:
    """Ask the kernel to start reading a whole shard into the page cache, so that shuffled reads of a
    memory map do not fault its pages in one random 4 KiB read at a time."""
    if hasattr(os, "posix_fadvise"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


def _fail(message: str) -> SaekitError:
    return SaekitError(message)


def validate_manifest(manifest: Any, where: Path) -> dict[str, Any]:
    """Check a parsed manifest's identity, version, own checksum and internal consistency.

    Raises SaekitError with a one-line message naming `where`; returns the manifest on success."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise _fail(f"{where} is not a saekit activation cache manifest: point at a directory written by "
                    "`saekit cache`")
    version = manifest.get("version")
    if not isinstance(version, int) or version < 1:
        raise _fail(f"{where} has an invalid format version {version!r}: {REBUILD}")
    if version > FORMAT_VERSION:
        raise _fail(f"{where} was written by a newer saekit (cache format {version}, this one reads up to "
                    f"{FORMAT_VERSION}): upgrade saekit")
    if manifest.get("manifest_sha256") != manifest_checksum(manifest):
        raise _fail(f"{where} was modified after it was written (its checksum does not match): restore it "
                    f"or {REBUILD}")
    try:
        if not isinstance(manifest["model"], str) or not isinstance(manifest["complete"], bool) \
                or not isinstance(manifest["metadata"], dict):
            raise ValueError("model, complete or metadata has the wrong type")
        dtype = manifest["dtype"]
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}")
        hookpoints = manifest["hookpoints"]
        names = [h["name"] for h in hookpoints]
        if len(set(names)) != len(names) or not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError("hookpoint names must be unique and non-empty")
        for h in hookpoints:  # folders come from the file: they must stay inside the cache
            folder = h["dir"]
            if not isinstance(folder, str) or folder in ("", ".", "..") or "/" in folder or "\\" in folder \
                    or folder.startswith("."):
                raise ValueError(f"hookpoint folder {folder!r} is not a plain folder name")
        shard_tokens = manifest["shard_tokens"]
        shards = manifest["shards"]
        total = sum(int(s["tokens"]) for s in shards)
        if total != manifest["total_tokens"]:
            raise ValueError(f"shards hold {total} tokens but total_tokens is {manifest['total_tokens']}")
        for i, shard in enumerate(shards):
            if shard["tokens"] <= 0 or (i < len(shards) - 1 and shard["tokens"] != shard_tokens):
                raise ValueError(f"shard {i} has {shard['tokens']} tokens")
            if set(shard["files"]) != set(names):
                raise ValueError(f"shard {i} does not have one file per hookpoint")
            folders = {h["name"]: h["dir"] for h in hookpoints}
            for hook, entry in shard["files"].items():
                rel = Path(entry["path"])
                if rel.is_absolute() or ".." in rel.parts or len(rel.parts) != 2 or rel.parts[0] != folders[hook] \
                        or len(entry["sha256"]) != 64:
                    raise ValueError(f"shard {i} has a bad file entry {entry!r}")
                int(entry["bytes"])
        if shards and any(h["d"] is None for h in hookpoints):
            raise ValueError("a hookpoint with shards has no width d")
    except (KeyError, TypeError, ValueError) as error:
        raise _fail(f"{where} is inconsistent ({error}): {REBUILD}") from None
    return manifest


def read_manifest(cache_dir: str | Path) -> dict[str, Any]:
    """Load and validate `<cache_dir>/manifest.json`."""
    cache_dir = Path(cache_dir)
    path = cache_dir / MANIFEST_NAME
    if not path.is_file():
        if not cache_dir.exists():
            raise _fail(f"activation cache {cache_dir} does not exist: build it with `saekit cache`")
        raise _fail(f"{cache_dir} has no {MANIFEST_NAME}, so it is not a (finished) activation cache: build "
                    "it with `saekit cache`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _fail(f"{path} is damaged (not valid JSON: {error}): {REBUILD}") from None
    return validate_manifest(manifest, path)


