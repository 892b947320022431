"""Model-diffing figures (issue 22; docs/diffing.md).

    python benchmarks/diffing.py synthetic      # recipe choices on a pair with known differences
    python benchmarks/diffing.py kjv            # SmolLM2 vs its KJV copy, on KJV text, three budgets

`synthetic` trains BatchTopK crosscoders on `saekit.experiments.diff_toy.ToyPair` (40 shared features whose
second-model direction drifts slightly, 4 features 0.3× weaker in the first model, 4 first-only and 8
second-only ones) on a budget curve, one recipe choice changed at a time: decoder init (same /
independent blocks), decoder-norm-weighted selection (on / off), normalisation per model (per model /
one scalar for both, on a pair whose second model's activations are 4× larger), the learning rate, and
the L1 crosscoder. It prints the shared latents' decoder cosine (matched to the true shared features:
truth ≈ 0.995), reconstruction FVU, and recall / precision of the latents labelled model-specific, before
and after latent scaling.

`kjv` runs both models once over the KJV's train split at `resid_post.6` (activations cached in float16
under ~/.cache/saekit/bench; `--train-tokens` caps it), and once over held-out chapters (activations,
next-token losses), then trains the default crosscoder at each budget (the train split is ~0.95M tokens:
larger budgets are several passes) and prints the shared-latent cosine median, counts per class, how many
KJV-only latents latent scaling confirms, with examples, and the loss comparison. It writes each budget's report page.
The KJV copy comes from scripts/finetune_copy.py (run it once).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import machine

HOOKPOINT = "resid_post.6"


# ------------------------------------------------------------------------------------------ synthetic
def unweighted_method() -> str:
    """An ablation: BatchTopK that ranks crosscoder latents by f alone, not f·Σ_m‖d^m‖ (registered
    under its own name through the public method registry)."""
    from saekit.methods import BatchTopK, register

    class Unweighted(BatchTopK):
        name = "batchtopk_unweighted"

        def selection_scale(self, d: Any) -> None:
            return None

    register(Unweighted())
    return Unweighted.name


def synthetic_run(pair: Any, steps: int, options: dict[str, Any], joint_scale: bool = False) -> dict[str, Any]:
    import saekit
    from saekit.experiments.diff_toy import matched_shared_cosine, score_specific_latents
    from saekit.inspect.diffing import LatentScaling, classify_latents, diffing_summary, survives_latent_scaling
    from saekit.methods import get_method

    stream = pair.stream()
    test = pair.sample(20_000)
    if joint_scale:  # one scalar for both models (what per-model normalisation replaces)
        scale = (2 * pair.cfg.d_model) ** 0.5 / float(test.norm(dim=-1).mean())
        stream = ({k: v * scale for k, v in batch.items()} for batch in stream)
        options = {**options, "normalize_activations": "none"}
        test = test * scale
    if get_method(options["method"]).uses_k:
        options = {"k": 4, **options}
    spec = saekit.DictionarySpec.from_options(d_in=2 * pair.cfg.d_model, d_sae=128,
                                              source_hookpoints=["first", "second"], **options)
    started = time.perf_counter()
    d = saekit.train(stream, [spec], total_tokens=steps * 256, batch_size=256, progress=False)[0]
    seconds = time.perf_counter() - started
    f = d.encode(test)
    alive = (f > 0).any(0)
    masks = classify_latents(d, alive)
    row: dict[str, Any] = {"steps": steps, "seconds": seconds,
                           "fvu": float((test - d(test)).pow(2).sum() / (test - test.mean(0)).pow(2).sum()),
                           "dead": int((~alive).sum()), "shared_cos": diffing_summary(d, alive)["shared_cosine_median"],
                           "matched_cos": matched_shared_cosine(d, pair)}
    for source, key in ((0, "first_only"), (1, "second_only")):
        labelled = torch.nonzero(masks[key]).flatten()
        own = torch.full_like(labelled, source)
        scaling = LatentScaling(d, labelled, own)
        scaling.update(test, f)
        confirmed = torch.zeros_like(masks[key])
        confirmed[labelled[survives_latent_scaling(scaling.betas(), own)]] = True
        row[key] = score_specific_latents(d, pair, masks[key], source)
        row[key + "_scaled"] = score_specific_latents(d, pair, confirmed, source)
    return row


def synthetic(args: argparse.Namespace) -> None:
    from saekit.experiments.diff_toy import ToyPair, ToyPairConfig

    unweighted = unweighted_method()
    default = {"method": "batchtopk", "lr": 2e-3}  # ~2e-4·sqrt(2^14 / d_sae), sparsify's rule at d_sae 128
    recipes: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
        ("default (same init, weighted, per-model norm, lr 2e-3)", {}, default, False),
        ("independent init", {}, {**default, "crosscoder_init": "independent"}, False),
        ("unweighted selection", {}, {**default, "method": unweighted}, False),
        ("decoder not unit-norm", {}, {**default, "unit_norm_decoder": False}, False),
        ("lr 5e-4", {}, {**default, "lr": 5e-4}, False),
        ("lr 8e-3", {}, {**default, "lr": 8e-3}, False),
        ("lr 8e-3, independent init", {}, {**default, "lr": 8e-3, "crosscoder_init": "independent"}, False),
        ("L1 crosscoder (relu, λ 2, lr 1e-2)", {}, {"method": "relu", "sparsity_coefficient": 2.0, "lr": 1e-2},
         False),
        ("second model 4× louder: per-model norm", {"second_scale": 4.0}, default, False),
        ("second model 4× louder: one scalar", {"second_scale": 4.0}, default, True),
    ]
    print(f"synthetic pair, d_model 32, d_sae 128, k 4, batch 256, means over seeds {args.seeds}; "
          f"{machine(torch.get_num_threads())}")
    print(f"{'recipe':<52} {'steps':>5} {'FVU':>6} {'dead':>5} {'cos(shared)':>11} {'cos(matched)':>12} "
          f"{'2nd-only R/P':>13} {'after LS':>10} {'1st-only R/P':>13} {'after LS':>10}")
    rows = []
    for name, pair_options, options, joint in recipes:
        if args.only and not any(word in name for word in args.only):
            continue
        for steps in args.steps:
            runs = []
            for seed in args.seeds:
                pair = ToyPair(ToyPairConfig(seed=seed, **pair_options))
                runs.append(synthetic_run(pair, steps, {**options, "seed": seed}, joint))
                rows.append({"recipe": name, "seed": seed, **runs[-1]})

            def mean(get: Any, runs: list[dict[str, Any]] = runs) -> float:
                return float(torch.tensor([float(get(run)) for run in runs]).nanmean())

            def rp(key: str) -> str:
                return f"{mean(lambda r: r[key]['recall']):.2f}/{mean(lambda r: r[key]['precision']):.2f}"

            print(f"{name:<52} {steps:>5} {mean(lambda r: r['fvu']):>6.3f} {mean(lambda r: r['dead']):>5.1f} "
                  f"{mean(lambda r: r['shared_cos'] or 0):>11.3f} {mean(lambda r: r['matched_cos']):>12.3f} "
                  f"{rp('second_only'):>13} {rp('second_only_scaled'):>10} {rp('first_only'):>13} "
                  f"{rp('first_only_scaled'):>10}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


# ------------------------------------------------------------------------------------------------ kjv
def cached_train_activations(models: dict[str, Any], tokenizer: Any, text: Any, folder: Path,
                             tokens: int | None) -> torch.Tensor:
    """[n, 2·d] float16 activations of the KJV train split (both models; its first `tokens` tokens, all
    when None), computed once."""
    from saekit.data.stream import ActivationStream

    path = folder / f"train-{tokens or 'all'}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    started = time.perf_counter()
    stream = ActivationStream(models, text.token_stream(tokenizer, "train", max_tokens=tokens), [HOOKPOINT],
                              progress=True)
    rows = [torch.cat([batch[f"{label}/{HOOKPOINT}"] for label in models], dim=-1).half() for batch in stream]
    data = torch.cat(rows)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(data, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    print(f"cached {len(data):,} train tokens in {time.perf_counter() - started:.0f} s", flush=True)
    return data


def cached_held_out(models: dict[str, Any], tokenizer: Any, text: Any, folder: Path, tokens: int) -> Any:
    from saekit.experiments.diff import HeldOut, held_out_pass

    path = folder / f"held-out-{tokens}.pt"
    if path.exists():
        return HeldOut(**torch.load(path, weights_only=True))
    started = time.perf_counter()
    held = held_out_pass(models, tokenizer, text, HOOKPOINT, tokens, progress=True)
    torch.save(vars(held), path)
    print(f"held-out pass over {len(held.inputs):,} tokens in {time.perf_counter() - started:.0f} s", flush=True)
    return held


def epochs(data: torch.Tensor, labels: list[str], batch: int, seed: int = 0):
    """Batches of the cached rows, a fresh permutation every pass."""
    width = data.shape[1] // 2
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(order) - batch + 1, batch):
            rows = data[order[start:start + batch]].float()
            yield {f"{labels[0]}/{HOOKPOINT}": rows[:, :width], f"{labels[1]}/{HOOKPOINT}": rows[:, width:]}


def kjv(args: argparse.Namespace) -> None:
    import saekit
    from saekit.data.config import TextConfig
    from saekit.experiments.diff import crosscoder_spec, diff_report, load_pair
    from saekit.inspect.diff_page import write_diff_report
    from saekit.models.loading import cache_root

    if not (Path(args.copy) / "config.json").exists():
        sys.exit(f"no KJV copy at {args.copy}: run scripts/finetune_copy.py first")
    names = {"base": "offline-default", "kjv": str(args.copy)}
    labels = list(names)
    text = TextConfig(dataset="kjv", context_size=128, model_batch_size=16)
    models, tokenizer = load_pair(names)
    folder = cache_root() / "bench" / f"diff-kjv-{HOOKPOINT}"
    data = cached_train_activations(models, tokenizer, text, folder, args.train_tokens)
    held = cached_held_out(models, tokenizer, text, folder, args.eval_tokens)
    width = data.shape[1] // 2
    print(f"KJV pair at {HOOKPOINT}: {len(data):,} train tokens cached, {len(held.inputs):,} held-out tokens; "
          f"{machine(torch.get_num_threads())}", flush=True)
    out = Path(args.out)
    summary = []
    for budget in args.budgets:
        for init in args.inits:
            options = {"method": "batchtopk", "k": args.k, "crosscoder_init": init}
            if args.lr:
                options["lr"] = args.lr
            spec = crosscoder_spec({f"{label}/{HOOKPOINT}": width for label in labels}, names, HOOKPOINT, "kjv",
                                   text.context_size, options, args.expansion)
            started = time.perf_counter()
            d = saekit.train(epochs(data, labels, args.batch_size), [spec], total_tokens=budget,
                             batch_size=args.batch_size, progress=False)[0]
            seconds = time.perf_counter() - started
            report = diff_report(d, held, tokenizer, names, HOOKPOINT, "kjv (held-out chapters)")
            target = out / f"budget-{budget}-{init}"
            target.mkdir(parents=True, exist_ok=True)
            write_diff_report(target, report)
            summary.append(kjv_row(report, budget, init, seconds))
            print_kjv_row(summary[-1], report)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


def kjv_row(report: dict[str, Any], budget: int, init: str, seconds: float) -> dict[str, Any]:
    counts, scaling = report["summary"]["counts"], report["latent_scaling"]
    confirmed = [item for item in report["model_specific"]["kjv"] if item["survives"]]
    examples = []
    for item in confirmed[:5]:
        peaks = [c["tokens"][c["peak"]] for c in item["contexts"]]
        examples.append({"latent": item["latent"], "density": item["frequency"], "nu_error": item["nu_error"],
                         "nu_reconstruction": item["nu_reconstruction"], "peak_tokens": peaks})
    rotated = [{"latent": item["latent"], "decoder_cosine": item["decoder_cosine"], "density": item["frequency"],
                "peak_tokens": [c["tokens"][c["peak"]] for c in item["contexts"]]}
               for item in report["rotated_shared"][:5]]
    return {"budget": budget, "init": init, "train_seconds": round(seconds), "fvu": report["fvu"],
            "rotated_shared": rotated, "shared_cosine_quantiles": _quantiles(report["shared_cosines"]),
            "dead": report["dead"], "shared_cosine_median": report["summary"]["shared_cosine_median"],
            "counts": counts, "kjv_only_confirmed": scaling["second_only"]["survive"],
            "base_only_confirmed": scaling["first_only"]["survive"],
            "shared_baseline_nu": report["shared_baseline_nu"], "examples": examples,
            "loss": report["loss_difference"]["mean_loss"],
            "kjv_only_share_of_abs_delta": report["loss_difference"]["by_class"]["second_only"]["share_of_abs_delta"],
            "kjv_only_token_fraction": report["loss_difference"]["by_class"]["second_only"]["token_fraction"]}


def _quantiles(values: list[float]) -> list[float]:
    """The 1st, 10th, 50th and 90th percentiles (NaN when empty)."""
    if not values:
        return [float("nan")] * 4
    return torch.quantile(torch.tensor(values), torch.tensor([0.01, 0.1, 0.5, 0.9])).tolist()


def print_kjv_row(row: dict[str, Any], report: dict[str, Any]) -> None:
    c = row["counts"]
    print(f"budget {row['budget']:>9,} init {row['init']:<11} train {row['train_seconds']:>5} s | FVU base "
          f"{row['fvu'][0]:.3f} kjv {row['fvu'][1]:.3f} | dead {row['dead']} | shared cos median "
          f"{row['shared_cosine_median']:.3f} | shared {c['shared']} base-only {c['first_only']} "
          f"({row['base_only_confirmed']} confirmed) kjv-only {c['second_only']} ({row['kjv_only_confirmed']} "
          f"confirmed) other {c['other']} | shared baseline ν_ε {row['shared_baseline_nu']['nu_error']:.2f}",
          flush=True)
    print(f"    held-out loss base {row['loss'][0]:.3f} kjv {row['loss'][1]:.3f}; tokens where a kjv-only latent "
          f"fires: {row['kjv_only_token_fraction']:.3f} of tokens, {row['kjv_only_share_of_abs_delta']:.3f} of Σ|Δ|")
    for example in row["examples"]:
        print(f"    kjv-only latent {example['latent']} (density {example['density']:.2e}, ν_ε "
              f"{example['nu_error']:.2f}, ν_r {example['nu_reconstruction']:.2f}): peaks on "
              f"{example['peak_tokens']}")
    q = row["shared_cosine_quantiles"]
    print(f"    shared-latent decoder cosine percentiles 1/10/50/90: {q[0]:.3f} {q[1]:.3f} {q[2]:.3f} {q[3]:.3f}")
    for example in row["rotated_shared"]:
        print(f"    most-rotated shared latent {example['latent']} (cos {example['decoder_cosine']:.3f}, density "
              f"{example['density']:.2e}): peaks on {example['peak_tokens']}")
    top = report["loss_difference"]["latents"][:3]
    print("    latents tracking Δ: " + ", ".join(f"{t['latent']} ({t['class']}, corr {t['correlation']:.2f})"
                                                for t in top))


def main() -> None:
    from saekit.models.loading import cache_root

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synthetic")
    s.add_argument("--steps", type=int, nargs="+", default=[100, 400, 1600])
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    s.add_argument("--only", nargs="+", default=None, help="Only the recipes whose name contains one of these.")
    s.add_argument("--json", default=None, help="Also write the rows here.")
    k = sub.add_parser("kjv")
    k.add_argument("--copy", default=str(cache_root() / "models" / "smollm2-kjv"))
    k.add_argument("--budgets", type=int, nargs="+", default=[100_000, 500_000, 2_000_000])
    k.add_argument("--inits", nargs="+", default=["same"], choices=("same", "independent"))
    k.add_argument("--k", type=int, default=32)
    k.add_argument("--lr", type=float, default=None)
    k.add_argument("--expansion", type=int, default=4)
    k.add_argument("--batch-size", type=int, default=1024)
    k.add_argument("--eval-tokens", type=int, default=16_384)
    k.add_argument("--train-tokens", type=int, default=None,
                   help="Cache only the first N train tokens (default: the whole train split, ~0.95M); larger "
                        "budgets are passes over them.")
    k.add_argument("--out", default="runs/diff-kjv-bench")
    for command in (s, k):
        command.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    {"synthetic": synthetic, "kjv": kjv}[args.command](args)
    print(f"total {time.perf_counter() - started:.0f} s; {machine(args.threads)}")


if __name__ == "__main__":
    main()
