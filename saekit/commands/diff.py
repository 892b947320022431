"""`saekit diff`: model diffing with a crosscoder over two models' activations at one hookpoint.

Both models run on the same tokens; one dictionary reads their concatenated activations and keeps a
decoder block per model (docs/methods.md "Transcoders, crosscoders, meta-SAEs"). The report classifies
latents by relative decoder norm (saekit.inspect.diffing) and shows, for the most model-specific
latents, the held-out contexts where they fire hardest, so a researcher can see what one model
represents and the other does not.
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
                    "then write report.html / report.json: relative decoder norm histogram, counts of "
                    "shared / first-only / second-only latents, cosines of shared latents' decoder "
                    "blocks, and top held-out contexts of the most model-specific latents.")
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
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--eval-tokens", type=int, default=8_192, help="Held-out tokens for the report.")
    parser.add_argument("--top-latents", type=int, default=6, help="Model-specific latents shown per model.")
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
    from saekit.experiments.diff import diff_report, load_pair, train_crosscoder, write_diff_report

    names = _parse_models(args.models)
    labels = list(names)
    text = text_config(args)
    from saekit.io import output_directory

    output_directory(args.out, args.overwrite)  # before the models load
    models, tokenizer = load_pair(names, args.model_dtype or "float32", args.device,
                                  bool(args.trust_remote_code))

    if args.crosscoder is not None:
        crosscoder = saekit.load(args.crosscoder)
        if crosscoder.cfg.n_sources != 2:
            raise SaekitError(f"{args.crosscoder} is not a two-model crosscoder")
    else:
        options: dict = {"method": args.method}
        if args.lr:
            options["lr"] = args.lr
        from saekit.methods import get_method

        if get_method(args.method).uses_k:
            options["k"] = args.k
        elif args.sparsity_coefficient is not None:
            options["sparsity_coefficient"] = args.sparsity_coefficient
        crosscoder = train_crosscoder(models, tokenizer, text, args.hookpoint, names, options, args.expansion,
                                      args.tokens, args.batch_size, args.out, args.device, not args.no_progress)
        saekit.save(crosscoder, args.out / "crosscoder")
    report = diff_report(crosscoder, models, tokenizer, text, args.hookpoint, names, args.eval_tokens,
                         args.top_latents)
    write_diff_report(args.out, report)
    counts = report["summary"]["counts"]
    print(f"latents: shared {counts['shared']}, {labels[0]}-only {counts['first_only']}, "
          f"{labels[1]}-only {counts['second_only']}, other {counts['other']}, dead {report['dead']}; "
          f"shared decoder cosine median {report['summary']['shared_cosine_median']}")
    print(f"report: {args.out / 'report.html'}")
    return 0
