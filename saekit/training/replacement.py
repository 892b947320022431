"""The objective of modules that replace a layer from sequences: an attention layer's input → its output.

An attention replacement cannot learn from rows of activations (each output token reads every earlier
input token), so it reads the stream's batches of sequences as they come (`ActivationStream(...,
sequences=True)`: `{hookpoint: [n, T, d], "mask": [n, T]}`), its input at the spec's `hookpoint` (e.g.
`attn_in.L`) and its target at `target_hookpoint` (`attn_out.L`), and pays the module's own
`replacement_loss` on the counted query tokens. This is an objective of the one trainer, like the e2e
one: the trainer keeps the optimiser, schedules, logging, checkpoints and firing statistics, and a sweep
can mix replacements with dictionaries that read rows of the same forward (one objective per spec).

The module comes from `build(spec, device)` (the objective builds what it trains) and offers what the
sweep member calls on a `Dictionary`, plus `replacement_loss(x, y, mask, coefficient)` and, optionally,
`initialize_from(x, y, mask, generator, input_scale)` on the first (normalised) batch. Inputs and targets are scaled
by one scalar each (the spec's `normalize_activations`, estimated on the first batch's counted tokens)
and the scales are folded into the exported module, as for dictionaries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from saekit.errors import SaekitError
from saekit.spec import DictionarySpec
from saekit.training import normalization
from saekit.training.objective import LossResult

MASK = "mask"


class ReplacementObjective:
    """Train `build(spec, device)` to map the sequences at the spec's hookpoint to those at its target."""

    reads_rows = False  # whole sequences: the module attends over positions

    def __init__(self, build: Callable[[DictionarySpec, torch.device], nn.Module]) -> None:
        self.build = build

    def build_module(self, spec: DictionarySpec, device: torch.device) -> nn.Module:
        if spec.source.hookpoint is None or spec.source.target_hookpoint is None:
            raise SaekitError(f"{spec.name}: a replacement reads `hookpoint` (the layer's input) and predicts "
                              "`target_hookpoint` (its output): set both")
        return self.build(spec, device)

    @staticmethod
    def sequences(member: Any, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(x, y, mask) of one batch on the member's device, x and y [n, T, d], mask bool [n, T]."""
        source = member.spec.source
        missing = [key for key in (source.hookpoint, source.target_hookpoint) if key not in batch]
        if missing:
            raise SaekitError(f"{member.spec.name} needs the sequences of {', '.join(missing)} but the stream "
                              f"has {', '.join(sorted(k for k in batch if k != MASK))}: add them to the "
                              "stream's hookpoints")
        x, y = batch[source.hookpoint], batch[source.target_hookpoint]
        if x.ndim != 3 or y.ndim != 3:
            raise SaekitError(f"{member.spec.name} reads sequences [n, T, d], got a tensor of shape "
                              f"{tuple(x.shape)}: make the stream with ActivationStream(..., sequences=True)")
        mask = batch[MASK] if MASK in batch else torch.ones(x.shape[:2], dtype=torch.bool)
        device = member.device
        return (x.to(device, torch.float32), y.to(device, torch.float32),
                mask.to(device=device, dtype=torch.bool))

    def start(self, member: Any, batch: dict[str, Tensor], _target: Any) -> None:
        x, y, mask = self.sequences(member, batch)
        kind = member.training.normalize_activations
        member.scale_in = normalization.activation_scale(kind, x[mask]).to(member.device)
        member.scale_out = normalization.activation_scale(kind, y[mask]).to(member.device)
        member.normalization_tokens = int(mask.sum())
        initialize = getattr(member.dictionary, "initialize_from", None)
        if initialize is not None:
            initialize(x * member.scale_in, y * member.scale_out, mask, member.generator, member.scale_in)

    def loss(self, member: Any, batch: dict[str, Tensor], _target: Any, sparsity_coefficient: float,
             dead_mask: Tensor | None) -> LossResult:
        x, y, mask = self.sequences(member, batch)
        return member.dictionary.replacement_loss(x * member.scale_in, y * member.scale_out, mask,
                                                  sparsity_coefficient)
