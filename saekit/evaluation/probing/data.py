"""The sae-probes binary datasets, read from the files of the `sae-probes` wheel, and their split.

The wheel (sae-probes 0.4.2 on PyPI) ships `data/probing_datasets_MASTER.csv.zst` and
`data/cleaned_data/{number}_{tag}.csv.zst`. saekit does not install the package (its dependencies pull
TransformerLens and SAELens, which saekit does not use): `python -m saekit.evaluation.probing.data`
downloads the wheel with pip (`pip download --no-deps`; scripts/setup.sh runs it), checks its SHA-256
and every data file against the wheel's RECORD, and unpacks only `data/` into
`$SAEKIT_CACHE/probing/sae-probes-0.4.2/`. An installed sae-probes package is used too when that folder
is missing. The rules below are sae-probes 0.4.2's (`utils_data.py`, `generate_sae_activations.py`), so a
probe here sees exactly the rows and the split that sae-probes would give it:

- the binary datasets are the MASTER rows of type "Binary Classification";
- labels are encoded alphabetically (sklearn's `LabelEncoder`, e.g. `bigram` -> 0, `not_bigram` -> 1);
- at most the first 5,000 rows are used;
- num_train = min(N − 100, 1024) with N the dataset's full size, num_test = rows − num_train − 1, both
  half positive (positives ceil(half)), drawn by `np.random.RandomState(seed)` in this order: train
  positives, train negatives, test positives, test negatives, then each split permuted.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from saekit.errors import SaekitError
from saekit.models.loading import cache_root

PACKAGE = "sae_probes"
VERSION = "0.4.2"
MAX_ROWS = 5000
FETCH_HINT = ("run `python -m saekit.evaluation.probing.fetch` once (it downloads the sae-probes "
              f"{VERSION} wheel from PyPI and unpacks its datasets; scripts/setup.sh does), or pass the "
              "data folder (--probing-data)")


def cached_data_folder() -> Path:
    """Where `python -m saekit.evaluation.probing.fetch` unpacks the datasets."""
    return cache_root() / "probing" / f"sae-probes-{VERSION}"


def data_directory(path: str | Path | None = None) -> Path:
    """The folder holding `probing_datasets_MASTER.csv.zst` and `cleaned_data/`: `path` when given,
    else the unpacked wheel data under the saekit cache, else an installed sae-probes package's `data/`
    (found without importing the package, whose `__init__` imports TransformerLens)."""
    if path is not None:
        folder = Path(path)
    else:
        folder = cached_data_folder()
        spec = importlib.util.find_spec(PACKAGE)
        if not (folder / "probing_datasets_MASTER.csv.zst").is_file() and spec is not None \
                and spec.submodule_search_locations:
            folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not (folder / "probing_datasets_MASTER.csv.zst").is_file():
        raise SaekitError(f"{folder} holds no probing_datasets_MASTER.csv.zst: {FETCH_HINT}")
    return folder


def _read_zst_csv(path: Path):  # -> pandas.DataFrame (pandas is imported lazily)
    import pandas as pd

    try:
        return pd.read_csv(path, compression="zstd")
    except ImportError as error:
        raise SaekitError(f"reading {path.name} needs the zstandard package: pip install "
                          f"'saekit[eval]' ({error})") from None


@lru_cache(maxsize=8)
def binary_datasets(folder: Path) -> tuple[str, ...]:
    """Names `{number}_{tag}` of the binary classification datasets, in the MASTER file's order."""
    master = _read_zst_csv(folder / "probing_datasets_MASTER.csv.zst")
    rows = master[master["Data type"] == "Binary Classification"]
    return tuple(str(name).split("/")[-1].split(".")[0] for name in rows["Dataset save name"])


@dataclass
class ProbingDataset:
    """One dataset's prompts and 0/1 labels (at most MAX_ROWS, in file order) and its full size."""

    name: str
    prompts: list[str]
    labels: np.ndarray  # [rows] int64 in {0, 1}
    full_size: int  # rows in the file (the split sizes are computed from it, as sae-probes does)


def check_names(names: list[str] | tuple[str, ...], folder: Path) -> None:
    """A one-line error for the first name that is not a binary dataset, with close names as a hint."""
    known = binary_datasets(folder)
    for name in names:
        if name not in known:
            close = [k for k in known if name.lower() in k.lower()][:5]
            hint = f" (did you mean {', '.join(close)}?)" if close else " (`saekit eval --list-datasets` lists them)"
            raise SaekitError(f"unknown sae-probes dataset {name!r}{hint}")


def read_dataset(name: str, folder: Path) -> ProbingDataset:
    from sklearn.preprocessing import LabelEncoder

    check_names([name], folder)
    frame = _read_zst_csv(folder / "cleaned_data" / f"{name}.csv.zst")
    if "prompt" not in frame.columns or "target" not in frame.columns:
        raise SaekitError(f"dataset {name} has no prompt/target columns: the data files are damaged")
    labels = LabelEncoder().fit_transform(frame["target"].values).astype(np.int64)
    if labels.max(initial=0) != 1 or labels.min(initial=1) != 0:
        raise SaekitError(f"dataset {name} is not binary (labels {sorted(set(frame['target']))[:5]})")
    prompts = [str(p) for p in frame["prompt"].tolist()]
    return ProbingDataset(name, prompts[:MAX_ROWS], labels[:MAX_ROWS], len(frame))


def normal_split_sizes(full_size: int, rows: int) -> tuple[int, int]:
    """(num_train, num_test) of sae-probes' "normal" setting: rows = rows kept (≤ MAX_ROWS)."""
    num_train = min(full_size - 100, 1024)
    num_test = rows - num_train - 1
    if num_train < 2 or num_test < 2:
        raise SaekitError(f"a dataset of {full_size} rows is too small to split (it needs > 102 rows)")
    return num_train, num_test


def split_indices(labels: np.ndarray, num_train: int, num_test: int, pos_ratio: float = 0.5,
                  seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, test rows), each a `pos_ratio` positive sample without replacement, in sae-probes'
    order of draws from one `RandomState(seed)` (so the same seed gives the same rows as sae-probes)."""
    rng = np.random.RandomState(seed)
    positives, negatives = np.where(labels == 1)[0], np.where(labels == 0)[0]
    pos_train = int(np.ceil(pos_ratio * num_train))
    pos_test = int(np.ceil(pos_ratio * num_test))
    need_pos, need_neg = pos_train + pos_test, (num_train - pos_train) + (num_test - pos_test)
    if need_pos > len(positives) or need_neg > len(negatives):
        raise SaekitError(f"the split needs {need_pos} positive and {need_neg} negative rows, the data has "
                          f"{len(positives)} and {len(negatives)}")
    train_pos = rng.choice(positives, size=pos_train, replace=False)
    train_neg = rng.choice(negatives, size=num_train - pos_train, replace=False)
    test_pos = rng.choice(np.setdiff1d(positives, train_pos), size=pos_test, replace=False)
    test_neg = rng.choice(np.setdiff1d(negatives, train_neg), size=num_test - pos_test, replace=False)
    train = rng.permutation(np.concatenate([train_pos, train_neg]))
    test = rng.permutation(np.concatenate([test_pos, test_neg]))
    return train, test

