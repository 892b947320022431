"""dictionary_learning's format: `ae.pt` (a pickled state_dict) + `config.json` per trainer.

`config.json` is `{"trainer": {...dict_class, activation_dim, dict_size, k, lm_name, submodule_name,
layer...}, "buffer": {...}}`. Tensor names and orientation depend on the class, the library's own
"major footgun":

| dict_class             | encoder                   | decoder              | b_dec             | saekit      |
|------------------------|---------------------------|----------------------|-------------------|-------------|
| AutoEncoder            | encoder.weight [F,D]+bias | decoder.weight [D,F] | bias (subtracted) | relu        |
| AutoEncoderNew (April) | encoder.weight [F,D]+bias | decoder.weight [D,F] | decoder.bias      | relu        |
| GatedAutoEncoder       | encoder.weight [F,D], gate_bias, mag_bias, r_mag | decoder.weight | decoder_bias | gated |
| AutoEncoderTopK        | encoder.weight [F,D]+bias| decoder.weight [D,F]      | b_dec          | topk        |
| BatchTopKSAE           | encoder.weight [F,D]+bias| decoder.weight [D,F]      | b_dec          | batchtopk   |
| JumpReluAutoEncoder    | W_enc [D,F], b_enc       | W_dec [F,D]               | b_dec (not subtracted) | jumprelu |
| MatryoshkaBatchTopKSAE | W_enc [D,F], b_enc       | W_dec [F,D]               | b_dec          | matryoshka  |

TopK-family classes carry buffers `k` (int) and `threshold` (a scalar; −1 while untracked); Matryoshka adds
`group_sizes`. Trained with `normalize_activations`, weights are rescaled by `scale_biases(norm_factor)`
before saving, so saved dictionaries take raw activations; the factor itself is usually not persisted
(`trainer.config` is a property), and is recorded in meta when it is.

`ae.pt` is a pickle: it is read only with `torch.load(weights_only=True)`, which builds tensors and plain
containers and refuses anything that would run code.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.config import DictionaryConfig, Provenance
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.formats.core import (
    clamp_threshold,
    make_dictionary,
    read_json,
    restore,
    source_meta,
    stash,
    translate_hookpoint,
)
from saekit.io import atomic_directory
from saekit.training.guard import check_finite_weights

WEIGHTS_FILE = "ae.pt"
CFG_FILE = "config.json"

# dictionary_learning class -> the saekit method computing the same thing (and back, for writing).
CLASS_METHOD = {"AutoEncoder": "relu", "AutoEncoderNew": "relu", "GatedAutoEncoder": "gated",
                "AutoEncoderTopK": "topk", "BatchTopKSAE": "batchtopk", "JumpReluAutoEncoder": "jumprelu",
                "MatryoshkaBatchTopKSAE": "matryoshka"}
# Classes whose encoder does not subtract b_dec first, and the TopK-family classes (buffers k, threshold).
SUBTRACTS_B_DEC = {"AutoEncoderNew": False, "JumpReluAutoEncoder": False}
K_CLASSES = ("AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE")
TRAINER_CLASS = {"AutoEncoder": "StandardTrainer", "AutoEncoderNew": "StandardTrainerAprilUpdate",
                 "GatedAutoEncoder": "GatedSAETrainer", "AutoEncoderTopK": "TopKTrainer",
                 "BatchTopKSAE": "BatchTopKTrainer", "JumpReluAutoEncoder": "JumpReluTrainer",
                 "MatryoshkaBatchTopKSAE": "MatryoshkaBatchTopKTrainer"}


def is_dictionary_learning(path: Path) -> bool:
    return (path.is_dir() and (path / WEIGHTS_FILE).is_file()) or (path.is_file() and path.suffix == ".pt")


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """torch.load with weights_only=True: tensors and containers only; code-running pickles refused."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SaekitError(f"{path} refused: it holds Python objects beyond tensors, which loading would "
                          f"execute ({first[:160]}); saekit loads pickles only with weights_only=True. "
                          "Re-save the bare state_dict (torch.save(ae.state_dict(), path))") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise SaekitError(f"cannot read {path}: {str(error).splitlines()[0][:160]}; the file is "
                          "corrupted or not a torch checkpoint") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise SaekitError(f"{path} is not a state_dict of tensors: save ae.state_dict(), not the module")
    return dict(state)


def infer_class(state: dict[str, Tensor]) -> str:
    """The dictionary class, from tensor names alone (used when config.json is missing)."""
    keys = set(state)
    if {"decoder_bias", "gate_bias", "mag_bias", "r_mag"} <= keys:
        return "GatedAutoEncoder"
    if "group_sizes" in keys:
        return "MatryoshkaBatchTopKSAE"
    if {"W_enc", "threshold"} <= keys and "k" not in keys:
        return "JumpReluAutoEncoder"
    if "bias" in keys:
        return "AutoEncoder"
    if "decoder.bias" in keys:
        return "AutoEncoderNew"
    if {"k", "threshold", "b_dec"} <= keys:
        raise SaekitError("ae.pt could be an AutoEncoderTopK or a BatchTopKSAE (same tensors, different "
                          "inference) and there is no config.json to tell: pass dict_class=")
    raise SaekitError(f"ae.pt has tensors {sorted(keys)}, which match no dictionary_learning class")


def _scalar(t: Tensor) -> float:
    return float(t.reshape(-1)[0])


def load(path: str | Path, *, dtype: torch.dtype | None = None, dict_class: str | None = None,
         **_: Any) -> Dictionary:
    """Load a dictionary_learning trainer directory (`ae.pt` + `config.json`) or a bare `.pt` file."""
    path = Path(path)
    weights_path = path / WEIGHTS_FILE if path.is_dir() else path
    cfg_path = (path if path.is_dir() else path.parent) / CFG_FILE
    config = read_json(cfg_path) if cfg_path.is_file() else {}
    trainer: dict[str, Any] = config["trainer"] if isinstance(config.get("trainer"), dict) else {}
    state = read_state_dict(weights_path)
    dict_class = dict_class or trainer.get("dict_class") or infer_class(state)
    if dict_class not in CLASS_METHOD:
        raise SaekitError(f"{cfg_path}: dictionary_learning class {dict_class!r} is not supported; "
                          f"supported: {', '.join(CLASS_METHOD)}")
    try:
        tensors, extra = _to_saekit(dict_class, state)
    except KeyError as error:
        raise SaekitError(f"{weights_path} lacks tensor {error} expected for {dict_class}") from None
    method = CLASS_METHOD[dict_class]
    d_in, d_sae = tensors["W_enc"].shape
    meta: dict[str, Any] = {}
    meta.update(source_meta("dictionary_learning", path, dict_class=dict_class,
                            trainer_class=trainer.get("trainer_class"), layer=trainer.get("layer")))
    if trainer.get("norm_factor") is not None:
        meta["normalization"] = {"method": "mean_squared_norm_1", "folded": True,
                                 "input_scale": 1.0 / float(trainer["norm_factor"])}
    if extra.get("topk_threshold") is not None:
        meta["topk_threshold"] = extra["topk_threshold"]
    clamp_threshold(tensors, meta)
    saekit_info: dict[str, Any] = config["saekit"] if isinstance(config.get("saekit"), dict) else {}
    kwargs: dict[str, Any] = dict(method=method, d_in=int(d_in), d_sae=int(d_sae),
                                  apply_b_dec_to_input=SUBTRACTS_B_DEC.get(dict_class, True))
    if "k" in extra or trainer.get("k"):
        kwargs["k"] = int(trainer.get("k") or extra["k"])
    if "prefixes" in extra:
        kwargs["matryoshka_prefixes"] = extra["prefixes"]
    try:
        dict_cfg = DictionaryConfig(**kwargs)
    except SaekitError as error:
        raise SaekitError(f"{path}: {error}") from None
    restored = restore(dict_cfg, saekit_info.get("stash", saekit_info), str(path))
    if restored is not None:
        return make_dictionary(restored.dictionary, tensors, source=str(weights_path), dtype=dtype,
                               meta={**restored.meta, **meta}, provenance=restored.provenance,
                               training=restored.training)
    source = Provenance(model_name=trainer.get("lm_name"),
                        hookpoint=translate_hookpoint(trainer.get("submodule_name"), meta))
    return make_dictionary(dict_cfg, tensors, source=str(weights_path), dtype=dtype, meta=meta,
                           provenance=source)


def _to_saekit(dict_class: str, s: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """saekit tensors (W_enc [D,F], W_dec [F,D]) from a class's state dict, plus buffers."""
    extra: dict[str, Any] = {}
    if dict_class in ("JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE"):
        out = {"W_enc": s["W_enc"], "b_enc": s["b_enc"], "W_dec": s["W_dec"], "b_dec": s["b_dec"]}
    else:  # nn.Linear layers: weight [out, in]
        out = {"W_enc": s["encoder.weight"].T.contiguous(), "W_dec": s["decoder.weight"].T.contiguous()}
        if dict_class == "GatedAutoEncoder":
            out.update(b_gate=s["gate_bias"], b_mag=s["mag_bias"], r_mag=s["r_mag"],
                       b_dec=s["decoder_bias"])
        else:
            out["b_enc"] = s["encoder.bias"]
            out["b_dec"] = s[{"AutoEncoder": "bias", "AutoEncoderNew": "decoder.bias"}.get(dict_class, "b_dec")]
    d_sae = out["W_enc"].shape[1]
    if dict_class == "JumpReluAutoEncoder":
        out["threshold"] = s["threshold"]
    if "k" in s and dict_class in K_CLASSES:
        extra["k"] = int(_scalar(s["k"]))
        threshold = _scalar(s["threshold"])
        if dict_class == "AutoEncoderTopK":
            # TopK encodes by per-token top-k; its threshold is an optional inference shortcut.
            extra["topk_threshold"] = threshold if threshold >= 0 else None
        else:
            out["threshold"] = torch.full((d_sae,), threshold, dtype=out["W_dec"].dtype)
    if dict_class == "MatryoshkaBatchTopKSAE":
        extra["prefixes"] = torch.cumsum(s["group_sizes"].long(), 0).tolist()
    return out, extra


def _class_for(d: Dictionary) -> str:
    cfg = d.cfg
    if cfg.is_transcoder or cfg.n_sources > 1:
        raise SaekitError("dictionary_learning has no transcoders or crosscoders: save this dictionary "
                          "in saekit's format")
    classes = [name for name, computes in CLASS_METHOD.items() if computes == cfg.method]
    if not classes:
        raise SaekitError(f"dictionary_learning has no {cfg.method} class: save this dictionary in saekit's "
                          "format or as SAELens")
    # Two ReLU classes: the 2023 AutoEncoder subtracts b_dec first, the April-2024 one does not.
    return next((name for name in classes if SUBTRACTS_B_DEC.get(name, True) == cfg.apply_b_dec_to_input),
                classes[0])


def export_state_dict(d: Dictionary) -> tuple[str, dict[str, Tensor]]:
    """(dict_class, state_dict) computing what `d` computes."""
    dict_class = _class_for(d)
    w = {k: v.detach().cpu() for k, v in d.weights().items()}
    subtracts = SUBTRACTS_B_DEC.get(dict_class, True)
    shift = w["b_dec"] @ w["W_enc"]
    if subtracts and not d.cfg.apply_b_dec_to_input:  # x·W + b = (x − b_dec)·W + (b + b_dec·W)
        for name in ("b_enc", "b_gate"):
            if name in w:
                w[name] = w[name] + shift
        if "b_mag" in w:
            w["b_mag"] = w["b_mag"] + shift * w["r_mag"].exp()
    elif not subtracts and d.cfg.apply_b_dec_to_input:  # (x − b_dec)·W + b = x·W + (b − b_dec·W)
        w["b_enc"] = w["b_enc"] - shift
    if dict_class == "GatedAutoEncoder":
        state = {"decoder_bias": w["b_dec"], "encoder.weight": w["W_enc"].T, "r_mag": w["r_mag"],
                 "gate_bias": w["b_gate"], "mag_bias": w["b_mag"], "decoder.weight": w["W_dec"].T}
    elif dict_class in ("JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE"):
        state = {"W_enc": w["W_enc"], "b_enc": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    else:
        state = {"encoder.weight": w["W_enc"].T, "encoder.bias": w["b_enc"],
                 "decoder.weight": w["W_dec"].T}
        bias_name = {"AutoEncoder": "bias", "AutoEncoderNew": "decoder.bias"}.get(dict_class, "b_dec")
        state[bias_name] = w["b_dec"]
    if dict_class == "JumpReluAutoEncoder":
        state["threshold"] = w["threshold"]
    if dict_class in K_CLASSES:
        state["k"] = torch.tensor(d.cfg.k, dtype=torch.int)
        state["threshold"] = torch.tensor(_shared_threshold(d), dtype=torch.float32)
    if dict_class == "MatryoshkaBatchTopKSAE":
        prefixes = torch.tensor([0] + list(d.cfg.matryoshka_prefixes or []))
        state["group_sizes"] = prefixes.diff()
    return dict_class, {k: v.contiguous() for k, v in state.items()}


def _shared_threshold(d: Dictionary) -> float:
    if "threshold" not in d.weights():  # per-token TopK: the threshold is an optional shortcut
        value = d.meta.get("topk_threshold")
        return float(value) if value is not None else -1.0
    threshold = d.threshold.detach()
    if bool((threshold < 0).any()):
        raise SaekitError(f"this {d.cfg.method} dictionary has no inference threshold yet (it is "
                          "estimated during training): dictionary_learning would encode with a plain ReLU; "
                          "train longer or save it in saekit's format")
    if not bool((threshold == threshold[0]).all()):
        raise SaekitError(f"dictionary_learning's {d.cfg.method} keeps one threshold for all latents, "
                          "but this dictionary has per-latent thresholds: use --to saelens (JumpReLU)")
    return float(threshold[0])


def save(d: Dictionary, directory: str | Path, overwrite: bool = False) -> Path:
    """Write `d` as a dictionary_learning trainer directory, loadable with `utils.load_dictionary`."""
    directory = Path(directory)
    dict_class, state = export_state_dict(d)
    trainer: dict[str, Any] = {"dict_class": dict_class, "trainer_class": TRAINER_CLASS[dict_class],
                               "activation_dim": d.cfg.d_in, "dict_size": d.cfg.d_sae,
                               "lm_name": d.provenance.model_name, "submodule_name": d.provenance.hookpoint,
                               "layer": None}
    if "k" in state:
        trainer["k"] = d.cfg.k
    if dict_class == "MatryoshkaBatchTopKSAE":
        trainer["group_sizes"] = state["group_sizes"].tolist()
    config = {"trainer": trainer, "buffer": {"d_submodule": d.cfg.d_in},
              "saekit": {"stash": stash(d)}}
    check_finite_weights(d.weights(), f"saving {directory}")
    with atomic_directory(directory, overwrite) as tmp:
        torch.save(state, tmp / WEIGHTS_FILE)
        (tmp / CFG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return directory


def notes(d: Dictionary) -> list[str]:
    """What dictionary_learning will not get from `d`."""
    out = []
    if _class_for(d) == "AutoEncoder":
        out.append("dictionary_learning's load_dictionary rescales AutoEncoder decoder columns to unit "
                   "norm on load: reconstructions are unchanged, latents scale by the column norms")
    if SUBTRACTS_B_DEC.get(_class_for(d), True) != d.cfg.apply_b_dec_to_input:
        out.append("encoder biases are re-expressed for dictionary_learning's b_dec convention "
                   "(same outputs up to float rounding)")
    if d.log_feature_density is not None:
        out.append("dictionary_learning has no place for firing densities (sparsity.safetensors): not written")
    return out
