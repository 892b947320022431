"""The real offline default model (SmolLM2-135M-Instruct, installed by scripts/setup.sh) end to end on a
few thousand tokens of the offline text: slower than the tiny-model tests, and run by CI all the same."""

import json

import pytest
import torch

import saekit
from saekit.cli import main
from saekit.models.loading import load_model


@pytest.fixture(scope="module")
def smollm2():
    return load_model("offline-default")


def test_the_offline_model_is_the_real_pretrained_one(smollm2):
    model, tokenizer = smollm2
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (30, 576)
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])


def test_train_and_eval_on_the_offline_model(tmp_path, capsys, smollm2):
    code = main(["train", "--model", "offline-default", "--hookpoints", "resid_post.3", "--method", "topk",
                 "--k", "16", "--d-sae", "1152", "--total-tokens", "3072", "--batch-size", "512",
                 "--out", str(tmp_path / "run"), "--no-progress", "--context-size", "64"])
    assert code == 0, capsys.readouterr().err
    d = saekit.load(tmp_path / "run" / "topk-k16-1152")
    assert (d.d_in, d.provenance.hookpoint, d.provenance.model_name) == (576, "resid_post.3", "offline-default")
    code = main(["eval", str(tmp_path / "run" / "topk-k16-1152"), "--tokens", "512", "--context-size", "64",
                 "--out", str(tmp_path / "eval.json")])
    assert code == 0, capsys.readouterr().err
    row = json.loads((tmp_path / "eval.json").read_text())[0]
    assert row["ce_zero_ablation"] > row["ce_spliced"] > row["ce_clean"] > 0
    assert 0 < row["ce_loss_score"] < 1 and 0 < row["fvu"] < 1 and row["l0"] <= 16 + 1e-6
