"""sae-probes side of tests/evaluation/test_probing_peer.py: runs with the side venv's python
(tests/evaluation/probes_env.sh: the real sae-probes 0.4.2 with TransformerLens and SAELens; saekit is
NOT importable), never with saekit's.

    python probes_peer_helper.py WORKDIR

reads WORKDIR/request.json and writes its answers next to it, all computed by sae-probes' own functions:

- `split`: for each named dataset of the wheel, `get_yvals` and `get_train_test_indices` with the
  "normal" sizes (num_train = min(N − 100, 1024), num_test = rows − num_train − 1, as
  `generate_sae_activations_normal` and `get_xy_traintest_specify` compute them) -> split.npz;
- `probes`: `find_best_reg` on the arrays of probes_in.npz for each penalty -> probes.json;
- `ranking`: `get_sorted_indices` with `mean_act_normalization` on ranking_in.npz -> ranking.npz;
- `pipeline`: the whole "normal" setting on one dataset of the wheel and a small model: a
  TransformerLens HookedTransformer built from the Hugging Face model folder,
  `generate_single_dataset_activations`, `run_sae_eval` with the SAELens-format dictionary (L1, given ks)
  and `run_baseline_dataset_layer` (logreg) -> pipeline/ (their JSON results and the activations).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
torch.set_num_threads(1)


def split(work: Path, names: list[str]) -> None:
    from sae_probes import utils_data

    sizes = utils_data.get_dataset_sizes()
    arrays = {}
    for name in names:
        labels = utils_data.get_yvals(name)[:5000]  # get_xyvals keeps MAX_AMT = 5000 rows
        num_train = min(sizes[name] - 100, 1024)
        num_test = len(labels) - num_train - 1
        train, test = utils_data.get_train_test_indices(labels, num_train, num_test, 0.5, 42)
        arrays.update({f"{name}/labels": labels, f"{name}/train": train, f"{name}/test": test})
    np.savez(work / "split.npz", **arrays)


def probes(work: Path, cases: list[dict]) -> None:
    from sae_probes.utils_training import find_best_reg

    arrays = np.load(work / "probes_in.npz")
    answers = []
    for case in cases:
        prefix = case["name"]
        result = find_best_reg(arrays[f"{prefix}/x_train"], arrays[f"{prefix}/y_train"],
                               arrays[f"{prefix}/x_test"], arrays[f"{prefix}/y_test"],
                               penalty=case["penalty"], seed=42)
        metrics = result.metrics
        answers.append({"name": prefix, "penalty": case["penalty"], "test_auc": float(metrics.test_auc),
                        "val_auc": float(metrics.val_auc), "test_acc": float(metrics.test_acc),
                        "test_f1": float(metrics.test_f1), "C": float(result.classifier.C)})
    (work / "probes.json").write_text(json.dumps(answers, indent=1))


def ranking(work: Path) -> None:
    from sae_probes.run_sae_evals import get_sorted_indices, mean_act_normalization

    arrays = np.load(work / "ranking_in.npz")
    latents, labels = torch.tensor(arrays["latents"]), torch.tensor(arrays["labels"])
    order = get_sorted_indices(latents, labels, mean_act_normalization)
    np.savez(work / "ranking.npz", order=order.numpy(), normalised=mean_act_normalization(latents).numpy())


def pipeline(work: Path, request: dict) -> None:
    import sae_probes.generate_model_activations as generate
    from sae_lens import SAE
    from sae_probes.constants import DATA_PATH
    from sae_probes.run_baselines import run_baseline_dataset_layer
    from sae_probes.run_sae_evals import run_sae_eval
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, dataset, hook = request["model_dir"], request["dataset"], request["hook_name"]
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    # HookedTransformer.from_pretrained_no_processing's steps; it accepts only official model names, its
    # config and weight loaders also take a local folder.
    cfg = loading.get_pretrained_model_config(model_dir, hf_cfg=hf_model.config.to_dict(), device="cpu",
                                              dtype=torch.float32)
    state = loading.get_pretrained_state_dict(model_dir, cfg, hf_model, dtype=torch.float32)
    model = HookedTransformer(cfg, AutoTokenizer.from_pretrained(model_dir), move_to_device=False)
    model.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                      fold_value_biases=False, refactor_factored_attn_matrices=False)
    model.eval()
    out, cache = work / "pipeline", work / "pipeline" / "model_cache"
    generate.generate_single_dataset_activations(
        model=model, model_name="tiny", dataset_path=DATA_PATH / "cleaned_data" / f"{dataset}.csv.zst",
        hook_names=[hook], model_cache_path=cache, device="cpu", max_seq_len=request["max_seq_len"],
        batch_size=16)
    sae = SAE.load_from_disk(request["sae_dir"], device="cpu")
    run_sae_eval(sae=sae, dataset=dataset, hook_name=hook, reg_type="l1", setting="normal", model_name="tiny",
                 model_cache_path=cache, device="cpu", ks=request["ks"], results_path=out)
    run_baseline_dataset_layer(hook, dataset, "logreg", "tiny", cache, results_path=out)
    activations = torch.load(cache / f"model_activations_tiny/{dataset}_{hook}.pt", weights_only=True)
    np.save(out / "activations.npy", activations.float().numpy())
    (out / "prepends_bos.txt").write_text(str(bool(model.cfg.tokenizer_prepends_bos)))


def main() -> None:
    work = Path(sys.argv[1])
    request = json.loads((work / "request.json").read_text())
    if "split" in request:
        split(work, request["split"])
    if "probes" in request:
        probes(work, request["probes"])
    if "ranking" in request:
        ranking(work)
    if "pipeline" in request:
        pipeline(work, request["pipeline"])


if __name__ == "__main__":
    main()
