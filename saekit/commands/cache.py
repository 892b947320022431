"""`saekit cache`: write model activations to a disk cache once, then train from it many times.

    saekit cache --model M --hookpoints H [H ...] --out DIR [--tokens N] ...   build (or resume) a cache
    saekit cache info DIR                                                      describe a cache
    saekit cache verify DIR                                                    check every checksum

Building is resumable: re-running the same command after an interruption continues after the last
complete shard. Training reads the cache with `saekit train --from-cache DIR`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from saekit.commands.sources import activation_stream, add_model_arguments, model_config, source_metadata, text_config
from saekit.errors import SaekitError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cache", help="Cache model activations on disk (build, info, verify).",
        description="Build a disk cache of activations at one or more hookpoints of a model "
                    "(resumable: re-run the same command to continue an interrupted build), or "
                    "describe / verify an existing cache with the info and verify subcommands.")
    add_model_arguments(parser)
    build = parser.add_argument_group("build")
    build.add_argument("--out", type=Path, default=None, help="Cache directory to create or resume.")
    build.add_argument("--tokens", type=int, default=None,
                       help="Tokens to cache in all (default: the whole dataset).")
    build.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                       help="Storage dtype: float32 is exact; bfloat16/float16 halve the size but round "
                            "the activations (lossy). (default: float32)")
    build.add_argument("--shard-tokens", type=int, default=None,
                       help="Tokens per shard file, also the shuffle window when training "
                            "(default: ~256 MiB per shard over all hookpoints).")
    build.add_argument("--overwrite", action="store_true",
                       help="Delete an existing cache at --out and start again.")
    parser.set_defaults(func=run)

    sub = parser.add_subparsers(dest="cache_command", metavar="{info,verify}")
    info = sub.add_parser("info", help="Describe a cache (model, hookpoints, tokens, metadata).",
                          description="Print a cache's manifest summary as JSON (cheap: no checksums).")
    info.add_argument("path", type=Path, help="Cache directory.")
    info.set_defaults(func=run_info)
    verify = sub.add_parser("verify", help="Check every shard's sha256 checksum.",
                            description="Read every shard file and compare its sha256 with the manifest; "
                                        "exit status 2 with the damaged file named if one differs.")
    verify.add_argument("path", type=Path, help="Cache directory.")
    verify.set_defaults(func=run_verify)


def run_info(args: argparse.Namespace) -> int:
    from saekit.data.cache.reader import summary

    print(json.dumps(summary(args.path), indent=2))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from saekit.data.cache import open_cache

    started = time.perf_counter()
    cache = open_cache(args.path, verify="none", require_complete=False)
    cache.verify(progress=True)
    seconds = time.perf_counter() - started
    size = sum(f["bytes"] for s in cache.manifest["shards"] for f in s["files"].values())
    state = "complete" if cache.complete else "INCOMPLETE (re-run `saekit cache` to finish it)"
    print(f"ok: {args.path}: {len(cache.shard_sizes) * len(cache.hookpoints)} shard files, "
          f"{cache.total_tokens} tokens, {size / 1e9:.2f} GB verified in {seconds:.1f} s; {state}")
    return 0


def run(args: argparse.Namespace) -> int:
    from saekit.data.cache import open_cache, write_cache

    missing = [flag for flag, value in (("--model", args.model), ("--hookpoints", args.hookpoints),
                                        ("--out", args.out)) if not value]
    for flag, value in (("--tokens", args.tokens), ("--shard-tokens", args.shard_tokens)):
        if value is not None and value <= 0:
            raise SaekitError(f"{flag} must be a positive number of tokens, got {value}")
    if missing:
        raise SaekitError(f"saekit cache needs {', '.join(missing)} to build a cache (or use "
                          "`saekit cache info DIR` / `saekit cache verify DIR`)")
    text = text_config(args)
    stream, widths, _, _ = activation_stream(args, text)
    # A resumed build skips the tokens already cached: the token stream is deterministic, so it is
    # re-tokenised up to that point without running the model on it.
    manifest = write_cache(lambda skip: stream.resume_from(skip) if skip else stream, args.out,
                           hookpoints=list(widths), model=args.model, dtype=args.dtype,
                           shard_tokens=args.shard_tokens, max_tokens=args.tokens,
                           metadata=source_metadata(model_config(args), text), overwrite=args.overwrite,
                           progress=True)
    cache = open_cache(args.out, verify="none")
    print(f"cache {args.out}: {manifest['total_tokens']} tokens at {', '.join(cache.hookpoints)} "
          f"({len(cache.shard_sizes)} shards, {cache.dtype})")
    return 0
