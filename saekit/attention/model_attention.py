"""One attention layer of a Llama-family model, read into plain tensors: what a sparse attention
replacement copies (its QK heads, the heads' OV maps for initialisation, RoPE, the score scale).

Supported: attention modules with `q_proj`, `k_proj`, `v_proj`, `o_proj` (biases allowed), grouped KV
heads, rotary embeddings whose frequencies do not depend on the sequence length, and plain causal
softmax attention: Llama, Mistral (without a sliding window), Qwen2, SmolLM, Gemma 1. Anything else
(GPT-2's fused Conv1D, GPT-NeoX's interleaved QKV, QK norms, logit soft-capping, sliding windows,
dynamic RoPE) is refused with a one-line error rather than approximated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from saekit.errors import SaekitError
from saekit.models.sites import resolve_hookpoints

STATIC_ROPE = ("default", "linear", "llama3", "yarn")  # inv_freq fixed once the model is built


@dataclass
class AttentionWeights:
    """One layer's attention as tensors (x rows → outputs rows: q = x·W_Qᵀ + b_Q per head)."""

    layer: int
    W_Q: Tensor  # [n_heads, d_head, d]
    W_K: Tensor  # [n_kv_heads, d_head, d]
    W_V: Tensor  # [n_kv_heads, d_head, d]
    W_O: Tensor  # [n_heads, d, d_head]: head h adds z_h·W_O[h]ᵀ to the output
    b_Q: Tensor | None  # [n_heads, d_head]
    b_K: Tensor | None  # [n_kv_heads, d_head]
    b_V: Tensor | None  # [n_kv_heads, d_head]
    b_O: Tensor | None  # [d]
    scaling: float  # scores = q·k · scaling
    inv_freq: Tensor  # [rotary_dim / 2] RoPE frequencies (rotate-half convention); empty: no RoPE
    rotary_scaling: float  # cos and sin are multiplied by this (1 except for YaRN-style RoPE)

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[0]

    @property
    def n_kv_heads(self) -> int:
        return self.W_K.shape[0]

    @property
    def d_head(self) -> int:
        return self.W_Q.shape[1]

    @property
    def d_model(self) -> int:
        return self.W_Q.shape[2]

    def kv_head(self, head: int) -> int:
        """The KV head query head `head` reads (grouped-query attention)."""
        return head // (self.n_heads // self.n_kv_heads)

    def ov_map(self, head: int) -> Tensor:
        """M_h [d, d]: head h's output is Σ_k A_h[q, k]·(x_k·M_h) (+ its value bias through W_O)."""
        g = self.kv_head(head)
        return self.W_V[g].T @ self.W_O[head].T

    def value_bias_output(self) -> Tensor:
        """Σ_h b_V,g(h)·W_O[h]ᵀ [d]: what the value biases add to every output (attention rows sum to 1)."""
        out = torch.zeros(self.d_model)
        if self.b_V is not None:
            for head in range(self.n_heads):
                out += self.W_O[head] @ self.b_V[self.kv_head(head)]
        return out


def _unsupported(model: nn.Module, why: str) -> SaekitError:
    return SaekitError(f"sparse attention replacements read Llama-family attention (q_proj, k_proj, v_proj, "
                       f"o_proj with rotary embeddings: Llama, Mistral, Qwen2, SmolLM, Gemma 1); "
                       f"{type(model).__name__} {why}")


@torch.no_grad()
def read_attention(model: nn.Module, layer: int) -> AttentionWeights:
    """The attention of block `layer` as tensors, or a one-line error for an unsupported model/layer."""
    point = resolve_hookpoints(model, [f"attn_out.{layer}"])[0]  # checks the layer range and family
    attn = model.get_submodule(point.module)
    missing = [name for name in ("q_proj", "k_proj", "v_proj", "o_proj") if not hasattr(attn, name)]
    if missing:
        raise _unsupported(model, f"has no {', '.join(missing)} in {point.module}")
    for name in ("q_norm", "k_norm"):
        if getattr(attn, name, None) is not None:
            raise _unsupported(model, f"normalises queries and keys ({point.module}.{name}), which is not "
                                      "supported yet")
    config: Any = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    if config is None or not hasattr(config, "num_attention_heads"):
        raise _unsupported(model, "has no config with num_attention_heads")
    if getattr(config, "attn_logit_softcapping", None):
        raise _unsupported(model, "soft-caps attention logits, which is not supported")
    if getattr(attn, "sliding_window", None):
        raise _unsupported(model, f"uses a sliding window in layer {layer}, which is not supported")
    rope = _rope_type(config)
    if rope not in STATIC_ROPE:
        raise _unsupported(model, f"uses RoPE type {rope!r}, whose frequencies depend on the sequence length")
    n_heads = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_heads)
    q_proj, k_proj, v_proj, o_proj = (cast(nn.Linear, getattr(attn, name))
                                      for name in ("q_proj", "k_proj", "v_proj", "o_proj"))
    d_head = q_proj.weight.shape[0] // n_heads
    d = q_proj.weight.shape[1]

    def heads(weight: Tensor, n: int) -> Tensor:
        return weight.detach().float().reshape(n, d_head, d).clone()

    def bias(linear: nn.Linear, n: int) -> Tensor | None:
        return None if linear.bias is None else linear.bias.detach().float().reshape(n, d_head).clone()

    W_O = o_proj.weight.detach().float().reshape(d, n_heads, d_head).permute(1, 0, 2).clone()
    rotary = _rotary_module(model, point.module)
    if rotary is None:
        raise _unsupported(model, "has no rotary embedding module next to its layers")
    inv_freq = cast(Tensor, rotary.inv_freq).detach().float().clone()
    scaling = float(getattr(attn, "scaling", d_head ** -0.5))
    return AttentionWeights(layer, heads(q_proj.weight, n_heads), heads(k_proj.weight, n_kv),
                            heads(v_proj.weight, n_kv), W_O, bias(q_proj, n_heads), bias(k_proj, n_kv),
                            bias(v_proj, n_kv),
                            None if o_proj.bias is None else o_proj.bias.detach().float().clone(),
                            scaling, inv_freq, float(getattr(rotary, "attention_scaling", 1.0)))


def _rope_type(config: Any) -> str:
    parameters = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if isinstance(parameters, dict) and isinstance(parameters.get("rope_type"), str):
        return parameters["rope_type"]
    if isinstance(parameters, dict) and isinstance(parameters.get("type"), str):
        return parameters["type"]
    return "default"


def _rotary_module(model: nn.Module, attention_module: str) -> nn.Module | None:
    """The model's shared rotary embedding (`<decoder>.rotary_emb`), or the attention's own."""
    own = getattr(model.get_submodule(attention_module), "rotary_emb", None)
    if own is not None and hasattr(own, "inv_freq"):
        return cast(nn.Module, own)
    parts = attention_module.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            candidate = model.get_submodule(".".join(parts[:cut] + ["rotary_emb"]))
        except AttributeError:
            continue
        if hasattr(candidate, "inv_freq"):
            return candidate
    return None
