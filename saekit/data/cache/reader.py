"""Reading an activation cache: memory-mapped, checksum-verified shards streamed to the trainer."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saekit.data.batching import RankRows
from saekit.data.cache.format import (
    DTYPES,
    REBUILD,
    Verify,
    _fail,
    _read_ahead,
    read_manifest,
    sha256_of_file,
)


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
            self._open_shard(hookpoint, shard)  # the header's shape and dtype, against the manifest

    def shard(self, hookpoint: str, index: int) -> Tensor:
        """Shard `index` of `hookpoint` as a `[tokens, d]` tensor backed by a copy-on-write memory map.

        Checked (sha256, unless verify="none"; shape and dtype always) before it is returned. The map is
        private copy-on-write, so writing to the tensor never changes the file."""
        if hookpoint not in self.d:
            raise _fail(f"hookpoint {hookpoint!r} is not in cache {self.path} (it has "
                        f"{', '.join(self.hookpoints)}): pick one of those")
        if self.verify_mode != "none":
            self._verify_file(hookpoint, index)
        else:
            _read_ahead(self._file(hookpoint, index)[0])  # (lazy verification reads it into the page cache)
        array = self._open_shard(hookpoint, index)
        if DTYPES[self.dtype][1] == torch.bfloat16:
            return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(array)

    def _open_shard(self, hookpoint: str, index: int) -> np.ndarray:
        """The shard's memory map (copy-on-write), its shape and dtype checked against the manifest."""
        path, _entry = self._file(hookpoint, index)
        disk_dtype = DTYPES[self.dtype][0]
        try:
            array = np.load(path, mmap_mode="c", allow_pickle=False)
        except FileNotFoundError:
            raise _fail(f"shard file {path} is missing: {REBUILD}") from None
        except (ValueError, OSError) as error:
            raise _fail(f"shard file {path} is damaged ({error}): {REBUILD}") from None
        expected = (self.shard_sizes[index], self.d[hookpoint])
        if array.shape != expected or array.dtype.str != disk_dtype or array.dtype.hasobject:
            raise _fail(f"shard file {path} holds {array.dtype.str}{list(array.shape)}, manifest says "
                        f"{disk_dtype}{list(expected)}: {REBUILD}")
        return array

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
               seed: int = 0, epochs: int | None = 1, drop_last: bool = False) -> CacheStream:
        """Float32 batches `[batch_size, d]` of one hookpoint; see `CacheStream` for the order."""
        return CacheStream(self, self._names(hookpoint), batch_size, start_token=start_token,
                           shuffle=shuffle, seed=seed, epochs=epochs, drop_last=drop_last, single=True)

    def stream_many(self, hookpoints: Sequence[str] | None, batch_size: int, *, start_token: int = 0,
                    shuffle: bool = False, seed: int = 0, epochs: int | None = 1,
                    drop_last: bool = False) -> CacheStream:
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
    if require_complete and cache.total_tokens == 0:
        raise _fail(f"activation cache {path} holds no tokens (the text gave none): build it again from text "
                    "that tokenises to something")
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

    def fingerprint(self) -> str:
        """What identifies this data and its order: the manifest's checksum, hookpoints, shuffle, seed."""
        return (f"cache {self.cache.manifest['manifest_sha256'][:16]} {self.hookpoints} shuffle={self.shuffle} "
                f"seed={self.seed}")

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

    def for_rank(self, rank: int, world: int, local_batch: int) -> RankRows:
        """Under torchrun: this rank's slice of every global batch (see saekit.data.batching)."""
        return RankRows(self, rank, world, local_batch)

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


def summary(path: str | Path) -> dict[str, Any]:
    """A cache's manifest without the per-shard lists (cheap: no checksums)."""
    cache = open_cache(path, verify="none", require_complete=False)
    m = cache.manifest
    size = sum(f["bytes"] for s in m["shards"] for f in s["files"].values())
    return {
        "path": str(path), "model": cache.model, "complete": cache.complete, "dtype": cache.dtype,
        "hookpoints": {h["name"]: {"d": h["d"], "dir": h["dir"]} for h in m["hookpoints"]},
        "total_tokens": cache.total_tokens, "shards": len(m["shards"]),
        "shard_tokens": cache.shard_tokens, "bytes": size, "format_version": m["version"],
        "metadata": cache.metadata,
    }
