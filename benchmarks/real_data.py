"""Real activations for benchmarks: the offline default model and text through saekit's own pipeline
(both installed by scripts/setup.sh), so benchmarks measure what users run."""

from __future__ import annotations

import torch

from saekit.models.loading import load_model
from saekit.data.stream import ActivationStream
from saekit.data.tokens import TokenStream


def offline_model():
    return load_model("offline-default")


def activations(model, tokenizer, hookpoints: list[str], n_tokens: int, split: str = "train",
                context: int = 128) -> dict[str, torch.Tensor]:
    """{hookpoint: [n_tokens, d]} from the offline text's `split` (special tokens dropped)."""
    tokens = TokenStream(tokenizer, "offline-default", context=context, batch_size=16, split=split,
                         max_tokens=n_tokens + 16 * context)
    parts: dict[str, list[torch.Tensor]] = {h: [] for h in hookpoints}
    total = 0
    for batch in ActivationStream(model, tokens, hookpoints, progress=True):
        for name, value in batch.items():
            parts[name].append(value)
        total += next(iter(batch.values())).shape[0]
        if total >= n_tokens:
            break
    return {name: torch.cat(values)[:n_tokens] for name, values in parts.items()}
