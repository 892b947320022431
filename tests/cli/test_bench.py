"""`saekit bench synth`: one sweep over every requested method and L0, the table, results.json, the plot;
and the published-orderings check it prints."""

from __future__ import annotations

import json

import pytest

from saekit.cli import main
from saekit.experiments.synth import bench_preset, bench_spec, published_orderings


def test_bench_synth_trains_every_method_at_every_l0_and_writes_results(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "synth", "--preset", "cpu", "--methods", "topk", "relu", "matryoshka",
                 "--l0s", "3", "6", "--samples", "8192", "--eval-samples", "2048", "--d-sae", "32",
                 "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    rows = result["rows"]
    assert [(r["method"], r["target_l0"]) for r in rows] == [
        ("topk", 3.0), ("relu", 3.0), ("matryoshka", 3.0), ("topk", 6.0), ("relu", 6.0), ("matryoshka", 6.0)]
    for row in rows:
        assert 0 <= row["mcc"] <= 1 and 0 <= row["f1"] <= 1 and row["samples"] == 2048
        assert row["true_l0"] == pytest.approx(9.3, rel=0.1)
    assert rows[0]["l0"] <= 3 and rows[3]["l0"] <= 6  # TopK: k = L0
    assert (out / "mcc-f1-vs-l0.png").read_bytes()[:4] == b"\x89PNG"
    assert "mcc" in (out / "table.txt").read_text()
    assert "published orderings" in printed and "Matryoshka has the best F1" in printed
    assert result["preset"]["reference_l0"] == 6.0  # the middle of the L0s given


def test_bench_synth_bad_input_is_one_line(capsys):
    assert main(["bench", "synth", "--samples", "0"]) == 2
    assert "--samples must be positive" in capsys.readouterr().err
    assert main(["bench", "synth", "--methods", "nope", "--samples", "1024"]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_bench_synth_refuses_an_output_folder_saekit_did_not_write(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["bench", "synth", "--methods", "topk", "--samples", "1024", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "was not written by saekit" in err and "--overwrite" in err and "Traceback" not in err
    assert (out / "notes.txt").read_text() == "keep me" and not (out / "results.json").exists()


def test_bench_spec_gives_k_or_a_target_and_the_published_prefix_fractions():
    preset = bench_preset("16k")
    assert bench_spec(preset, "batchtopk", 25, 768).dictionary.k == 25
    relu = bench_spec(preset, "relu", 25, 768)
    assert relu.training.target_l0 == 25.0 and relu.training.sparsity_coefficient == 5.0
    assert bench_spec(preset, "matryoshka", 25, 768).dictionary.matryoshka_prefixes == [128, 512, 2048, 4096]
    assert bench_spec(preset, "matching_pursuit", 25, 768).dictionary.k == 25


def test_published_orderings_are_checked_on_the_reference_rows():
    values = {  # the published L0-25 table: every ordering holds
        "batchtopk": (0.7316, 0.7574, 0.9837, 0.7923), "matryoshka": (0.8793, 0.7927, 0.9987, 0.7792),
        "matching_pursuit": (0.4464, 0.6930, 0.8281, 0.8351), "relu": (0.5562, 0.6039, 0.8976, 0.7654),
        "jumprelu": (0.7317, 0.7527, 0.9885, 0.7951)}
    rows = [dict(method=m, target_l0=25.0, f1=f, mcc=c, uniqueness=u, explained_variance=e)
            for m, (f, c, u, e) in values.items()]
    assert all(claim["holds"] for claim in published_orderings(rows, 25.0))
    rows[0]["f1"] = 0.95  # BatchTopK now has the best F1 and is no longer ≈ JumpReLU
    verdicts = {c["claim"]: c["holds"] for c in published_orderings(rows, 25.0)}
    assert verdicts["Matryoshka has the best F1"] is False
    assert verdicts["BatchTopK ≈ JumpReLU (F1 and MCC within 0.03)"] is False
    assert verdicts["Matryoshka has the best MCC"] is True
    # without the rows of the reference L0 nothing is measured
    assert all(c["holds"] is None for c in published_orderings(rows, 7.0))
