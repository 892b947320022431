"""Ground-truth scores for parameter decompositions (APD/SPD papers, METHODS.md §11).

In TMS the ground-truth mechanisms are the columns of W: mechanism j is W_{:,j} e_jᵀ. A decomposition
recovers them if, for every column j, some component's column j points the same way (MMCS ≈ 1) with
the same length (ML2R ≈ 1; below 1 is shrinkage).

    MMCS = (1/n) Σ_j max_c cos(P_{c,:,j}, W_{:,j})
    ML2R = (1/n) Σ_j ||P_{mcs(j),:,j}|| / ||W_{:,j}||,   mcs(j) = argmax_c cos(P_{c,:,j}, W_{:,j})

Note that a rank-one subcomponent's columns all point along ±U_c, so a *negligible* subcomponent can
win the max-cosine for a column by accident; ML2R then collapses, which is why both are reported
together with the count of non-negligible components.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def column_cosines(target_weight: Tensor, component_weights: Tensor, eps: float = 1e-12) -> Tensor:
    """[C, n_columns]: cos(P_{c,:,j}, W_{:,j}); a zero column has cosine 0."""
    dots = torch.einsum("cij,ij->cj", component_weights, target_weight)
    norms = component_weights.norm(dim=1) * target_weight.norm(dim=0)
    return dots / norms.clamp_min(eps)


def mmcs_ml2r(target_weight: Tensor, component_weights: Tensor) -> tuple[float, float]:
    """(MMCS, ML2R) of components [C, d_out, d_in] against a target weight [d_out, d_in], columns as
    the ground-truth directions (nn.Linear layout: column j is what input feature j writes)."""
    target_weight = target_weight.detach().float()
    component_weights = component_weights.detach().float()
    cosines = column_cosines(target_weight, component_weights)
    best_cos, best_component = cosines.max(dim=0)
    columns = torch.arange(target_weight.shape[1])
    matched_norms = component_weights[best_component, :, columns].norm(dim=-1)
    ratios = matched_norms / target_weight.norm(dim=0).clamp_min(1e-12)
    return best_cos.mean().item(), ratios.mean().item()


def component_norms(component_weights: Tensor) -> Tensor:
    """[C]: Frobenius norm of each component's matrix."""
    return component_weights.detach().flatten(1).norm(dim=1)


def non_negligible_mask(norms: Tensor, relative_threshold: float = 0.1) -> Tensor:
    """Components whose norm is at least `relative_threshold` × the layer's largest component norm.

    Relative, so one rule serves layers of any scale; unused SPD subcomponents are driven to ~0 (each
    random mask on a nonzero unused subcomponent costs reconstruction), so the gap is wide in practice.
    """
    return norms >= relative_threshold * norms.max()


def greedy_component_order(importance: Tensor) -> list[int]:
    """Column order for plots: for each feature in turn, the unused component it relies on most.

    This is the permutation used in the SPD paper's importance figures; leftover components follow.
    """
    remaining = list(range(importance.shape[1]))
    order: list[int] = []
    for row in importance:
        if not remaining:
            break
        best = max(remaining, key=lambda c: row[c].item())
        order.append(best)
        remaining.remove(best)
    return order + remaining


@dataclass(frozen=True)
class PermutationCheck:
    """Is a feature × component importance matrix a permutation of the identity, up to `threshold`?

    Entries above the threshold count as "on". The matrix passes when every feature has exactly one
    component on and no component is on for two features (dead components, all off, are allowed).
    """

    threshold: float
    is_permutation: bool
    features_with_exactly_one: int
    n_features: int
    components_shared_by_features: int
    min_assigned_importance: float  # the weakest "on" entry, for the features' own components
    max_other_importance: float  # the strongest entry that is not a feature's own component
    features_with_distinct_top: int  # features whose top component is no other feature's top


def permutation_check(importance: Tensor, threshold: float) -> PermutationCheck:
    """Check an importance matrix [n_features, n_components] against the permutation criterion."""
    on = importance > threshold
    per_feature = on.sum(1)
    per_component = on.sum(0)
    own = importance.argmax(1)
    own_values = importance[torch.arange(importance.shape[0]), own]
    others = importance.clone()
    others[torch.arange(importance.shape[0]), own] = float("-inf")
    exactly_one = int((per_feature == 1).sum())
    distinct_top = int((torch.bincount(own, minlength=importance.shape[1])[own] == 1).sum())
    shared = int((per_component > 1).sum())
    return PermutationCheck(
        threshold=threshold,
        is_permutation=exactly_one == importance.shape[0] and shared == 0,
        features_with_exactly_one=exactly_one,
        n_features=importance.shape[0],
        components_shared_by_features=shared,
        min_assigned_importance=own_values.min().item(),
        max_other_importance=others.max().item() if importance.shape[1] > 1 else 0.0,
        features_with_distinct_top=distinct_top,
    )
