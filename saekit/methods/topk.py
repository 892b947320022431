"""TopK SAE (Gao et al. 2024) and what the TopK family shares (docs/methods.md "Per method").

f = ReLU(TopK_k((x − b_dec)·W_enc + b_enc)): the k largest pre-activations of each token. Selection
compares latents with each other, so decoder norms cannot be folded, and training can run on the sparse
kernels of `saekit.sparse` (only the encoder's forward product stays dense). Dead latents are cared for
by AuxK. Crosscoders rank latents by f_i·Σ_m||d_i^m|| (the decoder-norm-scaled scores of the BatchTopK
crosscoder), so a latent's cost does not depend on how its decoder norm is split between sources.
Defaults: tied init, b_dec at the geometric median, unit-norm decoder, lr 2e-4/√(d_sae/2^14)
(sparsify's rule) raised for runs of under 2,700 steps (`topk_lr`), AuxK α = 1/32 with
k_aux = min(512, d_in/2) on every 4th step.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from saekit.activations import topk_per_row
from saekit.errors import SaekitError
from saekit.methods.base import Encoding, Method
from saekit.methods.dead_latents import auxk_loss
from saekit.sparse import sparse_topk_encode

# The learning-rate rule (docs/defaults.md "Learning rate"): sparsify's 2e-4/sqrt(d_sae/2^14) (Gao et al.'s
# LR ∝ 1/sqrt(n)) is tuned for runs of hundreds of millions of tokens and barely moves a short run. A run of
# S < LONG_RUN_STEPS steps gets it times (LONG_RUN_STEPS / S)^(3/4), at most 16 times: fitted on the budget
# sweep of benchmarks/defaults.py, where ~2e-3 at 244 steps is the largest LR that keeps dead latents
# under 2% and ~4e-3 at 97 steps leads sparsify's FVU.
LONG_RUN_STEPS = 2700
SHORT_RUN_EXPONENT = 0.75
MAX_SHORT_RUN_FACTOR = 16.0


def topk_lr(d_sae: int, total_steps: int) -> float:
    """The default Adam learning rate of a TopK dictionary of width d_sae trained for total_steps."""
    ratio = max(1.0, LONG_RUN_STEPS / max(total_steps, 1))
    return 2e-4 / math.sqrt(d_sae / 2**14) * min(MAX_SHORT_RUN_FACTOR, ratio**SHORT_RUN_EXPONENT)


class TopK(Method):
    name = "topk"
    saelens_architecture = "topk"
    uses_sparsity_coefficient = False
    folds_decoder_norms = False
    dead_latent_care = "auxk"
    batch_level = False  # BatchTopK selects over the whole batch in training
    config_fields = frozenset({"k"})

    def check_config(self, cfg: Any) -> None:
        super().check_config(cfg)
        if cfg.k is None:
            raise SaekitError(f"method {self.name!r} needs k: pass k=<active latents per token>")
        if isinstance(cfg.k, bool) or not isinstance(cfg.k, int) or cfg.k <= 0:
            raise SaekitError(f"k must be a positive integer, got {cfg.k!r}")
        if cfg.k > cfg.d_sae:
            raise SaekitError(f"k={cfg.k} exceeds d_sae={cfg.d_sae}: use k <= d_sae")

    def training_defaults(self, cfg: Any) -> dict[str, Any]:
        # lr: None here, set by the run's length (run_defaults)
        return dict(lr=None, sparsity_coefficient=0.0,
                    adam_betas=(0.9, 0.999), lr_warmup=0.0, lr_decay=0.2, sparsity_warmup=0.0,
                    normalize_activations="mean_norm_sqrt_d", b_dec_init="geometric_median",
                    unit_norm_decoder=True, decoder_init_norm=1.0,
                    aux_k=min(512, max(cfg.d_in // 2, 1), cfg.d_sae))

    def run_defaults(self, cfg: Any, total_steps: int, total_tokens: int) -> dict[str, Any]:
        return dict(super().run_defaults(cfg, total_steps, total_tokens), lr=topk_lr(cfg.d_sae, total_steps))

    def selection_scale(self, d: Any) -> Tensor | None:
        """Crosscoders rank by f_i·Σ_m||d_i^m||; plain dictionaries by f_i (None)."""
        return d.decoder_norms().detach() if d.cfg.n_sources > 1 else None

    def encode(self, d: Any, x: Tensor, training: bool = False, sparse: bool = False) -> Encoding:
        scale = self.selection_scale(d)
        if sparse:
            codes, pre = sparse_topk_encode(
                x, d.W_enc, d.b_enc, d.b_dec if d.cfg.apply_b_dec_to_input else None, d.cfg.k,
                batch_level=training and self.batch_level, score_scale=scale)
            return Encoding(None, pre, codes=codes)
        pre = d.encoder_product(x, d.b_enc)
        return Encoding(self.select(d, pre, training, scale), pre)

    def select(self, d: Any, pre: Tensor, training: bool, scale: Tensor | None) -> Tensor:
        """Dense latents from pre-activations [B, d_sae]."""
        return topk_per_row(pre, d.cfg.k, scale)

    def dead_latent_loss(self, d: Any, x: Tensor, residual: Tensor, enc: Encoding, dead_mask: Tensor,
                         per_token_error: Tensor, training: Any) -> tuple[str, Tensor, float] | None:
        if training.aux_k <= 0:
            return None
        loss = auxk_loss(d, x, residual, dead_mask, training.aux_k, sparse=training.sparse_kernels)
        return "auxk", loss, training.aux_coefficient * training.aux_every
