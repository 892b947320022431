"""saekit's sparse probing against the real sae-probes 0.4.2 (PyPI), run in its own virtual environment.

`tests/evaluation/probes_env.sh` builds `.cache/probes-venv` (sae-probes with TransformerLens and SAELens;
saekit never imports them). One subprocess runs `probes_peer_helper.py` there; it answers with
sae-probes' own functions, and the tests compare saekit's results with those answers:

- the wheel's labels and the "normal" split of three datasets (5,000, 728 and 1,000-odd rows): identical;
- `find_best_reg` (L1 and L2, in the three validation regimes) vs `fit_probe`: AUCs equal to 1e-12;
- the latent ranking (`get_sorted_indices` with `mean_act_normalization`) vs `rank_latents`;
- the whole pipeline on the wheel's 95_toxic_is (728 prompts, the longest 1,270 tokens, so truncation to
  1,024 happens) with the offline default model's tokenizer on a small random Llama: sae-probes'
  activations (TransformerLens, its own tokenisation) vs saekit's (Hugging Face model, saekit's hooks),
  and `run_sae_eval` + `run_baseline_dataset_layer` vs `sparse_probing`: test AUCs, chosen latents and
  the baseline AUC.

Marked `peers` like tests/interop; SAEKIT_PEER_TESTS=0 skips them where PyPI is unreachable.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from saekit.config import DictionaryConfig, Provenance
from saekit.dictionary import Dictionary
from saekit.evaluation.probing import ProbingOptions, sparse_probing
from saekit.evaluation.probing.data import data_directory, normal_split_sizes, read_dataset, split_indices
from saekit.evaluation.probing.probes import fit_probe, mean_activation_normalised, rank_latents
from saekit.formats import detect
from saekit.models.loading import OFFLINE_NAME, cache_root
from tests.helpers import randomize
from tests.side_venv import side_python

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.timeout(1500)]

HERE = Path(__file__).resolve().parent
SPLIT_DATASETS = ["5_hist_fig_ismale", "95_toxic_is", "117_us_state_FL"]
PIPELINE_DATASET, KS = "95_toxic_is", [1, 2, 5, 16]
PROBE_ROWS = [8, 90, 400]  # leave-2-out, shuffled 6-fold, one hold-out


def probe_case(rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rows)
    x = rng.normal(size=(rows + 200, 6))
    y = (x @ rng.normal(size=6) + rng.normal(size=len(x)) > 0).astype(int)
    y[:2] = [0, 1]
    return {"x_train": x[:rows], "y_train": y[:rows], "x_test": x[rows:], "y_test": y[rows:]}


def ranking_case() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    latents = (np.maximum(rng.normal(size=(300, 50)), 0) * rng.exponential(size=50)).astype(np.float32)
    latents[:, 7] = 0  # a dead latent
    labels = rng.integers(0, 2, 300)
    latents[labels == 1, 3] += 1.5
    return latents, labels


@pytest.fixture(scope="session")
def probes_python() -> Path:
    return side_python(HERE / "probes_env.sh", "SAEKIT_PROBES_VENV", ".cache/probes-venv", "sae-probes")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A random 2-layer Llama (d 32) with the offline default model's tokenizer, saved as a folder."""
    source = cache_root() / "models" / OFFLINE_NAME
    assert (source / "tokenizer.json").is_file(), f"{source} is missing: run scripts/setup.sh"
    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = AutoModelForCausalLM.from_config(config).eval()
    folder = tmp_path_factory.mktemp("small-model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model, tokenizer


@pytest.fixture(scope="module")
def answers(probes_python, small_model, tmp_path_factory):
    """Run the sae-probes side once for every check."""
    work = tmp_path_factory.mktemp("sae-probes")
    np.savez(work / "probes_in.npz", **{f"{rows}/{key}": value for rows in PROBE_ROWS
                                       for key, value in probe_case(rows).items()})
    latents, labels = ranking_case()
    np.savez(work / "ranking_in.npz", latents=latents, labels=labels)
    dictionary = topk_dictionary()
    detect.save_as(dictionary, work / "sae", "saelens")
    request = {
        "split": SPLIT_DATASETS,
        "probes": [{"name": str(rows), "penalty": penalty} for rows in PROBE_ROWS for penalty in ("l1", "l2")],
        "ranking": True,
        "pipeline": {"model_dir": str(small_model[0]), "dataset": PIPELINE_DATASET,
                     "hook_name": "blocks.1.hook_resid_post", "sae_dir": str(work / "sae"), "ks": KS,
                     "max_seq_len": 1024},
    }
    (work / "request.json").write_text(json.dumps(request))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH="", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1")
    result = subprocess.run([str(probes_python), str(HERE / "probes_peer_helper.py"), str(work)], cwd=work,
                            capture_output=True, text=True, env=env, timeout=1200)
    if result.returncode != 0:
        pytest.fail("probes_peer_helper.py failed:\n" + (result.stdout + result.stderr)[-4000:])
    return work


def topk_dictionary() -> Dictionary:
    """A random TopK SAE on resid_post.1 of the small model (every call builds the same one); k large
    enough that more than 16 latents separate the classes on the training rows, so the k = 16 choice has
    no ties between latents that never fire (whose order sae-probes' argsort leaves open)."""
    dictionary = randomize(Dictionary(DictionaryConfig(method="topk", d_in=32, d_sae=64, k=24)), seed=3).eval()
    dictionary.provenance = Provenance(model_name="small", hookpoint="resid_post.1")
    return dictionary


def test_split_and_labels_equal_sae_probes(answers):
    theirs = np.load(answers / "split.npz")
    folder = data_directory()
    for name in SPLIT_DATASETS:
        data = read_dataset(name, folder)
        train, test = split_indices(data.labels, *normal_split_sizes(data.full_size, len(data.labels)), seed=42)
        assert np.array_equal(data.labels, theirs[f"{name}/labels"])
        assert np.array_equal(train, theirs[f"{name}/train"]) and np.array_equal(test, theirs[f"{name}/test"])


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
def test_probe_equals_find_best_reg(answers):
    theirs = json.loads((answers / "probes.json").read_text())
    assert len(theirs) == 2 * len(PROBE_ROWS)
    for answer in theirs:
        case = probe_case(int(answer["name"]))
        ours = fit_probe(case["x_train"], case["y_train"], case["x_test"], case["y_test"], answer["penalty"], seed=42)
        assert ours.test_auc == pytest.approx(answer["test_auc"], abs=1e-12), answer
        assert ours.val_auc == pytest.approx(answer["val_auc"], abs=1e-12), answer
        assert answer["C"] == ours.C and ours.test_acc == answer["test_acc"]
        assert ours.test_f1 == pytest.approx(answer["test_f1"], abs=1e-12)


def test_latent_ranking_equals_sae_probes(answers):
    theirs = np.load(answers / "ranking.npz")
    latents, labels = ranking_case()
    ours = rank_latents(latents, labels)
    # the dead latent ties with nothing else live; torch.argsort leaves the order of exact ties open
    assert np.array_equal(ours[:49], theirs["order"][:49]) and ours[0] == 3 and ours[-1] == 7
    assert np.allclose(mean_activation_normalised(latents), theirs["normalised"], rtol=1e-6)


@pytest.fixture(scope="module")
def pipeline(answers, small_model):
    _folder, model, tokenizer = small_model
    options = ProbingOptions(ks=KS, max_length=1024)
    result = sparse_probing(model, tokenizer, {"topk": topk_dictionary()}, [PIPELINE_DATASET], options)
    out = answers / "pipeline"
    sae = json.loads(next((out / "sae_probes_tiny" / "normal_setting").glob("*.json")).read_text())
    baseline = json.loads(next((out / "baseline_results_tiny" / "normal_setting").glob("*.json")).read_text())
    return result["rows"][0], sae, baseline[0], np.load(out / "activations.npy")


def test_activations_equal_transformer_lens_through_sae_probes(pipeline, small_model):
    from saekit.evaluation.probing.activations import last_token_activations
    from saekit.models.sites import resolve_hookpoints

    _folder, model, tokenizer = small_model
    *_rest, theirs = pipeline
    data = read_dataset(PIPELINE_DATASET, data_directory())
    point = resolve_hookpoints(model, ["resid_post.1"])[0]
    ours = last_token_activations(model, tokenizer, data.prompts, point, batch_size=16, max_length=1024)
    assert ours.shape == theirs.shape == (728, 32)
    assert np.abs(ours - theirs).max() < 1e-5 * np.abs(theirs).max()


def test_sparse_probing_equals_run_sae_eval_and_the_baseline(pipeline):
    row, sae, baseline, _activations = pipeline
    assert [entry["k"] for entry in sae] == KS
    pair = 1 / (row["n_test"] // 2 * (row["n_test"] - row["n_test"] // 2))  # one positive/negative pair
    for entry, probe in zip(sae, row["probes"]):
        assert probe["k"] == entry["k"]
        assert list(probe["indices"]) == entry["indices"]
        # saga stops at max_iter on some C, so activations equal to ~1e-7 can move a test pair or two
        assert row[f"auc_k{entry['k']}"] == pytest.approx(entry["test_auc"], abs=2.5 * pair)
    assert row["baseline_auc"] == pytest.approx(baseline["test_auc"], abs=1e-9)  # lbfgs converges
    assert (row["n_train"], row["n_test"]) == (baseline["num_train"], 728 - baseline["num_train"] - 1)
