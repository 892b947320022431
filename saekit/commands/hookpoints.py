"""`saekit hookpoints MODEL`: the named sites and module names a model offers as hookpoints."""

from __future__ import annotations

import argparse

from saekit.commands.sources import model_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "hookpoints", help="List a model's named sites (resid_post.L, mlp_in.L, ...) and module names.",
        description="Load a model and print the hookpoints saekit can read on it: the named sites (the "
                    "same names on every common family) with the module each resolves to, then the "
                    "module names (use them with wildcards, `:input` for a module's input).")
    parser.add_argument("model", help="Hugging Face model name, local directory, .gguf file, or "
                                      "offline-default.")
    parser.add_argument("--depth", type=int, default=4, help="Longest module name listed, in dots.")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="Allow model repositories to run their own code (off unless asked).")
    parser.set_defaults(func=run, device="cpu")


def run(args: argparse.Namespace) -> int:
    from saekit.errors import SaekitError
    from saekit.models.sites import list_modules, named_sites

    if args.depth < 1:
        raise SaekitError("--depth must be at least 1")
    model, _ = model_config(args, model=args.model, trust_remote_code=args.trust_remote_code).load("cpu")
    sites = named_sites(model)
    if sites:
        print("named sites:")
        width = max(len(name) for name in sites)
        for name, site in sites.items():
            print(f"  {name.ljust(width)}  {site}")
    else:
        print(f"named sites: none known for {type(model).__name__}; use module names")
    print("modules:")
    for name in list_modules(model, args.depth):
        print(f"  {name}")
    return 0
