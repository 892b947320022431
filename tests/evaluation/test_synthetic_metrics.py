"""SynthSAEBench metrics (METHODS-2 §5.2), against independent computations and the spec's checks (1)."""

from __future__ import annotations

import itertools

import pytest
import torch

import saekit
from saekit.evaluation.synthetic import (
    SyntheticMetrics,
    evaluate_synthetic,
    mean_correlation_coefficient,
    uniqueness,
)


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    rows = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return rows / rows.norm(dim=-1, keepdim=True)


def test_mcc_is_the_best_one_to_one_matching():
    decoder, features = unit_rows(3, 6, 0), unit_rows(4, 6, 1)
    cos = (decoder @ features.T).abs()
    best = max(sum(float(cos[i, j]) for i, j in zip(range(3), cols)) / 3
               for cols in itertools.permutations(range(4), 3))
    assert mean_correlation_coefficient(decoder, features) == pytest.approx(best, abs=1e-6)
    # more latents than features: min(M, N) pairs
    assert mean_correlation_coefficient(features, decoder) == pytest.approx(best, abs=1e-6)
    # signs and scales do not matter (|cos|)
    assert mean_correlation_coefficient(-3 * decoder, features) == pytest.approx(best, abs=1e-6)


def test_spec_checks_perfect_decoder_duplicate_row_and_dead_dictionary():
    """METHODS-2 §5.3 (1): decoder = G[:M] gives MCC = uniqueness = 1; one duplicated row lowers
    uniqueness by exactly 1/M; an all-dead dictionary has F1 = 0."""
    features = unit_rows(64, 32, 2)
    decoder = features[:16].clone()
    assert mean_correlation_coefficient(decoder, features) == pytest.approx(1.0, abs=1e-6)
    assert uniqueness(decoder, features) == 1.0
    decoder[5] = decoder[3]
    assert uniqueness(decoder, features) == pytest.approx(1 - 1 / 16)
    metrics = SyntheticMetrics(features[:16], features)
    codes = torch.rand(100, 64) * (torch.rand(100, 64) < 0.2)
    x = codes @ features
    metrics.update(x, torch.zeros_like(x), torch.zeros(100, 16), codes)
    result = metrics.result()
    assert result["f1"] == 0 and result["precision"] == 0 and result["recall"] == 0
    assert result["dead"] == 16 and result["l0"] == 0 and result["explained_variance"] < 0.01


def test_classification_counts_match_a_loop_over_latents():
    g = torch.Generator().manual_seed(4)
    features, decoder = unit_rows(12, 8, 5), unit_rows(5, 8, 6)
    codes = torch.rand(200, 12, generator=g) * (torch.rand(200, 12, generator=g) < 0.3)
    latents = torch.rand(200, 5, generator=g) * (torch.rand(200, 5, generator=g) < 0.4)
    latents[:, 4] = 0  # a dead latent: precision and recall undefined -> 0
    x = codes @ features
    metrics = SyntheticMetrics(decoder, features)
    for part in range(4):  # streaming over batches
        rows = slice(50 * part, 50 * part + 50)
        metrics.update(x[rows], x[rows] * 0.5, latents[rows], codes[rows])
    result = metrics.result()
    match = (decoder @ features.T).abs().argmax(1)
    precisions, recalls, f1s, accuracies = [], [], [], []
    for i in range(5):
        fired, truth = latents[:, i] != 0, codes[:, match[i]] > 0
        tp = int((fired & truth).sum())
        fp, fn = int((fired & ~truth).sum()), int((~fired & truth).sum())
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        precisions.append(p)
        recalls.append(r)
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
        accuracies.append(float((fired == truth).double().mean()))
    assert result["precision"] == pytest.approx(sum(precisions) / 5, abs=1e-9)
    assert result["recall"] == pytest.approx(sum(recalls) / 5, abs=1e-9)
    assert result["f1"] == pytest.approx(sum(f1s) / 5, abs=1e-9)
    assert result["accuracy"] == pytest.approx(sum(accuracies) / 5, abs=1e-9)
    # reconstruction metrics over all 200 rows, from their definitions
    x64 = x.double()
    variance = x64.pow(2).sum(-1).mean() - x64.mean(0).pow(2).sum()
    assert result["explained_variance"] == pytest.approx(1 - float((0.5 * x64).pow(2).sum(-1).mean() / variance),
                                                         rel=1e-5)
    nonzero = x.norm(dim=-1) > 1e-6
    assert result["shrinkage"] == pytest.approx(0.5, rel=1e-5) and int(nonzero.sum()) < 200
    assert result["l0"] == pytest.approx(float((latents != 0).sum(-1).double().mean()))
    assert result["true_l0"] == pytest.approx(float((codes > 0).sum(-1).double().mean()))
    assert result["dead"] == 1 and result["samples"] == 200


def test_evaluate_synthetic_scores_a_dictionary_on_a_synthetic_stream():
    from saekit.data.synthetic import SyntheticData, SyntheticModel, synthetic_preset

    model = SyntheticModel(synthetic_preset("cpu", n_features=64, d_in=32, roots=4, orthogonalize_steps=0))
    # A TopK dictionary whose decoder is the 16 most frequent true features (encoder = decoderᵀ)
    d = saekit.Dictionary(saekit.DictionaryConfig(method="topk", d_in=32, d_sae=16, k=4))
    with torch.no_grad():
        d.W_dec.copy_(model.features[:16])
        d.W_enc.copy_(model.features[:16].T)
        d.b_dec.copy_(model.bias)
    result = evaluate_synthetic(d, SyntheticData(model, "test"), samples=3000, batch_size=1000)
    assert result["mcc"] == pytest.approx(1.0, abs=1e-6) and result["uniqueness"] == 1.0
    assert result["samples"] == 3000 and 3 < result["l0"] <= 4 and result["recall"] > 0.5
    with pytest.raises(saekit.SaekitError, match="ground-truth features"):
        evaluate_synthetic(d, [(torch.zeros(2, 32), torch.zeros(2, 64))])
