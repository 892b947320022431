"""Dashboards of attention dictionaries: source tokens of a sparse attention replacement's top
activations (their contributions add up to the activation), and the heads of a per-head SAE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import saekit
from saekit.attention import load
from saekit.attention.heads import head_attribution, summary
from saekit.data.tokens import TokenStream
from saekit.inspect.dashboard_attention import replacement_latents, source_contributions
from saekit.inspect.dashboard_data import gather_activations
from saekit.models.loading import load_model
from tests.helpers import SITE_D_SAE


def test_source_contributions_add_up_to_the_activation(attention_site):
    model, tokenizer = load_model(str(attention_site["model"]))
    module = load(attention_site["lorsa"])
    batches = list(TokenStream(tokenizer, str(attention_site["corpus"]), context=32, batch_size=8,
                               max_tokens=800))
    record = gather_activations(model, module, batches, latents_of=replacement_latents(model, module))
    reads = source_contributions(model, module, record, top_examples=5)
    checked = 0
    for latent in range(module.d_sae):
        positions, values = record.latent(latent)
        for position, value, c in zip(positions[:5].tolist(), values[:5].tolist(), reads[latent]):
            t = position % record.context
            assert np.all(c[t + 1:] == 0)  # causal: nothing after the query
            # z = Σ_k c_k + b_V (the latent is active, so it is its pre-activation)
            assert abs(c.sum() + float(module.ov.b_enc[latent]) - value) < 1e-4 * max(1.0, abs(value))
            checked += 1
    assert checked > 20


def test_attention_pages_show_sources_and_heads(attention_site):
    lorsa_pages = sorted((attention_site["lorsa_site"] / "latents").glob("*.html"))
    assert len(lorsa_pages) == 32
    fired = [p.read_text() for p in lorsa_pages if "never fired" not in p.read_text()]
    assert fired and all("Source tokens of the top activations (QK head" in p and "reads most from" in p
                         for p in fired)
    assert all("<script" not in p for p in fired)
    heads_page = (attention_site["attn_z_site"] / "latents" / "0.html").read_text()
    assert "Heads (share of decoder norm)" in heads_page and heads_page.count("<tr") >= 4
    assert len(list((attention_site["attn_z_site"] / "latents").glob("*.html"))) == SITE_D_SAE
    escaped = "&lt;script&gt;window.__pwned=1&lt;/script&gt;"
    assert any(escaped in p for p in fired)  # the tiny corpus's <script> token shows, escaped


def test_head_attribution_against_a_loop():
    g = torch.Generator().manual_seed(0)
    W_dec = torch.randn(20, 4 * 8, generator=g)
    W_dec[3] = 0
    W_dec[3, 16:24] = 1.0  # latent 3 writes through head 2 only
    fractions = head_attribution(W_dec, 4)
    for i in range(20):
        norms = [float(W_dec[i, h * 8:(h + 1) * 8].norm()) for h in range(4)]
        expected = [n / sum(norms) for n in norms]
        assert fractions[i].tolist() == pytest.approx(expected, rel=1e-5)
    assert fractions[3].tolist() == [0.0, 0.0, 1.0, 0.0]
    stats = summary(fractions)
    assert stats["latents"] == 20 and 0.25 <= stats["top_head_fraction_median"] <= 1.0
    with pytest.raises(saekit.SaekitError, match="does not split into 5 heads"):
        head_attribution(W_dec, 5)


def test_per_head_decoders_reach_the_logit_lens_through_the_output_projection(attention_site):
    from saekit.inspect.dashboard_attention import residual_directions

    model, _ = load_model(str(attention_site["model"]))
    d = saekit.load(attention_site["attn_z"])
    o_proj = model.model.layers[1].self_attn.o_proj
    torch.testing.assert_close(residual_directions(model, d), d.W_dec @ o_proj.weight.T)
    d.provenance.hookpoint = "resid_post.1"  # any other site: the decoder is already residual
    assert residual_directions(model, d) is d.W_dec
