"""Attribution-based Parameter Decomposition (Braun, Bushnaq, Heimersheim, Mendel, Sharkey 2025; §11 "APD").

C parameter components P_c span every decomposed layer; P_{c,l} = U_{c,l} V_{c,l} has rank m. Biases
are not decomposed: they stay the module's own, one always-active component. Each step:

1. Attributions A_c(x) = sqrt((1/d_L) Σ_o (Σ_{l,i,j} ∂f_o/∂θ_{l,i,j} P_{c,l,i,j})²). For a linear layer
   ∂f_o/∂W_l = g_{o,l} a_lᵀ (g: gradient w.r.t. the layer's output, a: its input), so the inner sum is
   Σ_l g_{o,l}ᵀ P_{c,l} a_l and costs one backward pass per output dimension o, not per parameter.
2. Batch top-k: the k·B largest A_c(x) over the whole batch are switched on (s_c(x) ∈ {0, 1}).
3. L = L_faith + β L_min + α L_simp with
   - L_faith = (1/N) Σ (θ* − Σ_c P_c)² (MSE over the decomposed parameters),
   - L_min = MSE(f(x | Σ_c s_c P_c), f(x | θ*)) (+ γ · MSE of named hidden activations),
   - L_simp = (1/N) mean_x Σ_c s_c(x) Σ_{l,m} (||U_{c,l,:,m}||² ||V_{c,l,m,:}||²)^{p/2}, the factorised Schatten-p
     proxy for the rank of each active component.

Gradients are taken at the target's weights by default; the paper's TMS 5-2 run took them at the
APD model's summed components instead (`attribute_at="decomposition"`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saekit.decompose.components import (
    Factors,
    FrozenTargetWeights,
    LayerFactors,
    TransposedFactors,
    inner_activations,
    linear_layers,
    masked_forward,
    recorded_inputs,
    recorded_outputs,
    swapped_forwards,
    weight_forward,
)
from saekit.decompose.spd import SPDTrainingLog, optimise
from saekit.errors import SaekitError


@dataclass
class APDConfig:
    """APD hyperparameters; defaults are the paper's TMS 5-2 settings (appendix B)."""

    n_components: int = 5
    rank: int = 3  # m per component and layer; the reference used min(d_in, d_out) + 1 for TMS
    topk: float = 0.211  # expected active components per sample (batch top-k: round(topk·B) per batch)
    steps: int = 20_000
    batch_size: int = 2048
    lr: float = 3e-2
    lr_schedule: str = "constant"
    lr_warmup_fraction: float = 0.05
    faithfulness_coeff: float = 1.0
    minimality_coeff: float = 1.0
    simplicity_coeff: float = 0.7
    schatten_p: float = 1.0
    hidden_act_recon_coeff: float = 0.0
    attribute_at: str = "target"  # "target" weights or the "decomposition"'s summed components
    unit_norm_in_factors: bool = False  # resid-MLP runs: V rows renormalised to unit norm every step
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_components < 1 or self.rank < 1 or self.steps < 0 or self.batch_size < 1:
            raise SaekitError("APD needs n_components, rank, batch_size >= 1 and steps >= 0")
        if not 0 < self.topk <= self.n_components:
            raise SaekitError(f"topk must be in (0, n_components]; got {self.topk}")
        if self.attribute_at not in ("target", "decomposition"):
            raise SaekitError(f"unknown attribute_at {self.attribute_at!r}; use 'target' or "
                              "'decomposition'")
        if self.lr_schedule not in ("cosine", "constant"):
            raise SaekitError(f"unknown lr_schedule {self.lr_schedule!r}; use 'cosine' or 'constant'")


class APDDecomposition(FrozenTargetWeights):
    """C rank-m parameter components over named linear layers of a frozen module.

    `tied` maps a layer name to another decomposed layer whose weight it equals transposed (TMS's Wᵀ);
    the tied layer's components are then the transposes of the source's and are not separate
    parameters, as in the reference TMS decomposition.
    """

    def __init__(self, target: nn.Module, layer_names: Sequence[str], n_components: int, rank: int,
                 tied: Mapping[str, str] | None = None, seed: int = 0) -> None:
        super().__init__()
        tied = dict(tied or {})
        layers = linear_layers(target, layer_names)
        generator = torch.Generator().manual_seed(seed)
        self.target = [target]
        self.layer_names = list(layer_names)
        self.tied = tied
        self.factors = nn.ModuleDict()
        for name, layer in layers.items():
            if name not in tied:
                self.factors[name.replace(".", "__")] = LayerFactors(
                    layer.in_features, layer.out_features, n_components, rank, generator)
        self.tied_factors: dict[str, TransposedFactors] = {}
        for name, source in tied.items():
            if source not in layers or source in tied or name not in layers:
                raise SaekitError(f"tied layer {name!r} -> {source!r}: both must be decomposed layers "
                                  "and the source must not itself be tied")
            if layers[name].weight.shape != layers[source].weight.T.shape:
                raise SaekitError(f"cannot tie {name!r} to {source!r}: weight shapes "
                                  f"{tuple(layers[name].weight.shape)} and "
                                  f"{tuple(layers[source].weight.shape)} are not transposes")
            self.tied_factors[name] = TransposedFactors(cast(LayerFactors, self.factors[source.replace(".", "__")]))
        self.target_weights = {name: layer.weight.detach().clone() for name, layer in layers.items()}
        self.biases = {name: layer.bias for name, layer in layers.items()}

    def layer_factors(self, name: str) -> Factors:
        # nn.ModuleDict types its entries as plain Modules; every entry of `factors` is a LayerFactors
        return self.tied_factors[name] if name in self.tied else \
            cast(LayerFactors, self.factors[name.replace(".", "__")])

    def component_weights(self, name: str) -> Tensor:
        """[C, d_out, d_in]: P_{c,l} for layer `name`."""
        return self.layer_factors(name).component_weights()

    def sparse_forward(self, inputs: Tensor, mask: Tensor | None) -> Tensor:
        """f(x | Σ_c s_c P_c): every decomposed layer uses the same per-sample component mask."""
        replacements = {name: masked_forward(self.layer_factors(name), self.biases[name], mask)
                        for name in self.layer_names}
        with swapped_forwards(self.target[0], replacements):
            return self.target[0](inputs)

    @property
    def n_params(self) -> int:
        """N: decomposed parameters, tied layers counted (the reference's normalisation constant)."""
        return sum(w.numel() for w in self.target_weights.values())

    def faithfulness_loss(self) -> Tensor:
        """(1/N) Σ_l ||W_l − Σ_c P_{c,l}||²; a tied layer repeats its source's error, so counting it
        in both numerator and N leaves the value unchanged."""
        # A sum over the layers (at least one) is a Tensor: the cast drops typeshed's int start 0.
        squared_error = cast(Tensor, sum((self.target_weights[name] - self.layer_factors(name).summed_weight())
                                         .pow(2).sum() for name in self.layer_names))
        return squared_error / self.n_params

    def schatten_penalty(self, p: float) -> Tensor:
        """[C]: Σ_{l,m} (||U_{c,l,:,m}||² ||V_{c,l,m,:}||²)^{p/2}, the factorised Schatten-p proxy."""
        total: Tensor | float = 0.0
        for name in self.layer_names:
            factors = self.layer_factors(name)
            squared = factors.out_factor().pow(2).sum(1) * factors.in_factor().pow(2).sum(2)  # [C, m]
            total = total + (squared + 1e-16).pow(p / 2).sum(-1)
        return cast(Tensor, total)  # a Tensor after the first of the (at least one) layers

    def attributions(self, inputs: Tensor, attribute_at: str = "target") -> Tensor:
        """A_c(x) [..., C], computed without building a graph into the components.

        The per-output-dimension backward passes are batched (`is_grads_batched`, i.e. vmap over
        one-hot output cotangents) in chunks, which is several times faster than a Python loop on
        the toys and bounds memory at O_chunk · batch · C · m floats.
        """
        module = self.target[0]
        replacements: dict[str, Callable[[Tensor], Tensor]] = {}
        if attribute_at == "decomposition":
            replacements = {name: weight_forward(self.layer_factors(name).summed_weight().detach(),
                                                 self.biases[name]) for name in self.layer_names}
        probes: dict[str, Tensor] = {}

        def add_probe(name: str) -> Callable:
            def hook(_module: nn.Module, _args: tuple, output: Tensor) -> Tensor:
                probes[name] = torch.zeros_like(output, requires_grad=True)
                return output + probes[name]  # ∂f/∂probe = ∂f/∂(layer output), path to f kept intact
            return hook

        names = list(self.layer_names)
        handles = [module.get_submodule(name).register_forward_hook(add_probe(name)) for name in names]
        with torch.enable_grad():
            try:
                with swapped_forwards(module, replacements), \
                        recorded_inputs(module, names) as layer_inputs:
                    output = module(inputs)
            finally:
                for handle in handles:
                    handle.remove()
            with torch.no_grad():
                inner = {n: inner_activations(self.layer_factors(n), layer_inputs[n].detach())
                         for n in names}
                out_factors = {n: self.layer_factors(n).out_factor().detach() for n in names}
            n_outputs = output.shape[-1]
            per_output_floats = output[..., 0].numel() * sum(v.shape[-2] * v.shape[-1]
                                                             for v in inner.values())
            chunk = max(1, min(n_outputs, (1 << 24) // max(per_output_floats, 1)))
            eye = torch.eye(n_outputs, dtype=output.dtype, device=output.device)
            squared_sum = torch.zeros(*output.shape[:-1], self.n_components, device=output.device)
            for start in range(0, n_outputs, chunk):
                cotangents = eye[start:start + chunk].reshape(-1, *[1] * (output.dim() - 1), n_outputs)
                cotangents = cotangents.expand(-1, *output.shape).contiguous()
                grads = torch.autograd.grad(output, [probes[n] for n in names], cotangents,
                                            retain_graph=start + chunk < n_outputs,
                                            is_grads_batched=True)
                with torch.no_grad():
                    per_output = cast(Tensor, sum((torch.einsum("o...d,cdm->o...cm", g, out_factors[n])
                                                   * inner[n]).sum(-1) for g, n in zip(grads, names)))
                    squared_sum += per_output.pow(2).sum(0)
        return (squared_sum / n_outputs).sqrt()

    @property
    def n_components(self) -> int:
        return self.layer_factors(self.layer_names[0]).n_components

    def normalise_in_factors(self) -> None:
        with torch.no_grad():
            for factors in self.factors.values():
                assert isinstance(factors, LayerFactors)  # for the type checker: ModuleDict holds Modules
                # in place, so V stays the Parameter; torch types Tensor.__itruediv__ as returning a Tensor
                factors.V /= factors.V.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # type: ignore[misc]


def batch_topk_mask(attributions: Tensor, topk: float) -> Tensor:
    """{0, 1} mask switching on the round(topk · n_samples) largest attributions of the whole batch."""
    n_samples = attributions.numel() // attributions.shape[-1]
    k = max(1, min(attributions.numel(), round(topk * n_samples)))
    flat = attributions.reshape(-1)
    mask = torch.zeros_like(flat)
    mask[flat.topk(k).indices] = 1.0
    return mask.reshape(attributions.shape)


def apd_losses(decomposition: APDDecomposition, inputs: Tensor, cfg: APDConfig,
               hidden_act_names: Sequence[str] = ()) -> dict[str, Tensor]:
    """All APD loss terms on one batch, plus their weighted sum under key "total"."""
    module = decomposition.target[0]
    with torch.no_grad(), recorded_outputs(module, hidden_act_names) as target_hidden:
        target_output = module(inputs)
    attributions = decomposition.attributions(inputs, cfg.attribute_at)
    mask = batch_topk_mask(attributions, cfg.topk)
    with recorded_outputs(module, hidden_act_names) as sparse_hidden:
        sparse_output = decomposition.sparse_forward(inputs, mask)
    minimality = F.mse_loss(sparse_output, target_output)
    hidden_recon = sum((F.mse_loss(sparse_hidden[n], target_hidden[n]) for n in hidden_act_names),
                       torch.zeros((), device=target_output.device))
    # Divided by N as in the reference code the published coefficients were tuned with (docs/methods.md).
    simplicity = (mask * decomposition.schatten_penalty(cfg.schatten_p)).sum(-1).mean() \
        / decomposition.n_params
    faithfulness = decomposition.faithfulness_loss()
    total = (cfg.faithfulness_coeff * faithfulness + cfg.minimality_coeff * minimality
             + cfg.hidden_act_recon_coeff * hidden_recon + cfg.simplicity_coeff * simplicity)
    return {"total": total, "faithfulness": faithfulness, "minimality": minimality,
            "hidden_act_recon": hidden_recon, "simplicity": simplicity,
            "active_per_sample": mask.sum(-1).mean()}


def train_apd(target: nn.Module, layer_names: Sequence[str], batches: Iterable[Tensor], cfg: APDConfig,
              tied: Mapping[str, str] | None = None, hidden_act_names: Sequence[str] = (),
              progress: bool = True, log_every: int = 500,
              on_log: Callable[[int, dict[str, float]], None] | None = None,
              ) -> tuple[APDDecomposition, SPDTrainingLog]:
    """Decompose `layer_names` of the frozen `target` with APD (top-k formulation), one batch per step."""
    torch.manual_seed(cfg.seed)
    decomposition = APDDecomposition(target, layer_names, cfg.n_components, cfg.rank, tied, cfg.seed)
    decomposition.to(next(iter(decomposition.target_weights.values())).device)
    if cfg.unit_norm_in_factors:
        decomposition.normalise_in_factors()
    log = SPDTrainingLog(steps=[], losses=[])
    batch_iter = iter(batches)
    optimise(decomposition, lambda: apd_losses(decomposition, next(batch_iter), cfg, hidden_act_names), cfg,
             log, "APD", progress, log_every, on_log,
             after_step=decomposition.normalise_in_factors if cfg.unit_norm_in_factors else None)
    return decomposition, log

