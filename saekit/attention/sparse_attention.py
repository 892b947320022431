"""Sparse attention replacement (Lorsa: He et al. 2025; METHODS-2.md §4.2): many rank-1 OV heads that
share a few QK heads, top-k sparse per token, trained to map an attention layer's (normalised) input
to its output.

For OV head i of QK head h(i):  z̃_i[q] = Σ_{k≤q} A_h(i)[q, k]·(x_k·w_v,i) + b_V,i,
A_h = softmax(causal(q_h k_hᵀ)·scale) with RoPE as in the model, z = TopK_k(ReLU(z̃)) over the OV heads
of each query token, and ŷ[q] = Σ_i z_i[q]·w_o,i + b_D. (b_V sits outside the sum because each row of A
sums to 1.) The OV part is therefore exactly a TopK transcoder whose encoder pre-activations are mixed
across positions by the QK heads, so it is held as one: `self.ov` is a `Dictionary` (method topk,
W_enc [d, n_ov] = the w_v, b_enc = b_V, W_dec [n_ov, d] = the w_o, b_dec = b_D), and decoder upkeep,
firing statistics, logit lens and nearest-latent views work on it unchanged. Latent i = OV head i; its QK
head is i // (n_ov / n_qk).

Initialisation (LS `initialize_lorsa_with_mhsa` and `initialize_W_D_with_active_subspace`): QK heads
are the model's heads, repeated n_qk / n_heads times; the OV heads of a QK head copied from head h get
output directions drawn at random in the top-d_head subspace of h's (demeaned) output on the first
batch, read through h's own OV map (w_v = M_h·w_o, unit rows), in ± pairs so that either sign of a
direction can fire under the ReLU. `exact(weights)` builds the replacement that reproduces the layer:
one QK head per head and its OV map's singular directions in ± pairs, all active (k = n_ov).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saekit.attention.model_attention import AttentionWeights
from saekit.config import DictionaryConfig, Provenance
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.methods import Encoding, get_method
from saekit.methods.topk import TopK
from saekit.sparse import SparseCodes, select_topk, sparse_decode
from saekit.training.objective import LossResult


@dataclass
class SparseAttentionConfig:
    """The QK side of a sparse attention replacement (the OV side is its `DictionaryConfig`)."""

    n_qk_heads: int
    d_qk: int
    rotary_dim: int = 0  # leading dimensions of each QK head rotated by RoPE (0: no RoPE)
    scaling: float | None = None  # score scale; default 1/√d_qk
    rotary_scaling: float = 1.0  # cos and sin multiplied by this (YaRN-style RoPE)
    layer: int | None = None  # the model layer it replaces (recorded)

    def __post_init__(self) -> None:
        for name in ("n_qk_heads", "d_qk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise SaekitError(f"{name} must be a positive integer, got {value!r}")
        if self.rotary_dim < 0 or self.rotary_dim > self.d_qk or self.rotary_dim % 2:
            raise SaekitError(f"rotary_dim must be an even number in [0, d_qk={self.d_qk}], got {self.rotary_dim}")
        if self.scaling is None:
            self.scaling = self.d_qk ** -0.5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rotate(x: Tensor, cos: Tensor, sin: Tensor, rotary_dim: int) -> Tensor:
    """RoPE in the rotate-half convention on the first `rotary_dim` dimensions of x [..., T, d_qk]."""
    if rotary_dim == 0:
        return x
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    return torch.cat((rot * cos + rotated * sin, rest), dim=-1)


class SparseAttention(nn.Module):
    """A Lorsa layer: `forward(x [B, T, d]) -> ŷ [B, T, d]` (see the module doc)."""

    inv_freq: Tensor

    def __init__(self, qk: SparseAttentionConfig, cfg: DictionaryConfig, training: Any = None,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        method = get_method(cfg.method)
        if not isinstance(method, TopK) or method.batch_level:
            raise SaekitError("a sparse attention replacement selects its OV heads by per-token TopK: use "
                              "method topk")
        if cfg.d_out != cfg.d_in or cfg.skip_connection or cfg.n_sources != 1:
            raise SaekitError("a sparse attention replacement maps d_model to d_model with no skip "
                              "connection and one source")
        if cfg.d_sae % qk.n_qk_heads:
            raise SaekitError(f"d_sae={cfg.d_sae} OV heads must split evenly over n_qk_heads={qk.n_qk_heads}")
        self.qk_config = qk
        factory: dict[str, Any] = dict(device=device, dtype=dtype)
        d = cfg.d_in
        self.W_Q = nn.Parameter(torch.zeros(qk.n_qk_heads, d, qk.d_qk, **factory))
        self.W_K = nn.Parameter(torch.zeros(qk.n_qk_heads, d, qk.d_qk, **factory))
        self.b_Q = nn.Parameter(torch.zeros(qk.n_qk_heads, qk.d_qk, **factory))
        self.b_K = nn.Parameter(torch.zeros(qk.n_qk_heads, qk.d_qk, **factory))
        self.register_buffer("inv_freq", torch.zeros(qk.rotary_dim // 2, device=device))
        self.ov = Dictionary(cfg, dtype=dtype, device=device, training=training)
        # The model layer to initialise from on the first batch (not part of the module's state).
        self.source_weights: AttentionWeights | None = None

    # ---------------------------------------------------------------- what the trainer reads
    @property
    def cfg(self) -> DictionaryConfig:
        return self.ov.cfg

    @property
    def method(self) -> Any:
        return self.ov.method

    @property
    def d_sae(self) -> int:
        return self.ov.d_sae

    @property
    def provenance(self) -> Provenance:
        return self.ov.provenance

    @provenance.setter
    def provenance(self, value: Provenance) -> None:
        self.ov.provenance = value

    @property
    def meta(self) -> dict[str, Any]:
        return self.ov.meta

    @property
    def log_feature_density(self) -> Tensor | None:
        return self.ov.log_feature_density

    @log_feature_density.setter
    def log_feature_density(self, value: Tensor | None) -> None:
        self.ov.log_feature_density = value

    @property
    def training_config(self) -> Any:
        return self.ov.training_config

    @training_config.setter
    def training_config(self, value: Any) -> None:  # the trainer records the run-length defaults it used
        self.ov.training_config = value

    @property
    def group_size(self) -> int:
        """OV heads per QK head."""
        return self.d_sae // self.qk_config.n_qk_heads

    def qk_head_of(self, latent: int | Tensor) -> Any:
        return latent // self.group_size

    def normalize_decoder(self) -> None:
        self.ov.normalize_decoder()

    def remove_parallel_decoder_grad(self) -> None:
        self.ov.remove_parallel_decoder_grad()

    @torch.no_grad()
    def fold_activation_scale(self, scale_in: Tensor | float, scale_out: Tensor | float | None = None) -> None:
        """Take raw x, return raw ŷ: queries and keys see c·x, so W_Q and W_K absorb c (per input dim)."""
        scale = torch.as_tensor(scale_in, dtype=self.W_Q.dtype, device=self.W_Q.device)
        factor = scale.reshape(1, -1, 1) if scale.ndim else scale
        self.W_Q.mul_(factor)
        self.W_K.mul_(factor)
        self.ov.fold_activation_scale(scale_in, scale_out)

    def weights(self) -> dict[str, Tensor]:
        """The tensors the format stores (QK side under its names, OV side under the dictionary's),
        detached; what checkpoints and saves check for non-finite values."""
        from saekit.attention.files import OV_TENSORS, QK_TENSORS

        tensors = {name: getattr(self, name).detach() for name in QK_TENSORS}
        tensors.update({name: getattr(self.ov, name).detach() for name in OV_TENSORS})
        return tensors

    def save_to(self, directory: Any, overwrite: bool = False) -> Any:
        from saekit.attention.files import save_sparse_attention

        return save_sparse_attention(self, directory, overwrite)

    # ------------------------------------------------------------------------- forward pass
    @property
    def scaling(self) -> float:
        return float(self.qk_config.scaling or self.qk_config.d_qk ** -0.5)

    def patterns(self, x: Tensor) -> Tensor:
        """A [B, n_qk, T, T]: each QK head's causal attention pattern over x [B, T, d]."""
        q, k = self.queries_keys(x)
        scores = q @ k.transpose(-1, -2) * self.scaling
        T = x.shape[1]
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        return scores.masked_fill(future, float("-inf")).softmax(-1)

    def queries_keys(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(q, k) [B, n_qk, T, d_qk] with RoPE applied at positions 0..T-1: one product for queries and
        keys together, and one rotation (they share the angles)."""
        B, T, d = x.shape
        n_qk, d_qk = self.qk_config.n_qk_heads, self.qk_config.d_qk
        weight = torch.cat([self.W_Q, self.W_K]).permute(1, 0, 2).reshape(d, 2 * n_qk * d_qk)
        bias = torch.cat([self.b_Q, self.b_K]).reshape(-1)
        qk = torch.addmm(bias, x.reshape(B * T, d), weight).view(B, T, 2 * n_qk, d_qk).transpose(1, 2)
        rotary_dim = self.qk_config.rotary_dim
        if rotary_dim:
            positions = torch.arange(T, device=x.device, dtype=torch.float32)
            freqs = positions[:, None] * self.inv_freq.float()[None]
            angles = torch.cat((freqs, freqs), dim=-1)
            cos = (angles.cos() * self.qk_config.rotary_scaling).to(qk.dtype)
            sin = (angles.sin() * self.qk_config.rotary_scaling).to(qk.dtype)
            qk = rotate(qk, cos, sin, rotary_dim)
        return qk[:, :n_qk], qk[:, n_qk:]

    def pre_activations(self, x: Tensor) -> Tensor:
        """z̃ [B, T, n_ov]: each OV head's value x·w_v, mixed over positions by its QK head, plus b_V."""
        B, T, _ = x.shape
        n_qk, group = self.qk_config.n_qk_heads, self.group_size
        q, k = self.queries_keys(x)
        values = (x @ self.ov.W_enc).reshape(B, T, n_qk, group).transpose(1, 2)  # [B, n_qk, T, group]
        mixed = F.scaled_dot_product_attention(q, k, values, is_causal=True, scale=self.scaling)
        return mixed.transpose(1, 2).reshape(B, T, self.d_sae) + self.ov.b_enc

    def encode(self, x: Tensor) -> Tensor:
        """Latents z [B, T, n_ov] (the k largest positive z̃ of each token)."""
        pre = self.pre_activations(x)
        return self.method.select(self.ov, pre.reshape(-1, self.d_sae), False, None).reshape(pre.shape)

    def decode(self, latents: Tensor) -> Tensor:
        return self.ov.decode(latents)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    # ------------------------------------------------------------------------------ training
    def replacement_loss(self, x: Tensor, y: Tensor, mask: Tensor, sparsity_coefficient: float,
                         sparse: bool = True) -> LossResult:
        """Mean over counted query tokens of ||ŷ − y||² (LS's loss), with the sparse TopK decoder."""
        pre = self.pre_activations(x)[mask]  # [N, n_ov]: counted queries only
        target = y[mask]
        k = self.cfg.k
        assert k is not None
        if sparse:
            rows, cols, offsets = select_topk(pre.detach(), k)
            codes = SparseCodes(rows, cols, pre[rows, cols].relu(), offsets, pre.shape[0])
            reconstruction = sparse_decode(codes, self.ov.W_dec) + self.ov.b_dec
            encoding = Encoding(None, pre.detach(), codes=codes)
        else:
            latents = self.method.select(self.ov, pre, True, None)
            reconstruction = latents @ self.ov.W_dec + self.ov.b_dec
            encoding = Encoding(latents, pre)
        error = (reconstruction - target).pow(2).sum(-1)
        total = error.mean()
        return LossResult(total, encoding, reconstruction, {"mse": error.detach().mean()})

    # ------------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def initialize_from(self, x: Tensor, y: Tensor, mask: Tensor, generator: torch.Generator | None = None,
                        input_scale: Tensor | float = 1.0) -> None:
        """The trainer's first-batch initialisation (normalised x, y): QK heads and OV heads from
        `source_weights` (the model layer), or, without one, random heads (LS's default scales)."""
        if self.source_weights is not None:
            scale = float(torch.as_tensor(input_scale).reshape(-1)[0])
            self.copy_qk(self.source_weights, input_scale=scale)
            self.initialize_ov(self.source_weights, x, y, mask, generator)
            self.source_weights = None  # used once; exports and checkpoints need not carry it
            return
        d = self.cfg.d_in
        for weight in (self.W_Q, self.W_K):
            weight.copy_(torch.randn(weight.shape, generator=generator) / d ** 0.5)
        self.ov.W_enc.copy_(torch.randn(self.ov.W_enc.shape, generator=generator) / self.d_sae ** 0.5)
        self.ov.W_dec.copy_(F.normalize(torch.randn(self.ov.W_dec.shape, generator=generator), dim=-1))
        self.ov.b_dec.copy_(y[mask].mean(0))

    @torch.no_grad()
    def copy_qk(self, weights: AttentionWeights, input_scale: float = 1.0) -> None:
        """QK head j = the model's head j mod n_heads (W_Q, W_K divided by the input scale, so they give
        the model's scores on normalised inputs); RoPE frequencies and score scale as in the model."""
        qk = self.qk_config
        if qk.d_qk != weights.d_head or qk.rotary_dim != 2 * weights.inv_freq.numel():
            raise SaekitError(f"QK heads of width {qk.d_qk} (rotary {qk.rotary_dim}) cannot copy heads of width "
                              f"{weights.d_head} (rotary {2 * weights.inv_freq.numel()})")
        if qk.n_qk_heads % weights.n_heads:
            raise SaekitError(f"n_qk_heads={qk.n_qk_heads} must be a multiple of the model's "
                              f"{weights.n_heads} heads to copy them")
        heads = torch.arange(qk.n_qk_heads) % weights.n_heads
        kv = torch.tensor([weights.kv_head(int(h)) for h in heads])
        self.W_Q.copy_(weights.W_Q[heads].transpose(1, 2) / input_scale)
        self.W_K.copy_(weights.W_K[kv].transpose(1, 2) / input_scale)
        self.b_Q.copy_(weights.b_Q[heads] if weights.b_Q is not None else torch.zeros_like(self.b_Q))
        self.b_K.copy_(weights.b_K[kv] if weights.b_K is not None else torch.zeros_like(self.b_K))
        self.inv_freq.copy_(weights.inv_freq)

    @torch.no_grad()
    def initialize_ov(self, weights: AttentionWeights, x: Tensor, y: Tensor, mask: Tensor,
                      generator: torch.Generator | None = None) -> None:
        """Active-subspace OV init from the first batch (x, y normalised [B, T, d]; see the module doc).
        Call after `copy_qk`."""
        n_heads, d_head = weights.n_heads, weights.d_head
        group = self.group_size
        patterns = self.patterns(x)  # [B, n_qk, T, T], QK head h copies model head h mod n_heads
        counted = mask.reshape(-1)
        W_enc = torch.zeros_like(self.ov.W_enc)
        W_dec = torch.zeros_like(self.ov.W_dec)
        for j in range(self.qk_config.n_qk_heads):
            head = j % n_heads
            ov_map = weights.ov_map(head)  # raw space; directions only matter, and rows are normalised
            head_out = (patterns[:, j] @ (x @ ov_map)).reshape(-1, x.shape[-1])[counted]
            centred = head_out - head_out.mean(0)
            basis = torch.linalg.svd(centred, full_matrices=False).Vh[:d_head]  # [d_head, d]
            n_pairs = (group + 1) // 2
            mix = torch.randn(n_pairs, basis.shape[0], generator=generator).to(basis)
            directions = F.normalize(mix @ basis, dim=-1)
            directions = torch.cat([directions, -directions])[:group]  # ± pairs
            reads = F.normalize(directions @ ov_map.T, dim=-1)
            block = slice(j * group, (j + 1) * group)
            W_dec[block] = directions
            W_enc[:, block] = reads.T
        self.ov.W_dec.copy_(W_dec)
        self.ov.W_enc.copy_(W_enc)
        self.ov.b_enc.zero_()
        self.ov.b_dec.copy_(y.reshape(-1, y.shape[-1])[counted].mean(0))

    @classmethod
    @torch.no_grad()
    def exact(cls, weights: AttentionWeights) -> SparseAttention:
        """The replacement that reproduces the layer exactly (METHODS-2.md §4 check 2): one QK head per
        head, 2·d_head OV heads per head along the singular directions of its OV map (± pairs, so the
        ReLU passes either sign), k = n_ov."""
        n_heads, d_head, d = weights.n_heads, weights.d_head, weights.d_model
        n_ov = 2 * d_head * n_heads
        qk = SparseAttentionConfig(n_heads, d_head, 2 * weights.inv_freq.numel(), weights.scaling,
                                   weights.rotary_scaling, weights.layer)
        cfg = DictionaryConfig(method="topk", d_in=d, d_sae=n_ov, k=n_ov, transcoder=True)
        replacement = cls(qk, cfg)
        replacement.copy_qk(weights)
        for head in range(n_heads):
            U, S, Vh = torch.linalg.svd(weights.ov_map(head))
            reads, writes = (U[:, :d_head] * S[:d_head]).T, Vh[:d_head]
            block = slice(head * 2 * d_head, (head + 1) * 2 * d_head)
            replacement.ov.W_enc[:, block] = torch.cat([reads, -reads]).T
            replacement.ov.W_dec[block] = torch.cat([writes, -writes])
        bias = weights.value_bias_output()
        replacement.ov.b_dec.copy_(bias if weights.b_O is None else bias + weights.b_O)
        return replacement.eval()
