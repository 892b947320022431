"""`saekit eval`: core and spliced metrics of saved dictionaries on held-out tokens of a model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from saekit.commands.common import print_table
from saekit.commands.sources import add_model_arguments, open_model, text_config, warn_other_model
from saekit.errors import SaekitError
from saekit.io import atomic_write_json

LAYER_TABLE = ["layer", "fvu", "l0", "dead_fraction", "delta_lm_loss", "kl_spliced"]
TABLE = ["name", "method", "l0", "fvu", "explained_variance", "ce_loss_score", "kl_score",
         "delta_lm_loss", "dead_fraction", "relative_reconstruction_bias"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="Evaluate dictionaries spliced into their model (CE/KL scores, FVU, L0, ...).",
        description="For each dictionary, on held-out tokens (the test split) of the model: CE loss "
                    "clean / spliced / zero-ablated, CE-loss score, KL(clean || spliced) and KL score, "
                    "delta LM loss, and every core metric. A transcoder set or CLT replaces every MLP "
                    "output at once (the replacement model) and reports per-layer figures; a sparse attention "
                    "replacement is spliced into the attention output it replaces. Results as JSON and a "
                    "table. With --probing: sparse probing on the sae-probes datasets instead (k-sparse "
                    "probes on latents vs a probe on raw activations, test AUC; docs/evaluation.md).")
    parser.add_argument("dictionaries", nargs="*", type=Path,
                        help="Dictionary directories (transcoder sets, CLTs and sparse attention replacements "
                             "too).")
    parser.add_argument("--tokens", type=int, default=20_000, help="Held-out tokens to evaluate on.")
    parser.add_argument("--encoder", default="dictionary",
                        choices=("dictionary", "topk", "matching-pursuit", "gradient-pursuit"),
                        help="How latents are computed: the dictionary's encoder, or an inference-time "
                             "encoder over its decoder (needs --l0).")
    parser.add_argument("--l0", type=int, default=None, help="Atoms per token for --encoder.")
    parser.add_argument("--out", type=Path, default=None, help="Write results JSON here.")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bar.")
    parser.add_argument("--per-layer", action=argparse.BooleanOptionalAction, default=True,
                        help="Transcoder sets and CLTs: also splice each layer alone (one more forward per "
                             "layer and batch) for the per-layer CE/KL figures.")
    probing = parser.add_argument_group("sparse probing (--probing)")
    probing.add_argument("--probing", action="store_true",
                         help="Run sparse probing on the sae-probes datasets instead of spliced metrics.")
    probing.add_argument("--datasets", nargs="+", default=None,
                         help="sae-probes datasets ({number}_{tag}; default: five small ones, us_state FL and "
                              "CA, athlete_sport_football, world_country_Italy, toxic_is; `all` for the 113 "
                              "binary datasets).")
    probing.add_argument("--list-datasets", action="store_true", help="List the datasets and exit.")
    probing.add_argument("--ks", nargs="+", type=int, default=None,
                         help="Latents per sparse probe (default: 1 2 5 16).")
    probing.add_argument("--probe-penalty", choices=("l1", "l2"), default="l1",
                         help="Regularisation of the probes on latents (default l1, as SAEBench; the raw-"
                              "activation baseline is always l2, as sae-probes' logreg baseline).")
    probing.add_argument("--probe-seed", type=int, default=42, help="Seed of the split and the probes.")
    probing.add_argument("--max-prompt-tokens", type=int, default=1024,
                         help="Prompt tokens kept (left truncation, BOS kept).")
    probing.add_argument("--probing-data", type=Path, default=None,
                         help="sae-probes data folder (default: the one that `python -m "
                              "saekit.evaluation.probing.fetch` unpacked into the saekit cache).")
    probing.add_argument("--probing-cache", type=Path, default=None,
                         help="Cache last-token activations here, per model and hookpoint (reruns and other "
                              "dictionaries of the same hookpoint skip the model).")
    add_model_arguments(parser, hookpoints=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import saekit
    from saekit.attention import SparseAttention, is_attention_dir
    from saekit.attention import load as load_attention
    from saekit.attention.evaluate import evaluate_replacements
    from saekit.circuits import CrossLayerTranscoder
    from saekit.circuits.replacement import evaluate_layered_on_text, model_name_of
    from saekit.circuits.transcoder_set import TranscoderSet
    from saekit.dictionary import Dictionary
    from saekit.evaluation.splice import evaluate_on_text

    if args.list_datasets:
        from saekit.evaluation.probing import available_datasets

        print("\n".join(available_datasets(args.probing_data)))
        return 0
    if not args.dictionaries:
        raise SaekitError("no dictionaries given: pass one or more dictionary directories")
    if args.tokens <= 0:
        raise SaekitError("--tokens must be positive")
    names = [path.name for path in args.dictionaries]
    if len(set(names)) < len(names):  # e.g. out/resid_post.3/topk-k32 and out/resid_post.6/topk-k32
        names = [f"{path.parent.name}/{path.name}" for path in args.dictionaries]
    loaded = {name: load_attention(path, device=args.device) if is_attention_dir(path)
              else saekit.load(path, device=args.device) for name, path in zip(names, args.dictionaries)}
    attention = {name for name, path in zip(names, args.dictionaries) if is_attention_dir(path)}
    dictionaries = {name: d for name, d in loaded.items() if isinstance(d, (Dictionary, SparseAttention))}
    layered = {name: d for name, d in loaded.items() if isinstance(d, (TranscoderSet, CrossLayerTranscoder))}
    if (layered or attention) and args.encoder != "dictionary":
        raise SaekitError("--encoder applies to single dictionaries; transcoder sets, CLTs and attention "
                          "replacements use their own encoders (drop --encoder)")
    if attention and (layered or len(attention) < len(dictionaries)):
        raise SaekitError("evaluate attention replacements on their own (one `saekit eval` call), apart from "
                          "dictionaries, transcoder sets and CLTs")
    if args.model is None:
        recorded = {model_name_of(d) for d in loaded.values()}
        if len(recorded) != 1 or None in recorded:
            raise SaekitError("pass --model: the dictionaries do not record one common model")
        args.model = recorded.pop()
    for d in loaded.values():
        warn_other_model(d, args.model)
    if args.probing:
        if layered or attention:
            raise SaekitError("--probing takes single dictionaries; transcoder sets, CLTs and attention "
                              "replacements are evaluated without it")
        return run_probing(args, dictionaries)
    model, tokenizer = open_model(args)
    text = text_config(args)
    if attention:  # modules writing the same output share its clean and zero-ablated forwards
        rows = evaluate_replacements(model, tokenizer, dictionaries, text, args.tokens,
                                     progress=not args.no_progress)
    else:
        rows = evaluate_on_text(model, tokenizer, dictionaries, text, args.tokens, args.encoder,  # type: ignore[arg-type]
                                args.l0, progress=not args.no_progress) if dictionaries else []
    for name, obj in layered.items():
        rows.append(evaluate_layered_on_text(model, tokenizer, name, obj, text, args.tokens,
                                             per_layer=args.per_layer, progress=not args.no_progress))
    print_table(rows, TABLE)
    evaluated = int(rows[0]["eval_targets"]) if rows else 0
    if evaluated < 0.9 * args.tokens:
        print(f"warning: the test split held {evaluated} evaluable tokens, fewer than the {args.tokens} asked",
              file=sys.stderr)
    for row in rows:
        if "layers" in row:
            print(f"\n{row['name']}: every MLP replaced at once (CE {row['ce_replaced']:.4f} vs clean "
                  f"{row['ce_clean']:.4f}, KL {row['kl_replaced']:.4f}); per layer:")
            print_table(row["layers"], LAYER_TABLE)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


PROBING_TABLE = ["dictionary", "dataset", "n_train", "n_test", "baseline_auc"]


def run_probing(args: argparse.Namespace, dictionaries: dict[str, Any]) -> int:
    """`saekit eval --probing`: sparse probing instead of spliced metrics."""
    from saekit.evaluation.probing import (
        DEFAULT_KS,
        QUICK_DATASETS,
        ProbingOptions,
        available_datasets,
        check_datasets,
        plot_probing,
        sparse_probing,
    )

    datasets = args.datasets or list(QUICK_DATASETS)
    if datasets == ["all"]:
        datasets = available_datasets(args.probing_data)
    check_datasets(datasets, args.probing_data)  # before the model loads
    options = ProbingOptions(ks=args.ks or list(DEFAULT_KS), penalty=args.probe_penalty, seed=args.probe_seed,
                             max_length=args.max_prompt_tokens, batch_size=text_config(args).model_batch_size,
                             data_dir=args.probing_data,
                             cache_dir=args.probing_cache, progress=not args.no_progress)
    model, tokenizer = open_model(args)
    result = sparse_probing(model, tokenizer, dictionaries, datasets, options)
    ks = [f"auc_k{k}" for k in options.ks]
    print_table(result["rows"], PROBING_TABLE + ks)
    print("mean test AUC over datasets:")
    print_table(result["summary"], ["dictionary", "datasets", "baseline_auc"] + ks)
    timing = result["timing"]
    print("time: " + ", ".join(f"{key.removesuffix('_s')} {value:.1f}s" for key, value in timing.items()))
    if args.out is not None:
        atomic_write_json(args.out, result)
        plot = plot_probing(result, args.out.with_suffix(".png"))
        print(f"results -> {args.out}, plot -> {plot}")
    return 0
