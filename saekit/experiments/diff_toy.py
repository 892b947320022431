"""A synthetic model pair with known differences, to score model diffing against the truth.

Two "models" read the same sparse features (codes from `saekit.data.toy.ToyData`), each writing them along
its own unit directions:
- shared features: the second model's direction is the first's plus a small random drift, renormalised
  (two near-identical models, like a base model and its fine-tune);
- weak features: written by both, but at `weak_scale` of the strength in the first model (the bait for the
  L1 crosscoder's complete shrinkage: truly shared, easily mislabelled second-only);
- first-only and second-only features: written by one model, absent from the other (the truth that
  model diffing should find).
The second model's activations are multiplied by `second_scale` (models with different activation norms,
which per-model normalisation handles).

`score_specific_latents` matches a crosscoder's latents to the true model-specific directions and returns
recall and precision of the latents it labels model-specific; `matched_shared_cosine` measures how well
the latents that learned a shared feature align their two decoder blocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from saekit.data.toy import ToyConfig, ToyData
from saekit.dictionary import Dictionary
from saekit.inspect.diffing import decoder_blocks


@dataclass
class ToyPairConfig:
    d_model: int = 32
    n_shared: int = 40
    n_weak: int = 4
    n_first_only: int = 4
    n_second_only: int = 8
    weak_scale: float = 0.3
    drift: float = 0.1
    second_scale: float = 1.0
    mean_active: float = 4.0
    seed: int = 0


class ToyPair:
    """Deterministic streams of {"first": [n, d], "second": [n, d]} with the known directions."""

    def __init__(self, cfg: ToyPairConfig, chunk_size: int = 256) -> None:
        self.cfg = cfg
        counts = [cfg.n_shared, cfg.n_weak, cfg.n_first_only, cfg.n_second_only]
        n = sum(counts)
        starts = torch.tensor([0, *counts]).cumsum(0).tolist()
        self.groups = {name: torch.arange(starts[i], starts[i + 1])
                       for i, name in enumerate(("shared", "weak", "first_only", "second_only"))}
        g = torch.Generator().manual_seed(cfg.seed + 17)
        first = torch.nn.functional.normalize(torch.randn(n, cfg.d_model, generator=g), dim=-1)
        drift = torch.randn(n, cfg.d_model, generator=g) / cfg.d_model ** 0.5 * cfg.drift
        second = torch.nn.functional.normalize(first + drift, dim=-1)
        first[self.groups["weak"]] *= cfg.weak_scale
        first[self.groups["second_only"]] = 0.0
        second[self.groups["first_only"]] = 0.0
        self.first, self.second = first, second * cfg.second_scale
        toy = ToyConfig(d_in=cfg.d_model, n_features=n, mean_active=cfg.mean_active, decay=1.0,
                        correlation=0.0, seed=cfg.seed)
        self.chunk_size = chunk_size
        self.data = {split: ToyData(toy, chunk_size, split) for split in ("train", "test")}

    def batch(self, index: int, split: str = "train") -> dict[str, Tensor]:
        _, codes = self.data[split].chunk(index)
        return {"first": codes @ self.first, "second": codes @ self.second}

    def stream(self, split: str = "train") -> Iterator[dict[str, Tensor]]:
        index = 0
        while True:
            yield self.batch(index, split)
            index += 1

    def sample(self, n_tokens: int, split: str = "test") -> Tensor:
        """[n, 2·d] concatenated rows (first, second), as a crosscoder reads them."""
        chunks = [self.batch(i, split) for i in range(-(-n_tokens // self.chunk_size))]
        rows = torch.cat([torch.cat([c["first"], c["second"]], dim=-1) for c in chunks])
        return rows[:n_tokens]


def score_specific_latents(d: Dictionary, pair: ToyPair, labelled: Tensor, source: int,
                           min_cosine: float = 0.9) -> dict[str, float]:
    """Recall and precision of the latents labelled specific to `source` (0: first, 1: second).

    A labelled latent is a true positive when its own decoder block has cosine ≥ `min_cosine` with a true
    direction specific to that model; a true direction is recalled when some labelled latent matches it.
    """
    group = pair.groups["first_only" if source == 0 else "second_only"]
    truth = (pair.first if source == 0 else pair.second)[group]
    blocks = decoder_blocks(d)[:, source]
    cos = torch.nn.functional.normalize(truth, dim=-1) @ torch.nn.functional.normalize(blocks, dim=-1).T
    matches = cos >= min_cosine  # [n_true, d_sae]
    chosen = labelled.bool()
    true_positive = (matches.any(0) & chosen).sum()
    recalled = (matches & chosen[None, :]).any(1).sum()
    n_labelled = int(chosen.sum())
    return {"labelled": n_labelled, "true_positive": int(true_positive),
            "recall": float(recalled) / len(group),
            "precision": float(true_positive) / n_labelled if n_labelled else float("nan")}


def matched_shared_cosine(d: Dictionary, pair: ToyPair) -> float:
    """Median over the true shared features of cos(d^first, d^second) of the latent whose first block
    matches the feature best (truth: the drifted directions' cosine, ≈ 0.995 by default). Unlike the
    median over every latent labelled shared, it measures latents that learned something, not untouched
    ones."""
    blocks = decoder_blocks(d)
    truth = torch.nn.functional.normalize(pair.first[pair.groups["shared"]], dim=-1)
    best = (truth @ torch.nn.functional.normalize(blocks[:, 0], dim=-1).T).argmax(1)
    return float(torch.nn.functional.cosine_similarity(blocks[best, 0], blocks[best, 1], dim=-1).median())
