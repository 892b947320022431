"""Named toy experiments: train the target, decompose it with APD or SPD, score it, plot it.

One entry per toy in `TOYS`. Each carries the published target-training recipe, the published APD and
SPD hyperparameters (`published=True`), and the reduced-budget settings saekit uses by default so a run
fits a CPU (`published=False`); the report says which were used. Reductions are documented per toy.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saekit.decompose.apd import APDConfig, APDDecomposition, batch_topk_mask, train_apd
from saekit.decompose.metrics import (
    PermutationCheck,
    component_norms,
    mmcs_ml2r,
    non_negligible_mask,
    permutation_check,
)
from saekit.decompose.plots import plot_importance_matrices, plot_tms_columns
from saekit.decompose.spd import SPDConfig, SPDDecomposition, train_spd
from saekit.decompose.toy_models import (
    ResidMLP,
    ResidMLPTrainConfig,
    TMSModel,
    TMSTrainConfig,
    monosemantic_baseline_loss,
    sparse_feature_batches,
    train_resid_mlp,
    train_tms,
)
from saekit.errors import SaekitError

METHODS = ("spd", "apd")


@dataclass(frozen=True)
class Kind:
    """What differs between the two decompositions in an experiment. SPD's subcomponents belong to one
    layer each (scored per layer, with its causal importances); APD's components span every layer (scored
    as one set, with attributions and a batch-top-k mask)."""

    name: str
    per_layer: bool
    importance_label: str


KINDS = {"spd": Kind("spd", True, "causal importance g"), "apd": Kind("apd", False, "attribution / row max")}
ONE_HOT_VALUE = 0.75  # the SPD paper's probe input for importance plots
PERMUTATION_THRESHOLD = 0.1  # "on" importance; the reference configs' ci_alive_threshold


@dataclass(frozen=True)
class ToySpec:
    """A toy model, how to train it, and how to decompose it (published and reduced settings)."""

    name: str
    description: str
    target: TMSTrainConfig | ResidMLPTrainConfig
    spd_published: SPDConfig
    spd_default: SPDConfig
    apd_published: APDConfig
    apd_default: APDConfig
    identity_layers: tuple[str, ...] = ()  # layers expected to be one dense, always-on component
    feature_layers: tuple[str, ...] = ()  # layers whose components should be one per input feature
    apd_tied: dict[str, str] = field(default_factory=dict)
    apd_hidden_acts: tuple[str, ...] = ()

    @property
    def is_tms(self) -> bool:
        return isinstance(self.target, TMSTrainConfig)

    @property
    def n_features(self) -> int:
        return self.target.n_features

    @property
    def value_range(self) -> tuple[float, float]:
        return (0.0, 1.0) if self.is_tms else (-1.0, 1.0)


def _tms(name: str, n_features: int, n_hidden: int, identity: bool) -> ToySpec:
    small = n_features == 5
    target = TMSTrainConfig(n_features=n_features, n_hidden=n_hidden, identity_hidden=identity,
                            batch_size=1024 if small else 8192)
    spd_published = SPDConfig(
        n_components=20 if small else 200, steps=40_000, batch_size=4096, lr=1e-3,
        importance_minimality_coeff=3e-3 if small else 1e-4, importance_p=1.0 if small else 2.0)
    # CPU budget (measured; docs/methods.md): on 5-2, C = 10 subcomponents (twice the 5 needed) at
    # batch 512 converge in 4k steps; the published C = 20 needed 5k steps at batch 1024 and stalled
    # with one subcomponent covering two features at batch 256-512. The CI MLPs ([batch, C, 16])
    # dominate the step cost, so C and batch set the time. On 40-10, C = 100 at batch 1024 and lr 2e-3
    # reaches MMCS 0.98 at 10k steps and 0.998 at 20k (C = 60 and 5k steps stalled at 0.78).
    spd_default = (replace(spd_published, n_components=10, steps=4000, batch_size=512, lr=3e-3,
                           faithfulness_warmup_steps=200, seed=1) if small else
                   replace(spd_published, n_components=100, steps=20_000, batch_size=1024, lr=2e-3,
                           faithfulness_warmup_steps=200, seed=1))
    apd_published = (APDConfig() if small else
                     APDConfig(n_components=50, rank=n_hidden + 1, topk=1.0, lr=1e-3, lr_schedule="cosine",
                               minimality_coeff=10.0, simplicity_coeff=20.0, schatten_p=0.9,
                               attribute_at="target"))
    apd_default = replace(apd_published, steps=4000 if small else 10_000)
    layers = ("hidden_layers.0",) if identity else ()
    return ToySpec(name=name, description=f"TMS {n_features}-{n_hidden}" + (" + identity" if identity else ""),
                   target=target, spd_published=spd_published, spd_default=spd_default,
                   apd_published=apd_published, apd_default=apd_default, identity_layers=layers,
                   feature_layers=("linear1", "linear2"), apd_tied={"linear2": "linear1"})


def _resid(name: str, n_layers: int) -> ToySpec:
    d_mlp = 50 // n_layers
    target = ResidMLPTrainConfig(d_mlp=d_mlp, n_layers=n_layers)
    spd_published = SPDConfig(
        n_components=100 if n_layers == 1 else 400, steps=30_000 if n_layers == 1 else 50_000,
        batch_size=2048, lr=2e-3 if n_layers == 1 else 1e-3, lr_schedule="constant",
        importance_minimality_coeff=1e-5, importance_p=2.0)
    # CPU budget: one step at the published batch 2048 costs ~0.3 s on one core (four forwards
    # through d_resid = 1000 plus C·batch·16 importance-MLP units), so the default takes batch 256
    # (~2.6 active features per feature per batch at p = 0.01), fewer steps, and for two layers
    # C = 200 per matrix (enough for 100 features + a rank-25 W_out per layer).
    # β3 = 4e-5 (paper 1e-5): at 6k steps the paper's value left features sharing W_in subcomponents
    # (27/100 clean at g > 0.1), 2e-5 left 80/100, 4e-5 gives the permutation (measured, 1 layer).
    spd_default = replace(spd_published, n_components=100 if n_layers == 1 else 200, steps=6000,
                          batch_size=256, lr=2e-3, faithfulness_warmup_steps=200,
                          importance_minimality_coeff=4e-5)
    apd_published = APDConfig(
        n_components=130 if n_layers == 1 else 200, rank=d_mlp + 1, topk=1.28, lr=1e-3,
        lr_schedule="cosine", lr_warmup_fraction=0.01, steps=40_000 if n_layers == 1 else 10_000,
        batch_size=2048, minimality_coeff=1.0 if n_layers == 1 else 2.0,
        simplicity_coeff=10.0 if n_layers == 1 else 7.0, schatten_p=0.9, hidden_act_recon_coeff=1.0,
        unit_norm_in_factors=n_layers == 1)
    apd_default = replace(apd_published, steps=2000, batch_size=256)
    layers = tuple(f"layers.{i}.mlp_out" for i in range(n_layers))
    return ToySpec(name=name,
                   description=(f"residual MLP, {n_layers} x {d_mlp} neurons, 100 features, d_resid 1000"),
                   target=target, spd_published=spd_published, spd_default=spd_default,
                   apd_published=apd_published, apd_default=apd_default, identity_layers=layers,
                   feature_layers=tuple(f"layers.{i}.mlp_in" for i in range(n_layers)),
                   apd_hidden_acts=tuple(f"layers.{i}.act" for i in range(n_layers)))


TOYS: dict[str, ToySpec] = {spec.name: spec for spec in (
    _tms("tms-5-2", 5, 2, identity=False),
    _tms("tms-5-2-id", 5, 2, identity=True),
    _tms("tms-40-10", 40, 10, identity=False),
    _tms("tms-40-10-id", 40, 10, identity=True),
    _resid("resid-mlp-1", 1),
    _resid("resid-mlp-2", 2),
)}


def get_toy(name: str) -> ToySpec:
    if name not in TOYS:
        raise SaekitError(f"unknown toy {name!r}; choose one of: {', '.join(TOYS)}")
    return TOYS[name]


def train_target(spec: ToySpec, progress: bool = False) -> tuple[TMSModel | ResidMLP, float]:
    """The toy's target model, trained from its fixed seed; returns (model, final training loss)."""
    if isinstance(spec.target, TMSTrainConfig):  # spec.is_tms, spelled out so that the type narrows
        return train_tms(spec.target, progress=progress)
    return train_resid_mlp(spec.target, progress=progress)


@dataclass
class DecompositionReport:
    """Everything a run measured, in plain values (printable, JSON-able via `summary()`)."""

    toy: str
    method: str
    settings: dict[str, object]
    target_loss: float
    seconds_target: float
    seconds_decompose: float
    final_losses: dict[str, float]
    mmcs: float | None
    ml2r: float | None
    non_negligible: dict[str, int]
    n_components: dict[str, int]
    permutation: dict[str, PermutationCheck]
    dense_on_fraction: dict[str, float]  # per dense layer: mean share of kept subcomponents "on"
    kept_sum_error: dict[str, float]  # ||W − Σ_{non-negligible} P_c|| / ||W|| per layer (SPD)
    reconstruction_mse: float
    baseline_mse: float | None
    plots: list[Path]

    def summary(self) -> dict[str, object]:
        """Plain-data view (dataclasses and paths flattened) for report.json."""
        data = asdict(self)
        data["plots"] = [str(p) for p in self.plots]
        return data

    def lines(self) -> list[str]:
        out = [f"{self.toy} / {self.method}: target loss {self.target_loss:.3e} "
               f"({self.seconds_target:.1f} s), decomposition {self.seconds_decompose:.1f} s",
               "settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items())]
        if self.mmcs is not None:
            out.append(f"MMCS {self.mmcs:.4f}   ML2R {self.ml2r:.4f}   (layer linear1 = W)")
        for name, count in self.non_negligible.items():
            out.append(f"non-negligible components in {name}: {count} of {self.n_components[name]}")
        for name, check in self.permutation.items():
            out.append(f"importance {name}: permutation of identity at >{check.threshold}: "
                       f"{check.is_permutation} ({check.features_with_exactly_one}/{check.n_features} "
                       f"features with exactly one; {check.components_shared_by_features} shared "
                       f"components; weakest own {check.min_assigned_importance:.3f}, strongest other "
                       f"{check.max_other_importance:.3f}; {check.features_with_distinct_top} features "
                       "whose top component is theirs alone)")
        for name, value in self.dense_on_fraction.items():
            out.append(f"dense layer {name}: share of its non-negligible subcomponents with importance "
                       f">{PERMUTATION_THRESHOLD} per one-hot feature: {value:.3f}")
        for name, value in self.kept_sum_error.items():
            out.append(f"{name}: ||W - sum of non-negligible subcomponents|| / ||W|| = {value:.2e}")
        baseline = "" if self.baseline_mse is None else f" (monosemantic baseline {self.baseline_mse:.3e})"
        out.append(f"output MSE vs target with importance-masked / top-k components: "
                   f"{self.reconstruction_mse:.3e}{baseline}")
        out.append("final losses: " + ", ".join(f"{k} {v:.3e}" for k, v in self.final_losses.items()))
        out += [f"plot: {p}" for p in self.plots]
        return out


def _eval_batch(spec: ToySpec, n: int = 4096) -> Tensor:
    return next(sparse_feature_batches(n, spec.n_features, spec.target.feature_probability,
                                       spec.value_range, seed=12345))


def run_toy_decomposition(toy: str, method: str, *, published: bool = False, steps: int | None = None,
                          batch_size: int | None = None, seed: int | None = None,
                          out_dir: Path | None = None, progress: bool = True,
                          device: str = "cpu") -> DecompositionReport:
    """Train the toy's target, decompose it, and measure it against the ground truth.

    The target trains on the CPU from its seed (so it is the same model whatever `device`); the
    decomposition trains on `device` and is evaluated back on the CPU."""
    spec = get_toy(toy)
    if method not in KINDS:
        raise SaekitError(f"unknown method {method!r}; choose spd or apd")
    kind = KINDS[method]
    cfg = (spec.spd_published if published else spec.spd_default) if kind.per_layer else \
        (spec.apd_published if published else spec.apd_default)
    # Any: mypy checks replace() on a config union field by field, which it cannot do for a ** dict.
    overrides: dict[str, Any] = {k: v for k, v in (("steps", steps), ("batch_size", batch_size), ("seed", seed))
                                 if v is not None}
    cfg = replace(cfg, **overrides)
    start = time.perf_counter()
    target, target_loss = train_target(spec, progress=progress)
    seconds_target = time.perf_counter() - start
    layer_names = target.decomposable_layers
    target.to(device)
    batches = (x.to(device) for x in sparse_feature_batches(
        cfg.batch_size, spec.n_features, spec.target.feature_probability, spec.value_range,
        seed=1000 + cfg.seed))
    start = time.perf_counter()
    decomposition: SPDDecomposition | APDDecomposition
    if kind.per_layer:
        assert isinstance(cfg, SPDConfig)  # chosen by the kind above
        decomposition, log = train_spd(target, layer_names, batches, cfg, progress=progress)
    else:
        assert isinstance(cfg, APDConfig)
        decomposition, log = train_apd(target, layer_names, batches, cfg, tied=spec.apd_tied,
                                       hidden_act_names=spec.apd_hidden_acts, progress=progress)
    seconds = time.perf_counter() - start
    target.cpu()
    decomposition.cpu()
    report = evaluate_decomposition(spec, method, target, decomposition, cfg, out_dir)
    report.settings = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__} | {"published": published,
                                                                                 "device": device}
    report.target_loss, report.seconds_target, report.seconds_decompose = target_loss, seconds_target, seconds
    report.final_losses = log.losses[-1] if log.losses else {}
    return report


def one_hot_importances(spec: ToySpec, method: str,
                        decomposition: SPDDecomposition | APDDecomposition) -> dict[str, Tensor]:
    """[n_features, C] per layer: g(x) for SPD; for APD the attributions, scaled so each row's max is 1
    (APD components span all layers, so its one matrix is reported under the key "components")."""
    probes = torch.eye(spec.n_features) * ONE_HOT_VALUE
    if KINDS[method].per_layer:
        assert isinstance(decomposition, SPDDecomposition)  # the method names the decomposition's kind
        return decomposition.causal_importances(probes)
    assert isinstance(decomposition, APDDecomposition)
    attributions = decomposition.attributions(probes, "target")
    return {"components": attributions / attributions.max(1, keepdim=True).values.clamp_min(1e-12)}


def evaluate_decomposition(spec: ToySpec, method: str, target: nn.Module,
                           decomposition: SPDDecomposition | APDDecomposition,
                           cfg: SPDConfig | APDConfig, out_dir: Path | None) -> DecompositionReport:
    """Ground-truth metrics, component counts, importance checks, output error and plots."""
    names = decomposition.layer_names
    per_layer = KINDS[method].per_layer
    # The method names the decomposition's kind (and its config's): the asserts below say so to the type
    # checker, branch by branch.
    if per_layer:
        assert isinstance(decomposition, SPDDecomposition)
        weights = {n: decomposition.subcomponent_weights(n).detach() for n in names}
    else:
        assert isinstance(decomposition, APDDecomposition)
        weights = {n: decomposition.component_weights(n).detach() for n in names}
    mmcs = ml2r = None
    if spec.is_tms:
        assert isinstance(target, TMSModel)  # what train_target builds for a TMS spec
        mmcs, ml2r = mmcs_ml2r(target.linear1.weight, weights["linear1"])
    if per_layer:
        norms = {n: component_norms(w) for n, w in weights.items()}
    else:  # an APD component's size is its norm over every layer it spans (tied layers count once)
        assert isinstance(decomposition, APDDecomposition)
        untied = [n for n in names if n not in decomposition.tied]
        norms = {"components": torch.stack([component_norms(weights[n]) for n in untied]).norm(dim=0)}
    keep = {n: non_negligible_mask(v) for n, v in norms.items()}
    importances = one_hot_importances(spec, method, decomposition)
    check_layers = spec.feature_layers if per_layer else ("components",)
    checks = {n: permutation_check(importances[n], PERMUTATION_THRESHOLD) for n in check_layers}
    dense_on, kept_error = {}, {}
    if per_layer:
        for name in spec.identity_layers:
            on = importances[name][:, keep[name]] > PERMUTATION_THRESHOLD
            dense_on[name] = on.float().mean().item() if on.numel() else 0.0
        for name in names:
            target_weight = decomposition.target_weights[name]
            residual = target_weight - weights[name][keep[name]].sum(0)
            kept_error[name] = (residual.norm() / target_weight.norm()).item()
    with torch.no_grad():
        x = _eval_batch(spec)
        target_out = target(x)
        if per_layer:
            assert isinstance(decomposition, SPDDecomposition)
            masks = decomposition.causal_importances(x)
            approx = decomposition.masked_output(x, dict(masks))
        else:
            assert isinstance(decomposition, APDDecomposition) and isinstance(cfg, APDConfig)
            mask = batch_topk_mask(decomposition.attributions(x, cfg.attribute_at), cfg.topk)
            approx = decomposition.sparse_forward(x, mask)
        recon = F.mse_loss(approx, target_out).item()
    baseline = None if isinstance(spec.target, TMSTrainConfig) else monosemantic_baseline_loss(
        spec.n_features, spec.target.d_mlp * spec.target.n_layers, spec.target.feature_probability)
    plots: list[Path] = []
    if out_dir is not None:
        title = f"{spec.description}: {method.upper()} importance on one-hot inputs x_i = {ONE_HOT_VALUE}"
        label = KINDS[method].importance_label
        plots.append(plot_importance_matrices(importances, out_dir / f"{spec.name}-{method}-importance.png",
                                              title, label))
        if isinstance(spec.target, TMSTrainConfig) and spec.target.n_hidden == 2:  # spec.is_tms and ...
            assert isinstance(target, TMSModel)
            kept = keep["linear1"] if per_layer else keep["components"]
            plots.append(plot_tms_columns(target.linear1.weight, weights["linear1"], kept,
                                          out_dir / f"{spec.name}-{method}-columns.png",
                                          f"{spec.description}: {method.upper()} components of W"))
    return DecompositionReport(
        toy=spec.name, method=method, settings={}, target_loss=float("nan"), seconds_target=0.0,
        seconds_decompose=0.0, final_losses={}, mmcs=mmcs, ml2r=ml2r,
        non_negligible={n: int(k.sum()) for n, k in keep.items()},
        n_components={n: int(k.numel()) for n, k in keep.items()}, permutation=checks,
        dense_on_fraction=dense_on, kept_sum_error=kept_error, reconstruction_mse=recon, baseline_mse=baseline,
        plots=plots)
