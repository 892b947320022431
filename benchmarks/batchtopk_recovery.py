"""Issue 19 part 4: does BatchTopK (and Matryoshka) recover fewer true features than per-sample TopK at
the same mean L0, and why? Trains TopK, BatchTopK and Matryoshka side by side (one sweep per data set)
with one factor changed at a time (AuxK off, the method's own default learning rate, TopK's Adam β2,
another seed, a small decoder init), on

- the flat toy of `saekit toy` (d 256, 512 features, mean 5 active per row with a Bernoulli count that
  varies per row, correlated firing; width 512, k 5, 2M rows, lr 1e-3 as `saekit toy` trains them), and
- the hierarchical CPU preset of `saekit bench synth` (1,024 features in 128 dims, width 256, L0 7).

For every dictionary it prints: features recovered (best |cos| with a decoder row > 0.9 and > 0.99;
among all features, the frequent half and the rare half — on the hierarchical preset among the 256
most frequent features, the most a width-256 dictionary can hold), MMCS, MCC, F1, L0, dead latents on
held-out rows, and for BatchTopK/Matryoshka the same F1/L0/dead with the training-time batch selection
instead of the inference threshold, plus the correlation between a row's L0 and its true number of
active features (how much the per-row budget follows the data).

    .venv/bin/python benchmarks/batchtopk_recovery.py [--only toy|synth] [--toy-tokens 2000000] [--toy small]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import machine  # benchmarks/ is on sys.path when run as a script
from torch import Tensor

import saekit
from saekit.data.synthetic import SyntheticData, SyntheticModel, synthetic_preset
from saekit.data.toy import ToyConfig, ToyData
from saekit.evaluation.synthetic import abs_cosines, evaluate_synthetic
from saekit.experiments.synth import bench_preset, bench_spec
from saekit.inspect.tables import format_table
from saekit.spec import DictionarySpec

COLUMNS = ["data", "variant", "l0", "rec>0.9", "rec>0.99", "rec>0.9 frequent", "rec>0.9 rare", "mmcs", "mcc",
           "f1", "dead", "batch-sel f1", "batch-sel l0", "batch-sel dead", "corr(l0, true l0)"]

# Each variant changes one thing against its method's base setting.
TOY_VARIANTS: dict[str, dict[str, Any]] = {
    "topk": dict(method="topk"),
    "topk seed 1": dict(method="topk", seed=1),
    "topk auxk off": dict(method="topk", aux_k=0),
    "batchtopk": dict(method="batchtopk"),
    "batchtopk seed 1": dict(method="batchtopk", seed=1),
    "batchtopk auxk off": dict(method="batchtopk", aux_k=0),
    "batchtopk own default lr": dict(method="batchtopk", lr=None),
    "batchtopk topk's adam betas": dict(method="batchtopk", adam_betas=(0.9, 0.999)),
    "batchtopk decoder init 0.1": dict(method="batchtopk", decoder_init_norm=0.1),
    "matryoshka": dict(method="matryoshka"),
    "matryoshka auxk off": dict(method="matryoshka", aux_k=0),
}
SYNTH_VARIANTS: dict[str, dict[str, Any]] = {
    "topk": dict(method="topk"),
    "batchtopk": dict(method="batchtopk"),
    "batchtopk seed 1": dict(method="batchtopk", seed=1),
    "batchtopk auxk off": dict(method="batchtopk", aux_k=0),
    "batchtopk own default lr": dict(method="batchtopk", lr=None),
    "batchtopk topk's adam betas": dict(method="batchtopk", adam_betas=(0.9, 0.999)),
    "matryoshka": dict(method="matryoshka"),
    "matryoshka auxk off": dict(method="matryoshka", aux_k=0),
}


def recovery(decoder: Tensor, features: Tensor, frequent: Tensor) -> dict[str, float]:
    """How many true features some decoder row points at, overall and in the frequent / rare halves."""
    best = abs_cosines(features, decoder).max(dim=1).values
    rare = ~frequent
    return {"rec>0.9": int((best > 0.9).sum()), "rec>0.99": int((best > 0.99).sum()),
            "rec>0.9 frequent": f"{int((best[frequent] > 0.9).sum())}/{int(frequent.sum())}",
            "rec>0.9 rare": f"{int((best[rare] > 0.9).sum())}/{int(rare.sum())}",
            "mmcs": float(best.mean())}


def row_l0_correlation(d: Any, batches: list[tuple[Tensor, Tensor]]) -> float:
    """Pearson correlation between each held-out row's L0 and its number of active true features."""
    l0 = torch.cat([(d.encode(x) != 0).sum(-1) for x, _ in batches]).double()
    true = torch.cat([(codes != 0).sum(-1) for _, codes in batches]).double()
    if l0.std() == 0:
        return 0.0
    return float(torch.corrcoef(torch.stack([l0, true]))[0, 1])


def score(data: str, name: str, d: Any, batches: list[tuple[Tensor, Tensor]], features: Tensor,
          frequent: Tensor, candidates: Tensor | None = None) -> dict[str, Any]:
    """Recovery is counted among `candidates` (default all) features; the synthetic metrics on all."""
    with torch.no_grad():
        metrics = evaluate_synthetic(d, batches, features=features)
        keep = candidates if candidates is not None else torch.ones(len(features), dtype=torch.bool)
        row: dict[str, Any] = {"data": data, "variant": name, "l0": metrics["l0"], "mcc": metrics["mcc"],
                               "f1": metrics["f1"], "dead": metrics["dead"],
                               **recovery(d.W_dec, features[keep], frequent[keep]),
                               "corr(l0, true l0)": row_l0_correlation(d, batches)}
        if hasattr(d, "threshold"):  # BatchTopK / Matryoshka: also score the training-time batch selection
            batch_selection: Callable[[Tensor], Tensor] = lambda x: d.encode_with_details(x, training=True).latents
            by_batch = evaluate_synthetic(d, batches, features=features, encode=batch_selection)
            row.update({"batch-sel f1": by_batch["f1"], "batch-sel l0": by_batch["l0"],
                        "batch-sel dead": by_batch["dead"], "threshold": float(d.threshold.mean())})
    return row


def specs_for(variants: dict[str, dict[str, Any]], base: Callable[[str, dict[str, Any]], DictionarySpec]
              ) -> list[DictionarySpec]:
    return [base(name, dict(options)) for name, options in variants.items()]


# `saekit toy`'s defaults (width = G, k = mean active 5, batch 1024), and a small problem for quick checks
# (the CLI toy test's: 2x overcomplete, k = mean active 3, batch 512).
TOY_SETTINGS: dict[str, dict[str, Any]] = {
    "default": dict(toy=ToyConfig(), d_sae=512, k=5, batch=1024, prefixes=[16, 64, 256, 512]),
    "small": dict(toy=ToyConfig(d_in=32, n_features=48, mean_active=3), d_sae=96, k=3, batch=512,
                  prefixes=[3, 12, 48, 96]),
}


def run_toy(tokens: int, setting: str = "default") -> list[dict[str, Any]]:
    chosen = TOY_SETTINGS[setting]
    toy: ToyConfig = chosen["toy"]
    train_data = ToyData(toy)
    test = ToyData(toy, split="test")
    batches = [test.chunk(1000 + i) for i in range(20)]  # 20,480 held-out rows

    def base(name: str, options: dict[str, Any]) -> DictionarySpec:
        method = options.pop("method")
        values: dict[str, Any] = dict(method=method, d_in=toy.d_in, d_sae=chosen["d_sae"], k=chosen["k"],
                                      lr=1e-3, dead_tokens=100 * chosen["batch"],
                                      name=name.replace(" ", "-").replace("'", ""))
        if method == "matryoshka":
            values["matryoshka_prefixes"] = chosen["prefixes"]  # 1/32, 1/8, 1/2 and all, as published
        values.update(options)  # lr=None: the method's own default learning rate
        return DictionarySpec.from_options(**values)

    started = time.perf_counter()
    dictionaries = saekit.train(train_data, specs_for(TOY_VARIANTS, base), total_tokens=tokens,
                                batch_size=chosen["batch"], progress=False)
    print(f"flat toy ({setting}): trained {len(dictionaries)} dictionaries on {tokens:,} rows in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    frequent = torch.arange(toy.n_features) < toy.n_features // 2  # p_i ∝ 0.99^i: low index = frequent
    return [score("toy", name, d, batches, train_data.features, frequent)
            for name, d in zip(TOY_VARIANTS, dictionaries)]


def run_synth(samples: int | None) -> list[dict[str, Any]]:
    preset = bench_preset("cpu", total_samples=samples)
    l0 = preset.reference_l0
    model = SyntheticModel(synthetic_preset(preset.data))
    held_out = list(SyntheticData(model, split="test").batches(preset.eval_samples, 4096))

    def base(name: str, options: dict[str, Any]) -> DictionarySpec:
        method = options.pop("method")  # lr=None in options: the method's own default learning rate
        return bench_spec(preset, method, l0, model.cfg.d_in, name=name.replace(" ", "-").replace("'", ""), **options)

    started = time.perf_counter()
    dictionaries = saekit.train(SyntheticData(model), specs_for(SYNTH_VARIANTS, base),
                                total_tokens=preset.total_samples, batch_size=preset.batch_size, progress=False)
    print(f"hierarchical CPU preset: trained {len(dictionaries)} dictionaries at L0 {l0:g} on "
          f"{preset.total_samples:,} samples in {time.perf_counter() - started:.0f} s", flush=True)
    rates = model.expected_rates
    order = rates.argsort(descending=True)
    candidates = torch.zeros(len(rates), dtype=torch.bool)
    candidates[order[:preset.d_sae]] = True  # the most a width-d_sae dictionary can hold
    frequent = torch.zeros(len(rates), dtype=torch.bool)
    frequent[order[:preset.d_sae // 2]] = True
    return [score("hierarchical", name, d, held_out, model.features, frequent, candidates)
            for name, d in zip(SYNTH_VARIANTS, dictionaries)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["toy", "synth"], default=None)
    parser.add_argument("--toy-tokens", type=int, default=2_000_000)
    parser.add_argument("--toy", choices=list(TOY_SETTINGS), default="default",
                        help="default: `saekit toy`'s problem; small: d 32, 48 features, width 96, k 3.")
    parser.add_argument("--synth-samples", type=int, default=None, help="Default: the CPU preset's.")
    parser.add_argument("--toy-variants", type=json.loads, default=None,
                        help='Replace the toy variants: JSON {"name": {"method": ..., option: value}}.')
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/batchtopk-recovery.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    if args.toy_variants:
        TOY_VARIANTS.clear()
        TOY_VARIANTS.update(args.toy_variants)
    if args.only in (None, "toy"):
        rows += run_toy(args.toy_tokens, args.toy)
        print(format_table(rows, COLUMNS), flush=True)
    if args.only in (None, "synth"):
        synth_rows = run_synth(args.synth_samples)
        print(format_table(synth_rows, COLUMNS), flush=True)
        rows += synth_rows
    print(f"total {time.perf_counter() - started:.0f} s ({machine(args.threads)})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
