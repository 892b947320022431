"""Training sparse attention replacements from a model: the spec, the objective, one call.

    spec, objective = sparse_attention_spec(model, layer=15, d_sae=2304, k=32, qk_repeat=4)
    stream = ActivationStream(model, tokens, ["attn_in.15", "attn_out.15"], sequences=True)
    (replacement,) = saekit.train(stream, [spec], objective=[objective], total_tokens=..., batch_size=8)

The spec is a `DictionarySpec` of the OV side (a TopK transcoder from `attn_in.L` to `attn_out.L`, so the
trainer's schedules, statistics and checkpoints treat it as one), the objective builds the module with
QK heads copied from the model's layer (`read_attention`) and trains it on sequences. Other dictionaries
(a TopK SAE on `attn_out.L`, a per-head SAE on `attn_z.L`) can join the same run and stream with `None`
as their objective: one model forward feeds them all.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from saekit.attention.model_attention import AttentionWeights, read_attention
from saekit.attention.sparse_attention import SparseAttention, SparseAttentionConfig
from saekit.config import DictionaryConfig, Provenance
from saekit.errors import SaekitError
from saekit.spec import DictionarySpec
from saekit.training.config import TrainingConfig
from saekit.training.replacement import ReplacementObjective


def qk_config(weights: AttentionWeights, qk_repeat: int = 1) -> SparseAttentionConfig:
    """QK heads shaped like the layer's heads: n_heads · qk_repeat of them, RoPE and scale as in the model."""
    if isinstance(qk_repeat, bool) or not isinstance(qk_repeat, int) or qk_repeat < 1:
        raise SaekitError(f"qk_repeat must be a positive integer, got {qk_repeat!r}")
    return SparseAttentionConfig(weights.n_heads * qk_repeat, weights.d_head, 2 * weights.inv_freq.numel(),
                                 weights.scaling, weights.rotary_scaling, weights.layer)


def sparse_attention_spec(model: nn.Module, layer: int, d_sae: int, k: int, qk_repeat: int = 1,
                          model_name: str | None = None, name: str | None = None,
                          **training: Any) -> tuple[DictionarySpec, ReplacementObjective]:
    """(spec, objective) of a sparse attention replacement of `model`'s layer `layer`: d_sae rank-1 OV
    heads over n_heads · qk_repeat QK heads, top-k per token. `training` overrides TrainingConfig fields
    (defaults: TopK's, without AuxK, whose dead-latent loss reads rows rather than sequences)."""
    weights = read_attention(model, layer)
    qk = qk_config(weights, qk_repeat)
    if d_sae % qk.n_qk_heads:
        raise SaekitError(f"d_sae={d_sae} must be a multiple of the {qk.n_qk_heads} QK heads "
                          f"({weights.n_heads} heads × qk_repeat {qk_repeat})")
    cfg = DictionaryConfig(method="topk", d_in=weights.d_model, d_sae=d_sae, k=k, transcoder=True,
                           name=name or f"lorsa-L{layer}-qk{qk.n_qk_heads}-k{k}-{d_sae}")
    options = {"aux_k": 0, **training}
    try:
        training_config = TrainingConfig(**options)
    except TypeError as error:
        raise SaekitError(f"bad training options: {error}") from None
    source = Provenance(model_name=model_name, hookpoint=f"attn_in.{layer}",
                        target_hookpoint=f"attn_out.{layer}")
    spec = DictionarySpec(cfg, training_config, source)

    def build(spec: DictionarySpec, device: torch.device) -> SparseAttention:
        module = SparseAttention(qk, spec.dictionary, training=spec.training, device=device)
        module.source_weights = weights
        return module

    return spec, ReplacementObjective(build)
