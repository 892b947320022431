"""Meta-SAEs (Bussmann et al. 2024; docs/methods.md "Transcoders, crosscoders, meta-SAEs"): a BatchTopK
dictionary trained on the decoder rows of another dictionary, so each latent is described as a sparse
sum of meta-latents.

The decoder rows are the dataset: each epoch streams them in a fresh seeded order, through the same
trainer as any other dictionary. Rows are unit-normalised first (the directions are what is being
decomposed; the reference code trains on raw rows of a unit-norm decoder, the same thing), and inputs
are not rescaled further (`input_unit_norm=False` in the reference config).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from saekit.dictionary import Dictionary
from saekit.evaluation.metrics import MetricsAccumulator
from saekit.spec import DictionarySpec
from saekit.training.trainer import train


@dataclass
class MetaResult:
    meta: Dictionary
    explained_variance: float
    fvu: float
    mean_meta_latents_per_latent: float
    composition_indices: Tensor  # [d_sae, k_max] meta-latents of each latent (-1 = none)
    composition_values: Tensor  # [d_sae, k_max] their activations


def decoder_directions(d: Dictionary) -> Tensor:
    rows = d.W_dec.detach().float()
    return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _epochs(rows: Tensor, seed: int) -> Iterator[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield rows[torch.randperm(rows.shape[0], generator=generator)]


def train_meta_sae(d: Dictionary, d_meta: int | None = None, k: int = 4, epochs: int = 200,
                   batch_size: int = 4096, lr: float = 1e-3, seed: int = 0, progress: bool = True,
                   aux_coefficient: float = 1 / 16, device: str = "cpu") -> MetaResult:
    """Train a BatchTopK meta-SAE on `d`'s decoder directions (defaults follow the reference: k = 4,
    aux penalty 1/16, width ≈ 4.7% of d_sae: 2,304 meta-latents for 49,152 latents)."""
    rows = decoder_directions(d).to(device)
    n, width = rows.shape
    d_meta = d_meta or max(k + 1, round(n * 2304 / 49152))
    batch_size = min(batch_size, n)
    spec = DictionarySpec.from_options(method="batchtopk", d_in=width, d_sae=d_meta, k=k, lr=lr,
                                       normalize_activations="none", aux_coefficient=aux_coefficient,
                                       dead_tokens=100 * batch_size, seed=seed, name=f"meta-k{k}-{d_meta}",
                                       hookpoint=f"decoder of {d.cfg.display_name}")
    (meta,) = train(_epochs(rows, seed), [spec], total_tokens=epochs * n, batch_size=batch_size,
                    progress=progress, device=device)
    with torch.no_grad():
        codes = meta.encode(rows)
        accumulator = MetricsAccumulator(d_meta)
        accumulator.update(rows, meta.decode(codes), codes)
        metrics = accumulator.result()
        counts = (codes > 0).sum(-1)
        k_max = max(int(counts.max()), 1)
        values, indices = torch.topk(codes, k_max, dim=-1)
        indices = torch.where(values > 0, indices, torch.full_like(indices, -1))
    return MetaResult(meta, metrics["explained_variance"], metrics["fvu"], float(counts.float().mean()),
                      indices, values.clamp_min(0.0))
