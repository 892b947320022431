"""Attention-side dictionaries (METHODS-2.md §4; docs/attention.md).

- `SparseAttention` (Lorsa): rank-1 OV heads sharing QK heads, top-k sparse, replacing an attention
  layer (input `attn_in.L` → output `attn_out.L`); trained by the one trainer through
  `saekit.training.replacement.ReplacementObjective` (`sparse_attention_spec`), saved with
  `save`/`load`, spliced for CE/KL by `evaluate_replacements`, shown by `saekit dashboard`.
- `GatedAttentionBlock` (Mathwin et al. 2024) and its skip-trigram toy (`saekit attention-toy`).
- Per-head attention-output SAEs: ordinary dictionaries on `attn_z.L`, attributed to heads by
  `head_attribution` (decoder norms).
"""

from saekit.attention.files import is_attention_dir
from saekit.attention.model_attention import AttentionWeights, read_attention
from saekit.attention.sparse_attention import SparseAttention, SparseAttentionConfig
from saekit.attention.storage import load_sparse_attention as load
from saekit.attention.storage import save_sparse_attention as save
from saekit.attention.training import sparse_attention_spec

__all__ = ["AttentionWeights", "SparseAttention", "SparseAttentionConfig", "is_attention_dir", "load",
           "read_attention", "save", "sparse_attention_spec"]
