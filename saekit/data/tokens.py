"""Text to fixed-length token windows: documents, packing, special-token masks, shuffling, resume.

Documents are tokenised, joined with the tokenizer's EOS token and packed into windows of `context`
tokens, each starting with BOS when the tokenizer has one (so every window looks like a sequence
start). The mask marks the tokens that count for training and metrics: BOS, EOS, padding and every
other special token are excluded by default. A seeded shuffle buffer of windows keeps consecutive
batches from coming from the same document. Everything is deterministic given the seed, so a stream
can restart at any token: `resume_from(n)` re-tokenises (cheap, no model) and masks out the first n
counted tokens.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.errors import SaekitError

OFFLINE_TEXT = "offline-default"
TEXT_SUFFIXES = (".txt", ".rst", ".md", ".text")
HOLDOUT_EVERY = 20  # every 20th document is held out for evaluation


def _local_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = [p for p in sorted(path.rglob("*")) if p.is_file()]
    files = [p for p in files if p.name.endswith(TEXT_SUFFIXES) or p.suffix in (".jsonl", ".json",
                                                                                  ".parquet")]
    if not files:
        raise SaekitError(f"no text, jsonl or parquet files under {path}")
    return files


def documents(source: str, split: str = "train", text_column: str = "text") -> Iterator[str]:
    """Documents of `source`: a named offline text (`offline-default`: the Python 3.11 docs, `kjv`: the
    King James Bible; see `saekit.data.offline_texts`), a local file or directory
    (text files are one document each; jsonl/parquet rows via `datasets`), or a Hugging Face dataset
    name (streamed). Every HOLDOUT_EVERY-th document forms the `test` split."""
    if split not in ("train", "test"):
        raise SaekitError(f"split must be 'train' or 'test', got {split!r}")
    for index, text in enumerate(_all_documents(source, text_column)):
        if (index % HOLDOUT_EVERY == HOLDOUT_EVERY - 1) == (split == "test"):
            yield text


def _all_documents(source: str, text_column: str) -> Iterator[str]:
    from saekit.data.offline_texts import NAMED_TEXTS

    if source in NAMED_TEXTS:
        yield from NAMED_TEXTS[source]()
        return
    path = Path(source)
    if path.exists():
        for file in _local_files(path):
            if file.suffix in (".jsonl", ".json", ".parquet"):
                yield from _dataset_rows("parquet" if file.suffix == ".parquet" else "json",
                                         {"data_files": str(file)}, text_column)
            else:
                yield file.read_text(encoding="utf-8", errors="replace")
        return
    yield from _dataset_rows(source, {}, text_column)


def _dataset_rows(name: str, kwargs: dict[str, Any], text_column: str) -> Iterator[str]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split="train", streaming=True, **kwargs)
    except Exception as error:  # datasets raises many types for a missing or unreachable dataset
        raise SaekitError(f"cannot load dataset {name!r}: {str(error).splitlines()[0]}") from None
    for row in dataset:
        if text_column not in row:
            raise SaekitError(f"dataset {name!r} has no column {text_column!r} (has {', '.join(row)})")
        yield row[text_column]


class TokenStream:
    """Batches (input_ids [B, T], mask [B, T]) of packed windows; iterable many times, identically."""

    def __init__(self, tokenizer: Any, source: str = OFFLINE_TEXT, context: int = 128,
                 batch_size: int = 8, split: str = "train", shuffle_buffer: int = 256, seed: int = 0,
                 text_column: str = "text", max_tokens: int | None = None) -> None:
        if context < 2 or batch_size < 1:
            raise SaekitError("context must be at least 2 and batch_size at least 1")
        self.tokenizer = tokenizer
        self.source, self.split, self.text_column = source, split, text_column
        self.context, self.batch_size = context, batch_size
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.max_tokens = max_tokens
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        self.special = set(tokenizer.all_special_ids)
        self._skip = 0
        self.rank, self.world = 0, 1

    def _windows(self) -> Iterator[list[int]]:
        body = self.context - (1 if self.bos is not None else 0)
        buffer: list[int] = []
        for text in documents(self.source, self.split, self.text_column):
            buffer.extend(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if self.eos is not None:
                buffer.append(self.eos)
            while len(buffer) >= body:
                window, buffer = buffer[:body], buffer[body:]
                yield ([self.bos] if self.bos is not None else []) + window

    def _shuffled(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed)
        pool: list[list[int]] = []
        for window in self._windows():
            pool.append(window)
            if len(pool) >= self.shuffle_buffer:
                yield pool.pop(rng.randrange(len(pool)))
        rng.shuffle(pool)
        yield from pool

    def counted(self, ids: Tensor) -> Tensor:
        """Mask of tokens that count (not special)."""
        special = torch.tensor(sorted(self.special), dtype=ids.dtype)
        return ~torch.isin(ids, special)

    def fingerprint(self) -> str:
        """What identifies this text and its order (the tokenizer by its vocabulary size and name)."""
        name = getattr(self.tokenizer, "name_or_path", "") or type(self.tokenizer).__name__
        return (f"text {self.source} split={self.split} context={self.context} batch={self.batch_size} "
                f"seed={self.seed} column={self.text_column} tokenizer={name}/{len(self.tokenizer)}")

    def _clone(self) -> TokenStream:
        clone = TokenStream(self.tokenizer, self.source, self.context, self.batch_size, self.split,
                            self.shuffle_buffer, self.seed, self.text_column, self.max_tokens)
        clone._skip, clone.rank, clone.world = self._skip, self.rank, self.world
        return clone

    def resume_from(self, tokens: int) -> TokenStream:
        """The same stream, with its first `tokens` counted tokens masked out (see the module doc)."""
        clone = self._clone()
        clone._skip = tokens
        return clone

    def for_rank(self, rank: int, world: int) -> TokenStream:
        """Under torchrun: every `world`-th window, starting at `rank` (each rank tokenises the text, which
        is cheap, and runs the model on its own windows only). Token counts (resume, max_tokens) are
        this rank's."""
        if not 0 <= rank < world:
            raise SaekitError(f"rank {rank} is outside a world of {world} processes")
        clone = self._clone()
        clone.rank, clone.world = rank, world
        return clone

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        to_skip, emitted = self._skip, 0
        ids_batch: list[Tensor] = []
        mask_batch: list[Tensor] = []
        for index, window in enumerate(self._shuffled()):
            if index % self.world != self.rank:
                continue
            ids = torch.tensor(window, dtype=torch.long)
            mask = self.counted(ids)
            n = int(mask.sum())
            if to_skip >= n:
                to_skip -= n
                emitted += n
                continue
            if to_skip:
                positions = torch.nonzero(mask).flatten()[:to_skip]
                mask[positions] = False
                to_skip = 0
            if self.max_tokens is not None:
                remaining = self.max_tokens - emitted
                if remaining <= 0:
                    break
                if int(mask.sum()) > remaining:
                    mask[torch.nonzero(mask).flatten()[remaining:]] = False
            emitted += int(mask.sum())
            ids_batch.append(ids)
            mask_batch.append(mask)
            if len(ids_batch) == self.batch_size:
                yield torch.stack(ids_batch), torch.stack(mask_batch)
                ids_batch, mask_batch = [], []
        if ids_batch:
            yield torch.stack(ids_batch), torch.stack(mask_batch)
