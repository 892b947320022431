import pytest
import torch

import saekit
from saekit.data.toy import ToyConfig, ToyData
from saekit.encoders import gradient_pursuit, make_encoder, matching_pursuit


def reference_gradient_pursuit(x, D, k):
    """One example at a time, written from the algorithm's description (not from the batched code)."""
    out = []
    for row in x:
        w = torch.zeros(D.shape[0])
        for _ in range(k):
            r = row - w @ D
            ip = D @ r
            support = w != 0
            support[int(torch.argmax(ip))] = True
            g = torch.where(support, ip, torch.zeros_like(ip))
            c = g @ D
            eta = float(c @ r) / max(float(c @ c), 1e-12)
            w = torch.clamp(w + eta * g, min=0)
        out.append(w)
    return torch.stack(out)


def test_gradient_pursuit_matches_per_example_reference(generator):
    D = torch.nn.functional.normalize(torch.randn(40, 12, generator=generator), dim=-1)
    x = torch.randn(9, 12, generator=generator)
    assert torch.allclose(gradient_pursuit(x, D, 5), reference_gradient_pursuit(x, D, 5), atol=1e-5)
    assert ((gradient_pursuit(x, D, 5) != 0).sum(-1) <= 5).all()


def test_matching_pursuit_recovers_codes_on_an_orthogonal_dictionary(generator):
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=generator))
    D = q.T * torch.linspace(0.5, 2.0, 16)[:, None]  # orthogonal rows with different norms
    codes = torch.zeros(10, 16)
    for i in range(10):
        idx = torch.randperm(16, generator=generator)[:3]
        codes[i, idx] = torch.rand(3, generator=generator) + 0.1
    found = matching_pursuit(codes @ D, D, 3)
    assert torch.allclose(found, codes, atol=1e-5)


def test_gradient_pursuit_beats_the_encoder_at_equal_l0():
    toy = ToyConfig(d_in=32, n_features=64, mean_active=6, decay=1.0, seed=11)
    cfg = saekit.DictionarySpec.from_options(method="relu", d_in=32, d_sae=64, sparsity_coefficient=2.0, lr=3e-3)
    (d,) = saekit.train(ToyData(toy, chunk_size=256), [cfg], total_tokens=150 * 256, batch_size=256,
                        progress=False)
    x = ToyData(toy, split="test").sample(1000)
    k = 4
    errors = {}
    for name in ("topk", "gradient-pursuit", "matching-pursuit"):
        latents = make_encoder(d, name, k)(x)
        assert ((latents != 0).sum(-1) <= k).all()
        errors[name] = float((x - d.decode(latents)).pow(2).sum(-1).mean())
    assert errors["gradient-pursuit"] < errors["topk"], errors


def test_make_encoder_errors():
    d = saekit.Dictionary(saekit.DictionaryConfig(method="topk", d_in=4, d_sae=8, k=2))
    with pytest.raises(saekit.SaekitError, match="unknown encoder"):
        make_encoder(d, "omp", 3)
    with pytest.raises(saekit.SaekitError, match="--l0"):
        make_encoder(d, "gradient-pursuit")
    assert make_encoder(d) == d.encode


def test_meta_sae_decomposes_decoder_rows(tmp_path, capsys):
    from saekit.cli import main

    # A dictionary whose 96 latents are sums of two of 12 "atomic" directions: a meta-SAE with
    # k = 2 should explain nearly all of their variance with ~2 meta-latents each.
    g = torch.Generator().manual_seed(3)
    atoms = torch.nn.functional.normalize(torch.randn(12, 20, generator=g), dim=-1)
    pairs = torch.stack([torch.randperm(12, generator=g)[:2] for _ in range(96)])
    rows = atoms[pairs[:, 0]] + atoms[pairs[:, 1]]
    d = saekit.Dictionary(saekit.DictionaryConfig(method="topk", d_in=20, d_sae=96, k=4))
    with torch.no_grad():
        d.W_dec.copy_(torch.nn.functional.normalize(rows, dim=-1))
    saekit.save(d, tmp_path / "d")
    code = main(["meta", str(tmp_path / "d"), "--out", str(tmp_path / "meta"), "--k", "2",
                 "--width", "16", "--epochs", "600", "--batch-size", "96", "--lr", "3e-3",
                 "--no-progress"])
    assert code == 0
    import json
    summary = json.loads((tmp_path / "meta" / "summary.json").read_text())
    assert summary["explained_variance"] > 0.9, summary
    assert 1.0 <= summary["mean_meta_latents_per_latent"] <= 3.0
    from safetensors.torch import load_file
    composition = load_file(str(tmp_path / "meta" / "composition.safetensors"))
    assert composition["indices"].shape[0] == 96
    assert saekit.load(tmp_path / "meta" / "meta_sae").d_sae == 16
