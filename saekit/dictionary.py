"""The one dictionary module: weights, encode, decode, initialisation and decoder-norm handling.

Methods differ only in how pre-activations become latents (see `saekit.activations`) and in their loss
(see `saekit.losses`). Layout follows SAELens so its users feel at home:
`W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_in]` (row = latent), `b_dec [d_in]`,
`threshold [d_sae]` for JumpReLU-style inference; Gated replaces `b_enc` by `b_gate`, `b_mag`, `r_mag`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from saekit.activations import (column_sums, float_mask, jumprelu_with_l0, topk_over_batch,
                                topk_per_row)
from saekit.config import TOPK_FAMILY, DictionaryConfig
from saekit.sparse import SparseCodes, sparse_decode, sparse_topk_encode

THRESHOLD_UNSET = -1.0


@dataclass
class Encoding:
    """What one training forward produces; the loss reads the extra pre-activations it needs.

    Exactly one of `latents` (dense) and `codes` (sparse TopK-family path) is set.
    """

    latents: Tensor | None  # f [B, d_sae]
    # Encoder pre-activations [B, d_sae] (π_mag for Gated). Detached on the sparse path, and None for
    # per-row TopK there, which fuses product and selection so as never to hold a [B, d_sae] tensor.
    pre: Tensor | None
    # Gated: ReLU(π_gate), computed once for both the L1 term and the auxiliary reconstruction (one
    # ReLU backward over [B, d_sae] instead of two)
    gate_activation: Tensor | None = None
    codes: SparseCodes | None = None
    l0: Tensor | None = None  # JumpReLU in training: differentiable (STE) mean L0
    _active: Tensor | None = None

    def active(self) -> Tensor:
        """Float mask (0/1) of firing latents on the dense path, computed once."""
        if self._active is None:
            self._active = float_mask(torch.gt, self.latents.detach(), 0.0)
        return self._active

    @torch.no_grad()
    def firing_counts(self, d_sae: int) -> Tensor:
        """[d_sae] int64 firing counts. No host sync (no boolean indexing, no bincount, whose CUDA
        kernel reads the largest index back), so a GPU training step never waits on it."""
        if self.codes is not None:
            counts = torch.zeros(d_sae, dtype=torch.int64, device=self.codes.cols.device)
            return counts.index_add_(0, self.codes.cols, (self.codes.values > 0).long())
        return column_sums(self.active()).round().long()

    @torch.no_grad()
    def mean_l0_tensor(self) -> Tensor:
        """Mean active latents per token, as a 0-d tensor (read it when logging, not every step)."""
        if self.codes is not None:
            return (self.codes.values > 0).sum() / self.codes.batch_size
        return self.firing_counts(self.latents.shape[1]).sum() / self.latents.shape[0]

    def mean_l0(self) -> float:
        return float(self.mean_l0_tensor())

    @torch.no_grad()
    def active_values(self) -> Tensor:
        if self.codes is not None:
            values = self.codes.values.detach()
            return values[values > 0]
        latents = self.latents.detach()
        return latents[latents > 0]


class Dictionary(nn.Module):
    """A sparse dictionary x ≈ decode(encode(x)), for any method in `saekit.config.METHODS`."""

    def __init__(self, cfg: DictionaryConfig, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.cfg = cfg
        # Facts recorded alongside the weights (activation scale folded in, tokens seen, ...).
        self.meta: dict[str, Any] = {}
        # log10 firing density per latent, written to sparsity.safetensors when known.
        self.log_feature_density: Tensor | None = None
        kw = dict(dtype=dtype, device=device)
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.d_out
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, **kw))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_out, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_out, **kw))
        if cfg.skip_connection:
            self.W_skip = nn.Parameter(torch.zeros(d_out, d_in, **kw))
        if cfg.method == "gated":
            self.b_gate = nn.Parameter(torch.zeros(d_sae, **kw))
            self.b_mag = nn.Parameter(torch.zeros(d_sae, **kw))
            self.r_mag = nn.Parameter(torch.zeros(d_sae, **kw))
        else:
            self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))
        if cfg.method == "jumprelu":
            # θ is trained directly (as dictionary_learning does) and clamped at 0 after each step.
            # In log space (BTK, SAELens) Adam moves log θ by ~lr per step, far too slowly for θ to
            # travel from θ0 = 1e-3 to typical thresholds in runs of thousands of steps.
            self.threshold = nn.Parameter(torch.full((d_sae,), cfg.jumprelu_init_threshold, **kw))
        elif cfg.method in ("batchtopk", "matryoshka"):
            self.register_buffer("threshold", torch.full((d_sae,), THRESHOLD_UNSET, **kw))

    # ----------------------------------------------------------------------------------------- weights
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def weights(self) -> dict[str, Tensor]:
        """Tensors under their SAELens names, detached: what goes into `sae_weights.safetensors`."""
        names = ["W_enc", "W_dec", "b_dec"]
        names += ["b_gate", "b_mag", "r_mag"] if self.cfg.method == "gated" else ["b_enc"]
        if self.cfg.skip_connection:
            names.append("W_skip")
        if self.cfg.method in ("jumprelu", "batchtopk", "matryoshka"):
            names.append("threshold")
        return {name: getattr(self, name).detach() for name in names}

    @torch.no_grad()
    def load_weights(self, tensors: dict[str, Tensor]) -> None:
        """Inverse of `weights()`; shapes must match exactly."""
        expected = self.weights()
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise KeyError(f"missing {missing}, unexpected {extra}")
        for name, value in tensors.items():
            if value.shape != expected[name].shape:
                raise ValueError(f"{name} has shape {tuple(value.shape)}, expected "
                                 f"{tuple(expected[name].shape)}")
            getattr(self, name).copy_(value)

    # ------------------------------------------------------------------------------------ forward pass
    def _centered(self, x: Tensor) -> Tensor:
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def _encoder_product(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """(x − b_dec)·W_enc + bias, written as x·W_enc + (bias − b_dec·W_enc) in one addmm: the same
        numbers, but b_dec's gradient is a vector-matrix product instead of a full [B, d_sae]×[d_sae,
        d_in] one, and the bias costs no extra pass."""
        offset = bias if bias is not None else torch.zeros_like(self.W_enc[0])
        if self.cfg.apply_b_dec_to_input:
            offset = offset - self.b_dec @ self.W_enc
        return torch.addmm(offset, x, self.W_enc)

    def encode_with_details(self, x: Tensor, batch_level: bool = False, sparse: bool = False
                            ) -> Encoding:
        """Latents plus pre-activations. `batch_level` selects BatchTopK's training-time selection;
        `sparse` takes the sparse-kernel path for the TopK family (training only)."""
        method = self.cfg.method
        score_scale = self.selection_scale()
        if sparse and method in TOPK_FAMILY:
            codes, pre = sparse_topk_encode(
                x, self.W_enc, self.b_enc, self.b_dec if self.cfg.apply_b_dec_to_input else None,
                self.cfg.k, batch_level=batch_level and method != "topk", score_scale=score_scale)
            return Encoding(None, pre, codes=codes)
        if method == "gated":
            shared = self._encoder_product(x)
            gate_pre = shared + self.b_gate
            mag_pre = shared * self.r_mag.exp() + self.b_mag
            gate_activation = gate_pre.relu()
            gate = float_mask(torch.gt, gate_activation.detach(), 0.0)
            latents = gate * mag_pre.relu()
            return Encoding(latents, mag_pre, gate_activation=gate_activation)
        pre = self._encoder_product(x, self.b_enc)
        if method == "relu":
            latents = pre.relu()
        elif method == "jumprelu":
            if torch.is_grad_enabled() and self.threshold.requires_grad:
                latents, l0, active = jumprelu_with_l0(pre, self.threshold,
                                                       self.cfg.jumprelu_bandwidth)
                return Encoding(latents, pre, l0=l0, _active=active)
            latents = torch.where(pre > self.threshold, pre, 0.0)
        elif method == "topk":
            latents = topk_per_row(pre, self.cfg.k, score_scale)
        elif batch_level or bool((self.threshold < 0).any()):
            # BatchTopK in training; at inference too until a threshold has been estimated.
            latents = topk_over_batch(pre, self.cfg.k, score_scale)
        else:
            latents = pre * (pre > self.threshold).to(pre.dtype)
        return Encoding(latents, pre)

    def selection_scale(self) -> Tensor | None:
        """Crosscoders with TopK-family activations rank latents by f_i·Σ_m||d_i^m|| (the
        decoder-norm-scaled scores of the BatchTopK crosscoder), so a latent's cost does not depend on
        how its decoder norm is split between sources. Plain SAEs rank by f_i."""
        if self.cfg.n_sources == 1 or self.cfg.method not in TOPK_FAMILY:
            return None
        return self.decoder_norms().detach()

    def decoder_norms(self) -> Tensor:
        """||d_i|| per latent; for crosscoders the sum of per-source norms Σ_m ||d_i^m||."""
        n = self.cfg.n_sources
        if n == 1:
            return self.W_dec.norm(dim=-1)
        return self.W_dec.reshape(self.d_sae, n, -1).norm(dim=-1).sum(-1)

    def encode(self, x: Tensor) -> Tensor:
        """Latent activations f [..., d_sae] for inputs x [..., d_in] (inference behaviour)."""
        shape = x.shape
        latents = self.encode_with_details(x.reshape(-1, shape[-1])).latents
        return latents.reshape(*shape[:-1], self.d_sae)

    def decode(self, latents: Tensor, x: Tensor | None = None) -> Tensor:
        """x̂ = f·W_dec + b_dec, plus W_skip·x for skip transcoders when the input x is given."""
        out = latents @ self.W_dec + self.b_dec
        return self._add_skip(out, x)

    def _add_skip(self, out: Tensor, x: Tensor | None) -> Tensor:
        if self.cfg.skip_connection and x is not None:
            out = out + x @ self.W_skip.T
        return out

    def decode_encoding(self, enc: Encoding, x: Tensor | None = None) -> Tensor:
        if enc.codes is not None:
            return self._add_skip(sparse_decode(enc.codes, self.W_dec) + self.b_dec, x)
        return self.decode(enc.latents, x)

    def dead_preactivations(self, x: Tensor, dead_mask: Tensor) -> Tensor:
        """Encoder pre-activations of the dead latents only (for AuxK), with gradients."""
        return self._centered(x) @ self.W_enc[:, dead_mask] + self.b_enc[dead_mask]

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction x̂ = decode(encode(x)) (for transcoders: the predicted target)."""
        return self.decode(self.encode(x), x)

    # ---------------------------------------------------------------------------------- initialisation
    @torch.no_grad()
    def initialize(self, first_batch: Tensor, generator: torch.Generator | None = None,
                   first_target: Tensor | None = None) -> None:
        """METHODS.md init: random decoder directions at `decoder_init_norm`, tied encoder W_enc = W_decᵀ,
        zero encoder biases, and b_dec from the first batch (zeros, mean or geometric median).

        Transcoders cannot tie (input and output spaces differ; Gemma Scope does not tie them either):
        the encoder gets its own random directions at the same norm, and b_dec is set from the target.
        W_skip starts at zero."""
        cfg = self.cfg

        def random_rows(n: int, d: int) -> Tensor:
            rows = torch.randn(n, d, generator=generator, dtype=torch.float32)
            return rows / rows.norm(dim=-1, keepdim=True)

        self.W_dec.copy_(random_rows(cfg.d_sae, cfg.d_out) * cfg.decoder_init_norm)
        if cfg.is_transcoder:
            self.W_enc.copy_(random_rows(cfg.d_sae, cfg.d_in).T * cfg.decoder_init_norm)
        else:
            self.W_enc.copy_(self.W_dec.T)
        x = (first_target if first_target is not None else first_batch).to(torch.float32)
        if cfg.b_dec_init == "mean":
            self.b_dec.copy_(x.mean(0))
        elif cfg.b_dec_init == "geometric_median":
            self.b_dec.copy_(geometric_median(x))
        else:
            self.b_dec.zero_()

    # ----------------------------------------------------------------------------- decoder-norm upkeep
    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out the gradient component along each (unit) decoder row before the optimiser step."""
        if self.W_dec.grad is None:
            return
        rows = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        parallel = (self.W_dec.grad * rows).sum(-1, keepdim=True)
        self.W_dec.grad.sub_(parallel * rows)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    # --------------------------------------------------------------------------------------- folding
    @torch.no_grad()
    def fold_activation_scale(self, scale_in: Tensor | float, scale_out: Tensor | float | None = None
                              ) -> None:
        """Make a dictionary trained on c·x (target c'·y) take raw x and return raw ŷ, latents unchanged.

        With x_n = c⊙x: encode's (x_n − b_dec)·W_enc = (x − b_dec/c)·(diag(c)·W_enc), and decode's
        (f·W_dec + b_dec)/c' = f·(W_dec/c') + b_dec/c'; a skip term becomes diag(1/c')·W_skip·diag(c).
        Scales may be per dimension (crosscoders normalise each source separately). Thresholds and
        k-selection see identical pre-activations, so every method folds the same way.
        """
        scale_out = scale_in if scale_out is None else scale_out
        c_in = torch.as_tensor(scale_in, dtype=self.W_enc.dtype, device=self.W_enc.device)
        c_out = torch.as_tensor(scale_out, dtype=self.W_enc.dtype, device=self.W_enc.device)
        self.W_enc.mul_(c_in.reshape(-1, 1) if c_in.ndim else c_in)
        self.W_dec.div_(c_out)
        self.b_dec.div_(c_out)
        if self.cfg.skip_connection:
            self.W_skip.mul_(c_in).div_(c_out.reshape(-1, 1) if c_out.ndim else c_out)

    @torch.no_grad()
    def fold_decoder_norms(self) -> None:
        """Give decoder rows unit norm and scale each latent by its old norm (f_i ← f_i·||d_i||).

        Outputs are unchanged for relu, jumprelu and gated (their selection is per-latent); TopK-family
        selection compares latents with each other, so folding would change it and is refused.
        """
        if self.cfg.method in ("topk", "batchtopk", "matryoshka"):
            raise ValueError("fold_decoder_norms would change which latents a TopK method selects")
        norms = self.W_dec.norm(dim=-1).clamp_min(1e-12)
        self.W_dec.div_(norms[:, None])
        self.W_enc.mul_(norms)
        if self.cfg.method == "gated":
            self.b_gate.mul_(norms)
            self.b_mag.mul_(norms)
        else:
            self.b_enc.mul_(norms)
        if self.cfg.method == "jumprelu":
            self.threshold.mul_(norms)


@torch.no_grad()
def geometric_median(points: Tensor, iterations: int = 100, tol: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances to `points`."""
    median = points.mean(0)
    for _ in range(iterations):
        distances = (points - median).norm(dim=-1).clamp_min(1e-8)
        weights = 1.0 / distances
        updated = (weights[:, None] * points).sum(0) / weights.sum()
        if (updated - median).norm() <= tol * (median.norm() + 1e-12):
            return updated
        median = updated
    return median


@torch.no_grad()
def gated_to_jumprelu(gated: Dictionary) -> Dictionary:
    """The JumpReLU dictionary that computes exactly what a Gated one does (METHODS.md §2).

    π_mag = e^r·(π_gate − b_gate) + b_mag, so π_gate > 0 ⇔ π_mag > θ with θ = b_mag − e^r·b_gate, and
    f = 1[π_mag > θ]·ReLU(π_mag) = JumpReLU_max(θ,0)(π_mag).
    """
    if gated.cfg.method != "gated":
        raise ValueError(f"expected a gated dictionary, got {gated.cfg.method!r}")
    from dataclasses import replace

    cfg = replace(gated.cfg, method="jumprelu", sparsity_coefficient=None, lr=None, adam_betas=None,
                  lr_warmup=None, lr_decay=None, sparsity_warmup=None, normalize_activations=None,
                  b_dec_init=None, unit_norm_decoder=None, decoder_init_norm=None)
    scale = gated.r_mag.exp()
    threshold = (gated.b_mag - scale * gated.b_gate).clamp_min(0.0)
    out = Dictionary(cfg, dtype=gated.W_dec.dtype, device=gated.W_dec.device)
    out.load_weights({"W_enc": gated.W_enc * scale, "b_enc": gated.b_mag, "W_dec": gated.W_dec,
                      "b_dec": gated.b_dec, "threshold": threshold})
    out.meta = dict(gated.meta, converted_from="gated")
    return out.eval()
