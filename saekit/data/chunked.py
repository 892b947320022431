"""Seekable generated streams: chunk i of a split is drawn from its own seeded generator.

The toy and synthetic ground-truth data are made, not read. Seeding each chunk by (data seed, split, i)
lets a killed run resume at any token by regenerating only the chunk it stopped in, and keeps the
held-out split's rows disjoint from the training ones (its seeds start a million chunks away).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from torch import Tensor

from saekit.errors import SaekitError


class SeededChunks:
    """The stream protocol of a generated dataset (`__iter__`, `resume_from`) over `chunk(index)`."""

    SPLITS: ClassVar[dict[str, int]] = {"train": 0, "test": 1_000_003}

    def __init__(self, seed: int, split: str, chunk_size: int) -> None:
        if split not in self.SPLITS:
            raise SaekitError(f"split must be one of {', '.join(self.SPLITS)}, got {split!r}")
        self.seed = seed
        self.split = split
        self.chunk_size = chunk_size

    @property
    def split_offset(self) -> int:
        return self.SPLITS[self.split]

    def chunk_seed(self, index: int) -> int:
        """The generator seed of chunk `index` of this split."""
        return self.seed * 7_919 + self.split_offset + index + 1

    def chunk(self, index: int) -> tuple[Tensor, Tensor]:
        """(activations [chunk_size, d], ground-truth codes) of chunk `index`."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Tensor]:
        return self.resume_from(0)

    def resume_from(self, tokens: int) -> Iterator[Tensor]:
        """The activations from token `tokens` on, endlessly."""
        index, offset = divmod(tokens, self.chunk_size)
        while True:
            x, _ = self.chunk(index)
            yield x[offset:]
            offset = 0
            index += 1
