"""Gated attention block (Mathwin, Akar, Sharkey 2024; METHODS-2.md §4.1), "a kind of transcoder adapted
for attention blocks": more heads than the original layer, each gated by a rank-1 bilinear gate that
multiplies its attention pattern, trained to reproduce the layer's output while a sparsity penalty on the
gates pushes every (query, key) pair to be served by few heads, so that heads stop sharing features.

Per head h (d_head 1, d_gate 1):  q̃ = x_q·w_gQ,h + b_gQ,h,  k̃ = x_k·w_gK,h + b_gK,h,
g_h(q, k) = clamp(q̃·k̃, 0, 1),  pattern_h = softmax(causal(q_h k_hᵀ / √d_head)) ⊙ g_h (not renormalised),
out = Σ_h (Σ_k pattern_h[q, k]·v_h[k])·W_O,h with W_V and W_O unit-normalised over d_model in the
forward pass and no output bias. Loss: MSE(out, y) averaged over elements + α·mean_{b,q,k}
(Σ_h g_h^0.6)^(1/0.6), the mean over all (q, k) pairs including the causally masked ones, as in the
reference code (METHODS-2 notes this is likely unintended; it is kept so α means the same). Init:
Xavier-normal Q, K, V, O and Q, K, V biases, orthogonal gate weights, zero gate biases.

It trains through `saekit.training.replacement.ReplacementObjective` like any replacement; its spec's
sparsity coefficient is α and its "latents" are the heads: latent h on a token is |z_h|, the norm of
head h's output there (zero when its gates are shut), so L0 counts the heads a token uses.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saekit.attention.skip_trigrams import softmax
from saekit.config import DictionaryConfig, Provenance
from saekit.errors import SaekitError
from saekit.methods import Encoding, get_method
from saekit.training.objective import LossResult

GATE_NORM_P = 0.6


class GatedAttentionBlock(nn.Module):
    """`forward(x [B, T, d]) -> out [B, T, d]`; `details(x)` adds per-head outputs and gates."""

    def __init__(self, cfg: DictionaryConfig, training: Any = None, device: str | torch.device = "cpu") -> None:
        super().__init__()
        if cfg.d_out != cfg.d_in or cfg.skip_connection or cfg.n_sources != 1:
            raise SaekitError("a gated attention block maps d_model to d_model: no skip connection, one source")
        self.cfg = cfg
        self.method = get_method(cfg.method)  # supplies the (no-op) per-step upkeep the trainer calls
        self.provenance = Provenance()
        self.training_config = training
        self.meta: dict[str, Any] = {}
        self.log_feature_density: Tensor | None = None
        n, d = cfg.d_sae, cfg.d_in
        factory: dict[str, Any] = dict(device=device)
        self.W_Q, self.W_K, self.W_V = (nn.Parameter(torch.zeros(n, d, 1, **factory)) for _ in range(3))
        self.W_O = nn.Parameter(torch.zeros(n, 1, d, **factory))
        self.b_Q, self.b_K, self.b_V = (nn.Parameter(torch.zeros(n, 1, **factory)) for _ in range(3))
        self.W_gate_Q, self.W_gate_K = (nn.Parameter(torch.zeros(n, d, 1, **factory)) for _ in range(2))
        self.b_gate_Q, self.b_gate_K = (nn.Parameter(torch.zeros(n, 1, **factory)) for _ in range(2))

    @property
    def n_heads(self) -> int:
        return self.cfg.d_sae

    @torch.no_grad()
    def initialize_from(self, x: Tensor, y: Tensor, mask: Tensor, generator: torch.Generator | None = None,
                        input_scale: Any = 1.0) -> None:
        """The reference's init (the first batch is not needed)."""
        for weight in (self.W_Q, self.W_K, self.W_V, self.W_O, self.b_Q, self.b_K, self.b_V):
            nn.init.xavier_normal_(weight, generator=generator)
        for weight in (self.W_gate_Q, self.W_gate_K):
            nn.init.orthogonal_(weight, generator=generator)
        self.b_gate_Q.zero_()
        self.b_gate_K.zero_()

    def details(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(head outputs [B, T, H, d], gates [B, T_q, T_k, H], z [B, T, H]) for x [B, T, d].

        With d_head = d_gate = 1 every score and gate is a product of two scalars, so they are formed by
        broadcasting in a [B, T_q, T_k, H] layout (heads last, where the gate norm reduces) rather than
        by batched matrix products."""
        d, n = self.cfg.d_in, self.n_heads

        def per_head(weight: Tensor, bias: Tensor) -> Tensor:  # [B, T, H]
            return torch.addmm(bias.reshape(-1), x.reshape(-1, d), weight.reshape(n, d).T).view(*x.shape[:2], n)

        q, k = per_head(self.W_Q, self.b_Q), per_head(self.W_K, self.b_K)
        v = per_head(F.normalize(self.W_V, dim=1), self.b_V)
        gate_q, gate_k = per_head(self.W_gate_Q, self.b_gate_Q), per_head(self.W_gate_K, self.b_gate_K)
        gates = (gate_q[:, :, None] * gate_k[:, None]).clamp(0.0, 1.0)
        T = x.shape[1]
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)[..., None]  # [T_q, T_k, 1]
        scores = (q[:, :, None] * k[:, None]).masked_fill(future, float("-inf"))
        pattern = softmax(scores, dim=2) * gates
        z = (pattern * v[:, None]).sum(2)  # [B, T_q, H]
        W_O = F.normalize(self.W_O, dim=2)[:, 0]  # [H, d]
        return z[..., None] * W_O, gates, z

    def forward(self, x: Tensor) -> Tensor:
        return self.details(x)[0].sum(2)

    def loss_terms(self, x: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(out [B, T, d], z [B, T, H], MSE over the counted tokens, gate penalty): the step's whole
        computation, a pure function of the parameters and inputs, so `compile_loss` can fuse it."""
        heads, gates, z = self.details(x)
        out = heads.sum(2)
        counted = mask[..., None].to(out.dtype)
        mse = ((out - y).pow(2) * counted).sum() / (counted.sum() * out.shape[-1])
        # (Σ_h g^p)^(1/p); a shut gate (clamped to 0) enters as 1e-12, so g^p has a finite derivative
        # there (which the clamp then zeroes) instead of 0·∞, at a cost below 1e-10 in the value
        penalty = gates.clamp_min(1e-12).pow(GATE_NORM_P).sum(-1).pow(1 / GATE_NORM_P).mean()
        return out, z, mse, penalty

    def compile_loss(self) -> None:
        """Train through `torch.compile(loss_terms)`: on a CPU the toy's step (elementwise work on
        [B, T, T, H] tensors) runs ~2.3x faster fused (24 vs 55 ms for 1000 sequences, 8 heads, one
        thread), after ~12 s of compiling; needs a C++ compiler. Same function, float-level differences."""
        import os
        import shutil

        on_cpu = self.W_Q.device.type == "cpu"
        compilers = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
        if on_cpu and not any(name and shutil.which(name) for name in compilers):
            raise SaekitError("compiling the gated block's step on a CPU needs a C++ compiler (g++ or clang++; "
                              "or set CXX): install one, or train without --compile")
        self._compiled_loss_terms = torch.compile(self.loss_terms)

    def replacement_loss(self, x: Tensor, y: Tensor, mask: Tensor, sparsity_coefficient: float) -> LossResult:
        out, z, mse, penalty = getattr(self, "_compiled_loss_terms", self.loss_terms)(x, y, mask)
        total = mse + sparsity_coefficient * penalty
        encoding = Encoding(z[mask].abs().detach(), None)
        return LossResult(total, encoding, out[mask],
                          {"mse": mse.detach(), "gate_penalty": penalty.detach()})

    # --------------------------------------------------------------- what the trainer calls
    def weights(self) -> dict[str, Tensor]:
        """Every parameter, detached (what the trainer checks for non-finite values)."""
        return {name: param.detach() for name, param in self.named_parameters()}

    def save_to(self, directory: Any, overwrite: bool = False) -> Any:
        raise SaekitError("a gated attention block has no on-disk format (it is studied on the skip-trigram "
                          "toys, in memory): train it without checkpoint_dir and keep the returned module")

    def normalize_decoder(self) -> None:
        pass  # W_V and W_O are normalised in every forward pass

    def remove_parallel_decoder_grad(self) -> None:
        pass

    @torch.no_grad()
    def fold_activation_scale(self, scale_in: Tensor | float, scale_out: Tensor | float | None = None) -> None:
        """Nothing to fold: W_V and W_O are unit norm by construction, so a scaled input or target could
        not be folded into them; the block trains on raw activations (normalize_activations='none')."""
        for scale in (scale_in, scale_out):
            if scale is not None and not torch.allclose(torch.as_tensor(scale).float(), torch.ones(())):
                raise SaekitError("a gated attention block trains on raw activations: use "
                                  "normalize_activations='none'")
