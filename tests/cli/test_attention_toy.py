"""`saekit attention-toy`: runs both stages of a toy and prints the table; bad input is one line."""

from __future__ import annotations

import json

from saekit.cli import main


def test_attention_toy_prints_the_table(capsys, tmp_path):
    code = main(["attention-toy", "--toys", "2H/3ST", "--model-epochs", "2", "--block-epochs", "2",
                 "--n-batches", "3", "--per-batch", "100", "--no-progress", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "2H/3ST" in out and "one_head" in out and "pass: each trigram by one head" in out
    (row,) = json.loads((tmp_path / "results.json").read_text())
    assert row["block_heads"] == 4 and row["one_head"].endswith("/3") and row["final_mse"] > 0
    assert row["toy_model"] == "saekit"
    assert row["settings"]["model_epochs"] == 2 and row["settings"]["alpha"] == 0.5


def test_attention_toy_bad_input_is_one_line(capsys):
    assert main(["attention-toy", "--toys", "9H/9ST"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown toy 9H/9ST" in err
    assert main(["attention-toy", "--block-lr", "-1", "--toys", "2H/3ST"]) == 2
    assert "--block-lr must be positive" in capsys.readouterr().err


def test_attention_toy_checks_and_uses_the_references_weights(capsys, tmp_path):
    from tests.attention.test_gated import write_reference_folder

    write_reference_folder(tmp_path)
    code = main(["attention-toy", "--toys", "2H/3ST", "--reference", str(tmp_path), "--block-epochs", "1",
                 "--n-batches", "2", "--per-batch", "50", "--no-progress", "--out", str(tmp_path / "out")])
    assert code == 0
    out = capsys.readouterr().out
    assert "shipped toy models and gated blocks, checked by saekit" in out
    (row,) = json.loads((tmp_path / "out" / "results.json").read_text())
    assert row["toy_model"] == "given"  # the reference's toy model was used, not trained
    assert row["data"] == "saekit" and not row["settings"]["reference_data"]
    code = main(["attention-toy", "--toys", "2H/3ST", "--reference", str(tmp_path), "--block-epochs", "1",
                 "--n-batches", "2", "--per-batch", "50", "--no-progress", "--reference-data", "--compile",
                 "--out", str(tmp_path / "out")])
    assert code == 0
    (row,) = json.loads((tmp_path / "out" / "results.json").read_text())
    assert row["data"] == "reference" and row["settings"]["compile"]
    assert main(["attention-toy", "--toys", "2H/3ST", "--reference", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "toy_model_2H_3ST.st" in err
