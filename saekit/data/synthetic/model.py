"""A synthetic model with known features (SynthSAEBench's recipe, METHODS-2 §5.1) and its data stream.

Built once from a `SyntheticConfig`, always on the CPU and in this order, so a seed gives the same model
on every machine: hierarchy (random.Random(seed+3)), correlation factor (seed+4), directions and bias
(a stream derived from the seed, saekit.data.seeds: never a dictionary's init stream), probabilities,
magnitude spreads (seed+1). Directions are orthogonalised on the model's device
(the 16k preset's 16k × 16k Gram matrices are slow on a CPU); that step is deterministic per device.

Per sample: feature i fires when a Gaussian-copula variable g_i = ε·F_i + η_i·√D_i (ε ~ N(0, I_r), η_i ~
N(0, 1), D_i = 1 − |F_i|²) exceeds Φ⁻¹(1 − p_i), so each marginal is exactly p_i and features that load
on the same factors fire together; a firing feature takes magnitude ReLU(μ_i + σ_i·n); the hierarchy then
gates, scales and excludes (see `hierarchy`); x = Σ_i a_i·d_i + bias.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from saekit.data.chunked import SeededChunks
from saekit.data.seeds import derived_seed
from saekit.data.synthetic.config import SyntheticConfig
from saekit.data.synthetic.hierarchy import (
    Hierarchy,
    achieved_rates,
    apply_hierarchy,
    build_hierarchy,
    compensated_probabilities,
)
from saekit.errors import SaekitError
from saekit.io import atomic_directory

CONFIG_FILE = "synthetic_config.json"
WEIGHTS_FILE = "synthetic_model.safetensors"


def zipf_probabilities(n: int, exponent: float, p_max: float, p_min: float) -> Tensor:
    """p_r = p_min + (p_max − p_min)·(r^−a − n^−a)/(1 − n^−a) for ranks r = 1..n (p_1 = p_max, p_n = p_min)."""
    if n == 1:
        return torch.tensor([p_max])
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    power = ranks.pow(-exponent)
    low = float(n) ** -exponent
    return (p_min + (p_max - p_min) * (power - low) / (1 - low)).float()


def orthogonalize(directions: Tensor, steps: int, lr: float, chunk: int = 1024) -> Tensor:
    """Adam on L = Σ_{i≠j}(d_i·d_j)² + N·Σ_i(|d_i|² − 1)², one step per pass over all rows, then unit rows.

    The gradient is written out, ∂L/∂d_i = 4·Σ_{j≠i}(d_i·d_j)·d_j + 4N·(|d_i|² − 1)·d_i, and computed a
    chunk of rows at a time, so memory stays at chunk × N instead of N × N."""
    d = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    d = d.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([d], lr=lr)
    n = d.shape[0]
    for _ in range(steps):
        with torch.no_grad():
            grad = torch.empty_like(d)
            for start in range(0, n, chunk):
                rows = d[start:start + chunk]
                gram = rows @ d.T  # [c, N]
                own = torch.arange(rows.shape[0], device=d.device)
                diagonal = gram[own, start + own].clone()
                gram[own, start + own] = n * (diagonal - 1)
                grad[start:start + chunk] = 4 * gram @ d
        d.grad = grad
        optimizer.step()
    with torch.no_grad():
        return (d / d.norm(dim=-1, keepdim=True).clamp_min(1e-8)).detach()


class SyntheticModel:
    """Ground-truth features, their firing statistics and hierarchy; `sample` draws activations."""

    def __init__(self, cfg: SyntheticConfig, device: str | torch.device = "cpu",
                 tensors: dict[str, Tensor] | None = None) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.hierarchy: Hierarchy = build_hierarchy(cfg)
        n = cfg.n_features
        if tensors is None:
            tensors = self._build(cfg)
        self.features = tensors["features"].to(self.device)  # [N, d_in], unit rows
        self.bias = tensors["bias"].to(self.device)
        self.probabilities = tensors["probabilities"].to(self.device)  # compensated, what draws use
        self.correlation_factor = tensors["correlation_factor"].to(self.device)  # [N, r]
        self.std_magnitudes = tensors["std_magnitudes"].to(self.device)
        self.base_probabilities = zipf_probabilities(n, cfg.zipf_exponent, cfg.p_max, cfg.p_min).to(self.device)
        self.mean_magnitudes = torch.linspace(cfg.magnitude_start, cfg.magnitude_end, n).to(self.device)
        self.independent_scale = (1 - self.correlation_factor.pow(2).sum(-1)).clamp_min(0).sqrt()
        self.thresholds = math.sqrt(2) * torch.erfinv(1 - 2 * self.probabilities.double()).float()
        # The rate each feature fires at, predicted from its probability (siblings independent)
        self.expected_rates = achieved_rates(self.hierarchy, self.probabilities).to(self.device)
        self.hierarchy = self.hierarchy.to(self.device)

    @staticmethod
    def _build(cfg: SyntheticConfig) -> dict[str, Tensor]:
        n = cfg.n_features
        g = torch.Generator().manual_seed(cfg.seed + 4)
        factor = torch.randn(n, cfg.correlation_rank, generator=g) * cfg.correlation_scale
        loading = factor.pow(2).sum(-1)
        # Each feature keeps at least 1% of its variance to itself (as SAELens caps rows).
        capped = loading > 0.99
        factor[capped] *= (0.99 / loading[capped]).sqrt()[:, None]

        # Not manual_seed(cfg.seed): a dictionary trained with that seed would start on the directions.
        g = torch.Generator().manual_seed(derived_seed("synthetic directions", cfg.seed))
        directions = torch.randn(n, cfg.d_in, generator=g)
        directions = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        bias = torch.randn(cfg.d_in, generator=g)
        bias = bias / bias.norm().clamp_min(1e-8) * cfg.bias_norm
        if cfg.orthogonalize_steps:
            directions = orthogonalize(directions, cfg.orthogonalize_steps, cfg.orthogonalize_lr)

        base = zipf_probabilities(n, cfg.zipf_exponent, cfg.p_max, cfg.p_min)
        probabilities = base
        if cfg.compensate_probabilities:
            probabilities = compensated_probabilities(build_hierarchy(cfg), base, cfg.compensation)
        g = torch.Generator().manual_seed(cfg.seed + 1)
        spread = (cfg.magnitude_spread_mean + cfg.magnitude_spread_std * torch.randn(n, generator=g)).abs()
        return dict(features=directions, bias=bias, probabilities=probabilities, correlation_factor=factor,
                    std_magnitudes=spread)

    # ------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n samples: (activations x [n, d_in], ground-truth codes [n, N] with the features' magnitudes).

        Dense on purpose: before gating, a clamped child fires with every sample, so in the presets half
        of all (sample, feature) pairs fire and a sparse draw would cost more than a dense one."""
        cfg = self.cfg
        kwargs: dict = dict(generator=generator, device=self.device)
        copula = torch.randn(n, cfg.n_features, **kwargs).mul_(self.independent_scale)
        if cfg.correlation_rank:
            copula.addmm_(torch.randn(n, cfg.correlation_rank, **kwargs), self.correlation_factor.T)
        fires = copula > self.thresholds
        codes = torch.randn(n, cfg.n_features, **kwargs).mul_(self.std_magnitudes).add_(self.mean_magnitudes)
        codes.relu_().mul_(fires)
        if self.hierarchy.n_levels:
            apply_hierarchy(codes, self.hierarchy, self.mean_magnitudes, cfg.scale_children_by_parent, generator)
        return torch.addmm(self.bias, codes, self.features), codes

    # ------------------------------------------------------------------------------------ files
    def tensors(self) -> dict[str, Tensor]:
        return dict(features=self.features, bias=self.bias, probabilities=self.probabilities,
                    correlation_factor=self.correlation_factor, std_magnitudes=self.std_magnitudes)

    def save(self, path: str | Path) -> None:
        """The config and the drawn tensors, written as one directory (atomically)."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors().items()}
        with atomic_directory(path) as tmp:
            save_file(tensors, str(tmp / WEIGHTS_FILE))
            (tmp / CONFIG_FILE).write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> SyntheticModel:
        path = Path(path)
        config, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
        if not config.is_file() or not weights.is_file():
            raise SaekitError(f"{path} is not a saved synthetic model (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
        cfg = SyntheticConfig.from_dict(json.loads(config.read_text()))
        return cls(cfg, device, load_file(str(weights)))


class SyntheticData(SeededChunks):
    """A deterministic, seekable stream of a synthetic model's activations (the trainer's `stream`)."""

    def __init__(self, model: SyntheticModel, split: str = "train", chunk_size: int = 4096) -> None:
        super().__init__(model.cfg.seed, split, chunk_size)
        self.model = model

    def chunk(self, index: int) -> tuple[Tensor, Tensor]:
        """(activations, codes) of chunk `index`."""
        generator = torch.Generator(device=self.model.device).manual_seed(self.chunk_seed(index))
        return self.model.sample(self.chunk_size, generator)

    def batches(self, n_samples: int, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The first n_samples rows as (x, codes) batches, for evaluation."""
        done, index = 0, 0
        while done < n_samples:
            x, codes = self.chunk(index)
            index += 1
            for start in range(0, x.shape[0], batch_size):
                take = min(batch_size, x.shape[0] - start, n_samples - done)
                if take <= 0:
                    break
                yield x[start:start + take], codes[start:start + take]
                done += take
