"""The cross-layer transcoder (CLT): one encoder per layer, decoders from each layer into every later one.

    a_s = σ_s(x_s·W_enc[s] + b_enc[s])                  x_s: MLP input of layer s, [d_in]
    ŷ_t = Σ_{s ≤ t} a_s·W_dec^{s→t} + b_dec[t]          ŷ_t: MLP output of layer t, [d_out]

(METHODS-2 §1.2). Weights are stored per source layer, as circuit-tracer stores them:
- `W_enc[s]` [d_in, d_sae] (saekit's orientation, x·W_enc), `b_enc[s]` [d_sae];
- `W_dec[s]` [R_s, d_sae, d_out]: the decoders of layer s's latents into its targets s, s+1, …, s+R_s−1
  (block r writes into layer s+r; each block is contiguous, which the decoding kernels need). Latent i's
  concatenated decoder is W_dec[s][:, i], whose norm is the ‖d_{s,i}‖ the sparsity penalty uses.
  R_s = L − s, or 1 + `max_reach` when decoders reach only that many later layers;
- `b_dec[t]` [d_out] per target layer; `threshold[s]` [d_sae] for JumpReLU and BatchTopK.

Decoder memory is Σ_s R_s·d_sae·d_out = L(L+1)/2·d_sae·d_out without a reach limit: O(L²·F·d), the term
that dominates a CLT (docs/circuits.md "Memory"). Two knobs bound it: `max_reach` (O(L·R·F·d)) and
`decoder_dtype="bfloat16"` (half the bytes, for the weights, their gradients and Adam's moments). Decoding
uses sparse kernels over the active latents (`clt_kernels`), so compute grows with L0·R·d per token,
not F·R·d. The methods the replacement model (issue 16) reads: `encoder(s)`, `threshold_of(s)`,
`decoder(s, t)`, `decoder_bias(t)`, `skip(t)` (always None: CLTs here have no skip), `encode_layer`,
`decode_layer`, with `layers` naming the model layer of each position.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from saekit.circuits.clt_activations import CLTActivation, get_activation
from saekit.circuits.clt_kernels import sparse_block_decode
from saekit.circuits.layers import input_hookpoint, output_hookpoint
from saekit.config import check_fields, help_field
from saekit.errors import SaekitError
from saekit.methods.base import Encoding
from saekit.sparse import SparseCodes, sparse_decode

DECODER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Below this fraction of active latents a dense layer's decoding runs on the sparse kernels.
SPARSE_DECODE_DENSITY = 0.05


@dataclass
class CLTConfig:
    """What a cross-layer transcoder computes."""

    method: str = help_field("Cross-layer transcoder activation: jumprelu (circuit-tracing recipe), topk "
                             "(k per token and source layer), batchtopk (k·B per source layer over the "
                             "batch, a threshold at inference) or relu (inference only).", default="jumprelu")
    n_layers: int = help_field("Layers covered (encoders; decoders go from each into the later ones).",
                               default=0)
    d_in: int = help_field("Width of each layer's input (the MLP input).", default=0)
    d_sae: int = help_field("Latents per source layer.", default=0)
    d_out: int | None = help_field("Width of each layer's target (the MLP output; default d_in).", default=None)
    k: int | None = help_field("topk / batchtopk: active latents per token and source layer.", default=None)
    max_reach: int | None = help_field(
        "Cross-layer transcoders: how many later layers a layer's latents decode into besides their own "
        "(0: a per-layer transcoder set; unset: all later layers). Bounds decoder memory to O(L·reach·F·d).",
        default=None)
    decoder_dtype: str = help_field("Cross-layer transcoders: dtype of the decoder weights, float32 or "
                                    "bfloat16 (half the decoder memory; updates are rounded to bf16).",
                                    default="float32")
    name: str | None = help_field("A name for this dictionary (used in reports and file names).",
                                  default=None)

    def __post_init__(self) -> None:
        activation = get_activation(self.method)
        for field_name in ("n_layers", "d_in", "d_sae"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise SaekitError(f"{field_name} must be a positive integer, got {value!r}")
        if self.d_out is None:
            self.d_out = self.d_in
        if not isinstance(self.d_out, int) or isinstance(self.d_out, bool) or self.d_out <= 0:
            raise SaekitError(f"d_out must be a positive integer, got {self.d_out!r}")
        if self.max_reach is not None and (isinstance(self.max_reach, bool) or not isinstance(self.max_reach, int)
                                           or self.max_reach < 0):
            raise SaekitError(f"max_reach must be an integer >= 0 (or unset for all later layers), got "
                              f"{self.max_reach!r}")
        if self.decoder_dtype not in DECODER_DTYPES:
            raise SaekitError(f"decoder_dtype must be one of {', '.join(DECODER_DTYPES)}, got "
                              f"{self.decoder_dtype!r}")
        activation.check_config(self)

    def reach(self, source: int) -> int:
        """How many target layers (source included) layer `source` decodes into."""
        later = self.n_layers - source
        return later if self.max_reach is None else min(later, self.max_reach + 1)

    @property
    def decoder_pairs(self) -> int:
        """Number of (source, target) decoder blocks: L(L+1)/2 without a reach limit."""
        return sum(self.reach(s) for s in range(self.n_layers))

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        k = f"-k{self.k}" if self.k is not None else ""
        reach = f"-reach{self.max_reach}" if self.max_reach is not None else ""
        return f"clt-{self.method}{k}-{self.d_sae}{reach}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CLTConfig:
        check_fields(cls, data, "cross-layer transcoder config")
        return cls(**data)


@dataclass
class CLTProvenance:
    """Where a cross-layer transcoder's data comes from, and how a sweep routes the stream to it."""

    model_name: str | None = help_field("Model the activations come from.", default=None)
    layers: list[int] | None = help_field("Model layer of each position (default 0..n_layers−1).",
                                          default=None)
    input_hookpoints: list[str] | None = help_field("Hookpoint of each layer's input (default mlp_in.L).",
                                                    default=None)
    target_hookpoints: list[str] | None = help_field("Hookpoint of each layer's target (default mlp_out.L).",
                                                     default=None)
    dataset: str | None = help_field("Text the activations were computed on.", default=None)
    context_size: int | None = help_field("Tokens per sequence of the model forward.", default=None)

    def complete(self, n_layers: int) -> CLTProvenance:
        """A copy with layers and hookpoints filled in and checked against `n_layers`."""
        layers = list(self.layers) if self.layers is not None else list(range(n_layers))
        inputs = list(self.input_hookpoints) if self.input_hookpoints else [input_hookpoint(i) for i in layers]
        targets = list(self.target_hookpoints) if self.target_hookpoints else [output_hookpoint(i) for i in layers]
        for what, values in (("layers", layers), ("input_hookpoints", inputs), ("target_hookpoints", targets)):
            if len(values) != n_layers:
                raise SaekitError(f"the cross-layer transcoder has {n_layers} layers but {len(values)} {what} "
                                  "were given: make them agree")
        if sorted(set(layers)) != layers:
            raise SaekitError(f"layers must be distinct and increasing, got {layers}")
        return dataclasses.replace(self, layers=[int(v) for v in layers], input_hookpoints=inputs,
                                   target_hookpoints=targets)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CLTProvenance:
        check_fields(cls, data, "cross-layer transcoder provenance")
        return cls(**data)


class CLTEncoding:
    """The latents of every source layer from one forward (one `Encoding` per layer), with what the
    sweep member's firing statistics ask of an encoding; latent index = layer·d_sae + i."""

    def __init__(self, layers: list[Encoding]) -> None:
        self.layers = layers

    @property
    def rows(self) -> int:
        return self.layers[0].rows

    def firing_counts(self, n_latents: int) -> Tensor:
        width = n_latents // len(self.layers)
        return torch.cat([enc.firing_counts(width) for enc in self.layers])

    def mean_l0_tensor(self) -> Tensor:
        return torch.stack([enc.mean_l0_tensor() for enc in self.layers]).sum()

    def mean_l0(self) -> float:
        return float(self.mean_l0_tensor())

    def active_values(self) -> Tensor:
        return torch.cat([enc.active_values() for enc in self.layers])


def decode_rows(latents: Tensor, weight: Tensor) -> Tensor:
    """latents [n, F] · weight [F, w], on the sparse kernels (only the non-zero latents' rows are read)
    unless more than SPARSE_DECODE_DENSITY of the latents are active. A bf16 weight is read in float32
    (one source's decoders at a time), so only storage is bf16, never the arithmetic. Differentiable in
    both; the result has the latents' dtype."""
    weight = weight.float() if weight.dtype != latents.dtype else weight
    if float((latents != 0).float().mean()) > SPARSE_DECODE_DENSITY:
        return latents @ weight
    return sparse_decode(_codes_of(latents), weight)


def _codes_of(latents: Tensor) -> SparseCodes:
    """Sparse codes of the non-zero entries of dense latents [B, F], values still differentiable."""
    with torch.no_grad():
        rows, cols = torch.nonzero(latents, as_tuple=True)
        counts = torch.zeros(latents.shape[0], dtype=torch.long, device=latents.device).index_add_(
            0, rows, torch.ones_like(rows))
        offsets = torch.cumsum(counts, 0) - counts
    return SparseCodes(rows, cols, latents[rows, cols], offsets, latents.shape[0])


class CrossLayerTranscoder(nn.Module):
    """A cross-layer transcoder; see the module docstring for the weights and what they compute."""

    threshold: Any  # ParameterList (jumprelu) or buffer [L, d_sae] (batchtopk)

    def __init__(self, cfg: CLTConfig, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 training: Any = None, provenance: CLTProvenance | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.method: CLTActivation = get_activation(cfg.method)
        self.training_config = training
        self.provenance = (provenance or CLTProvenance()).complete(cfg.n_layers)
        self.meta: dict[str, Any] = {}
        self.log_feature_density: Tensor | None = None  # [L·d_sae], layer-major
        factory: dict[str, Any] = dict(dtype=dtype, device=device)
        decoder_factory: dict[str, Any] = dict(factory)
        if dtype == torch.float32:
            decoder_factory["dtype"] = DECODER_DTYPES[cfg.decoder_dtype]
        assert cfg.d_out is not None
        L, F = cfg.n_layers, cfg.d_sae
        self.W_enc = nn.ParameterList([nn.Parameter(torch.zeros(cfg.d_in, F, **factory)) for _ in range(L)])
        self.b_enc = nn.ParameterList([nn.Parameter(torch.zeros(F, **factory)) for _ in range(L)])
        self.W_dec = nn.ParameterList([nn.Parameter(torch.zeros(cfg.reach(s), F, cfg.d_out, **decoder_factory))
                                       for s in range(L)])
        self.b_dec = nn.Parameter(torch.zeros(L, cfg.d_out, **factory))
        self.method.add_parameters(self, training, **factory)

    # ------------------------------------------------------------------------------------ shapes
    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_out(self) -> int:
        assert self.cfg.d_out is not None
        return self.cfg.d_out

    @property
    def d_sae(self) -> int:
        """Latents per source layer."""
        return self.cfg.d_sae

    @property
    def n_latents(self) -> int:
        return self.cfg.n_layers * self.cfg.d_sae

    @property
    def layers(self) -> list[int]:
        assert self.provenance.layers is not None
        return list(self.provenance.layers)

    @property
    def input_hookpoints(self) -> list[str]:
        assert self.provenance.input_hookpoints is not None
        return list(self.provenance.input_hookpoints)

    @property
    def output_hookpoints(self) -> list[str]:
        assert self.provenance.target_hookpoints is not None
        return list(self.provenance.target_hookpoints)

    def reach(self, source: int) -> int:
        return self.cfg.reach(source)

    # -------------------------------------------------------------------- weights, per (source, target)
    def encoder(self, source: int) -> tuple[Tensor, Tensor]:
        """(W_enc [d_in, d_sae], b_enc [d_sae]) of layer `source`."""
        return self.W_enc[source], self.b_enc[source]

    def threshold_of(self, source: int) -> Tensor | None:
        """Layer `source`'s JumpReLU threshold [d_sae] (None for topk and relu, and for batchtopk
        before its threshold has been estimated)."""
        if not self.method.has_threshold:
            return None
        theta = self.threshold[source]
        return None if bool((theta < 0).any()) else theta

    def decoder_block(self, source: int, target: int) -> Tensor:
        """W_dec^{source→target} [d_sae, d_out] as a view of the stored weights."""
        offset = target - source
        if not 0 <= offset < self.reach(source):
            raise SaekitError(f"layer {source} does not decode into layer {target} (reach {self.reach(source)})")
        return self.W_dec[source][offset]

    def decoder(self, source: int, target: int) -> Tensor | None:
        """W_dec^{source→target} [d_sae, d_out], or None when `source` does not write to `target`
        (target before source, or beyond the reach)."""
        if not 0 <= target - source < self.reach(source):
            return None
        return self.decoder_block(source, target)

    def decoder_bias(self, target: int) -> Tensor:
        return self.b_dec[target]

    def skip(self, target: int) -> Tensor | None:
        return None

    def decoder_norms(self) -> list[Tensor]:
        """‖d_{s,i}‖ over the concatenation of latent i's decoders into every target, per source layer."""
        return [w.float().pow(2).sum((0, 2)).sqrt() for w in self.W_dec]

    def decoder_norms_by_target(self, source: int) -> Tensor:
        """[d_sae, reach] norms of each latent's decoder into each target layer (dashboards)."""
        return self.W_dec[source].detach().float().norm(dim=-1).T

    # -------------------------------------------------------------------------------- forward pass
    def preactivations(self, source: int, x: Tensor) -> Tensor:
        """h = x·W_enc[s] + b_enc[s] for inputs x [B, d_in] of layer `source`."""
        return torch.addmm(self.b_enc[source], x, self.W_enc[source])

    def encode_layers(self, x: Tensor, training: bool = False, sparse: bool = False) -> CLTEncoding:
        """Latents of every layer from inputs x [B, L, d_in]."""
        return CLTEncoding([self.method.encode_layer(self, s, x[:, s], training=training, sparse=sparse)
                            for s in range(self.n_layers)])

    def decode_layers(self, enc: CLTEncoding) -> Tensor:
        """ŷ [B, L, d_out]: every source's latents through its decoders, plus each target's bias.

        Sources with sparse codes (TopK family), or dense latents that are mostly zero, go through the
        block kernels of `clt_kernels` in one autograd node; mostly-active dense latents (JumpReLU early in
        training) through one matmul per block, summed per target out of place."""
        sparse: dict[int, SparseCodes] = {}
        dense: dict[int, Tensor] = {}
        for source, layer_enc in enumerate(enc.layers):
            if layer_enc.codes is not None:
                sparse[source] = layer_enc.codes
            else:
                assert layer_enc.latents is not None
                latents = layer_enc.latents.to(self.b_dec.dtype)
                if float((latents != 0).float().mean()) > SPARSE_DECODE_DENSITY:
                    dense[source] = latents
                else:
                    sparse[source] = _codes_of(latents)
        if sparse:
            targets = list(sparse_block_decode(sparse, list(self.W_dec), self.n_layers).unbind(0))
        else:
            targets = [torch.zeros(enc.rows, self.d_out, dtype=self.b_dec.dtype, device=self.b_dec.device)
                       for _ in range(self.n_layers)]
        for source, latents in dense.items():
            for r in range(self.reach(source)):
                targets[source + r] = targets[source + r] + latents @ self.W_dec[source][r].to(latents.dtype)
        return torch.stack(targets, dim=1) + self.b_dec

    @torch.no_grad()
    def encode_layer(self, source: int, x: Tensor) -> Tensor:
        """Dense latents [..., d_sae] of layer `source` for inputs x [..., d_in] (inference)."""
        shape = x.shape
        enc = self.method.encode_layer(self, source, x.reshape(-1, shape[-1]).to(self.b_dec.dtype))
        latents = enc.latents if enc.latents is not None else enc.codes.to_dense(self.d_sae)  # type: ignore[union-attr]
        return latents.reshape(*shape[:-1], self.d_sae)

    def encode(self, x: Tensor) -> Tensor:
        """Latents [..., L, d_sae] for inputs x [..., L, d_in] (inference)."""
        return torch.stack([self.encode_layer(s, x[..., s, :]) for s in range(self.n_layers)], dim=-2)

    def decode_source(self, source: int, latents: Tensor) -> Tensor:
        """What layer `source`'s latents [n, d_sae] write into each of its targets, [n, reach, d_out]
        (no bias): target `source + r` receives slot r."""
        latents = latents.to(self.b_dec.dtype)
        codes = None if float((latents != 0).float().mean()) > SPARSE_DECODE_DENSITY else _codes_of(latents)
        blocks = []
        for block in self.W_dec[source]:
            block = block.to(latents.dtype)
            blocks.append(latents @ block if codes is None else sparse_decode(codes, block))
        return torch.stack(blocks, dim=1)

    def decode_layer(self, target: int, latents: list[Tensor | None] | Tensor, x: Tensor | None = None) -> Tensor:
        """ŷ_target [..., d_out] from the latents of the sources up to `target` (`latents[s]` [..., d_sae];
        later entries are ignored). `x` is unused (no skip connection)."""
        out = self.b_dec[target]
        for source in range(target + 1):
            block = self.decoder(source, target)
            value = latents[source]
            if block is None or value is None:
                continue
            out = out + value.to(self.b_dec.dtype) @ block.to(self.b_dec.dtype)
        return out

    def decode(self, latents: Tensor) -> Tensor:
        """ŷ [..., L, d_out] from latents [..., L, d_sae]."""
        return torch.stack([self.decode_layer(t, [latents[..., s, :] for s in range(self.n_layers)])
                            for t in range(self.n_layers)], dim=-2)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction ŷ [..., L, d_out] of every layer's target from inputs x [..., L, d_in]."""
        return self.decode(self.encode(x))

    # ---------------------------------------------------------------------------- initialisation
    @torch.no_grad()
    def initialize(self, x: Tensor, training: Any, generator: torch.Generator | None = None,
                   target: Tensor | None = None) -> None:
        """The references' init (CLC, LS, after Ameisen et al.): W_enc ~ U(±1/√d_sae), W_dec ~
        U(±1/√(L·d_out)), encoder biases 0; b_dec per target from `training.b_dec_init` (zeros or the
        mean of the first rows, x [B, L, d_in] and target [B, L, d_out], both normalised)."""
        bound_enc = 1.0 / math.sqrt(self.d_sae)
        bound_dec = 1.0 / math.sqrt(self.n_layers * self.d_out)
        for w in self.W_enc:
            w.copy_((torch.rand(w.shape, generator=generator) * 2 - 1) * bound_enc)
        for w in self.W_dec:
            w.copy_(((torch.rand(w.shape, generator=generator) * 2 - 1) * bound_dec).to(w.dtype))
        for b in self.b_enc:
            b.zero_()
        if training.b_dec_init == "zeros" or target is None:
            self.b_dec.zero_()
        else:
            self.b_dec.copy_(target.float().mean(0))

    # --------------------------------------------------------------------------------- folding
    @torch.no_grad()
    def fold_activation_scale(self, scale_in: Tensor | float, scale_out: Tensor | float | None = None) -> None:
        """Make a CLT trained on c_s·x_s (targets c'_t·y_t) take raw inputs and return raw outputs:
        W_enc[s] ×= c_s, W_dec^{s→t} ÷= c'_t, b_dec[t] ÷= c'_t (latents and thresholds unchanged).
        Scales are per dimension [L·d] (one value per layer block) or scalars."""
        L = self.n_layers
        scale_out = scale_in if scale_out is None else scale_out
        s_in = torch.as_tensor(scale_in, dtype=torch.float32).flatten()
        s_out = torch.as_tensor(scale_out, dtype=torch.float32).flatten()
        s_in = s_in.expand(L * self.d_in) if s_in.numel() == 1 else s_in
        s_out = s_out.expand(L * self.d_out) if s_out.numel() == 1 else s_out
        s_in, s_out = s_in.reshape(L, self.d_in), s_out.reshape(L, self.d_out)
        for s in range(L):
            self.W_enc[s].mul_(s_in[s].to(self.W_enc[s])[:, None])
            reach = self.reach(s)
            w = self.W_dec[s].float() / s_out[s:s + reach, None, :].to(self.W_dec[s].device)
            self.W_dec[s].copy_(w.to(self.W_dec[s].dtype))
        self.b_dec.div_(s_out.to(self.b_dec))

    def weights(self) -> dict[str, Tensor]:
        """Every stored tensor by name (`W_enc.0`, `W_dec.3`, `b_dec`, `threshold.1` or `threshold`), as the
        trainer's and the writers' finiteness checks read them."""
        return {name: t.detach() for name, t in self.state_dict().items()}

    # ------------------------------------------------------------------------------ dashboards
    @torch.no_grad()
    def layer_dictionary(self, source: int) -> Any:
        """Layer `source`'s latents as a saekit transcoder `Dictionary` (same encoder, threshold and k)
        whose decoder is the sum of the latent's decoders into every target: what the latent writes
        into the residual stream. Dashboards read it (the logit lens and nearest latents use it)."""
        from saekit.config import DictionaryConfig, Provenance
        from saekit.dictionary import Dictionary

        cfg = DictionaryConfig(method=self.method.dictionary_method, d_in=self.d_in, d_sae=self.d_sae,
                               d_out=self.d_out, transcoder=True, k=self.cfg.k)
        d = Dictionary(cfg, dtype=torch.float32, device=self.b_dec.device)
        summed = self.W_dec[source].float().sum(0)
        weights = {"W_enc": self.W_enc[source].float(), "b_enc": self.b_enc[source].float(), "W_dec": summed,
                   "b_dec": torch.zeros_like(self.b_dec[source]).float()}
        if "threshold" in d.weights():
            weights["threshold"] = self.threshold[source].float()
        d.load_weights(weights)
        d.provenance = Provenance(model_name=self.provenance.model_name,
                                  hookpoint=self.input_hookpoints[source],
                                  target_hookpoint=self.output_hookpoints[source])
        d.meta = {"cross_layer_transcoder_layer": self.layers[source]}
        return d.eval()
