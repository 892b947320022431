"""Disk activation cache: the resumable writer (the format and reader are in `saekit.data.cache`).

Crash safety: rows are buffered in memory until a shard is full; then each hookpoint's shard file is
written to a temporary sibling, fsynced and renamed into place, and only after all of them is the manifest
rewritten (again atomically) to list the new shard. A run killed at any instant therefore leaves a
manifest that describes only complete, checksummed shards, plus at most some unlisted files that the next
run overwrites. An interrupted run loses at most the rows of the shard it was filling.

Resume contract: opening a writer on a partial cache keeps its shards and reports `tokens_written`, the
number of tokens already stored. The caller's source must then start at that token of the same
deterministic token stream (same model, text, order, context size): the writer cannot tell where the
rows it is given came from. `write_cache` does this for you: pass it a function `skip_tokens -> batches`
(cheap seeking), or a plain iterable that it advances by reading and discarding `tokens_written` rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saekit.data.cache.format import (
    DTYPES,
    FORMAT_NAME,
    FORMAT_VERSION,
    LOCK_NAME,
    MANIFEST_NAME,
    manifest_checksum,
    read_manifest,
)
from saekit.errors import SaekitError
from saekit.io import atomic_write, fsync_dir

Batch = Mapping[str, Tensor] | Tensor
DEFAULT_SHARD_BYTES = 256 << 20  # all hookpoints of one shard together: bounds the writer's memory


def _npy_header(disk_dtype: str, shape: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": disk_dtype, "fortran_order": False,
                                                   "shape": shape})
    return buffer.getvalue()


def _folder_names(hookpoints: Sequence[str]) -> list[str]:
    """Readable, filesystem-safe, distinct folder names for hookpoints ("model.layers.3" stays as is)."""
    names: list[str] = []
    for hookpoint in hookpoints:
        base = re.sub(r"[^A-Za-z0-9._-]", "_", hookpoint).strip(".") or "hookpoint"
        name, n = base, 1
        # distinct on case-insensitive filesystems too, and never the manifest's own name
        while name.lower() in [x.lower() for x in names] + [MANIFEST_NAME]:
            n += 1
            name = f"{base}-{n}"
        names.append(name)
    return names


def cached_token_count(out_dir: str | Path) -> int:
    """Tokens already stored in a (partial) cache at `out_dir`: what a resumed source must skip. 0 if none."""
    path = Path(out_dir)
    if not (path / MANIFEST_NAME).is_file():
        return 0
    return int(read_manifest(path)["total_tokens"])


class CacheWriter:
    """Append activation batches to a cache directory, one complete shard at a time.

    Use as a context manager (the lock is released even on error)::

        with CacheWriter(out, ["layers.3"], model="gpt2") as writer:
            for batch in source(skip_tokens=writer.tokens_written):
                writer.add(batch)
            writer.finish()

    Leaving the block without `finish()` leaves a partial cache that a later writer resumes.
    """

    def __init__(self, out_dir: str | Path, hookpoints: Sequence[str], *, model: str,
                 dtype: str = "float32", shard_tokens: int | None = None,
                 metadata: Mapping[str, Any] | None = None, overwrite: bool = False):
        if isinstance(hookpoints, str):
            hookpoints = [hookpoints]
        hookpoints = list(hookpoints)
        if not hookpoints or len(set(hookpoints)) != len(hookpoints):
            raise SaekitError(f"hookpoints must be a non-empty list of distinct names, not {hookpoints}")
        if dtype not in DTYPES:
            raise SaekitError(f"cache dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        if shard_tokens is not None and shard_tokens < 1:
            raise SaekitError(f"shard_tokens must be at least 1, not {shard_tokens}")
        try:
            metadata = json.loads(json.dumps(dict(metadata or {})))
        except (TypeError, ValueError) as error:
            raise SaekitError(f"cache metadata must be JSON-serialisable: {error}") from None
        self.path = Path(out_dir)
        self.hookpoints = hookpoints
        self.disk_dtype, self.torch_dtype = DTYPES[dtype]
        self._lock_handle: Any = None
        self._buffers: dict[str, Tensor] = {}
        self._filled = 0

        if self.path.exists() and not self.path.is_dir():
            raise SaekitError(f"cache path {self.path} exists and is not a directory: choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            if overwrite:
                self._clear()
            if (self.path / MANIFEST_NAME).is_file():
                self.manifest = read_manifest(self.path)
                self._check_resume(model, dtype, shard_tokens, dict(metadata))
                self._remove_temporaries()
            else:
                if any(p.name != LOCK_NAME for p in self.path.iterdir()):
                    raise SaekitError(f"{self.path} is not empty and holds no activation cache: choose a "
                                      "new --out directory")
                self.manifest = {
                    "format": FORMAT_NAME, "version": FORMAT_VERSION, "model": model, "dtype": dtype,
                    "hookpoints": [{"name": h, "d": None, "dir": f}
                                   for h, f in zip(hookpoints, _folder_names(hookpoints))],
                    "shard_tokens": shard_tokens, "total_tokens": 0, "complete": False,
                    "metadata": metadata, "shards": [],
                }
                self._write_manifest()
        except BaseException:
            self.close()
            raise

    # ---- setup -----------------------------------------------------------------------------------------
    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no advisory lock, still crash-safe
            return
        handle = open(self.path / LOCK_NAME, "a+")  # noqa: SIM115 (held until release())
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise SaekitError(f"another process is writing the activation cache {self.path}: wait for it "
                              "to finish or choose another --out") from None
        self._lock_handle = handle

    def _clear(self) -> None:
        """Delete an existing cache (never a directory that is not one)."""
        entries = [p for p in self.path.iterdir() if p.name != LOCK_NAME]
        if entries and not (self.path / MANIFEST_NAME).is_file():
            raise SaekitError(f"refusing to overwrite {self.path}: it is not an activation cache (no "
                              f"{MANIFEST_NAME}); choose a new --out directory")
        (self.path / MANIFEST_NAME).unlink(missing_ok=True)  # first, so a kill leaves no stale manifest
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)

    def _check_resume(self, model: str, dtype: str, shard_tokens: int | None,
                      metadata: dict[str, Any]) -> None:
        m = self.manifest
        names = [h["name"] for h in m["hookpoints"]]
        problems = []
        if m["model"] != model:
            problems.append(f"model {m['model']!r} (asked {model!r})")
        if names != self.hookpoints:
            problems.append(f"hookpoints {names} (asked {self.hookpoints})")
        if m["dtype"] != dtype:
            problems.append(f"dtype {m['dtype']} (asked {dtype})")
        if shard_tokens is not None and m["shard_tokens"] not in (None, shard_tokens):
            problems.append(f"shard_tokens {m['shard_tokens']} (asked {shard_tokens})")
        if metadata and metadata != m["metadata"]:
            problems.append(f"metadata {m['metadata']} (asked {metadata})")
        if problems:
            raise SaekitError(f"the cache in {self.path} was started with {'; '.join(problems)}: resume with "
                              "the same settings, or use a new --out directory (or --overwrite)")
        for shard in m["shards"]:
            for entry in shard["files"].values():
                file = self.path / entry["path"]
                if not file.is_file() or file.stat().st_size != entry["bytes"]:
                    raise SaekitError(f"shard file {file} of the partial cache is missing or damaged: "
                                      "start again with --overwrite")
        if m["shard_tokens"] is None:
            m["shard_tokens"] = shard_tokens

    def _remove_temporaries(self) -> None:
        """Temporary files left by a killed writer (we hold the lock, so no other writer owns them)."""
        for folder in [self.path] + [self.path / h["dir"] for h in self.manifest["hookpoints"]]:
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)

    # ---- state -----------------------------------------------------------------------------------------
    @property
    def tokens_written(self) -> int:
        """Tokens durably stored (complete shards). On a resumed writer: what the source must skip."""
        return int(self.manifest["total_tokens"])

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    def _write_manifest(self) -> None:
        self.manifest["manifest_sha256"] = manifest_checksum(self.manifest)
        text = json.dumps(self.manifest, indent=2) + "\n"
        atomic_write(self.path / MANIFEST_NAME, [text.encode()])
        fsync_dir(self.path)

    # ---- writing ---------------------------------------------------------------------------------------
    def _start(self, widths: dict[str, int]) -> None:
        """First batch of this writer: record widths (checking a resumed cache's) and size the buffers."""
        for entry in self.manifest["hookpoints"]:
            d = widths[entry["name"]]
            if entry["d"] is not None and entry["d"] != d:
                raise SaekitError(f"hookpoint {entry['name']} has width {d} but the cache in {self.path} "
                                  f"stores width {entry['d']}: use a new --out directory")
            entry["d"] = d
        if self.manifest["shard_tokens"] is None:
            row_bytes = sum(widths.values()) * torch.finfo(self.torch_dtype).bits // 8
            rows = max(1, DEFAULT_SHARD_BYTES // row_bytes)
            self.manifest["shard_tokens"] = rows - rows % 1024 if rows >= 1024 else rows
        for entry in self.manifest["hookpoints"]:
            (self.path / entry["dir"]).mkdir(exist_ok=True)
        self._write_manifest()
        n = self.manifest["shard_tokens"]
        self._buffers = {h: torch.empty((n, widths[h]), dtype=self.torch_dtype) for h in self.hookpoints}

    @torch.no_grad()
    def add(self, batch: Batch) -> None:
        """Append `[n, d]` rows for every hookpoint (a plain tensor when there is one hookpoint)."""
        if self.complete:
            raise SaekitError(f"the cache in {self.path} is already complete: use a new --out directory "
                              "(or --overwrite) to write another")
        if isinstance(batch, Tensor):
            if len(self.hookpoints) != 1:
                raise SaekitError("a plain tensor batch needs exactly one hookpoint; pass a dict "
                                  "{hookpoint: tensor} for several")
            batch = {self.hookpoints[0]: batch}
        if set(batch) != set(self.hookpoints):
            raise SaekitError(f"batch has hookpoints {sorted(batch)} but the cache stores "
                              f"{self.hookpoints}: pass exactly those")
        shapes = {h: tuple(batch[h].shape) for h in self.hookpoints}
        rows = {s[0] for s in shapes.values()}
        if any(len(s) != 2 for s in shapes.values()) or len(rows) != 1:
            raise SaekitError(f"each batch must hold [n_tokens, d] tensors with the same n_tokens for "
                              f"every hookpoint, got {shapes}")
        if not self._buffers:
            self._start({h: s[1] for h, s in shapes.items()})
        n_rows = rows.pop()
        done = 0
        capacity = self.manifest["shard_tokens"]
        while done < n_rows:
            take = min(n_rows - done, capacity - self._filled)
            for h in self.hookpoints:
                target = self._buffers[h][self._filled:self._filled + take]
                target.copy_(batch[h][done:done + take])  # casts, rounding to nearest even
                if not torch.isfinite(target).all():
                    hint = (" (float16 overflows above 65504: use --dtype bfloat16 or float32)"
                            if self.torch_dtype == torch.float16 else "")
                    raise SaekitError(f"activations at hookpoint {h} contain NaN or inf after conversion to "
                                      f"{self.manifest['dtype']}{hint}: fix the source")
            self._filled += take
            done += take
            if self._filled == capacity:
                self._flush()

    def _flush(self) -> None:
        n = self._filled
        index = len(self.manifest["shards"])
        files = {}
        for entry in self.manifest["hookpoints"]:
            h = entry["name"]
            rows = self._buffers[h][:n]
            array = (rows.view(torch.int16) if self.torch_dtype == torch.bfloat16 else rows).numpy()
            header = _npy_header(self.disk_dtype, (n, entry["d"]))
            data = memoryview(np.ascontiguousarray(array)).cast("B")  # type: ignore[arg-type]
            digest = hashlib.sha256(header)
            digest.update(data)
            rel = f"{entry['dir']}/shard-{index:05d}.npy"
            atomic_write(self.path / rel, [header, data])
            files[h] = {"path": rel, "bytes": len(header) + data.nbytes, "sha256": digest.hexdigest()}
        for entry in self.manifest["hookpoints"]:
            fsync_dir(self.path / entry["dir"])
        self.manifest["shards"].append({"tokens": n, "files": files})
        self.manifest["total_tokens"] += n
        self._write_manifest()
        self._filled = 0

    def finish(self) -> dict[str, Any]:
        """Write the last (short) shard, mark the cache complete, release the lock; return the manifest."""
        if not self.complete:
            if self._filled:
                self._flush()
            self.manifest["complete"] = True
            self._write_manifest()
        self.close()
        return self.manifest

    def close(self) -> None:
        """Release the lock and buffers without finishing (buffered rows of a partial shard are dropped)."""
        self._buffers = {}
        self._filled = 0
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _skip_rows(batches: Iterable[Batch], skip: int) -> Iterable[Batch]:
    """Drop the first `skip` rows of a batch stream (for sources that cannot seek)."""
    for batch in batches:
        rows = (batch if isinstance(batch, Tensor) else next(iter(batch.values()))).shape[0]
        if skip >= rows:
            skip -= rows
            continue
        if skip:
            batch = batch[skip:] if isinstance(batch, Tensor) else {h: t[skip:] for h, t in batch.items()}
            skip = 0
        yield batch


def write_cache(batches: Iterable[Batch] | Callable[[int], Iterable[Batch]], out_dir: str | Path, *,
                hookpoints: Sequence[str], model: str, dtype: str = "float32",
                shard_tokens: int | None = None, max_tokens: int | None = None,
                metadata: Mapping[str, Any] | None = None, overwrite: bool = False,
                progress: bool = False) -> dict[str, Any]:
    """Write (or resume writing) an activation cache; returns its manifest.

    batches: an iterable of `{hookpoint: [n, d] tensor}` (or plain tensors for one hookpoint), or a
    function `skip_tokens -> iterable` that starts its stream `skip_tokens` tokens in. On a partial cache
    the writer continues after the stored tokens: a function is called with that count, a plain iterable
    is advanced by reading and discarding it (so it must yield the same rows in the same order as the
    interrupted run). A complete cache is left as it is. max_tokens: stop after this many tokens in all.
    dtype: "float32" (exact), or "bfloat16"/"float16" (half the disk, lossy: rounded to nearest even)."""
    from tqdm.auto import tqdm

    if max_tokens is not None and max_tokens < 0:
        raise SaekitError(f"max_tokens must be non-negative, not {max_tokens}")
    with CacheWriter(out_dir, hookpoints, model=model, dtype=dtype, shard_tokens=shard_tokens,
                     metadata=metadata, overwrite=overwrite) as writer:
        if writer.complete:
            return writer.manifest
        done = writer.tokens_written
        source = batches(done) if callable(batches) else _skip_rows(batches, done)
        bar = tqdm(total=max_tokens, initial=done, unit="tok", unit_scale=True, disable=not progress,
                   desc="caching", dynamic_ncols=True)
        try:
            for batch in source:
                if max_tokens is not None and done >= max_tokens:
                    break
                rows = (batch if isinstance(batch, Tensor) else next(iter(batch.values()))).shape[0]
                if max_tokens is not None and done + rows > max_tokens:
                    keep = max_tokens - done
                    batch = batch[:keep] if isinstance(batch, Tensor) else {h: t[:keep] for h, t in
                                                                            batch.items()}
                    rows = keep
                writer.add(batch)
                done += rows
                bar.update(rows)
        finally:
            bar.close()
        return writer.finish()
