"""BatchTopK SAE (Bussmann, Leask, Nanda 2024; docs/methods.md "Per method").

In training the k·B largest pre-activations of the whole batch fire, so the mean L0 is k while each
token's L0 varies. At inference a JumpReLU with one shared threshold θ replaces the batch selection: θ
is a bias-corrected EMA of the smallest selected activation per step, estimated from `threshold_start`
of training on (SAELens exports BatchTopK the same way, as `jumprelu` with θ for every latent).
Crosscoders select on f·Σ_m||d_i^m||, so each latent's own threshold is θ / Σ_m||d_i^m||.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from saekit.activations import topk_over_batch
from saekit.methods.base import Encoding, MethodState
from saekit.methods.topk import TopK

THRESHOLD_UNSET = -1.0


class BatchTopK(TopK):
    name = "batchtopk"
    saelens_architecture = "jumprelu"
    saelens_transcoder_architecture = "jumprelu_transcoder"
    batch_level = True

    def training_defaults(self, cfg: Any) -> dict[str, Any]:
        return dict(super().training_defaults(cfg), lr=3e-4, adam_betas=(0.9, 0.99))

    def add_parameters(self, d: Any, training: Any, **factory: Any) -> None:
        super().add_parameters(d, training, **factory)
        d.register_buffer("threshold", torch.full((d.cfg.d_sae,), THRESHOLD_UNSET, **factory))

    def weight_names(self, cfg: Any) -> list[str]:
        return super().weight_names(cfg) + ["threshold"]

    def select(self, d: Any, pre: Tensor, training: bool, scale: Tensor | None) -> Tensor:
        if training or not self.has_threshold(d):
            # BatchTopK in training; at inference too until a threshold has been estimated.
            return topk_over_batch(pre, d.cfg.k, scale)
        return pre * (pre > d.threshold).to(pre.dtype)

    @staticmethod
    def has_threshold(d: Any) -> bool:
        return not bool((d.threshold < 0).any())

    def new_state(self) -> MethodState:
        return ThresholdEstimate()


class ThresholdEstimate(MethodState):
    """The inference threshold: a bias-corrected EMA of each step's smallest selected activation."""

    def __init__(self) -> None:
        self.ema = 0.0
        self.updates = 0

    @torch.no_grad()
    def update(self, d: Any, enc: Encoding, step: int, total_steps: int, training: Any,
               reduce_min: Any = None) -> None:
        if step < training.threshold_start * total_steps:
            return
        scale = d.method.selection_scale(d)
        if scale is None:
            selected = enc.active_values()
        else:  # crosscoders select on f·norm: estimate θ on that scale
            if enc.codes is not None:
                selected = enc.codes.values.detach() * scale[enc.codes.cols]
            else:
                assert enc.latents is not None
                selected = enc.latents.detach() * scale
            selected = selected[selected > 0]
        smallest = float(selected.min()) if selected.numel() else math.inf
        if reduce_min is not None:
            smallest = reduce_min(smallest)
        if not math.isfinite(smallest):
            return
        # The EMA spans at most ~the last 10% of the run: a short run's activations drift, and a long
        # horizon then averages in early thresholds (measured: inference L0 22 for k = 32 after 137
        # steps with β = 0.999). Long runs keep the configured β.
        beta = min(training.threshold_ema, 1.0 - 10.0 / max(total_steps, 20))
        self.ema = beta * self.ema + (1 - beta) * smallest
        self.updates += 1
        estimate = self.ema / (1 - beta ** self.updates)  # bias-corrected, as Adam does
        if scale is None:
            d.threshold.fill_(estimate)
        else:
            d.threshold.copy_(estimate / scale.clamp_min(1e-12))

    def state_dict(self) -> dict[str, Any]:
        return {"threshold_ema": self.ema, "threshold_updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema = float(state["threshold_ema"])
        self.updates = int(state["threshold_updates"])
