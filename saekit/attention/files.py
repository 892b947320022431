"""On-disk format of sparse attention replacements (format version 1).

A directory holding
- `cfg.json`: `{"saekit_attention_format_version": 1, "kind": "sparse_attention", "qk": SparseAttentionConfig,
  "saekit": {dictionary, training, provenance, meta}}` — the OV side recorded exactly as a saekit
  dictionary records itself (its DictionaryConfig, TrainingConfig, Provenance and facts);
- `attention_weights.safetensors`: W_Q, W_K [n_qk, d, d_qk], b_Q, b_K [n_qk, d_qk], inv_freq
  [rotary_dim / 2], and the OV heads under the dictionary names W_enc [d, n_ov] (= the w_v), b_enc
  (= b_V), W_dec [n_ov, d] (= the w_o), b_dec (= b_D);
- `sparsity.safetensors` (log10 firing density per OV head) when known;
- `manifest.json`: kind `saekit-attention` and the sha256 of every other file, checked before loading.
The weight file is deliberately not named `sae_weights.safetensors`: no SAE loader (SAELens, saekit's
`load`) may mistake the OV heads for a per-token transcoder; `saekit.load` names this loader instead.

Writing needs only the module's tensors and configs (`saekit.attention.storage` reads them back).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from saekit.formats.core import stash
from saekit.io import OWNER_MARK, atomic_directory, sha256_file
from saekit.training.guard import check_finite_weights

KIND = "sparse_attention"

FORMAT_VERSION = 1
VERSION_KEY = "saekit_attention_format_version"
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "attention_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
MANIFEST_FILE = "manifest.json"
MANIFEST_KIND = "saekit-attention"
QK_TENSORS = ("W_Q", "W_K", "b_Q", "b_K", "inv_freq")
OV_TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")


def save_sparse_attention(module: Any, directory: str | Path, overwrite: bool = False) -> Path:
    """Write `module` to `directory` atomically. An existing directory is replaced only if saekit wrote
    it (or `overwrite`); non-finite weights are refused."""
    directory = Path(directory)
    tensors = {k: v.float().contiguous().cpu() for k, v in module.weights().items()}
    check_finite_weights(tensors, f"saving {directory}")
    cfg = {VERSION_KEY: FORMAT_VERSION, "kind": KIND, "qk": module.qk_config.to_dict(),
           "saekit": stash(module.ov)}
    with atomic_directory(directory, overwrite) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        if module.log_feature_density is not None:
            save_file({"sparsity": module.log_feature_density.detach().float().contiguous().cpu()},
                      str(tmp / SPARSITY_FILE))
        (tmp / CFG_FILE).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        files = sorted(p.name for p in tmp.iterdir() if p.name != OWNER_MARK)
        manifest = {"kind": MANIFEST_KIND, "format_version": FORMAT_VERSION,
                    "sha256": {name: sha256_file(tmp / name) for name in files}}
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return directory


def is_attention_dir(path: str | Path) -> bool:
    """A directory that holds an attention replacement (recognised by its manifest)."""
    path = Path(path)
    if not (path / MANIFEST_FILE).is_file():
        return False
    try:
        return json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8")).get("kind") == MANIFEST_KIND
    except (OSError, ValueError, AttributeError):
        return False
