"""delphi-style detection scoring (METHODS-2 §7.2; the prompt wording is saekit's own).

Per latent, from the dashboard pass:
- windows of 32 tokens with the activating token at index 24 (24 before, 7 after), no two in one row
  overlapping, sorted by their largest activation and cut into 10 equal slices; the explanation set
  takes 4 per slice (40) and the test set 5 other ones per slice (50), drawn with seed 22;
- 50 non-activating windows (the latent is 0 on every token), drawn at random;
- explainer: the 40 windows with tokens above 0.3 × the window's own maximum marked `<<…>>`, each
  followed by an "Activations:" line of its marked tokens with the activation scaled to an integer
  0–10 (ceil(10 a / the latent's maximum)); the explanation is the text after `[EXPLANATION]:`;
  temperature 0;
- detection: the 50 test and 50 non-activating windows shuffled (seed 42), 5 per request, unmarked; the
  reply holds a JSON list of five 0/1 values (the first `[...]` in it); a reply that does not parse
  leaves those five examples out;
- per latent: balanced accuracy (TPR + TNR) / 2, precision, recall and F1 of the predictions (threshold
  0.5 on the 0/1 answers).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from saekit.evaluation.autointerp.client import ChatClient
from saekit.evaluation.autointerp.prompts import window_text
from saekit.evaluation.autointerp.windows import Window
from saekit.inspect.dashboard_data import Activations, TokenText, contexts

BEFORE, AFTER = 24, 7  # a 32-token window with its activating token at index 24

EXPLAIN_SYSTEM = """You explain what a unit ("latent") of a language model responds to. You will see text \
excerpts; in each, the tokens where the latent is active are wrapped like <<this>>, and an "Activations:" \
line lists those tokens with the strength of the response from 0 to 10.

Find what the marked tokens have in common, including what comes just before them when that seems to \
matter, and write a short explanation (a few words, not a list of the examples). Finish with a last \
line of the form
[EXPLANATION]: <your explanation>"""

EXPLAIN_SHOTS = [
    ("Excerpt 1: the train left at <<7>> in the morning\nActivations: (\"7\", 9)\n"
     "Excerpt 2: we met at <<noon>> on Friday\nActivations: (\"noon\", 6)",
     "The marked tokens are times of day following \"at\".\n[EXPLANATION]: Times of day after \"at\"."),
    ("Excerpt 1: def main<<(>>args):\nActivations: (\"(\", 8)\n"
     "Excerpt 2: print<<(>>value)\nActivations: (\"(\", 10)",
     "An opening parenthesis right after a function name.\n[EXPLANATION]: Opening parentheses of calls."),
    ("Excerpt 1: she felt <<sad>> and <<lonely>>\nActivations: (\"sad\", 7), (\"lonely\", 5)",
     "Words naming unhappy feelings.\n[EXPLANATION]: Words for sadness and loneliness."),
]

DETECT_SYSTEM = """You check an explanation of a unit ("latent") of a language model. You get the \
explanation and five numbered text excerpts. For each excerpt, answer 1 if the latent, as explained, \
would respond somewhere in it, and 0 if not. Reply with one JSON list of five 0/1 numbers, in excerpt \
order, such as [0, 1, 0, 0, 1], and nothing else."""

DETECT_SHOT = ("Explanation: Opening parentheses of calls.\n\nExcerpt 1: x = f(y)\nExcerpt 2: the end\n"
               "Excerpt 3: print(a)\nExcerpt 4: hello world\nExcerpt 5: no brackets here", "[1, 0, 1, 0, 0]")


@dataclass
class DelphiOptions:
    n_explain_per_slice: int = 4
    n_test_per_slice: int = 5
    slices: int = 10
    n_non_activating: int = 50
    min_windows: int = 90  # delphi skips latents with fewer than 200 windows over 10M tokens
    mark_fraction: float = 0.3
    per_request: int = 5
    seed: int = 42
    sample_seed: int = 22


def activating_windows(record: Activations, latent: int) -> list[Window]:
    """Non-overlapping 32-token windows around the latent's activations (largest first), each with its
    activating token at index 24."""
    T = record.context
    positions, _ = record.latent(latent)
    taken: dict[int, list[int]] = {}
    out = []
    for p in positions.tolist():
        row, t = divmod(p, T)
        if t < BEFORE or t + AFTER >= T:
            continue
        if any(abs(t - s) < BEFORE + AFTER + 1 for s in taken.get(row, [])):
            continue
        taken.setdefault(row, []).append(t)
        example = contexts(record, latent, np.array([p]), left=BEFORE, right=AFTER)[0]
        out.append(Window(example.token_ids, example.values, "active", example.peak))
    out.sort(key=lambda w: -max(w.values))
    return out


def non_activating_windows(record: Activations, latent: int, n: int, rng: np.random.Generator) -> list[Window]:
    T = record.context
    counted = record.counted.reshape(-1)
    out: list[Window] = []
    for _ in range(50 * max(n, 1)):
        if len(out) == n:
            break
        centre = int(rng.integers(record.token_ids.shape[0])) * T + int(rng.integers(BEFORE, T - AFTER))
        if not counted[centre]:
            continue
        example = contexts(record, latent, np.array([centre]), left=BEFORE, right=AFTER)[0]
        if max(example.values, default=0.0) == 0.0:
            out.append(Window(example.token_ids, example.values, "inactive", example.peak))
    return out


def split_by_slices(windows: list[Window], options: DelphiOptions) -> tuple[list[Window], list[Window]]:
    """(explanation set, test set): per slice of the value-sorted windows, disjoint random draws."""
    rng = np.random.default_rng(options.sample_seed)
    explain, test = [], []
    for chunk in np.array_split(np.arange(len(windows)), options.slices):
        picked = rng.permutation(chunk)
        explain += [windows[i] for i in picked[:options.n_explain_per_slice]]
        test += [windows[i] for i in picked[options.n_explain_per_slice:
                                            options.n_explain_per_slice + options.n_test_per_slice]]
    return explain, test


def explainer_text(window: Window, text: TokenText, latent_max: float, options: DelphiOptions) -> str:
    mark = options.mark_fraction * max(window.values)
    body = window_text(window, text, text.separator, mark_above=mark)
    marked = [(text(t).strip(), math.ceil(10 * v / latent_max)) for t, v in zip(window.token_ids, window.values)
              if v > mark][:10]
    return body + "\nActivations: " + ", ".join(f"({json.dumps(tok)}, {level})" for tok, level in marked)


def parse_delphi_explanation(reply: str) -> str:
    at = reply.rfind("[EXPLANATION]:")
    return (reply[at + len("[EXPLANATION]:"):] if at >= 0 else reply).strip()


def parse_binary_list(reply: str, length: int) -> list[bool] | None:
    """"[1,0,1,1,0]" -> five booleans; the first [...] of the reply, which must hold `length` 0/1 values."""
    found = re.search(r"\[[^\[\]]*\]", reply)
    if not found:
        return None
    try:
        values = json.loads(found.group(0))
    except ValueError:
        return None
    if not isinstance(values, list) or len(values) != length or any(v not in (0, 1) for v in values):
        return None
    return [bool(v) for v in values]


def classification_scores(truth: list[bool], predicted: list[bool]) -> dict[str, float]:
    t, p = np.array(truth), np.array(predicted)
    tp, tn = float((t & p).sum()), float((~t & ~p).sum())
    fp, fn = float((~t & p).sum()), float((t & ~p).sum())
    recall = tp / (tp + fn) if tp + fn else float("nan")
    specificity = tn / (tn + fp) if tn + fp else float("nan")
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"balanced_accuracy": (recall + specificity) / 2, "precision": precision, "recall": recall, "f1": f1}


def delphi_detection(record: Activations, latent: int, client: ChatClient, text: TokenText,
                     options: DelphiOptions | None = None) -> dict[str, Any]:
    """Explain one latent and score it by detection; a dict of scores or a `skipped` reason."""
    options = options or DelphiOptions()
    windows = activating_windows(record, latent)
    if len(windows) < options.min_windows:
        return {"latent": latent, "skipped": f"{len(windows)} windows (< {options.min_windows})"}
    explain, test = split_by_slices(windows, options)
    rng = np.random.default_rng([options.seed, latent])
    inactive = non_activating_windows(record, latent, options.n_non_activating, rng)
    latent_max = max(max(w.values) for w in windows)
    shots: list[dict[str, str]] = []
    for user, answer in EXPLAIN_SHOTS:
        shots += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    examples = "\n\n".join(f"Excerpt {i}: {explainer_text(w, text, latent_max, options)}"
                           for i, w in enumerate(explain, 1))
    reply = client.complete([{"role": "system", "content": EXPLAIN_SYSTEM}, *shots,
                             {"role": "user", "content": examples}], max_tokens=200, temperature=0.0)
    explanation = parse_delphi_explanation(reply.content)

    items = [(w, True) for w in test] + [(w, False) for w in inactive]
    order = np.random.default_rng(options.seed).permutation(len(items))
    items = [items[i] for i in order]
    truth: list[bool] = []
    predicted: list[bool] = []
    unparsed = 0
    for start in range(0, len(items), options.per_request):
        batch = items[start:start + options.per_request]
        excerpts = "\n".join(f"Excerpt {i}: {window_text(w, text, text.separator)}" for i, (w, _) in
                             enumerate(batch, 1))
        messages = [{"role": "system", "content": DETECT_SYSTEM},
                    {"role": "user", "content": DETECT_SHOT[0]}, {"role": "assistant", "content": DETECT_SHOT[1]},
                    {"role": "user", "content": f"Explanation: {explanation}\n\n{excerpts}"}]
        votes = parse_binary_list(client.complete(messages, max_tokens=30, temperature=0.0).content, len(batch))
        if votes is None:
            unparsed += len(batch)
            continue
        truth += [label for _, label in batch]
        predicted += votes
    result: dict[str, Any] = {"latent": latent, "explanation": explanation, "examples": len(truth),
                              "unparsed": unparsed}
    if not truth:
        result["skipped"] = "no detection reply parsed"
        return result
    result.update(classification_scores(truth, predicted))
    return result
