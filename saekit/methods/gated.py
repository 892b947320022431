"""Gated SAE (Rajamanoharan et al. 2024; docs/methods.md "Per method").

π_gate = (x − b_dec)·W_enc + b_gate decides which latents fire; π_mag = (x − b_dec)·(W_enc ⊙ e^{r_mag})
+ b_mag sets their values: f = 1[π_gate > 0]·ReLU(π_mag). The loss adds λ·||ReLU(π_gate)||₁ and an
auxiliary reconstruction from ReLU(π_gate) through a frozen decoder, so the gate path learns to
reconstruct (the Heaviside passes no gradient). Defaults follow dictionary_learning: Adam(0, 0.999),
lr 5e-5, LR and λ warm-up, unit-norm decoder.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from saekit.activations import float_mask
from saekit.methods.base import Encoding, Method
from saekit.methods.dead_latents import squared_error


class Gated(Method):
    name = "gated"
    saelens_architecture = "gated"
    encoder_biases = ("b_gate", "b_mag", "r_mag")
    folded_biases = ("b_gate", "b_mag")

    def training_defaults(self, cfg: Any) -> dict[str, Any]:
        return dict(lr=5e-5, sparsity_coefficient=1.0, adam_betas=(0.0, 0.999), lr_warmup=0.05,
                    lr_decay=0.2, sparsity_warmup=0.1, normalize_activations="mean_norm_sqrt_d",
                    b_dec_init="zeros", unit_norm_decoder=True, decoder_init_norm=1.0, aux_k=0)

    def add_parameters(self, d: Any, training: Any, **factory: Any) -> None:
        for name in self.encoder_biases:
            setattr(d, name, nn.Parameter(torch.zeros(d.cfg.d_sae, **factory)))

    def encode(self, d: Any, x: Tensor, training: bool = False, sparse: bool = False) -> Encoding:
        shared = d.encoder_product(x)
        gate_pre = shared + d.b_gate
        mag_pre = shared * d.r_mag.exp() + d.b_mag
        gate_activation = gate_pre.relu()
        gate = float_mask(torch.gt, gate_activation.detach(), 0.0)
        return Encoding(gate * mag_pre.relu(), mag_pre, gate_activation=gate_activation)

    def sparsity_loss(self, d: Any, enc: Encoding) -> Tensor:
        assert enc.gate_activation is not None
        return enc.gate_activation.sum(-1).mean()

    def auxiliary_losses(self, d: Any, x: Tensor, target: Tensor, enc: Encoding) -> dict[str, Tensor]:
        """||y − ŷ_frozen(ReLU(π_gate))||² with the decoder frozen, so the gate path learns to reconstruct."""
        assert enc.gate_activation is not None
        frozen = enc.gate_activation @ d.W_dec.detach() + d.b_dec.detach()
        if d.cfg.skip_connection:
            frozen = frozen + x @ d.W_skip.detach().T
        return {"gated_aux": squared_error(target, frozen).mean()}
