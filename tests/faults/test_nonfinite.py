"""Class 1: NaN and inf never reach the weights, the logs stay valid JSON, nothing non-finite is saved."""

import json

import numpy as np
import pytest
import torch

import saekit
from tests.faults.conftest import one_line_error
from tests.helpers import make


def rows(n=4000, d=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d)).astype("f4")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 3e38])
def test_a_bad_row_stops_training_naming_the_batch_and_nothing_is_saved(tmp_path, cli, value):
    data = rows()
    data[1500, 3] = value  # 3e38 is finite; its square overflows
    np.save(tmp_path / "a.npy", data)
    code, _, errors = cli("train", "--activations", tmp_path / "a.npy", "--method", "topk", "--k", "4",
                          "--d-sae", "32", "--total-tokens", "4000", "--batch-size", "500", "--out",
                          tmp_path / "r", "--no-progress", "--normalization-tokens", "500",
                          "--checkpoint-every", "1")
    if np.isfinite(value):  # overflow shows in the loss of the batch that holds the row
        one_line_error(code, errors, "dictionary topk-k4-32", "step 3", "non-finite")
    else:
        one_line_error(code, errors, "step 3 (tokens 1500-2000)", "1 non-finite")
    assert not (tmp_path / "r" / "topk-k4-32").exists()
    steps = sorted(p.name for p in (tmp_path / "r" / "checkpoints" / "checkpoints").iterdir())
    assert steps == ["step_000000002", "step_000000003"]  # the newest two, both before the row
    for line in (tmp_path / "r" / "checkpoints" / "log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in log.jsonl"))


def test_an_infinite_learning_rate_is_refused(tmp_path, cli):
    np.save(tmp_path / "a.npy", rows())
    code, _, errors = cli("train", "--activations", tmp_path / "a.npy", "--method", "relu", "--d-sae", "32",
                          "--lr", "inf", "--out", tmp_path / "r")
    one_line_error(code, errors, "finite")


def test_a_loss_that_overflows_during_training_stops_before_a_checkpoint():
    """Weights driven to inf by a huge (finite) learning rate: the loss goes non-finite, training stops,
    and no dictionary comes back."""
    data = torch.from_numpy(rows(8000)) * 1e3
    spec = saekit.DictionarySpec.from_options(method="relu", d_in=16, d_sae=32, lr=1e30, grad_clip=0.0,
                                              normalize_activations="none", sparsity_coefficient=0.0)
    with pytest.raises(saekit.SaekitError, match="non-finite"):
        saekit.train(data.split(500), [spec], total_tokens=8000, batch_size=500, progress=False)


def test_non_finite_dictionaries_are_neither_saved_nor_loaded(tmp_path):
    d = make("topk")
    saekit.save(d, tmp_path / "ok")
    with torch.no_grad():
        d.W_dec[3, 2] = float("nan")
    with pytest.raises(saekit.SaekitError, match="W_dec hold NaN"):
        saekit.save(d, tmp_path / "bad")
    for fmt in ("saelens", "sparsify", "dictionary_learning"):
        with pytest.raises(saekit.SaekitError, match="NaN"):
            saekit.formats.detect.save_as(d, tmp_path / fmt, fmt)
    # a file edited to hold NaN (checksums recomputed by hand) is refused on load
    from safetensors.torch import load_file, save_file

    weights = load_file(str(tmp_path / "ok" / "sae_weights.safetensors"))
    weights["b_dec"][0] = float("inf")
    save_file(weights, str(tmp_path / "lens.safetensors"))
    saekit.formats.detect.save_as(make("topk"), tmp_path / "lens", "saelens")
    (tmp_path / "lens" / "sae_weights.safetensors").write_bytes((tmp_path / "lens.safetensors").read_bytes())
    with pytest.raises(saekit.SaekitError, match="b_dec hold NaN or inf"):
        saekit.load(tmp_path / "lens")


def test_complex_activations_are_refused(tmp_path, cli):
    np.save(tmp_path / "c.npy", rows().astype(np.complex64))
    code, _, errors = cli("train", "--activations", tmp_path / "c.npy", "--method", "topk", "--k", "4",
                          "--d-sae", "32", "--out", tmp_path / "r")
    one_line_error(code, errors, "real numbers")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_one_pass_finite_check_agrees_with_the_entrywise_one(dtype):
    from saekit.training.guard import all_finite

    big = torch.finfo(dtype).max / 2
    cases = {
        "finite": torch.randn(64, 8),
        "nan": torch.randn(64, 8).index_put_((torch.tensor([5]), torch.tensor([3])), torch.tensor(float("nan"))),
        "inf": torch.randn(64, 8).index_put_((torch.tensor([7]), torch.tensor([1])), torch.tensor(-float("inf"))),
        "inf and -inf": torch.tensor([float("inf"), -float("inf")]),
        "finite whose sum overflows": torch.full((16,), big),
        "empty": torch.empty(0, 8),
    }
    for name, values in cases.items():
        values = values.to(dtype)
        assert all_finite(values) == bool(torch.isfinite(values).all()), name
