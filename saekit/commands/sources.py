"""The model + text options shared by the commands that run a model, as flags generated from
`saekit.data.config.ModelConfig` and `TextConfig` (a sweep file's `[data]` section fills the same
fields; flags win)."""

from __future__ import annotations

import argparse
from typing import Any

from saekit.commands.common import add_dataclass_arguments, build, dataclass_values
from saekit.data.config import ModelConfig, TextConfig
from saekit.errors import SaekitError


def add_model_arguments(parser: argparse.ArgumentParser, hookpoints_required: bool = False,
                        model: bool = True, hookpoints: bool = True) -> None:
    """The shared source options. Commands that name their model(s) or hookpoint differently (diff's
    --models, demo's --hookpoint) leave out --model / --hookpoints rather than accept and ignore them."""
    add_dataclass_arguments(parser, ModelConfig, exclude=() if model else ("model",),
                            group_title="model")
    add_dataclass_arguments(parser, TextConfig, group_title="text")
    group = parser.add_argument_group("where")
    if hookpoints:
        group.add_argument("--hookpoints", nargs="+", default=None, required=hookpoints_required,
                           help="Where to read activations: named sites (resid_post.L, mlp_in.L, mlp_out.L, "
                                "attn_in.L, attn_out.L, attn_z.L = per-head outputs) or module names with "
                                "wildcards, `:input` for a module's input "
                                "(`saekit hookpoints MODEL` lists them).")
    group.add_argument("--device", default="cpu", help="Device for the model and every tensor of the "
                                                       "work: cpu, cuda or cuda:N.")


def model_config(args: argparse.Namespace, **override: Any) -> ModelConfig:
    return build(ModelConfig, {**dataclass_values(args, ModelConfig), **override}, "model")


def text_config(args: argparse.Namespace, file_values: dict[str, Any] | None = None) -> TextConfig:
    """The text options: a config file's [data] section, then the flags actually passed."""
    section = (file_values or {}).get("data") or {}
    if not isinstance(section, dict):
        raise SaekitError("[data] in the config file must be a table of text options")
    return build(TextConfig, {**section, **dataclass_values(args, TextConfig)}, "data")


def open_model(args: argparse.Namespace, **override: Any) -> tuple[Any, Any]:
    from saekit.training.distributed import local_device

    return model_config(args, **override).load(str(local_device(args.device)))


def activation_stream(args: argparse.Namespace, text: TextConfig, split: str = "train",
                      max_tokens: int | None = None) -> tuple[Any, dict[str, int], Any, Any]:
    """(stream of {hookpoint: [n, d]}, hookpoint widths, model, tokenizer)."""
    from saekit.data.stream import ActivationStream

    if not args.hookpoints:
        raise SaekitError("no hookpoints given: pass --hookpoints (e.g. resid_post.6)")
    model, tokenizer = open_model(args)
    stream = ActivationStream(model, text.token_stream(tokenizer, split, max_tokens), args.hookpoints)
    return stream, stream.widths(), model, tokenizer


def source_metadata(model: ModelConfig, text: TextConfig) -> dict[str, Any]:
    return {**text.to_dict(), "model_dtype": model.model_dtype}


def warn_other_model(d: Any, model: str) -> None:
    """Say so when a dictionary is used on another model than the one it was trained on (a model of the
    same width gives plausible numbers that mean nothing)."""
    import sys

    from saekit.circuits.replacement import model_name_of

    recorded = model_name_of(d)  # a dictionary, transcoder set or CLT
    if recorded and model and recorded != model:
        print(f"warning: the dictionary was trained on {recorded!r}; using it on {model!r}", file=sys.stderr)
