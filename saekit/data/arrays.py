"""Activations from one file: a `[tokens, d]` array in `.npy` (memory-mapped) or `.safetensors`.

The trainer's stream for `saekit train --activations FILE`: chunks of rows as float32, seekable
(`resume_from`), with a fingerprint of the file so a checkpoint refuses to resume on other data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saekit.data.batching import RankRows
from saekit.errors import SaekitError

CHUNK_ROWS = 8192


class ArrayStream:
    """Rows of one activations file, in order, `CHUNK_ROWS` at a time."""

    def __init__(self, path: str | Path, start: int = 0) -> None:
        self.path = Path(path)
        self.array = _open(self.path)
        self.start = start

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    @property
    def rows(self) -> int:
        return int(self.array.shape[0])

    def fingerprint(self) -> str:
        """What identifies this data: shape, dtype and the sha256 of its first and last MiB (hashing a
        whole multi-GB file at every start would cost more than the check is worth)."""
        digest = hashlib.sha256(f"{self.array.shape}{self.array.dtype}".encode())
        with open(self.path, "rb") as handle:
            digest.update(handle.read(1 << 20))
            size = self.path.stat().st_size
            handle.seek(max(0, size - (1 << 20)))
            digest.update(handle.read(1 << 20))
        return f"file {self.path.name}: {digest.hexdigest()[:16]}"

    def for_rank(self, rank: int, world: int, local_batch: int) -> RankRows:
        """Under torchrun: this rank's slice of every global batch (see saekit.data.batching)."""
        return RankRows(self, rank, world, local_batch)

    def resume_from(self, tokens: int) -> ArrayStream:
        stream = ArrayStream.__new__(ArrayStream)
        stream.path, stream.array, stream.start = self.path, self.array, tokens
        return stream

    def __iter__(self) -> Iterator[Tensor]:
        for start in range(self.start, self.rows, CHUNK_ROWS):
            chunk = np.asarray(self.array[start:start + CHUNK_ROWS])
            yield torch.from_numpy(np.array(chunk, dtype=np.float32, copy=True))


def _open(path: Path) -> Any:
    if not path.is_file():
        raise SaekitError(f"activations file not found: {path}")
    try:
        if path.suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        elif path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            tensors = load_file(str(path))
            if len(tensors) != 1:
                raise SaekitError(f"{path} holds {len(tensors)} tensors; it must hold exactly one")
            array = next(iter(tensors.values()))
        else:
            raise SaekitError(f"activations file {path} must be .npy or .safetensors")
    except SaekitError:
        raise
    except Exception as error:  # numpy and safetensors raise many kinds; all mean "unreadable"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SaekitError(f"cannot read activations from {path}: {first}") from None
    if array.ndim != 2:
        raise SaekitError(f"activations in {path} have shape {tuple(array.shape)}; expected [tokens, d_in]")
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise SaekitError(f"activations in {path} are {array.dtype}; they must be real numbers (float)")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise SaekitError(f"activations in {path} have shape {tuple(array.shape)}: there is nothing to train on")
    return array
