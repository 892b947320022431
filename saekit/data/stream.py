"""Model activations at hookpoints: one forward per batch for all hookpoints, stopped early.

`capture` runs the model once and records every hookpoint (module outputs by forward hooks, inputs by
pre-hooks). When nothing after the last hookpoint is needed, its hook raises a private exception that
ends the forward pass there, so later layers are never computed. `splice` replaces a hookpoint's value
during a forward instead (spliced evaluation, steering). `ActivationStream` turns a `TokenStream`
into the trainer's stream of `{hookpoint: [n_tokens, d]}` batches, special tokens removed, resumable at
any token without re-running the model on what came before.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from saekit.data.sites import Hookpoint, resolve_hookpoints
from saekit.data.tokens import TokenStream


class _StopForward(Exception):
    """Raised by the last needed hook to end the forward pass early."""


def _first_tensor(args: tuple, kwargs: dict) -> Tensor:
    if args and isinstance(args[0], Tensor):
        return args[0]
    for value in kwargs.values():
        if isinstance(value, Tensor):
            return value
    raise RuntimeError("the hooked module received no tensor input")


@contextlib.contextmanager
def hooks(model: nn.Module, hookpoints: list[Hookpoint], store: dict[str, Tensor] | None = None,
          replace: dict[str, Callable[[Tensor], Tensor]] | None = None,
          stop_after_last: bool = False) -> Iterator[None]:
    """Record hookpoint values into `store` and/or replace them by `replace[name](value)`."""
    replace = replace or {}
    handles = []
    last = hookpoints[-1].name if hookpoints else None

    def finish(point: Hookpoint, value: Tensor) -> Tensor:
        if point.name in replace:
            value = replace[point.name](value)
        if store is not None:
            store[point.name] = value
        if stop_after_last and point.name == last:
            raise _StopForward
        return value

    for point in hookpoints:
        module = model.get_submodule(point.module)
        if point.capture_input:
            def pre_hook(_module, args, kwargs, point=point):
                value = finish(point, _first_tensor(args, kwargs))
                if point.name in replace:
                    if args and isinstance(args[0], Tensor):
                        return (value,) + tuple(args[1:]), kwargs
                    key = next(k for k, v in kwargs.items() if isinstance(v, Tensor))
                    return args, {**kwargs, key: value}
                return None

            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        else:
            def hook(_module, _args, output, point=point):
                value = finish(point, output[0] if isinstance(output, tuple) else output)
                if point.name in replace:
                    return (value,) + tuple(output[1:]) if isinstance(output, tuple) else value
                return None

            handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def capture(model: nn.Module, input_ids: Tensor, hookpoints: list[Hookpoint],
            attention_mask: Tensor | None = None) -> dict[str, Tensor]:
    """{hookpoint name: activations [B, T, d]} from one forward, stopped after the last hookpoint."""
    store: dict[str, Tensor] = {}
    device = next(model.parameters()).device
    with hooks(model, hookpoints, store, stop_after_last=True):
        try:
            model(input_ids=input_ids.to(device),
                  attention_mask=None if attention_mask is None else attention_mask.to(device))
        except _StopForward:
            pass
    return store


class ActivationStream:
    """The trainer's stream: `{hookpoint: float32 [n_tokens, d]}` per model forward.

    `model` may also be `{label: model}` (e.g. a base model and its chat tune, for crosscoders): every
    model runs on the same token batch and keys become `label/hookpoint`. Their tokenizers must agree;
    the caller checks that, since only it holds them.
    """

    def __init__(self, model: nn.Module | dict[str, nn.Module], tokens: TokenStream,
                 hookpoints: list[str] | list[Hookpoint], progress: bool = False) -> None:
        self.model = model
        self.models = model if isinstance(model, dict) else {"": model}
        self.tokens = tokens
        self.requested = hookpoints
        self.hookpoints = {label: (hookpoints if hookpoints and isinstance(hookpoints[0], Hookpoint)
                                   else resolve_hookpoints(m, list(hookpoints)))  # type: ignore[arg-type]
                           for label, m in self.models.items()}
        self.progress = progress
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

    def resume_from(self, tokens: int) -> "ActivationStream":
        return ActivationStream(self.model, self.tokens.resume_from(tokens), self.requested, self.progress)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        bar = tqdm(disable=not self.progress, unit="tok", unit_scale=True, desc="model forward",
                   dynamic_ncols=True)
        for input_ids, mask in self.tokens:
            started = time.perf_counter()
            values = self._capture(input_ids)
            self.forward_seconds += time.perf_counter() - started
            keep = mask.reshape(-1).to(next(iter(values.values())).device)
            batch = {name: value.reshape(-1, value.shape[-1])[keep].float().cpu()
                     for name, value in values.items()}
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
