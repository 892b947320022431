"""Batches produced while the dictionaries step: a producer thread with a bounded queue.

Live from a model, the stream's next batch is a model forward; without this the model waits for the
dictionaries and the dictionaries for the model. The producer thread runs the stream (model forward,
cache reads, re-batching) and moves each batch to the training device, `depth` batches ahead at most,
while the main thread steps; PyTorch releases the GIL inside its kernels, so both make progress (on a
GPU, the forward's kernel launches overlap the step's). Order is kept (one producer, FIFO), so a run is
the same with or without the thread, and exact resume is unaffected: batches read ahead but not trained
on are not counted as seen.

Errors raised by the stream reach the trainer as they are, at the batch where they happened. No wait is
unbounded: the consumer polls the producer's liveness, and the producer gives up once the consumer has
stopped (training ended or failed).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

_END = object()
POLL_S = 0.5


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """Move a batch to `device`; from the CPU to a GPU through pinned memory, asynchronously."""
    moved = {}
    for key, value in batch.items():
        if value.device != device:
            if device.type == "cuda" and value.device.type == "cpu":
                value = value.pin_memory().to(device, non_blocking=True)
            else:
                value = value.to(device)
        moved[key] = value
    return moved


class Prefetcher:
    """Iterate `batches` in a background thread, `depth` ahead, each moved to `device`."""

    def __init__(self, batches: Iterator[dict[str, Tensor]], device: torch.device, depth: int = 2) -> None:
        self.batches = batches
        self.device = device
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._produce, name="saekit-prefetch", daemon=True)
        self.thread.start()

    def _put(self, item: Any) -> bool:
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for batch in self.batches:
                if not self._put(("batch", to_device(batch, self.device))):
                    return
            self._put(("end", None))
        except BaseException as error:  # handed to the consumer, raised there
            self._put(("error", error))

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        return self

    def __next__(self) -> dict[str, Tensor]:
        while True:
            try:
                kind, value = self.queue.get(timeout=POLL_S)
                break
            except queue.Empty:
                if not self.thread.is_alive() and self.queue.empty():
                    raise StopIteration from None
        if kind == "batch":
            return value
        if kind == "error":
            self.close()
            raise value
        self.close()
        raise StopIteration

    def close(self) -> None:
        """Stop the producer (it exits after the batch it is making)."""
        self.stopped.set()
        while True:  # unblock a producer waiting to put
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break


def batches_on_device(batches: Iterator[dict[str, Tensor]], device: torch.device, depth: int
                      ) -> Iterator[dict[str, Tensor]]:
    """`batches` moved to `device`: prefetched by a thread when depth > 0, else in this thread."""
    if depth > 0:
        return Prefetcher(batches, device, depth)
    return (to_device(batch, device) for batch in batches)
