"""Steering vectors improved with a dictionary, compared on one `SteeringBench` (docs/steering.md).

From the difference-of-means ("ActAdd") vector v of a concept's prompt sets:
- sae_reconstruction: v̂ = Σ_i c_i d_i with c = mean f(positive) − mean f(negative), the difference of
  the prompt sets' mean latent activations (what v becomes when every activation is replaced by its
  dictionary reconstruction; b_dec cancels);
- pruned: v − Σ_{i irrelevant} c_i d_i, the vector with the contributions of irrelevant latents removed
  and everything else (relevant latents and the dictionary's error) kept. A latent is irrelevant when,
  steered alone in the direction of its contribution, it moves the concept the wrong way or no more than
  random directions do (the `screen`);
- best_latent: the single candidate latent whose own steering moves the concept most.
Each is then swept over the same scales; the comparison is the curve of concept strength against cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.inspect.steering import mean_activation_difference, prompt_ids
from saekit.inspect.steering_eval import (
    Concept,
    SteeringBench,
    check_scales,
    check_width,
    concept_token_ids,
    probe_generations,
    train_concept_probe,
)
from saekit.models.hooks import capture
from saekit.models.sites import resolve_hookpoints

METHODS = ("actadd", "sae_reconstruction", "pruned", "best_latent")


@torch.no_grad()
def mean_latent_difference(model: nn.Module, tokenizer: Any, d: Dictionary, positive: Sequence[str],
                           negative: Sequence[str], position: str = "all") -> Tensor:
    """c = mean f(positive) − mean f(negative) [d_sae], weighted like `mean_activations` (each prompt's
    mean over its ordinary tokens, or its last token, then the mean over prompts)."""
    if not d.provenance.hookpoint:
        raise SaekitError("the dictionary does not record its hookpoint: cannot read its latents")
    point = resolve_hookpoints(model, [d.provenance.hookpoint])[0]
    special = set(getattr(tokenizer, "all_special_ids", []))
    device = d.W_dec.device

    def mean_codes(prompts: Sequence[str]) -> Tensor:
        means = []
        for prompt in prompts:
            ids = prompt_ids(tokenizer, prompt)
            acts = capture(model, ids, [point])[point.name][0].float().to(device)
            keep = torch.tensor([i not in special for i in ids[0].tolist()], device=device)
            codes = d.encode(acts[keep])
            means.append(codes[-1] if position == "last" else codes.mean(0))
        return torch.stack(means).mean(0)

    return mean_codes(positive) - mean_codes(negative)


@dataclass
class Screen:
    """Each candidate latent steered alone (sign of its coefficient, the screening scale)."""

    scale: float
    threshold: float  # effects at or below this are "no more than a random direction"
    random_effects: list[float]
    rows: list[dict[str, Any]] = field(default_factory=list)  # latent, coefficient, contribution, effect, relevant

    @property
    def best(self) -> dict[str, Any]:
        return max(self.rows, key=lambda r: r["effect"])


def screen_latents(bench: SteeringBench, d: Dictionary, coefficients: Tensor, scale: float, candidates: int = 64,
                   random_directions: int = 16, seed: int = 0, progress: bool = False, batch: int = 8) -> Screen:
    """Steer with each of the `candidates` latents of largest contribution ‖c_i d_i‖, one at a time, and
    with `random_directions` random unit directions; the relevance threshold is the random effects'
    mean + 2 standard deviations, and never below 0 (a latent must move the concept the right way).
    `batch` directions share one forward pass."""
    from tqdm.auto import tqdm

    if candidates <= 0 or random_directions < 2:
        raise SaekitError("the screen needs candidates >= 1 and random_directions >= 2")
    decoder = d.W_dec.detach().float()
    contributions = coefficients.abs() * decoder.norm(dim=-1)
    ranked = torch.argsort(contributions, descending=True)[:candidates]
    order: list[int] = ranked[contributions[ranked] > 0].tolist()
    if not order:
        raise SaekitError("no latent contributes to the vector: the prompt sets give the same latents")
    generator = torch.Generator().manual_seed(seed)
    randoms = [torch.randn(bench.width, generator=generator) for _ in range(random_directions)]
    latents = [math.copysign(1.0, float(coefficients[i])) * decoder[i] for i in order]
    effects: list[float] = []
    directions = randoms + latents
    for start in tqdm(range(0, len(directions), batch), desc="screening latents", disable=not progress):
        effects += bench.strengths(directions[start:start + batch], scale, batch)
    random_effects, latent_effects = effects[:random_directions], effects[random_directions:]
    mean = sum(random_effects) / len(random_effects)
    spread = math.sqrt(sum((r - mean) ** 2 for r in random_effects) / (len(random_effects) - 1))
    screen = Screen(scale, max(0.0, mean + 2 * spread), random_effects)
    for i, effect in zip(order, latent_effects):
        screen.rows.append({"latent": i, "coefficient": float(coefficients[i]),
                            "contribution_norm": float(contributions[i]), "effect": effect,
                            "relevant": effect > screen.threshold})
    return screen


def improved_vectors(d: Dictionary, vector: Tensor, coefficients: Tensor, screen: Screen) -> dict[str, Tensor]:
    """The four vectors compared, each rescaled to ‖v‖ (drop-in replacements for v)."""
    decoder = d.W_dec.detach().float()
    v = vector.detach().float().to(decoder.device)
    irrelevant = [row["latent"] for row in screen.rows if not row["relevant"]]
    pruned = v - coefficients[irrelevant] @ decoder[irrelevant] if irrelevant else v.clone()
    best = screen.best
    vectors = {"actadd": v, "sae_reconstruction": coefficients @ decoder, "pruned": pruned,
               "best_latent": math.copysign(1.0, best["coefficient"]) * decoder[best["latent"]]}
    norm = float(v.norm())
    out = {}
    for name, u in vectors.items():
        if float(u.norm()) == 0:
            raise SaekitError(f"the {name} vector is zero: nothing to steer with")
        out[name] = u * (norm / float(u.norm()))
    return out


def strength_at_cost(points: Sequence[dict[str, float]], budget: float) -> float:
    """Concept strength where the curve (from (0, 0) through the points in scale order) first reaches
    `budget` cost, linearly interpolated; NaN when it never does."""
    previous = (0.0, 0.0)
    for point in points:
        cost, strength = point["cost"], point["strength"]
        if cost >= budget:
            span = cost - previous[0]
            t = 1.0 if span <= 0 else (budget - previous[0]) / span
            return previous[1] + t * (strength - previous[1])
        previous = (cost, strength)
    return float("nan")


@dataclass
class SteeringReport:
    concept: Concept
    hookpoint: str
    activation_norm: float  # ρ, the unit of the scales
    scales: list[float]
    display_scale: float
    vectors: dict[str, Tensor]  # each at ‖v‖
    curves: dict[str, list[dict[str, float]]]  # method -> [{scale, strength, cost}]
    screen: Screen
    budget: float  # cost of actadd at the display scale
    at_budget: dict[str, float]  # method -> strength at that cost
    improved: str  # the method with the most strength at the budget
    prompts: list[str]
    generations: dict[str, list[str]]  # "unsteered" and each method, at the display scale
    probe_scores: dict[str, list[float]]
    probe_accuracy: float
    concept_token_ids: list[int]
    clean_ce: float
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> list[dict[str, Any]]:
        """One row per method (plus unsteered): strength at the budget and the probe on generations."""
        rows = [{"method": "unsteered", "strength_at_budget": 0.0,
                 "probe": _mean(self.probe_scores.get("unsteered", []))}]
        for name in self.curves:
            rows.append({"method": name, "strength_at_budget": self.at_budget[name],
                         "probe": _mean(self.probe_scores.get(name, []))})
        return rows


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def improve_steering_vector(model: nn.Module, tokenizer: Any, d: Dictionary, concept: Concept,
                            neutral: Sequence[str], held_out: Sequence[tuple[Tensor, Tensor]],
                            scales: Sequence[float] = (0.125, 0.25, 0.5, 1.0),
                            display_scale: float | None = None, screen_scale: float | None = None,
                            candidates: int = 64, random_directions: int = 16, max_new_tokens: int = 24,
                            position: str = "all", progress: bool = True) -> SteeringReport:
    """Build the four vectors of `concept` with dictionary `d`, sweep each over `scales` on the neutral
    prompts (strength) and `held_out` windows (cost), and generate at `display_scale` (default: the
    middle scale). The latent screen runs at `screen_scale`, by default the smallest scale: there the edit
    is nearly linear, and a random direction's effect on the concept words is small, where at large scales
    every edit disturbs the model so much that random directions move the concept by about a nat either
    way and drown the latents' own effects."""
    from tqdm.auto import tqdm

    if d.cfg.n_sources > 1:
        raise SaekitError("improving steering vectors with crosscoder latents is not supported")
    scales = sorted(check_scales(scales))
    display = check_scales([display_scale], "display_scale")[0] if display_scale is not None else \
        scales[len(scales) // 2]
    screen_at = check_scales([screen_scale], "screen_scale")[0] if screen_scale is not None else scales[0]
    site, read = d.provenance.write_site, d.provenance.hookpoint
    if not site or not read:
        raise SaekitError("the dictionary does not record its hookpoint: cannot steer with it")
    width = d.W_dec.shape[1]
    bench = SteeringBench(model, tokenizer, site, neutral, concept_token_ids(tokenizer, concept.words), held_out,
                          width=width)
    if read != site:  # a transcoder: latents read one site and write another
        check_width(model, read, d.cfg.d_in)
    vector = mean_activation_difference(model, tokenizer, site, concept.positive, concept.negative, position)
    coefficients = mean_latent_difference(model, tokenizer, d, concept.positive, concept.negative, position)
    screen = screen_latents(bench, d, coefficients, screen_at, candidates, random_directions, progress=progress)
    vectors = improved_vectors(d, vector.to(d.W_dec.device), coefficients, screen)

    curves: dict[str, list[dict[str, float]]] = {}
    pairs = [(name, s) for name in vectors for s in scales]
    strengths = bench.strengths([vectors[name] for name, _ in pairs], [s for _, s in pairs])
    for (name, s), strength in zip(tqdm(pairs, desc="costs", disable=not progress), strengths):
        curves.setdefault(name, []).append({"scale": s, "strength": strength, "cost": bench.cost(vectors[name], s)})
    at_display = [p for p in curves["actadd"] if p["scale"] == display]
    budget = at_display[0]["cost"] if at_display else bench.cost(vectors["actadd"], display)
    at_budget = {name: strength_at_cost(points, budget) for name, points in curves.items()}
    reachable = {name: value for name, value in at_budget.items() if math.isfinite(value)}
    improved = max(reachable, key=lambda n: reachable[n]) if reachable else "actadd"

    probe = train_concept_probe(model, tokenizer, site, concept)
    ids = {"unsteered": bench.generate(None, max_new_tokens=max_new_tokens)}
    for name, u in tqdm(vectors.items(), desc="generating", disable=not progress):
        ids[name] = bench.generate(u, display, max_new_tokens)
    generations = {name: [tokenizer.decode(row, skip_special_tokens=True) for row in rows]
                   for name, rows in ids.items()}
    probe_scores = {name: probe_generations(model, tokenizer, site, probe, bench.neutral, rows)
                    for name, rows in ids.items()}
    return SteeringReport(concept, site, bench.activation_norm, scales, display, vectors, curves, screen, budget,
                          at_budget, improved, bench.neutral, generations, probe_scores, probe.held_out_accuracy,
                          [int(i) for i in bench.concept_ids.tolist()], bench.clean_ce,
                          {"vector_norm": float(vector.norm()), "candidates": candidates,
                           "random_directions": random_directions, "position": position,
                           "base_concept_logprob": float(bench.base_logprob.mean())})
