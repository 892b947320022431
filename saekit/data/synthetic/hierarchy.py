"""The feature hierarchy of a synthetic model: a forest whose children fire only with their parent.

Built breadth-first as SynthSAEBench numbers it (METHODS-2 §5.1): features 0..R−1 are the roots; each
parent at depth < max_depth gets `branching` children, numbered consecutively level by level, until the
features run out (later features are free). A portion of the parents (all of them in the presets) have
mutually exclusive children: when several fire, one is kept, uniformly at random. With
`scale_children_by_parent`, a child's magnitude is multiplied by parent / mean(parent), so a strong
parent has strong children. Applying it works level by level on a dense [n, N] code matrix, one
gather/scatter per level, so a loser's subtree is switched off before the next level is looked at.

Compensation raises children's probabilities so that every feature still fires at its Zipf ("base")
rate b. A child fires only with its parent, so a plain child needs b / r_parent (r: the rate the parent
achieves). An exclusive child also has to win its group: it survives with probability
w_i = E[1/K | i fires], K the number of siblings that fire with it. 'exact' solves
c_i = b_i / (r_parent·w_i) for the whole group by fixed-point iteration (w from the Poisson-binomial
distribution of the other siblings; METHODS-2 §5.1), clamped to 1; 'saelens' uses the first-order rule
of SAELens 6.54, c_i = (b_i / b_parent)·(1 + Σ_{j≠i} b_j / b_parent). Zipf rates over-subscribe deep
groups (four children's base rates add up to more than their parent's), so many children clamp at 1
and fire below their base rate in both presets; `achieved_rates` predicts the rate each feature
achieves. Both rules assume that siblings fire independently given their parent; the copula's weak
correlations bend that a little (docs/synthetic.md measures it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from saekit.data.synthetic.config import SyntheticConfig


@dataclass
class Hierarchy:
    """The forest as index tensors: parent[i] (−1 for roots and free features), depth[i] (−1 free),
    and for each level ≥ 1 its children, their parents and its exclusive groups."""

    parent: Tensor  # [N] long
    depth: Tensor  # [N] long
    exclusive: Tensor  # [N] bool: this feature's children are mutually exclusive
    levels: list[tuple[Tensor, Tensor]]  # per depth 1..: (children [m], their parents [m])
    groups: list[Tensor]  # per depth 1..: exclusive sibling groups [G, branching], padded with −1

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    def children_of(self, feature: int) -> list[int]:
        return (self.parent == feature).nonzero().flatten().tolist()

    def to(self, device: torch.device | str) -> Hierarchy:
        return Hierarchy(self.parent.to(device), self.depth.to(device), self.exclusive.to(device),
                         [(c.to(device), p.to(device)) for c, p in self.levels],
                         [g.to(device) for g in self.groups])


def build_hierarchy(cfg: SyntheticConfig) -> Hierarchy:
    """The forest of `cfg` (roots, branching, depth; exclusive parents drawn with random.Random(seed+3))."""
    n = cfg.n_features
    parent = torch.full((n,), -1, dtype=torch.long)
    depth = torch.full((n,), -1, dtype=torch.long)
    roots = list(range(min(cfg.roots, n)))
    depth[roots] = 0
    parents_in_order = list(roots)  # every node that may get children, roots first, then breadth-first
    children: dict[int, list[int]] = {}
    next_feature = len(roots)
    frontier = list(roots)
    for level in range(1, cfg.max_depth + 1):
        new_frontier = []
        for node in frontier:
            kids = list(range(next_feature, min(next_feature + cfg.branching, n)))
            next_feature += len(kids)
            children[node] = kids
            parent[kids] = node
            depth[kids] = level
            if level < cfg.max_depth:
                new_frontier.extend(kids)
                parents_in_order.extend(kids)
        frontier = new_frontier
    rng = random.Random(cfg.seed + 3)
    eligible = [p for p in parents_in_order
                if int(depth[p]) >= cfg.exclusive_min_depth and len(children.get(p, [])) >= 2]
    chosen = rng.sample(range(len(eligible)), int(len(eligible) * cfg.exclusive_portion))
    exclusive = torch.zeros(n, dtype=torch.bool)
    exclusive[[eligible[i] for i in chosen]] = True

    levels, groups = [], []
    for level in range(1, cfg.max_depth + 1):
        at_level = (depth == level).nonzero().flatten()
        if at_level.numel() == 0:
            break
        levels.append((at_level, parent[at_level]))
        level_parents = [int(p) for p in parent[at_level].unique() if bool(exclusive[p])]
        rows = [children[p] + [-1] * (cfg.branching - len(children[p])) for p in level_parents]
        groups.append(torch.tensor(rows, dtype=torch.long).reshape(-1, cfg.branching))
    return Hierarchy(parent, depth, exclusive, levels, groups)


def survival_given_active(probabilities: list[float]) -> list[float]:
    """E[1/K | i fires] for independent siblings firing with these probabilities (K counts i and the
    other siblings that fire): the chance that i wins a uniformly random pick among them."""
    result = []
    for i in range(len(probabilities)):
        counts = [1.0]  # Poisson-binomial distribution of how many of the others fire
        for j, p in enumerate(probabilities):
            if j == i:
                continue
            counts = [a * (1 - p) + b * p for a, b in zip([*counts, 0.0], [0.0, *counts])]
        result.append(sum(c / (m + 1) for m, c in enumerate(counts)))
    return result


def _exclusive_members(hierarchy: Hierarchy) -> set[int]:
    return {i for level_groups in hierarchy.groups for i in level_groups.flatten().tolist() if i >= 0}


def achieved_rates(hierarchy: Hierarchy, probabilities: Tensor) -> Tensor:
    """The rate at which each feature fires after gating and exclusion, given its firing probability,
    if siblings fire independently given their parent: p·r_parent, times w_i for exclusive children."""
    p = probabilities.double().cpu()
    rate = p.clone()
    exclusive = _exclusive_members(hierarchy)
    for (kids, _parents), level_groups in zip(hierarchy.levels, hierarchy.groups):
        plain = torch.tensor([i for i in kids.tolist() if i not in exclusive], dtype=torch.long)
        rate[plain] = p[plain] * rate[hierarchy.parent[plain]]
        for row in level_groups.tolist():
            members = [i for i in row if i >= 0]
            wins = survival_given_active([float(p[i]) for i in members])
            parent_rate = float(rate[hierarchy.parent[members[0]]])
            rate[members] = p[members] * torch.tensor(wins, dtype=torch.float64) * parent_rate
    return rate.to(probabilities.dtype)


def compensated_probabilities(hierarchy: Hierarchy, base: Tensor, compensation: str,
                              max_iterations: int = 100, tolerance: float = 1e-8) -> Tensor:
    """Per-feature firing probabilities before gating and exclusion (clamped to 1) that bring each
    feature's achieved rate to its base rate (see the module docstring for the two rules).

    'exact' works top-down against the parent's *achieved* rate: where a group cannot reach its base
    rates (its children's base rates add up to more than the parent fires, so some clamp at 1), the
    parent fires below its own base rate and its children need more. Every feature whose probability
    stays below 1 then fires exactly at its base rate. 'saelens' follows SAELens 6.54: against the
    parent's base rate, first order in the siblings."""
    b = base.double().cpu()
    p = b.clone()
    exclusive = _exclusive_members(hierarchy)
    for (kids, _parents), level_groups in zip(hierarchy.levels, hierarchy.groups):
        rate = achieved_rates(hierarchy, p)  # parents' rates are final once their level is done
        plain = torch.tensor([i for i in kids.tolist() if i not in exclusive], dtype=torch.long)
        parent_of_plain = hierarchy.parent[plain]
        reference = rate[parent_of_plain] if compensation == "exact" else b[parent_of_plain]
        p[plain] = (b[plain] / reference).clamp(max=1.0)
        for row in level_groups.tolist():
            members = [i for i in row if i >= 0]
            parent = int(hierarchy.parent[members[0]])
            wanted = [float(b[i]) for i in members]
            if compensation == "saelens":
                p_parent, total = float(b[parent]), sum(wanted)
                chosen = [min(bi / p_parent * (1 + max(0.0, total - bi) / p_parent), 1.0) for bi in wanted]
            else:
                parent_rate = float(rate[parent])
                chosen = [min(bi / parent_rate, 1.0) for bi in wanted]
                for _ in range(max_iterations):
                    wins = survival_given_active(chosen)
                    new = [min(bi / (parent_rate * w), 1.0) if w > 0 else c
                           for bi, w, c in zip(wanted, wins, chosen)]
                    change = max(abs(x - y) for x, y in zip(new, chosen))
                    chosen = new
                    if change < tolerance:
                        break
            p[members] = torch.tensor(chosen, dtype=torch.float64)
    return p.to(base.dtype)


@torch.no_grad()
def apply_hierarchy(codes: Tensor, hierarchy: Hierarchy, mean_magnitudes: Tensor, scale_children: bool,
                    generator: torch.Generator | None = None) -> Tensor:
    """Gate (and scale) children by their parents and keep one firing child per exclusive group, level
    by level, in place on codes [n, N] (non-negative; a feature is active when its value is > 0);
    returns codes. The winner of a group is drawn by one uniform number per (sample, group): the
    ⌊u·K⌋-th of its K active members."""
    n = codes.shape[0]
    for (kids, parents), groups in zip(hierarchy.levels, hierarchy.groups):
        parent_values = codes[:, parents]
        if scale_children:
            factor = parent_values / mean_magnitudes[parents]
        else:
            factor = (parent_values > 0).to(codes.dtype)
        codes[:, kids] *= factor
        if groups.numel() == 0:
            continue
        valid = groups >= 0
        padded = not bool(valid.all())
        members = groups[valid]  # the groups' features, row by row
        if padded:
            values = torch.zeros(n, *groups.shape, dtype=codes.dtype, device=codes.device)
            values[:, valid] = codes[:, members]
        else:
            values = codes[:, members].view(n, *groups.shape)
        active = values > 0
        count = active.sum(-1)
        pick = (torch.rand(count.shape, generator=generator, device=codes.device) * count).long() + 1
        seen = torch.zeros_like(count)
        for slot in range(groups.shape[1]):  # keep the pick-th active member of each group
            seen += active[..., slot]
            values[..., slot] *= active[..., slot] & (seen == pick)
        codes[:, members] = values[:, valid] if padded else values.view(n, -1)
    return codes
