"""Peer side of the interop tests: runs with the peer venv's python (SAELens, sparsify,
dictionary_learning installed from PyPI; saekit NOT importable), never with saekit's.

    python peer_helper.py create WORKDIR   # build + save dictionaries with the real libraries
    python peer_helper.py load WORKDIR     # load saekit-written dictionaries with the real libraries
    python peer_helper.py all WORKDIR      # both, importing the libraries once
    python peer_helper.py synthetic WORKDIR  # SAELens's synthetic-data evals and generator (below)

Inputs are `WORKDIR/inputs.safetensors` (`x [N, d_in]`, float32). Each case writes
`outputs.safetensors` with `latents` (dense [N, d_sae]) and `recon` (the library's forward output),
computed by the library's own inference code, which the pytest side compares with saekit's.
`create` also writes `WORKDIR/peer/cases.json`: {case: {"path": ..., "notes": ...}}.
`load` reads `WORKDIR/saekit/cases.json`: {case: {"format": ..., "path": ...}}.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
D_IN, D_SAE, D_OUT, K = 16, 64, 12, 4
LM, HOOK = "EleutherAI/pythia-70m-deduped", "blocks.3.hook_resid_post"


def _randomize(module: torch.nn.Module, seed: int, positive: tuple[str, ...] = ()) -> None:
    """Random weights everywhere (zero-initialised biases would hide b_dec convention bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            values = torch.randn(param.shape, generator=g) * 0.3
            if name.split(".")[-1] in positive:
                values = values.abs() * 0.3
            param.copy_(values.to(param.dtype))


def _write(out: Path, latents: torch.Tensor, recon: torch.Tensor) -> None:
    save_file({"latents": latents.detach().float().contiguous(),
               "recon": recon.detach().float().contiguous()}, str(out / "outputs.safetensors"))


# ------------------------------------------------------------------------------------------ SAELens
def _saelens_outputs(path: Path, x: torch.Tensor, out: Path) -> None:
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(path), device="cpu")
    with torch.no_grad():
        _write(out, sae.encode(x), sae(x))


def create_saelens(root: Path, x: torch.Tensor) -> dict[str, dict]:
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        GatedSAE,
        GatedSAEConfig,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.transcoder import (
        JumpReLUSkipTranscoder,
        JumpReLUSkipTranscoderConfig,
        JumpReLUTranscoder,
        JumpReLUTranscoderConfig,
        SkipTranscoder,
        SkipTranscoderConfig,
        Transcoder,
        TranscoderConfig,
    )
    from sae_lens.training.activation_scaler import ActivationScaler

    def meta(**extra):
        return SAEMetadata(model_name=LM, hook_name=HOOK, **extra)

    cases: dict[str, dict] = {}
    base = dict(d_in=D_IN, d_sae=D_SAE)
    inference = {
        "saelens_standard": (StandardSAE, StandardSAEConfig(**base, metadata=meta())),
        "saelens_standard_no_bdec": (StandardSAE, StandardSAEConfig(**base, apply_b_dec_to_input=False,
                                                                    metadata=meta())),
        "saelens_gated": (GatedSAE, GatedSAEConfig(**base, metadata=meta())),
        "saelens_jumprelu": (JumpReLUSAE, JumpReLUSAEConfig(**base, apply_b_dec_to_input=False,
                                                            metadata=meta())),
        "saelens_topk": (TopKSAE, TopKSAEConfig(**base, k=K, metadata=meta())),
        "saelens_topk_rescaled": (TopKSAE, TopKSAEConfig(**base, k=K, rescale_acts_by_decoder_norm=True,
                                                         metadata=meta())),
        "saelens_transcoder": (Transcoder, TranscoderConfig(**base, d_out=D_OUT, apply_b_dec_to_input=False,
                                                            metadata=meta(hook_name_out="blocks.3.hook_mlp_out"))),
        "saelens_skip_transcoder": (SkipTranscoder, SkipTranscoderConfig(
            **base, d_out=D_OUT, apply_b_dec_to_input=False, metadata=meta(hook_name_out="blocks.3.hook_mlp_out"))),
        "saelens_jumprelu_transcoder": (JumpReLUTranscoder, JumpReLUTranscoderConfig(
            **base, d_out=D_OUT, apply_b_dec_to_input=False, metadata=meta(hook_name_out="blocks.3.hook_mlp_out"))),
        "saelens_jumprelu_skip_transcoder": (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig(
            **base, d_out=D_OUT, apply_b_dec_to_input=False, metadata=meta(hook_name_out="blocks.3.hook_mlp_out"))),
    }
    for seed, (name, (cls, cfg)) in enumerate(inference.items()):
        sae = cls(cfg)
        _randomize(sae, seed, positive=("threshold",))
        path = root / name
        sae.save_model(str(path))
        _saelens_outputs(path, x, path)
        cases[name] = {"path": str(path)}

    # BatchTopK / Matryoshka are trained as such and saved for inference as JumpReLU.
    for seed, (name, cls, cfg) in enumerate([
        ("saelens_batchtopk", BatchTopKTrainingSAE,
         BatchTopKTrainingSAEConfig(**base, k=K, metadata=meta())),
        ("saelens_matryoshka", MatryoshkaBatchTopKTrainingSAE,
         MatryoshkaBatchTopKTrainingSAEConfig(**base, k=K, matryoshka_widths=[16, 32, D_SAE],
                                              metadata=meta())),
    ], start=50):
        sae = cls(cfg)
        _randomize(sae, seed)
        sae.topk_threshold = torch.tensor(0.2)
        path = root / name
        sae.save_inference_model(str(path))
        _saelens_outputs(path, x, path)
        cases[name] = {"path": str(path)}
        # A training checkpoint of the same SAE (architecture "batchtopk", buffer topk_threshold):
        # saekit must read it as the inference model above computes.
        checkpoint = root / f"{name}_checkpoint"
        sae.save_model(str(checkpoint))
        _saelens_outputs(path, x, checkpoint)
        cases[f"{name}_checkpoint"] = {"path": str(checkpoint)}

    # Matching pursuit (SAELens's defaults: residual threshold 1e-2, at most d_in steps); unit atoms as
    # SAELens initialises them, and inputs whose residual can fall below the threshold.
    from sae_lens import MatchingPursuitSAE, MatchingPursuitSAEConfig

    sae = MatchingPursuitSAE(MatchingPursuitSAEConfig(**base, metadata=meta()))
    _randomize(sae, 70)
    with torch.no_grad():
        sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
    path = root / "saelens_matching_pursuit"
    sae.save_model(str(path))
    _saelens_outputs(path, x, path)
    cases["saelens_matching_pursuit"] = {"path": str(path)}

    # Architectures saekit has no module for: saekit must refuse them by name, not load them wrongly.
    from sae_lens import AbsTopKSAE, AbsTopKSAEConfig

    for name, sae in [("abstopk", AbsTopKSAE(AbsTopKSAEConfig(**base, k=K, metadata=meta())))]:
        _randomize(sae, 90)
        sae.save_model(str(root.parent / "unsupported" / name))

    # A checkpoint trained on scaled activations: weights unfolded, factor in activation_scaler.json.
    # SAELens folds it at the end of training with fold_activation_norm_scaling_factor: compare with that.
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(**base, normalize_activations="expected_average_only_in",
                                                        metadata=meta()))
    _randomize(sae, 70)
    path = root / "saelens_scaled_checkpoint"
    sae.save_model(str(path))
    ActivationScaler(scaling_factor=2.5).save(str(path / "activation_scaler.json"))
    sae.fold_activation_norm_scaling_factor(2.5)
    with torch.no_grad():
        _write(path, sae.encode(x), sae(x))
    cases["saelens_scaled_checkpoint"] = {"path": str(path)}
    return cases


# ------------------------------------------------------------------------------------------ sparsify
def create_sparsify(root: Path, x: torch.Tensor) -> dict[str, dict]:
    from sparsify import SparseCoder, SparseCoderConfig

    cases: dict[str, dict] = {}
    for seed, (name, cfg, dtype) in enumerate([
        ("sparsify_topk", SparseCoderConfig(num_latents=D_SAE, k=K), torch.float32),
        ("sparsify_transcoder", SparseCoderConfig(num_latents=D_SAE, k=K, transcode=True), torch.float32),
        ("sparsify_transcoder_skip", SparseCoderConfig(num_latents=D_SAE, k=K, transcode=True,
                                                       skip_connection=True), torch.float32),
        ("sparsify_bf16", SparseCoderConfig(num_latents=D_SAE, k=K), torch.bfloat16),
    ], start=100):
        sae = SparseCoder(D_IN, cfg, dtype=dtype)
        _randomize(sae, seed)
        path = root / name / "layers.3"
        sae.save_to_disk(path)
        loaded = SparseCoder.load_from_disk(path)
        assert loaded.dtype == dtype
        # Hub releases are bf16; saekit compares them upcast explicitly, so compute the reference upcast.
        loaded = loaded.float()
        _sparsify_outputs(loaded, x, path)
        cases[name] = {"path": str(path), "dtype": str(dtype).removeprefix("torch.")}
    return cases


def _sparsify_outputs(sae, x: torch.Tensor, out: Path) -> None:
    with torch.no_grad():
        top_acts, top_indices, _ = sae.encode(x)
        latents = torch.zeros(x.shape[0], sae.num_latents).scatter_(-1, top_indices, top_acts.float())
        _write(out, latents, sae(x).sae_out)


# ------------------------------------------------------------------------------- dictionary_learning
def _data(x_like: torch.Tensor, seed: int):
    g = torch.Generator().manual_seed(seed)
    while True:  # off-centre activations, so b_dec (and its conventions) matter
        yield torch.randn(64, D_IN, generator=g) * 2.0 + 1.5


def create_dictionary_learning(root: Path, x: torch.Tensor) -> dict[str, dict]:
    from dictionary_learning.dictionary import AutoEncoder, AutoEncoderNew
    from dictionary_learning.trainers import (
        BatchTopKTrainer,
        GatedSAETrainer,
        JumpReluTrainer,
        StandardTrainer,
        TopKTrainer,
    )
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer
    from dictionary_learning.trainers.standard import StandardTrainerAprilUpdate
    from dictionary_learning.training import trainSAE
    from dictionary_learning.utils import load_dictionary

    common = dict(activation_dim=D_IN, dict_size=D_SAE, layer=3, lm_name=LM, device="cpu",
                  submodule_name="resid_post_layer_3", steps=30, warmup_steps=1)
    topk = dict(k=K, threshold_start_step=0)
    configs = {
        "dl_standard": dict(trainer=StandardTrainer, sparsity_warmup_steps=1, **common),
        "dl_april": dict(trainer=StandardTrainerAprilUpdate, sparsity_warmup_steps=1, **common),
        "dl_gated": dict(trainer=GatedSAETrainer, sparsity_warmup_steps=1, **common),
        "dl_topk": dict(trainer=TopKTrainer, **topk, **common),
        "dl_batchtopk": dict(trainer=BatchTopKTrainer, **topk, **common),
        "dl_jumprelu": dict(trainer=JumpReluTrainer, sparsity_warmup_steps=1, **common),
        "dl_matryoshka": dict(trainer=MatryoshkaBatchTopKTrainer, group_fractions=[0.25, 0.75], **topk,
                              **common),
    }
    names = list(configs)
    torch.manual_seed(0)
    # normalize_activations: DL trains on x/norm_factor and rescales biases before saving.
    trainSAE(_data(x, 1), list(configs.values()), steps=30, save_dir=str(root / "dl_sweep"),
             normalize_activations=True, device="cpu")
    cases: dict[str, dict] = {}
    for i, name in enumerate(names):
        path = root / "dl_sweep" / f"trainer_{i}"
        ae, _ = load_dictionary(str(path), device="cpu")
        if name == "dl_april":
            # load_dictionary rescales AutoEncoder decoder columns to unit norm (changing latents);
            # the file itself holds the unnormalised weights, which saekit loads as they are.
            ae = AutoEncoder.from_pretrained(str(path / "ae.pt"), normalize_decoder=False)
        with torch.no_grad():
            _write(path, ae.encode(x), ae(x))
        cases[name] = {"path": str(path)}

    # AutoEncoderNew (April update, no pre-encoder bias) has no trainer in this release: save one.
    ae = AutoEncoderNew(D_IN, D_SAE)
    _randomize(ae, 200)
    path = root / "dl_autoencodernew"
    path.mkdir(parents=True)
    torch.save(ae.state_dict(), path / "ae.pt")
    (path / "config.json").write_text(json.dumps({"trainer": {
        "dict_class": "AutoEncoderNew", "activation_dim": D_IN, "dict_size": D_SAE, "lm_name": LM,
        "submodule_name": "resid_post_layer_3", "layer": 3}}))
    ae, _ = load_dictionary(str(path), device="cpu")
    with torch.no_grad():
        _write(path, ae.encode(x), ae(x))
    cases["dl_autoencodernew"] = {"path": str(path)}
    return cases


# ------------------------------------------------------------------------------------------- load
def load_saekit_written(work: Path, x: torch.Tensor) -> None:
    cases = json.loads((work / "saekit" / "cases.json").read_text())
    out_root = work / "saekit_outputs"
    for name, case in cases.items():
        path, out = Path(case["path"]), out_root / name
        out.mkdir(parents=True)
        if case["format"] in ("saelens", "saekit"):  # saekit's native cfg.json is SAELens's
            from sae_lens import SAE

            sae = SAE.load_from_disk(str(path), device="cpu")
            (out / "architecture.txt").write_text(type(sae).__name__)
            with torch.no_grad():
                _write(out, sae.encode(x), sae(x))
            # SAELens re-saving keeps unknown metadata (saekit's config) for the way back.
            sae.save_model(str(out / "resaved"))
        elif case["format"] == "sparsify":
            from sparsify import SparseCoder

            sae = SparseCoder.load_from_disk(path)
            (out / "dtype.txt").write_text(str(sae.dtype).removeprefix("torch."))
            _sparsify_outputs(sae.float(), x, out)
        elif case["format"] == "dictionary_learning":
            from dictionary_learning.utils import load_dictionary

            ae, _ = load_dictionary(str(path), device="cpu")
            (out / "dict_class.txt").write_text(type(ae).__name__)
            with torch.no_grad():
                _write(out, ae.encode(x), ae(x))
        else:
            raise ValueError(f"unknown format {case['format']}")


# ---------------------------------------------------------------------------------------- synthetic
def synthetic(work: Path) -> None:
    """SAELens's SynthSAEBench code on saekit's inputs, in WORKDIR/synthetic (see
    tests/interop/synthetic_case.py, which writes them and compares):
    - metrics.json: `eval_sae_on_synthetic_data` for each SAELens-format dictionary in dictionaries/,
      on the ground-truth codes and features of samples.safetensors (fed through a generator stub);
    - generator.safetensors / generator.json: SAELens's SyntheticModel built from generator_config.json:
      its probabilities, magnitude spreads and hierarchy, and statistics of its samples."""
    from sae_lens import SAE
    from sae_lens.synthetic.evals import eval_sae_on_synthetic_data
    from sae_lens.synthetic.feature_dictionary import FeatureDictionary
    from sae_lens.synthetic.synthetic_model import SyntheticModel, SyntheticModelConfig
    from synthetic_stats import CodeStatistics

    root = work / "synthetic"
    tensors = load_file(str(root / "samples.safetensors"))
    features, bias, codes = tensors["features"], tensors["bias"], tensors["codes"]
    feature_dict = FeatureDictionary(features.shape[0], features.shape[1], bias=True, initializer=None)
    with torch.no_grad():
        feature_dict.feature_vectors.copy_(features)
        feature_dict.bias.copy_(bias)

    class Replay:
        """An activation generator that hands out saekit's codes, in order."""

        def __init__(self) -> None:
            self.start = 0

        def sample(self, n: int) -> torch.Tensor:
            out = codes[self.start:self.start + n]
            self.start += n
            return out

    metrics = {}
    for path in sorted((root / "dictionaries").iterdir()):
        sae = SAE.load_from_disk(str(path), device="cpu")
        result = eval_sae_on_synthetic_data(sae, feature_dict, Replay(), num_samples=codes.shape[0],
                                            batch_size=1024)
        metrics[path.name] = result.to_dict()
    (root / "metrics.json").write_text(json.dumps(metrics, indent=1))

    request = json.loads((root / "generator_config.json").read_text())  # {"config": ..., "samples": n}
    cfg = SyntheticModelConfig.from_dict(request["config"])
    model = SyntheticModel(cfg, device="cpu")
    n = cfg.num_features
    parent = torch.full((n,), -1, dtype=torch.long)
    exclusive = torch.zeros(n, dtype=torch.bool)
    stack = list(model.hierarchy.roots) if model.hierarchy is not None else []
    while stack:
        node = stack.pop()
        exclusive[node.feature_index] = bool(node.mutually_exclusive_children)
        for child in node.children:
            parent[child.feature_index] = node.feature_index
            stack.append(child)
    generator = model.activation_generator
    stats = CodeStatistics(parent, exclusive, generator.mean_firing_magnitudes)
    torch.manual_seed(0)
    for _ in range(request["samples"] // 4096):
        stats.update(generator.sample(4096))
    save_file({"probabilities": generator.firing_probabilities.float().contiguous(),
               "std_magnitudes": generator.std_firing_magnitudes.float().contiguous(),
               "mean_magnitudes": generator.mean_firing_magnitudes.float().contiguous(),
               "parent": parent, "exclusive": exclusive.to(torch.uint8)}, str(root / "generator.safetensors"))
    (root / "generator.json").write_text(json.dumps(stats.result()))


def main() -> None:
    mode, work = sys.argv[1], Path(sys.argv[2])
    if mode == "synthetic":
        synthetic(work)
        return
    x = load_file(str(work / "inputs.safetensors"))["x"]
    if mode in ("create", "all"):
        root = work / "peer"
        root.mkdir(parents=True, exist_ok=True)
        cases = {}
        cases.update(create_saelens(root, x))
        cases.update(create_sparsify(root, x))
        cases.update(create_dictionary_learning(root, x))
        (root / "cases.json").write_text(json.dumps(cases, indent=1))
    if mode in ("load", "all"):
        load_saekit_written(work, x)
    if mode not in ("create", "load", "all", "synthetic"):
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
