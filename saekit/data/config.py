"""Where activations come from when a model computes them: which model, and which text it reads.

`ModelConfig` and `TextConfig` are the CLI's `--model ...` and `--dataset ...` flags (generated from
these fields) and a sweep file's `[data]` section; library code takes them instead of an argparse
namespace.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from saekit.config import help_field
from saekit.errors import SaekitError

MODEL_DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class ModelConfig:
    """The model whose activations are read."""

    model: str | None = help_field("Hugging Face model name, local directory, .gguf file, or "
                                   "`offline-default` (SmolLM2-135M-Instruct, installed by scripts/setup.sh).",
                                   default=None)
    model_dtype: str = help_field(f"Model weights' dtype ({', '.join(MODEL_DTYPES)}); activations are "
                                  "float32.", default="float32")
    trust_remote_code: bool = help_field("Allow model repositories to run their own code (off unless "
                                         "asked).", default=False)
    compile_backend: str = help_field("Compile each transformer block with torch.compile and this backend "
                                      "('inductor' pays on a GPU, after a first slow batch); 'none' runs "
                                      "the model as it is.", default="none")

    def __post_init__(self) -> None:
        if self.model_dtype not in MODEL_DTYPES:
            raise SaekitError(f"model_dtype must be one of {', '.join(MODEL_DTYPES)}, got {self.model_dtype!r}")
        if self.compile_backend != "none":
            import torch

            if self.compile_backend not in torch._dynamo.list_backends(exclude_tags=()):
                raise SaekitError(f"compile_backend {self.compile_backend!r} is not a torch.compile backend: "
                                  f"use 'none' or one of {', '.join(torch._dynamo.list_backends())}")

    def load(self, device: str = "cpu") -> tuple[Any, Any]:
        """(model, tokenizer), in eval mode with gradients off."""
        from saekit.models.loading import load_model

        if not self.model:
            raise SaekitError("no model given: pass --model (a hub name, a local directory or "
                              "offline-default)")
        model, tokenizer = load_model(self.model, dtype=self.model_dtype, device=device,
                                      trust_remote_code=self.trust_remote_code)
        if self.compile_backend != "none":
            from saekit.models.loading import compile_blocks

            compile_blocks(model, self.compile_backend)
        return model, tokenizer


@dataclass
class TextConfig:
    """The text the model reads: documents, packing into windows, order."""

    dataset: str = help_field("Text: `offline-default` (Python 3.11 docs), `kjv` (King James Bible), a local "
                              "file or directory (text/jsonl/parquet), or a Hugging Face dataset name.",
                              default="offline-default")
    text_column: str = help_field("Dataset column holding the text.", default="text")
    context_size: int = help_field("Tokens per sequence.", default=128)
    model_batch_size: int = help_field("Sequences per model forward.", default=16)
    data_seed: int = help_field("Seed of the shuffle buffer (and of a cache's read order).", default=0)

    def __post_init__(self) -> None:
        for name in ("context_size", "model_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (2 if name == "context_size" else 1):
                raise SaekitError(f"{name} must be an integer >= {2 if name == 'context_size' else 1}, "
                                  f"got {value!r}")
        if not isinstance(self.data_seed, int) or isinstance(self.data_seed, bool) or self.data_seed < 0:
            raise SaekitError(f"data_seed must be a non-negative integer, got {self.data_seed!r}")

    def token_stream(self, tokenizer: Any, split: str = "train", max_tokens: int | None = None) -> Any:
        from saekit.data.tokens import TokenStream

        return TokenStream(tokenizer, self.dataset, context=self.context_size,
                           batch_size=self.model_batch_size, split=split, seed=self.data_seed,
                           text_column=self.text_column, max_tokens=max_tokens)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
