"""Scores against a synthetic model's known features (SynthSAEBench's metrics, METHODS-2 §5.2).

With decoder rows W_dec [M, d] and ground-truth directions G [N, d], C = |cos(W_dec_i, G_j)| [M, N]:
- MCC: the one-to-one matching of latents to features that maximises Σ C (Hungarian, scipy's
  `linear_sum_assignment` on 1 − C); the mean matched C over min(M, N) pairs. Decoder weights only.
- Uniqueness: the number of distinct features that are some latent's best match (argmax_j C[i, j], over
  all M latents, dead ones included), divided by M.
- Precision / recall / F1 / accuracy: each latent is a detector of its best-matching feature (the
  argmax, not the Hungarian match); over the evaluation samples TP = latent ≠ 0 ∧ feature > 0, and so on;
  an undefined ratio counts as 0; each is the mean over all latents.
- Explained variance: 1 − E|x − x̂|² / (E|x|² − |E x|²), accumulated in float64 over all samples.
- Shrinkage: mean |x̂| / |x| over samples with |x| > 1e-6.
- L0: mean number of non-zero latents; true L0: the same for the ground-truth codes; dead: latents that
  are never non-zero on the evaluation samples.
A zero decoder row has cosine 0 with every feature (norms are clamped at 1e-8, as SAELens does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from saekit.errors import SaekitError

if TYPE_CHECKING:
    from saekit.data.synthetic import SyntheticData
    from saekit.dictionary import Dictionary


def abs_cosines(a: Tensor, b: Tensor) -> Tensor:
    """|cos| between every row of a [M, d] and every row of b [N, d]: [M, N], in float32."""
    a = a.detach().float()
    b = b.detach().float().to(a.device)
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return (a @ b.T).abs()


def mean_correlation_coefficient(decoder: Tensor, features: Tensor) -> float:
    """MCC: mean |cos| over the best one-to-one matching of decoder rows to features."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        raise SaekitError("MCC needs scipy (Hungarian matching): pip install 'saekit[synth]'") from None
    cos = abs_cosines(decoder, features).cpu()
    rows, cols = linear_sum_assignment((1 - cos).numpy())
    return float(cos[torch.as_tensor(rows), torch.as_tensor(cols)].double().mean())


def best_matches(decoder: Tensor, features: Tensor) -> Tensor:
    """[M] index of each latent's best-matching feature (argmax of |cos|)."""
    return abs_cosines(decoder, features).argmax(dim=1)


def uniqueness(decoder: Tensor, features: Tensor) -> float:
    """Distinct best-matched features / number of latents."""
    if decoder.shape[0] == 0:
        return 0.0
    return best_matches(decoder, features).unique().numel() / decoder.shape[0]


class SyntheticMetrics:
    """Streams (x, x̂, latents, codes) batches; `result()` gives every metric of the module docstring."""

    def __init__(self, decoder: Tensor, features: Tensor) -> None:
        self.decoder = decoder.detach()
        self.features = features.detach()
        self.matches = best_matches(self.decoder, self.features)
        m = decoder.shape[0]
        self.counts = torch.zeros(4, m, dtype=torch.float64)  # TP, FP, FN, TN per latent
        self.fired = torch.zeros(m, dtype=torch.bool)
        self.samples = 0
        self.sum_x: Tensor | None = None
        self.sum_sq_x = 0.0
        self.sum_err = 0.0
        self.sum_shrinkage = 0.0
        self.shrinkage_samples = 0
        self.sum_l0 = 0.0
        self.sum_true_l0 = 0.0

    @torch.no_grad()
    def update(self, x: Tensor, x_hat: Tensor, latents: Tensor, codes: Tensor) -> None:
        n = x.shape[0]
        x32 = x.float()
        self.samples += n
        batch_sum = x32.sum(0).double().cpu()
        self.sum_x = batch_sum if self.sum_x is None else self.sum_x + batch_sum
        self.sum_sq_x += float(x32.pow(2).sum())
        self.sum_err += float((x32 - x_hat.float()).pow(2).sum())
        norms = x32.norm(dim=-1)
        valid = norms > 1e-6
        self.sum_shrinkage += float((x_hat.float().norm(dim=-1)[valid] / norms[valid]).double().sum())
        self.shrinkage_samples += int(valid.sum())
        fires = latents != 0
        self.sum_l0 += float(fires.sum())
        self.sum_true_l0 += float((codes > 0).sum())
        self.fired |= fires.any(0).cpu()
        truth = codes[:, self.matches.to(codes.device)] > 0
        f, t = fires.float(), truth.float()
        tp = (f * t).sum(0)
        fp = f.sum(0) - tp
        fn = t.sum(0) - tp
        self.counts += torch.stack([tp, fp, fn, n - tp - fp - fn]).double().cpu()

    def classification(self) -> dict[str, float]:
        tp, fp, fn, tn = self.counts
        zero = torch.zeros_like(tp)
        precision = torch.where(tp + fp > 0, tp / (tp + fp), zero)
        recall = torch.where(tp + fn > 0, tp / (tp + fn), zero)
        f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), zero)
        accuracy = (tp + tn) / (tp + fp + fn + tn).clamp_min(1e-8)
        return {"precision": float(precision.mean()), "recall": float(recall.mean()),
                "f1": float(f1.mean()), "accuracy": float(accuracy.mean())}

    def result(self) -> dict[str, float]:
        if self.samples == 0 or self.sum_x is None:
            raise ValueError("no samples were evaluated")
        n = self.samples
        variance = self.sum_sq_x / n - float((self.sum_x / n).pow(2).sum())
        mse = self.sum_err / n
        explained = (1.0 if mse < 1e-10 else 0.0) if variance < 1e-10 else 1 - mse / variance
        m = self.decoder.shape[0]
        dead = int((~self.fired).sum())
        return {
            "mcc": mean_correlation_coefficient(self.decoder, self.features),
            "uniqueness": uniqueness(self.decoder, self.features),
            **self.classification(),
            "explained_variance": explained,
            "shrinkage": self.sum_shrinkage / self.shrinkage_samples if self.shrinkage_samples else 0.0,
            "l0": self.sum_l0 / n,
            "true_l0": self.sum_true_l0 / n,
            "dead": dead,
            "dead_fraction": dead / m if m else 0.0,
            "samples": n,
        }


@torch.no_grad()
def evaluate_synthetic(dictionary: Dictionary, data: SyntheticData | Iterable[tuple[Tensor, Tensor]],
                       features: Tensor | None = None, samples: int = 100_000, batch_size: int = 4096,
                       encode: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
    """Every synthetic metric of `dictionary` on `samples` held-out rows of `data` (a `SyntheticData`,
    or any iterable of (x, codes) batches together with `features`). `encode` replaces the
    dictionary's own inference encoder (e.g. to score BatchTopK's batch selection)."""
    from saekit.data.synthetic import SyntheticData

    if isinstance(data, SyntheticData):
        features = data.model.features
        batches: Iterable[tuple[Tensor, Tensor]] = data.batches(samples, batch_size)
    else:
        if features is None:
            raise SaekitError("evaluate_synthetic needs the ground-truth features with plain batches")
        batches = data
    encode = encode or dictionary.encode
    device = dictionary.W_dec.device
    metrics = SyntheticMetrics(dictionary.W_dec, features)
    for x, codes in batches:
        x = x.to(device, torch.float32)
        latents = encode(x)
        metrics.update(x, dictionary.decode(latents, x), latents, codes.to(device))
    return metrics.result()
