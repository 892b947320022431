import json
import subprocess
import sys

import numpy as np
import pytest

import saekit
from saekit.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("toy", "train", "info"):
        assert command in out


def test_train_help_comes_from_config_fields(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "Active latents per token" in out and "--sparsity-coefficient" in out
    assert "--total-tokens" in out


@pytest.fixture
def activations(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "acts.npy"
    np.save(path, rng.standard_normal((3000, 16)).astype(np.float32))
    return path


@pytest.mark.parametrize("flags, message", [
    (["--method", "topk", "--k", "-3"], "k must be a positive integer"),
    (["--method", "topk", "--k", "100"], "exceeds d_sae"),
    (["--method", "nope"], "unknown method"),
    (["--method", "topk"], "needs k"),
    (["--method", "relu", "--lr", "-1"], "lr must be positive"),
    (["--method", "relu", "--total-tokens", "10"], "less than one batch"),
])
def test_bad_values_give_one_line_errors(capsys, tmp_path, activations, flags, message):
    code, _, err = run_cli(capsys, "train", "--activations", str(activations), "--out",
                           str(tmp_path / "o"), "--d-sae", "32", "--batch-size", "256", *flags)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_files_give_one_line_errors(capsys, tmp_path, activations):
    code, _, err = run_cli(capsys, "train", "--activations", str(tmp_path / "missing.npy"),
                           "--out", str(tmp_path / "o"), "--method", "relu", "--d-sae", "8")
    assert code == 2 and "not found" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "train", "--config", str(tmp_path / "sweep.toml"),
                           "--activations", str(activations), "--out", str(tmp_path / "o"))
    assert code == 2 and "config file not found" in err
    code, _, err = run_cli(capsys, "info", str(tmp_path / "nothing"))
    assert code == 2 and "no such dictionary" in err


def test_bad_config_file_is_one_line_error(capsys, tmp_path, activations):
    (tmp_path / "bad.toml").write_text("[train\nfoo=")
    code, _, err = run_cli(capsys, "train", "--config", str(tmp_path / "bad.toml"),
                           "--activations", str(activations), "--out", str(tmp_path / "o"))
    assert code == 2 and "cannot parse" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "unknown.toml").write_text("[[dictionaries]]\nmethod='topk'\nkay=3\n")
    code, _, err = run_cli(capsys, "train", "--config", str(tmp_path / "unknown.toml"),
                           "--activations", str(activations), "--out", str(tmp_path / "o"))
    assert code == 2 and "kay" in err


@pytest.mark.parametrize("suffix, text", [
    (".toml", "[train]\ntotal_tokens = 2560\nbatch_size = 256\n\n[[dictionaries]]\nmethod = 'topk'\n"
              "d_sae = 32\nk = 4\n\n[[dictionaries]]\nmethod = 'relu'\nd_sae = 32\n"),
    (".yaml", "train: {total_tokens: 2560, batch_size: 256}\ndictionaries:\n"
              "  - {method: topk, d_sae: 32, k: 4}\n  - {method: relu, d_sae: 32}\n"),
])
def test_train_sweep_from_config_file(capsys, tmp_path, activations, suffix, text):
    config = tmp_path / f"sweep{suffix}"
    config.write_text(text)
    code, out, err = run_cli(capsys, "train", "--config", str(config), "--activations",
                             str(activations), "--out", str(tmp_path / "o"), "--no-progress")
    assert code == 0, err
    saved = sorted(p.name for p in (tmp_path / "o").iterdir() if (p / "cfg.json").exists())
    assert saved == ["relu-l5-32", "topk-k4-32"]
    d = saekit.load(tmp_path / "o" / "topk-k4-32")
    assert d.cfg.d_in == 16 and d.meta["training_tokens"] == 2560
    code, out, _ = run_cli(capsys, "info", str(tmp_path / "o" / "topk-k4-32"))
    assert code == 0 and json.loads(out)["dictionary"]["k"] == 4


def test_cli_entry_point_prints_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "saekit.cli", "toy", "--methods", "nope",
                             "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown method" in result.stderr and "Traceback" not in result.stderr


def test_toy_command_small_problem(capsys, tmp_path):
    # 2x overcomplete, k = mean active: MMCS 0.995 (topk) and 0.961 (batchtopk) when written. Until the
    # toy drew its features from a derived seed, width = G started on the truth and hid this setting.
    code, out, err = run_cli(capsys, "toy", "--methods", "topk", "batchtopk", "--d-in", "32",
                             "--n-features", "48", "--mean-active", "3", "--d-sae", "96", "--k", "3",
                             "--total-tokens", "300000", "--batch-size", "512", "--no-progress",
                             "--out", str(tmp_path))
    assert code == 0, err
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in rows] == ["topk", "batchtopk"]
    for row in rows:
        assert row["mmcs"] > 0.9, row
        assert row["dead_fraction"] <= 0.1, row
    assert "mmcs" in out


def test_train_from_cache_with_two_hookpoints(capsys, tmp_path):
    import torch

    from saekit.data.cache import write_cache

    g = torch.Generator().manual_seed(0)
    batches = [{"layer.1": torch.randn(500, 12, generator=g), "layer.2": torch.randn(500, 20, generator=g)}
               for _ in range(6)]
    write_cache(batches, tmp_path / "cache", hookpoints=["layer.1", "layer.2"], model="tiny")
    config = tmp_path / "sweep.toml"
    config.write_text("[train]\ntotal_tokens = 2560\nbatch_size = 256\n\n"
                      "[[dictionaries]]\nmethod = 'topk'\nd_sae = 32\nk = 4\nhookpoint = 'layer.1'\n\n"
                      "[[dictionaries]]\nmethod = 'topk'\nd_sae = 40\nk = 4\nhookpoint = 'layer.2'\n")
    code, _, err = run_cli(capsys, "train", "--config", str(config), "--from-cache",
                           str(tmp_path / "cache"), "--out", str(tmp_path / "o"), "--no-progress")
    assert code == 0, err
    d1 = saekit.load(tmp_path / "o" / "layer.1" / "topk-k4-32")
    d2 = saekit.load(tmp_path / "o" / "layer.2" / "topk-k4-40")
    assert (d1.d_in, d1.provenance.hookpoint, d1.provenance.model_name) == (12, "layer.1", "tiny")
    assert (d2.d_in, d2.provenance.hookpoint) == (20, "layer.2")
    code, _, err = run_cli(capsys, "train", "--from-cache", str(tmp_path / "cache"), "--out",
                           str(tmp_path / "p"), "--method", "topk", "--k", "2", "--d-sae", "8",
                           "--hookpoint", "layer.9")
    assert code == 2 and "layer.9" in err
