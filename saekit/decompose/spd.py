"""Stochastic Parameter Decomposition (Bushnaq, Braun, Sharkey 2025; METHODS.md §11 "SPD").

Each decomposed weight matrix W^l [d_out, d_in] becomes C rank-one subcomponents U^l_{:,c} V^l_{c,:}.
A tiny per-subcomponent MLP γ^l_c (1 → d_ci GELU → 1) reads the inner activation h^l_c = V^l_c · a^l
and predicts a causal importance g^l_c ∈ [0, 1]. Training asks that the model still computes its
output when every subcomponent is scaled by a random mask m = g + (1 − g)·r, r ~ U(0, 1), while the
importances are pushed towards zero:

    L = L_faith + β1 L_stoch-recon + β2 L_stoch-recon-layerwise + β3 L_importance-minimality

- L_faith = (1/N) Σ_l ||W^l − U^l V^l||², N = number of decomposed parameters.
- L_stoch-recon = MSE(f(x | all layers masked), f(x | W)), one mask sample (S = 1).
- L_stoch-recon-layerwise = mean over l of MSE(f(x | only layer l masked), f(x | W)); the other layers
  keep the target weights (the paper's equation; its pseudocode uses the unmasked components instead,
  which is the same thing once L_faith ≈ 0).
- L_importance-minimality = mean over the batch of Σ_l Σ_c |g^l_c|^p.

MSE is the mean over every output element, as in the paper-era code the published coefficients were
tuned with. Masks use the lower-leaky hard sigmoid and the importance loss the upper-leaky one (SPD
paper appendix), so neither saturated side has a dead gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from saekit.decompose.components import (
    FrozenTargetWeights,
    LayerFactors,
    inner_activations,
    linear_layers,
    masked_forward,
    recorded_inputs,
    swapped_forwards,
)
from saekit.errors import SaekitError

LEAK_SLOPE = 0.01


def hard_sigmoid(x: Tensor) -> Tensor:
    """σ_H(x) = clip(x, 0, 1): the causal importance reported at evaluation."""
    return x.clamp(0.0, 1.0)


def lower_leaky_hard_sigmoid(x: Tensor) -> Tensor:
    """0.01·x below 0, x on [0, 1], 1 above: used for the masks (a mask may dip below 0, never above 1)."""
    return torch.where(x < 0, LEAK_SLOPE * x, x.clamp(max=1.0))


def upper_leaky_hard_sigmoid(x: Tensor) -> Tensor:
    """0 below 0, x on [0, 1], 1 + 0.01·(x − 1) above: used in the importance loss (never negative)."""
    return torch.where(x > 1, 1.0 + LEAK_SLOPE * (x - 1.0), x.clamp(min=0.0))


def stochastic_mask(importance: Tensor, uniform_noise: Tensor) -> Tensor:
    """m = g + (1 − g)·r: a uniform sample from [g, 1], reparametrised so gradients reach g."""
    return importance + (1.0 - importance) * uniform_noise


class CausalImportanceMLPs(nn.Module):
    """C independent scalar MLPs γ_c(h) = w2_c · GELU(w1_c h + b1_c) + b2_c, evaluated in one einsum."""

    def __init__(self, n_components: int, hidden_dim: int, generator: torch.Generator) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(n_components, hidden_dim, generator=generator))
        self.b1 = nn.Parameter(torch.zeros(n_components, hidden_dim))
        self.w2 = nn.Parameter(torch.randn(n_components, hidden_dim, generator=generator)
                               / hidden_dim ** 0.5)
        self.b2 = nn.Parameter(torch.zeros(n_components))

    def forward(self, inner: Tensor) -> Tensor:
        """inner [..., C] → pre-sigmoid importances [..., C].

        Laid out component-major ([C, N, d_ci]) so both layers are batched matmuls: their backward
        passes are matmuls too, instead of broadcast multiplies and reductions over the largest
        tensor of an SPD step (1.5x faster on a CPU at C = 200, batch 4096)."""
        n_components = inner.shape[-1]
        flat = inner.reshape(-1, n_components).T.unsqueeze(-1)  # [C, N, 1]
        hidden = F.gelu(torch.baddbmm(self.b1.unsqueeze(1), flat, self.w1.unsqueeze(1)))
        out = torch.bmm(hidden, self.w2.unsqueeze(-1)).squeeze(-1)  # [C, N]
        return (out.T + self.b2).reshape(inner.shape)


@dataclass
class SPDConfig:
    """SPD hyperparameters; defaults are the paper's TMS 5-2 settings (appendix)."""

    n_components: int = 20
    ci_hidden_dim: int = 16
    steps: int = 40_000
    batch_size: int = 4096
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # "cosine" (to 0) or "constant"
    lr_warmup_fraction: float = 0.0
    faithfulness_coeff: float = 1.0
    stochastic_recon_coeff: float = 1.0
    stochastic_recon_layerwise_coeff: float = 1.0
    importance_minimality_coeff: float = 3e-3
    importance_p: float = 1.0
    faithfulness_warmup_steps: int = 0  # current reference repo: 200 steps of L_faith alone, lr 1e-2
    faithfulness_warmup_lr: float = 1e-2
    output_loss: str = "mse"  # D in the stochastic losses: "mse" (toys) or "kl" (language models)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_components < 1 or self.steps < 0 or self.batch_size < 1 or self.ci_hidden_dim < 1:
            raise SaekitError("SPD needs n_components, batch_size, ci_hidden_dim >= 1 and steps >= 0")
        if self.lr_schedule not in ("cosine", "constant"):
            raise SaekitError(f"unknown lr_schedule {self.lr_schedule!r}; use 'cosine' or 'constant'")
        if self.importance_p <= 0:
            raise SaekitError("importance_p must be > 0")
        if self.output_loss not in ("mse", "kl"):
            raise SaekitError(f"unknown output_loss {self.output_loss!r}; use 'mse' or 'kl'")


def output_divergence(output: Tensor, target: Tensor, kind: str) -> Tensor:
    """D(f(x | W'), f(x | W)): MSE over every element, or KL(target ‖ output) of the softmax over the
    last dim summed over it and averaged over positions (the SPD paper's choice for LMs)."""
    if kind == "mse":
        return F.mse_loss(output, target)
    log_p = F.log_softmax(target.float(), dim=-1)
    log_q = F.log_softmax(output.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def _logits(output: object) -> Tensor:
    """A module's output as a tensor: Hugging Face models return an object with `.logits`."""
    return output if isinstance(output, Tensor) else output.logits  # type: ignore[attr-defined]


def learning_rate(step: int, steps: int, base_lr: float, schedule: str, warmup_fraction: float) -> float:
    """Linear warmup over `warmup_fraction` of the steps, then constant or half-cosine decay to 0
    (`saekit.training.schedules.lr_factor`)."""
    from saekit.training.schedules import lr_factor

    shape = "cosine" if schedule == "cosine" else "linear"
    return base_lr * lr_factor(step, steps, int(steps * warmup_fraction), 0.0, shape)


class SPDDecomposition(FrozenTargetWeights):
    """Rank-one subcomponents and causal-importance MLPs for named linear layers of a frozen module."""

    def __init__(self, target: nn.Module, layer_names: Sequence[str], n_components: int,
                 ci_hidden_dim: int = 16, seed: int = 0) -> None:
        super().__init__()
        layers = linear_layers(target, layer_names)
        generator = torch.Generator().manual_seed(seed)
        self.target = [target]  # not a submodule: its weights are frozen and not ours to save
        self.layer_names = list(layer_names)
        self.factors = nn.ModuleDict()
        self.importance_fns = nn.ModuleDict()
        for name, layer in layers.items():
            key = name.replace(".", "__")
            self.factors[key] = LayerFactors(layer.in_features, layer.out_features, n_components, 1,
                                             generator)
            self.importance_fns[key] = CausalImportanceMLPs(n_components, ci_hidden_dim, generator)
        self.target_weights = {name: layer.weight.detach().clone() for name, layer in layers.items()}
        self.biases = {name: layer.bias for name, layer in layers.items()}

    def layer_factors(self, name: str) -> LayerFactors:
        # nn.ModuleDict is untyped (its items are Modules); every entry of `factors` is a LayerFactors
        return cast(LayerFactors, self.factors[name.replace(".", "__")])

    def subcomponent_weights(self, name: str) -> Tensor:
        """[C, d_out, d_in]: the rank-one matrices U_{:,c} V_{c,:} of layer `name`."""
        return self.layer_factors(name).component_weights()

    def target_forward(self, inputs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The unmodified module's output and each decomposed layer's input a^l."""
        module = self.target[0]
        with torch.no_grad(), recorded_inputs(module, self.layer_names) as acts:
            output = _logits(module(inputs))
        return output, dict(acts)

    def raw_importances(self, layer_inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """γ^l(h^l) before any sigmoid, [..., C] per layer."""
        raw = {}
        for name in self.layer_names:
            key = name.replace(".", "__")
            inner = inner_activations(self.layer_factors(name), layer_inputs[name]).squeeze(-1)
            raw[name] = self.importance_fns[key](inner)
        return raw

    @torch.no_grad()
    def causal_importances(self, inputs: Tensor) -> dict[str, Tensor]:
        """g^l_c(x) ∈ [0, 1] (plain hard sigmoid) for each layer: the evaluation-time importance."""
        _, acts = self.target_forward(inputs)
        return {name: hard_sigmoid(raw) for name, raw in self.raw_importances(acts).items()}

    def masked_output(self, inputs: Tensor, masks: Mapping[str, Tensor | None]) -> Tensor:
        """The module's output with the layers in `masks` replaced by masked subcomponent sums."""
        replacements = {name: masked_forward(self.layer_factors(name), self.biases[name], mask)
                        for name, mask in masks.items()}
        with swapped_forwards(self.target[0], replacements):
            return _logits(self.target[0](inputs))

    def faithfulness_loss(self) -> Tensor:
        # A sum over the layers (linear_layers refuses none) is a Tensor: the cast drops typeshed's int start 0.
        squared_error = cast(Tensor, sum((self.target_weights[name] - self.layer_factors(name).summed_weight())
                                         .pow(2).sum() for name in self.layer_names))
        n_params = sum(w.numel() for w in self.target_weights.values())
        return squared_error / n_params


@dataclass
class SPDTrainingLog:
    """Loss terms every `log_every` steps, for diagnosing a run that misses its targets."""

    steps: list[int] = field(default_factory=list)
    losses: list[dict[str, float]] = field(default_factory=list)


def spd_losses(decomposition: SPDDecomposition, inputs: Tensor, cfg: SPDConfig,
               generator: torch.Generator) -> dict[str, Tensor]:
    """All SPD loss terms on one batch, plus their weighted sum under key "total"."""
    target_output, acts = decomposition.target_forward(inputs)
    raw = decomposition.raw_importances(acts)
    # Sums over the decomposed layers (at least one) are Tensors: the casts drop typeshed's int start 0.
    importance_loss = cast(Tensor, sum((upper_leaky_hard_sigmoid(r) + 1e-12).pow(cfg.importance_p).sum(-1).mean()
                                       for r in raw.values()))
    masks = {}
    for name, r in raw.items():
        noise = torch.rand(r.shape, generator=generator, device=generator.device)
        noise = noise.to(r.device)
        masks[name] = stochastic_mask(lower_leaky_hard_sigmoid(r), noise)
    kind = cfg.output_loss
    recon = output_divergence(decomposition.masked_output(inputs, masks), target_output, kind)
    layerwise = cast(Tensor, sum(output_divergence(decomposition.masked_output(inputs, {name: mask}),
                                                   target_output, kind) for name, mask in masks.items())) / len(masks)
    faithfulness = decomposition.faithfulness_loss()
    total = (cfg.faithfulness_coeff * faithfulness + cfg.stochastic_recon_coeff * recon
             + cfg.stochastic_recon_layerwise_coeff * layerwise
             + cfg.importance_minimality_coeff * importance_loss)
    return {"total": total, "faithfulness": faithfulness, "stochastic_recon": recon,
            "stochastic_recon_layerwise": layerwise, "importance_minimality": importance_loss}


def train_spd(target: nn.Module, layer_names: Sequence[str], batches: Iterable[Tensor],
              cfg: SPDConfig, progress: bool = True, log_every: int = 500,
              on_log: Callable[[int, dict[str, float]], None] | None = None,
              ) -> tuple[SPDDecomposition, SPDTrainingLog]:
    """Decompose `layer_names` of the frozen `target` with SPD, drawing one input batch per step.

    `batches` yields inputs that `target` accepts (for the toys, [batch, n_features] tensors); its
    batch size is the caller's. The target must return a tensor (the MSE output loss is used).
    """
    torch.manual_seed(cfg.seed)
    decomposition = SPDDecomposition(target, layer_names, cfg.n_components, cfg.ci_hidden_dim, cfg.seed)
    device = next(iter(decomposition.target_weights.values())).device
    decomposition.to(device)
    # Noise is drawn where the model runs (a CPU draw + copy per step would dominate a GPU step); a
    # given device and seed reproduce the same run.
    generator = torch.Generator(device).manual_seed(cfg.seed + 1)
    log = SPDTrainingLog()
    batch_iter = iter(batches)
    if cfg.faithfulness_warmup_steps:
        factor_params = [p for f in decomposition.factors.values() for p in f.parameters()]
        warmup_optimizer = torch.optim.AdamW(factor_params, lr=cfg.faithfulness_warmup_lr,
                                             weight_decay=0.0)
        for _ in range(cfg.faithfulness_warmup_steps):
            loss = decomposition.faithfulness_loss()
            warmup_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            warmup_optimizer.step()
    optimise(decomposition, lambda: spd_losses(decomposition, next(batch_iter), cfg, generator), cfg, log,
             "SPD", progress, log_every, on_log)
    return decomposition, log


def optimise(decomposition: nn.Module, step_losses: Callable[[], dict[str, Tensor]], cfg: Any,
             log: SPDTrainingLog, desc: str, progress: bool, log_every: int,
             on_log: Callable[[int, dict[str, float]], None] | None = None,
             after_step: Callable[[], None] | None = None) -> None:
    """The Adam loop SPD and APD share: the scheduled learning rate, one batch's losses per step (their
    "total" is minimised), an optional projection after each step, and logging every `log_every` steps.
    `cfg` needs steps, lr, lr_schedule and lr_warmup_fraction."""
    optimizer = torch.optim.Adam(decomposition.parameters(), lr=cfg.lr)
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        lr = learning_rate(step, cfg.steps, cfg.lr, cfg.lr_schedule, cfg.lr_warmup_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses = step_losses()
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        if after_step is not None:
            after_step()
        if step % log_every == 0 or step == cfg.steps - 1:
            values = {k: v.item() for k, v in losses.items()}
            log.steps.append(step)
            log.losses.append(values)
            bar.set_postfix(total=f"{values['total']:.2e}", faith=f"{values['faithfulness']:.1e}")
            if on_log is not None:
                on_log(step, values)
