"""How a cross-layer transcoder's pre-activations become latents, and the losses each activation brings.

One object per activation family, looked up by name (as `saekit.methods` does for dictionaries):
- `jumprelu`: a = h·H(h − θ) per (layer, feature), θ trained with the rectangle-kernel STE; the
  circuit-tracing recipe's losses: λ·Σ_{l,i} tanh(c·a_{l,i}·‖d_{l,i}‖) with ‖d_{l,i}‖ the norm of the
  feature's decoders into every later layer concatenated, plus the pre-activation loss
  λ_p·Σ_{l,i} ReLU(θ_{l,i} − h_{l,i})·‖d_{l,i}‖ (docs/circuits.md "Losses" cites each choice);
- `topk`: the k largest pre-activations of each token, per source layer (ReLU after selection);
- `batchtopk`: the k·B largest of each source layer over the batch, and at inference a JumpReLU whose
  threshold per source layer is a bias-corrected EMA of the smallest selected value;
- `relu`: inference only (circuit-tracer's ReLU CLTs load as this).
The TopK family trains on `saekit.sparse` kernels and cares for dead latents with AuxK per source layer.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from saekit.activations import jumprelu, topk_over_batch, topk_per_row
from saekit.errors import SaekitError
from saekit.methods.base import Encoding, MethodState
from saekit.sparse import sparse_decode, sparse_topk_encode, sparse_topk_of_columns

if TYPE_CHECKING:
    from saekit.circuits.clt import CLTConfig, CrossLayerTranscoder

THRESHOLD_UNSET = -1.0


class CLTActivation:
    """One activation family of cross-layer transcoders."""

    name: ClassVar[str]
    dictionary_method: ClassVar[str]  # the saekit dictionary method computing one layer's latents
    uses_k: ClassVar[bool] = False
    trainable: ClassVar[bool] = True
    has_threshold: ClassVar[bool] = False  # a threshold per latent exists (a parameter or a buffer)
    uses_decoder_norms: ClassVar[bool] = False  # its losses read ‖d_{l,i}‖ (computed only then)

    def check_config(self, cfg: CLTConfig) -> None:
        if self.uses_k:
            if isinstance(cfg.k, bool) or not isinstance(cfg.k, int) or cfg.k <= 0:
                raise SaekitError(f"a {self.name} cross-layer transcoder needs k (active latents per token "
                                  f"and source layer), a positive integer; got {cfg.k!r}")
            if cfg.k > cfg.d_sae:
                raise SaekitError(f"k={cfg.k} exceeds d_sae={cfg.d_sae} (latents per layer): use k <= d_sae")
        elif cfg.k is not None:
            raise SaekitError(f"k does not apply to {self.name} cross-layer transcoders; leave it unset")

    def training_defaults(self, cfg: CLTConfig) -> dict[str, Any]:
        raise SaekitError(f"{self.name} cross-layer transcoders are for inference (loaded from "
                          "circuit-tracer); train jumprelu, topk or batchtopk")

    def add_parameters(self, clt: CrossLayerTranscoder, training: Any, **factory: Any) -> None:
        """Create per-layer thresholds when the family has them."""

    def encode_layer(self, clt: CrossLayerTranscoder, layer: int, x: Tensor, training: bool = False,
                     sparse: bool = False) -> Encoding:
        raise NotImplementedError

    def sparsity_loss(self, clt: CrossLayerTranscoder, encodings: list[Encoding], norms: list[Tensor],
                      training: Any) -> Tensor | None:
        return None

    def auxiliary_losses(self, clt: CrossLayerTranscoder, encodings: list[Encoding], norms: list[Tensor],
                         training: Any) -> dict[str, Tensor]:
        return {}

    def dead_latent_loss(self, clt: CrossLayerTranscoder, x: Tensor, residual: Tensor,
                         encodings: list[Encoding], dead_mask: Tensor, training: Any
                         ) -> tuple[str, Tensor, float] | None:
        return None

    def after_step(self, clt: CrossLayerTranscoder) -> None:
        """Called after every optimiser step."""

    def new_state(self) -> MethodState:
        return MethodState()


class ReLUActivation(CLTActivation):
    name = "relu"
    dictionary_method = "relu"
    trainable = False

    def encode_layer(self, clt: CrossLayerTranscoder, layer: int, x: Tensor, training: bool = False,
                     sparse: bool = False) -> Encoding:
        pre = clt.preactivations(layer, x)
        return Encoding(pre.relu(), pre)


class JumpReLUActivation(CLTActivation):
    """JumpReLU with the circuit-tracing losses (tanh sparsity on a·‖d‖, pre-activation loss)."""

    name = "jumprelu"
    dictionary_method = "jumprelu"
    has_threshold = True
    uses_decoder_norms = True

    def training_defaults(self, cfg: CLTConfig) -> dict[str, Any]:
        # JAN25 / circuit-tracing recipe (METHODS.md §3 "Variants", METHODS-2 §1.3-1.4): c = 4,
        # pre-activation loss 3e-6, bandwidth 2.0, θ0 = 0.1, λ warmed up over all of training, LR decay
        # over the last 20%, inputs and targets at E||x|| = √d per layer.
        return dict(lr=2e-4, sparsity_coefficient=1.0, adam_betas=(0.9, 0.999), lr_warmup=0.01,
                    lr_decay=0.2, sparsity_warmup=1.0, normalize_activations="mean_norm_sqrt_d",
                    b_dec_init="zeros", unit_norm_decoder=False, decoder_init_norm=1.0, aux_k=0,
                    jumprelu_bandwidth=2.0, jumprelu_init_threshold=0.1, tanh_scale=4.0,
                    preactivation_coefficient=3e-6)

    def add_parameters(self, clt: CrossLayerTranscoder, training: Any, **factory: Any) -> None:
        initial = float(training.jumprelu_init_threshold) if training is not None else 0.0
        clt.threshold = nn.ParameterList(
            [nn.Parameter(torch.full((clt.d_sae,), initial, **factory)) for _ in range(clt.n_layers)])

    def encode_layer(self, clt: CrossLayerTranscoder, layer: int, x: Tensor, training: bool = False,
                     sparse: bool = False) -> Encoding:
        pre = clt.preactivations(layer, x)
        theta = clt.threshold[layer]
        if training and torch.is_grad_enabled() and theta.requires_grad:
            return Encoding(jumprelu(pre, theta, _bandwidth(clt)), pre)
        return Encoding(torch.where(pre > theta, pre, 0.0), pre)

    def sparsity_loss(self, clt: CrossLayerTranscoder, encodings: list[Encoding], norms: list[Tensor],
                      training: Any) -> Tensor:
        """Σ over layers and latents of tanh(c·a·‖d‖), mean over tokens."""
        total = encodings[0].latents.new_zeros(())  # type: ignore[union-attr]
        for enc, norm in zip(encodings, norms):
            assert enc.latents is not None
            total = total + torch.tanh(training.tanh_scale * enc.latents * norm).sum(-1).mean()
        return total

    def auxiliary_losses(self, clt: CrossLayerTranscoder, encodings: list[Encoding], norms: list[Tensor],
                         training: Any) -> dict[str, Tensor]:
        """λ_p·Σ ReLU(θ − h)·‖d‖ over every latent (LS's form; SAELens's port restricts it to dead ones)."""
        if training.preactivation_coefficient <= 0:
            return {}
        total = norms[0].new_zeros(())
        for layer, (enc, norm) in enumerate(zip(encodings, norms)):
            assert enc.pre is not None
            total = total + ((clt.threshold[layer] - enc.pre).relu() * norm).sum(-1).mean()
        return {"preactivation": training.preactivation_coefficient * total}

    def after_step(self, clt: CrossLayerTranscoder) -> None:
        with torch.no_grad():
            for theta in clt.threshold:
                theta.clamp_(min=0.0)


class TopKActivation(CLTActivation):
    """k per token and source layer; AuxK on each source layer's dead latents."""

    name = "topk"
    dictionary_method = "topk"
    uses_k = True
    batch_level = False

    def training_defaults(self, cfg: CLTConfig) -> dict[str, Any]:
        # TopK family (LS, CLC, sparsify): Adam, LR decay over the last 20%, E||x|| = √d per layer,
        # b_dec at the target mean (sparsify), AuxK α = 1/32 (CLC, GLT).
        return dict(lr=2e-4 / math.sqrt(cfg.d_sae / 2**14), sparsity_coefficient=0.0,
                    adam_betas=(0.9, 0.999), lr_warmup=0.0, lr_decay=0.2, sparsity_warmup=0.0,
                    normalize_activations="mean_norm_sqrt_d", b_dec_init="mean", unit_norm_decoder=False,
                    decoder_init_norm=1.0, aux_k=min(512, max(cfg.d_in // 2, 1), cfg.d_sae),
                    tanh_scale=0.0, preactivation_coefficient=0.0)

    def encode_layer(self, clt: CrossLayerTranscoder, layer: int, x: Tensor, training: bool = False,
                     sparse: bool = False) -> Encoding:
        assert clt.cfg.k is not None
        if sparse:
            codes, pre = sparse_topk_encode(x, clt.W_enc[layer], clt.b_enc[layer], None, clt.cfg.k,
                                            batch_level=training and self.batch_level)
            return Encoding(None, pre, codes=codes)
        pre = clt.preactivations(layer, x)
        return Encoding(self.select(clt, layer, pre, training), pre)

    def select(self, clt: CrossLayerTranscoder, layer: int, pre: Tensor, training: bool) -> Tensor:
        assert clt.cfg.k is not None
        return topk_per_row(pre, clt.cfg.k)

    def dead_latent_loss(self, clt: CrossLayerTranscoder, x: Tensor, residual: Tensor,
                         encodings: list[Encoding], dead_mask: Tensor, training: Any
                         ) -> tuple[str, Tensor, float] | None:
        """AuxK per source layer: its dead latents' top-k_aux pre-activations reconstruct the residual of
        its own target layer through their decoder into that layer (CLC's per-layer form)."""
        if training.aux_k <= 0:
            return None
        F = clt.d_sae
        total = residual.new_zeros(())
        for layer in range(clt.n_layers):
            dead = dead_mask[layer * F:(layer + 1) * F]
            columns = dead.nonzero().squeeze(1)
            if columns.numel() == 0:
                continue
            k_aux = min(training.aux_k, columns.numel())
            codes = sparse_topk_of_columns(x[:, layer], clt.W_enc[layer], clt.b_enc[layer], None, k_aux,
                                           columns)
            own = clt.decoder_block(layer, layer)  # [F, d_out], a contiguous view of the parameter
            decoded = sparse_decode(codes, own.float())
            total = total + (residual[:, layer].detach() - decoded).pow(2).sum(-1).mean()
        return "auxk", total, training.aux_coefficient


class BatchTopKActivation(TopKActivation):
    """k·B per source layer over the batch in training; a JumpReLU threshold per layer at inference."""

    name = "batchtopk"
    dictionary_method = "batchtopk"
    batch_level = True
    has_threshold = True

    def training_defaults(self, cfg: CLTConfig) -> dict[str, Any]:
        return dict(super().training_defaults(cfg), lr=3e-4, adam_betas=(0.9, 0.99))

    def add_parameters(self, clt: CrossLayerTranscoder, training: Any, **factory: Any) -> None:
        clt.register_buffer("threshold", torch.full((clt.n_layers, clt.d_sae), THRESHOLD_UNSET, **factory))

    def select(self, clt: CrossLayerTranscoder, layer: int, pre: Tensor, training: bool) -> Tensor:
        theta = clt.threshold[layer]
        if training or bool((theta < 0).any()):
            assert clt.cfg.k is not None
            return topk_over_batch(pre, clt.cfg.k)
        return pre * (pre > theta).to(pre.dtype)

    def encode_layer(self, clt: CrossLayerTranscoder, layer: int, x: Tensor, training: bool = False,
                     sparse: bool = False) -> Encoding:
        if not training and not bool((clt.threshold[layer] < 0).any()):
            pre = clt.preactivations(layer, x)
            return Encoding(pre * (pre > clt.threshold[layer]).to(pre.dtype), pre)
        return super().encode_layer(clt, layer, x, training, sparse)

    def new_state(self) -> MethodState:
        return LayerThresholds()


class LayerThresholds(MethodState):
    """BatchTopK's inference threshold of each source layer: a bias-corrected EMA of the smallest
    selected activation of that layer per step (saekit's dictionary BatchTopK, per layer)."""

    def __init__(self) -> None:
        self.ema: list[float] = []
        self.updates = 0

    @torch.no_grad()
    def update(self, d: Any, enc: Any, step: int, total_steps: int, training: Any,
               reduce_min: Any = None) -> None:
        if step < training.threshold_start * total_steps:
            return
        layers = enc.layers
        if not self.ema:
            self.ema = [0.0] * len(layers)
        smallest = []
        for layer_enc in layers:
            values = layer_enc.active_values()
            value = float(values.min()) if values.numel() else math.inf
            if reduce_min is not None:
                value = reduce_min(value)
            smallest.append(value)
        if not all(math.isfinite(v) for v in smallest):
            return
        beta = min(training.threshold_ema, 1.0 - 10.0 / max(total_steps, 20))
        self.updates += 1
        for layer, value in enumerate(smallest):
            self.ema[layer] = beta * self.ema[layer] + (1 - beta) * value
            d.threshold[layer].fill_(self.ema[layer] / (1 - beta ** self.updates))

    def state_dict(self) -> dict[str, Any]:
        return {"threshold_ema": list(self.ema), "threshold_updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema = [float(v) for v in state["threshold_ema"]]
        self.updates = int(state["threshold_updates"])


def _bandwidth(clt: CrossLayerTranscoder) -> float:
    training = clt.training_config
    return float(training.jumprelu_bandwidth) if training is not None else 2.0


_ACTIVATIONS: dict[str, CLTActivation] = {}


def register_activation(activation: CLTActivation) -> CLTActivation:
    _ACTIVATIONS[activation.name] = activation
    return activation


for _family in (JumpReLUActivation, TopKActivation, BatchTopKActivation, ReLUActivation):
    register_activation(_family())


def get_activation(name: str) -> CLTActivation:
    try:
        return _ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise SaekitError(f"unknown cross-layer transcoder method {name!r}: choose one of "
                          f"{', '.join(_ACTIVATIONS)}") from None


def activation_names() -> list[str]:
    return list(_ACTIVATIONS)
