"""What feature dashboards show, gathered for every latent at once.

One batched pass over the tokens: each model forward (stopped after the hookpoint) is encoded by the
dictionary for all latents together, and only the non-zero latent activations are kept, as
(token position, latent, value) triples. Dictionaries are sparse (TopK: k per token), so 100k tokens of a
k = 32 dictionary are 3.2M triples (~50 MB). Everything a dashboard needs (top examples, quantile
examples, histograms, densities, per-token highlighting of contexts) is then cut from those triples by
one sort, with no second model pass and no pass per latent. Decoder-only facts (logit lens, nearest
latents by decoder cosine) are chunked matrix products over all latents.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.models.hooks import capture
from saekit.models.sites import resolve_hookpoints


@dataclass
class Activations:
    """The record of one pass: the token windows and every non-zero latent activation."""

    token_ids: np.ndarray  # [windows, T] int
    counted: np.ndarray  # [windows, T] bool: tokens that count (not BOS/EOS/padding)
    positions: np.ndarray  # [nnz] flat index window * T + t, sorted by (latent, -value)
    values: np.ndarray  # [nnz] float32, same order
    starts: np.ndarray  # [d_sae + 1]: latent i's entries are positions[starts[i]:starts[i + 1]]
    n_tokens: int  # counted tokens seen

    @property
    def context(self) -> int:
        return self.token_ids.shape[1]

    def latent(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, values) of latent i, largest value first."""
        a, b = self.starts[i], self.starts[i + 1]
        return self.positions[a:b], self.values[a:b]


@torch.no_grad()
def gather_activations(model: nn.Module, d: Any, batches: Iterable[tuple[Tensor, Tensor]],
                       progress: bool = False, latents_of: Callable[[Tensor], Tensor] | None = None
                       ) -> Activations:
    """Run the model once over `batches` (input_ids, mask) and record the non-zero latents on counted
    tokens: `latents_of(input_ids)` [B·T, d_sae] (an attention replacement reads whole windows); by default
    the dictionary `d`, its input read at `d.provenance.hookpoint` (a transcoder's input site)."""
    if latents_of is not None:
        encode_windows = latents_of
        return _record(lambda ids: [encode_windows(ids)], [d.d_sae], batches, progress)[0]
    if d.cfg.n_sources > 1:
        raise SaekitError("dashboards for crosscoders are not supported: build them per source "
                          "dictionary instead")
    if not d.provenance.hookpoint:
        raise SaekitError("the dictionary does not record its hookpoint; dashboards need it to read "
                          "activations from the model")
    return gather_many(model, [(d.provenance.hookpoint, d.encode, d.d_sae)], batches, progress,
                       device=d.W_dec.device, dtype=d.W_dec.dtype)[0]


@torch.no_grad()
def gather_many(model: nn.Module, encoders: list[tuple[str, Callable[[Tensor], Tensor], int]],
                batches: Iterable[tuple[Tensor, Tensor]], progress: bool = False,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> list[Activations]:
    """One model pass for several encoders (hookpoint, encode, width): a transcoder set or CLT records
    every layer's latents from the same forward, stopped after the last hookpoint."""
    points = [resolve_hookpoints(model, [hookpoint])[0] for hookpoint, _, _ in encoders]
    unique = list({p.name: p for p in points}.values())

    def all_latents(input_ids: Tensor) -> list[Tensor]:
        captured = capture(model, input_ids, unique)
        latents = []
        for point, (_, encode, _) in zip(points, encoders):
            acts = captured[point.name]  # [B, T, d]
            latents.append(encode(acts.reshape(-1, acts.shape[-1]).to(device=device, dtype=dtype)))
        return latents

    return _record(all_latents, [width for _, _, width in encoders], batches, progress)


def _record(latents_of: Callable[[Tensor], list[Tensor]], widths: list[int],
            batches: Iterable[tuple[Tensor, Tensor]], progress: bool) -> list[Activations]:
    """The non-zero latents [B·T, width] of each encoder on counted tokens, over all batches."""
    parts: list[tuple[list, list, list]] = [([], [], []) for _ in widths]
    ids_parts, mask_parts = [], []
    offset = 0
    from tqdm.auto import tqdm

    bar = tqdm(disable=not progress, unit="tok", unit_scale=True, desc="dashboard pass")
    for input_ids, mask in batches:
        for (pos_parts, lat_parts, val_parts), latents in zip(parts, latents_of(input_ids)):
            keep = mask.reshape(-1).to(latents.device)
            latents[~keep] = 0
            rows, cols = torch.nonzero(latents > 0, as_tuple=True)
            pos_parts.append((rows + offset).cpu().numpy().astype(np.int64))
            lat_parts.append(cols.cpu().numpy().astype(np.int32))
            val_parts.append(latents[rows, cols].float().cpu().numpy())
        ids_parts.append(input_ids.numpy().astype(np.int32))
        mask_parts.append(mask.numpy().astype(bool))
        offset += input_ids.numel()
        bar.update(int(mask.sum()))
    bar.close()
    if not ids_parts:
        raise SaekitError("no tokens to build dashboards from: the text source is empty")
    if len({part.shape[1] for part in ids_parts}) != 1:
        raise SaekitError("all token windows must have the same length")
    counted = np.concatenate(mask_parts)
    token_ids = np.concatenate(ids_parts)
    out = []
    for (pos_parts, lat_parts, val_parts), width in zip(parts, widths):
        positions = np.concatenate(pos_parts)
        latent_ids = np.concatenate(lat_parts)
        values = np.concatenate(val_parts)
        order = np.lexsort((-values, latent_ids))  # by latent, then largest value first
        counts = np.bincount(latent_ids, minlength=width)
        starts = np.concatenate([[0], np.cumsum(counts)])
        out.append(Activations(token_ids, counted, positions[order], values[order], starts, int(counted.sum())))
    return out


@dataclass
class Example:
    position: int  # flat token index of the example token
    value: float
    token_ids: list[int] = field(default_factory=list)  # the context
    values: list[float] = field(default_factory=list)  # the latent on each context token
    peak: int = 0  # index of the example token inside the context


def contexts(record: Activations, latent: int, positions: np.ndarray, left: int = 24,
             right: int = 8) -> list[Example]:
    """Contexts around `positions` with the latent's value on every token in them. Tokens that do not
    count (BOS, padding) are left out of the view."""
    all_pos, all_val = record.latent(latent)
    by_pos = np.argsort(all_pos, kind="stable")
    sorted_pos, sorted_val = all_pos[by_pos], all_val[by_pos]
    T = record.context
    flat_ids = record.token_ids.reshape(-1)
    flat_counted = record.counted.reshape(-1)
    out = []
    for position in positions.tolist():
        window, t = divmod(position, T)
        lo, hi = window * T + max(0, t - left), window * T + min(T, t + right + 1)
        span = np.arange(lo, hi)
        span = span[flat_counted[lo:hi]]
        found = np.searchsorted(sorted_pos, span)
        found = np.minimum(found, max(len(sorted_pos) - 1, 0))
        hit = (sorted_pos[found] == span) if len(sorted_pos) else np.zeros(len(span), bool)
        vals = np.where(hit, sorted_val[found] if len(sorted_val) else 0.0, 0.0)
        peak = int(np.searchsorted(span, position))
        out.append(Example(position, float(vals[peak]), flat_ids[span].tolist(),
                           [float(v) for v in vals], peak))
    return out


def quantile_positions(values: np.ndarray, bands: int = 4, per_band: int = 4, skip_top: int = 0,
                       seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Indices (into a latent's value-sorted entries) of random examples from activation quantile
    bands, highest band first, leaving out the first `skip_top` (already shown as top examples)."""
    n = len(values)
    rng = np.random.default_rng(seed)
    out = []
    for band in range(bands):
        # entries are sorted by value descending, so band 0 holds the highest quantile
        lo, hi = n * band // bands, n * (band + 1) // bands
        lo = max(lo, skip_top)
        if hi <= lo:
            continue
        chosen = np.sort(rng.choice(np.arange(lo, hi), size=min(per_band, hi - lo), replace=False))
        q_hi, q_lo = 100 - 100 * band // bands, 100 - 100 * (band + 1) // bands
        out.append((f"quantile {q_lo}–{q_hi}% (values {values[hi - 1]:.3g}–{values[lo]:.3g})", chosen))
    return out


def unembedding(model: nn.Module) -> Tensor | None:
    """W_U [vocab, d] with the final norm's gain folded in (RMSNorm/LayerNorm weight), or None when
    the model has no LM head. The logit lens reads decoder directions through it."""
    # hasattr does not narrow an nn.Module, whose __getattr__ types every unknown attribute Tensor | Module
    head = cast(Any, model).get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not hasattr(head, "weight"):
        return None
    weight = head.weight.detach().float()
    norm = None
    for name in ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm",
                 "model.decoder.final_layer_norm", "model.language_model.norm"):
        try:
            norm = model.get_submodule(name)
            break
        except AttributeError:
            continue
    gain = getattr(norm, "weight", None)
    if gain is not None and gain.shape == weight.shape[1:]:
        weight = weight * gain.detach().float()
    return weight


@torch.no_grad()
def logit_lens(d: Dictionary | Tensor, w_u: Tensor, top: int = 10, chunk: int = 1024
               ) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """Tokens each latent's decoder direction (`d.W_dec`, or the rows given) most promotes and
    suppresses: (top values, top ids, bottom values, bottom ids), each [d_sae, top]. None when the
    decoder is not in the model's residual space (its width differs from the unembedding's)."""
    W_dec = d if isinstance(d, Tensor) else d.W_dec
    if W_dec.shape[1] != w_u.shape[1]:
        return None
    w_u = w_u.to(W_dec.device)
    parts: list[list[Tensor]] = [[], [], [], []]
    for start in range(0, W_dec.shape[0], chunk):
        logits = W_dec[start:start + chunk].float() @ w_u.T
        hi = logits.topk(top, dim=-1)
        lo = logits.topk(top, dim=-1, largest=False)
        for bucket, tensor in zip(parts, (hi.values, hi.indices, lo.values, lo.indices)):
            bucket.append(tensor.cpu())
    return tuple(torch.cat(p) for p in parts)  # type: ignore[return-value]


@torch.no_grad()
def nearest_latents(d: Dictionary, top: int = 8, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """(cosines, ids) [d_sae, top] of the latents whose decoder directions are closest, self excluded."""
    unit = torch.nn.functional.normalize(d.W_dec.detach().float(), dim=-1)
    top = min(top, d.d_sae - 1)
    values, indices = [], []
    for start in range(0, d.d_sae, chunk):
        cos = unit[start:start + chunk] @ unit.T
        rows = torch.arange(cos.shape[0])
        cos[rows, rows + start] = -2.0
        best = cos.topk(top, dim=-1)
        values.append(best.values.cpu())
        indices.append(best.indices.cpu())
    return torch.cat(values), torch.cat(indices)


class TokenText:
    """Token id -> display string, decoded once per id (decoding is the slow part of rendering)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}
        # Word-level tokenizers drop whitespace from single tokens and put it back between tokens on
        # decode; byte-level ones (GPT-2, Llama 3, SmolLM) keep it inside the token. Contexts join
        # tokens with this separator so both read naturally.
        special = set(getattr(tokenizer, "all_special_ids", []))
        ids = [i for i in range(min(len(tokenizer), 200)) if i not in special][-2:]
        self.separator = ""
        if len(ids) == 2:
            a, b = (tokenizer.decode([i]) for i in ids)
            if tokenizer.decode(ids) == f"{a} {b}":
                self.separator = " "

    def __call__(self, token_id: int) -> str:
        text = self.cache.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id])
            self.cache[token_id] = text
        return text
