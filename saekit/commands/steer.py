"""`saekit steer` (generation with a latent added or clamped, beside unsteered generation) and
`saekit steering-vector` (a difference-of-means steering vector written in dictionary latents)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from saekit.commands.common import read_prompts
from saekit.commands.sources import warn_other_model
from saekit.errors import SaekitError


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dictionary", type=Path, required=True, help="Dictionary directory.")
    parser.add_argument("--model", default=None,
                        help="Model (default: the one the dictionary records; `offline-default` is "
                             "SmolLM2-135M-Instruct).")
    parser.add_argument("--device", default="cpu", help="Device for the model and dictionary.")
    parser.add_argument("--model-dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="Allow model repositories to run their own code (off unless asked).")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "steer", help="Generate with a latent's decoder direction added (or the latent clamped), "
                      "beside unsteered generation.",
        description="Adds scale x (the latent's decoder row) to the dictionary's hookpoint at every "
                    "position, or clamps the latent to a value, and prints the steered and unsteered "
                    "continuations of the prompt. Scale is in the latent's activation units (its "
                    "dashboard shows its max activation).")
    _model_flags(parser)
    parser.add_argument("--latent", type=int, required=True, help="Latent index.")
    edit = parser.add_mutually_exclusive_group(required=True)
    edit.add_argument("--scale", type=float, help="Add scale * decoder direction.")
    edit.add_argument("--clamp", type=float, help="Set the latent to this value at every position.")
    parser.add_argument("--prompt", required=True, help="Text to continue.")
    parser.add_argument("--chat", action="store_true", help="Wrap the prompt in the chat template.")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy decoding.")
    parser.add_argument("--seed", type=int, default=0, help="Sampling seed (same for both runs).")
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=None, help="Also write the result as JSON.")
    parser.set_defaults(func=run_steer)

    vector = subparsers.add_parser(
        "steering-vector", help="Express a steering vector in dictionary latents (gradient pursuit).",
        description="Builds the difference of mean activations at the dictionary's hookpoint between "
                    "two prompt files (one prompt per line), or reads a vector from .npy, then writes "
                    "it as a sparse signed combination of decoder rows with gradient pursuit and "
                    "reports the top latents (with dashboard links) and the residual norm.")
    _model_flags(vector)
    vector.add_argument("--positive", type=Path, help="Prompts (one per line) for the + side.")
    vector.add_argument("--negative", type=Path, help="Prompts (one per line) for the - side.")
    vector.add_argument("--vector", type=Path, help="A steering vector [d] as .npy, instead of prompts.")
    vector.add_argument("--position", default="all", choices=("all", "last"),
                        help="Average every token of each prompt, or only its last token.")
    vector.add_argument("--l0", type=int, default=16, help="Latents in the decomposition.")
    vector.add_argument("--top", type=int, default=10, help="Latents to print.")
    vector.add_argument("--dashboards", default=None,
                        help="Dashboard site (directory or URL) to link each latent to.")
    vector.add_argument("--save-vector", type=Path, default=None, help="Write the vector as .npy.")
    vector.add_argument("--out", type=Path, default=None, help="Write the decomposition as JSON.")
    vector.add_argument("--html", type=Path, default=None,
                        help="Write the decomposition as a page linking each latent's dashboard.")
    improve = vector.add_argument_group(
        "improve", "With --improve: build the vector's SAE reconstruction, the vector with irrelevant latents "
                   "removed and the best single latent, and compare them with the vector as concept strength "
                   "against cost curves (docs/steering.md).")
    improve.add_argument("--improve", nargs="?", const=Path("steering-improved"), type=Path, default=None,
                         metavar="DIR", help="Evaluate and improve the vector; write curves.png, index.html, "
                                             "report.json and the vectors (.npy) to DIR (default: "
                                             "steering-improved).")
    improve.add_argument("--concept-words", nargs="+", default=None, metavar="WORD",
                         help="Words whose probability measures the concept (e.g. angry furious rage).")
    improve.add_argument("--concept-name", default=None, help="Name shown on the page (default: the "
                                                              "positive file's name).")
    improve.add_argument("--neutral", type=Path, default=None,
                         help="Prompts to steer (one per line; default: twelve built-in sentence openings).")
    improve.add_argument("--scales", nargs="+", type=float, default=[0.125, 0.25, 0.5, 1.0],
                         help="Steering scales, in units of the median activation norm at the hookpoint.")
    improve.add_argument("--display-scale", type=float, default=None,
                         help="Scale of the generations shown and of the budget (default: the middle "
                              "scale).")
    improve.add_argument("--screen-scale", type=float, default=None,
                         help="Scale at which each candidate latent and the random directions are steered "
                              "alone to decide relevance (default: the smallest scale, where a random "
                              "direction's effect is small).")
    improve.add_argument("--candidates", type=int, default=64, help="Latents screened one by one.")
    improve.add_argument("--random-directions", type=int, default=16,
                         help="Random directions that set the screen's relevance threshold.")
    improve.add_argument("--cost-tokens", type=int, default=2048,
                         help="Held-out tokens (test split of --dataset) the cost is measured on.")
    improve.add_argument("--dataset", default="offline-default", help="Text for the cost (its test split).")
    improve.add_argument("--max-new-tokens", type=int, default=24, help="Tokens generated per prompt.")
    improve.add_argument("--overwrite", action="store_true",
                         help="Replace --improve DIR even if saekit did not write it.")
    improve.add_argument("--no-progress", action="store_true", help="Hide progress bars.")
    vector.set_defaults(func=run_vector)


def _open(args: argparse.Namespace, check=None):
    """(dictionary, model, tokenizer); `check(d)` runs before the (slow) model load."""
    from saekit.data.config import ModelConfig
    from saekit.formats.detect import load_any

    d = load_any(args.dictionary, device=args.device)
    if check is not None:
        check(d)
    name = args.model or d.provenance.model_name
    if not name:
        raise SaekitError("the dictionary does not record its model: pass --model")
    warn_other_model(d, name)
    model, tokenizer = ModelConfig(name, args.model_dtype, args.trust_remote_code).load(args.device)
    return d, model, tokenizer


def run_steer(args: argparse.Namespace) -> int:
    from saekit.inspect.steering import steer, steering_edit

    d, model, tokenizer = _open(args, lambda d: steering_edit(d, args.latent, args.scale, args.clamp))
    result = steer(model, tokenizer, d, args.prompt, args.latent, scale=args.scale, clamp=args.clamp,
                   max_new_tokens=args.max_new_tokens, chat=args.chat, temperature=args.temperature,
                   seed=args.seed, repetition_penalty=args.repetition_penalty)
    print(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(vars(result), indent=2, ensure_ascii=False) + "\n")
    return 0


def _prompts(path: Path | None, flag: str) -> list[str]:
    if path is None:
        raise SaekitError(f"pass {flag} (a file with one prompt per line), or --vector")
    return read_prompts(path)


def run_vector(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from saekit.inspect.steering import decompose_vector, mean_activation_difference, write_decomposition_page

    if args.vector is not None and (args.positive is not None or args.negative is not None):
        raise SaekitError("give either --vector or --positive/--negative prompts, not both")
    if args.improve is not None:
        return run_improve(args)
    if args.vector is not None:
        from saekit.formats.detect import load_any

        d = load_any(args.dictionary, device=args.device)
        try:
            vector = torch.from_numpy(np.load(args.vector, allow_pickle=False)).float()
        except (OSError, ValueError) as error:
            raise SaekitError(f"cannot read a vector from {args.vector}: {error}") from None
    else:
        positive, negative = _prompts(args.positive, "--positive"), _prompts(args.negative, "--negative")
        d, model, tokenizer = _open(args)
        vector = mean_activation_difference(model, tokenizer, d.provenance.hookpoint, positive, negative,
                                            args.position)
    if args.save_vector is not None:
        np.save(args.save_vector, vector.cpu().numpy())
    result = decompose_vector(d, vector, args.l0, args.dashboards)
    print(f"vector norm {result.norm:.4g}, residual norm {result.residual_norm:.4g} "
          f"({100 * result.relative_residual:.1f}% of the norm) with {len(result.latents)} latents")
    print(f"{'latent':>7} {'coef':>9} {'|c·d|':>9} {'cos':>6}  {'name':<16} dashboard")
    for row in result.latents[:args.top]:
        print(f"{row['latent']:>7} {row['coefficient']:>9.4g} {row['contribution_norm']:>9.4g} "
              f"{row['cosine']:>6.3f}  {row.get('name', '')[:16]:<16} {row.get('dashboard', '')}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"norm": result.norm, "residual_norm": result.residual_norm,
                                        "relative_residual": result.relative_residual,
                                        "latents": result.latents}, indent=2) + "\n")
    if args.html is not None:
        write_decomposition_page(result, args.html, f"{args.dictionary} · l0 {args.l0}")
        print(f"page -> {args.html}")
    return 0


def run_improve(args: argparse.Namespace) -> int:
    """`steering-vector --improve`: the four vectors' curves, generations, page and vectors."""
    from saekit.data.config import TextConfig
    from saekit.inspect.steering_eval import NEUTRAL_PROMPTS, Concept, check_scales
    from saekit.inspect.steering_improve import improve_steering_vector
    from saekit.inspect.steering_page import LABELS, write_steering_report
    from saekit.io import check_replaceable

    if args.vector is not None:
        raise SaekitError("--improve builds the vector from --positive and --negative prompts: drop --vector")
    positive, negative = _prompts(args.positive, "--positive"), _prompts(args.negative, "--negative")
    neutral = _prompts(args.neutral, "--neutral") if args.neutral is not None else list(NEUTRAL_PROMPTS)
    concept = Concept(args.concept_name or args.positive.stem, positive, negative, args.concept_words or [])
    scales = check_scales(args.scales)
    for flag in ("display_scale", "screen_scale"):
        if getattr(args, flag) is not None:
            check_scales([getattr(args, flag)], f"--{flag.replace('_', '-')}")
    for flag in ("candidates", "cost_tokens", "max_new_tokens"):
        if getattr(args, flag) <= 0:
            raise SaekitError(f"--{flag.replace('_', '-')} must be positive")
    check_replaceable(args.improve, args.overwrite)  # before the model is loaded
    d, model, tokenizer = _open(args)
    text = TextConfig(dataset=args.dataset, context_size=128, model_batch_size=8)
    held_out = list(text.token_stream(tokenizer, split="test", max_tokens=args.cost_tokens))
    if not held_out:
        raise SaekitError(f"the test split of {args.dataset} holds not one {text.context_size}-token window to "
                          "measure the cost on: use more text")
    report = improve_steering_vector(model, tokenizer, d, concept, neutral, held_out, scales, args.display_scale,
                                     screen_scale=args.screen_scale, candidates=args.candidates,
                                     random_directions=args.random_directions,
                                     max_new_tokens=args.max_new_tokens, position=args.position,
                                     progress=not args.no_progress)
    page = write_steering_report([report], args.improve, f"{args.dictionary} · {concept.name}", args.overwrite)
    print(f"{'vector':<30} {'strength at ActAdd cost':>24} {'probe':>7}")
    for row in report.summary():
        print(f"{LABELS[row['method']]:<30} {row['strength_at_budget']:>24.4g} {row['probe']:>7.3f}")
    print(f"most strength at the ActAdd vector's cost: {LABELS[report.improved]} -> "
          f"{args.improve / 'concept-0' / 'improved.npy'}")
    print(f"page -> {page}")
    return 0
