"""Disk activation cache: the on-disk format and the memory-mapped reader.

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
`saekit.data.cache_writer` (`write_cache`, `CacheWriter`), re-exported here.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

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
        if len(set(names)) != len(names) or not names:
            raise ValueError("hookpoint names must be unique and non-empty")
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
            for entry in shard["files"].values():
                rel = Path(entry["path"])
                if rel.is_absolute() or ".." in rel.parts or len(entry["sha256"]) != 64:
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
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _fail(f"{path} is damaged (not valid JSON: {error}): {REBUILD}") from None
    return validate_manifest(manifest, path)


class ActivationCache:
    """A validated cache directory, read through memory mapping. Build one with `open_cache`."""

    def __init__(self, path: Path, manifest: dict[str, Any], verify: Verify):
        self.path = path
        self.manifest = manifest
        self.verify_mode = verify
        self.hookpoints: list[str] = [h["name"] for h in manifest["hookpoints"]]
        self.d: dict[str, int | None] = {h["name"]: h["d"] for h in manifest["hookpoints"]}
        self.shard_sizes: list[int] = [int(s["tokens"]) for s in manifest["shards"]]
        self._verified: set[tuple[str, int]] = set()

    # Facts recorded by the writer.
    @property
    def model(self) -> str:
        return self.manifest["model"]

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    @property
    def total_tokens(self) -> int:
        return int(self.manifest["total_tokens"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    @property
    def metadata(self) -> dict[str, Any]:
        return self.manifest.get("metadata", {})

    @property
    def shard_tokens(self) -> int | None:
        """Rows per shard (the last may hold fewer); None only for a cache that never received a row."""
        return self.manifest["shard_tokens"]

    def __repr__(self) -> str:
        return (f"ActivationCache({str(self.path)!r}, model={self.model!r}, hookpoints={self.hookpoints}, "
                f"dtype={self.dtype}, tokens={self.total_tokens}, shards={len(self.shard_sizes)})")

    def _file(self, hookpoint: str, shard: int) -> tuple[Path, dict[str, Any]]:
        entry = self.manifest["shards"][shard]["files"][hookpoint]
        return self.path / entry["path"], entry

    def check_files(self) -> None:
        """Cheap checks of every shard file: present, a regular file, of the recorded size."""
        for shard in range(len(self.shard_sizes)):
            for hookpoint in self.hookpoints:
                path, entry = self._file(hookpoint, shard)
                if not path.is_file():
                    raise _fail(f"shard file {path} is missing: {REBUILD}")
                size = path.stat().st_size
                if size != entry["bytes"]:
                    kind = "truncated" if size < entry["bytes"] else "longer than recorded"
                    raise _fail(f"shard file {path} is {kind} ({size} bytes, manifest says "
                                f"{entry['bytes']}): {REBUILD}")

    def _verify_file(self, hookpoint: str, shard: int) -> None:
        if (hookpoint, shard) in self._verified:
            return
        path, entry = self._file(hookpoint, shard)
        try:
            digest = sha256_of_file(path)
        except FileNotFoundError:
            raise _fail(f"shard file {path} is missing: {REBUILD}") from None
        if digest != entry["sha256"]:
            raise _fail(f"shard file {path} is corrupted (sha256 mismatch): {REBUILD}")
        self._verified.add((hookpoint, shard))

    def verify(self, hookpoints: Sequence[str] | None = None, progress: bool = False) -> None:
        """Check the sha256 of every shard file now (of `hookpoints`, default all)."""
        from tqdm.auto import tqdm

        self.check_files()
        names = self._names(hookpoints)
        jobs = [(h, s) for s in range(len(self.shard_sizes)) for h in names]
        for hookpoint, shard in tqdm(jobs, disable=not progress, desc="verifying", unit="file"):
            self._verify_file(hookpoint, shard)

    def shard(self, hookpoint: str, index: int) -> Tensor:
        """Shard `index` of `hookpoint` as a `[tokens, d]` tensor backed by a copy-on-write memory map.

        Checked (sha256, unless verify="none"; shape and dtype always) before it is returned. The map is
        private copy-on-write, so writing to the tensor never changes the file."""
        if hookpoint not in self.d:
            raise _fail(f"hookpoint {hookpoint!r} is not in cache {self.path} (it has "
                        f"{', '.join(self.hookpoints)}): pick one of those")
        if self.verify_mode != "none":
            self._verify_file(hookpoint, index)
        path, entry = self._file(hookpoint, index)
        disk_dtype, torch_dtype = DTYPES[self.dtype]
        try:
            if self.verify_mode == "none":
                _read_ahead(path)  # (lazy verification has just read the file into the page cache)
            array = np.load(path, mmap_mode="c", allow_pickle=False)
        except FileNotFoundError:
            raise _fail(f"shard file {path} is missing: {REBUILD}") from None
        except (ValueError, OSError) as error:
            raise _fail(f"shard file {path} is damaged ({error}): {REBUILD}") from None
        expected = (self.shard_sizes[index], self.d[hookpoint])
        if array.shape != expected or array.dtype.str != disk_dtype or array.dtype.hasobject:
            raise _fail(f"shard file {path} holds {array.dtype.str}{list(array.shape)}, manifest says "
                        f"{disk_dtype}{list(expected)}: {REBUILD}")
        if torch_dtype == torch.bfloat16:
            return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(array)

    def _names(self, hookpoints: str | Sequence[str] | None) -> list[str]:
        if hookpoints is None:
            return list(self.hookpoints)
        names = [hookpoints] if isinstance(hookpoints, str) else list(hookpoints)
        missing = [h for h in names if h not in self.d]
        if missing or not names:
            raise _fail(f"hookpoint(s) {', '.join(missing) or '(none)'} not in cache {self.path} (it has "
                        f"{', '.join(self.hookpoints)}): pick from those")
        return names

    def stream(self, hookpoint: str, batch_size: int, *, start_token: int = 0, shuffle: bool = False,
               seed: int = 0, epochs: int | None = 1, drop_last: bool = False) -> "CacheStream":
        """Float32 batches `[batch_size, d]` of one hookpoint; see `CacheStream` for the order."""
        return CacheStream(self, self._names(hookpoint), batch_size, start_token=start_token,
                           shuffle=shuffle, seed=seed, epochs=epochs, drop_last=drop_last, single=True)

    def stream_many(self, hookpoints: Sequence[str] | None, batch_size: int, *, start_token: int = 0,
                    shuffle: bool = False, seed: int = 0, epochs: int | None = 1,
                    drop_last: bool = False) -> "CacheStream":
        """Dict batches `{hookpoint: [batch_size, d]}` with the same token rows for every hookpoint, so
        dictionaries on several hookpoints train from one pass (None: every hookpoint in the cache)."""
        return CacheStream(self, self._names(hookpoints), batch_size, start_token=start_token,
                           shuffle=shuffle, seed=seed, epochs=epochs, drop_last=drop_last, single=False)


def open_cache(cache_dir: str | Path, *, verify: Verify = "lazy",
               require_complete: bool = True) -> ActivationCache:
    """Open a cache directory for reading.

    verify: "lazy" (default) checks each shard file's sha256 the first time it is read, before any of its
    rows are yielded; "full" checks every file now; "none" skips checksums (shape, dtype, presence and
    size are always checked). require_complete: refuse a cache whose writer has not finished, since
    training on part of the data is usually a mistake."""
    if verify not in ("lazy", "full", "none"):
        raise _fail(f"verify must be 'lazy', 'full' or 'none', not {verify!r}")
    path = Path(cache_dir)
    manifest = read_manifest(path)
    cache = ActivationCache(path, manifest, verify)
    if require_complete and not cache.complete:
        raise _fail(f"activation cache {path} is incomplete ({cache.total_tokens} tokens so far): re-run the "
                    "same `saekit cache` command to finish it, or allow an incomplete cache")
    cache.check_files()
    if verify == "full":
        cache.verify()
    return cache


class CacheStream:
    """An iterable of float32 batches from a cache, restartable at any token position.

    Order: the cache's token order, repeated `epochs` times (None: forever). With `shuffle`, each epoch
    visits the shards in a seeded random order and the rows of each shard in a seeded random permutation:
    a shuffle within shard-sized windows (`shard_tokens` rows), not a global one, which keeps reads
    within one memory-mapped file at a time. Either way the order is a pure function of (seed, epoch,
    shard), so it is the same on every run, and `start_token` counts positions in that order. Batches cross
    shard and epoch boundaries; only the very last one may be short (or dropped with `drop_last`).

    `resume_from(tokens)` continues `tokens` positions after `start_token`: the trainer uses it to resume
    a run exactly without reading the skipped activations.
    """

    def __init__(self, cache: ActivationCache, hookpoints: list[str], batch_size: int, *, start_token: int,
                 shuffle: bool, seed: int, epochs: int | None, drop_last: bool, single: bool):
        if batch_size < 1:
            raise _fail(f"batch_size must be at least 1, not {batch_size}")
        if epochs is not None and epochs < 1:
            raise _fail(f"epochs must be at least 1 (or None for endless), not {epochs}")
        if seed < 0:
            raise _fail(f"seed must be a non-negative integer, not {seed}")
        self.cache, self.hookpoints, self.batch_size = cache, hookpoints, batch_size
        self.shuffle, self.seed, self.epochs = shuffle, seed, epochs
        self.drop_last, self.single = drop_last, single
        self.start_token = self._check_position(start_token)

    @property
    def end_token(self) -> float:
        """One past the last position (inf when endless)."""
        return math.inf if self.epochs is None else self.cache.total_tokens * self.epochs

    def __len__(self) -> int:
        """Number of batches this stream yields (endless streams have no length)."""
        if self.epochs is None:
            raise TypeError("an endless cache stream (epochs=None) has no length")
        tokens = int(self.end_token) - self.start_token
        return tokens // self.batch_size if self.drop_last else -(-tokens // self.batch_size)

    def _check_position(self, position: int) -> int:
        if position < 0 or position > self.end_token:
            raise _fail(f"start position {position} is outside the cache stream (0..{self.end_token} "
                        f"tokens of {self.cache.path}): resume with a matching cache and epochs")
        return int(position)

    def __iter__(self) -> Iterator[Any]:
        return self._iterate(self.start_token)

    def resume_from(self, tokens: int) -> Iterator[Any]:
        """Iterate starting `tokens` positions after `start_token`."""
        return self._iterate(self._check_position(self.start_token + tokens))

    def shard_order(self, epoch: int) -> list[int]:
        n = len(self.cache.shard_sizes)
        if not self.shuffle:
            return list(range(n))
        return np.random.default_rng([self.seed, epoch, 0, 0]).permutation(n).tolist()

    def row_order(self, epoch: int, shard: int) -> Tensor | None:
        """The permutation of a shard's rows in `epoch` (None: stored order)."""
        if not self.shuffle:
            return None
        n = self.cache.shard_sizes[shard]
        return torch.from_numpy(np.random.default_rng([self.seed, epoch, 1, shard]).permutation(n))

    def _iterate(self, position: int) -> Iterator[Any]:
        total = self.cache.total_tokens
        batch = self.batch_size
        pending: list[dict[str, Tensor]] = []
        pending_rows = 0
        while total and position < self.end_token:
            epoch, offset = divmod(position, total)
            order = self.shard_order(epoch)
            starts = np.cumsum([0] + [self.cache.shard_sizes[s] for s in order]).tolist()
            first = bisect.bisect_right(starts, offset) - 1
            for k in range(first, len(order)):
                shard = order[k]
                lo, n = offset - starts[k] if k == first else 0, self.cache.shard_sizes[shard]
                data = {h: self.cache.shard(h, shard) for h in self.hookpoints}
                rows = self.row_order(epoch, shard)
                while lo < n:
                    hi = min(n, lo + batch - pending_rows)
                    if rows is None:
                        piece = {h: t[lo:hi] for h, t in data.items()}
                    else:
                        piece = {h: t.index_select(0, rows[lo:hi]) for h, t in data.items()}
                    pending.append(piece)
                    pending_rows += hi - lo
                    position += hi - lo
                    lo = hi
                    if pending_rows == batch:
                        yield self._emit(pending)
                        pending, pending_rows = [], 0
                del data
        if pending and not self.drop_last:
            yield self._emit(pending)

    def _emit(self, pieces: list[dict[str, Tensor]]) -> Any:
        if len(pieces) == 1:  # zero-copy for float32: a view of the memory map (copy-on-write)
            out = {h: t.float() for h, t in pieces[0].items()}
        else:
            out = {h: torch.cat([p[h] for p in pieces]).float() for h in self.hookpoints}
        return out[self.hookpoints[0]] if self.single else out


def __getattr__(name: str) -> Any:
    """Re-export the writer lazily (it imports this module, so an eager import would be circular)."""
    if name in ("CacheWriter", "write_cache", "cached_token_count"):
        from saekit.data import cache_writer

        return getattr(cache_writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
