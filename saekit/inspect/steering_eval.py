"""How strongly a vector steers a concept, and what it costs (docs/steering.md "Measuring steering").

A `SteeringBench` holds everything fixed while vectors are compared: the model, the hookpoint, a set of
neutral prompts, the concept's words and a stretch of held-out text. Any direction u (normalised to unit
norm) is applied as x + α·ρ·u at every position of the hookpoint, with ρ the median activation norm there
on the neutral prompts, so α reads "a fraction of a typical activation" whatever the vector's own norm.

- strength(u, α): the shift in log Σ_{w ∈ concept words} p(w | prefix), teacher-forced at every
  position of the neutral prompts, steered minus unsteered, in nats. No sampling, one forward pass.
- cost(u, α): next-token cross-entropy on held-out text, steered minus clean, in nats per token: what
  the edit does to everything that is not the concept (coherence).
- `ConceptProbe`: a logistic-regression probe trained on the unsteered model's activations at the
  hookpoint on the concept's positive vs negative prompts. It scores *generated* text read back without
  steering, a second, sampling-based reading of the concept that no vector can satisfy by writing
  its own direction into the probe's input (the generations are read by the clean model).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saekit.errors import SaekitError
from saekit.inspect.steering import prompt_ids
from saekit.models.hooks import capture, splice
from saekit.models.outputs import next_token_loss
from saekit.models.sites import resolve_hookpoints

# Sentence openings with no concept of their own: what a steered model is asked to continue by default.
NEUTRAL_PROMPTS = ("I think that", "Yesterday my neighbour", "The report says that", "When I got home,",
                   "She looked at the", "In the morning we", "He told me that", "The best thing about it is",
                   "Here is what happened:", "My favourite place is", "Today I want to talk about",
                   "They decided to")


@dataclass
class Concept:
    """A concept as two prompt sets (it is present / its opposite is) and words that express it."""

    name: str
    positive: list[str]
    negative: list[str]
    words: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for side in ("positive", "negative"):
            prompts = [p for p in getattr(self, side) if isinstance(p, str) and p.strip()]
            if not prompts:
                raise SaekitError(f"the {side} prompt set of concept {self.name!r} is empty: give at least one "
                                  "prompt")
            setattr(self, side, prompts)
        self.words = [w.strip() for w in self.words if isinstance(w, str) and w.strip()]
        if not self.words:
            raise SaekitError(f"concept {self.name!r} has no concept words: give the words whose probability "
                              "measures it (e.g. angry furious rage)")


def check_scales(scales: Iterable[float], what: str = "scales") -> list[float]:
    """Finite, positive, at least one; a one-line error otherwise."""
    values = [float(s) for s in scales]
    if not values:
        raise SaekitError(f"no {what} given: pass at least one positive number")
    for value in values:
        if not math.isfinite(value) or value <= 0:
            raise SaekitError(f"{what} must be finite positive numbers, got {value}")
    return values


@torch.no_grad()
def check_width(model: nn.Module, hookpoint: str, width: int) -> None:
    """A one-line error unless `hookpoint` of the model has `width` dimensions (one-token forward)."""
    point = resolve_hookpoints(model, [hookpoint])[0]
    found = capture(model, torch.zeros((1, 1), dtype=torch.long), [point])[point.name].shape[-1]
    if found != width:
        raise SaekitError(f"the vector or dictionary has width {width} but {hookpoint} of the model has width "
                          f"{found}: use one made for this model's hookpoint")


def concept_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The first token of " word" for each word (the word mid-sentence), without special tokens."""
    special = set(getattr(tokenizer, "all_special_ids", []))
    ids = set()
    for word in words:
        tokens = tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"]
        tokens = [t for t in tokens if t not in special]
        if tokens:
            ids.add(int(tokens[0]))
    if not ids:
        raise SaekitError(f"none of the concept words {list(words)[:5]} is a token of this tokenizer")
    return sorted(ids)


def _padded(tokenizer: Any, prompts: Sequence[str], left: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """(ids [P, T], attention mask, counted mask: real and not special), padded on the right or left."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad = 0 if pad is None else pad
    rows = [prompt_ids(tokenizer, p)[0] for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        where = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, where] = row
        attention[i, where] = 1
    special = torch.tensor(sorted(set(getattr(tokenizer, "all_special_ids", []))), dtype=torch.long)
    counted = attention.bool() & ~torch.isin(ids, special)
    return ids, attention, counted


class SteeringBench:
    """Fixed model, hookpoint, neutral prompts, concept words and held-out text; measures any direction."""

    def __init__(self, model: nn.Module, tokenizer: Any, hookpoint: str, neutral: Sequence[str],
                 concept_ids: Sequence[int], held_out: Sequence[tuple[Tensor, Tensor]], width: int | None = None):
        neutral = [p for p in neutral if isinstance(p, str) and p.strip()]
        if not neutral:
            raise SaekitError("the neutral prompt set is empty: give prompts to steer")
        if not held_out:
            raise SaekitError("no held-out text to measure the cost of steering on")
        self.model, self.tokenizer, self.neutral = model, tokenizer, list(neutral)
        self.point = resolve_hookpoints(model, [hookpoint])[0]
        self.device = next(model.parameters()).device
        self.concept_ids = torch.tensor(list(concept_ids), dtype=torch.long, device=self.device)
        self.ids, self.attention, self.counted = (t.to(self.device) for t in _padded(tokenizer, self.neutral))
        acts = capture(model, self.ids, [self.point], self.attention)[self.point.name].float()
        self.width = acts.shape[-1]
        if width is not None and width != self.width:
            raise SaekitError(f"the vector or dictionary has width {width} but {hookpoint} of the model has width "
                              f"{self.width}: use one made for this model's hookpoint")
        # ρ, the unit of α: the median activation norm over the counted neutral tokens (the median, as the
        # first position of a sequence without BOS is an attention sink with several times the norm)
        self.activation_norm = float(acts[self.counted].norm(dim=-1).median())
        self.held_out = [(ids.to(self.device), mask.to(self.device)) for ids, mask in held_out]
        self.base_logprob = self._concept_logprob(None)
        self.clean_ce = self._held_out_ce(None)

    # ------------------------------------------------------------------------------------ edits
    def step(self, direction: Tensor, scale: float) -> Tensor:
        """scale·ρ·u, u = direction/‖direction‖: what the edit adds."""
        direction = direction.detach().float().reshape(-1).to(self.device)
        if direction.shape[0] != self.width:
            raise SaekitError(f"the direction has width {direction.shape[0]}, the hookpoint {self.width}")
        norm = float(direction.norm())
        if not math.isfinite(norm) or norm == 0:
            raise SaekitError("the steering direction is zero or not finite: nothing to steer with")
        check_scales([scale], "the steering scale")
        return direction * (scale * self.activation_norm / norm)

    def edit(self, direction: Tensor, scale: float) -> Callable[[Tensor], Tensor]:
        """x ↦ x + scale·ρ·u at every position."""
        step = self.step(direction, scale)

        def add(value: Tensor) -> Tensor:
            return value + step.to(value.dtype)

        return add

    def _forward(self, edit: Callable[[Tensor], Tensor] | None, **inputs: Tensor) -> Tensor:
        if edit is None:
            return self.model(**inputs).logits
        with splice(self.model, self.point, edit):
            return self.model(**inputs).logits

    # ---------------------------------------------------------------------------------- readings
    @torch.no_grad()
    def _concept_logprob(self, edit: Callable[[Tensor], Tensor] | None, copies: int = 1) -> Tensor:
        """Per prompt: mean over its counted positions of log Σ_{w ∈ concept} p(w | prefix); with
        `copies`, the prompts repeated that many times in one batch ([copies·P], copy-major)."""
        logits = self._forward(edit, input_ids=self.ids.repeat(copies, 1),
                               attention_mask=self.attention.repeat(copies, 1))
        logp = F.log_softmax(logits.float(), dim=-1)
        concept = torch.logsumexp(logp[..., self.concept_ids], dim=-1)  # [copies·P, T]
        mask = self.counted.float().repeat(copies, 1)
        return (concept * mask).sum(-1) / mask.sum(-1).clamp_min(1)

    @torch.no_grad()
    def _held_out_ce(self, edit: Callable[[Tensor], Tensor] | None) -> float:
        total, count = 0.0, 0.0
        for ids, mask in self.held_out:
            ce, targets = next_token_loss(self._forward(edit, input_ids=ids), ids, mask)
            total += float((ce * targets).sum())
            count += float(targets.sum())
        return total / max(count, 1.0)

    def strength(self, direction: Tensor, scale: float) -> float:
        """Mean over neutral prompts of the concept log-probability shift (nats)."""
        return self.strengths([direction], scale)[0]

    def strengths(self, directions: Sequence[Tensor], scale: float | Sequence[float], batch: int = 8
                  ) -> list[float]:
        """`strength` of each direction (at one scale, or each at its own), `batch` directions per forward
        pass (the neutral prompts are short: one pass over many copies uses the CPU far better than many
        small ones)."""
        scales = [float(scale)] * len(directions) if isinstance(scale, (int, float)) else list(scale)
        if len(scales) != len(directions):
            raise SaekitError(f"{len(directions)} directions but {len(scales)} scales")
        out: list[float] = []
        prompts = self.ids.shape[0]
        for start in range(0, len(directions), batch):
            steps = torch.stack([self.step(u, a) for u, a in zip(directions[start:start + batch],
                                                                  scales[start:start + batch])])
            rows = steps.repeat_interleave(prompts, dim=0)[:, None, :]  # [copies·P, 1, d]

            def add(value: Tensor, rows: Tensor = rows) -> Tensor:
                return value + rows.to(value.dtype)

            shift = self._concept_logprob(add, len(steps)) - self.base_logprob.repeat(len(steps))
            out.extend(shift.view(len(steps), prompts).mean(-1).tolist())
        return out

    def cost(self, direction: Tensor, scale: float) -> float:
        """Held-out CE, steered minus clean (nats per token)."""
        return self._held_out_ce(self.edit(direction, scale)) - self.clean_ce

    @torch.no_grad()
    def generate(self, direction: Tensor | None, scale: float = 0.0, max_new_tokens: int = 24
                 ) -> list[list[int]]:
        """Greedy continuations of every neutral prompt (batched, left-padded), steered when a direction
        is given; the new token ids of each, cut at the first end-of-sequence token."""
        if max_new_tokens <= 0:
            raise SaekitError(f"max_new_tokens must be positive, got {max_new_tokens}")
        ids, attention, _ = (t.to(self.device) for t in _padded(self.tokenizer, self.neutral, left=True))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        options: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=False, temperature=None,
                                       top_k=None, top_p=None, pad_token_id=pad)
        generate = cast(Any, self.model).generate
        if direction is None:
            out = generate(input_ids=ids, attention_mask=attention, **options)
        else:
            with splice(self.model, self.point, self.edit(direction, scale)):
                out = generate(input_ids=ids, attention_mask=attention, **options)
        eos = self.tokenizer.eos_token_id
        rows = []
        for row in out[:, ids.shape[1]:].tolist():
            rows.append(row[:row.index(eos)] if eos is not None and eos in row else row)
        return rows


# ------------------------------------------------------------------------------------- the probe
@dataclass
class ConceptProbe:
    """p(concept | activation) = σ(w·(x − μ)/σ_x + b), fitted on the prompt sets' token activations."""

    weight: Tensor
    bias: float
    mean: Tensor
    std: Tensor
    held_out_accuracy: float  # prompt-level, fitted on even-numbered prompts, tested on odd ones

    def probability(self, acts: Tensor) -> Tensor:
        z = (acts.float() - self.mean) / self.std
        return torch.sigmoid(z @ self.weight + self.bias)


def _token_activations(model: nn.Module, tokenizer: Any, point: Any, prompts: Sequence[str]) -> list[Tensor]:
    special = set(getattr(tokenizer, "all_special_ids", []))
    out = []
    for prompt in prompts:
        ids = prompt_ids(tokenizer, prompt)
        acts = capture(model, ids, [point])[point.name][0].float().cpu()
        keep = torch.tensor([i not in special for i in ids[0].tolist()])
        out.append(acts[keep])
    return out


def _fit_logistic(x: Tensor, y: Tensor, l2: float) -> tuple[Tensor, float, Tensor, Tensor]:
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), float(bias.detach()), mean, std


def train_concept_probe(model: nn.Module, tokenizer: Any, hookpoint: str, concept: Concept,
                        l2: float = 1e-2) -> ConceptProbe:
    """Logistic regression (L2 `l2`, standardised inputs) on every ordinary token of the positive
    (label 1) and negative (label 0) prompts, read at `hookpoint` by the unsteered model."""
    point = resolve_hookpoints(model, [hookpoint])[0]
    sides = [_token_activations(model, tokenizer, point, prompts) for prompts in (concept.positive, concept.negative)]

    def stack(parts: list[list[Tensor]]) -> tuple[Tensor, Tensor]:
        x = torch.cat([a for side in parts for a in side])
        y = torch.cat([torch.full((len(a),), float(label)) for label, side in zip((1, 0), parts) for a in side])
        return x, y

    accuracy = float("nan")
    if all(len(side) >= 2 for side in sides):  # prompt-level check on prompts the probe did not see
        train = [side[0::2] for side in sides]
        weight, bias, mean, std = _fit_logistic(*stack(train), l2)
        probe = ConceptProbe(weight, bias, mean, std, float("nan"))
        right = [float(probe.probability(a).mean()) > 0.5 for a in sides[0][1::2]]
        right += [float(probe.probability(a).mean()) <= 0.5 for a in sides[1][1::2]]
        accuracy = sum(right) / len(right)
    weight, bias, mean, std = _fit_logistic(*stack(sides), l2)
    return ConceptProbe(weight, bias, mean, std, accuracy)


@torch.no_grad()
def probe_generations(model: nn.Module, tokenizer: Any, hookpoint: str, probe: ConceptProbe,
                      prompts: Sequence[str], generations: Sequence[Sequence[int]]) -> list[float]:
    """Per prompt: the probe's mean probability over the generated tokens, read by the clean model."""
    point = resolve_hookpoints(model, [hookpoint])[0]
    scores = []
    for prompt, new in zip(prompts, generations):
        start = prompt_ids(tokenizer, prompt)
        if not new:
            scores.append(float("nan"))
            continue
        ids = torch.cat([start, torch.tensor([list(new)])], dim=1)
        acts = capture(model, ids, [point])[point.name][0, start.shape[1]:].float().cpu()
        scores.append(float(probe.probability(acts).mean()))
    return scores
