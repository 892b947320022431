"""EleutherAI sparsify's format: one folder per hookpoint with `cfg.json` + `sae.safetensors`.

Tensors are nn.Module names: `encoder.weight [M, d_in]` (nn.Linear, so W_enc transposed), `encoder.bias`,
`W_dec [M, d_in]` (row = latent, saekit's orientation), `b_dec [d_in]`, optional `W_skip [d_in, d_in]`
applied as x @ W_skipᵀ (saekit's orientation too). SAEs encode TopK(ReLU(W(x − b_dec) + b)); transcoders
(`transcode`) skip the b_dec subtraction and predict the module's output, of width d_in.

Hub releases are bfloat16. A load keeps the file's dtype (as sparsify does) unless a dtype is asked
for, so nothing is upcast behind the user's back.

saekit's hookpoints name modules from the model root; sparsify's are relative to `model.base_model`
(`layers.6`, not `model.layers.6`). A block output (`layers.6`, `h.6`) becomes saekit's named site
`resid_post.6`, which resolves on any family; other names are kept as sparsify wrote them, with
`meta["hookpoint_relative_to"]` saying so. Transcoders read the module input and predict its output: they
get hookpoint `<name>:input` and target `<name>:output`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from saekit.config import DictionaryConfig, Provenance
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.formats.core import load_tensors, make_dictionary, named_site, read_json, restore, source_meta, stash
from saekit.io import atomic_directory
from saekit.training.guard import check_finite_weights

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
UNIT_NORM_TOLERANCE = 1e-4


# The saekit methods sparsify computes (its only activation is per-token TopK).
SPARSIFY_METHODS = ("topk",)


def is_sparsify_dir(path: Path) -> bool:
    return path.is_dir() and (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def load(directory: str | Path, *, dtype: torch.dtype | None = None, **_: Any) -> Dictionary:
    """Load one sparsify sparse coder (SAE or transcoder) folder."""
    directory = Path(directory)
    cfg = read_json(directory / CFG_FILE)
    where = directory / CFG_FILE
    if cfg.get("activation", "topk") != "topk":
        raise SaekitError(f"{where}: sparsify activation {cfg.get('activation')!r} has no saekit "
                          "equivalent (only 'topk' is supported)")
    if cfg.get("signed"):
        raise SaekitError(f"{where}: signed sparsify SAEs are not supported")
    tensors = load_tensors(directory / WEIGHTS_FILE)
    missing = {"encoder.weight", "encoder.bias", "W_dec", "b_dec"} - set(tensors)
    if missing:
        raise SaekitError(f"{directory / WEIGHTS_FILE} lacks {', '.join(sorted(missing))}: not a "
                          "sparsify sparse coder with a decoder")
    n_latents, d_in = tensors["encoder.weight"].shape
    if int(cfg.get("d_in", d_in)) != d_in:
        raise SaekitError(f"{where}: d_in={cfg.get('d_in')} but encoder.weight is {n_latents}x{d_in}")
    transcode = bool(cfg.get("transcode", False))
    skip = bool(cfg.get("skip_connection", False)) or "W_skip" in tensors
    if skip and not transcode:
        raise SaekitError(f"{where}: a skip connection on a non-transcoder sparsify SAE has no saekit "
                          "equivalent")

    saekit_info: dict[str, Any] = cfg["saekit"] if isinstance(cfg.get("saekit"), dict) else {}
    name = saekit_info.get("hookpoint_name") or directory.name
    try:
        dict_cfg = DictionaryConfig(method="topk", d_in=d_in, d_sae=n_latents, k=int(cfg["k"]),
                                    transcoder=transcode, skip_connection=skip)
    except (SaekitError, KeyError, TypeError, ValueError) as error:
        raise SaekitError(f"{where}: {error}") from None
    if transcode:
        source = Provenance(hookpoint=f"{name}:input", target_hookpoint=f"{name}:output")
    else:
        source = Provenance(hookpoint=named_site(name) or name)
    weights = {"W_enc": tensors["encoder.weight"].T.contiguous(), "b_enc": tensors["encoder.bias"],
               "W_dec": tensors["W_dec"], "b_dec": tensors["b_dec"]}
    if skip:
        weights["W_skip"] = tensors["W_skip"]
    meta = source_meta("sparsify", directory, multi_topk=cfg.get("multi_topk"),
                       normalize_decoder=cfg.get("normalize_decoder"))
    restored = restore(dict_cfg, saekit_info.get("stash", saekit_info), str(where))
    if restored is not None:
        return make_dictionary(restored.dictionary, weights, source=str(directory / WEIGHTS_FILE),
                               dtype=dtype, meta={**restored.meta, **meta}, provenance=restored.provenance,
                               training=restored.training)
    meta["source"]["hook_name"] = name
    meta["hookpoint_relative_to"] = "model.base_model"
    return make_dictionary(dict_cfg, weights, source=str(directory / WEIGHTS_FILE), dtype=dtype,
                           meta=meta, provenance=source)


def export_tensors(d: Dictionary) -> dict[str, Tensor]:
    """sparsify's state dict for `d`; refuses what sparsify cannot compute."""
    cfg = d.cfg
    if cfg.method not in SPARSIFY_METHODS:
        raise SaekitError(f"sparsify has only per-token TopK sparse coders; a {cfg.method} dictionary "
                          "cannot be written in its format (use --to saelens or dictionary_learning)")
    if cfg.n_sources > 1:
        raise SaekitError("crosscoders have no sparsify equivalent: save them in saekit's format")
    if cfg.is_transcoder and cfg.d_out != cfg.d_in:
        raise SaekitError(f"sparsify transcoders predict outputs of the input's width ({cfg.d_in}); "
                          f"this one predicts {cfg.d_out}")
    W_enc, b_enc = d.W_enc.detach(), d.b_enc.detach()
    if not cfg.is_transcoder and not cfg.apply_b_dec_to_input:
        # sparsify always encodes x − b_dec: x·W + b = (x − b_dec)·W + (b + b_dec·W).
        b_enc = b_enc + d.b_dec.detach() @ W_enc
    out = {"encoder.weight": W_enc.T, "encoder.bias": b_enc, "W_dec": d.W_dec.detach(),
           "b_dec": d.b_dec.detach()}
    if cfg.skip_connection:
        out["W_skip"] = d.W_skip.detach()
    return {k: v.contiguous().cpu() for k, v in out.items()}


def _hookpoint_name(d: Dictionary) -> str | None:
    hookpoint = d.provenance.hookpoint
    if hookpoint and d.cfg.is_transcoder and hookpoint.endswith(":input"):
        return hookpoint.removesuffix(":input")
    return hookpoint


def save(d: Dictionary, directory: str | Path, overwrite: bool = False) -> Path:
    """Write `d` as a sparsify hookpoint folder, loadable with `SparseCoder.load_from_disk`."""
    directory = Path(directory)
    tensors = export_tensors(d)
    norms = d.W_dec.detach().float().norm(dim=-1)
    unit_norm = bool(((norms - 1).abs() < UNIT_NORM_TOLERANCE).all())
    cfg: dict[str, Any] = {
        "activation": "topk",
        "expansion_factor": max(1, d.cfg.d_sae // d.cfg.d_in),
        # Training-time only: sparsify renormalises decoder rows each step when True, so claim it only
        # when the rows already have unit norm.
        "normalize_decoder": unit_norm,
        "num_latents": d.cfg.d_sae,
        "k": d.cfg.k,
        "multi_topk": False,
        "skip_connection": bool(d.cfg.skip_connection),
        "transcode": d.cfg.is_transcoder,
        "d_in": d.cfg.d_in,
        # sparsify drops unknown fields on load; saekit reads these back.
        "saekit": {"hookpoint_name": _hookpoint_name(d), "stash": stash(d)},
    }
    check_finite_weights(d.weights(), f"saving {directory}")
    with atomic_directory(directory, overwrite) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE))
        (tmp / CFG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    return directory


def notes(d: Dictionary) -> list[str]:
    return ["sparsify has no place for firing densities (sparsity.safetensors): not written"] \
        if d.log_feature_density is not None else []
