"""Sparse probing: the sae-probes data (unpacked from the wheel by `probing.fetch`) and its split, the
spec's checks (identity "SAE" with k = d reproduces the baseline AUC; a 5000-row dataset splits
1024 (512/512) / 3975 (1988/1987)), and the pipeline and `saekit eval --probing` on a tiny model with a
small dataset in sae-probes' format. The comparison with sae-probes' own code (split, probes, ranking,
activations and the whole pipeline) is tests/evaluation/test_probing_peer.py, in a side venv."""

from __future__ import annotations

import base64
import hashlib
import json
import types
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

import saekit
from saekit.cli import main
from saekit.config import DictionaryConfig, Provenance
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.evaluation.probing import ProbingOptions, fetch, sparse_probing
from saekit.evaluation.probing import activations as probing_activations
from saekit.evaluation.probing.activations import last_token_activations, tokenise_prompts
from saekit.evaluation.probing.data import (
    binary_datasets,
    cached_data_folder,
    data_directory,
    normal_split_sizes,
    read_dataset,
    split_indices,
)
from saekit.evaluation.probing.probes import fit_probe, sparse_probes
from saekit.io import OWNER_MARK
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


def test_data_is_the_wheel_unpacked_into_the_cache():
    """scripts/setup.sh runs `python -m saekit.evaluation.probing.fetch`; saekit reads that folder."""
    folder = data_directory()
    assert folder == cached_data_folder() and (folder / OWNER_MARK).is_file()
    assert len(list((folder / "cleaned_data").glob("*.csv.zst"))) == 155


def test_missing_data_names_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEKIT_CACHE", str(tmp_path))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # no sae-probes package either
    with pytest.raises(SaekitError, match="python -m saekit.evaluation.probing.fetch"):
        data_directory()


def fake_wheel(path, members: dict[str, bytes], record: list[tuple[str, bytes]] | None = None):
    """A zip laid out like the sae-probes wheel, its RECORD hashing `record` (default: the members)."""
    lines = []
    for name, data in (record if record is not None else list(members.items())):
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{name},sha256={digest},{len(data)}")
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr("sae_probes-0.4.2.dist-info/RECORD", "\n".join(lines) + "\n")
    return path


def test_fetch_unpacks_only_the_checked_data_folder(tmp_path, monkeypatch):
    members = {"sae_probes/__init__.py": b"import transformer_lens\n",
               "sae_probes/data/probing_datasets_MASTER.csv.zst": b"master",
               "sae_probes/data/cleaned_data/1_x.csv.zst": b"one",
               "sae_probes/data/OOD data/1_x_OOD.csv.zst": b"ood"}
    wheel = fake_wheel(tmp_path / "good.whl", members)
    with pytest.raises(SaekitError, match="is not the sae-probes 0.4.2 wheel from PyPI"):
        fetch.unpack_wheel(wheel, tmp_path / "out")
    monkeypatch.setattr(fetch, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    out = fetch.unpack_wheel(wheel, tmp_path / "out")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != OWNER_MARK)
    assert files == ["OOD data/1_x_OOD.csv.zst", "cleaned_data/1_x.csv.zst", "probing_datasets_MASTER.csv.zst"]
    assert (out / "cleaned_data" / "1_x.csv.zst").read_bytes() == b"one"
    fetch.unpack_wheel(wheel, out)  # a rerun replaces saekit's own folder

    tampered = fake_wheel(tmp_path / "tampered.whl", members,
                          record=[(n, b"other" if n.endswith("1_x.csv.zst") else d) for n, d in members.items()])
    escaping = fake_wheel(tmp_path / "escaping.whl", {**members, "sae_probes/data/../../evil": b"x"})
    for bad, message in ((tampered, "does not match the wheel's RECORD"), (escaping, "refusing the member")):
        monkeypatch.setattr(fetch, "WHEEL_SHA256", hashlib.sha256(bad.read_bytes()).hexdigest())
        with pytest.raises(SaekitError, match=message):
            fetch.unpack_wheel(bad, tmp_path / "bad")
        assert not (tmp_path / "bad").exists() and not (tmp_path / "evil").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not saekit's")
    monkeypatch.setattr(fetch, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    with pytest.raises(SaekitError, match="was not written by saekit"):
        fetch.unpack_wheel(wheel, tmp_path / "mine")


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
