"""The one hook layer: read or edit activations at hookpoints during a model's forward pass.

- `hooks` records hookpoint values (module outputs by forward hooks, inputs by pre-hooks) and/or
  replaces them; with `stop_after_last` the last needed hook ends the forward pass there, so later
  layers are never computed.
- `capture` runs one forward and returns every hookpoint's value, stopped after the last.
- `splice` replaces or edits one hookpoint's value at the counted positions only (special tokens keep
  their clean values): spliced evaluation, end-to-end training, steering and interventions all edit
  activations through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from saekit.models.sites import Hookpoint


class StopForward(Exception):
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
            raise StopForward
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
        except StopForward:
            pass
    return store


@contextlib.contextmanager
def splice(model: nn.Module, point: Hookpoint, edit: Callable[[Tensor], Tensor],
           positions: Tensor | None = None, store: dict[str, Tensor] | None = None) -> Iterator[None]:
    """Within the block, every forward of `model` has the value at `point` edited.

    With `positions` (a bool mask [B, T]) `edit` receives the counted rows [n, d] and returns their
    replacement; other positions keep their clean values. Without it, `edit` receives the whole value
    [..., d]. The edited value is recorded in `store` when given."""
    def replace(value: Tensor) -> Tensor:
        if positions is None:
            return edit(value)
        out = value.clone()
        out[positions] = edit(value[positions]).to(value.dtype)
        return out

    with hooks(model, [point], store, replace={point.name: replace}):
        yield
