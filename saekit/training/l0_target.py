"""Steering λ to a target L0 (`TrainingConfig.target_l0`), for methods whose sparsity comes from a penalty.

Comparing methods "at the same L0" needs the L1/L0-penalty methods (relu, gated, jumprelu) to land on
an L0 chosen in advance, as TopK's k does by construction; SynthSAEBench's runs do it with an
autotuner on the coefficient. This is a small integral controller on log λ: after every step, with
L̄ the bias-corrected EMA (β = 0.9) of the batch L0,

    log m ← log m + g·c·clip(log(L̄ / target), −1, 1),   λ_effective = λ·m,

so λ grows while the L0 is too high and shrinks while it is too low, by at most a factor e^g per step;
c = 0.1 while L̄ is within a factor 1.65 of the target and already moving toward it (else 1), which
damps the overshoot that the lag between λ and the L0 would otherwise cause (JumpReLU's thresholds,
once raised past a latent's pre-activations, get no gradient back: an overshoot there stays).
The gain g = max(3e-4, 10 / total_steps) lets λ move by e^10 over a run of any length, fast enough for a
short CPU run and gentle over a long one. It starts after the λ warm-up (a warming-up penalty
would otherwise be answered by a runaway multiplier) and stays on through the LR decay. Its state is
four numbers, kept as tensors so a GPU step never waits on a read-back, and checkpointed with the member.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

EMA = 0.9
DAMPING = 0.1


class L0Controller:
    def __init__(self, target: float, total_steps: int, start_step: float, device: torch.device) -> None:
        self.target = float(target)
        self.start_step = start_step
        self.gain = max(3e-4, 10.0 / max(total_steps, 1))
        self.log_multiplier = torch.zeros((), dtype=torch.float64, device=device)
        self.smoothed = torch.zeros((), dtype=torch.float64, device=device)
        self.previous = torch.zeros((), dtype=torch.float64, device=device)  # last bias-corrected L̄
        self.updates = 0

    def multiplier(self) -> Tensor:
        return self.log_multiplier.exp().float()

    @torch.no_grad()
    def update(self, l0: Tensor, step: int) -> None:
        """Feed the batch's mean L0 (a 0-d tensor) after optimiser step `step`."""
        if step < self.start_step:
            return
        self.updates += 1
        self.smoothed.mul_(EMA).add_(l0.double(), alpha=1 - EMA)
        estimate = self.smoothed / (1 - EMA ** self.updates)
        error = (estimate.clamp_min(1e-6) / self.target).log().clamp(-1.0, 1.0)
        converging = (error * (estimate - self.previous) < 0) & (error.abs() < 0.5) & (self.updates > 1)
        self.log_multiplier.add_(self.gain * error * torch.where(converging, DAMPING, 1.0))
        self.previous.copy_(estimate)

    def state_dict(self) -> dict[str, Any]:
        return {"log_multiplier": self.log_multiplier.clone(), "smoothed": self.smoothed.clone(),
                "previous": self.previous.clone(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.log_multiplier.copy_(state["log_multiplier"])
        self.smoothed.copy_(state["smoothed"])
        self.previous.copy_(state["previous"])
        self.updates = int(state["updates"])

    def __repr__(self) -> str:
        multiplier = math.exp(float(self.log_multiplier))
        return f"L0Controller(target={self.target}, gain={self.gain:.3g}, multiplier={multiplier:.3g})"
