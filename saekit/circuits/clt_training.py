"""Training cross-layer transcoders through saekit's one trainer.

A `CLTSpec` is a sweep member like a `DictionarySpec`: `saekit.train(stream, [plt_specs..., clt_spec])`
trains per-layer transcoders and a CLT from the same model forward, with the trainer's checkpoints, exact
resume, logs and progress. The spec names its member class (`CLTMember`, a `SweepMember` whose module is
a `CrossLayerTranscoder`), so the trainer needs no CLT knowledge.

What a CLT step does differently from a dictionary's:
- input and target are every layer's MLP input and output side by side, [B, L·d]; each layer gets its
  own normalisation scalar (estimated on the first `normalization_tokens`, recorded, folded on export);
- the loss sums the targets' mean squared errors in that normalised space (so every layer counts
  alike: METHODS-2 §1.4, §1.7 "layer imbalance"), plus the activation's terms (JumpReLU: tanh sparsity
  and pre-activation loss; TopK family: AuxK per source layer);
- logs carry, per layer, the batch NMSE of each target (`fvu.layer_L`), the L0 of each source
  (`l0.layer_L`) and its dead fraction (`dead_fraction.layer_L`), besides the totals.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import torch
from torch import Tensor

from saekit.circuits.clt import CLTConfig, CLTProvenance, CrossLayerTranscoder
from saekit.circuits.clt_activations import get_activation
from saekit.config import help_field
from saekit.errors import SaekitError
from saekit.training import normalization
from saekit.training.config import MAX_DEAD_TOKENS, OPTIONAL_FIELDS, TrainingConfig, _check
from saekit.training.member import SweepMember, _lookup
from saekit.training.objective import LossResult


@dataclass
class CLTTrainingConfig(TrainingConfig):
    """How a cross-layer transcoder learns: every `TrainingConfig` field, plus the JumpReLU recipe's two."""

    tanh_scale: float | None = help_field("Cross-layer transcoders, jumprelu: c in the sparsity penalty "
                                          "Σ tanh(c·a·‖d‖) (4 as Anthropic and SAELens; CLC and GLT use 1).",
                                          default=None)
    preactivation_coefficient: float | None = help_field(
        "Cross-layer transcoders, jumprelu: weight of the pre-activation loss Σ ReLU(θ − h)·‖d‖ over every "
        "latent (3e-6).", default=None)

    KIND: ClassVar[str] = "cross-layer transcoder training config"

    def resolved(self, dictionary: Any) -> Any:
        """A copy with the CLT activation's defaults filled in and every value checked."""
        # dead_tokens: Gao's window (dictionaries scale theirs with the run)
        defaults = {"dead_tokens": MAX_DEAD_TOKENS,
                    **get_activation(dictionary.method).training_defaults(dictionary)}
        out = self.filled(defaults, OPTIONAL_FIELDS, f"cross-layer transcoder method {dictionary.method!r}")
        _check(cast(Any, out), cast(Any, dictionary))
        checks = [
            (not out.unit_norm_decoder, "unit_norm_decoder does not apply to cross-layer transcoders (their "
                                        "decoder norms are part of the sparsity penalty)"),
            (out.resample_every == 0, "resample_every does not apply to cross-layer transcoders (AuxK and the "
                                      "pre-activation loss care for dead latents)"),
            (not out.ghost_grads, "ghost_grads does not apply to cross-layer transcoders"),
            (out.target_l0 is None, "target_l0 is not implemented for cross-layer transcoders: set "
                                    "sparsity_coefficient (jumprelu) or k (topk, batchtopk)"),
            (out.tanh_scale is not None and out.tanh_scale >= 0, "tanh_scale must be >= 0"),
            (out.preactivation_coefficient is not None and out.preactivation_coefficient >= 0,
             "preactivation_coefficient must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise SaekitError(message)
        return out


CLT_TRAINING_ONLY = ("tanh_scale", "preactivation_coefficient")


@dataclass
class CLTSpec:
    """One cross-layer transcoder of a sweep: what it computes, how it learns, where its data comes from."""

    dictionary: CLTConfig
    training: CLTTrainingConfig = field(default_factory=CLTTrainingConfig)  # resolved on construction
    source: CLTProvenance = field(default_factory=CLTProvenance)

    def __post_init__(self) -> None:
        if not isinstance(self.training, CLTTrainingConfig):
            if isinstance(self.training, TrainingConfig):
                self.training = CLTTrainingConfig(**dataclasses.asdict(self.training))
            else:
                raise SaekitError(f"training must be a CLTTrainingConfig, got {type(self.training).__name__}")
        if not get_activation(self.dictionary.method).trainable:
            raise SaekitError(f"{self.dictionary.method} cross-layer transcoders cannot be trained (inference "
                              "only); use jumprelu, topk or batchtopk")
        self.training = self.training.resolved(self.dictionary)
        self.source = self.source.complete(self.dictionary.n_layers)

    @property
    def member_class(self) -> type[CLTMember]:
        return CLTMember

    @property
    def resolved(self) -> Any:
        return self.training

    @property
    def name(self) -> str:
        return self.dictionary.display_name

    @classmethod
    def from_options(cls, **options: Any) -> CLTSpec:
        """A spec from flat options, each sent to the dataclass that owns it (as `DictionarySpec`)."""
        parts: dict[type, dict[str, Any]] = {CLTConfig: {}, CLTTrainingConfig: {}, CLTProvenance: {}}
        owners = {f.name: cls_ for cls_ in parts for f in dataclasses.fields(cls_)}
        unknown = sorted(set(options) - set(owners))
        if unknown:
            raise SaekitError(f"unknown cross-layer transcoder option(s) {', '.join(unknown)}; see `saekit train "
                              "--help` for the valid names")
        for key, value in options.items():
            parts[owners[key]][key] = value
        try:
            return cls(CLTConfig(**parts[CLTConfig]), CLTTrainingConfig(**parts[CLTTrainingConfig]),
                       CLTProvenance(**parts[CLTProvenance]))
        except TypeError as error:
            raise SaekitError(f"bad cross-layer transcoder options: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "cross_layer_transcoder", "dictionary": self.dictionary.to_dict(),
                "training": self.training.to_dict(), "source": self.source.to_dict()}


class CLTObjective:
    """Reconstruct every layer's target from every layer's input (normalised per layer)."""

    def start(self, member: Any, x: Tensor, target: Tensor | None) -> None:
        member.start(x, target)

    def loss(self, member: Any, x: Tensor, target: Tensor | None, sparsity_coefficient: float,
             dead_mask: Tensor | None) -> LossResult:
        clt: CrossLayerTranscoder = member.dictionary
        L = clt.n_layers
        assert target is not None
        x = (x.to(member.device, torch.float32) * member.scale_in).view(-1, L, clt.d_in)
        target = (target.to(member.device, torch.float32) * member.scale_out).view(-1, L, clt.d_out)
        return clt_training_loss(clt, x, target, sparsity_coefficient, dead_mask, member.training)


def clt_training_loss(clt: CrossLayerTranscoder, x: Tensor, target: Tensor, sparsity_coefficient: float,
                      dead_mask: Tensor | None, training: Any) -> LossResult:
    """The CLT objective on normalised x [B, L, d_in] and target [B, L, d_out]."""
    enc = clt.encode_layers(x, training=True, sparse=training.sparse_kernels)
    y_hat = clt.decode_layers(enc)
    error = (y_hat - target).pow(2).sum(-1)  # [B, L]
    per_target = error.mean(0)
    total = per_target.sum()
    parts: dict[str, Tensor] = {"mse": per_target.detach().sum()}
    with torch.no_grad():
        centered = target - target.mean(0)
        fvu = error.detach().sum(0) / centered.pow(2).sum(-1).sum(0).clamp_min(1e-12)
        parts["fvu"] = fvu.mean()
        for position, layer in enumerate(clt.layers):
            parts[f"fvu.layer_{layer}"] = fvu[position]
            parts[f"l0.layer_{layer}"] = enc.layers[position].mean_l0_tensor()
    method = clt.method
    norms = clt.decoder_norms() if method.uses_decoder_norms else []
    sparsity = method.sparsity_loss(clt, enc.layers, norms, training)
    if sparsity is not None:
        total = total + sparsity_coefficient * sparsity
        parts["sparsity"] = sparsity.detach()
    for name, term in method.auxiliary_losses(clt, enc.layers, norms, training).items():
        total = total + term
        parts[name] = term.detach()
    if dead_mask is not None and bool(dead_mask.any()):
        dead = method.dead_latent_loss(clt, x, target - y_hat, enc.layers, dead_mask, training)
        if dead is not None:
            name, term, weight = dead
            total = total + weight * term
            parts[name] = term.detach()
    return LossResult(total, cast(Any, enc), y_hat, parts)


class CLTMember(SweepMember):
    """A sweep member training a `CrossLayerTranscoder` (the trainer drives it like any member)."""

    spec: CLTSpec  # type: ignore[assignment]
    cfg: CLTConfig  # type: ignore[assignment]

    def build_module(self) -> Any:
        return CrossLayerTranscoder(self.cfg, device=self.device, training=self.training,
                                    provenance=self.spec.source)

    def default_objective(self) -> Any:
        return CLTObjective()

    def widths(self) -> tuple[int, int]:
        L = self.cfg.n_layers
        return L * self.cfg.d_in, L * (self.cfg.d_out or self.cfg.d_in)

    @property
    def n_latents(self) -> int:
        return self.cfg.n_layers * self.cfg.d_sae

    def inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """Every layer's input (target) from the batch, side by side: [B, L·d_in] and [B, L·d_out]."""
        source = self.spec.source
        assert source.input_hookpoints is not None and source.target_hookpoints is not None
        x = torch.cat([_lookup(batch, key, self.spec).float() for key in source.input_hookpoints], dim=-1)
        target = torch.cat([_lookup(batch, key, self.spec).float() for key in source.target_hookpoints], dim=-1)
        d_in, d_out = self.widths()
        if x.shape[-1] != d_in or target.shape[-1] != d_out:
            raise SaekitError(f"cross-layer transcoder {self.spec.name}: the stream's layers have widths "
                              f"{x.shape[-1] // self.cfg.n_layers} (input) and "
                              f"{target.shape[-1] // self.cfg.n_layers} (target) but the config says "
                              f"d_in={self.cfg.d_in}, d_out={self.cfg.d_out}")
        return x, target

    def start(self, first_batch: Tensor, first_target: Tensor | None = None) -> None:
        """One normalisation scalar per layer for inputs and for targets, then the references' init."""
        assert first_target is not None
        L, kind = self.cfg.n_layers, self.training.normalize_activations
        x = first_batch.to(self.device, torch.float32)
        target = first_target.to(self.device, torch.float32)
        self.normalization_tokens = x.shape[0]
        self.scale_in = normalization.activation_scale(kind, x, L).to(self.device)
        self.scale_out = normalization.activation_scale(kind, target, L).to(self.device)
        self.dictionary.initialize((x * self.scale_in).view(-1, L, self.cfg.d_in), self.training, self.generator,
                                   (target * self.scale_out).view(-1, L, self.dictionary.d_out))

    def step(self, x: Any, step: int, target: Tensor | None = None) -> dict[str, Tensor | float]:
        parts = super().step(x, step, target)
        window = self.dead_window()  # as the logged total: not fired on the last min(dead_tokens, trained)
        dead = (self.tokens_since_fired >= window).view(self.cfg.n_layers, self.cfg.d_sae).float().mean(1)
        for position, layer in enumerate(self.dictionary.layers):
            parts[f"dead_fraction.layer_{layer}"] = dead[position]
        return parts

    def resample_dead_latents(self, x: Tensor, target: Tensor | None = None) -> int:
        raise SaekitError("resampling does not apply to cross-layer transcoders")

    def export(self, tokens_seen: int) -> Any:
        clt = copy.deepcopy(self.dictionary)
        clt.fold_activation_scale(self.scale_in, self.scale_out)
        L = self.cfg.n_layers
        clt.meta.update(training_tokens=tokens_seen, normalization={
            "method": self.training.normalize_activations, "per_layer": True,
            "input_scale": [float(v) for v in self.scale_in.view(L, -1)[:, 0]],
            "target_scale": [float(v) for v in self.scale_out.view(L, -1)[:, 0]],
            "estimated_on_tokens": self.normalization_tokens, "folded": True})
        density = self.firing_density()
        if density is not None:
            clt.log_feature_density = density.clamp_min(1e-10).log10()
        for param in clt.parameters():
            param.requires_grad_(False)
        return clt.eval()
