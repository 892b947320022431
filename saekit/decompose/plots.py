"""PNG figures for decompositions: feature × component importance matrices and TMS column arrows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import matplotlib
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure  # no pyplot: writes files without touching the user's backend
from torch import Tensor

from saekit.decompose.metrics import greedy_component_order


def plot_importance_matrices(matrices: Mapping[str, Tensor], path: Path, title: str,
                             value_label: str = "causal importance g") -> Path:
    """One heatmap per layer: rows are input features (one-hot), columns components in greedy order.

    A decomposition that gives each feature its own component shows a diagonal; a component used by
    every feature (e.g. the rank-50 W_out component, or TMS's identity) shows as a full column block.
    """
    n = len(matrices)
    fig = Figure(figsize=(min(4.5 * n, 18), 4.2))
    axes = fig.subplots(1, n, squeeze=False)
    image = None
    for ax, (name, matrix) in zip(axes[0], matrices.items()):
        matrix = matrix.detach().float().cpu()
        ordered = matrix[:, greedy_component_order(matrix)]
        image = ax.imshow(ordered.numpy(), aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0,
                          interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("component (greedy order)")
        ax.set_ylabel("input feature (one-hot)")
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.85, label=value_label)
    fig.suptitle(title, fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_tms_columns(target_weight: Tensor, component_weights: Tensor, keep: Tensor, path: Path,
                     title: str) -> Path:
    """For a 2-D hidden space: the target's columns W_{:,j}, their sum over components, and each kept
    component's columns as arrows (the SPD/APD papers' Figure 1 layout)."""
    target = target_weight.detach().float().cpu()
    components = component_weights.detach().float().cpu()[keep]
    panels = [("target W", target), ("sum of components", components.sum(0))]
    panels += [(f"component {i}", c) for i, c in zip(torch.nonzero(keep).flatten().tolist(), components)]
    fig = Figure(figsize=(2.2 * len(panels), 2.4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    limit = 1.15 * max(target.norm(dim=0).max().item(), 1e-6)
    tab10 = matplotlib.colormaps["tab10"]
    assert isinstance(tab10, ListedColormap)  # a qualitative map: a fixed list of ten colours
    colors = cast(Sequence[tuple[float, float, float]], tab10.colors)  # RGB tuples; typed as any array
    for ax, (name, matrix) in zip(axes[0], panels):
        for j in range(matrix.shape[1]):
            ax.annotate("", xy=(matrix[0, j].item(), matrix[1, j].item()), xytext=(0, 0),
                        arrowprops={"arrowstyle": "->", "color": colors[j % 10], "lw": 1.5})
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(name, fontsize=8)
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
