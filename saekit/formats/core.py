"""What every format shares: reading files with one-line errors, building a `Dictionary` from tensors,
the exact re-expressions of peers' conventions, hookpoint names, and saekit's own configuration
(the "stash") that rides along inside foreign files so a round trip restores everything.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from saekit.config import DictionaryConfig, Provenance
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError


# ------------------------------------------------------------------------------------------- files
def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or a one-line error naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SaekitError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}): "
                          "the file is corrupted; re-save or re-download the dictionary") from None
    except UnicodeDecodeError:
        raise SaekitError(f"{path} is not UTF-8 text: the file is corrupted or not a config; re-save or "
                          "re-download the dictionary") from None
    if not isinstance(data, dict):
        raise SaekitError(f"{path} does not hold a JSON object: not a dictionary config")
    return data


def load_tensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise SaekitError(f"cannot read {path}: {error}; the file is corrupted or not safetensors, "
                          "re-save or re-download it") from None


# -------------------------------------------------------------------------------------- dictionaries
def make_dictionary(cfg: DictionaryConfig, tensors: dict[str, Tensor], *, source: str,
                    dtype: torch.dtype | None = None, meta: dict[str, Any] | None = None,
                    provenance: Provenance | None = None, training: Any = None) -> Dictionary:
    """A Dictionary holding `tensors` (saekit names), in the files' dtype unless `dtype` is given.

    bf16 files stay bf16 by default: upcasting silently would double memory and hide what was stored;
    pass dtype=torch.float32 to upcast explicitly (recorded in meta)."""
    from saekit.training.guard import check_finite_weights

    check_finite_weights(tensors, source)
    file_dtype = tensors["W_dec"].dtype
    target = dtype or file_dtype
    d = Dictionary(cfg, dtype=target, training=training)
    try:
        d.load_weights({k: v.to(target) for k, v in tensors.items()})
    except (KeyError, ValueError) as error:
        raise SaekitError(f"{source}: weights do not match the config ({error}); the file is "
                          "incomplete or from an unsupported variant") from None
    d.meta = dict(meta or {})
    d.provenance = provenance or Provenance()
    if target != file_dtype:
        d.meta["upcast_from"] = str(file_dtype).removeprefix("torch.")
    for param in d.parameters():
        param.requires_grad_(False)
    return d.eval()


def fold_latent_scale(tensors: dict[str, Tensor], scale: Tensor) -> None:
    """Make latents come out multiplied by `scale` (per latent, > 0) with the same reconstruction:
    encoder columns and biases × s, decoder rows ÷ s. Thresholds are the caller's business."""
    tensors["W_enc"] = tensors["W_enc"] * scale
    for name in ("b_enc", "b_gate", "b_mag"):
        if name in tensors:
            tensors[name] = tensors[name] * scale
    tensors["W_dec"] = tensors["W_dec"] / scale[:, None]


def clamp_threshold(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Peers compute ReLU(z)·1[z > θ]; saekit z·1[z > θ]. They agree when θ ≥ 0, and max(θ, 0) makes
    them agree always, so negative thresholds are clamped (and the clamp recorded)."""
    threshold = tensors.get("threshold")
    if threshold is not None and bool((threshold < 0).any()):
        meta["negative_thresholds_clamped"] = int((threshold < 0).sum())
        tensors["threshold"] = threshold.clamp_min(0.0)


def source_meta(fmt: str, path: Path, **extra: Any) -> dict[str, Any]:
    info = {"format": fmt, "path": str(path)}
    info.update({k: v for k, v in extra.items() if v is not None})
    return {"source": info}


@torch.no_grad()
def gated_to_jumprelu(gated: Dictionary) -> Dictionary:
    """The JumpReLU dictionary that computes exactly what a Gated one does (docs/methods.md).

    π_mag = e^r·(π_gate − b_gate) + b_mag, so π_gate > 0 ⇔ π_mag > θ with θ = b_mag − e^r·b_gate, and
    f = 1[π_mag > θ]·ReLU(π_mag) = JumpReLU_max(θ,0)(π_mag).
    """
    if "b_gate" not in gated.weights():
        raise SaekitError(f"expected a gated dictionary, got {gated.cfg.method!r}")
    cfg = dataclasses.replace(gated.cfg, method="jumprelu")
    scale = gated.r_mag.exp()
    threshold = (gated.b_mag - scale * gated.b_gate).clamp_min(0.0)
    out = Dictionary(cfg, dtype=gated.W_dec.dtype, device=gated.W_dec.device)
    out.load_weights({"W_enc": gated.W_enc * scale, "b_enc": gated.b_mag, "W_dec": gated.W_dec,
                      "b_dec": gated.b_dec, "threshold": threshold})
    out.provenance = dataclasses.replace(gated.provenance)
    out.meta = dict(gated.meta, converted_from="gated")
    return out.eval()


# ------------------------------------------------------------------------------------------ hookpoints
# Residual-stream hook names of the peers -> saekit's named site `resid_post.L` (saekit.models.sites),
# which resolves on every common transformers family, so a loaded dictionary can be spliced, evaluated
# and given dashboards on the Hugging Face model. Only the residual stream is translated: the peers' MLP
# and attention outputs differ from saekit's sites on some families (Gemma's post-norms), so those names
# stay as the source wrote them. The source's own name is kept in meta["source"]["hook_name"].
RESIDUAL_NAMES = [re.compile(p) for p in (
    r"^blocks\.(\d+)\.hook_resid_post$",  # TransformerLens / SAELens
    r"^resid_post_layer_(\d+)$",  # dictionary_learning's submodule names
    r"^(?:layers|h)\.(\d+)$",  # sparsify (relative to model.base_model)
)]
RESIDUAL_PRE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")


def named_site(hook: str | None) -> str | None:
    """saekit's name for a peer's residual-stream hook, or None when it is not one (or layer 0's input)."""
    if not hook:
        return None
    for pattern in RESIDUAL_NAMES:
        match = pattern.match(hook)
        if match:
            return f"resid_post.{match.group(1)}"
    match = RESIDUAL_PRE.match(hook)
    if match and int(match.group(1)) > 0:
        return f"resid_post.{int(match.group(1)) - 1}"
    return None


def translate_hookpoint(hook: str | None, meta: dict[str, Any]) -> str | None:
    """The hookpoint a loaded dictionary records: saekit's site when there is one (original in meta)."""
    site = named_site(hook)
    if site is None:
        return hook
    meta.setdefault("source", {})["hook_name"] = hook
    return site


def output_of(hookpoint: str | None) -> str:
    """A transcoder whose source does not name its target: say what it is relative to its input."""
    return f"{hookpoint}:output" if hookpoint else "output"


# ------------------------------------------------------------------------- saekit's config in any file
# The fields that decide what a dictionary computes: a stashed saekit config is trusted only if it
# agrees with the foreign file on all of them.
INFERENCE_FIELDS = ("method", "d_in", "d_sae", "d_out", "k", "transcoder", "apply_b_dec_to_input",
                    "skip_connection", "n_sources", "matryoshka_prefixes", "residual_threshold")
# Fields of the version-1 single config (saekit ≤ stop 12), by the dataclass that owns them now.
_V1_DICTIONARY = ("method", "d_in", "d_sae", "k", "d_out", "skip_connection", "apply_b_dec_to_input",
                  "n_sources", "matryoshka_prefixes", "name")
_V1_PROVENANCE = ("model_name", "hookpoint", "target_hookpoint", "source_hookpoints")


@dataclasses.dataclass
class Stash:
    """saekit's own record of a dictionary: its three configs and recorded facts."""

    dictionary: DictionaryConfig
    training: Any  # TrainingConfig | None
    provenance: Provenance
    meta: dict[str, Any]


def stash(d: Dictionary) -> dict[str, Any]:
    """The JSON form of `d`'s configs and facts."""
    return {"dictionary": d.cfg.to_dict(),
            "training": d.training_config.to_dict() if d.training_config is not None else None,
            "provenance": d.provenance.to_dict(), "meta": d.meta}


def unstash(data: Any, where: str) -> Stash:
    """A Stash from its JSON form (format 2) or from saekit ≤ stop 12's single `config` (format 1)."""
    from saekit.training.config import TrainingConfig

    if not isinstance(data, dict):
        raise SaekitError(f"{where}: the saekit section is not a JSON object")
    try:
        if "config" in data:  # format 1: one flat config
            flat = dict(data["config"])
            known = set(_V1_DICTIONARY) | set(_V1_PROVENANCE) | {f.name for f in dataclasses.fields(TrainingConfig)}
            unknown = sorted(set(flat) - known)
            if unknown:
                raise SaekitError(f"unknown field(s) {', '.join(unknown)}")
            dictionary = {k: flat[k] for k in _V1_DICTIONARY if k in flat}
            dictionary["transcoder"] = flat.get("target_hookpoint") is not None
            training: Any = {k: v for k, v in flat.items() if k not in _V1_DICTIONARY and k not in _V1_PROVENANCE}
            provenance = {k: flat[k] for k in _V1_PROVENANCE if k in flat}
            meta = dict(data.get("meta") or {})
        else:  # format 2 (and foreign files' stashes, which carry no format version)
            dictionary, training, provenance = data["dictionary"], data.get("training"), data["provenance"]
            meta = dict(data.get("meta") or {})
        cfg = DictionaryConfig.from_dict(dictionary)
        source = Provenance.from_dict(provenance)
    except SaekitError as error:
        raise SaekitError(f"{where}: {error}") from None
    except (KeyError, TypeError, ValueError) as error:
        raise SaekitError(f"{where}: malformed saekit section ({type(error).__name__}: {error}); "
                          "re-save the dictionary") from None
    return Stash(cfg, _training_or_none(training, cfg), source, meta)


def _training_or_none(data: Any, cfg: DictionaryConfig) -> Any:
    """The recorded TrainingConfig, or None when there is none or it no longer validates (it only says
    how the weights were trained, so a stale one must not stop a load)."""
    from saekit.training.config import TrainingConfig

    if not isinstance(data, dict):
        return None
    try:
        return TrainingConfig.from_dict(data).resolved(cfg)
    except (SaekitError, TypeError, ValueError):
        return None


def restore(derived: DictionaryConfig, data: Any, where: str,
            fields: tuple[str, ...] = INFERENCE_FIELDS) -> Stash | None:
    """saekit's stashed record when saekit wrote the foreign file and it still describes the weights.

    Foreign formats hold only what their library needs; saekit stashes its own configs beside it. The
    stashed dictionary and training configs win only if they describe the same computation as the file
    (the weights may have been re-expressed for the other library's conventions, or re-trained there
    since); otherwise the file's config stands, with the stash's provenance and facts. None when there
    is no readable stash. `fields` are those that must agree (a format whose file cannot tell some
    methods apart compares fewer and checks the method itself)."""
    if not isinstance(data, dict):
        return None
    try:
        found = unstash(data, where)
    except SaekitError:
        return None
    if all(getattr(found.dictionary, f) == getattr(derived, f) for f in fields):
        return found
    return Stash(derived, None, found.provenance, found.meta)
