"""Batches of exactly the trainer's size, and a row stream's share for one of several processes.

Every stream the trainer reads goes through `rebatch`: streams yield rows in whatever chunks they
have (a model forward's tokens, a cache shard, a file chunk) and training needs fixed batches.
`RankRows` is how a stream of deterministic rows (an activations file, a cache) splits itself under
torchrun: each rank keeps its slice of every global batch, so N processes train on exactly the global
batches one process would, and a checkpoint resumes on any number of processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from saekit.errors import SaekitError

SINGLE = ""  # key used when the stream yields plain tensors


def as_batch(item: Any) -> dict[str, Tensor]:
    """A stream item as `{hookpoint: tensor}` (plain tensors under the key SINGLE)."""
    if isinstance(item, dict):
        return item
    if isinstance(item, Tensor):
        return {SINGLE: item}
    try:
        return {SINGLE: torch.as_tensor(item)}
    except (TypeError, ValueError, RuntimeError):
        raise SaekitError(f"the activation stream yielded a {type(item).__name__}; it must yield "
                          "float tensors [batch, d_in] or dicts of them") from None


def rebatch(stream: Iterable[Any], batch_size: int, skip_tokens: int = 0) -> Iterator[dict[str, Tensor]]:
    """Re-chunk a stream of `[n, d]` tensors (or dicts of them) into batches of exactly `batch_size`."""
    chunks: list[dict[str, Tensor]] = []
    buffered = 0
    for item in stream:
        item = as_batch(item)
        rows = next(iter(item.values())).shape[0]
        if skip_tokens >= rows:
            skip_tokens -= rows
            continue
        if skip_tokens:
            item = {key: value[skip_tokens:] for key, value in item.items()}
            rows -= skip_tokens
            skip_tokens = 0
        chunks.append(item)
        buffered += rows
        while buffered >= batch_size:
            merged = {key: torch.cat([c[key] for c in chunks]) for key in chunks[0]}
            yield {key: value[:batch_size] for key, value in merged.items()}
            rest = {key: value[batch_size:] for key, value in merged.items()}
            buffered -= batch_size
            chunks = [rest] if buffered else []


class RankRows:
    """Rank `rank`'s slice (`local_batch` rows) of every global batch (`world · local_batch` rows) of a
    deterministic row stream. Resuming at this rank's n-th token resumes the whole stream at n · world."""

    rank_split = "rows"

    def __init__(self, stream: Any, rank: int, world: int, local_batch: int, skip: int = 0) -> None:
        self.stream, self.rank, self.world, self.local_batch, self.skip = stream, rank, world, local_batch, skip

    def fingerprint(self) -> str:
        return str(self.stream.fingerprint())

    def resume_from(self, local_tokens: int) -> RankRows:
        global_tokens = local_tokens * self.world
        if hasattr(self.stream, "resume_from"):
            return RankRows(self.stream.resume_from(global_tokens), self.rank, self.world, self.local_batch)
        return RankRows(self.stream, self.rank, self.world, self.local_batch, skip=global_tokens)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        low, high = self.rank * self.local_batch, (self.rank + 1) * self.local_batch
        for batch in rebatch(self.stream, self.local_batch * self.world, self.skip):
            yield {key: value[low:high] for key, value in batch.items()}
