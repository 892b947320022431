"""`saekit train --model` and `saekit eval` on a tiny local model directory (the real loading code runs)."""

import json

import pytest
import torch

import saekit
from saekit.cli import main
from tests.helpers import save_tiny, tiny_llama, tiny_tokenizer, write_corpus


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tokenizer = tiny_tokenizer()
    return save_tiny(tmp_path_factory.mktemp("model") / "tiny", tiny_llama(len(tokenizer)), tokenizer)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_docs=80)


def test_train_from_a_model_then_eval_spliced(capsys, tmp_path, model_dir, corpus):
    source = ["--model", str(model_dir), "--dataset", str(corpus), "--context-size", "32",
              "--model-batch-size", "8"]
    code = main(["train", *source, "--hookpoints", "resid_post.0", "mlp_out.1", "--out", str(tmp_path / "o"),
                 "--method", "topk", "--k", "4", "--d-sae", "64", "--total-tokens", "3000",
                 "--batch-size", "256", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    dirs = sorted(p.parent for p in (tmp_path / "o").glob("*/*/cfg.json"))
    assert len(dirs) == 2
    hookpoints = {saekit.load(p).provenance.hookpoint for p in dirs}
    assert hookpoints == {"resid_post.0", "mlp_out.1"}
    assert all(saekit.load(p).provenance.model_name == str(model_dir) for p in dirs)
    # eval finds the model from the dictionaries' config, uses the held-out split, writes JSON.
    code = main(["eval", *map(str, dirs), "--dataset", str(corpus), "--context-size", "32",
                 "--tokens", "400", "--out", str(tmp_path / "eval.json")])
    out, err = capsys.readouterr()
    assert code == 0, err
    rows = json.loads((tmp_path / "eval.json").read_text())
    assert {row["hookpoint"] for row in rows} == hookpoints
    for row in rows:
        assert 0 < row["l0"] <= 4.0 + 1e-6
        assert row["ce_spliced"] > 0 and row["kl_spliced"] >= 0
        assert row["fvu"] < 1.0
    assert "ce_loss_score" in out


def test_model_source_errors_are_one_line(capsys, tmp_path, corpus):
    code = main(["train", "--model", str(tmp_path / "nowhere"), "--hookpoints", "resid_post.0",
                 "--dataset", str(corpus), "--out", str(tmp_path / "o"), "--method", "topk", "--k", "4",
                 "--d-sae", "8"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nowhere" in err
    code = main(["train", "--activations", "x.pt", "--model", "m", "--out", str(tmp_path / "o")])
    assert code == 2 and "exactly one activation source" in capsys.readouterr().err


def test_cross_layer_crosscoder_from_a_model(capsys, tmp_path, model_dir, corpus):
    code = main(["train", "--model", str(model_dir), "--dataset", str(corpus), "--context-size", "32",
                 "--hookpoints", "resid_post.0", "resid_post.1", "--source-hookpoints", "resid_post.0",
                 "resid_post.1", "--method", "batchtopk", "--k", "4", "--d-sae", "48", "--name", "xlayer",
                 "--total-tokens", "2048", "--batch-size", "256", "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    d = saekit.load(tmp_path / "o" / "xlayer")
    assert (d.d_in, d.cfg.n_sources, d.provenance.source_hookpoints) == (64, 2, ["resid_post.0", "resid_post.1"])
    assert d.W_dec.shape == (48, 64)


def test_training_from_a_model_cache_equals_training_live(capsys, tmp_path, model_dir, corpus):
    source = ["--dataset", str(corpus), "--context-size", "32", "--model-batch-size", "8"]
    train = ["--method", "topk", "--k", "4", "--d-sae", "64", "--total-tokens", "2048", "--batch-size", "256",
             "--no-progress"]
    code = main(["cache", "--model", str(model_dir), "--hookpoints", "resid_post.1", *source, "--tokens", "2600",
                 "--out", str(tmp_path / "cache")])
    assert code == 0, capsys.readouterr().err
    # --no-shuffle: the live stream is already shuffled by its window buffer, the cache keeps its order
    code = main(["train", "--from-cache", str(tmp_path / "cache"), "--no-shuffle", *train, "--out",
                 str(tmp_path / "a")])
    assert code == 0, capsys.readouterr().err
    code = main(["train", "--model", str(model_dir), "--hookpoints", "resid_post.1", *source, *train,
                 "--out", str(tmp_path / "b")])
    assert code == 0, capsys.readouterr().err
    cached, live = saekit.load(tmp_path / "a" / "topk-k4-64"), saekit.load(tmp_path / "b" / "topk-k4-64")
    for (name, t1), t2 in zip(cached.weights().items(), live.weights().values()):
        assert torch.equal(t1, t2), name


def test_hookpoints_lists_named_sites_and_modules(capsys, model_dir):
    assert main(["hookpoints", str(model_dir)]) == 0
    out = capsys.readouterr().out
    sites = dict(line.split() for line in out.split("modules:")[0].splitlines()[1:])
    assert sites["resid_post.1"] == "model.layers.1" and sites["mlp_in.0"] == "model.layers.0.mlp:input"
    assert "model.layers.0.self_attn" in out and "attn_out.1" in out
    assert main(["hookpoints", str(model_dir), "--depth", "0"]) == 2


def test_a_sweep_file_data_section_sets_the_text(capsys, tmp_path, model_dir, corpus):
    """[data] is read (flags still win): the recorded dataset and context size come from it."""
    config = tmp_path / "sweep.toml"
    config.write_text(f"[data]\ndataset = '{corpus}'\ncontext_size = 24\nmodel_batch_size = 4\n\n"
                      "[train]\ntotal_tokens = 512\nbatch_size = 128\n\n"
                      "[[dictionaries]]\nmethod = 'topk'\nd_sae = 16\nk = 2\n")
    code = main(["train", "--config", str(config), "--model", str(model_dir), "--hookpoints", "resid_post.0",
                 "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    d = saekit.load(tmp_path / "o" / "topk-k2-16")
    assert (d.provenance.dataset, d.provenance.context_size) == (str(corpus), 24)
    config.write_text(config.read_text().replace("context_size = 24", "context_size = 'long'"))
    code = main(["train", "--config", str(config), "--model", str(model_dir), "--hookpoints", "resid_post.0",
                 "--out", str(tmp_path / "o2"), "--no-progress"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1 and "context_size must be an integer" in errors[0]
