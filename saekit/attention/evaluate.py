"""Spliced evaluation of attention replacements, next to dictionaries on the same output.

A sparse attention replacement of layer L computes `attn_out.L` from the clean `attn_in.L` of the same
forward (nothing before the splice changes), so it is a `Replacement` of
`saekit.evaluation.splice.spliced_metrics`: one clean and one zero-ablated forward per batch are shared
by every module that writes the same hookpoint (e.g. the replacement and a TopK SAE on `attn_out.L`),
then one spliced forward each. FVU, L0 and the other core metrics are computed on the counted tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from saekit.attention.sparse_attention import SparseAttention
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.evaluation.splice import Replacement, dictionary_replacement, spliced_metrics
from saekit.models.sites import Hookpoint, resolve_hookpoints


def attention_replacement(module: SparseAttention, read: Hookpoint, out_point: Hookpoint) -> Replacement:
    """The module's output from the clean sequences at `read` (positions 0..T-1 of each window)."""
    device = module.ov.W_dec.device

    def replace(store: dict[str, Tensor], keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = store[read.name].float().to(device)
        latents = module.encode(x)
        out = module.decode(latents)
        rows = keep.to(device)
        return store[out_point.name][keep].float().to(device), out[rows], latents[rows]

    return replace


def evaluate_replacements(model: nn.Module, tokenizer: Any, modules: dict[str, SparseAttention | Dictionary],
                          text: Any, tokens: int, progress: bool = True) -> list[dict[str, Any]]:
    """Rows of metrics, one per module, on `tokens` held-out tokens of `text` (a `TextConfig`). Modules
    that write the same hookpoint share their clean and zero-ablated forwards."""
    from tqdm.auto import tqdm

    groups: dict[str, dict[str, SparseAttention | Dictionary]] = {}
    for name, module in modules.items():
        write = module.provenance.write_site
        if not module.provenance.hookpoint or not write:
            raise SaekitError(f"{name} does not record its hookpoints: it cannot be spliced")
        groups.setdefault(write, {})[name] = module
    held_out = list(text.token_stream(tokenizer, split="test", max_tokens=tokens))
    rows = []
    for write, members in groups.items():
        out_point = resolve_hookpoints(model, [write])[0]
        reads: list[Hookpoint] = []
        replacements: dict[str, Replacement] = {}
        for name, module in members.items():
            read = resolve_hookpoints(model, [str(module.provenance.hookpoint)])[0]
            reads.append(read)
            if isinstance(module, SparseAttention):
                replacements[name] = attention_replacement(module, read, out_point)
            else:
                replacements[name] = dictionary_replacement(module, read, out_point)
        batches = tqdm(held_out, desc=f"evaluating at {write}", unit="batch", disable=not progress)
        with torch.no_grad():
            results = spliced_metrics(model, batches, reads, out_point, replacements,
                                      {name: module.d_sae for name, module in members.items()})
        for name, metrics in results.items():
            kind = "sparse_attention" if isinstance(members[name], SparseAttention) else "dictionary"
            rows.append({"name": name, "kind": kind, "method": members[name].cfg.method,
                         "hookpoint": members[name].provenance.hookpoint, "writes": write, **metrics})
    return rows
