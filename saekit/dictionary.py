"""The one dictionary module: the weights every method shares, encode/decode, init and decoder upkeep.

A method object (`saekit.methods`) adds its own parameters and decides how pre-activations become
latents; this module never asks which method it holds. Layout follows SAELens so its users feel at
home: `W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_out]` (row = latent), `b_dec [d_out]`,
`threshold [d_sae]` for JumpReLU-style inference; Gated replaces `b_enc` by `b_gate`, `b_mag`, `r_mag`;
matching pursuit has no encoder weights at all.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from saekit.config import DictionaryConfig, Provenance
from saekit.methods import Encoding, Method, get_method


class Dictionary(nn.Module):
    """A sparse dictionary x ≈ decode(encode(x)) (for transcoders: y ≈ decode(encode(x), x))."""

    # Set by `saekit.training` on the dictionaries it trains; None for dictionaries that were loaded
    # from another library (they carry no invented training fields).
    training_config: Any
    # The weights (which exist depends on the method: see `Method.weight_names`).
    W_enc: nn.Parameter
    W_dec: nn.Parameter
    b_dec: nn.Parameter
    W_skip: nn.Parameter
    b_enc: nn.Parameter
    b_gate: nn.Parameter
    b_mag: nn.Parameter
    r_mag: nn.Parameter
    threshold: Tensor

    def __init__(self, cfg: DictionaryConfig, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", training: Any = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.method: Method = get_method(cfg.method)
        self.provenance = Provenance()
        self.training_config = training
        # Facts recorded alongside the weights (activation scale folded in, tokens seen, ...).
        self.meta: dict[str, Any] = {}
        # log10 firing density per latent, written to sparsity.safetensors when known.
        self.log_feature_density: Tensor | None = None
        factory: dict[str, Any] = dict(dtype=dtype, device=device)
        d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.d_out
        assert d_out is not None
        if self.method.has_encoder:
            self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, **factory))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_out, **factory))
        self.b_dec = nn.Parameter(torch.zeros(d_out, **factory))
        if cfg.skip_connection:
            self.W_skip = nn.Parameter(torch.zeros(d_out, d_in, **factory))
        self.method.add_parameters(self, training, **factory)

    # ----------------------------------------------------------------------------------------- weights
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def weights(self) -> dict[str, Tensor]:
        """Tensors under their SAELens names, detached: what goes into `sae_weights.safetensors`."""
        return {name: getattr(self, name).detach() for name in self.method.weight_names(self.cfg)}

    @torch.no_grad()
    def load_weights(self, tensors: dict[str, Tensor]) -> None:
        """Inverse of `weights()`; names and shapes must match exactly."""
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
    def encoder_product(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """(x − b_dec)·W_enc + bias (b_dec subtracted only if `apply_b_dec_to_input`), written as
        x·W_enc + (bias − b_dec·W_enc) in one addmm: the same numbers, but b_dec's gradient is a
        vector-matrix product instead of a full [B, d_sae]×[d_sae, d_in] one, and the bias costs no
        extra pass."""
        offset = bias if bias is not None else torch.zeros_like(self.W_enc[0])
        if self.cfg.apply_b_dec_to_input:
            offset = offset - self.b_dec @ self.W_enc
        return torch.addmm(offset, x, self.W_enc)

    def encode_with_details(self, x: Tensor, training: bool = False, sparse: bool = False) -> Encoding:
        """Latents plus what the losses need. `training` selects training-time behaviour (BatchTopK's
        batch-level selection, JumpReLU's fused L0); `sparse` the sparse TopK kernels."""
        return self.method.encode(self, x, training=training, sparse=sparse)

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
        assert latents is not None
        return latents.reshape(*shape[:-1], self.d_sae)

    def decode(self, latents: Tensor, x: Tensor | None = None) -> Tensor:
        """x̂ = f·W_dec + b_dec, plus W_skip·x for skip transcoders when the input x is given."""
        return self.add_skip(latents @ self.W_dec + self.b_dec, x)

    def add_skip(self, out: Tensor, x: Tensor | None) -> Tensor:
        if self.cfg.skip_connection and x is not None:
            out = out + x @ self.W_skip.T
        return out

    def decode_encoding(self, enc: Encoding, x: Tensor | None = None) -> Tensor:
        if enc.codes is not None:
            from saekit.sparse import sparse_decode

            return self.add_skip(sparse_decode(enc.codes, self.W_dec) + self.b_dec, x)
        assert enc.latents is not None
        return self.decode(enc.latents, x)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction x̂ = decode(encode(x)) (for transcoders: the predicted target)."""
        return self.decode(self.encode(x), x)

    # ---------------------------------------------------------------------------------- initialisation
    @torch.no_grad()
    def initialize(self, first_batch: Tensor, training: Any, generator: torch.Generator | None = None,
                   first_target: Tensor | None = None) -> None:
        """Random decoder directions at `decoder_init_norm`, tied encoder W_enc = W_decᵀ, zero encoder
        biases, and b_dec from the first batch (zeros, mean or geometric median; docs/methods.md
        "Common to all methods"). The method's own parameters start as `add_parameters` made them.

        Crosscoders with `crosscoder_init="same"` give every source block of a latent the same direction
        (each block at norm 1/√n of the row's): for two near-identical models a shared latent then starts
        with decoder cosine 1 instead of ≈ 0, which random independent blocks only lose slowly
        (docs/diffing.md measures it).

        Transcoders cannot tie (input and output spaces differ; Gemma Scope does not tie them either):
        the encoder gets its own random directions at the same norm, and b_dec is set from the target.
        W_skip starts at zero."""
        cfg = self.cfg
        d_out = cfg.d_out
        assert d_out is not None  # set by DictionaryConfig

        def random_rows(n: int, d: int) -> Tensor:
            rows = torch.randn(n, d, generator=generator, dtype=torch.float32)
            return rows / rows.norm(dim=-1, keepdim=True)

        n = cfg.n_sources
        if n > 1 and training.crosscoder_init == "same":
            # One direction per latent, repeated in every source block; the whole row keeps the norm.
            block = random_rows(cfg.d_sae, d_out // n) / n ** 0.5
            self.W_dec.copy_(block.repeat(1, n) * training.decoder_init_norm)
        else:
            self.W_dec.copy_(random_rows(cfg.d_sae, d_out) * training.decoder_init_norm)
        if self.method.has_encoder:
            if cfg.is_transcoder:
                self.W_enc.copy_(random_rows(cfg.d_sae, cfg.d_in).T * training.decoder_init_norm)
            else:
                self.W_enc.copy_(self.W_dec.T)
        x = (first_target if first_target is not None else first_batch).to(torch.float32)
        if training.b_dec_init == "mean":
            self.b_dec.copy_(x.mean(0))
        elif training.b_dec_init == "geometric_median":
            self.b_dec.copy_(geometric_median(evenly_spaced_rows(x, GEOMETRIC_MEDIAN_ROWS)))
        else:
            self.b_dec.zero_()

    # ----------------------------------------------------------------------------- decoder-norm upkeep
    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out the gradient component along each decoder row before the optimiser step:
        g ← g − (⟨g, d⟩/||d||²)·d, in place and without an [M, d] temporary (the step of a live run is
        a small fraction of the forward's; each pass over the decoder counts)."""
        W, grad = self.W_dec, self.W_dec.grad
        if grad is None:
            return
        squared_norms = W.norm(dim=-1).square_().clamp_min_(1e-24)
        along = torch.linalg.vecdot(grad, W).div_(squared_norms)
        grad.addcmul_(W, along.unsqueeze(-1), value=-1)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    # --------------------------------------------------------------------------------------- folding
    @torch.no_grad()
    def fold_activation_scale(self, scale_in: Tensor | float, scale_out: Tensor | float | None = None
                              ) -> None:
        """Make a dictionary trained on c·x (target c'·y) take raw x and return raw ŷ (see the method's
        `fold_activation_scale`). Scales are a scalar or one per input/output dimension."""
        scale_out = scale_in if scale_out is None else scale_out
        dtype, device = self.W_dec.dtype, self.W_dec.device
        self.method.fold_activation_scale(self, torch.as_tensor(scale_in, dtype=dtype, device=device),
                                          torch.as_tensor(scale_out, dtype=dtype, device=device))

    def fold_decoder_norms(self) -> None:
        """Give decoder rows unit norm and scale each latent by its old norm (f_i ← f_i·||d_i||).

        Outputs are unchanged for methods whose latents are decided one by one (relu, jumprelu, gated);
        selection methods (TopK family, matching pursuit) refuse: folding would change what they select.
        """
        self.method.fold_decoder_norms(self)


# b_dec's geometric median is estimated on at most this many rows of the normalisation tokens: on SmolLM2's
# resid_post.6 (65k rows) the median of 16k evenly spaced rows is within 0.7% of the full one and its sum of
# distances within 2e-5, at a fifth of the cost (0.13 s against 0.67 s on one thread).
GEOMETRIC_MEDIAN_ROWS = 16_384


def evenly_spaced_rows(x: Tensor, n: int) -> Tensor:
    """At most n rows of x, evenly spaced (so every batch read ahead is represented; no random draw)."""
    if x.shape[0] <= n:
        return x
    return x[torch.linspace(0, x.shape[0] - 1, n, device=x.device).long()]


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
