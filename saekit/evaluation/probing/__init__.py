"""Sparse probing on the sae-probes datasets (docs/evaluation.md "Sparse probing")."""

from saekit.evaluation.probing.run import (
    DEFAULT_KS,
    QUICK_DATASETS,
    ProbingOptions,
    available_datasets,
    check_datasets,
    plot_probing,
    sparse_probing,
)

__all__ = ["DEFAULT_KS", "QUICK_DATASETS", "ProbingOptions", "available_datasets", "check_datasets", "plot_probing",
           "sparse_probing"]
