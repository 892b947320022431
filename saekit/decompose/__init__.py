"""Linear parameter decomposition: APD and SPD on any `nn.Linear` layers of a torch module.

    from saekit.decompose import SPDConfig, train_spd
    decomposition, log = train_spd(model, ["mlp.fc_in", "mlp.fc_out"], batches, SPDConfig(...))
    g = decomposition.causal_importances(x)          # {layer: [..., C]}
    P = decomposition.subcomponent_weights("mlp.fc_in")  # [C, d_out, d_in]

The toy models of the APD/SPD papers, with their ground-truth metrics and plots, are in
`toy_models`, `metrics` and `experiments` (`run_toy_decomposition`, used by `saekit decompose`).
"""

from saekit.decompose.apd import APDConfig, APDDecomposition, apd_losses, batch_topk_mask, train_apd
from saekit.decompose.experiments import (
    TOYS,
    DecompositionReport,
    ToySpec,
    evaluate_decomposition,
    get_toy,
    run_toy_decomposition,
    train_target,
)
from saekit.decompose.metrics import (
    PermutationCheck,
    component_norms,
    greedy_component_order,
    mmcs_ml2r,
    non_negligible_mask,
    permutation_check,
)
from saekit.decompose.spd import (
    SPDConfig,
    SPDDecomposition,
    hard_sigmoid,
    lower_leaky_hard_sigmoid,
    output_divergence,
    spd_losses,
    stochastic_mask,
    train_spd,
    upper_leaky_hard_sigmoid,
)
from saekit.decompose.toy_models import (
    ResidMLP,
    ResidMLPTrainConfig,
    TMSModel,
    TMSTrainConfig,
    sparse_feature_batches,
    train_resid_mlp,
    train_tms,
)

__all__ = [
    "TOYS",
    "APDConfig",
    "APDDecomposition",
    "DecompositionReport",
    "PermutationCheck",
    "ResidMLP",
    "ResidMLPTrainConfig",
    "SPDConfig",
    "SPDDecomposition",
    "TMSModel",
    "TMSTrainConfig",
    "ToySpec",
    "apd_losses",
    "batch_topk_mask",
    "component_norms",
    "evaluate_decomposition",
    "get_toy",
    "greedy_component_order",
    "hard_sigmoid",
    "lower_leaky_hard_sigmoid",
    "mmcs_ml2r",
    "non_negligible_mask",
    "output_divergence",
    "permutation_check",
    "run_toy_decomposition",
    "sparse_feature_batches",
    "spd_losses",
    "stochastic_mask",
    "train_apd",
    "train_resid_mlp",
    "train_spd",
    "train_target",
    "train_tms",
    "upper_leaky_hard_sigmoid",
]
