"""Train one library's TopK dictionary on exported activations, timed, and evaluate it held out.

Run by `benchmarks/peers.py`, once per library and repetition, with the Python of the environment that
holds that library (saekit's `.venv` for saekit, the peer venv for sparsify and sae-lens), so every
library is timed by the same code, reads the same batches in the same order, and is evaluated by the
same function. Prints one JSON line.

    python benchmarks/peer_train.py --library saekit --data DIR --tokens 1000000 [--threads 2]

DIR holds `train.npy` (training rows, already shuffled) and `heldout.npy`. Batches are read from the
files with plain reads (no memory map), so the data never counts towards the peak RSS reported.

Each library trains with its own defaults for a TopK SAE, as a user would get them:
- saekit: `saekit.train` with `DictionarySpec.from_options(method="topk")` (Adam, lr 2e-4/sqrt(M/2^14), LR decay
  over the last 20%, geometric-median b_dec, sparse kernels);
- sparsify: its `Trainer`'s step, reproduced because `Trainer` only trains from hooks on a model: b_dec
  at the first batch's mean, unit-norm decoder, FVU loss, parallel-gradient removal, SignSGD under
  schedule-free (its default `signum`, lr 5e-3/sqrt(M/2^14)), AuxK off (its default auxk_alpha=0);
  the evaluated weights are schedule-free's averaged ones (`optimizer.eval()`, as its save does);
- sae-lens: `SAETrainer.fit` on `TopKTrainingSAE` with default configs (Adam 3e-4, AuxK coefficient 1,
  decoder-norm-rescaled selection).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from common import peak_rss_mib, rss_mib, synchronize  # benchmarks/ is on sys.path when run as a script

D_SAE_MULTIPLE = 16


class RowReader:
    """Row blocks of an .npy file by seek + read: no memory map, so no file pages in our RSS."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        assert not fortran and len(shape) == 2
        self.rows, self.width = shape
        self.dtype = np.dtype(dtype)

    def read(self, start: int, count: int) -> torch.Tensor:
        with open(self.path, "rb") as f:
            f.seek(self.offset + start * self.width * self.dtype.itemsize)
            array = np.fromfile(f, dtype=self.dtype, count=count * self.width)
        return torch.from_numpy(array.reshape(count, self.width).astype(np.float32, copy=False))

    def batches(self, batch: int, tokens: int) -> Iterator[torch.Tensor]:
        """`tokens // batch` batches in file order, starting over at the end of the file."""
        per_pass = self.rows // batch * batch
        for start in range(0, tokens - batch + 1, batch):
            yield self.read(start % per_pass, batch)


class DeviceRows:
    """On a GPU, every library gets its batches as slices of the training rows already on the device
    (loaded before the clock starts): a per-batch disk read + host-to-device copy would cap them all
    at the copy rate and hide the differences being measured."""

    def __init__(self, reader: RowReader, tokens: int, device: str):
        self.width = reader.width
        self.rows = reader.read(0, min(tokens, reader.rows)).to(device)

    def batches(self, batch: int, tokens: int) -> Iterator[torch.Tensor]:
        per_pass = self.rows.shape[0] // batch * batch
        for start in range(0, tokens - batch + 1, batch):
            yield self.rows[start % per_pass:start % per_pass + batch]


@torch.no_grad()
def evaluate(reconstruct: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], heldout: RowReader,
             d_sae: int, device: str = "cpu", chunk: int = 4096) -> dict[str, float]:
    """FVU = Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over the held-out rows; dead = fraction of latents that never
    fire on them; L0 = mean active latents per token. `reconstruct(x)` returns (x̂, active latent
    indices of the chunk, repeated per firing)."""
    n = heldout.rows
    total = torch.zeros(heldout.width, dtype=torch.float64)
    for start in range(0, n, chunk):
        total += heldout.read(start, min(chunk, n - start)).double().sum(0)
    mean = total / n
    error = variance = 0.0
    counts = torch.zeros(d_sae, dtype=torch.long)
    for start in range(0, n, chunk):
        x = heldout.read(start, min(chunk, n - start))
        x_hat, fired = (t.cpu() for t in reconstruct(x.to(device)))
        error += float((x.double() - x_hat.double()).pow(2).sum())
        variance += float((x.double() - mean).pow(2).sum())
        counts += torch.bincount(fired.reshape(-1), minlength=d_sae)
    return {"fvu": error / variance, "dead_fraction": float((counts == 0).float().mean()),
            "l0": float(counts.sum()) / n}


# ----------------------------------------------------------------------------------------- libraries
def train_saekit(reader: RowReader | DeviceRows, args: argparse.Namespace, d_sae: int):
    import saekit

    options = json.loads(args.saekit_options)  # e.g. {"lr": 1e-3}: flat dictionary options
    cfg = saekit.DictionarySpec.from_options(method="topk", d_in=reader.width, d_sae=d_sae, k=args.k, **options)
    started = time.perf_counter()
    d = saekit.train(reader.batches(args.batch, args.tokens), cfg, total_tokens=args.tokens,
                     batch_size=args.batch, progress=False, device=args.device,
                     autocast="bfloat16" if args.precision == "bf16" else "none")[0]
    synchronize(args.device)
    return time.perf_counter() - started, saekit_reconstruct(d)


def saekit_reconstruct(d) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """`evaluate`'s reconstruct for a trained saekit dictionary."""
    def reconstruct(x):
        f = d.encode(x)
        return d.decode(f), f.nonzero()[:, 1]
    return reconstruct


def train_sparsify(reader: RowReader | DeviceRows, args: argparse.Namespace, d_sae: int):
    from schedulefree import ScheduleFreeWrapper
    from sparsify import SparseCoder, SparseCoderConfig
    from sparsify.sign_sgd import SignSGD

    torch.manual_seed(0)
    # Its forward always runs under bf16 autocast on a bf16-capable GPU (sparse_coder.py), whatever
    # --precision says; on the CPU it is fp32.
    sae = SparseCoder(reader.width, SparseCoderConfig(num_latents=d_sae, k=args.k), args.device,
                      dtype=torch.float32)
    lr = 5e-3 / (d_sae / 2**14) ** 0.5
    optimizer = ScheduleFreeWrapper(SignSGD([dict(params=sae.parameters(), lr=lr)]), momentum=0.95)
    optimizer.train()
    fired_since = torch.zeros(d_sae, dtype=torch.long, device=args.device)

    def reconstruct(x):
        acts, indices, _ = sae.encode(x)
        return sae.decode(acts, indices), indices[acts > 0]

    def evaluate_here(tokens: int) -> None:
        """Held-out figures of the averaged weights at `tokens`, training then going on from exactly the
        weights it had (schedule-free has no schedule, so these are the figures of a run that stopped
        here). The clock does not run meanwhile."""
        nonlocal started
        paused = time.perf_counter()
        live = [p.detach().clone() for p in sae.parameters()]
        optimizer.eval()
        args.checkpoints.append({"tokens": tokens, "seconds": paused - started}
                                | evaluate(reconstruct, args.heldout_reader, d_sae, args.device))
        with torch.no_grad():
            for p, saved in zip(sae.parameters(), live):
                p.copy_(saved)
        optimizer.train_mode = True  # the live weights are back: train() would move them again
        started += time.perf_counter() - paused

    started = time.perf_counter()
    for step, x in enumerate(reader.batches(args.batch, args.tokens)):
        if step * args.batch in args.eval_at:
            evaluate_here(step * args.batch)
        if step == 0:
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, dead_mask=None)
        did_fire = torch.zeros(d_sae, dtype=torch.bool, device=args.device)
        did_fire[out.latent_indices.flatten()] = True
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():
            fired_since += x.shape[0]
            fired_since[did_fire] = 0
    optimizer.eval()  # schedule-free: evaluate the averaged weights, as sparsify's save does
    synchronize(args.device)
    elapsed = time.perf_counter() - started
    return elapsed, reconstruct


def train_saelens(reader: RowReader | DeviceRows, args: argparse.Namespace, d_sae: int):
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=reader.width, d_sae=d_sae, k=args.k,
                                                device=args.device))
    # lr_end: what LanguageModelSAERunnerConfig fills in (lr / 10; unused by the constant schedule).
    cfg = SAETrainerConfig(total_training_samples=args.tokens, train_batch_size_samples=args.batch,
                           lr=3e-4, lr_end=3e-5, device=args.device, autocast=args.precision == "bf16")

    def forever():
        while True:
            yield from reader.batches(args.batch, args.tokens)
    trainer = SAETrainer(cfg, sae, forever())
    started = time.perf_counter()
    sae = trainer.fit()
    synchronize(args.device)
    elapsed = time.perf_counter() - started
    sae.eval()

    def reconstruct(x):
        f = sae.encode(x)
        if f.is_sparse:
            f = f.to_dense()
        return sae.decode(f), f.nonzero()[:, 1]
    return elapsed, reconstruct


LIBRARIES = {"saekit": train_saekit, "sparsify": train_sparsify, "sae-lens": train_saelens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", choices=sorted(LIBRARIES), required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--d-sae", type=int, default=0, help="latents (default 16 x d_in)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="bf16: saekit and sae-lens train under bf16 autocast (sparsify always does on a GPU)")
    parser.add_argument("--saekit-options", default="{}",
                        help="JSON object of DictionaryConfig fields for saekit (default: its defaults)")
    parser.add_argument("--eval-at", type=int, nargs="*", default=[],
                        help="sparsify only: also evaluate after these many tokens (multiples of the batch), "
                             "as a run of that length would end (schedule-free has no schedule); under "
                             "'checkpoints' in the output")
    args = parser.parse_args()
    if args.eval_at and args.library != "sparsify":
        raise SystemExit("--eval-at is for sparsify only: saekit's and sae-lens's schedules depend on the budget")
    torch.set_num_threads(args.threads)
    # Every torch optimizer's constructor imports torch._dynamo on first use (~1.5 s here). The peers'
    # optimizers are built before their clocks start; saekit.train builds its own inside the clock, so
    # the import is done up front for every library: each clock then covers training, not a one-off import.
    importlib.import_module("torch._dynamo")
    reader = RowReader(args.data / "train.npy")
    heldout = RowReader(args.data / "heldout.npy")
    args.tokens = args.tokens // args.batch * args.batch
    args.eval_at = {t // args.batch * args.batch for t in args.eval_at if 0 < t < args.tokens}
    args.heldout_reader, args.checkpoints = heldout, []
    d_sae = args.d_sae or D_SAE_MULTIPLE * reader.width
    rss_before = rss_mib()
    cpu_started = time.process_time()
    load_started = os.getloadavg()[0]
    source = DeviceRows(reader, args.tokens, args.device) if args.device != "cpu" else reader
    elapsed, reconstruct = LIBRARIES[args.library](source, args, d_sae)
    cpu = time.process_time() - cpu_started
    peak = peak_rss_mib()
    if args.device != "cpu":
        gpu = {"device": torch.cuda.get_device_name(args.device),
               "peak_device_mib": torch.cuda.max_memory_allocated(args.device) / 2**20,
               "data_device_mib": source.rows.numel() * 4 / 2**20}
    else:
        gpu = {"device": "cpu"}
    result = {"library": args.library, "tokens": args.tokens, "seconds": elapsed,
              "tokens_per_s": args.tokens / elapsed, "cpu_seconds": cpu, "threads": torch.get_num_threads(),
              "peak_rss_mib": peak, "rss_before_training_mib": rss_before,
              "load_start": load_started, "load_end": os.getloadavg()[0],
              "torch": torch.__version__, "precision": args.precision} | gpu
    result.update(evaluate(reconstruct, heldout, d_sae, args.device))
    if args.checkpoints:
        result["checkpoints"] = args.checkpoints
    print(json.dumps(result))


if __name__ == "__main__":
    main()
