"""Transcoders, skip transcoders and crosscoders: same module and trainer, other inputs and targets."""

import torch

import saekit
from saekit.data.toy import ToyConfig, ToyData
from saekit.inspect.diffing import classify_latents, diffing_summary, relative_decoder_norms


def transcoder_stream(seed: int = 0, chunks: int = 10_000):
    """x = sparse features + dense noise; y = A·x + other sparse features. The dense part of x reaches
    y only linearly, which a skip connection captures and k latents cannot."""
    toy = ToyConfig(d_in=32, n_features=48, mean_active=3, seed=seed)
    data = ToyData(toy, chunk_size=256)
    g = torch.Generator().manual_seed(seed + 100)
    A = torch.randn(24, 32, generator=g) / 32 ** 0.5
    G = torch.randn(48, 24, generator=g) / 24 ** 0.5
    for index in range(chunks):
        x, codes = data.chunk(index)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(10_000 + index)) * 0.3
        x = x + noise
        yield {"mlp.in": x, "mlp.out": x @ A.T + codes @ G}


def test_skip_transcoder_beats_plain_at_equal_k():
    cfgs = [saekit.DictionarySpec.from_options(method="topk", d_in=32, d_out=24, d_sae=96, k=4, lr=2e-3,
                                    hookpoint="mlp.in", target_hookpoint="mlp.out",
                                    skip_connection=skip, name=f"skip={skip}")
            for skip in (False, True)]
    plain, skip = saekit.train(transcoder_stream(), cfgs, total_tokens=300 * 256, batch_size=256,
                               progress=False)
    held_out = list(transcoder_stream(seed=0, chunks=10_000))[5000:5008]
    x = torch.cat([b["mlp.in"] for b in held_out])
    y = torch.cat([b["mlp.out"] for b in held_out])
    fvu = {name: saekit.evaluation.metrics.fvu(y, d(x)) for name, d in (("plain", plain), ("skip", skip))}
    assert plain.W_dec.shape == (96, 24) and skip.W_skip.shape == (24, 32)
    assert fvu["skip"] < 0.8 * fvu["plain"], fvu


def test_transcoder_folding_uses_separate_input_and_target_scales(generator):
    cfg = saekit.DictionaryConfig(method="jumprelu", d_in=8, d_out=5, d_sae=16, transcoder=True,
                                  skip_connection=True)
    d = saekit.Dictionary(cfg)
    with torch.no_grad():
        for p in d.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        d.threshold.abs_()
    x = torch.randn(40, 8, generator=generator) * 3
    c_in, c_out = 0.2, 1.7
    expected = d(x * c_in) / c_out
    d.fold_activation_scale(c_in, c_out)
    assert torch.allclose(d(x), expected, atol=1e-5)


def crosscoder_stream(seed: int = 0):
    """Two 'models' on the same tokens: 24 shared features with different directions in each, and 8
    features that exist only in the second model."""
    toy = ToyConfig(d_in=16, n_features=32, mean_active=4, decay=1.0, correlation=0.0, seed=seed)
    data = ToyData(toy, chunk_size=256)
    g = torch.Generator().manual_seed(seed + 7)
    directions_a = torch.nn.functional.normalize(torch.randn(32, 16, generator=g), dim=-1)
    directions_b = torch.nn.functional.normalize(torch.randn(32, 16, generator=g), dim=-1)
    directions_a[24:] = 0.0  # features 24..31 are second-model-only
    index = 0
    while True:
        _, codes = data.chunk(index)
        index += 1
        yield {"base": codes @ directions_a, "chat": codes @ directions_b}


def test_crosscoder_labels_second_model_only_directions():
    truth = next(iter(crosscoder_stream()))  # for the directions, rebuild them the same way
    g = torch.Generator().manual_seed(7)
    torch.randn(32, 16, generator=g)
    directions_b = torch.nn.functional.normalize(torch.randn(32, 16, generator=g), dim=-1)
    assert truth["base"].shape == (256, 16)
    cfgs = [
        # independent decoder blocks: with the default "same" init, 400 steps learn 7 of the 8 chat-only
        # directions (the eighth at cos 0.80; docs/diffing.md, decoder init)
        saekit.DictionarySpec.from_options(method="batchtopk", d_in=32, d_sae=64, k=4, lr=2e-3,
                                source_hookpoints=["base", "chat"], name="btk-crosscoder",
                                crosscoder_init="independent"),
        saekit.DictionarySpec.from_options(method="relu", d_in=32, d_sae=64, sparsity_coefficient=1.0, lr=3e-3,
                                source_hookpoints=["base", "chat"], name="l1-crosscoder"),
    ]
    dictionaries = saekit.train(crosscoder_stream(), cfgs, total_tokens=400 * 256, batch_size=256,
                                progress=False)
    for d in dictionaries:
        r = relative_decoder_norms(d)
        chat_blocks = d.W_dec.detach()[:, 16:]
        cos = torch.nn.functional.normalize(directions_b, dim=-1) @ \
            torch.nn.functional.normalize(chat_blocks, dim=-1).T
        best = cos.max(dim=1)
        chat_only, shared = r[best.indices[24:]], r[best.indices[:24]]
        assert best.values[24:].min() > 0.9, d.cfg.name  # the chat-only features were learned
        if d.cfg.method == "relu":  # the L1 crosscoder's artefact, not BatchTopK's
            # The L1 on Σ_m ||d^m|| drives the base block of a chat-only latent to zero: labelled.
            assert (chat_only > 0.9).all(), chat_only
            assert (shared < 0.9).all(), shared
        else:
            # No norm penalty: base blocks shrink only through reconstruction, so after a short run the
            # chat-only latents are separated from the shared ones rather than at r = 1.
            assert chat_only.min() > shared.max(), (chat_only, shared.max())
        masks = classify_latents(d)
        summary = diffing_summary(d)
        assert summary["counts"]["second_only"] == int(masks["second_only"].sum())
        if d.cfg.method == "relu":
            assert summary["counts"]["second_only"] >= 8
        assert sum(summary["relative_norm_histogram"]["counts"]) == 64
        assert isinstance(d.meta["normalization"]["input_scale"], list)  # one scale per source
