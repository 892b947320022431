"""Latent selection and logistic-regression probes, with sae-probes 0.4.2's rules (`run_sae_evals.py`,
`utils_training.py`; spec: METHODS-2 §6.2 steps 4-6).

Selection: each latent is divided by its mean |activation| over its non-zero entries (+1e-6) on the
training set, then latents are ranked by |mean over positives − mean over negatives|; a k-sparse probe
reads the top k latents *un-normalised* (the normalisation only ranks).

Probe: scikit-learn's LogisticRegression (L1 with saga, or L2 with lbfgs; max_iter 1000), C chosen from
logspace(5, −5, 10) by mean validation AUC. Validation: n ≤ 12 leave-2-out, n < 128 a shuffled 6-fold
stratified split, else one hold-out of the last min(⌊0.2 n⌋, 100) training rows; only folds whose
validation holds both classes count. The chosen C is refit on all training rows (shuffled by the seed)
and scored on the test rows (AUC from predict_proba, accuracy, weighted F1).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from saekit.errors import SaekitError

C_GRID = np.logspace(5, -5, 10)
PENALTIES = ("l1", "l2")


def mean_activation_normalised(latents: np.ndarray) -> np.ndarray:
    """Each column divided by its mean |value| over its non-zero entries (so rare, strong latents and
    frequent, weak ones rank on one scale)."""
    nonzero = (latents != 0).sum(axis=0)
    means = np.abs(latents).sum(axis=0) / (nonzero + 1e-6)
    return latents / (means + 1e-6)


def rank_latents(train_latents: np.ndarray, train_labels: np.ndarray, normalise: bool = True) -> np.ndarray:
    """Latent indices, best first, by |mean over positives − mean over negatives| on the training rows."""
    x = mean_activation_normalised(train_latents) if normalise else train_latents
    difference = x[train_labels == 1].mean(axis=0) - x[train_labels == 0].mean(axis=0)
    # stable sort of −|diff| keeps ties in index order (torch.argsort, which sae-probes uses, does not
    # promise an order for ties; ties are dead latents, which no k-sparse probe should pick first anyway)
    return np.argsort(-np.abs(difference), kind="stable")


def validation_splits(labels: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import LeavePOut, StratifiedKFold

    n = len(labels)
    if n <= 12:
        folds = list(LeavePOut(2).split(np.zeros(n), labels))
    elif n < 128:
        folds = list(StratifiedKFold(n_splits=6, shuffle=True, random_state=seed).split(np.zeros(n), labels))
    else:
        held = min(int(0.2 * n), 100)
        return [(np.arange(n - held), np.arange(n - held, n))]
    return [(train, val) for train, val in folds if len(np.unique(labels[val])) == 2]


def _model(penalty: str, seed: int, C: float = 1.0) -> Any:
    """sae-probes' LogisticRegression: L1 with saga, L2 with lbfgs (sklearn's default solver)."""
    from sklearn.linear_model import LogisticRegression

    options: dict[str, Any] = {"C": C, "random_state": seed, "max_iter": 1000}
    if penalty == "l1":
        options["solver"] = "saga"
    if LogisticRegression().penalty == "deprecated":  # sklearn >= 1.8 says the penalty by l1_ratio
        options["l1_ratio"] = 1.0 if penalty == "l1" else 0.0
    elif penalty == "l1":
        options["penalty"] = "l1"
    return LogisticRegression(**options)


@dataclass
class ProbeResult:
    test_auc: float
    test_acc: float
    test_f1: float
    val_auc: float
    C: float | None  # None when the training set was too small to validate (sklearn's default C = 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
              penalty: str = "l2", seed: int = 42) -> ProbeResult:
    """The best-C logistic-regression probe on (x_train, y_train), scored on the test rows."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    if penalty not in PENALTIES:
        raise SaekitError(f"probe penalty must be one of {', '.join(PENALTIES)}, got {penalty!r}")
    if len(np.unique(y_test)) < 2:
        raise SaekitError("the probe's test rows hold one class only: AUC is undefined")
    best_C, scores = None, []
    with warnings.catch_warnings():
        # sae-probes silences these too: at the extreme Cs saga and lbfgs stop at max_iter by design
        warnings.simplefilter("ignore", ConvergenceWarning)
        if len(x_train) > 3:
            splits = validation_splits(y_train, seed)
            for C in C_GRID:
                fold_scores = []
                for train, val in splits:
                    if len(np.unique(y_train[train])) < 2:
                        fold_scores.append(0.5)
                        continue
                    model = _model(penalty, seed, C).fit(x_train[train], y_train[train])
                    fold_scores.append(roc_auc_score(y_train[val], model.predict_proba(x_train[val])[:, 1]))
                scores.append(float(np.mean(fold_scores)) if fold_scores else float("nan"))
            if scores and not np.all(np.isnan(scores)):
                best_C = float(C_GRID[int(np.nanargmax(scores))])
        order = np.random.RandomState(seed).permutation(len(x_train))
        final = _model(penalty, seed, best_C if best_C is not None else 1.0)
        final.fit(x_train[order], y_train[order])
    predicted = final.predict(x_test)
    probability = final.predict_proba(x_test)[:, 1]
    val_auc = max(s for s in scores if not np.isnan(s)) if best_C is not None else \
        float(roc_auc_score(y_train, final.predict_proba(x_train)[:, 1]))
    return ProbeResult(test_auc=float(roc_auc_score(y_test, probability)),
                       test_acc=float(accuracy_score(y_test, predicted)),
                       test_f1=float(f1_score(y_test, predicted, average="weighted")),
                       val_auc=float(val_auc), C=best_C)


def sparse_probes(train_latents: np.ndarray, y_train: np.ndarray, test_latents: np.ndarray, y_test: np.ndarray,
                  ks: list[int], penalty: str = "l1", seed: int = 42, binarize: bool = False,
                  normalise: bool = True) -> list[dict[str, Any]]:
    """One probe per k on the top-k latents (ranked on the training rows only); k larger than the
    dictionary is clipped to its width. Each result records the chosen latent indices."""
    ranking = rank_latents(train_latents, y_train, normalise)
    out = []
    for k in ks:
        chosen = ranking[:k]
        x_train, x_test = train_latents[:, chosen], test_latents[:, chosen]
        if binarize:
            x_train, x_test = (x_train != 0).astype(np.float32), (x_test != 0).astype(np.float32)
        result = fit_probe(x_train, y_train, x_test, y_test, penalty, seed)
        out.append({"k": int(k), **result.to_dict(), "indices": chosen.tolist()})
    return out
