"""JumpReLU SAE (Rajamanoharan et al. 2024) with Gemma Scope's recipe (docs/methods.md "Per method").

f = z·H(z − θ) with z = (x − b_dec)·W_enc + b_enc and a learned threshold θ per latent; the sparsity term
is L0 with the rectangle-kernel straight-through estimator (bandwidth ε). θ is trained directly (as
dictionary_learning does) and clamped at 0 after each step: in log space (BTK, SAELens) Adam moves
log θ by ~lr per step, far too slowly for θ to travel from θ0 = 1e-3 to typical thresholds in runs of
thousands of steps. Defaults: lr 7e-5, Adam(0, 0.999), E||x||² = 1, ε = θ0 = 1e-3, unit-norm decoder.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from saekit.activations import heaviside_step, jumprelu_with_l0
from saekit.methods.base import Encoding, Method


class JumpReLU(Method):
    name = "jumprelu"
    saelens_architecture = "jumprelu"
    saelens_transcoder_architecture = "jumprelu_transcoder"
    folded_biases = ("b_enc", "threshold")

    def training_defaults(self, cfg: Any) -> dict[str, Any]:
        return dict(lr=7e-5, sparsity_coefficient=1e-3, adam_betas=(0.0, 0.999), lr_warmup=0.05,
                    lr_decay=0.2, sparsity_warmup=0.2, normalize_activations="mean_squared_norm_1",
                    b_dec_init="zeros", unit_norm_decoder=True, decoder_init_norm=1.0, aux_k=0)

    def add_parameters(self, d: Any, training: Any, **factory: Any) -> None:
        super().add_parameters(d, training, **factory)
        initial = training.jumprelu_init_threshold if training is not None else 0.0
        d.threshold = nn.Parameter(torch.full((d.cfg.d_sae,), float(initial), **factory))

    def weight_names(self, cfg: Any) -> list[str]:
        return super().weight_names(cfg) + ["threshold"]

    def encode(self, d: Any, x: Tensor, training: bool = False, sparse: bool = False) -> Encoding:
        pre = d.encoder_product(x, d.b_enc)
        if training and torch.is_grad_enabled() and d.threshold.requires_grad:
            latents, l0, active = jumprelu_with_l0(pre, d.threshold, _bandwidth(d))
            return Encoding(latents, pre, l0=l0, _active=active)
        return Encoding(torch.where(pre > d.threshold, pre, 0.0), pre)

    def sparsity_loss(self, d: Any, enc: Encoding) -> Tensor:
        if enc.l0 is not None:
            return enc.l0
        assert enc.pre is not None
        return heaviside_step(enc.pre, d.threshold, _bandwidth(d)).sum(-1).mean()

    def after_step(self, d: Any) -> None:
        with torch.no_grad():
            d.threshold.clamp_(min=0.0)


DEFAULT_BANDWIDTH = 1e-3  # Gemma Scope's ε (TrainingConfig's default)


def _bandwidth(d: Any) -> float:
    """ε of the straight-through estimator: the training config's, else the default."""
    return d.training_config.jumprelu_bandwidth if d.training_config is not None else DEFAULT_BANDWIDTH
