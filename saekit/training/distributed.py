"""torchrun support: data parallel and sharded sweeps on `torch.distributed`.

Launch any saekit training under `torchrun --nproc-per-node N` and it runs on N processes with no code
change (the environment variables torchrun sets are read here). Two modes:

- `data`: every rank holds every dictionary; each step a rank trains on its shard of the global batch
  (batch_size / world tokens) and gradients are averaged, firing statistics summed and the BatchTopK
  threshold's minimum taken across ranks, so all ranks hold identical weights. The first batch is
  gathered so every rank initialises (normalisation, b_dec) exactly as a single process would. For
  per-token methods the result equals a single-process run on the same global batches, within float
  tolerance; BatchTopK/Matryoshka select the top k·B *within each rank's shard* (documented difference).
- `shard`: sweep members are dealt round-robin to ranks; each rank's activations are all-gathered so the
  owner of a dictionary trains it on the full global batch: each dictionary is identical to its
  single-process version, and models whose dictionaries do not fit one device can be split up.

Failure handling: collectives run under a timeout; a rank that dies makes the others raise a one-line
SaekitError instead of hanging, and the end of data on any rank ends training on all of them.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from saekit.errors import SaekitError

MODES = ("data", "shard")


def _collective(fn):
    """Turn a dead peer or a timeout into a clear error (gloo raises RuntimeError/DistBackendError)."""

    def wrapped(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except RuntimeError as error:  # includes torch.distributed.DistBackendError
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise SaekitError(f"rank {self.rank}/{self.world}: lost contact with the other training "
                              f"processes ({first_line[:160]}); another rank probably died - check its "
                              "log, then resume from the last checkpoint") from None

    return wrapped


def check_device(name: str | torch.device, label: str = "device") -> None:
    """A device that exists here, or one clear line (not a CUDA traceback from deep inside a model load or
    a training step): checked by every command's --device and by every run's RunConfig."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SaekitError(f"unknown device {str(name)!r}: use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SaekitError(f"{label} {name}: no CUDA GPU is visible to torch here; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SaekitError(f"{label} {name}: only {torch.cuda.device_count()} CUDA device(s) here")


def local_device(device: str | torch.device) -> torch.device:
    """The device this process should use for `device`: under torchrun a bare "cuda" means this rank's
    GPU (cuda:LOCAL_RANK), so that N ranks on one machine do not all land on GPU 0."""
    device = torch.device(device)
    local_rank = os.environ.get("LOCAL_RANK")
    if device.type == "cuda" and device.index is None and local_rank is not None \
            and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(local_rank))
    return device


def is_main_process() -> bool:
    """Rank 0 under torchrun (the process that saves and prints), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class Distributed:
    rank: int
    world: int
    mode: str = "data"
    # where collectives' own tensors live: NCCL reduces only CUDA tensors, gloo only CPU ones
    device: torch.device = torch.device("cpu")
    # whether `from_environment` made the process group (then `close` ends it; a group the caller made is theirs)
    created_group: bool = False

    @classmethod
    def from_environment(cls, mode: str = "data", timeout_s: float = 120.0,
                         device: str | torch.device = "cpu") -> Distributed | None:
        """The process group torchrun describes, or None in a single process. With a CUDA `device`
        the group uses NCCL on this rank's GPU (set as the current device); otherwise gloo."""
        if mode not in MODES:
            raise SaekitError(f"unknown parallel mode {mode!r}: choose one of {', '.join(MODES)}")
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        device = local_device(device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        created = not dist.is_initialized()
        if created:
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        backend_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
        return cls(dist.get_rank(), dist.get_world_size(), mode, backend_device, created)

    def close(self) -> None:
        """End the process group this run made. Left to interpreter exit, gloo's worker threads can be
        torn down in the wrong order and abort a finished rank ("terminate called without an active
        exception", exit -6: torchrun then reports a successful run as failed)."""
        if self.created_group and dist.is_initialized():
            dist.destroy_process_group()

    # ------------------------------------------------------------------------------------ layout
    def owner(self, member_index: int) -> int:
        return member_index % self.world if self.mode == "shard" else self.rank

    def owns(self, member_index: int) -> bool:
        return self.mode == "data" or self.owner(member_index) == self.rank

    def local_batch_size(self, batch_size: int) -> int:
        if batch_size % self.world:
            raise SaekitError(f"batch_size={batch_size} must be divisible by the number of processes "
                              f"({self.world})")
        return batch_size // self.world

    # ------------------------------------------------------------------------------- collectives
    def _on_backend(self, tensor: Tensor) -> tuple[Tensor, torch.device]:
        """The tensor where the backend can reduce it, and where to give the result back."""
        return tensor.to(self.device), tensor.device

    @_collective
    def average_gradients(self, parameters: list[Tensor]) -> None:
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat, home = self._on_backend(torch.cat([g.reshape(-1) for g in grads]))
        dist.all_reduce(flat)
        flat = (flat / self.world).to(home)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    @_collective
    def sum(self, tensor: Tensor) -> Tensor:
        out, home = self._on_backend(tensor.clone())
        dist.all_reduce(out)
        return out.to(home)

    @_collective
    def min(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return float(t)

    @_collective
    def any(self, flag: bool) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    @_collective
    def gather_rows(self, tensor: Tensor) -> Tensor:
        """Concatenate every rank's rows, in rank order (all ranks have equal row counts)."""
        local, home = self._on_backend(tensor.contiguous())
        parts = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(parts, local)
        return torch.cat(parts).to(home)

    @_collective
    def gather_objects(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    @_collective
    def barrier(self) -> None:
        dist.barrier()
