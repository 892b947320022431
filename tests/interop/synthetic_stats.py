"""Statistics of a synthetic generator's ground-truth codes, computed the same way for saekit's generator
and SAELens's (this module imports only torch, so the peer environment can run it too)."""

from __future__ import annotations

import torch
from torch import Tensor


class CodeStatistics:
    """Streams codes [n, N] of a model whose hierarchy is `parent` [N] (−1: none) with mutually exclusive
    children under the parents flagged in `exclusive` [N]; `mean` [N] are the mean magnitudes."""

    def __init__(self, parent: Tensor, exclusive: Tensor, mean: Tensor) -> None:
        self.parent = parent.long()
        self.exclusive = exclusive.bool()
        self.mean = mean.float()
        n = parent.shape[0]
        depth = torch.full((n,), -1, dtype=torch.long)
        depth[self.parent < 0] = 0
        for _ in range(n):  # depth = 1 + parent's depth, resolved level by level
            unresolved = (depth < 0) & (self.parent >= 0)
            if not bool(unresolved.any()):
                break
            ready = unresolved & (depth[self.parent.clamp(min=0)] >= 0)
            depth[ready] = depth[self.parent[ready]] + 1
        self.depth = depth
        self.samples = 0
        self.fires = torch.zeros(n, dtype=torch.float64)
        self.l0_sum = 0.0
        self.l0_sq_sum = 0.0
        self.orphans = 0
        self.co_firing = 0
        levels = int(depth.max()) + 1
        self.ratio_sum = torch.zeros(levels, dtype=torch.float64)
        self.ratio_count = torch.zeros(levels, dtype=torch.float64)

    def update(self, codes: Tensor) -> None:
        codes = codes.float()
        active = codes > 0
        self.samples += codes.shape[0]
        self.fires += active.sum(0).double()
        l0 = active.sum(-1).double()
        self.l0_sum += float(l0.sum())
        self.l0_sq_sum += float(l0.pow(2).sum())
        children = (self.parent >= 0).nonzero().flatten()
        parents = self.parent[children]
        self.orphans += int((active[:, children] & ~active[:, parents]).sum())
        per_parent = torch.zeros(codes.shape[0], codes.shape[1], dtype=torch.long)
        per_parent.index_add_(1, parents, active[:, children].long())
        self.co_firing += int(((per_parent > 1) & self.exclusive).sum())
        both = active[:, children] & active[:, parents]
        ratio = codes[:, children] / (codes[:, parents] / self.mean[parents]).clamp_min(1e-12)
        for level in range(1, self.ratio_sum.shape[0]):
            at = self.depth[children] == level
            mask = both[:, at]
            self.ratio_sum[level] += float(ratio[:, at][mask].double().sum())
            self.ratio_count[level] += float(mask.sum())

    def result(self) -> dict:
        n = self.samples
        mean_l0 = self.l0_sum / n
        return {
            "samples": n,
            "rates": (self.fires / n).tolist(),
            "l0": mean_l0,
            "l0_std": max(self.l0_sq_sum / n - mean_l0 ** 2, 0.0) ** 0.5,
            "orphans": self.orphans,
            "exclusive_co_firing": self.co_firing,
            "child_over_scaled_parent": [float(s / c) if c else None
                                         for s, c in zip(self.ratio_sum[1:], self.ratio_count[1:])],
        }
