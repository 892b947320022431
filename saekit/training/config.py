"""How one dictionary learns (`TrainingConfig`) and how a run goes (`RunConfig`).

Defaults that depend on the method (learning rate, sparsity coefficient, schedules, normalisation,
init) are `None` in `TrainingConfig` and filled in by `resolved(dictionary_config)` from the method's
`training_defaults` (each method's module cites docs/methods.md for its values). A resolved config
holds the exact values a run used; it is recorded in the checkpoint and the saved dictionary.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, cast

from saekit.config import DictionaryConfig, check_fields, help_field
from saekit.errors import SaekitError
from saekit.methods.dead_latents import GHOST_GRADS_FORMS, MAX_DEAD_TOKENS, run_dead_tokens  # noqa: F401 (public here)
from saekit.methods.jumprelu import DEFAULT_BANDWIDTH

# Fields whose default may depend on the run's length (`Method.run_defaults`), filled when the run starts.
RUN_DEFAULTS = ("lr", "dead_tokens")


NORMALIZATIONS = ("none", "mean_norm_sqrt_d", "mean_squared_norm_1")
B_DEC_INITS = ("zeros", "mean", "geometric_median")
OPTIONAL_FIELDS = frozenset({"target_l0"})  # None is a value here, not "use the method's default"
CROSSCODER_INITS = ("same", "independent")


class ResolvedTraining(Protocol):
    """A TrainingConfig after `resolved()`: every method-dependent default filled in (none is None but
    those of RUN_DEFAULTS, which `for_run` fills once the run's length is known)."""

    lr: float | None  # None: set by the run's length (TopK)
    adam_betas: tuple[float, float]
    adam_eps: float
    lr_warmup: float
    lr_decay: float
    sparsity_coefficient: float
    sparsity_warmup: float
    grad_clip: float
    normalize_activations: str
    b_dec_init: str
    unit_norm_decoder: bool
    decoder_init_norm: float
    crosscoder_init: str
    aux_k: int
    aux_coefficient: float
    aux_every: int
    dead_tokens: int | None  # None: set by the run's length (`run_dead_tokens`)
    ghost_grads: bool
    ghost_grads_form: str
    resample_every: int
    jumprelu_bandwidth: float
    jumprelu_init_threshold: float
    threshold_ema: float
    threshold_start: float
    target_l0: float | None
    sparse_kernels: bool
    seed: int

    def to_dict(self) -> dict[str, Any]: ...

    def for_run(self, dictionary: DictionaryConfig, total_steps: int, total_tokens: int) -> ResolvedTraining: ...


@dataclass
class TrainingConfig:
    """How one dictionary of a sweep is trained: optimiser, schedules, init, normalisation, dead latents."""

    KIND: ClassVar[str] = "training config"  # how errors about a file's fields name it
    lr: float | None = help_field(
        "Adam learning rate. Default per method; TopK: 2e-4/sqrt(d_sae/2^14) (sparsify's rule for long runs), "
        "times (2700/steps)^0.75 for runs of fewer than 2,700 steps, at most x16 (docs/defaults.md).", default=None)
    adam_betas: tuple[float, float] | None = help_field("Adam (beta1, beta2).", default=None)
    adam_eps: float = help_field("Adam epsilon.", default=1e-8)
    lr_warmup: float | None = help_field("Fraction of steps for linear LR warm-up from 0.", default=None)
    lr_decay: float | None = help_field("Fraction of final steps over which the LR decays linearly to 0.",
                                        default=None)
    sparsity_coefficient: float | None = help_field(
        "λ: weight of the L1 term (relu: L1 of f·||d||; gated: L1 of the gate) or of the L0 term "
        "(jumprelu). Unused by the TopK family and matching pursuit.", default=None)
    sparsity_warmup: float | None = help_field("Fraction of steps over which λ warms up linearly from 0.",
                                               default=None)
    grad_clip: float = help_field("Clip the global gradient norm to this value (0 disables).", default=1.0)
    normalize_activations: str | None = help_field(
        "Scale inputs by one fixed scalar estimated at the start of training: 'mean_norm_sqrt_d' "
        "(E||x|| = sqrt(d_in)), 'mean_squared_norm_1' (E||x||^2 = 1) or 'none'. The factor is recorded "
        "in the config and folded into the saved weights, so saved dictionaries take raw activations.",
        default=None)
    b_dec_init: str | None = help_field("Decoder bias init: 'zeros', 'mean' or 'geometric_median' of the "
                                        "first batch.", default=None)
    unit_norm_decoder: bool | None = help_field("Keep decoder rows at unit norm (project the parallel "
                                                "gradient, renormalise after each step).", default=None)
    decoder_init_norm: float | None = help_field("Initial norm of each decoder row.", default=None)
    crosscoder_init: str = help_field(
        "Crosscoders: 'same' starts every source block of a latent at the same random direction (so "
        "latents shared by near-identical models start aligned; the diffing toolkit's default), "
        "'independent' draws each block separately (Anthropic's recipe). See docs/diffing.md.",
        default="same")
    aux_k: int | None = help_field("AuxK: latents used to reconstruct the residual from dead latents "
                                   "(TopK family). Default min(512, d_in // 2); 0 disables.", default=None)
    aux_coefficient: float = help_field("AuxK loss weight α.", default=1 / 32)
    aux_every: int = help_field("AuxK runs on every this many steps, weighted by aux_every·α: the same weight "
                                "per token over a run at 1/aux_every of its cost (1: every step).", default=4)
    dead_tokens: int | None = help_field(
        "A latent is dead once it has not fired for this many tokens. Default: a tenth of the run's tokens, "
        "at most 10M (Gao et al.'s window), so dead-latent care acts in short runs too.", default=None)
    ghost_grads: bool = help_field("Ghost grads on dead latents (relu, gated, jumprelu).", default=False)
    ghost_grads_form: str = help_field(
        "Which ghost grads: 'original' (Anthropic, Jan 2024: exp of dead pre-activations), 'scaled' (the "
        "same times the fraction of dead latents, GDM's improvement as reconstructed) or 'softplus' "
        "(scaled, with softplus for exp). Needs ghost_grads.", default="original")
    resample_every: int = help_field("Resample dead latents every this many steps (0 disables).",
                                     default=0)
    jumprelu_bandwidth: float = help_field("JumpReLU straight-through bandwidth ε.", default=DEFAULT_BANDWIDTH)
    jumprelu_init_threshold: float = help_field("JumpReLU initial threshold θ0.", default=1e-3)
    threshold_ema: float = help_field("BatchTopK/Matryoshka: EMA decay of the inference threshold.",
                                      default=0.999)
    threshold_start: float = help_field("BatchTopK/Matryoshka: fraction of steps before the inference "
                                        "threshold starts being estimated.", default=0.1)
    target_l0: float | None = help_field(
        "relu, gated, jumprelu: steer λ during training so the mean L0 approaches this value (a "
        "multiplier on λ adjusted after every step once λ has warmed up; saekit.training.l0_target). "
        "None: λ stays as given.", default=None)
    sparse_kernels: bool = help_field("TopK family: train with sparse decoder and encoder-gradient kernels "
                                      "(same result as dense, much faster).", default=True)
    seed: int = help_field("Random seed for initialisation.", default=0)

    def resolved(self, dictionary: DictionaryConfig) -> ResolvedTraining:
        """A copy with every method-dependent default filled in and every value checked."""
        from saekit.methods import get_method

        method = get_method(dictionary.method)
        resolved = cast(ResolvedTraining, self.filled(method.training_defaults(dictionary),
                                                      OPTIONAL_FIELDS | set(RUN_DEFAULTS),
                                                      f"method {dictionary.method!r}"))
        _check(resolved, dictionary)
        method.check_training(dictionary, resolved)
        return resolved

    def filled(self, defaults: dict[str, Any], may_stay_none: frozenset[str] | set[str], owner: str) -> Any:
        """A copy (of this class) with each field still None set from `defaults`; every field but those in
        `may_stay_none` must then have a value: a default missing there is a bug of `owner`'s defaults."""
        values = dataclasses.asdict(self)
        for key, value in defaults.items():
            if values.get(key) is None:
                values[key] = value
        if values["adam_betas"] is not None:
            values["adam_betas"] = tuple(float(b) for b in values["adam_betas"])
        out = type(self)(**values)
        unresolved = [f.name for f in dataclasses.fields(out)
                      if getattr(out, f.name) is None and f.name not in may_stay_none]
        if unresolved:
            raise SaekitError(f"no default for {', '.join(unresolved)} ({owner})")
        return out

    def for_run(self, dictionary: DictionaryConfig, total_steps: int, total_tokens: int) -> ResolvedTraining:
        """A copy with the defaults that depend on the run's length filled in (the values a run used)."""
        from saekit.methods import get_method

        defaults = get_method(dictionary.method).run_defaults(dictionary, total_steps, total_tokens)
        out = cast(ResolvedTraining, dataclasses.replace(
            self, **{key: value for key, value in defaults.items() if getattr(self, key) is None}))
        _check(out, dictionary)
        return out

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if data["adam_betas"] is not None:
            data["adam_betas"] = list(data["adam_betas"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        check_fields(cls, data, cls.KIND)
        data = dict(data)
        if data.get("adam_betas") is not None:
            data["adam_betas"] = tuple(data["adam_betas"])
        return cls(**data)


def _check(training: ResolvedTraining, dictionary: DictionaryConfig) -> None:
    """Every value of a resolved config in range, or a one-line error naming it."""
    finite = all(math.isfinite(v) for v in (training.lr or 1.0, training.adam_eps, training.sparsity_coefficient,
                                              training.grad_clip, training.decoder_init_norm,
                                              training.aux_coefficient, training.jumprelu_bandwidth,
                                              training.jumprelu_init_threshold))
    checks = [
        (finite, "learning rate, coefficients, eps, bandwidth and norms must be finite numbers"),
        (training.normalize_activations in NORMALIZATIONS,
         f"normalize_activations must be one of {', '.join(NORMALIZATIONS)}"),
        (training.b_dec_init in B_DEC_INITS, f"b_dec_init must be one of {', '.join(B_DEC_INITS)}"),
        (training.crosscoder_init in CROSSCODER_INITS,
         f"crosscoder_init must be one of {', '.join(CROSSCODER_INITS)}"),
        (training.lr is None or training.lr > 0, "lr must be positive"),
        (training.adam_eps > 0, "adam_eps must be positive"),
        (training.sparsity_coefficient >= 0, "sparsity_coefficient must be >= 0"),
        (len(training.adam_betas) == 2 and all(0.0 <= b < 1.0 for b in training.adam_betas),
         "adam_betas must be two numbers in [0, 1)"),
        (0.0 <= training.lr_warmup <= 1.0 and 0.0 <= training.lr_decay <= 1.0
         and training.lr_warmup + training.lr_decay <= 1.0,
         "lr_warmup and lr_decay are fractions of training that must sum to at most 1"),
        (0.0 <= training.sparsity_warmup <= 1.0, "sparsity_warmup must be a fraction in [0, 1]"),
        (training.grad_clip >= 0, "grad_clip must be >= 0"),
        (training.decoder_init_norm > 0, "decoder_init_norm must be positive"),
        (training.aux_k >= 0, "aux_k must be >= 0"),
        (training.aux_coefficient >= 0, "aux_coefficient must be >= 0"),
        (isinstance(training.aux_every, int) and training.aux_every >= 1, "aux_every must be an integer >= 1"),
        (training.dead_tokens is None or training.dead_tokens > 0, "dead_tokens must be positive"),
        (training.jumprelu_bandwidth > 0 and training.jumprelu_init_threshold > 0,
         "jumprelu_bandwidth and jumprelu_init_threshold must be positive"),
        (0.0 < training.threshold_ema < 1.0, "threshold_ema must be in (0, 1)"),
        (0.0 <= training.threshold_start <= 1.0, "threshold_start must be a fraction in [0, 1]"),
        (training.resample_every >= 0, "resample_every must be >= 0"),
        (training.ghost_grads_form in GHOST_GRADS_FORMS,
         f"ghost_grads_form must be one of {', '.join(GHOST_GRADS_FORMS)}, got {training.ghost_grads_form!r}"),
        (training.ghost_grads or training.ghost_grads_form == "original",
         "ghost_grads_form applies only with ghost_grads: pass ghost_grads=True as well"),
        (isinstance(training.seed, int) and not isinstance(training.seed, bool) and 0 <= training.seed < 2**63,
         "seed must be a non-negative integer"),
        (training.target_l0 is None or (math.isfinite(training.target_l0) and training.target_l0 > 0),
         "target_l0 must be a positive number (or None)"),
    ]
    for ok, message in checks:
        if not ok:
            raise SaekitError(f"{message} (method {dictionary.method!r})")


@dataclass
class RunConfig:
    """How a run goes: token budget, batching, device, checkpoints and logging."""

    total_tokens: int = help_field("Tokens to train on.", default=2_000_000)
    batch_size: int = help_field("Tokens per optimisation step.", default=4096)
    device: str = help_field("Device of the dictionaries and of every tensor of the step (cpu, cuda, "
                             "cuda:N).", default="cpu")
    normalization_tokens: int = help_field(
        "Tokens from the start of the stream on which each dictionary's activation scale (and its b_dec) "
        "is estimated before the first step; they are then trained on as usual.", default=65_536)
    checkpoint_dir: str | None = help_field("Directory for periodic checkpoints and exact resume.",
                                            default=None)
    checkpoint_every: int = help_field("Steps between checkpoints (0: only at the end).", default=0)
    keep_checkpoints: int = help_field("How many recent checkpoints to keep.", default=2)
    resume: bool = help_field("Resume from the latest checkpoint in checkpoint_dir if there is one.",
                              default=True)
    log_every: int | None = help_field("Steps between log records (default: about 100 records a run, at "
                                       "least every step of a run shorter than 100 steps).", default=None)
    log_file: str | None = help_field("JSONL file for training logs (default: <checkpoint_dir>/log.jsonl).",
                                      default=None)
    loggers: list[str] = help_field("Extra log sinks besides the JSONL file: 'wandb' and/or 'tensorboard' "
                                    "(install saekit[wandb] / saekit[tensorboard]).",
                                    default_factory=list)
    run_name: str | None = help_field("Run name for wandb / TensorBoard.", default=None)
    progress: bool = help_field("Show a progress bar.", default=True)
    autocast: str = help_field("Mixed precision for the forward pass: 'none' or 'bfloat16' (weights and "
                               "optimiser state stay fp32).", default="none")
    parallel: str = help_field("Under torchrun: 'data' (every rank trains every dictionary on its shard "
                               "of each batch) or 'shard' (dictionaries dealt to ranks, activations "
                               "gathered to their owner).", default="data")
    prefetch: int | None = help_field("Batches a background thread prepares (model forward or file reads, "
                                      "and the copy to the device) while the dictionaries step; 0 runs the "
                                      "stream in the training thread (default: 2 on a GPU, 0 on a CPU, where "
                                      "the thread's forward and the step would share the same cores).",
                                      default=None)
    collective_timeout_s: float = help_field("Under torchrun: seconds a rank waits for the others before "
                                             "failing with an error.", default=120.0)

    def __post_init__(self) -> None:
        for name in ("total_tokens", "batch_size", "normalization_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise SaekitError(f"{name} must be a positive integer, got {value!r}")
        if self.total_tokens < self.batch_size:
            raise SaekitError(f"total_tokens={self.total_tokens} is less than one batch "
                              f"({self.batch_size}): raise total_tokens or lower batch_size")
        if self.autocast not in ("none", "bfloat16"):
            raise SaekitError(f"autocast must be 'none' or 'bfloat16', got {self.autocast!r}")
        from saekit.training.distributed import check_device

        check_device(self.device)
        if self.parallel not in ("data", "shard"):
            raise SaekitError(f"parallel must be 'data' or 'shard', got {self.parallel!r}")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 1 or (self.log_every is not None and
                                                                      self.log_every < 1):
            raise SaekitError("checkpoint_every must be >= 0, keep_checkpoints >= 1, log_every >= 1")
        if self.prefetch is not None and (not isinstance(self.prefetch, int) or isinstance(self.prefetch, bool)
                                          or self.prefetch < 0):
            raise SaekitError(f"prefetch must be an integer >= 0, got {self.prefetch!r}")
        if not (isinstance(self.collective_timeout_s, (int, float)) and
                math.isfinite(self.collective_timeout_s) and self.collective_timeout_s > 0):
            raise SaekitError(f"collective_timeout_s must be a positive number of seconds, got "
                              f"{self.collective_timeout_s!r}")

    @property
    def total_steps(self) -> int:
        return self.total_tokens // self.batch_size

    def prefetch_depth(self, device_type: str) -> int:
        """`prefetch`, else 2 on an accelerator and 0 on a CPU: there the producer's forward and the step
        compete for the same cores (benchmarks/live.py: 0.855 of the forward-alone rate without the thread,
        0.684 with it, on 2 cores)."""
        if self.prefetch is not None:
            return self.prefetch
        return 0 if device_type == "cpu" else 2

    @property
    def log_interval(self) -> int:
        """Steps between log records: `log_every`, else enough for a curve of about 100 points."""
        return self.log_every or max(1, self.total_steps // 100)
