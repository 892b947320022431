"""The command line on a tiny model: a transcoder set and a CLT from one forward, then eval (replacement
model), report, dashboards (per layer, CLT decoder norms), info and convert; bad input is one line."""

from __future__ import annotations

import json

import pytest
import torch

import saekit
from saekit.circuits import CrossLayerTranscoder
from saekit.circuits.transcoder_set import TranscoderSet
from saekit.cli import main
from saekit.io import OWNER_MARK
from tests.helpers import save_tiny, tiny_llama, tiny_tokenizer, write_corpus


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("circuits_cli")
    tokenizer = tiny_tokenizer()
    model_dir = save_tiny(root / "model", tiny_llama(len(tokenizer), layers=3), tokenizer)
    corpus = write_corpus(root / "corpus", n_docs=80)
    common = ["--model", str(model_dir), "--dataset", str(corpus), "--context-size", "32", "--model-batch-size", "8"]
    code = main(["train", *common, "--transcoders", "all", "--clt", "all", "--method", "batchtopk", "--k", "4",
                 "--d-sae", "64", "--total-tokens", "4096", "--batch-size", "512", "--normalization-tokens", "1024",
                 "--log-every", "2", "--no-progress", "--out", str(root / "run")])
    assert code == 0
    return root, common


def test_train_writes_a_set_and_a_clt_from_one_forward(setup):
    root, _ = setup
    run = root / "run"
    tset, clt = saekit.load(run / "transcoders-batchtopk-k4-64"), saekit.load(run / "clt-batchtopk-k4-64")
    assert isinstance(tset, TranscoderSet) and tset.layers == [0, 1, 2] and tset[0].cfg.k == 4
    assert isinstance(clt, CrossLayerTranscoder) and clt.layers == [0, 1, 2]
    assert tset[1].provenance.hookpoint == "mlp_in.1" and tset[1].provenance.target_hookpoint == "mlp_out.1"
    assert clt.meta["training_tokens"] == 4096 and len(clt.meta["normalization"]["input_scale"]) == 3
    rows = [json.loads(line) for line in (run / "checkpoints" / "log.jsonl").read_text().splitlines()]
    names = {row["dictionary"] for row in rows}
    assert names == {f"transcoders-batchtopk-k4-64.layer_{i}" for i in range(3)} | {"clt-batchtopk-k4-64"}
    clt_row = next(row for row in rows if row["dictionary"] == "clt-batchtopk-k4-64")
    assert {f"{m}.layer_{i}" for m in ("fvu", "l0", "dead_fraction") for i in range(3)} <= set(clt_row)


def test_eval_report_dashboard_info_convert(setup, capsys):
    root, common = setup
    run = root / "run"
    capsys.readouterr()
    assert main(["eval", str(run / "transcoders-batchtopk-k4-64"), str(run / "clt-batchtopk-k4-64"), "--tokens", "300",
                 "--no-progress", "--out", str(root / "eval.json"), *common[2:]]) == 0
    out = capsys.readouterr().out
    assert "every MLP replaced at once" in out
    rows = json.loads((root / "eval.json").read_text())
    assert [r["kind"] for r in rows] == ["transcoder_set", "cross_layer_transcoder"]
    for row in rows:
        assert len(row["layers"]) == 3 and {"ce_replaced", "kl_replaced", "ce_loss_score"} <= set(row)
        assert all({"fvu", "l0", "dead_fraction", "delta_lm_loss", "kl_spliced"} <= set(r) for r in row["layers"])

    assert main(["report", str(run), "--eval", str(root / "eval.json")]) == 0
    html = (run / "report.html").read_text()
    assert 'id="layers-training"' in html and 'id="layers-eval"' in html and "every MLP replaced at once" in html

    site = root / "site"
    assert main(["dashboard", str(run / "clt-batchtopk-k4-64"), "--tokens", "300", "--no-progress", "--out", str(site),
                 *common[2:]]) == 0
    index = (site / "index.html").read_text()
    assert 'href="layer_2/index.html"' in index and "<script" not in index
    page = next(p for p in sorted((site / "layer_0" / "latents").glob("*.html")) if "Top activations" in p.read_text())
    text = page.read_text()
    assert 'id="decoder-norms"' in text and "layer 2</td>" in text  # layer 0's latent writes into layers 0..2
    assert main(["dashboard", str(run / "transcoders-batchtopk-k4-64"), "--tokens", "300", "--layers", "1",
                 "--no-progress", "--out", str(root / "site2"), *common[2:]]) == 0
    assert sorted(p.name for p in (root / "site2").iterdir() if p.name != OWNER_MARK) == ["index.html", "layer_1"]

    capsys.readouterr()
    assert main(["info", str(run / "clt-batchtopk-k4-64")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "cross_layer_transcoder" and info["decoder_pairs"] == 6
    assert main(["convert", str(run / "transcoders-batchtopk-k4-64"), str(root / "ct"), "--to", "circuit-tracer"]) == 0
    x = torch.randn(10, 3, 32)
    torch.testing.assert_close(saekit.load(root / "ct")(x), saekit.load(run / "transcoders-batchtopk-k4-64")(x))


@pytest.mark.parametrize(("extra", "message"), [
    (["--transcoders", "0,5"], "layer 5 is out of range: the model has 3 layers"),
    (["--clt", "1:9"], "out of range"),
    (["--transcoders", "all", "--hookpoints", "resid_post.0"], "drop --hookpoints"),
    (["--clt", "all", "--skip-connection"], "skip_connection does not apply to cross-layer transcoders"),
    (["--transcoders", "all", "--max-reach", "1"], "are for cross-layer transcoders: add --clt"),
    (["--clt", "all", "--method", "gated"], "unknown cross-layer transcoder method 'gated'"),
])
def test_bad_layered_training_input_is_one_line(setup, capsys, extra, message):
    root, common = setup
    capsys.readouterr()
    code = main(["train", *common, "--method", "topk", "--k", "2", "--d-sae", "16", "--total-tokens", "512",
                 "--batch-size", "256", *extra, "--out", str(root / "bad")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("saekit")]  # (transformers' load bars aside)
    assert code == 2 and len(errors) == 1 and message in errors[0], err


def test_layered_outputs_replace_only_saekits_folders(setup, capsys, tmp_path):
    """A set's or CLT's folder in --out that saekit did not write is refused before any training; with
    --overwrite it is replaced."""
    _, common = setup
    foreign = tmp_path / "out" / "transcoders-topk-k2-16"
    foreign.mkdir(parents=True)
    (foreign / "keep.txt").write_text("mine")
    args = ["train", *common, "--transcoders", "0,1", "--method", "topk", "--k", "2", "--d-sae", "16",
            "--total-tokens", "512", "--batch-size", "256", "--normalization-tokens", "256", "--no-progress",
            "--out", str(tmp_path / "out")]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "was not written by saekit" in err and "--overwrite" in err and "training:" not in err
    assert (foreign / "keep.txt").read_text() == "mine" and not (tmp_path / "out" / "checkpoints").exists()
    assert main([*args, "--overwrite"]) == 0
    assert not (foreign / "keep.txt").exists() and isinstance(saekit.load(foreign), TranscoderSet)
