"""Toy ground-truth data (Sharkey, Braun & Millidge 2022; docs/methods.md "Toy ground truth"): a data
source of activations built from known sparse features.

Variant used, as the spec asks us to state it:
- G ground-truth features in R^h, rows ~ N(0, I) normalised to unit norm (h = 256, G = 512 by default),
  drawn from their own seed stream (saekit.data.seeds), never the one a dictionary's init uses.
- Marginal firing probabilities p_i ∝ γ^i (γ = 0.99), rescaled so that mean(p)·G = mean_active (5).
- Correlation per example through a Gaussian copula: s = B·z + sqrt(1 − ||B_i||²)·ε with a random factor
  matrix B [G, rank] whose rows have norm `correlation` (a random PSD correlation matrix BBᵀ + D with
  unit diagonal); feature i is active when Φ(s_i) < p_i, so each marginal is exactly p_i. A low-rank
  factor keeps sampling cheap next to the SAE step; the post's dense random PSD matrix is not needed for
  correlated firing.
- Active coefficients ~ U(0, 1); rows with no active feature stay zero (the post's "set one feature to 1"
  is not applied).
Each chunk of `chunk_size` rows is drawn from its own seeded generator, so the stream can resume at any
token without regenerating what came before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from saekit.data.chunked import SeededChunks
from saekit.data.seeds import derived_seed
from saekit.errors import SaekitError


@dataclass
class ToyConfig:
    d_in: int = field(default=256, metadata={"help": "Dimension h of the data."})
    n_features: int = field(default=512, metadata={"help": "Number G of ground-truth features."})
    mean_active: float = field(default=5.0, metadata={"help": "Mean number of active features."})
    decay: float = field(default=0.99, metadata={"help": "Feature i fires ∝ decay^i."})
    correlation: float = field(default=0.5, metadata={
        "help": "Norm of each feature's loading on the shared factors (0 = independent)."})
    correlation_rank: int = field(default=16, metadata={"help": "Number of shared latent factors."})
    seed: int = field(default=0, metadata={"help": "Seed of the features and the data."})

    def __post_init__(self) -> None:
        if self.d_in <= 0 or self.n_features <= 0:
            raise SaekitError("toy d_in and n_features must be positive")
        if not 0 < self.mean_active <= self.n_features:
            raise SaekitError("toy mean_active must be in (0, n_features]")
        if not 0 < self.decay <= 1:
            raise SaekitError("toy decay must be in (0, 1]")
        if not 0 <= self.correlation < 1:
            raise SaekitError("toy correlation must be in [0, 1)")


class ToyData(SeededChunks):
    """A deterministic, seekable stream of toy activations with known features."""

    def __init__(self, cfg: ToyConfig, chunk_size: int = 1024, split: str = "train") -> None:
        super().__init__(cfg.seed, split, chunk_size)
        self.cfg = cfg
        # Not manual_seed(cfg.seed): a dictionary trained with the same seed would start on the features.
        g = torch.Generator().manual_seed(derived_seed("toy features", cfg.seed))
        features = torch.randn(cfg.n_features, cfg.d_in, generator=g)
        self.features = features / features.norm(dim=-1, keepdim=True)
        decay = cfg.decay ** torch.arange(cfg.n_features, dtype=torch.float64)
        p_mean = cfg.mean_active / cfg.n_features
        self.probabilities = (decay / decay.mean() * p_mean).clamp(max=1.0).float()
        loadings = torch.randn(cfg.n_features, cfg.correlation_rank, generator=g)
        self.loadings = loadings / loadings.norm(dim=-1, keepdim=True) * cfg.correlation
        self.independent_scale = (1 - cfg.correlation ** 2) ** 0.5

    def chunk(self, index: int) -> tuple[Tensor, Tensor]:
        """Rows of chunk `index`: (activations [n, d_in], codes [n, G])."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(self.chunk_seed(index))
        n = self.chunk_size
        factors = torch.randn(n, cfg.correlation_rank, generator=g)
        noise = torch.randn(n, cfg.n_features, generator=g)
        s = factors @ self.loadings.T + self.independent_scale * noise
        active = torch.special.ndtr(s) < self.probabilities
        codes = torch.rand(n, cfg.n_features, generator=g) * active
        return codes @ self.features, codes

    def fingerprint(self) -> str:
        return f"toy {self.cfg} split_offset={self.split_offset} chunk={self.chunk_size}"

    def sample(self, n_tokens: int) -> Tensor:
        chunks = []
        for index in range((n_tokens + self.chunk_size - 1) // self.chunk_size):
            chunks.append(self.chunk(index)[0])
        return torch.cat(chunks)[:n_tokens]
