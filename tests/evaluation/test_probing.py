"""Sparse probing: the sae-probes data and split (read from the installed wheel), the probe and the
latent selection checked against sae-probes' own functions, the spec's checks (identity "SAE" with
k = d reproduces the baseline AUC; a 5000-row dataset splits 1024 (512/512) / 3975 (1988/1987)), and
the pipeline and `saekit eval --probing` on a tiny model with a small dataset in sae-probes' format."""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import json
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch

import saekit
from saekit.cli import main
from saekit.config import DictionaryConfig, Provenance
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.evaluation.probing import ProbingOptions, sparse_probing
from saekit.evaluation.probing import activations as probing_activations
from saekit.evaluation.probing.activations import last_token_activations, tokenise_prompts
from saekit.evaluation.probing.data import (
    binary_datasets,
    data_directory,
    normal_split_sizes,
    read_dataset,
    split_indices,
)
from saekit.evaluation.probing.probes import fit_probe, mean_activation_normalised, rank_latents, sparse_probes
from saekit.models.sites import resolve_hookpoints
from tests.helpers import randomize, save_tiny, tiny_llama, tiny_tokenizer

POSITIVE, NEGATIVE = ["cat", "dog", "mat"], ["red", "blue", "sad"]
FILLER = ["the", "a", "sat", "on", "and", "ran", "to", "park", "it", "was", "big"]


# --------------------------------------------------------------------------- the wheel's data
def test_wheel_holds_113_balanced_binary_datasets():
    folder = data_directory()
    names = binary_datasets(folder)
    assert len(names) == 113 and names[0] == "5_hist_fig_ismale" and names[-1] == "163_agnews_2"
    toxic = read_dataset("95_toxic_is", folder)
    assert toxic.full_size == 728 and toxic.labels.sum() == 364


def test_5000_row_dataset_splits_as_the_spec_says():
    data = read_dataset("5_hist_fig_ismale", data_directory())
    assert data.full_size == len(data.labels) == 5000
    num_train, num_test = normal_split_sizes(data.full_size, len(data.labels))
    assert (num_train, num_test) == (1024, 3975)
    train, test = split_indices(data.labels, num_train, num_test)
    assert (data.labels[train].sum(), (1 - data.labels[train]).sum()) == (512, 512)
    assert (data.labels[test].sum(), (1 - data.labels[test]).sum()) == (1988, 1987)
    assert len(np.intersect1d(train, test)) == 0 and len(set(train)) == 1024


def test_labels_are_encoded_alphabetically():
    data = read_dataset("65_high-school", data_directory())
    frame = pd.read_csv(data_directory() / "cleaned_data" / "65_high-school.csv.zst", compression="zstd")
    assert np.array_equal(data.labels, (frame["target"] == "not_bigram").to_numpy().astype(int))


def test_unknown_dataset_and_missing_data_are_one_line_errors(tmp_path):
    with pytest.raises(SaekitError, match="did you mean 117_us_state_FL"):
        read_dataset("us_state_FL", data_directory())
    with pytest.raises(SaekitError, match="no probing_datasets_MASTER"):
        data_directory(tmp_path)


# --------------------------------------------------------------------------- against sae-probes' code
@pytest.fixture
def peer(monkeypatch):
    """sae-probes' own `utils_data` and `utils_training`, loaded from the installed wheel's files with
    the modules they import but these functions never use (TransformerLens, xgboost) stubbed."""
    folder = data_directory().parent
    package = types.ModuleType("sae_probes")
    package.__path__ = [str(folder)]
    package.__spec__ = importlib.machinery.ModuleSpec("sae_probes", None, is_package=True)
    package.__spec__.submodule_search_locations = [str(folder)]
    monkeypatch.setitem(sys.modules, "sae_probes", package)
    activations = types.ModuleType("sae_probes.generate_model_activations")
    activations.ensure_dataset_activations = None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sae_probes.generate_model_activations", activations)
    monkeypatch.setitem(sys.modules, "xgboost", types.ModuleType("xgboost"))
    modules = {}
    for name in ("constants", "utils_data", "utils_training"):
        spec = importlib.util.spec_from_file_location(f"sae_probes.{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, f"sae_probes.{name}", module)
        spec.loader.exec_module(module)
        modules[name] = module
    # run_sae_evals.py reads every dataset at import; take only its two selection functions
    tree = ast.parse((folder / "run_sae_evals.py").read_text())
    wanted = [node for node in tree.body if isinstance(node, ast.FunctionDef)
              and node.name in ("get_sorted_indices", "mean_act_normalization")]
    namespace = {"torch": torch, "Callable": object}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), "run_sae_evals.py", "exec"), namespace)
    modules["run_sae_evals"] = types.SimpleNamespace(**namespace)
    return types.SimpleNamespace(**modules)


def test_split_equals_sae_probes(peer):
    for name in ("5_hist_fig_ismale", "95_toxic_is", "117_us_state_FL"):
        data = read_dataset(name, data_directory())
        sizes = normal_split_sizes(data.full_size, len(data.labels))
        ours = split_indices(data.labels, *sizes, seed=42)
        theirs = peer.utils_data.get_train_test_indices(data.labels, *sizes, 0.5, 42)
        assert all(np.array_equal(a, b) for a, b in zip(ours, theirs))
        labels = peer.utils_data.get_yvals(name)
        assert np.array_equal(labels[:5000], data.labels)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")  # sae-probes' sklearn calls
@pytest.mark.parametrize("rows", [8, 90, 400])  # leave-2-out, 6-fold, one hold-out
@pytest.mark.parametrize("penalty", ["l1", "l2"])
def test_probe_equals_sae_probes_find_best_reg(peer, rows, penalty):
    rng = np.random.default_rng(rows)
    x = rng.normal(size=(rows + 200, 6))
    y = (x @ rng.normal(size=6) + rng.normal(size=len(x)) > 0).astype(int)
    y[:2] = [0, 1]
    ours = fit_probe(x[:rows], y[:rows], x[rows:], y[rows:], penalty, seed=42)
    theirs = peer.utils_training.find_best_reg(x[:rows], y[:rows], x[rows:], y[rows:], penalty=penalty, seed=42)
    assert ours.test_auc == pytest.approx(theirs.metrics.test_auc, abs=1e-12)
    assert ours.val_auc == pytest.approx(theirs.metrics.val_auc, abs=1e-12)
    assert ours.test_acc == theirs.metrics.test_acc and ours.test_f1 == pytest.approx(theirs.metrics.test_f1)


def test_latent_ranking_equals_sae_probes(peer):
    rng = np.random.default_rng(0)
    latents = np.maximum(rng.normal(size=(300, 50)), 0) * rng.exponential(size=50)
    latents[:, 7] = 0  # a dead latent
    y = rng.integers(0, 2, 300)
    latents[y == 1, 3] += 1.5
    theirs = peer.run_sae_evals.get_sorted_indices(torch.tensor(latents), torch.tensor(y),
                                                   peer.run_sae_evals.mean_act_normalization)
    ours = rank_latents(latents, y)
    assert np.array_equal(ours[:49], theirs.numpy()[:49]) and ours[0] == 3 and ours[-1] == 7
    assert np.allclose(mean_activation_normalised(latents),
                       peer.run_sae_evals.mean_act_normalization(torch.tensor(latents)).numpy())


# --------------------------------------------------------------------------- spec check (1)
def test_identity_sae_with_k_equal_d_reproduces_the_baseline():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(700, 24)).astype(np.float32)
    y = (x @ rng.normal(size=24) + 2 * rng.normal(size=700) > 0).astype(int)
    baseline = fit_probe(x[:500], y[:500], x[500:], y[500:], "l2")
    probes = sparse_probes(x[:500], y[:500], x[500:], y[500:], ks=[24], penalty="l2")
    assert probes[0]["test_auc"] == pytest.approx(baseline.test_auc, abs=1e-12)
    assert probes[0]["C"] == baseline.C and sorted(probes[0]["indices"]) == list(range(24))


# --------------------------------------------------------------------------- the pipeline, tiny model
def write_probing_data(folder, rows: int = 300, seed: int = 0) -> str:
    """A dataset in sae-probes' format whose label is the kind of the prompt's last word."""
    rng = np.random.default_rng(seed)
    prompts, targets = [], []
    for i in range(rows):
        label = i % 2
        words = list(rng.choice(FILLER, size=rng.integers(2, 9))) + [rng.choice(POSITIVE if label else NEGATIVE)]
        prompts.append(" ".join(words))
        targets.append("yes" if label else "no")
    (folder / "cleaned_data").mkdir(parents=True)
    pd.DataFrame({"prompt": prompts, "prompt_len": [len(p) for p in prompts], "target": targets}).to_csv(
        folder / "cleaned_data" / "1_last_word.csv.zst", index=False, compression="zstd")
    pd.DataFrame({"Dataset Tag": ["last_word", "other"], "Dataset save name": ["cleaned_data/1_last_word.csv",
                                                                             "cleaned_data/2_other.csv"],
                  "Data type": ["Binary Classification", "Continuous Data"]}).to_csv(
        folder / "probing_datasets_MASTER.csv.zst", index=False, compression="zstd")
    return "1_last_word"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("probing")
    tokenizer = tiny_tokenizer()
    model = tiny_llama(len(tokenizer))
    save_tiny(root / "model", model, tokenizer)
    write_probing_data(root / "data")
    return types.SimpleNamespace(root=root, model=model, tokenizer=tokenizer)


def test_last_token_activations_equal_one_unpadded_forward(tiny):
    prompts = ["the cat", "a dog sat on the mat and ran", "red"]
    point = resolve_hookpoints(tiny.model, ["resid_post.0"])[0]
    batched = last_token_activations(tiny.model, tiny.tokenizer, prompts, point, batch_size=3)
    ids = tokenise_prompts(tiny.tokenizer, prompts)
    assert all(row[0] == tiny.tokenizer.bos_token_id for row in ids)  # BOS first, as TransformerLens
    for row, prompt_ids in zip(batched, ids):
        with torch.no_grad():
            hidden = tiny.model(torch.tensor([prompt_ids]), output_hidden_states=True).hidden_states[1]
        assert np.allclose(row, hidden[0, -1].numpy(), atol=1e-5)
    assert tokenise_prompts(tiny.tokenizer, ["the cat sat on the mat"], max_length=3)[0] == \
        [tiny.tokenizer.bos_token_id] + tiny.tokenizer("on the mat")["input_ids"][-2:]


def identity_dictionary(d: int, hookpoint: str) -> Dictionary:
    dictionary = Dictionary(DictionaryConfig(method="relu", d_in=d, d_sae=d)).eval()
    dictionary.provenance = Provenance(model_name="tiny", hookpoint=hookpoint)
    dictionary.encode = lambda x: x  # type: ignore[method-assign]  # the identity "SAE" of the spec
    return dictionary


def test_identity_sae_end_to_end_matches_the_baseline(tiny):
    identity = identity_dictionary(32, "resid_post.1")
    options = ProbingOptions(ks=[32], penalty="l2", data_dir=tiny.root / "data")
    result = sparse_probing(tiny.model, tiny.tokenizer, {"identity": identity}, ["1_last_word"], options)
    row = result["rows"][0]
    assert (row["n_train"], row["n_test"]) == (200, 99)
    assert row["auc_k32"] == pytest.approx(row["baseline_auc"], abs=1e-12)
    assert row["baseline_auc"] > 0.9  # the last word is in the last token's activation


def test_pipeline_caches_activations_and_shares_a_hookpoint(tiny, tmp_path, monkeypatch):
    a = randomize(Dictionary(DictionaryConfig(method="topk", d_in=32, d_sae=48, k=6)), seed=1).eval()
    b = randomize(Dictionary(DictionaryConfig(method="relu", d_in=32, d_sae=40)), seed=2).eval()
    for d in (a, b):
        d.provenance = Provenance(model_name="tiny", hookpoint="resid_post.0")
    options = ProbingOptions(ks=[1, 2, 5], data_dir=tiny.root / "data", cache_dir=tmp_path)
    first = sparse_probing(tiny.model, tiny.tokenizer, {"a": a, "b": b}, ["1_last_word"], options)
    assert [row["dictionary"] for row in first["rows"]] == ["a", "b"]
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1  # one model pass for both dictionaries
    for row in first["rows"]:
        assert [len(p["indices"]) for p in row["probes"]] == [1, 2, 5]
        assert all(0.0 <= row[f"auc_k{k}"] <= 1.0 for k in (1, 2, 5))
    assert first["rows"][0]["baseline_auc"] == first["rows"][1]["baseline_auc"]

    def no_model(*_args, **_kwargs):
        raise AssertionError("the cached activations should have been used")

    monkeypatch.setattr("saekit.evaluation.probing.run.last_token_activations", no_model)
    again = sparse_probing(tiny.model, tiny.tokenizer, {"a": a, "b": b}, ["1_last_word"], options)
    assert [r["auc_k5"] for r in again["rows"]] == [r["auc_k5"] for r in first["rows"]]
    fingerprint = probing_activations.model_fingerprint
    assert fingerprint(tiny.model) != fingerprint(tiny_llama(len(tiny.tokenizer), seed=1))
    threads = torch.get_num_threads()
    try:  # exact bytes, no float sums: the id does not depend on the thread count
        torch.set_num_threads(2)
        assert fingerprint(tiny.model) == fingerprint(tiny_llama(len(tiny.tokenizer), seed=0))
    finally:
        torch.set_num_threads(threads)


def test_eval_probing_command(capsys, tiny, tmp_path):
    d = randomize(Dictionary(DictionaryConfig(method="topk", d_in=32, d_sae=48, k=6)), seed=1).eval()
    d.provenance = Provenance(model_name=str(tiny.root / "model"), hookpoint="resid_post.1")
    saekit.save(d, tmp_path / "dict")
    args = ["eval", str(tmp_path / "dict"), "--probing", "--probing-data", str(tiny.root / "data"),
            "--datasets", "1_last_word", "--ks", "1", "4", "--no-progress", "--out", str(tmp_path / "p.json")]
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "baseline_auc" in out and "auc_k4" in out and "mean test AUC over datasets" in out
    saved = json.loads((tmp_path / "p.json").read_text())
    assert saved["rows"][0]["dataset"] == "1_last_word" and (tmp_path / "p.png").stat().st_size > 0
    assert main(["eval", "--probing", "--list-datasets", "--probing-data", str(tiny.root / "data")]) == 0
    assert capsys.readouterr().out.split() == ["1_last_word"]
    code = main([*args[:6], "nope", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "unknown sae-probes dataset 'nope'" in err
