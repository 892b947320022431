"""Sparse probing of dictionaries on the sae-probes datasets ("normal" setting), against a probe on the
raw activations.

Per dataset and hookpoint: the model runs once over the prompts (last-token activations, optionally
cached on disk), the rows are split as sae-probes splits them, a logistic-regression baseline is fit on
the raw activations (L2, as sae-probes' `run_baseline_evals(method="logreg")`), and for each dictionary
reading that hookpoint the activations are encoded (batches of 128) and a k-sparse probe is fit per k on
the latents ranked by mean difference on the training rows. Defaults follow SAEBench's use of
sae-probes (L1 probes on latents) with the ks of saekit's issue 19: 1, 2, 5, 16.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.evaluation.probing.activations import ActivationCache, last_token_activations, model_fingerprint
from saekit.evaluation.probing.data import (
    binary_datasets,
    check_names,
    data_directory,
    normal_split_sizes,
    read_dataset,
    split_indices,
)
from saekit.evaluation.probing.probes import PENALTIES, fit_probe, sparse_probes

DEFAULT_KS = (1, 2, 5, 16)
# Five small datasets (728-2000 rows, mostly short prompts): a CPU run over them takes minutes on a
# ~135M model.
QUICK_DATASETS = ("117_us_state_FL", "118_us_state_CA", "154_athlete_sport_football", "125_world_country_Italy",
                  "95_toxic_is")


@dataclass
class ProbingOptions:
    """How the probes are fit (sae-probes' names in brackets)."""

    ks: Sequence[int] = DEFAULT_KS
    penalty: str = "l1"  # of the k-sparse probes on latents [reg_type]
    baseline_penalty: str = "l2"  # of the probe on raw activations (sae-probes' logreg baseline)
    seed: int = 42
    binarize: bool = False  # probes read latent != 0 instead of the value
    normalise: bool = True  # rank latents after mean-activation normalisation [mean_diff_normalization]
    max_length: int = 1024  # prompt tokens kept (left truncation)
    batch_size: int = 16  # prompts per model forward
    data_dir: str | Path | None = None  # the sae-probes data folder (default: data.data_directory())
    cache_dir: str | Path | None = None  # activation cache (default: none)
    progress: bool = False

    def __post_init__(self) -> None:
        if not self.ks or any(not isinstance(k, int) or k < 1 for k in self.ks):
            raise SaekitError(f"ks must be positive integers, got {list(self.ks)}")
        for name in ("penalty", "baseline_penalty"):
            if getattr(self, name) not in PENALTIES:
                raise SaekitError(f"{name} must be one of {', '.join(PENALTIES)}, got {getattr(self, name)!r}")
        if self.max_length < 2 or self.batch_size < 1:
            raise SaekitError("max_length must be at least 2 and batch_size at least 1")


def available_datasets(data_dir: str | Path | None = None) -> list[str]:
    """The 113 binary datasets of sae-probes (names `{number}_{tag}`)."""
    return list(binary_datasets(data_directory(data_dir)))


def check_datasets(names: Sequence[str], data_dir: str | Path | None = None) -> None:
    """Fail in one line on an unknown dataset name (before any model is loaded)."""
    check_names(tuple(names), data_directory(data_dir))


@torch.no_grad()
def encode_rows(d: Dictionary, x: np.ndarray, batch: int = 128) -> np.ndarray:
    device, dtype = d.W_dec.device, d.W_dec.dtype
    parts = [d.encode(torch.from_numpy(x[i:i + batch]).to(device=device, dtype=dtype)).float().cpu().numpy()
             for i in range(0, len(x), batch)]
    return np.concatenate(parts)


def _check(dictionaries: dict[str, Dictionary]) -> None:
    for name, d in dictionaries.items():
        if d.cfg.n_sources > 1:
            raise SaekitError(f"{name}: sparse probing of crosscoders is not supported (probe one source)")
        if not d.provenance.hookpoint:
            raise SaekitError(f"{name} does not record its hookpoint: probing reads activations there")


def sparse_probing(model: nn.Module, tokenizer: Any, dictionaries: dict[str, Dictionary],
                   datasets: Sequence[str] = QUICK_DATASETS, options: ProbingOptions | None = None
                   ) -> dict[str, Any]:
    """{"rows": one row per (dictionary, dataset) with the baseline's and each k's test AUC,
    "summary": mean test AUC over datasets per dictionary and k, "timing": seconds per stage}.

    Every dictionary reads its own hookpoint (a transcoder its input site); dictionaries sharing a
    hookpoint share the model pass and the baseline."""
    from saekit.models.sites import resolve_hookpoints

    options = options or ProbingOptions()
    _check(dictionaries)
    if not datasets:
        raise SaekitError("no datasets to probe")
    folder = data_directory(options.data_dir)
    cache = ActivationCache(options.cache_dir, model_fingerprint(model)) if options.cache_dir else None
    by_hookpoint: dict[str, dict[str, Dictionary]] = {}
    for name, d in dictionaries.items():
        by_hookpoint.setdefault(str(d.provenance.hookpoint), {})[name] = d
    points = {h: resolve_hookpoints(model, [h])[0] for h in by_hookpoint}
    rows: list[dict[str, Any]] = []
    timing = {"activations_s": 0.0, "encode_s": 0.0, "baseline_s": 0.0, "probes_s": 0.0}
    for dataset_name in datasets:
        data = read_dataset(dataset_name, folder)
        num_train, num_test = normal_split_sizes(data.full_size, len(data.labels))
        train, test = split_indices(data.labels, num_train, num_test, seed=options.seed)
        y_train, y_test = data.labels[train], data.labels[test]
        for hookpoint, members in by_hookpoint.items():
            start = time.perf_counter()
            x = cache.load(dataset_name, hookpoint, options.max_length, len(data.prompts)) if cache else None
            if x is None:
                x = last_token_activations(model, tokenizer, data.prompts, points[hookpoint], options.batch_size,
                                           options.max_length, options.progress, description=dataset_name)
                if cache:
                    cache.save(dataset_name, hookpoint, options.max_length, x)
            timing["activations_s"] += time.perf_counter() - start
            start = time.perf_counter()
            baseline = fit_probe(x[train], y_train, x[test], y_test, options.baseline_penalty, options.seed)
            timing["baseline_s"] += time.perf_counter() - start
            for name, d in members.items():
                start = time.perf_counter()
                latents_train, latents_test = encode_rows(d, x[train]), encode_rows(d, x[test])
                timing["encode_s"] += time.perf_counter() - start
                start = time.perf_counter()
                probes = sparse_probes(latents_train, y_train, latents_test, y_test, list(options.ks),
                                       options.penalty, options.seed, options.binarize, options.normalise)
                timing["probes_s"] += time.perf_counter() - start
                row: dict[str, Any] = {"dictionary": name, "dataset": dataset_name, "hookpoint": hookpoint,
                                       "n_train": int(num_train), "n_test": int(num_test),
                                       "baseline_auc": baseline.test_auc}
                row.update({f"auc_k{p['k']}": p["test_auc"] for p in probes})
                row["baseline"] = baseline.to_dict()
                row["probes"] = probes
                rows.append(row)
    return {"rows": rows, "summary": summarise(rows, options.ks), "timing": timing,
            "options": {"ks": list(options.ks), "penalty": options.penalty,
                        "baseline_penalty": options.baseline_penalty, "seed": options.seed,
                        "binarize": options.binarize, "max_length": options.max_length}}


def summarise(rows: list[dict[str, Any]], ks: Sequence[int]) -> list[dict[str, Any]]:
    """Mean test AUC over datasets, per dictionary: the baseline's and each k's."""
    out = []
    for name in dict.fromkeys(row["dictionary"] for row in rows):
        mine = [row for row in rows if row["dictionary"] == name]
        summary = {"dictionary": name, "datasets": len(mine),
                   "baseline_auc": float(np.mean([r["baseline_auc"] for r in mine]))}
        summary.update({f"auc_k{k}": float(np.mean([r[f"auc_k{k}"] for r in mine])) for k in ks})
        out.append(summary)
    return out


def plot_probing(result: dict[str, Any], path: str | Path) -> Path:
    """Test AUC against k per dataset (one panel per dictionary), the baseline as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    ks = result["options"]["ks"]
    names = list(dict.fromkeys(row["dictionary"] for row in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        for i, row in enumerate(r for r in rows if r["dictionary"] == name):
            color = f"C{i % 10}"
            ax.plot(ks, [row[f"auc_k{k}"] for k in ks], "o-", color=color, label=row["dataset"])
            ax.axhline(row["baseline_auc"], color=color, ls="--", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k (latents in the probe)")
        ax.set_ylabel("test AUC")
        ax.set_title(f"{name}: k-sparse probes (solid) vs raw activations (dashed)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
