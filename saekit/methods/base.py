"""What a method is: the object that owns everything one family of dictionaries does differently.

A `Dictionary` holds the weights every method shares (W_enc, W_dec, b_dec, W_skip) and asks its method
for the rest: which extra parameters exist (b_enc or Gated's gate/magnitude biases; θ as a parameter or
a buffer), how pre-activations become latents (dense and sparse paths, one `Encoding` type), what the
sparsity and auxiliary losses are, what to do after each optimiser step (clamp θ) and on each batch's
statistics (the BatchTopK threshold EMA), whether decoder norms can be folded, what SAELens calls the
architecture, and the training defaults. Adding a method is one file with one subclass, registered by
name in `saekit.methods`; nothing else in the package switches on method names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from saekit.activations import column_sums, float_mask
from saekit.errors import SaekitError
from saekit.sparse import SparseCodes

if TYPE_CHECKING:
    from saekit.config import DictionaryConfig
    from saekit.dictionary import Dictionary
    from saekit.training.config import ResolvedTraining


@dataclass
class Encoding:
    """What one forward produces; losses read the extra pre-activations they need.

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

    @property
    def rows(self) -> int:
        """Tokens encoded."""
        if self.codes is not None:
            return self.codes.batch_size
        assert self.latents is not None
        return self.latents.shape[0]

    def active(self) -> Tensor:
        """Float mask (0/1) of firing latents on the dense path, computed once."""
        if self._active is None:
            assert self.latents is not None
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
        assert self.latents is not None
        return self.firing_counts(self.latents.shape[1]).sum() / self.latents.shape[0]

    def mean_l0(self) -> float:
        return float(self.mean_l0_tensor())

    @torch.no_grad()
    def active_values(self) -> Tensor:
        if self.codes is not None:
            values = self.codes.values.detach()
            return values[values > 0]
        assert self.latents is not None
        latents = self.latents.detach()
        return latents[latents > 0]


class MethodState:
    """Per-run statistics a method keeps beside its dictionary (checkpointed with the member)."""

    def update(self, d: Dictionary, enc: Encoding, step: int, total_steps: int,
               training: ResolvedTraining, reduce_min: Any = None) -> None:
        """Called after every optimiser step with that step's encoding."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Method:
    """One method family. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    # SAELens's architecture for an SAE of this method, and for a (skip) transcoder (None: none exists).
    saelens_architecture: ClassVar[str]
    saelens_transcoder_architecture: ClassVar[str | None] = None
    subtracts_b_dec: ClassVar[bool] = True  # default of apply_b_dec_to_input for SAEs
    uses_sparsity_coefficient: ClassVar[bool] = True
    # Latent i's value depends only on its own pre-activation, so f_i·||d_i|| can be folded into the
    # encoder (False for TopK selection, which compares latents with each other).
    folds_decoder_norms: ClassVar[bool] = True
    # The encoder biases, in the order SAELens names them (resampling zeroes them, folding scales them).
    encoder_biases: ClassVar[tuple[str, ...]] = ("b_enc",)
    # Dead-latent care this method supports: "ghost_grads" (the L1/L0 methods), "auxk" (TopK family) or
    # "none" (matching pursuit).
    dead_latent_care: ClassVar[str] = "ghost_grads"
    has_encoder: ClassVar[bool] = True  # False: no W_enc (matching pursuit encodes with the decoder)

    # ----------------------------------------------------------------------------------- configs
    # Method-specific DictionaryConfig fields this method reads; the others must stay at their defaults.
    config_fields: ClassVar[frozenset[str]] = frozenset()

    def check_config(self, cfg: DictionaryConfig) -> None:
        """Reject a DictionaryConfig this method cannot compute, with a one-line reason."""
        unused = {"k": None, "matryoshka_prefixes": None, "residual_threshold": 0.0}
        for name, default in unused.items():
            if name not in self.config_fields and getattr(cfg, name) != default:
                raise SaekitError(f"{name} does not apply to method {self.name!r}; leave it unset")

    def training_defaults(self, cfg: DictionaryConfig) -> dict[str, Any]:
        """Values for every TrainingConfig field left at None (docs/methods.md cites each)."""
        raise NotImplementedError

    def run_defaults(self, cfg: DictionaryConfig, total_steps: int, total_tokens: int) -> dict[str, Any]:
        """Defaults that depend on the run's length, for the fields `training_defaults` left at None
        (training.config.RUN_DEFAULTS): the dead window, a tenth of the run (at most 10M tokens)."""
        from saekit.methods.dead_latents import run_dead_tokens

        return {"dead_tokens": run_dead_tokens(total_tokens)}

    def check_training(self, cfg: DictionaryConfig, training: ResolvedTraining) -> None:
        """Reject training options that do not apply to this method."""
        if training.ghost_grads and self.dead_latent_care != "ghost_grads":
            raise SaekitError(f"ghost_grads applies to relu, gated and jumprelu; {self.name} uses AuxK")
        if training.target_l0 is not None and not self.uses_sparsity_coefficient:
            raise SaekitError(f"target_l0 steers the sparsity coefficient of relu, gated and jumprelu; "
                              f"{self.name} has none (its L0 is set by k)")
        if training.aux_k and self.dead_latent_care != "auxk":
            raise SaekitError(f"aux_k applies to the TopK family; {self.name} uses ghost_grads or "
                              "resample_every for dead latents")

    @property
    def uses_k(self) -> bool:
        return "k" in self.config_fields

    def display_name(self, cfg: DictionaryConfig, training: ResolvedTraining | None = None) -> str:
        """The default name: method and width, with k or (when training is known) λ."""
        if self.uses_k:
            return f"{self.name}-k{cfg.k}-{cfg.d_sae}"
        if training is not None and self.uses_sparsity_coefficient:
            return f"{self.name}-l{training.sparsity_coefficient:g}-{cfg.d_sae}"
        return f"{self.name}-{cfg.d_sae}"

    # --------------------------------------------------------------------------------- parameters
    def add_parameters(self, d: Dictionary, training: ResolvedTraining | None, **factory: Any) -> None:
        """Create the method's own parameters and buffers on `d` (default: one encoder bias)."""
        d.b_enc = torch.nn.Parameter(torch.zeros(d.cfg.d_sae, **factory))

    def weight_names(self, cfg: DictionaryConfig) -> list[str]:
        """Tensor names saved in sae_weights.safetensors, SAELens's names and order."""
        names = (["W_enc"] if self.has_encoder else []) + ["W_dec", "b_dec", *self.encoder_biases]
        if cfg.skip_connection:
            names.append("W_skip")
        return names

    # ------------------------------------------------------------------------------------- encode
    def encode(self, d: Dictionary, x: Tensor, training: bool = False, sparse: bool = False) -> Encoding:
        """Latents (and pre-activations) of inputs x [B, d_in]. `training` selects training-time
        behaviour (BatchTopK's batch selection, JumpReLU's fused L0); `sparse` the sparse TopK kernels."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------- losses
    def sparsity_loss(self, d: Dictionary, enc: Encoding) -> Tensor | None:
        """The term multiplied by the sparsity coefficient λ (None: the method has none)."""
        return None

    def reconstruction_loss(self, d: Dictionary, x: Tensor, target: Tensor, enc: Encoding,
                            per_token_error: Tensor) -> Tensor:
        """The reconstruction term of the objective (default: mean per-token squared error)."""
        return per_token_error.mean()

    def auxiliary_losses(self, d: Dictionary, x: Tensor, target: Tensor, enc: Encoding
                         ) -> dict[str, Tensor]:
        """Method-specific terms added to the loss with weight 1, by log name (Gated's aux loss)."""
        return {}

    def dead_latent_loss(self, d: Dictionary, x: Tensor, residual: Tensor, enc: Encoding,
                         dead_mask: Tensor, per_token_error: Tensor, training: ResolvedTraining
                         ) -> tuple[str, Tensor, float] | None:
        """(log name, loss, weight) of the dead-latent term, or None. Ghost grads by default."""
        if not training.ghost_grads:
            return None
        from saekit.methods.dead_latents import ghost_grads_loss

        return "ghost", ghost_grads_loss(d, residual, enc.pre, dead_mask, per_token_error,
                                         training.ghost_grads_form), 1.0

    # ------------------------------------------------------------------------------------ upkeep
    def after_step(self, d: Dictionary) -> None:
        """Called after every optimiser step (e.g. keep θ ≥ 0)."""

    def new_state(self) -> MethodState:
        return MethodState()

    @torch.no_grad()
    def fold_activation_scale(self, d: Dictionary, scale_in: Tensor, scale_out: Tensor) -> None:
        """Make `d`, trained on c·x (target c'·y), take raw x and return raw ŷ with the same latents.

        With x_n = c⊙x: encode's (x_n − b_dec)·W_enc = (x − b_dec/c)·(diag(c)·W_enc), and decode's
        (f·W_dec + b_dec)/c' = f·(W_dec/c') + b_dec/c'; a skip term becomes diag(1/c')·W_skip·diag(c).
        Scales may be per dimension (crosscoders normalise each source separately). Thresholds and
        k-selection see identical pre-activations, so every method with an encoder folds this way."""
        d.W_enc.mul_(scale_in.reshape(-1, 1) if scale_in.ndim else scale_in)
        d.W_dec.div_(scale_out)
        d.b_dec.div_(scale_out)
        if d.cfg.skip_connection:
            d.W_skip.mul_(scale_in).div_(scale_out.reshape(-1, 1) if scale_out.ndim else scale_out)

    @torch.no_grad()
    def fold_decoder_norms(self, d: Dictionary) -> None:
        """Give decoder rows unit norm and scale each latent by its old norm (f_i ← f_i·||d_i||)."""
        if not self.folds_decoder_norms:
            raise ValueError(f"fold_decoder_norms would change which latents {self.name} selects")
        norms = d.W_dec.norm(dim=-1).clamp_min(1e-12)
        d.W_dec.div_(norms[:, None])
        d.W_enc.mul_(norms)
        for name in self.folded_biases:
            getattr(d, name).mul_(norms)

    # Encoder biases (and thresholds) that scale with the latent when norms are folded.
    folded_biases: ClassVar[tuple[str, ...]] = ("b_enc",)
