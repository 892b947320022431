"""Autointerp of a dictionary's latents through a chat endpoint: explain, then detect.

For each chosen latent (alive: more than `min_firings` firings in the dashboard pass; `n_latents` of
them drawn with the seed, as SAEBench draws 1000 with seed 42): windows are sampled
(`windows.sample_windows`), the explainer writes an explanation from the explanation windows, and the
scorer marks which of the shuffled scoring windows (activating top and importance-weighted ones, plus
random ones counted as inactive) it thinks fire. The latent's score is the fraction of scoring windows
classified correctly (14 by default, so an always-"None" scorer gets 10/14); `autointerp_score` is the
mean over latents whose replies parsed. Each latent draws from its own seeded generator, so results do
not depend on which latents run or in what order, and a rerun sends the same requests, which the
client's disk cache answers.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from saekit.errors import SaekitError
from saekit.evaluation.autointerp.client import ChatClient
from saekit.evaluation.autointerp.delphi import DelphiOptions, delphi_detection
from saekit.evaluation.autointerp.prompts import (
    explanation_messages,
    parse_explanation,
    parse_indices,
    scoring_messages,
    window_text,
)
from saekit.evaluation.autointerp.windows import SamplingOptions, alive_latents, sample_windows
from saekit.inspect.dashboard_data import Activations, TokenText

SCORERS = ("saebench", "delphi")


@dataclass
class AutointerpOptions:
    n_latents: int = 100
    min_firings: int = 15
    seed: int = 42
    explain_max_tokens: int = 30
    score_max_tokens: int = 33
    temperature: float | None = None  # None: the endpoint's default (SAEBench sends none)
    workers: int = 4  # latents in flight at once
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    scorer: str = "saebench"  # or "delphi": delphi-style explanation and detection (balanced accuracy)
    delphi: DelphiOptions = field(default_factory=DelphiOptions)
    progress: bool = False

    def __post_init__(self) -> None:
        if self.n_latents < 1 or self.workers < 1:
            raise SaekitError("n_latents and workers must be at least 1")
        if self.scorer not in SCORERS:
            raise SaekitError(f"scorer must be one of {', '.join(SCORERS)}, got {self.scorer!r}")


def choose_latents(record: Activations, options: AutointerpOptions) -> list[int]:
    alive = alive_latents(record, options.min_firings)
    if len(alive) == 0:
        raise SaekitError(f"no latent fired more than {options.min_firings} times: run on more tokens "
                          "(--tokens)")
    rng = np.random.default_rng(options.seed)
    chosen = rng.choice(alive, size=min(options.n_latents, len(alive)), replace=False)
    return sorted(int(i) for i in chosen)


def score_latent(record: Activations, latent: int, client: ChatClient, text: TokenText,
                 options: AutointerpOptions) -> dict[str, Any]:
    """Explain one latent and score the explanation; a dict with `score` or a `skipped` reason."""
    rng = np.random.default_rng([options.seed, latent])
    windows = sample_windows(record, latent, options.sampling, rng)
    if windows is None:
        return {"latent": latent, "skipped": "too few windows"}
    mark = options.sampling.active_fraction * windows.max_value
    explain_texts = [window_text(w, text, text.separator, mark_above=mark) for w in windows.explain]
    reply = client.complete(explanation_messages(explain_texts), options.explain_max_tokens, options.temperature)
    explanation = parse_explanation(reply.content)

    n = len(windows.score)
    order = rng.permutation(n)
    shown = [windows.score[i] for i in order]
    truth = [w.kind != "random" for w in shown]
    example = sorted(rng.choice(np.arange(1, n + 1), size=min(4, n), replace=False).tolist())
    texts = [window_text(w, text, text.separator) for w in shown]
    answer = client.complete(scoring_messages(explanation, texts, example), options.score_max_tokens,
                             options.temperature)
    predicted = parse_indices(answer.content)
    result: dict[str, Any] = {"latent": latent, "explanation": explanation, "n_examples": n,
                              "active": [i + 1 for i, t in enumerate(truth) if t]}
    if predicted is None:
        result["skipped"] = f"unparsable scorer reply {answer.content[:60]!r}"
        return result
    chosen = set(predicted)
    correct = sum((i + 1 in chosen) == t for i, t in enumerate(truth))
    result.update({"predicted": sorted(chosen), "score": correct / n})
    return result


def _delphi_latent(record: Activations, latent: int, client: ChatClient, text: TokenText,
                   options: AutointerpOptions) -> dict[str, Any]:
    result = delphi_detection(record, latent, client, text, options.delphi)
    if "balanced_accuracy" in result:
        result["score"] = result["balanced_accuracy"]
    return result


def autointerp(record: Activations, tokenizer: Any, client: ChatClient, options: AutointerpOptions | None = None,
               latents: list[int] | None = None) -> dict[str, Any]:
    """{"latents": per-latent results, "autointerp_score", "autointerp_std", "scored", "skipped",
    "usage": the client's counts, "seconds"}. The score is SAEBench's detection fraction, or with
    `scorer="delphi"` delphi's balanced detection accuracy."""
    from tqdm.auto import tqdm

    options = options or AutointerpOptions()
    chosen = latents if latents is not None else choose_latents(record, options)
    text = TokenText(tokenizer)
    for token in np.unique(record.token_ids):  # decode once, before threads share the table
        text(int(token))
    start = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=options.workers)
    if options.scorer == "delphi":
        futures = [pool.submit(_delphi_latent, record, i, client, text, options) for i in chosen]
    else:
        futures = [pool.submit(score_latent, record, i, client, text, options) for i in chosen]
    try:
        results = [f.result() for f in tqdm(futures, desc="autointerp", unit="latent",
                                              disable=not options.progress)]
    finally:
        # on an error (a dead endpoint) the latents not yet started are dropped, not each retried in turn
        pool.shutdown(wait=True, cancel_futures=True)
    scores = [r["score"] for r in results if "score" in r]
    return {"scorer": options.scorer, "latents": results,
            "autointerp_score": float(np.mean(scores)) if scores else float("nan"),
            "autointerp_std": float(np.std(scores)) if scores else float("nan"),
            "scored": len(scores), "skipped": len(results) - len(scores),
            "usage": client.usage.to_dict(), "seconds": time.perf_counter() - start}
