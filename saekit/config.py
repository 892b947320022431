"""Configuration dataclasses.

Every field carries its help text in `metadata["help"]`: the CLI builds `--help` from it, so a field's
documentation lives in exactly one place. Defaults that depend on the method (learning rate, sparsity
coefficient, schedules) are `None` here and resolved in `__post_init__` from `METHOD_DEFAULTS`, which
cites METHODS.md for each value.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from saekit.errors import SaekitError

METHODS = ("relu", "gated", "jumprelu", "topk", "batchtopk", "matryoshka")
TOPK_FAMILY = ("topk", "batchtopk", "matryoshka")
NORMALIZATIONS = ("none", "mean_norm_sqrt_d", "mean_squared_norm_1")
B_DEC_INITS = ("zeros", "mean", "geometric_median")


def _help(text: str, **kwargs: Any) -> Any:
    return field(metadata={"help": text}, **kwargs)


# Per-method defaults, from METHODS.md. Fractions are of the total number of training steps, so short
# runs keep the published shape of each schedule.
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    # §1 April-2024 update: lr 5e-5, λ≈5, λ warm-up over 5%, LR decay over the last 20%, Adam(0.9, 0.999),
    # E||x|| = sqrt(d) input scaling, decoder init norm 0.1, unconstrained decoder, zero biases.
    "relu": dict(lr=5e-5, sparsity_coefficient=5.0, adam_betas=(0.9, 0.999), lr_warmup=0.0,
                 lr_decay=0.2, sparsity_warmup=0.05, normalize_activations="mean_norm_sqrt_d",
                 b_dec_init="zeros", unit_norm_decoder=False, decoder_init_norm=0.1),
    # §2 Gated (DL defaults): Adam(0, 0.999), lr 5e-5, LR warm-up, λ warm-up, unit-norm decoder.
    "gated": dict(lr=5e-5, sparsity_coefficient=1.0, adam_betas=(0.0, 0.999), lr_warmup=0.05,
                  lr_decay=0.2, sparsity_warmup=0.1, normalize_activations="mean_norm_sqrt_d",
                  b_dec_init="zeros", unit_norm_decoder=True, decoder_init_norm=1.0),
    # §3 Gemma Scope: lr 7e-5, Adam(0, 0.999), E||x||^2 = 1, ε = θ0 = 1e-3, λ warm-up, unit-norm decoder.
    "jumprelu": dict(lr=7e-5, sparsity_coefficient=1e-3, adam_betas=(0.0, 0.999), lr_warmup=0.05,
                     lr_decay=0.2, sparsity_warmup=0.2, normalize_activations="mean_squared_norm_1",
                     b_dec_init="zeros", unit_norm_decoder=True, decoder_init_norm=1.0),
    # §4 TopK (OAI / sparsify): tied init, b_pre = geometric median, unit-norm decoder, AuxK 1/32.
    "topk": dict(lr=None, sparsity_coefficient=0.0, adam_betas=(0.9, 0.999), lr_warmup=0.0,
                 lr_decay=0.2, sparsity_warmup=0.0, normalize_activations="mean_norm_sqrt_d",
                 b_dec_init="geometric_median", unit_norm_decoder=True, decoder_init_norm=1.0),
    # §4 BatchTopK (BTK config): lr 3e-4, Adam(0.9, 0.99).
    "batchtopk": dict(lr=3e-4, sparsity_coefficient=0.0, adam_betas=(0.9, 0.99), lr_warmup=0.0,
                      lr_decay=0.2, sparsity_warmup=0.0, normalize_activations="mean_norm_sqrt_d",
                      b_dec_init="geometric_median", unit_norm_decoder=True, decoder_init_norm=1.0),
    "matryoshka": dict(lr=3e-4, sparsity_coefficient=0.0, adam_betas=(0.9, 0.99), lr_warmup=0.0,
                       lr_decay=0.2, sparsity_warmup=0.0, normalize_activations="mean_norm_sqrt_d",
                       b_dec_init="geometric_median", unit_norm_decoder=True, decoder_init_norm=1.0),
}


@dataclass
class DictionaryConfig:
    """One sparse dictionary: its method, shape and training hyperparameters."""

    method: str = _help(f"Dictionary method: one of {', '.join(METHODS)}.", default="topk")
    d_in: int = _help("Width of the input activations.", default=0)
    d_sae: int = _help("Number of latents (dictionary width).", default=0)
    k: int | None = _help("Active latents per token for topk, batchtopk and matryoshka "
                          "(mean per token for the batch variants).", default=None)
    sparsity_coefficient: float | None = _help(
        "λ: weight of the L1 term (relu: L1 of f·||d||; gated: L1 of the gate) or of the L0 term "
        "(jumprelu). Unused by the TopK family.", default=None)
    lr: float | None = _help("Adam learning rate. Default per method (TopK: 2e-4/sqrt(d_sae/2^14)).",
                             default=None)
    adam_betas: tuple[float, float] | None = _help("Adam (beta1, beta2).", default=None)
    adam_eps: float = _help("Adam epsilon.", default=1e-8)
    lr_warmup: float | None = _help("Fraction of steps for linear LR warm-up from 0.", default=None)
    lr_decay: float | None = _help("Fraction of final steps over which the LR decays linearly to 0.",
                                   default=None)
    sparsity_warmup: float | None = _help("Fraction of steps over which λ warms up linearly from 0.",
                                          default=None)
    grad_clip: float = _help("Clip the global gradient norm to this value (0 disables).", default=1.0)
    normalize_activations: str | None = _help(
        "Scale inputs by one fixed scalar estimated at the start of training: 'mean_norm_sqrt_d' "
        "(E||x|| = sqrt(d_in)), 'mean_squared_norm_1' (E||x||^2 = 1) or 'none'. The factor is recorded "
        "in the config and folded into the saved weights, so saved dictionaries take raw activations.",
        default=None)
    b_dec_init: str | None = _help("Decoder bias init: 'zeros', 'mean' or 'geometric_median' of the "
                                   "first batch.", default=None)
    unit_norm_decoder: bool | None = _help("Keep decoder rows at unit norm (project the parallel "
                                           "gradient, renormalise after each step).", default=None)
    decoder_init_norm: float | None = _help("Initial norm of each decoder row.", default=None)
    aux_k: int | None = _help("AuxK: latents used to reconstruct the residual from dead latents "
                              "(TopK family). Default min(512, d_in // 2); 0 disables.", default=None)
    aux_coefficient: float = _help("AuxK loss weight α.", default=1 / 32)
    dead_tokens: int = _help("A latent is dead once it has not fired for this many tokens.",
                             default=10_000_000)
    jumprelu_bandwidth: float = _help("JumpReLU straight-through bandwidth ε.", default=1e-3)
    jumprelu_init_threshold: float = _help("JumpReLU initial threshold θ0.", default=1e-3)
    threshold_ema: float = _help("BatchTopK/Matryoshka: EMA decay of the inference threshold.",
                                 default=0.999)
    threshold_start: float = _help("BatchTopK/Matryoshka: fraction of steps before the inference "
                                   "threshold starts being estimated.", default=0.1)
    matryoshka_prefixes: list[int] | None = _help(
        "Matryoshka nested prefix sizes (increasing, last = d_sae). Default: d_sae/16, /8, /4, /2, 1.",
        default=None)
    sparse_kernels: bool = _help("TopK family: train with sparse decoder and encoder-gradient kernels "
                                 "(same result as dense, much faster).", default=True)
    ghost_grads: bool = _help("Ghost grads on dead latents (relu, gated, jumprelu).", default=False)
    resample_every: int = _help("Resample dead latents every this many steps (0 disables).", default=0)
    d_out: int | None = _help("Transcoders: width of the target (default: d_in).", default=None)
    target_hookpoint: str | None = _help(
        "Transcoders: hookpoint whose activations are the target (e.g. the MLP output), while "
        "`hookpoint` is the input (e.g. the MLP input).", default=None)
    skip_connection: bool = _help("Transcoders: add a learned affine skip W_skip·x (zero-initialised).",
                                  default=False)
    apply_b_dec_to_input: bool | None = _help(
        "Subtract the decoder bias from the input before encoding. Default per method: no for relu "
        "(April-2024 update) and transcoders (b_dec lives in the output space), yes otherwise. Set it "
        "to load foreign dictionaries that differ (SAELens 'standard', Gemma Scope JumpReLU).",
        default=None)
    source_hookpoints: list[str] | None = _help(
        "Crosscoders: hookpoints (e.g. of two models or several layers) whose activations are "
        "concatenated into the input; each is normalised separately and has its own decoder block.",
        default=None)
    n_sources: int = _help("Crosscoders: number of equal-width blocks in the input (set from "
                           "source_hookpoints when given).", default=1)
    seed: int = _help("Random seed for initialisation.", default=0)
    name: str | None = _help("A name for this dictionary (used in reports and file names).",
                             default=None)
    hookpoint: str | None = _help("Where the activations come from (recorded in the saved config).",
                                  default=None)
    model_name: str | None = _help("Model the activations come from (recorded).", default=None)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise SaekitError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise SaekitError(f"{name} must be a positive integer, got {value!r}")
        if self.source_hookpoints is not None:
            self.source_hookpoints = list(self.source_hookpoints)
            self.n_sources = len(self.source_hookpoints)
        if self.n_sources < 1 or self.d_in % self.n_sources:
            raise SaekitError(f"d_in={self.d_in} must split into n_sources={self.n_sources} equal blocks")
        if self.d_out is None:
            self.d_out = self.d_in
        if self.d_out <= 0:
            raise SaekitError(f"d_out must be positive, got {self.d_out}")
        if (self.d_out != self.d_in or self.skip_connection) and self.target_hookpoint is None:
            raise SaekitError("d_out and skip_connection are for transcoders: also set target_hookpoint")
        if self.target_hookpoint is not None and self.n_sources > 1:
            raise SaekitError("a dictionary is either a transcoder or a crosscoder, not both")
        if self.apply_b_dec_to_input is None:
            # The April-2024 ReLU SAE has no pre-encoder bias, nor do transcoders (b_dec lives in the
            # output space); every other method subtracts b_dec first.
            self.apply_b_dec_to_input = self.method != "relu" and not self.is_transcoder
        elif self.apply_b_dec_to_input and self.is_transcoder:
            raise SaekitError("apply_b_dec_to_input is impossible for transcoders (b_dec is in the output "
                              "space): leave it unset")
        defaults = METHOD_DEFAULTS[self.method]
        for key, value in defaults.items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.lr is None:  # TopK: sparsify's 2e-4 / sqrt(M / 2^14)
            self.lr = 2e-4 / math.sqrt(self.d_sae / 2**14)
        self.adam_betas = tuple(float(b) for b in self.adam_betas)  # type: ignore[assignment]
        if self.method in TOPK_FAMILY:
            if self.k is None:
                raise SaekitError(f"method {self.method!r} needs k: pass k=<active latents per token>")
            if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k <= 0:
                raise SaekitError(f"k must be a positive integer, got {self.k!r}")
            if self.k > self.d_sae:
                raise SaekitError(f"k={self.k} exceeds d_sae={self.d_sae}: use k <= d_sae")
            if self.aux_k is None:
                self.aux_k = min(512, max(self.d_in // 2, 1), self.d_sae)
        else:
            self.aux_k = 0
        if self.method == "matryoshka":
            if self.matryoshka_prefixes is None:
                sizes = [max(self.d_sae // div, 1) for div in (16, 8, 4, 2)] + [self.d_sae]
                self.matryoshka_prefixes = sorted(set(sizes))
            prefixes = list(self.matryoshka_prefixes)
            if prefixes != sorted(set(prefixes)) or prefixes[-1] != self.d_sae or prefixes[0] <= 0:
                raise SaekitError("matryoshka_prefixes must be increasing positive sizes ending at "
                                  f"d_sae={self.d_sae}, got {prefixes}")
            self.matryoshka_prefixes = prefixes
        self._check_ranges()

    def _check_ranges(self) -> None:
        checks = [
            (self.normalize_activations in NORMALIZATIONS,
             f"normalize_activations must be one of {', '.join(NORMALIZATIONS)}"),
            (self.b_dec_init in B_DEC_INITS, f"b_dec_init must be one of {', '.join(B_DEC_INITS)}"),
            (self.lr > 0, "lr must be positive"),
            (self.sparsity_coefficient >= 0, "sparsity_coefficient must be >= 0"),
            (all(0.0 <= b < 1.0 for b in self.adam_betas) and len(self.adam_betas) == 2,
             "adam_betas must be two numbers in [0, 1)"),
            (0.0 <= self.lr_warmup <= 1.0 and 0.0 <= self.lr_decay <= 1.0
             and self.lr_warmup + self.lr_decay <= 1.0,
             "lr_warmup and lr_decay are fractions of training that must sum to at most 1"),
            (0.0 <= self.sparsity_warmup <= 1.0, "sparsity_warmup must be a fraction in [0, 1]"),
            (self.grad_clip >= 0, "grad_clip must be >= 0"),
            (self.decoder_init_norm > 0, "decoder_init_norm must be positive"),
            (self.aux_k >= 0, "aux_k must be >= 0"),
            (self.dead_tokens > 0, "dead_tokens must be positive"),
            (self.jumprelu_bandwidth > 0 and self.jumprelu_init_threshold > 0,
             "jumprelu_bandwidth and jumprelu_init_threshold must be positive"),
            (0.0 < self.threshold_ema < 1.0, "threshold_ema must be in (0, 1)"),
            (self.resample_every >= 0, "resample_every must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise SaekitError(f"{message} (method {self.method!r})")
        if self.ghost_grads and self.method in TOPK_FAMILY:
            raise SaekitError("ghost_grads applies to relu, gated and jumprelu; TopK methods use AuxK")

    @property
    def is_transcoder(self) -> bool:
        return self.target_hookpoint is not None

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        if self.method in TOPK_FAMILY:
            return f"{self.method}-k{self.k}-{self.d_sae}"
        return f"{self.method}-l{self.sparsity_coefficient:g}-{self.d_sae}"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["adam_betas"] = list(self.adam_betas)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DictionaryConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SaekitError(f"unknown dictionary config field(s) {', '.join(unknown)}; "
                              f"see `saekit train --help` for the valid names")
        data = dict(data)
        if data.get("adam_betas") is not None:
            data["adam_betas"] = tuple(data["adam_betas"])
        return cls(**data)


@dataclass
class TrainConfig:
    """How a sweep is trained: token budget, batching, checkpoints and logging."""

    total_tokens: int = _help("Tokens to train on.", default=2_000_000)
    batch_size: int = _help("Tokens per optimisation step.", default=4096)
    checkpoint_dir: str | None = _help("Directory for periodic checkpoints and exact resume.",
                                       default=None)
    checkpoint_every: int = _help("Steps between checkpoints (0: only at the end).", default=0)
    keep_checkpoints: int = _help("How many recent checkpoints to keep.", default=2)
    resume: bool = _help("Resume from the latest checkpoint in checkpoint_dir if there is one.",
                         default=True)
    log_every: int = _help("Steps between log lines.", default=50)
    log_file: str | None = _help("JSONL file for training logs (default: <checkpoint_dir>/log.jsonl).",
                                 default=None)
    loggers: list[str] = _help("Extra log sinks besides the JSONL file: 'wandb' and/or 'tensorboard' "
                               "(install saekit[wandb] / saekit[tensorboard]).", default_factory=list)
    run_name: str | None = _help("Run name for wandb / TensorBoard.", default=None)
    progress: bool = _help("Show a progress bar.", default=True)
    autocast: str = _help("Mixed precision for the forward pass: 'none' or 'bfloat16' (weights and "
                          "optimiser state stay fp32).", default="none")
    parallel: str = _help("Under torchrun: 'data' (every rank trains every dictionary on its shard of "
                          "each batch) or 'shard' (dictionaries dealt to ranks, activations gathered "
                          "to their owner).", default="data")
    collective_timeout_s: float = _help("Under torchrun: seconds a rank waits for the others before "
                                        "failing with an error.", default=120.0)

    def __post_init__(self) -> None:
        if self.total_tokens <= 0:
            raise SaekitError(f"total_tokens must be positive, got {self.total_tokens}")
        if self.batch_size <= 0:
            raise SaekitError(f"batch_size must be positive, got {self.batch_size}")
        if self.total_tokens < self.batch_size:
            raise SaekitError(f"total_tokens={self.total_tokens} is less than one batch "
                              f"({self.batch_size}): raise total_tokens or lower batch_size")
        if self.autocast not in ("none", "bfloat16"):
            raise SaekitError(f"autocast must be 'none' or 'bfloat16', got {self.autocast!r}")
        if self.parallel not in ("data", "shard"):
            raise SaekitError(f"parallel must be 'data' or 'shard', got {self.parallel!r}")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 1 or self.log_every < 1:
            raise SaekitError("checkpoint_every must be >= 0, keep_checkpoints >= 1, log_every >= 1")

    @property
    def total_steps(self) -> int:
        return self.total_tokens // self.batch_size
