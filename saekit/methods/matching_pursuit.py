"""Matching-pursuit SAE (Costa et al. 2025, "From Flat to Hierarchical"; SAELens `matching_pursuit`,
PR #601; docs/methods.md "Matching pursuit").

The encoder is matching pursuit unrolled over the decoder itself (there is no W_enc): starting from the
residual r = x − b_dec, each step picks the atom with the largest ReLU(⟨r, d_j⟩), adds c = ReLU(⟨r, d_j⟩)
to latent j (a re-picked latent accumulates) and subtracts c·d_j from r. A token stops once a step leaves
its support unchanged (the re-picking step is still applied, as SAELens does) or ||r|| falls below
`residual_threshold` (0: never), and after at most k steps, so L0 ≤ k. Training backpropagates the
plain MSE through the whole loop into W_dec and b_dec (only the choice of atom has no gradient); there is
no sparsity term and no dead-latent loss. Atoms start at unit norm and are not renormalised (SAELens);
saekit's defaults keep that, with b_dec at zero and SAELens's lr 3e-4.

Because the coefficient is ⟨r, d_j⟩ (not divided by ||d_j||²), the code of c·x is c times the code of x
with the same support: an input scale folds into b_dec and the residual threshold, and the latents come
out in raw units ÷ c (a decoder-side fold, as SAELens does, would change the pursuit itself).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saekit.errors import SaekitError
from saekit.methods.base import Encoding, Method


class MatchingPursuit(Method):
    name = "matching_pursuit"
    saelens_architecture = "matching_pursuit"
    uses_sparsity_coefficient = False
    folds_decoder_norms = False
    has_encoder = False
    encoder_biases = ()
    dead_latent_care = "none"
    config_fields = frozenset({"k", "residual_threshold"})

    def check_config(self, cfg: Any) -> None:
        super().check_config(cfg)
        if isinstance(cfg.k, bool) or not isinstance(cfg.k, int) or cfg.k <= 0:
            raise SaekitError(f"matching_pursuit needs k, the number of pursuit steps (the most latents a "
                              f"token can use), as a positive integer; got {cfg.k!r}")
        if cfg.transcoder or cfg.n_sources > 1:
            raise SaekitError("matching_pursuit reconstructs its own input with its decoder: it cannot be a "
                              "transcoder or a crosscoder")
        if not (cfg.residual_threshold >= 0 and cfg.residual_threshold < float("inf")):
            raise SaekitError(f"residual_threshold must be a finite number >= 0, got {cfg.residual_threshold!r}")

    def training_defaults(self, cfg: Any) -> dict[str, Any]:
        return dict(lr=3e-4, sparsity_coefficient=0.0, adam_betas=(0.9, 0.999), lr_warmup=0.0,
                    lr_decay=0.2, sparsity_warmup=0.0, normalize_activations="mean_norm_sqrt_d",
                    b_dec_init="zeros", unit_norm_decoder=False, decoder_init_norm=1.0, aux_k=0)

    def check_training(self, cfg: Any, training: Any) -> None:
        if training.ghost_grads or training.aux_k or training.resample_every:
            raise SaekitError("matching_pursuit has no encoder to revive dead latents with: leave ghost_grads, "
                              "aux_k and resample_every unset")

    def add_parameters(self, d: Any, training: Any, **factory: Any) -> None:
        pass  # W_dec and b_dec only: the decoder is the encoder

    def encode(self, d: Any, x: Tensor, training: bool = False, sparse: bool = False) -> Encoding:
        W_dec = d.W_dec
        residual = x - d.b_dec if d.cfg.apply_b_dec_to_input else x
        batch = x.shape[0]
        threshold = d.cfg.residual_threshold
        support = torch.zeros(batch, d.cfg.d_sae, dtype=torch.bool, device=x.device)
        done = torch.zeros(batch, dtype=torch.bool, device=x.device)
        picks, values = [], []
        for _ in range(d.cfg.k):
            with torch.no_grad():
                best = (residual.detach() @ W_dec.detach().T).relu_().argmax(dim=-1)
            atoms = W_dec[best]
            value = (residual * atoms).sum(-1).relu() * (~done).to(x.dtype)
            residual = residual - value[:, None] * atoms
            picks.append(best)
            values.append(value)
            with torch.no_grad():
                repeated = support.gather(1, best[:, None]).squeeze(1)
                support.scatter_(1, best[:, None], (value > 0)[:, None] | repeated[:, None])
                done |= repeated | (value <= 0)
                if threshold > 0:
                    done |= residual.detach().norm(dim=-1) < threshold
                if bool(done.all()):
                    break
        latents = torch.zeros(batch, d.cfg.d_sae, dtype=x.dtype, device=x.device).scatter_add(
            1, torch.stack(picks, 1), torch.stack(values, 1))
        return Encoding(latents, None)

    @torch.no_grad()
    def fold_activation_scale(self, d: Any, scale_in: Tensor, scale_out: Tensor) -> None:
        blocks = torch.unique(scale_in)
        if blocks.numel() != 1 or not torch.equal(scale_in, scale_out):
            raise SaekitError("matching_pursuit folds only one scalar input scale")
        c = float(blocks[0])
        d.b_dec.div_(c)
        d.cfg.residual_threshold = d.cfg.residual_threshold / c
        d.meta["latent_unit"] = f"raw activations (trained on inputs scaled by {c:.6g}; latents ÷ that)"
