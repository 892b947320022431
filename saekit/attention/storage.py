"""Reading sparse attention replacements back (the format is described in `saekit.attention.files`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from saekit.attention.files import (
    CFG_FILE,
    FORMAT_VERSION,
    KIND,
    MANIFEST_FILE,
    MANIFEST_KIND,
    OV_TENSORS,
    QK_TENSORS,
    SPARSITY_FILE,
    VERSION_KEY,
    WEIGHTS_FILE,
    is_attention_dir,
    save_sparse_attention,
)
from saekit.attention.sparse_attention import SparseAttention, SparseAttentionConfig
from saekit.errors import SaekitError
from saekit.formats.core import load_tensors, read_json, unstash
from saekit.io import member_path, sha256_file

__all__ = ["is_attention_dir", "load_sparse_attention", "save_sparse_attention"]


def load_sparse_attention(directory: str | Path, device: str | torch.device = "cpu") -> SparseAttention:
    """Load what `save_sparse_attention` wrote, checking every file against the manifest first."""
    directory = Path(directory)
    if not (directory / MANIFEST_FILE).is_file():
        raise SaekitError(f"{directory} is not a saekit attention replacement (no {MANIFEST_FILE}); pass the "
                          "directory that saekit.attention.save wrote")
    manifest = read_json(directory / MANIFEST_FILE)
    checksums = manifest.get("sha256")
    if manifest.get("kind") != MANIFEST_KIND or not isinstance(checksums, dict) or CFG_FILE not in checksums:
        raise SaekitError(f"{directory / MANIFEST_FILE} is not an attention replacement's manifest: the "
                          "directory is corrupted or holds something else")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise SaekitError(f"{directory} has attention format version {manifest.get('format_version')!r}; this "
                          f"saekit reads version {FORMAT_VERSION}: upgrade saekit")
    for name, expected in checksums.items():
        path = member_path(directory, name)
        if not path.is_file() or sha256_file(path) != expected:
            raise SaekitError(f"{path} is missing or fails its checksum: the file is corrupted or was edited; "
                              "re-save the attention replacement")
    raw = read_json(directory / CFG_FILE)
    if raw.get(VERSION_KEY) != FORMAT_VERSION or raw.get("kind") != KIND:
        raise SaekitError(f"{directory / CFG_FILE} says version {raw.get(VERSION_KEY)!r}, kind "
                          f"{raw.get('kind')!r}: expected version {FORMAT_VERSION} of {KIND!r}")
    where = str(directory / CFG_FILE)
    found = unstash(raw.get("saekit"), where)
    try:
        qk = SparseAttentionConfig(**_dict(raw.get("qk"), where))
    except TypeError as error:
        raise SaekitError(f"{where}: malformed qk section ({error})") from None
    module = SparseAttention(qk, found.dictionary, training=found.training)
    tensors = load_tensors(directory / WEIGHTS_FILE)
    expected = {name: getattr(module, name) for name in QK_TENSORS}
    expected.update({name: getattr(module.ov, name) for name in OV_TENSORS})
    if set(tensors) != set(expected):
        raise SaekitError(f"{directory / WEIGHTS_FILE} holds {sorted(tensors)}, expected {sorted(expected)}")
    with torch.no_grad():
        for name, target in expected.items():
            if tensors[name].shape != target.shape:
                raise SaekitError(f"{directory / WEIGHTS_FILE}: {name} has shape {tuple(tensors[name].shape)}, "
                                  f"expected {tuple(target.shape)} from the config")
            target.copy_(tensors[name])
    module.provenance = found.provenance
    module.meta.update(found.meta)
    if (directory / SPARSITY_FILE).is_file():
        module.log_feature_density = load_tensors(directory / SPARSITY_FILE)["sparsity"]
    for param in module.parameters():
        param.requires_grad_(False)
    return module.to(device).eval()


def _dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SaekitError(f"{where}: the qk section is not a JSON object")
    return value
