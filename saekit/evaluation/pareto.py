"""Pareto plots: reconstruction quality against sparsity, one marker per dictionary, one colour per method.

Researchers compare sparse dictionaries on the sparsity/fidelity frontier (L0 against FVU, and against the
language-model loss increase when spliced in), so every sweep and the demo draw the same figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PARETO_PANELS = (("fvu", "FVU (lower is better)"), ("delta_lm_loss", "Δ LM loss, nats (lower is better)"))


def plot_pareto(rows: list[dict[str, Any]], path: str | Path,
                panels: tuple[tuple[str, str], ...] = PARETO_PANELS, title: str | None = None) -> Path:
    """Save a PNG with one panel per metric (x: L0) and return its path. Rows need `l0`, `method`,
    `name` and the panel metrics; panels whose metric no row has are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = tuple((key, label) for key, label in panels if any(key in row for row in rows))
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    methods = sorted({row["method"] for row in rows})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    for axis, (key, label) in zip(axes[0], panels):
        for method in methods:
            points = sorted((row["l0"], row[key]) for row in rows if row["method"] == method and key in row)
            if points:
                axis.plot(*zip(*points), marker="o", linestyle="-", color=colours[method], label=method)
        axis.set_xlabel("L0 (active latents per token)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0][0].legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
