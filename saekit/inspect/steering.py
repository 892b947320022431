"""Steering a model with dictionary latents, and reading steering vectors in dictionary latents.

Two edits at the dictionary's hookpoint, applied at every position (prompt and generated tokens):
- add: x + scale · d_i, with d_i latent i's decoder row as saved (raw activation units, since saekit
  folds normalisation into the weights). `scale` therefore means "as if latent i fired at `scale` on
  top of whatever fires", so a latent's max activation on its dashboard is a natural unit.
- clamp: x + (value − f_i(x)) · d_i, i.e. set latent i to `value` while keeping everything else,
  including the dictionary's reconstruction error (Templeton et al. 2024).
Adding 0 · d_i leaves every float unchanged, so `scale=0` reproduces unsteered generation exactly.

`steer` gives steered and unsteered text side by side (an object that prints as text and renders as a
table in notebooks); `steering` is a context manager for any model call. `decompose_vector` writes a
steering vector (e.g. `mean_activation_difference` of two prompt sets) as a sparse signed combination
of decoder rows found by gradient pursuit (saekit.encoders) over [W_dec; −W_dec].
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from saekit.dictionary import Dictionary
from saekit.encoders import gradient_pursuit
from saekit.errors import SaekitError
from saekit.inspect.html import esc
from saekit.models.hooks import capture, splice
from saekit.models.sites import resolve_hookpoints


def _check_latent(d: Dictionary, latent: int) -> None:
    if not 0 <= latent < d.d_sae:
        raise SaekitError(f"latent {latent} does not exist: the dictionary has {d.d_sae} latents "
                          f"(0..{d.d_sae - 1})")
    if d.cfg.n_sources > 1:
        raise SaekitError("steering with crosscoder latents is not supported")


def steering_edit(d: Dictionary, latent: int, scale: float | None = None,
                  clamp: float | None = None) -> Callable[[Tensor], Tensor]:
    """The function that edits the hookpoint's value [..., d]: add `scale`·d_i, or clamp f_i."""
    _check_latent(d, latent)
    if (scale is None) == (clamp is None):
        raise SaekitError("give exactly one of scale (add the decoder direction) and clamp "
                          "(set the latent to a value)")
    value = scale if scale is not None else clamp
    if not math.isfinite(float(value)):  # type: ignore[arg-type]
        raise SaekitError(f"the steering {'scale' if scale is not None else 'clamp'} must be a finite number, "
                          f"got {value}")
    if clamp is not None and d.cfg.is_transcoder:
        raise SaekitError("clamping reads the latent from the input and edits the output: not "
                          "supported for transcoders; use scale")
    direction = d.W_dec[latent].detach()
    if clamp is None:
        assert scale is not None  # exactly one of the two is given (checked above)

        def add(value: Tensor) -> Tensor:
            return value + scale * direction.to(value.dtype)

        return add

    def set_value(value: Tensor) -> Tensor:
        with torch.no_grad():
            f = d.encode(value.to(d.W_dec.dtype))[..., latent]
        return value + ((clamp - f)[..., None] * direction).to(value.dtype)

    return set_value


@contextlib.contextmanager
def steering(model: nn.Module, d: Dictionary, latent: int, scale: float | None = None,
             clamp: float | None = None) -> Iterator[None]:
    """Within the block every forward of `model` is steered, e.g.
    `with steering(model, d, 123, scale=8): model.generate(...)`. The edit goes where the dictionary's
    decoder writes: its hookpoint (for transcoders, the target hookpoint)."""
    name = d.provenance.write_site
    if not name:
        raise SaekitError("the dictionary does not record its hookpoint: cannot steer")
    point = resolve_hookpoints(model, [name])[0]
    with splice(model, point, steering_edit(d, latent, scale, clamp)):
        yield


def prompt_ids(tokenizer: Any, prompt: str, chat: bool = False) -> Tensor:
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise SaekitError("the tokenizer has no chat template: drop --chat")
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    return torch.tensor([tokenizer(prompt)["input_ids"]])


@torch.no_grad()
def generate_ids(model: nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int = 40,
                 chat: bool = False, temperature: float = 0.0, seed: int = 0,
                 repetition_penalty: float = 1.0) -> list[int]:
    """The new token ids after `prompt` (greedy unless temperature > 0, then seeded)."""
    checks = [(isinstance(prompt, str) and prompt.strip() != "", "the prompt is empty: give some text"),
              (max_new_tokens > 0, f"max_new_tokens must be positive, got {max_new_tokens}"),
              (math.isfinite(temperature) and temperature >= 0, f"temperature must be >= 0, got {temperature}"),
              (math.isfinite(repetition_penalty) and repetition_penalty > 0,
               f"repetition_penalty must be positive (1 = none), got {repetition_penalty}")]
    for ok, message in checks:
        if not ok:
            raise SaekitError(message)
    ids = prompt_ids(tokenizer, prompt, chat).to(next(model.parameters()).device)
    options: dict[str, Any] = dict(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                                   pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    if temperature > 0:
        torch.manual_seed(seed)
        options.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    else:
        options.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    # generate() is the Hugging Face GenerationMixin's; nn.Module types unknown attributes Tensor | Module
    out = cast(Any, model).generate(input_ids=ids, attention_mask=torch.ones_like(ids), **options)
    return out[0, ids.shape[1]:].tolist()


def generate(model: nn.Module, tokenizer: Any, prompt: str, **generation: Any) -> str:
    """The continuation of `prompt` as text (see `generate_ids` for the options)."""
    return tokenizer.decode(generate_ids(model, tokenizer, prompt, **generation),
                            skip_special_tokens=True)


@dataclass
class SteeringResult:
    prompt: str
    latent: int
    unsteered: str
    steered: str
    scale: float | None = None
    clamp: float | None = None
    unsteered_ids: list[int] = field(default_factory=list)
    steered_ids: list[int] = field(default_factory=list)

    @property
    def edit(self) -> str:
        return f"+{self.scale:g}·d[{self.latent}]" if self.clamp is None else \
            f"latent {self.latent} clamped to {self.clamp:g}"

    def __str__(self) -> str:
        return (f"prompt: {self.prompt}\n\n--- unsteered ---\n{self.unsteered}\n\n"
                f"--- steered ({self.edit}) ---\n{self.steered}\n")

    def _repr_html_(self) -> str:
        cell = 'style="vertical-align:top;white-space:pre-wrap;padding:.4em;border:1px solid #ddd"'
        return (f"<p><b>prompt</b>: {esc(self.prompt)}</p><table><tr><th>unsteered</th>"
                f"<th>steered ({esc(self.edit)})</th></tr><tr><td {cell}>{esc(self.unsteered)}</td>"
                f"<td {cell}>{esc(self.steered)}</td></tr></table>")


def steer(model: nn.Module, tokenizer: Any, d: Dictionary, prompt: str, latent: int,
          scale: float | None = None, clamp: float | None = None, **generation: Any
          ) -> SteeringResult:
    """Generate from `prompt` without and with the edit (same decoding settings and seed)."""
    steering_edit(d, latent, scale, clamp)  # validate before spending time on generation
    plain = generate_ids(model, tokenizer, prompt, **generation)
    with steering(model, d, latent, scale, clamp):
        steered = generate_ids(model, tokenizer, prompt, **generation)
    text = [tokenizer.decode(ids, skip_special_tokens=True) for ids in (plain, steered)]
    return SteeringResult(prompt, latent, text[0], text[1], scale, clamp, plain, steered)


# ----------------------------------------------------------------------------- steering vectors
@torch.no_grad()
def mean_activations(model: nn.Module, tokenizer: Any, hookpoint: str, prompts: Sequence[str],
                     position: str = "all") -> Tensor:
    """Mean activation at `hookpoint` over prompts: of every non-special token (`all`) or of each
    prompt's last token (`last`), each prompt weighted equally."""
    if not prompts:
        raise SaekitError("no prompts given")
    if position not in ("all", "last"):
        raise SaekitError(f"position must be 'all' or 'last', got {position!r}")
    point = resolve_hookpoints(model, [hookpoint])[0]
    special = set(getattr(tokenizer, "all_special_ids", []))
    means = []
    for prompt in prompts:
        ids = prompt_ids(tokenizer, prompt)
        acts = capture(model, ids, [point])[point.name][0].float()
        keep = torch.tensor([i not in special for i in ids[0].tolist()])
        if not keep.any():
            raise SaekitError(f"prompt {prompt!r} has no ordinary tokens")
        acts = acts[keep]
        means.append(acts[-1] if position == "last" else acts.mean(0))
    return torch.stack(means).mean(0)


def mean_activation_difference(model: nn.Module, tokenizer: Any, hookpoint: str,
                               positive: Sequence[str], negative: Sequence[str],
                               position: str = "all") -> Tensor:
    """The difference-of-means steering vector: mean(positive) − mean(negative) at `hookpoint`."""
    return (mean_activations(model, tokenizer, hookpoint, positive, position)
            - mean_activations(model, tokenizer, hookpoint, negative, position))


@dataclass
class Decomposition:
    norm: float  # ‖v‖
    residual_norm: float  # ‖v − Σ c_i d_i‖
    latents: list[dict[str, Any]] = field(default_factory=list)  # by |contribution|, largest first

    @property
    def relative_residual(self) -> float:
        return self.residual_norm / self.norm if self.norm else 0.0


@torch.no_grad()
def decompose_vector(d: Dictionary, vector: Tensor, l0: int = 16,
                     dashboards: str | None = None) -> Decomposition:
    """v ≈ Σ c_i d_i with at most `l0` latents, coefficients of either sign, by gradient pursuit over
    the atoms [W_dec; −W_dec] (a difference of two activations has no b_dec, so none is subtracted).
    Each latent reports its coefficient, the norm of its contribution c_i·d_i, its cosine with v and,
    when `dashboards` (a site directory or URL prefix) is given, the link to its dashboard page."""
    if d.cfg.n_sources > 1:
        raise SaekitError("decomposing into crosscoder latents is not supported")
    decoder = d.W_dec.detach().float()
    v = vector.detach().float().reshape(-1).to(decoder.device)
    if v.shape[0] != decoder.shape[1]:
        raise SaekitError(f"the vector has width {v.shape[0]} but the decoder writes {decoder.shape[1]}")
    if not 0 < l0 <= d.d_sae:
        raise SaekitError(f"l0 must be between 1 and the dictionary's {d.d_sae} latents, got {l0}")
    if not bool(torch.isfinite(v).all()):
        raise SaekitError("the steering vector holds NaN or inf values")
    codes = gradient_pursuit(v[None], torch.cat([decoder, -decoder]), l0)[0]
    coefficients = codes[:d.d_sae] - codes[d.d_sae:]
    residual = v - coefficients @ decoder
    norms = decoder.norm(dim=-1)
    cosines = torch.nn.functional.cosine_similarity(decoder, v[None], dim=-1)
    used = torch.nonzero(coefficients).flatten().tolist()
    names = _dashboard_names(dashboards)
    rows = []
    for i in used:
        row = {"latent": i, "coefficient": float(coefficients[i]),
               "contribution_norm": float(coefficients[i].abs() * norms[i]),
               "cosine": float(cosines[i])}
        if dashboards is not None:
            row["dashboard"] = f"{str(dashboards).rstrip('/')}/latents/{i}.html"
        if i in names:
            row["name"] = names[i]
        rows.append(row)
    rows.sort(key=lambda r: -r["contribution_norm"])
    return Decomposition(float(v.norm()), float(residual.norm()), rows)


def _dashboard_names(dashboards: str | None) -> dict[int, str]:
    """Latent names from a local dashboard site's latents.json (empty for URLs or no site)."""
    if dashboards is None or "://" in str(dashboards):
        return {}
    path = Path(dashboards) / "latents.json"
    try:
        return {int(row[0]): str(row[1]) for row in json.loads(path.read_text(encoding="utf-8"))["rows"]}
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return {}


def write_decomposition_page(result: Decomposition, out_html: str | Path, title: str = "") -> Path:
    """The decomposition as a page: one row per latent with its coefficient, contribution, cosine and
    a link to its dashboard (relative to the page when the dashboards are a local directory)."""
    from saekit.inspect.html import fmt, link, page

    out_html = Path(out_html)

    top = max((row["contribution_norm"] for row in result.latents), default=1.0) or 1.0
    rows = []
    for row in result.latents:
        width = 120 * row["contribution_norm"] / top
        color = "#2a7ab0" if row["coefficient"] > 0 else "#c0392b"
        cell = (f'<a href="{esc(link(row["dashboard"], out_html))}">latent {row["latent"]}</a>'
                if "dashboard" in row else f'latent {row["latent"]}')
        cell += f' <span class="muted">{esc(row.get("name", ""))}</span>'
        rows.append(f'<tr><td>{cell}</td><td class="num">{esc(fmt(row["coefficient"]))}</td>'
                    f'<td class="num">{esc(fmt(row["contribution_norm"]))}</td>'
                    f'<td><svg width="124" height="10"><rect width="{width:.1f}" height="10" '
                    f'fill="{color}"/></svg></td><td class="num">{row["cosine"]:.3f}</td></tr>')
    body = (f"<h1>Steering vector in dictionary latents</h1><p class=\"muted\">{esc(title)}</p>"
            f"<p>‖v‖ = <b>{esc(fmt(result.norm))}</b>, residual ‖v − Σ c<sub>i</sub> d<sub>i</sub>‖ = "
            f'<b id="residual">{esc(fmt(result.residual_norm))}</b> '
            f"({100 * result.relative_residual:.1f}% of ‖v‖) with {len(result.latents)} latents</p>"
            '<table id="latents"><thead><tr><th>latent</th><th>coefficient</th><th>‖c d‖</th><th></th>'
            f'<th>cos(d, v)</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(page("steering vector decomposition", body), encoding="utf-8")
    return out_html
