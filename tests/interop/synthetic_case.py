"""saekit's synthetic benchmark against SAELens's (sae-lens 6.54.12, the peer environment), both halves:

- `prepare(work)` writes what the peer side (`peer_helper.py synthetic WORKDIR`) reads: three dictionaries
  in SAELens's format (TopK, JumpReLU, standard ReLU; decoders near some true features, with a duplicate
  and a dead latent), held-out ground-truth codes of saekit's CPU-preset model with its features and bias,
  and the same model's config in SAELens's terms. It returns saekit's metrics on those dictionaries and
  samples and saekit's generator statistics (compensation "saelens", the rule SAELens 6.54 uses).
- `compare(work, ours)` reads the peer's outputs and returns the cross-check figures: the largest metric
  difference per dictionary, the hierarchy and probability agreement, and the generator statistics side
  by side (firing-rate z-scores, L0, exclusivity, scaling by the parent).

Used by tests/interop/test_synthetic_peers.py (which asserts) and benchmarks/synth_peers.py (which prints).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import saekit
from saekit.data.synthetic import SyntheticConfig, SyntheticData, SyntheticModel, synthetic_preset
from saekit.evaluation.synthetic import evaluate_synthetic
from saekit.formats import detect
from tests.interop.synthetic_stats import CodeStatistics

EVAL_SAMPLES = 8192
GENERATOR_SAMPLES = 65536
METRICS = {"mcc": "mcc", "uniqueness": "uniqueness", "f1": ("classification", "f1_score"),
           "precision": ("classification", "precision"), "recall": ("classification", "recall"),
           "accuracy": ("classification", "accuracy"), "explained_variance": "explained_variance",
           "shrinkage": "shrinkage", "l0": "sae_l0", "true_l0": "true_l0", "dead": "dead_latents"}


def saelens_config(cfg: SyntheticConfig) -> dict[str, Any]:
    """The same model as SAELens's SyntheticModelConfig.to_dict() (orthogonalisation left out: it moves
    directions only, and these comparisons are about firing)."""
    return {
        "num_features": cfg.n_features, "hidden_dim": cfg.d_in, "seed": cfg.seed, "dtype": "float32",
        "firing_probability": {"generator_name": "zipfian", "exponent": cfg.zipf_exponent,
                               "max_prob": cfg.p_max, "min_prob": cfg.p_min},
        "hierarchy": {"total_root_nodes": cfg.roots, "branching_factor": cfg.branching,
                      "max_depth": cfg.max_depth, "mutually_exclusive_portion": cfg.exclusive_portion,
                      "mutually_exclusive_min_depth": cfg.exclusive_min_depth,
                      "mutually_exclusive_max_depth": None,
                      "compensate_probabilities": cfg.compensate_probabilities,
                      "scale_children_by_parent": cfg.scale_children_by_parent},
        "orthogonalization": None,
        "correlation": {"rank": cfg.correlation_rank, "correlation_scale": cfg.correlation_scale, "seed": None},
        "mean_firing_magnitudes": {"generator_name": "linear", "start": cfg.magnitude_start,
                                   "end": cfg.magnitude_end},
        "std_firing_magnitudes": {"generator_name": "folded_normal", "mean": cfg.magnitude_spread_mean,
                                  "std": cfg.magnitude_spread_std, "min_value": None, "max_value": None},
        "bias": cfg.bias_norm,
    }


def dictionaries(model: SyntheticModel, d_sae: int = 96) -> dict[str, saekit.Dictionary]:
    """Decoders near 80 of the true features (noisy), 15 random rows, one copy of row 0; encoders tied."""
    g = torch.Generator().manual_seed(11)
    n, d_in = model.features.shape
    picks = torch.randperm(n, generator=g)[:80]
    rows = model.features[picks] + 0.3 * torch.randn(80, d_in, generator=g) / d_in ** 0.5
    rows = torch.cat([rows, torch.randn(d_sae - 81, d_in, generator=g), rows[:1]])
    rows = rows / rows.norm(dim=-1, keepdim=True)
    out = {}
    for method, extra in (("topk", dict(k=6)), ("jumprelu", {}), ("relu", {})):
        d = saekit.Dictionary(saekit.DictionaryConfig(method=method, d_in=d_in, d_sae=d_sae, **extra))
        with torch.no_grad():
            d.W_dec.copy_(rows)
            d.W_enc.copy_(rows.T)
            d.b_dec.copy_(model.bias)
            d.b_enc.fill_(-1.0)
            if method == "jumprelu":
                d.threshold.fill_(2.0)
            d.W_enc[:, 50] = 0.0  # latent 50's pre-activation is b_enc = −1: a dead latent
        d.provenance.model_name, d.provenance.hookpoint = "synthetic", "synthetic"
        out[method] = d
    return out


def prepare(work: Path) -> dict[str, Any]:
    root = work / "synthetic"
    root.mkdir(parents=True, exist_ok=True)
    cfg = synthetic_preset("cpu", compensation="saelens", orthogonalize_steps=0)
    model = SyntheticModel(cfg)
    held_out = SyntheticData(model, "test")
    x, codes = next(iter(held_out.batches(EVAL_SAMPLES, EVAL_SAMPLES)))
    save_file({"features": model.features.contiguous(), "bias": model.bias.contiguous(),
               "codes": codes.contiguous()}, str(root / "samples.safetensors"))
    metrics = {}
    for name, d in dictionaries(model).items():
        detect.save_as(d, root / "dictionaries" / name, "saelens")
        metrics[name] = evaluate_synthetic(d, [(x, codes)], features=model.features)
    (root / "generator_config.json").write_text(json.dumps({"config": saelens_config(cfg),
                                                            "samples": GENERATOR_SAMPLES}))
    return {"metrics": metrics, "generator": generator_statistics(cfg), "config": cfg}


def generator_statistics(cfg: SyntheticConfig, samples: int = GENERATOR_SAMPLES) -> dict[str, Any]:
    model = SyntheticModel(cfg)
    h = model.hierarchy
    stats = CodeStatistics(h.parent, h.exclusive, model.mean_magnitudes)
    data = SyntheticData(model, chunk_size=4096)
    for index in range(samples // 4096):
        stats.update(data.chunk(index)[1])
    return {**stats.result(), "probabilities": model.probabilities, "std_magnitudes": model.std_magnitudes,
            "parent": h.parent, "exclusive": h.exclusive, "expected_rates": model.expected_rates}


def peer_value(result: dict[str, Any], key: Any) -> float:
    if isinstance(key, tuple):
        return float(result[key[0]][key[1]])
    return float(result[key])


def rate_z_scores(ours: list[float], theirs: list[float], n_ours: int, n_theirs: int) -> torch.Tensor:
    """Two-sample z-scores of per-feature firing rates."""
    a, b = torch.tensor(ours, dtype=torch.float64), torch.tensor(theirs, dtype=torch.float64)
    pooled = (a * n_ours + b * n_theirs) / (n_ours + n_theirs)
    se = (pooled * (1 - pooled) * (1 / n_ours + 1 / n_theirs)).clamp_min(1e-30).sqrt()
    return (a - b) / se


def compare(work: Path, ours: dict[str, Any]) -> dict[str, Any]:
    root = work / "synthetic"
    theirs_metrics = json.loads((root / "metrics.json").read_text())
    metric_rows = []
    for name, mine in ours["metrics"].items():
        peer = theirs_metrics[name]
        diffs = {metric: abs(float(mine[metric]) - peer_value(peer, key)) for metric, key in METRICS.items()}
        metric_rows.append({"dictionary": name, **{m: float(mine[m]) for m in ("mcc", "f1", "l0")},
                            "max_abs_diff": max(diffs.values()),
                            "worst_metric": max(diffs, key=diffs.__getitem__)})
    tensors = load_file(str(root / "generator.safetensors"))
    peer_stats = json.loads((root / "generator.json").read_text())
    gen = ours["generator"]
    z = rate_z_scores(gen["rates"], peer_stats["rates"], gen["samples"], peer_stats["samples"])
    probability_diff = float((gen["probabilities"].double() - tensors["probabilities"].double()).abs().max())
    l0_se = math.sqrt(gen["l0_std"] ** 2 / gen["samples"] + peer_stats["l0_std"] ** 2 / peer_stats["samples"])
    return {
        "metrics": metric_rows,
        "hierarchy_identical": bool(torch.equal(gen["parent"], tensors["parent"]))
        and bool(torch.equal(gen["exclusive"], tensors["exclusive"].bool())),
        "probability_max_abs_diff": probability_diff,
        "std_magnitude_max_abs_diff": float((gen["std_magnitudes"] - tensors["std_magnitudes"]).abs().max()),
        "rate_z_mean_square": float(z.pow(2).mean()),
        "rate_z_max": float(z.abs().max()),
        "rate_z_over_3": float((z.abs() > 3).double().mean()),
        "l0": {"saekit": gen["l0"], "saelens": peer_stats["l0"], "z": (gen["l0"] - peer_stats["l0"]) / l0_se},
        "orphans": {"saekit": gen["orphans"], "saelens": peer_stats["orphans"]},
        "exclusive_co_firing": {"saekit": gen["exclusive_co_firing"], "saelens": peer_stats["exclusive_co_firing"]},
        "child_over_scaled_parent": {"saekit": gen["child_over_scaled_parent"],
                                     "saelens": peer_stats["child_over_scaled_parent"]},
        "samples": {"saekit": gen["samples"], "saelens": peer_stats["samples"]},
    }
