"""`saekit autointerp`: explain a dictionary's latents with a chat model and score the explanations."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from saekit.commands.common import add_dataclass_arguments, print_table
from saekit.commands.sources import text_config
from saekit.data.config import ModelConfig, TextConfig
from saekit.errors import SaekitError
from saekit.io import atomic_write_json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "autointerp", help="Explain latents with a chat model (any OpenAI-compatible endpoint) and score "
                           "the explanations by detection.",
        description="One pass of the dictionary's model over --tokens held-out tokens (the dashboard pass), "
                    "then per latent: an explanation from its top-activating and importance-sampled "
                    "windows, and a detection score (the fraction of held-out activating and random windows "
                    "the chat model, given only the explanation, classifies correctly; SAEBench's scheme). "
                    "Answers are cached on disk, so a rerun costs nothing; tokens and cost are printed.")
    parser.add_argument("dictionary", type=Path, help="Dictionary directory.")
    chat = parser.add_argument_group("chat endpoint")
    chat.add_argument("--endpoint", required=True,
                      help="Base URL of an OpenAI-compatible API, e.g. https://api.openai.com/v1 or "
                           "http://localhost:8000/v1 (requests go to {endpoint}/chat/completions).")
    chat.add_argument("--model", required=True, help="Chat model name the endpoint serves (e.g. gpt-4o-mini).")
    chat.add_argument("--api-key-env", default="OPENAI_API_KEY",
                      help="Environment variable holding the API key (none is sent when it is unset).")
    chat.add_argument("--cache", type=Path, default=None,
                      help="Answer cache folder (default: $SAEKIT_CACHE/autointerp, i.e. ~/.cache/saekit).")
    chat.add_argument("--timeout", type=float, default=60.0, help="Seconds to wait for one answer.")
    chat.add_argument("--retries", type=int, default=3,
                      help="Retries of a request after a connection error, timeout, 429 or 5xx.")
    chat.add_argument("--workers", type=int, default=4, help="Requests in flight at once.")
    chat.add_argument("--temperature", type=float, default=None,
                      help="Sampling temperature (default: the endpoint's own, as SAEBench).")
    chat.add_argument("--price-in", type=float, default=0.15,
                      help="Dollars per million prompt tokens, for the cost line (default: gpt-4o-mini's 0.15).")
    chat.add_argument("--price-out", type=float, default=0.60,
                      help="Dollars per million completion tokens (default: gpt-4o-mini's 0.60).")
    what = parser.add_argument_group("latents and windows")
    what.add_argument("--latents", type=int, default=100,
                      help="Latents to score, drawn with --seed among those that fire more than 15 times.")
    what.add_argument("--latent-ids", type=int, nargs="+", default=None, help="Score exactly these latents.")
    what.add_argument("--tokens", type=int, default=200_000, help="Held-out tokens of the dashboard pass.")
    what.add_argument("--seed", type=int, default=42, help="Seed of the latent draw and the windows.")
    what.add_argument("--scorer", choices=("saebench", "delphi"), default="saebench",
                      help="saebench: explanation from 12 top + 7 importance-sampled windows, score = fraction "
                           "of 14 windows classified (SAEBench); delphi: explanation from 40 windows over 10 "
                           "activation quantiles, score = balanced detection accuracy on 50 activating + 50 "
                           "non-activating windows (delphi; needs latents with >= 90 windows).")
    what.add_argument("--check-random", action="store_true",
                      help="Draw random (inactive) windows only where the latent stays below the active "
                           "threshold (SAEBench does not check; off by default).")
    parser.add_argument("--out", type=Path, default=None, help="Write per-latent results (JSON) here.")
    parser.add_argument("--no-progress", action="store_true", help="Hide the progress bars.")
    subject = parser.add_argument_group("subject model (whose activations are explained)")
    subject.add_argument("--subject-model", default=None,
                         help="Model to run (default: the one the dictionary records).")
    add_dataclass_arguments(subject, ModelConfig, exclude=("model",))
    add_dataclass_arguments(parser, TextConfig, group_title="text")
    parser.add_argument("--device", default="cpu", help="Device of the subject model: cpu, cuda or cuda:N.")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from saekit.commands.sources import model_config
    from saekit.evaluation.autointerp import AutointerpOptions, ChatClient, SamplingOptions, autointerp
    from saekit.formats.detect import load_any
    from saekit.inspect.dashboard_data import gather_activations
    from saekit.models.loading import cache_root

    if args.tokens <= 0 or args.latents <= 0:
        raise SaekitError("--tokens and --latents must be positive")
    client = ChatClient(args.endpoint, args.model, args.api_key_env,
                        cache_dir=args.cache or cache_root() / "autointerp", timeout=args.timeout,
                        retries=args.retries)
    client.check_reachable()  # before the model pass, so a wrong address costs nothing
    d = load_any(args.dictionary, device=args.device)  # one dictionary (sets and CLTs: one layer's folder)
    name = args.subject_model or d.provenance.model_name
    if not name:
        raise SaekitError("the dictionary does not record its model: pass --subject-model")
    model, tokenizer = model_config(args, model=name).load(args.device)
    batches = text_config(args).token_stream(tokenizer, split="test", max_tokens=args.tokens)
    start = time.perf_counter()
    record = gather_activations(model, d, batches, progress=not args.no_progress)
    pass_s = time.perf_counter() - start
    options = AutointerpOptions(n_latents=args.latents, seed=args.seed, temperature=args.temperature,
                                scorer=args.scorer,
                                workers=args.workers, progress=not args.no_progress,
                                sampling=SamplingOptions(check_random=args.check_random, seed=args.seed))
    result = autointerp(record, tokenizer, client, options, latents=args.latent_ids)
    rows = [{"latent": r["latent"], "score": r.get("score", float("nan")),
             "explanation": r.get("explanation", r.get("skipped", ""))[:70]} for r in result["latents"]]
    print_table(rows[:20], ["latent", "score", "explanation"])
    if len(rows) > 20:
        print(f"... {len(rows) - 20} more latents (--out writes all)")
    score, std = result["autointerp_score"], result["autointerp_std"]
    print(f"autointerp score ({args.scorer}) {score:.3f} ± {std:.3f} over {result['scored']} latents"
          + (f" ({result['skipped']} skipped)" if result["skipped"] else "") if not math.isnan(score)
          else f"no latent could be scored ({result['skipped']} skipped)")
    usage = client.usage
    print(f"chat: {usage.requests} requests, {usage.cache_hits} answered from the cache ({client.cache_dir}); "
          f"spent {usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens = "
          f"${usage.cost(args.price_in, args.price_out):.4f} at ${args.price_in:g}/${args.price_out:g} per "
          f"1M; cached answers saved {usage.cached_prompt_tokens} + {usage.cached_completion_tokens} tokens")
    print(f"time: dashboard pass {pass_s:.1f}s ({record.n_tokens} tokens), chat part {result['seconds']:.1f}s")
    if args.out is not None:
        atomic_write_json(args.out, {**result, "endpoint_model": args.model, "dictionary": str(args.dictionary),
                                     "prices_per_million": [args.price_in, args.price_out]})
        print(f"results -> {args.out}")
    return 0
