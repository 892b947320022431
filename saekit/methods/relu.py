"""ReLU SAE with the April-2024 recipe (Conerly et al.; docs/methods.md "Per method").

f = ReLU(x·W_enc + b_enc) with no pre-encoder bias; the sparsity term is Σ_i f_i·||d_i|| (crosscoders:
Σ_m ||d_i^m||) with an unconstrained decoder initialised at norm 0.1, λ warmed up over 5% of training,
the LR decayed over the last 20%, and inputs scaled to E||x|| = √d.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from saekit.methods.base import Encoding, Method


class ReLU(Method):
    name = "relu"
    saelens_architecture = "standard"
    saelens_transcoder_architecture = "transcoder"
    subtracts_b_dec = False

    def training_defaults(self, cfg: Any) -> dict[str, Any]:
        return dict(lr=5e-5, sparsity_coefficient=5.0, adam_betas=(0.9, 0.999), lr_warmup=0.0,
                    lr_decay=0.2, sparsity_warmup=0.05, normalize_activations="mean_norm_sqrt_d",
                    b_dec_init="zeros", unit_norm_decoder=False, decoder_init_norm=0.1, aux_k=0)

    def encode(self, d: Any, x: Tensor, training: bool = False, sparse: bool = False) -> Encoding:
        pre = d.encoder_product(x, d.b_enc)
        return Encoding(pre.relu(), pre)

    def sparsity_loss(self, d: Any, enc: Encoding) -> Tensor:
        assert enc.latents is not None
        return (enc.latents * d.decoder_norms()).sum(-1).mean()
