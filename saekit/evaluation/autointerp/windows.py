"""The text windows an explainer reads and a scorer classifies, cut from the dashboard pass.

`saekit.inspect.dashboard_data.gather_activations` runs the model once over the text and keeps every
non-zero latent activation; everything here is cut from that record, with no second model pass.
Sampling follows SAEBench's autointerp (METHODS-2 §7.1), per latent:
- windows of ±`buffer` tokens (21 for buffer 10) around centres t with buffer ≤ t < T − buffer;
- top: the largest activations, no two centres in one window row within `buffer` tokens of each other;
  n_top_explain of them go to the explainer, n_top_score to the scorer (a seeded random split);
- importance-weighted ("quantile") windows: centres drawn without replacement with probability ∝ a²
  among the activations below the weakest top one, so the explainer also sees how the latent fires
  weakly; n_iw_explain to the explainer, n_iw_score to the scorer;
- random: n_random uniformly drawn centres (among tokens that count), shown to the scorer as inactive
  examples (SAEBench labels them inactive without checking; `check_random` draws only windows where the
  latent stays below the active threshold instead);
- a token counts as active when its value exceeds `active_fraction` × the latent's largest top value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from saekit.inspect.dashboard_data import Activations, contexts


@dataclass
class SamplingOptions:
    buffer: int = 10
    n_top_explain: int = 10
    n_top_score: int = 2
    n_iw_explain: int = 5
    n_iw_score: int = 2
    n_random: int = 10
    active_fraction: float = 0.01
    check_random: bool = False
    seed: int = 42


@dataclass
class Window:
    token_ids: list[int]
    values: list[float]  # the latent on each token
    kind: str  # "top", "iw" or "random"
    centre: int = 0  # index of the sampled token inside the window (tokens that do not count, such as
    # BOS, are left out of windows, so a window near a sequence start can be shorter)


@dataclass
class LatentWindows:
    latent: int
    explain: list[Window] = field(default_factory=list)
    score: list[Window] = field(default_factory=list)  # activating (top, iw) first, then random
    max_value: float = 0.0  # the largest top activation (tokens above active_fraction of it are marked)


def _valid(positions: np.ndarray, T: int, buffer: int) -> np.ndarray:
    t = positions % T
    return (t >= buffer) & (t < T - buffer)


def _top_centres(positions: np.ndarray, T: int, buffer: int, k: int) -> list[int]:
    chosen: list[int] = []
    for p in positions[_valid(positions, T, buffer)].tolist():
        if all(p // T != c // T or abs(p - c) > buffer for c in chosen):
            chosen.append(p)
            if len(chosen) == k:
                break
    return chosen


def _window(record: Activations, latent: int, centre: int, buffer: int, kind: str) -> Window:
    example = contexts(record, latent, np.array([centre]), left=buffer, right=buffer)[0]
    return Window(example.token_ids, example.values, kind, example.peak)


def sample_windows(record: Activations, latent: int, options: SamplingOptions,
                   rng: np.random.Generator) -> LatentWindows | None:
    """The latent's explanation and scoring windows, or None when it has too few top windows."""
    T, b = record.context, options.buffer
    positions, values = record.latent(latent)
    n_top = options.n_top_explain + options.n_top_score
    top = _top_centres(positions, T, b, n_top)
    if len(top) < n_top:
        return None
    top_values = {p: v for p, v in zip(positions.tolist(), values.tolist())}
    max_value = max(top_values[p] for p in top)
    weakest = min(top_values[p] for p in top)
    order = rng.permutation(n_top)
    # the explainer sees its top windows strongest first
    top_explain = sorted((top[i] for i in order[:options.n_top_explain]), key=lambda p: -top_values[p])
    top_score = [top[i] for i in order[options.n_top_explain:]]

    # importance-weighted windows below the weakest top activation
    n_iw = options.n_iw_explain + options.n_iw_score
    below = _valid(positions, T, b) & (values < weakest)
    candidates, weights = positions[below], values[below].astype(np.float64) ** 2
    iw: list[int] = []
    if n_iw and len(candidates) >= n_iw and weights.sum() > 0:
        iw = rng.choice(candidates, size=n_iw, replace=False, p=weights / weights.sum()).tolist()
    elif n_iw:
        return None

    # random windows: any valid centre of any window row
    threshold = options.active_fraction * max_value
    random_centres: list[int] = []
    rows = record.token_ids.shape[0]
    counted = record.counted.reshape(-1)
    for _ in range(100 * max(options.n_random, 1)):
        if len(random_centres) == options.n_random:
            break
        centre = int(rng.integers(rows)) * T + int(rng.integers(b, T - b))
        if centre in random_centres or not counted[centre]:  # a centre is a real token, not BOS/padding
            continue
        if options.check_random and max(_window(record, latent, centre, b, "random").values,
                                        default=0.0) > threshold:
            continue
        random_centres.append(centre)
    if len(random_centres) < options.n_random:
        return None

    out = LatentWindows(latent, max_value=max_value)
    out.explain = [_window(record, latent, c, b, "top") for c in top_explain] + \
        [_window(record, latent, c, b, "iw") for c in iw[:options.n_iw_explain]]
    out.score = [_window(record, latent, c, b, "top") for c in top_score] + \
        [_window(record, latent, c, b, "iw") for c in iw[options.n_iw_explain:]] + \
        [_window(record, latent, c, b, "random") for c in random_centres]
    return out


def alive_latents(record: Activations, min_firings: int = 15) -> np.ndarray:
    """Latents that fire more than `min_firings` times in the record (SAEBench: 15)."""
    counts = np.diff(record.starts)
    return np.nonzero(counts > min_firings)[0]
