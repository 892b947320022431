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

Writing: each method names its SAELens architecture (`relu` → `standard`, BatchTopK and Matryoshka →
`jumprelu` with their shared threshold, as SAELens saves its own, matching pursuit → `matching_pursuit`)
and its transcoder architecture (`transcoder`, `jumprelu_transcoder`, their `skip_` variants); what
SAELens cannot hold (crosscoders, TopK and Gated transcoders) is refused. saekit's configs and recorded
facts ride along in `metadata["saekit"]` (SAELens keeps unknown metadata keys when it re-saves), so
saekit → SAELens → saekit restores the method exactly; without that key a BatchTopK/Matryoshka
dictionary comes back as the JumpReLU it computes (same outputs, training semantics k lost). saekit's
native cfg.json is this writer's output plus a `saekit` section.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from saekit.config import DictionaryConfig, Provenance
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.formats.core import (
    clamp_threshold,
    fold_latent_scale,
    load_tensors,
    make_dictionary,
    named_site,
    output_of,
    read_json,
    restore,
    source_meta,
    stash,
    translate_hookpoint,
)
from saekit.io import atomic_directory
from saekit.methods import get_method, method_names
from saekit.training.guard import check_finite_weights

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
SCALER_FILE = "activation_scaler.json"
WHITENING_FILE = "activation_whitening.safetensors"
# The SAELens config schema we write (6.x: fields in `metadata`); SAELens migrates anything older, and
# drops a nested `metadata` (saekit's stash with it) when it finds no version >= 6.
SCHEMA_VERSION = "6.0.0"

# SAELens architecture -> saekit method. Training architectures appear in training checkpoints; the
# others come from each method's `saelens_architecture` / `saelens_transcoder_architecture`.
TRAINING_ARCHITECTURES = {"batchtopk": "batchtopk", "matryoshka_batchtopk": "matryoshka"}


def architectures() -> dict[str, str]:
    """Every SAELens architecture saekit reads, with the saekit method it becomes."""
    found: dict[str, str] = {}
    for name in method_names():
        method = get_method(name)
        found.setdefault(method.saelens_architecture, name)  # first registered wins (jumprelu, not btk)
        if method.saelens_transcoder_architecture:
            arch = method.saelens_transcoder_architecture
            found.setdefault(arch, name)
            found.setdefault(arch.replace("transcoder", "skip_transcoder"), name)
    return {**found, **TRAINING_ARCHITECTURES}


METADATA_KEYS = ("model_name", "hook_name", "hook_head_index", "hook_name_out", "context_size",
                 "prepend_bos", "dataset_path", "model_class_name", "model_from_pretrained_kwargs",
                 "neuronpedia_id", "seqpos_slice", "sae_lens_version", "sae_lens_training_version")


# -------------------------------------------------------------------------------------------- load
def is_saelens_dir(path: Path) -> bool:
    return path.is_dir() and (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


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


def load(directory: str | Path, *, dtype: torch.dtype | None = None, **_: Any) -> Dictionary:
    """Load an SAELens SAE or transcoder directory (inference save or training checkpoint)."""
    directory = Path(directory)
    raw = read_json(directory / CFG_FILE)
    missing = [key for key in ("d_in", "d_sae") if not isinstance(raw.get(key), int)]
    if missing:
        raise SaekitError(f"{directory / CFG_FILE} has no saekit section and no SAELens {'/'.join(missing)}: "
                          "it is corrupted or not a dictionary config; re-save or re-download it")
    cfg, metadata = _legacy_fields(raw)
    architecture = cfg["architecture"]
    known = architectures()
    if architecture not in known:
        raise SaekitError(f"{directory}: SAELens architecture {architecture!r} has no saekit "
                          f"equivalent; supported: {', '.join(known)}")
    method = known[architecture]
    tensors = load_tensors(directory / WEIGHTS_FILE)
    meta: dict[str, Any] = source_meta("saelens", directory, architecture=architecture,
                                       sae_lens_version=metadata.get("sae_lens_version"))

    if "log_threshold" in tensors:  # JumpReLU training checkpoints of older SAELens
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    scaling = tensors.pop("scaling_factor", tensors.pop("finetuning_scaling_factor", None))
    if scaling is not None and not torch.equal(scaling, torch.ones_like(scaling)):
        tensors["W_dec"] = tensors["W_dec"] * scaling[:, None].to(tensors["W_dec"].dtype)
        meta["finetuning_scaling_factor_folded"] = True
    if cfg.get("rescale_acts_by_decoder_norm"):
        # TopK that ranks f·||d|| and decodes f/||d||: fold the norms in, as SAELens's inference save
        # does. A BatchTopK topk_threshold is already in these rescaled units, so it is converted after.
        fold_latent_scale(tensors, tensors["W_dec"].norm(dim=-1).clamp_min(1e-8))
        meta["decoder_norms_folded"] = True
    if "topk_threshold" in tensors:  # BatchTopK / Matryoshka training checkpoints: one shared value
        tensors["threshold"] = torch.full((cfg["d_sae"],), float(tensors.pop("topk_threshold")),
                                          dtype=tensors["W_dec"].dtype)
    _fold_normalization(directory, cfg, tensors, meta)
    derived, source = _config_from_saelens(cfg, metadata, method, directory, meta)
    restored = _restore(derived, architecture, metadata.get("saekit"), directory)
    if restored is None and architecture == "jumprelu":
        derived = _trained_as(metadata, tensors, derived, meta)
    dict_cfg = restored.dictionary if restored is not None else derived
    method_object = get_method(dict_cfg.method)
    if "threshold" in method_object.folded_biases:  # a learned per-latent θ (a shared one is ≥ 0)
        clamp_threshold(tensors, meta)
    if "threshold" in method_object.weight_names(dict_cfg) and "threshold" not in tensors:
        tensors["threshold"] = torch.full((cfg["d_sae"],), -1.0, dtype=tensors["W_dec"].dtype)
    for name in set(tensors) - set(method_object.weight_names(dict_cfg)):
        if name == "b_enc":  # SAELens's Gated keeps an unused b_enc
            tensors.pop(name)
    meta.update({k: v for k, v in metadata.items() if k in METADATA_KEYS and v is not None and k not in
                 ("model_name", "hook_name", "hook_name_out", "sae_lens_version",
                  "sae_lens_training_version")})
    if cfg.get("reshape_activations", "none") != "none":
        meta["reshape_activations"] = cfg["reshape_activations"]  # hook_z: flatten heads before encoding
    if restored is not None:
        meta = {**restored.meta, **meta}
        source = restored.provenance
    d = make_dictionary(dict_cfg, tensors, source=str(directory / WEIGHTS_FILE), dtype=dtype, meta=meta,
                        provenance=source, training=restored.training if restored is not None else None)
    if (directory / SPARSITY_FILE).is_file():
        d.log_feature_density = load_tensors(directory / SPARSITY_FILE).get("sparsity")
    return d


def _restore(derived: DictionaryConfig, architecture: str, data: Any, directory: Path) -> Any:
    """saekit's stash, when it describes these weights. SAELens's file cannot tell a JumpReLU from the
    BatchTopK or Matryoshka exported as one, so a stashed method that exports to the file's architecture
    agrees with a file that records no k; otherwise method, k and prefixes must match too."""
    from saekit.formats.core import INFERENCE_FIELDS, Stash

    shape = tuple(f for f in INFERENCE_FIELDS if f not in ("method", "k", "matryoshka_prefixes"))
    restored = restore(derived, data, str(directory / CFG_FILE), fields=shape)
    if restored is None or restored.dictionary is derived:  # no stash, or another shape
        return restored
    stashed = restored.dictionary
    same = (stashed.method, stashed.k, stashed.matryoshka_prefixes) == \
        (derived.method, derived.k, derived.matryoshka_prefixes)
    try:
        exported_as = architecture_of(stashed)
    except SaekitError:
        exported_as = None
    if same or (exported_as == architecture and derived.k is None):
        return restored
    return Stash(derived, None, restored.provenance, restored.meta)


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
    scaler = read_json(directory / SCALER_FILE) if (directory / SCALER_FILE).is_file() else {}
    if norm == "expected_average_only_in" and scaler.get("scaling_factor") is not None:
        factor = float(scaler["scaling_factor"])
        # Trained on c·x: encode((c·x − b)·W) = (x − b/c)·(c·W), decode ÷ c (Dictionary.fold_activation_scale).
        tensors["W_enc"] = tensors["W_enc"] * factor
        tensors["W_dec"] = tensors["W_dec"] / factor
        tensors["b_dec"] = tensors["b_dec"] / factor
        meta["normalization"] = {"method": "expected_average_only_in", "input_scale": factor,
                                 "target_scale": factor, "folded": True}
        return
    if norm == "expected_average_only_in":
        warnings.warn(f"{directory}: normalize_activations='expected_average_only_in' but no "
                      f"{SCALER_FILE} with the factor: inputs must be scaled by the caller, as in SAELens",
                      stacklevel=3)
        meta["normalization"] = {"method": "expected_average_only_in", "folded": False,
                                 "note": "factor unknown: scale inputs as SAELens does"}
        return
    if norm == "covariance_whitening" and (directory / WHITENING_FILE).is_file() and "d_out" not in cfg:
        _fold_whitening(load_tensors(directory / WHITENING_FILE), tensors,
                        bool(cfg.get("apply_b_dec_to_input", True)))
        meta["normalization"] = {"method": "covariance_whitening", "folded": True}
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


def _trained_as(metadata: dict[str, Any], tensors: dict[str, Tensor], derived: DictionaryConfig,
                meta: dict[str, Any]) -> DictionaryConfig:
    """A JumpReLU that SAELens trained as BatchTopK/Matryoshka (metadata.training_architecture, one
    shared threshold) is that method again in saekit: same inference, and k is known."""
    trained = TRAINING_ARCHITECTURES.get(str(metadata.get("training_architecture")))
    details = metadata.get("training_architecture_details") or {}
    threshold = tensors.get("threshold")
    if trained is None or details.get("k") is None or threshold is None:
        return derived
    if not bool((threshold == threshold[0]).all()) or float(threshold[0]) < 0:
        return derived
    meta["training_architecture"] = metadata["training_architecture"]
    nested = "matryoshka_prefixes" in get_method(trained).config_fields
    prefixes = _matryoshka_widths({}, details, derived.d_sae) if nested else None
    return DictionaryConfig(method=trained, d_in=derived.d_in, d_sae=derived.d_sae, d_out=derived.d_out,
                            transcoder=derived.transcoder, skip_connection=derived.skip_connection,
                            apply_b_dec_to_input=derived.apply_b_dec_to_input,
                            k=max(1, math.ceil(float(details["k"]))), matryoshka_prefixes=prefixes)


def _matryoshka_widths(cfg: dict[str, Any], details: dict[str, Any], d_sae: int) -> list[int] | None:
    widths = [int(w) for w in cfg.get("matryoshka_widths") or details.get("matryoshka_widths") or []]
    if widths and widths[-1] != d_sae:
        widths.append(d_sae)
    return widths or None


def _config_from_saelens(cfg: dict[str, Any], metadata: dict[str, Any], method: str, directory: Path,
                         meta: dict[str, Any]) -> tuple[DictionaryConfig, Provenance]:
    """What the file says the dictionary computes, and where its data comes from."""
    is_transcoder = "transcoder" in cfg["architecture"]
    method_object = get_method(method)
    kwargs: dict[str, Any] = dict(
        method=method, d_in=int(cfg["d_in"]), d_sae=int(cfg["d_sae"]), transcoder=is_transcoder,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)) and not is_transcoder)
    hook = metadata.get("hook_name")
    source = Provenance(model_name=metadata.get("model_name"),
                        hookpoint=hook if is_transcoder else translate_hookpoint(hook, meta),
                        dataset=metadata.get("dataset_path"), context_size=metadata.get("context_size"))
    if is_transcoder:
        kwargs.update(d_out=int(cfg.get("d_out", cfg["d_in"])), skip_connection="skip" in cfg["architecture"])
        source.target_hookpoint = metadata.get("hook_name_out") or output_of(hook)
    details = metadata.get("training_architecture_details") or {}
    if "residual_threshold" in method_object.config_fields:  # matching pursuit
        if cfg.get("stop_on_duplicate_support", True) is not True:
            raise SaekitError(f"{directory / CFG_FILE}: matching pursuit without stop_on_duplicate_support "
                              "is not supported by saekit")
        kwargs["k"] = int(cfg.get("max_iterations") or cfg["d_in"])
        kwargs["residual_threshold"] = max(0.0, float(cfg.get("residual_threshold", 1e-2)))
    elif method_object.uses_k:
        k = cfg.get("k", details.get("k"))
        if k is None:
            raise SaekitError(f"{directory / CFG_FILE}: a {cfg['architecture']} SAE needs k")
        kwargs["k"] = max(1, math.ceil(float(k)))
    if "matryoshka_prefixes" in method_object.config_fields:
        kwargs["matryoshka_prefixes"] = _matryoshka_widths(cfg, details, kwargs["d_sae"])
    try:
        return DictionaryConfig(**kwargs), source
    except SaekitError as error:
        raise SaekitError(f"{directory / CFG_FILE}: {error}") from None


# ------------------------------------------------------------------------------------------- write
def export_architecture(d: Dictionary) -> str:
    """SAELens's architecture for `d`, or a one-line refusal for what SAELens cannot hold."""
    return architecture_of(d.cfg)


def architecture_of(cfg: DictionaryConfig) -> str:
    method = get_method(cfg.method)
    if cfg.n_sources > 1:
        raise SaekitError("crosscoders have no SAELens equivalent: save them in saekit's format")
    if not cfg.is_transcoder:
        return method.saelens_architecture
    if method.saelens_transcoder_architecture is None:
        raise SaekitError(f"SAELens has no {cfg.method} transcoder: save it in saekit's format (or as "
                          "circuit-tracer or sparsify, for TopK transcoders)")
    architecture = method.saelens_transcoder_architecture
    return architecture.replace("transcoder", "skip_transcoder") if cfg.skip_connection else architecture


def export_cfg(d: Dictionary, architecture: str | None = None) -> dict[str, Any]:
    """The SAELens inference cfg.json for `d` (also the body of saekit's native cfg.json, which passes
    its own `architecture` for dictionaries SAELens cannot hold)."""
    cfg = d.cfg
    architecture = architecture or export_architecture(d)
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
    if architecture == "topk":
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = False
    if architecture == "matching_pursuit":
        out.update(residual_threshold=cfg.residual_threshold, max_iterations=cfg.k,
                   stop_on_duplicate_support=True)
    source = d.provenance
    hook_name = source.hookpoint
    original = (d.meta.get("source") or {}).get("hook_name")
    if original and named_site(original) == hook_name:  # give SAELens back its own name
        hook_name = original
    out["metadata"] = {"sae_lens_version": SCHEMA_VERSION, "sae_lens_training_version": None,
                       "model_name": source.model_name, "hook_name": hook_name,
                       "context_size": source.context_size, "dataset_path": source.dataset}
    if cfg.is_transcoder:
        out["metadata"]["hook_name_out"] = source.target_hookpoint
    return out


def export_weights(d: Dictionary) -> dict[str, Tensor]:
    weights = {name: t.detach().contiguous().cpu() for name, t in d.weights().items()}
    if "threshold" in weights and bool((weights["threshold"] < 0).any()):
        raise SaekitError(f"this {d.cfg.method} dictionary has no inference threshold yet (it is "
                          "estimated during training): SAELens would load it as a JumpReLU that fires on "
                          "everything; train longer or save it in saekit's format")
    return weights


def save(d: Dictionary, directory: str | Path, overwrite: bool = False) -> Path:
    """Write `d` as an SAELens inference SAE (atomically), loadable with `SAE.load_from_disk`."""
    directory = Path(directory)
    cfg = export_cfg(d)
    cfg["metadata"]["saekit"] = stash(d)
    weights = export_weights(d)
    check_finite_weights(d.weights(), f"saving {directory}")
    with atomic_directory(directory, overwrite) as tmp:
        save_file(weights, str(tmp / WEIGHTS_FILE))
        if d.log_feature_density is not None:
            save_file({"sparsity": d.log_feature_density.detach().float().contiguous().cpu()},
                      str(tmp / SPARSITY_FILE))
        (tmp / CFG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    return directory


def notes(d: Dictionary) -> list[str]:
    """What SAELens will not get from `d` (saekit reads everything back from metadata["saekit"])."""
    architecture = export_architecture(d)
    if architectures()[architecture] == d.cfg.method:
        return []
    return [f"SAELens loads this {d.cfg.method} dictionary as the {architecture} it computes at inference "
            "(shared threshold); k and the batch-level training rule live only in metadata['saekit']"]
