"""SAELens's format: `cfg.json` + `sae_weights.safetensors` (+ `sparsity.safetensors`).

The tensors already use saekit's layout and names (`W_enc [d_in, d_sae]`, `W_dec [d_sae, d_in]`, ...), so
the work is in the config: SAELens says *how* to encode with `architecture`, `apply_b_dec_to_input`,
`normalize_activations` and (TopK) `rescale_acts_by_decoder_norm`, and *what* the dictionary reads in
`metadata` (`model_name`, `hook_name`, ...). Older (pre-6.0) configs keep those at the top level.

Everything a loaded SAE does at inference is mapped onto saekit exactly, or refused:
- TopK with `rescale_acts_by_decoder_norm` ranks f_i·||d_i|| and decodes f_i/||d_i||: the norms are
  folded into W_enc/b_enc/W_dec (as SAELens does when it saves such an SAE for inference).
- A checkpoint with `activation_scaler.json` was trained on c·x: c is folded in (raw x in, raw x̂ out).
- Old `scaling_factor` tensors ("finetuning scaling") multiply latents before decoding: folded into W_dec.
- JumpReLU computes ReLU(z)·1[z > θ]; saekit computes z·1[z > θ]. They agree when θ ≥ 0, and
  max(θ, 0) makes them agree always, so negative thresholds are clamped (and the clamp recorded).
- A checkpoint trained with `covariance_whitening` has its mean and matrices beside it: folded too.
- Run-time normalisations (`layer_norm`, `constant_norm_rescale`) depend on each input, not on fixed
  weights: such SAEs are refused with a clear error.

Writing: the six saekit methods map to SAELens architectures (`relu` → `standard`, BatchTopK and
Matryoshka → `jumprelu` with their shared threshold, as SAELens saves its own). saekit's full config and
recorded facts ride along in `metadata["saekit"]` (SAELens keeps unknown metadata keys when it re-saves),
so saekit → SAELens → saekit restores the method exactly; without that key a BatchTopK/Matryoshka
dictionary comes back as the JumpReLU it computes (same outputs, training semantics k lost).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from saekit.config import TOPK_FAMILY, DictionaryConfig
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.formats.native import _load_tensors, _read_json
from saekit.io import atomic_directory

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
SCALER_FILE = "activation_scaler.json"
WHITENING_FILE = "activation_whitening.safetensors"
# The SAELens config schema we write (6.x: fields in `metadata`); SAELens migrates anything older.
SCHEMA_VERSION = "6.0.0"

# SAELens architecture -> saekit method. Training architectures appear in training checkpoints.
ARCHITECTURES = {
    "standard": "relu",
    "gated": "gated",
    "jumprelu": "jumprelu",
    "topk": "topk",
    "batchtopk": "batchtopk",
    "matryoshka_batchtopk": "matryoshka",
    "transcoder": "relu",
    "skip_transcoder": "relu",
    "jumprelu_transcoder": "jumprelu",
    "jumprelu_skip_transcoder": "jumprelu",
}
EXPORT_ARCHITECTURE = {"relu": "standard", "gated": "gated", "jumprelu": "jumprelu", "topk": "topk",
                       "batchtopk": "jumprelu", "matryoshka": "jumprelu"}
METADATA_KEYS = ("model_name", "hook_name", "hook_head_index", "hook_name_out", "context_size",
                 "prepend_bos", "dataset_path", "model_class_name", "model_from_pretrained_kwargs",
                 "neuronpedia_id", "seqpos_slice", "sae_lens_version", "sae_lens_training_version")


# ------------------------------------------------------------------------------------------ shared
# Residual-stream hook names of the peers -> saekit's named site `resid_post.L` (saekit.data.sites), which
# resolves on every common transformers family, so a loaded dictionary can be spliced, evaluated and
# given dashboards on the Hugging Face model. Only the residual stream is translated: the peers' MLP and
# attention outputs differ from saekit's sites on some families (Gemma's post-norms), so those names stay
# as the source wrote them. The source's own name is kept in meta["source"]["hook_name"].
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


def make_dictionary(cfg: DictionaryConfig, tensors: dict[str, Tensor], *, source: str,
                    dtype: torch.dtype | None = None, meta: dict[str, Any] | None = None) -> Dictionary:
    """A Dictionary holding `tensors` (saekit names), in the files' dtype unless `dtype` is given.

    bf16 files stay bf16 by default: upcasting silently would double memory and hide what was stored;
    pass dtype=torch.float32 to upcast explicitly (recorded in meta)."""
    file_dtype = tensors["W_dec"].dtype
    target = dtype or file_dtype
    d = Dictionary(cfg, dtype=target)
    try:
        d.load_weights({k: v.to(target) for k, v in tensors.items()})
    except (KeyError, ValueError) as error:
        raise SaekitError(f"{source}: weights do not match the config ({error}); the file is "
                          "incomplete or from an unsupported variant") from None
    d.meta = dict(meta or {})
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
    """Peers compute ReLU(z)·1[z > θ]; saekit z·1[z > θ]. Identical once θ ≥ 0 (see module doc)."""
    threshold = tensors.get("threshold")
    if threshold is not None and bool((threshold < 0).any()):
        meta["negative_thresholds_clamped"] = int((threshold < 0).sum())
        tensors["threshold"] = threshold.clamp_min(0.0)


# The fields that decide what a dictionary computes at inference: a stashed saekit config is trusted
# only if it agrees with the foreign file on all of them.
INFERENCE_FIELDS = ("method", "d_in", "d_sae", "d_out", "k", "apply_b_dec_to_input", "skip_connection",
                    "n_sources", "matryoshka_prefixes")


def restore_config(derived: DictionaryConfig, stash: Any) -> DictionaryConfig:
    """saekit's full config (training hyperparameters, names) when saekit wrote the foreign file.

    Foreign formats hold only what their library needs; saekit stashes its own config beside it. The
    stash wins only if it describes the same computation as the file (someone may have edited or
    re-trained the weights in the other library since); otherwise the config read from the file
    stands."""
    if not isinstance(stash, dict) or not isinstance(stash.get("config"), dict):
        return derived
    try:
        native = DictionaryConfig.from_dict(stash["config"])
    except (SaekitError, TypeError, ValueError):
        return derived
    same = all(getattr(native, f) == getattr(derived, f) for f in INFERENCE_FIELDS)
    return native if same and native.is_transcoder == derived.is_transcoder else derived


def source_meta(fmt: str, path: Path, **extra: Any) -> dict[str, Any]:
    info = {"format": fmt, "path": str(path)}
    info.update({k: v for k, v in extra.items() if v is not None})
    return {"source": info}


# -------------------------------------------------------------------------------------------- load
def is_saelens_dir(path: Path) -> bool:
    return (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def _legacy_fields(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a config into (inference fields, metadata), migrating pre-6.0 top-level names."""
    cfg = dict(raw)
    metadata = dict(cfg.pop("metadata", None) or {})
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index"}
    for key, value in list(cfg.items()):
        name = renames.get(key, key)
        if name in METADATA_KEYS and metadata.get(name) is None:
            metadata[name] = value
    if "architecture" not in cfg:
        activation = cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))
        k = (cfg.get("activation_fn_kwargs") or {}).get("k")
        cfg["architecture"] = "topk" if activation == "topk" and k is not None else "standard"
        if cfg["architecture"] == "topk":
            cfg["k"] = k
        cfg.setdefault("apply_b_dec_to_input", True)
    norm = cfg.get("normalize_activations")
    if isinstance(norm, bool) or norm is None:
        cfg["normalize_activations"] = "expected_average_only_in" if norm else "none"
    return cfg, metadata


def _saekit_config(metadata: dict[str, Any], method: str, cfg: dict[str, Any]
                   ) -> tuple[DictionaryConfig | None, dict[str, Any]]:
    """saekit's own config from `metadata["saekit"]`, if it still describes these weights."""
    stash = metadata.get("saekit")
    if not isinstance(stash, dict) or not isinstance(stash.get("config"), dict):
        return None, {}
    try:
        native = DictionaryConfig.from_dict(stash["config"])
    except (SaekitError, TypeError, ValueError):
        return None, {}
    consistent = (EXPORT_ARCHITECTURE.get(native.method) == EXPORT_ARCHITECTURE.get(method)
                  and native.d_in == cfg["d_in"] and native.d_sae == cfg["d_sae"]
                  and native.apply_b_dec_to_input == bool(cfg.get("apply_b_dec_to_input", True))
                  and native.is_transcoder == ("d_out" in cfg))
    if not consistent:
        return None, {}
    return native, dict(stash.get("meta") or {})


def load(directory: str | Path, *, dtype: torch.dtype | None = None) -> Dictionary:
    """Load an SAELens SAE or transcoder directory (inference save or training checkpoint)."""
    directory = Path(directory)
    raw = _read_json(directory / CFG_FILE)
    missing = [key for key in ("d_in", "d_sae") if not isinstance(raw.get(key), int)]
    if missing:
        raise SaekitError(f"{directory / CFG_FILE} has no saekit section and no SAELens {'/'.join(missing)}: "
                          "it is corrupted or not a dictionary config; re-save or re-download it")
    cfg, metadata = _legacy_fields(raw)
    architecture = cfg["architecture"]
    if architecture not in ARCHITECTURES:
        raise SaekitError(f"{directory}: SAELens architecture {architecture!r} has no saekit "
                          f"equivalent; supported: {', '.join(ARCHITECTURES)}")
    method = ARCHITECTURES[architecture]
    tensors = _load_tensors(directory / WEIGHTS_FILE)
    meta: dict[str, Any] = source_meta("saelens", directory, architecture=architecture,
                                       sae_lens_version=metadata.get("sae_lens_version"))
    native_cfg, native_meta = _saekit_config(metadata, method, cfg)

    if "log_threshold" in tensors:  # JumpReLU training checkpoints of older SAELens
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    scaling = tensors.pop("scaling_factor", tensors.pop("finetuning_scaling_factor", None))
    if scaling is not None and not torch.equal(scaling, torch.ones_like(scaling)):
        tensors["W_dec"] = tensors["W_dec"] * scaling[:, None].to(tensors["W_dec"].dtype)
        meta["finetuning_scaling_factor_folded"] = True
    if method in TOPK_FAMILY and cfg.get("rescale_acts_by_decoder_norm"):
        # Ranks f·||d|| and decodes f/||d||: fold the norms in, as SAELens's inference save does. A
        # BatchTopK topk_threshold is already in these rescaled units, so it is converted after.
        fold_latent_scale(tensors, tensors["W_dec"].norm(dim=-1).clamp_min(1e-8))
        meta["decoder_norms_folded"] = True
    if "topk_threshold" in tensors:  # BatchTopK / Matryoshka training checkpoints: one shared value
        tensors["threshold"] = torch.full((cfg["d_sae"],), float(tensors.pop("topk_threshold")),
                                          dtype=tensors["W_dec"].dtype)
    if native_cfg is None and architecture == "jumprelu":
        method = _trained_as(metadata, tensors, method, meta)
    if method in ("batchtopk", "matryoshka") and "threshold" not in tensors:
        tensors["threshold"] = torch.full((cfg["d_sae"],), -1.0, dtype=tensors["W_dec"].dtype)
    if method == "jumprelu" or (native_cfg is not None and native_cfg.method == "jumprelu"):
        clamp_threshold(tensors, meta)

    _fold_normalization(directory, cfg, tensors, meta)

    if native_cfg is None:
        native_cfg = _config_from_saelens(cfg, metadata, method, directory)
        if not native_cfg.is_transcoder:
            native_cfg.hookpoint = translate_hookpoint(native_cfg.hookpoint, meta)
    if native_cfg.method == "gated" and "b_enc" in tensors:
        tensors.pop("b_enc")
    meta.update({k: v for k, v in metadata.items() if k in METADATA_KEYS and v is not None and k not in
                 ("model_name", "hook_name", "hook_name_out", "sae_lens_version",
                  "sae_lens_training_version")})
    if cfg.get("reshape_activations", "none") != "none":
        meta["reshape_activations"] = cfg["reshape_activations"]  # hook_z: flatten heads before encoding
    meta = {**native_meta, **meta} if native_meta else meta
    d = make_dictionary(native_cfg, tensors, source=str(directory / WEIGHTS_FILE), dtype=dtype,
                        meta=meta)
    if (directory / SPARSITY_FILE).is_file():
        d.log_feature_density = _load_tensors(directory / SPARSITY_FILE).get("sparsity")
    return d


def _fold_normalization(directory: Path, cfg: dict[str, Any], tensors: dict[str, Tensor],
                        meta: dict[str, Any]) -> None:
    """Fold a checkpoint's input normalisation (`activation_scaler.json`) into the weights, so the
    dictionary takes raw activations and returns raw reconstructions, as SAELens does at the end of
    training (`fold_activation_norm_scaling_factor`, `fold_activation_whitening`)."""
    norm = cfg.get("normalize_activations", "none")
    if norm == "none":
        return
    if norm in ("layer_norm", "constant_norm_rescale"):
        raise SaekitError(f"{directory}: normalize_activations={norm!r} rescales every input at run "
                          "time, which a saekit dictionary cannot express; use SAELens for this SAE")
    scaler = _read_json(directory / SCALER_FILE) if (directory / SCALER_FILE).is_file() else {}
    if norm == "expected_average_only_in" and scaler.get("scaling_factor") is not None:
        factor = float(scaler["scaling_factor"])
        # Trained on c·x: encode((c·x − b)·W) = (x − b/c)·(c·W), decode ÷ c (Dictionary.fold_activation_scale).
        tensors["W_enc"] = tensors["W_enc"] * factor
        tensors["W_dec"] = tensors["W_dec"] / factor
        tensors["b_dec"] = tensors["b_dec"] / factor
        meta.update(activation_scale=factor, normalize_activations="mean_norm_sqrt_d")
        return
    if norm == "expected_average_only_in":
        warnings.warn(f"{directory}: normalize_activations='expected_average_only_in' but no "
                      f"{SCALER_FILE} with the factor: inputs must be scaled by the caller, as in SAELens",
                      stacklevel=3)
        meta["normalize_activations"] = "expected_average_only_in (factor unknown, not folded)"
        return
    if norm == "covariance_whitening" and (directory / WHITENING_FILE).is_file() and "d_out" not in cfg:
        _fold_whitening(_load_tensors(directory / WHITENING_FILE), tensors,
                        bool(cfg.get("apply_b_dec_to_input", True)))
        meta["normalize_activations"] = "covariance_whitening (folded)"
        return
    raise SaekitError(f"{directory}: normalize_activations={norm!r} is not folded into the weights and "
                      "its statistics are not beside them; fold it in SAELens and save again")


def _fold_whitening(stats: dict[str, Tensor], tensors: dict[str, Tensor], applies_b_dec: bool) -> None:
    """Trained on z = (x − μ)·M, reconstructing x = ẑ·M⁻¹ + μ: fold both affine maps (in float64)."""
    dtype = tensors["W_enc"].dtype
    mean, M, M_inv = (stats[k].double() for k in ("mean", "matrix", "inverse_matrix"))
    W_enc = M @ tensors["W_enc"].double()
    if not applies_b_dec:  # with b_dec subtracted, the new b_dec below already removes μ
        shift = mean @ W_enc
        for name in ("b_enc", "b_gate"):
            if name in tensors:
                tensors[name] = (tensors[name].double() - shift).to(dtype)
        if "b_mag" in tensors:
            tensors["b_mag"] = (tensors["b_mag"].double() - shift * tensors["r_mag"].double().exp()).to(dtype)
    tensors["W_enc"] = W_enc.to(dtype)
    tensors["W_dec"] = (tensors["W_dec"].double() @ M_inv).to(dtype)
    tensors["b_dec"] = (tensors["b_dec"].double() @ M_inv + mean).to(dtype)


def _trained_as(metadata: dict[str, Any], tensors: dict[str, Tensor], method: str,
                meta: dict[str, Any]) -> str:
    """A JumpReLU that SAELens trained as BatchTopK/Matryoshka (metadata.training_architecture, one
    shared threshold) is that method again in saekit: same inference, and k is known."""
    trained = {"batchtopk": "batchtopk", "matryoshka_batchtopk": "matryoshka"}.get(
        str(metadata.get("training_architecture")))
    details = metadata.get("training_architecture_details") or {}
    threshold = tensors.get("threshold")
    if trained is None or details.get("k") is None or threshold is None:
        return method
    if not bool((threshold == threshold[0]).all()) or float(threshold[0]) < 0:
        return method
    meta["training_architecture"] = metadata["training_architecture"]
    return trained


def _config_from_saelens(cfg: dict[str, Any], metadata: dict[str, Any], method: str,
                         directory: Path) -> DictionaryConfig:
    is_transcoder = "transcoder" in cfg["architecture"]
    kwargs: dict[str, Any] = dict(
        method=method, d_in=int(cfg["d_in"]), d_sae=int(cfg["d_sae"]),
        hookpoint=metadata.get("hook_name"), model_name=metadata.get("model_name"),
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)) and not is_transcoder,
        normalize_activations="mean_norm_sqrt_d"
        if cfg.get("normalize_activations") == "expected_average_only_in" else "none")
    if is_transcoder:
        kwargs.update(d_out=int(cfg.get("d_out", cfg["d_in"])),
                      target_hookpoint=metadata.get("hook_name_out") or _output_of(metadata.get("hook_name")),
                      skip_connection="skip" in cfg["architecture"])
    details = metadata.get("training_architecture_details") or {}
    if method in ("topk", "batchtopk", "matryoshka"):
        k = cfg.get("k", details.get("k"))
        if k is None:
            raise SaekitError(f"{directory}/{CFG_FILE}: a {cfg['architecture']} SAE needs k")
        kwargs["k"] = max(1, int(math.ceil(float(k))))
    if method == "matryoshka":
        widths = [int(w) for w in cfg.get("matryoshka_widths") or details.get("matryoshka_widths") or []]
        if widths and widths[-1] != kwargs["d_sae"]:
            widths.append(kwargs["d_sae"])
        kwargs["matryoshka_prefixes"] = widths or None
    try:
        return DictionaryConfig(**kwargs)
    except SaekitError as error:
        raise SaekitError(f"{directory}/{CFG_FILE}: {error}") from None


# ------------------------------------------------------------------------------------------- write
def export_cfg(d: Dictionary) -> dict[str, Any]:
    """The SAELens inference cfg.json for `d` (also used by saekit's native format)."""
    cfg = d.cfg
    if cfg.n_sources > 1:
        raise SaekitError("crosscoders have no SAELens equivalent: save them in saekit's format")
    architecture = EXPORT_ARCHITECTURE[cfg.method]
    if cfg.is_transcoder:
        if cfg.method in ("gated", "topk"):
            raise SaekitError(f"SAELens has no {cfg.method} transcoder: save it in saekit's format "
                              "(or as sparsify, for TopK transcoders)")
        architecture = {"standard": "transcoder", "jumprelu": "jumprelu_transcoder"}[architecture]
        if cfg.skip_connection:
            architecture = architecture.replace("transcoder", "skip_transcoder")
    out: dict[str, Any] = {
        "architecture": architecture,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": str(d.W_dec.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": bool(cfg.apply_b_dec_to_input),
        "normalize_activations": "none",
        "reshape_activations": "none",
    }
    if cfg.is_transcoder:
        out["d_out"] = cfg.d_out
    if cfg.method == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = False
    hook_name = cfg.hookpoint
    original = (d.meta.get("source") or {}).get("hook_name")
    if original and named_site(original) == hook_name:  # give SAELens back its own name
        hook_name = original
    out["metadata"] = {"sae_lens_version": SCHEMA_VERSION, "sae_lens_training_version": None,
                       "model_name": cfg.model_name, "hook_name": hook_name}
    if cfg.is_transcoder:
        out["metadata"]["hook_name_out"] = cfg.target_hookpoint
    return out


def export_weights(d: Dictionary) -> dict[str, Tensor]:
    weights = {name: t.detach().contiguous().cpu() for name, t in d.weights().items()}
    if d.cfg.method in ("batchtopk", "matryoshka") and bool((weights["threshold"] < 0).any()):
        raise SaekitError(f"this {d.cfg.method} dictionary has no inference threshold yet (it is "
                          "estimated during training): SAELens would load it as a JumpReLU that fires on "
                          "everything; train longer or save it in saekit's format")
    return weights


def save(d: Dictionary, directory: str | Path) -> Path:
    """Write `d` as an SAELens inference SAE (atomically), loadable with `SAE.load_from_disk`."""
    directory = Path(directory)
    cfg = export_cfg(d)
    cfg["metadata"]["saekit"] = {"config": d.cfg.to_dict(), "meta": d.meta}
    weights = export_weights(d)
    with atomic_directory(directory) as tmp:
        save_file(weights, str(tmp / WEIGHTS_FILE))
        if d.log_feature_density is not None:
            save_file({"sparsity": d.log_feature_density.detach().float().contiguous().cpu()},
                      str(tmp / SPARSITY_FILE))
        (tmp / CFG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    return directory


def _output_of(hookpoint: str | None) -> str:
    """A transcoder whose source does not name its target: say what it is relative to its input."""
    return f"{hookpoint}:output" if hookpoint else "output"
