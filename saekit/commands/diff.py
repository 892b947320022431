"""`saekit diff`: model diffing with a crosscoder over two models' activations at one hookpoint.

Both models run on the same tokens; one dictionary reads their concatenated activations and keeps a
decoder block per model (docs/diffing.md). The report classifies latents by relative decoder norm
(saekit.inspect.diffing), checks the model-specific ones with latent scaling, compares the models'
next-token losses on held-out text with the latents that fire where they differ, and shows the most
model-specific latents with their held-out contexts and what each model predicts there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from saekit.commands.sources import add_model_arguments, text_config
from saekit.errors import SaekitError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "diff", help="Model diffing: train a crosscoder on two models and report model-specific latents.",
        description="Train (or load with --crosscoder) a crosscoder over two models at one hookpoint, "
                    "then write report.html / report.json on held-out text: counts of shared / "
                    "first-only / second-only latents and their thresholds, the relative decoder norm "
                    "and shared-latent cosine histograms, latent scaling (β, ν) of the model-specific "
                    "latents, where the two models' next-token losses differ and which latents fire "
                    "there, and the top model-specific latents with their contexts. Use --dataset for "
                    "text where the models differ (e.g. kjv for scripts/finetune_copy.py's copy).")
    parser.add_argument("--models", nargs=2, required=True, metavar="LABEL=MODEL",
                        help="The two models, e.g. base=HuggingFaceTB/SmolLM2-135M chat=./my-chat-model.")
    parser.add_argument("--hookpoint", required=True, help="Hookpoint read in both models (e.g. resid_post.6).")
    parser.add_argument("--crosscoder", type=Path, default=None,
                        help="Report on this trained crosscoder instead of training one.")
    parser.add_argument("--method", default="batchtopk", choices=("batchtopk", "relu"),
                        help="BatchTopK crosscoder, or the L1 variant (relu) with summed decoder norms.")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--sparsity-coefficient", type=float, default=None, help="λ for --method relu.")
    parser.add_argument("--expansion", type=int, default=4, help="d_sae / d_model.")
    parser.add_argument("--tokens", type=int, default=100_000, help="Training tokens.")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=None, help="Learning rate (default: the method's).")
    parser.add_argument("--crosscoder-init", default=None, choices=("same", "independent"),
                        help="Decoder init of the two blocks (default: same; see docs/diffing.md).")
    parser.add_argument("--eval-tokens", type=int, default=16_384, help="Held-out tokens for the report.")
    parser.add_argument("--top-latents", type=int, default=8, help="Model-specific latents shown per model.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--overwrite", action="store_true",
                        help="Write into --out even if saekit did not write it (default: refuse).")
    add_model_arguments(parser, model=False, hookpoints=False)
    parser.set_defaults(func=run)


def _parse_models(pairs: list[str]) -> dict[str, str]:
    models = {}
    for pair in pairs:
        label, sep, model = pair.partition("=")
        if not sep or not label or not model or "/" in label:
            raise SaekitError(f"--models takes LABEL=MODEL (a label without '/'), got {pair!r}")
        models[label] = model
    if len(models) != 2:
        raise SaekitError("--models needs two different labels")
    return models


def run(args: argparse.Namespace) -> int:
    import saekit
    from saekit.experiments.diff import diff_report, held_out_pass, load_pair, train_crosscoder
    from saekit.formats.detect import load_any
    from saekit.inspect.diff_page import write_diff_report

    names = _parse_models(args.models)
    labels = list(names)
    text = text_config(args)
    for name in ("tokens", "batch_size", "eval_tokens", "top_latents", "expansion", "k"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise SaekitError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    from saekit.io import output_directory

    output_directory(args.out, args.overwrite)  # before the models load
    models, tokenizer = load_pair(names, args.model_dtype or "float32", args.device,
                                  bool(args.trust_remote_code))

    if args.crosscoder is not None:
        crosscoder = load_any(args.crosscoder)
        if crosscoder.cfg.n_sources != 2:
            raise SaekitError(f"{args.crosscoder} is not a two-model crosscoder")
    else:
        options: dict = {"method": args.method}
        if args.lr:
            options["lr"] = args.lr
        if args.crosscoder_init:
            options["crosscoder_init"] = args.crosscoder_init
        from saekit.methods import get_method

        if get_method(args.method).uses_k:
            options["k"] = args.k
        elif args.sparsity_coefficient is not None:
            options["sparsity_coefficient"] = args.sparsity_coefficient
        crosscoder = train_crosscoder(models, tokenizer, text, args.hookpoint, names, options, args.expansion,
                                      args.tokens, args.batch_size, args.out, args.device, not args.no_progress)
        saekit.save(crosscoder, args.out / "crosscoder")
    held = held_out_pass(models, tokenizer, text, args.hookpoint, args.eval_tokens, not args.no_progress)
    report = diff_report(crosscoder, held, tokenizer, names, args.hookpoint, text.dataset, args.top_latents)
    write_diff_report(args.out, report)
    counts, scaling = report["summary"]["counts"], report["latent_scaling"]
    print(f"latents: shared {counts['shared']}, {labels[0]}-only {counts['first_only']} "
          f"({scaling['first_only']['survive']} confirmed by latent scaling), {labels[1]}-only "
          f"{counts['second_only']} ({scaling['second_only']['survive']} confirmed), other {counts['other']}, "
          f"dead {report['dead']}; shared decoder cosine median {report['summary']['shared_cosine_median']}")
    losses = report["loss_difference"]["mean_loss"]
    print(f"held-out next-token loss: {labels[0]} {losses[0]:.3f}, {labels[1]} {losses[1]:.3f} nats")
    print(f"report: {args.out / 'report.html'}")
    return 0
