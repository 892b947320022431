"""Prompts and reply parsers of the detection-style autointerp score (SAEBench's scheme, METHODS-2 §7.1;
the wording here is saekit's own).

Explanation: the explainer sees numbered windows, strongest first, with the tokens where the latent is
active wrapped in << >>, and answers with one short sentence "This neuron activates on ..."; the
explanation is the text after the last "activates on", without a final period.

Detection: the scorer sees the explanation and the scoring windows, shuffled, numbered from 1 and
unmarked, and answers with the numbers of the windows where the latent fires at least once, comma
separated (or "None"). Any piece of the reply that is not a number makes the reply unusable, and that
latent is left out of the mean (SAEBench drops it too).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from saekit.evaluation.autointerp.windows import Window

EXPLAIN_SYSTEM = """You help interpret one unit ("neuron") of a language model. It responds to some \
particular token, piece of a word, phrase or broader concept in text.

You will see text excerpts in which the neuron responds, the strongest first. The tokens where it \
responds are wrapped like <<this>>. Read the marked tokens and their surroundings, then say in one \
sentence what the neuron responds to. Prefer a description that covers most of the marked tokens to one \
that fits a single excerpt. Some neurons respond to one exact token; others respond across a whole \
passage that is about some topic.

Answer with one sentence of at most 20 words, no lists, in the form "This neuron activates on ...". \
Examples of good answers:
This neuron activates on the word "because" and other words that introduce a reason.
This neuron activates on numbers inside dates.
This neuron activates on closing brackets in program code.
This neuron activates on text about cooking and recipes."""

SCORE_SYSTEM = """You help test an explanation of one unit ("neuron") of a language model. You will be \
given what the neuron is said to respond to, then {n} numbered text excerpts in random order. Decide, \
from the explanation alone, in which excerpts the neuron responds at least once, on any token.

Reply with the numbers of those excerpts separated by commas, for example "{example}", or with the \
single word "None" if it responds in none of them. Write nothing else: only numbers and commas, or None."""


def window_text(window: Window, text_of: Callable[[int], str], separator: str = "",
                mark_above: float | None = None) -> str:
    """The window as text; with `mark_above`, runs of tokens whose value exceeds it are wrapped in << >>."""
    parts: list[str] = []
    open_run = False
    for token, value in zip(window.token_ids, window.values):
        active = mark_above is not None and value > mark_above
        piece = text_of(token)
        if active and not open_run:
            # keep a leading space outside the marks, so "<<word>>" reads as a word
            stripped = piece.lstrip()
            piece = piece[:len(piece) - len(stripped)] + "<<" + stripped
        elif not active and open_run:
            parts[-1] += ">>"
        parts.append(piece)
        open_run = active
    if open_run and parts:
        parts[-1] += ">>"
    return separator.join(parts).replace("\n", " ").strip()


def explanation_messages(texts: Sequence[str]) -> list[dict[str, str]]:
    examples = "\n\n".join(f"Excerpt {i}: {text}" for i, text in enumerate(texts, 1))
    return [{"role": "system", "content": EXPLAIN_SYSTEM},
            {"role": "user", "content": f"The neuron responds in these excerpts:\n\n{examples}"}]


def scoring_messages(explanation: str, texts: Sequence[str], example_answer: Sequence[int]) -> list[dict[str, str]]:
    system = SCORE_SYSTEM.format(n=len(texts), example=", ".join(str(i) for i in example_answer))
    examples = "\n".join(f"{i}. {text}" for i, text in enumerate(texts, 1))
    return [{"role": "system", "content": system},
            {"role": "user", "content": f"Explanation: this neuron activates on {explanation}.\n\n"
                                        f"Excerpts:\n{examples}"}]


def parse_explanation(reply: str) -> str:
    """The text after the last "activates on" (the whole reply when the phrase is missing), stripped of
    whitespace and one final period."""
    text = reply.strip()
    at = text.lower().rfind("activates on")
    if at >= 0:
        text = text[at + len("activates on"):]
    text = text.strip()
    return text[:-1].rstrip() if text.endswith(".") else text


def parse_indices(reply: str) -> list[int] | None:
    """"1, 3 and 5." -> [1, 3, 5]; "None" -> []; an empty reply or any piece that is not a number -> None."""
    text = reply.strip().rstrip(".").strip()
    if text.lower() == "none":
        return []
    pieces = [p.strip().rstrip(".").strip() for p in re.split(r",|\band\b", text)]
    pieces = [p for p in pieces if p]
    if not pieces or not all(p.isdigit() for p in pieces):
        return None
    return [int(p) for p in pieces]
