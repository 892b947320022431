"""The trainer's stream from a live model: one forward per batch for all hookpoints, stopped early.

`ActivationStream` turns a `TokenStream` into the trainer's stream of `{hookpoint: [n_tokens, d]}`
batches (`saekit.models.hooks.capture` runs each forward and stops it after the last hookpoint), special
tokens removed, resumable at any token without re-running the model on what came before. With
`sequences=True` it keeps each window whole instead: `{hookpoint: [n_windows, T, d], "mask": [n_windows,
T]}` (the mask marks the tokens that count), for modules that read a layer's input as sequences
(attention replacements) next to dictionaries that read rows, all from one forward.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from saekit.data.tokens import TokenStream
from saekit.errors import SaekitError
from saekit.models.hooks import capture
from saekit.models.sites import Hookpoint, resolve_hookpoints

SEQUENCE_MASK = "mask"  # the trainer's key for the counted-token mask of a batch of sequences


class ActivationStream:
    """The trainer's stream: `{hookpoint: float32 [n_tokens, d]}` per model forward.

    `model` may also be `{label: model}` (e.g. a base model and its chat tune, for crosscoders): every
    model runs on the same token batch and keys become `label/hookpoint`. Their tokenizers must agree;
    the caller checks that, since only it holds them.
    """

    def __init__(self, model: nn.Module | dict[str, nn.Module], tokens: TokenStream,
                 hookpoints: list[str] | list[Hookpoint], progress: bool = False,
                 sequences: bool = False) -> None:
        self.model = model
        self.models = model if isinstance(model, dict) else {"": model}
        self.tokens = tokens
        self.requested = hookpoints
        self.hookpoints = {label: (hookpoints if hookpoints and isinstance(hookpoints[0], Hookpoint)
                                   else resolve_hookpoints(m, list(hookpoints)))  # type: ignore[arg-type]
                           for label, m in self.models.items()}
        self.progress = progress
        self.sequences = sequences
        if sequences and any(p.name == SEQUENCE_MASK for points in self.hookpoints.values() for p in points):
            raise SaekitError(f"a hookpoint named {SEQUENCE_MASK!r} clashes with the mask of a stream of "
                              "sequences: name the module differently")
        self.skip_windows = 0  # sequences: windows passed over on resume (without running the model)
        self.forward_seconds = 0.0
        self.tokens_emitted = 0

    def _capture(self, input_ids: Tensor) -> dict[str, Tensor]:
        values = {}
        for label, model in self.models.items():
            for name, value in capture(model, input_ids, self.hookpoints[label]).items():
                values[f"{label}/{name}" if label else name] = value
        return values

    def widths(self) -> dict[str, int]:
        """Width of each hookpoint, from one tiny forward."""
        ids = torch.tensor([[self.tokens.bos if self.tokens.bos is not None else 0] * 2])
        return {name: value.shape[-1] for name, value in self._capture(ids).items()}

    def fingerprint(self) -> str:
        """What identifies these activations: each model, the hookpoints, and the text."""
        models = {label: getattr(getattr(m, "config", None), "_name_or_path", type(m).__name__)
                  for label, m in self.models.items()}
        return f"models {models} hookpoints {list(map(str, self.requested))} {self.tokens.fingerprint()}"

    # under torchrun each rank reads its own token windows (a resume must use the same number of ranks)
    rank_split = "windows"

    def resume_from(self, tokens: int) -> ActivationStream:
        """The stream after its first `tokens` tokens (sequences: windows, the trainer's unit for them)."""
        if self.sequences:
            clone = ActivationStream(self.model, self.tokens, self.requested, self.progress, sequences=True)
            clone.skip_windows = self.skip_windows + tokens
            return clone
        return ActivationStream(self.model, self.tokens.resume_from(tokens), self.requested, self.progress)

    def for_rank(self, rank: int, world: int, local_batch: int) -> ActivationStream:
        """Under torchrun: the activations of this rank's token windows (`TokenStream.for_rank`)."""
        return ActivationStream(self.model, self.tokens.for_rank(rank, world), self.requested, self.progress,
                                sequences=self.sequences)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        bar = tqdm(disable=not self.progress, unit="tok", unit_scale=True, desc="model forward",
                   dynamic_ncols=True)
        skip = self.skip_windows
        for input_ids, mask in self.tokens:
            if skip:
                dropped = min(skip, input_ids.shape[0])
                input_ids, mask, skip = input_ids[dropped:], mask[dropped:], skip - dropped
                if not input_ids.shape[0]:
                    continue
            started = time.perf_counter()
            values = self._capture(input_ids)
            self.forward_seconds += time.perf_counter() - started
            if self.sequences:
                n = int(mask.sum())
                self.tokens_emitted += n
                bar.update(n)
                yield {**{name: value.float().cpu() for name, value in values.items()},
                       SEQUENCE_MASK: mask.bool()}
                continue
            keep = mask.reshape(-1).to(next(iter(values.values())).device)
            # left on the model's device: the trainer moves them only if the dictionaries live elsewhere
            batch = {name: value.reshape(-1, value.shape[-1])[keep].float() for name, value in values.items()}
            n = int(mask.sum())
            self.tokens_emitted += n
            bar.update(n)
            if n:
                yield batch
        bar.close()


def model_info(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return {"model_class": type(model).__name__,
            "name_or_path": getattr(config, "_name_or_path", None)}
