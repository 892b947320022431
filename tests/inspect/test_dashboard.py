"""Feature dashboards on a tiny model: one pass, correct values, every token string escaped."""

from __future__ import annotations

import json
import re

import pytest
import torch

import saekit
from saekit.cli import main
from saekit.data.tokens import TokenStream
from saekit.models.hooks import capture
from saekit.models.loading import load_model
from saekit.models.sites import resolve_hookpoints
from tests.helpers import SITE_D_SAE as D_SAE


def test_site_has_an_index_and_a_page_per_latent(site):
    out = site["site"]
    assert (out / "index.html").is_file()
    assert len(list((out / "latents").glob("*.html"))) == D_SAE
    data = json.loads((out / "latents.json").read_text())
    assert data["tokens"] == 3000 and len(data["rows"]) == D_SAE
    page = (out / "latents" / "0.html").read_text()
    for section in ("Top activations", "Activation histogram", "Logit lens: promoted",
                    "Logit lens: suppressed", "Nearest latents", "quantile", "<svg", "<mark"):
        assert section in page


def test_every_token_string_is_escaped(site):
    out = site["site"]
    escaped = "&quot;&gt;&lt;script&gt;window.__pwned=1&lt;/script&gt;"
    pages = [p.read_text() for p in (out / "latents").glob("*.html")]
    assert all("<script" not in p and "<img" not in p for p in pages)  # latent pages hold no script
    assert escaped in (out / "latents" / "0.html").read_text()  # latent 0 fires on it
    index = (out / "index.html").read_text()
    assert "window.__pwned" in index  # it is in the index's data (the top tokens of latent 0) ...
    assert index.count("<script") == 2 and index.count("</script>") == 2  # ... but cannot break out
    assert "<img" not in index


def test_one_model_pass_for_all_latents_and_values_match_encode(site):
    from saekit.inspect.dashboard_data import contexts, gather_activations

    model, tokenizer = load_model(str(site["model"]))
    d = saekit.load(site["dict"])
    stream = TokenStream(tokenizer, str(site["corpus"]), context=32, batch_size=8, max_tokens=1000)
    batches = list(stream)
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    record = gather_activations(model, d, batches)
    handle.remove()
    assert len(calls) == len(batches)  # one forward per batch, whatever d_sae is
    assert record.n_tokens == 1000
    # recompute the dictionary directly and compare the record for a few latents
    point = resolve_hookpoints(model, ["resid_post.0"])[0]
    ids = torch.cat([b[0] for b in batches])
    mask = torch.cat([b[1] for b in batches]).reshape(-1)
    with torch.no_grad():
        dense = d.encode(capture(model, ids, [point])[point.name].reshape(-1, 32)) * mask[:, None]
    for latent in (0, 5, 17):
        positions, values = record.latent(latent)
        assert len(values) == int((dense[:, latent] > 0).sum())
        assert torch.allclose(torch.as_tensor(values), dense[positions, latent], atol=1e-5)
        assert list(values) == sorted(values, reverse=True)
        for ex in contexts(record, latent, positions[:3]):
            assert ex.value == pytest.approx(float(dense[ex.position, latent]), abs=1e-5)
            assert ex.token_ids[ex.peak] == int(ids.reshape(-1)[ex.position])


def test_dashboard_cli_errors_are_one_line(capsys, site, tmp_path):
    code = main(["dashboard", str(tmp_path / "nope"), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    code = main(["dashboard", str(site["dict"]), "--tokens", "0", "--out", str(tmp_path / "s")])
    assert code == 2 and "--tokens" in capsys.readouterr().err


def test_html_helpers_keep_data_inert():
    from saekit.inspect.html import context_html, json_for_script

    text = json_for_script({"t": "</script><!--\u2028&"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"t": "</script><!--\u2028&"}
    line = context_html(['<b a="1">', " x\n"], [1.0, 0.0], 0, 1.0, 1.0)
    assert "<b " not in line and "&lt;b a=&quot;1&quot;&gt;" in line and "\u21b5" in line
    assert re.search(r'<mark class="peak" style="--a:1.00" title="1">', line)


def test_run_report_for_a_sweep(tmp_path, capsys, site):
    import numpy as np

    from saekit.inspect.report import pareto_front, write_run_report

    np.save(tmp_path / "acts.npy", np.random.default_rng(0).normal(size=(4096, 16)).astype(np.float32))
    (tmp_path / "sweep.toml").write_text(
        '[train]\ntotal_tokens = 4096\nbatch_size = 256\nlog_every = 2\nprogress = false\n\n'
        '[[dictionaries]]\nmethod = "topk"\nd_sae = 32\nk = 2\n\n'
        '[[dictionaries]]\nmethod = "topk"\nd_sae = 32\nk = 6\n')
    run_dir = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "sweep.toml"), "--activations",
                 str(tmp_path / "acts.npy"), "--out", str(run_dir)]) == 0
    names = sorted(p.parent.name for p in run_dir.glob("*/cfg.json"))
    rows = [{"name": names[0], "method": "topk", "l0": 2.0, "fvu": 0.6, "ce_loss_score": 0.7},
            {"name": names[1], "method": "topk", "l0": 6.0, "fvu": 0.3, "ce_loss_score": 0.9},
            {"name": "<b>odd</b>", "method": "relu", "l0": 9.0, "fvu": 0.5, "ce_loss_score": 0.5}]
    (tmp_path / "eval.json").write_text(json.dumps(rows))
    out = tmp_path / "reports" / "report.html"
    code = main(["report", str(run_dir), "--eval", str(tmp_path / "eval.json"), "--out", str(out),
                 "--dashboards", f"{names[0]}={site['site']}"])
    assert code == 0, capsys.readouterr().err
    html = out.read_text()
    assert html.count("<svg") == 6  # loss, MSE, L0, dead fraction, two Pareto plots
    assert "&lt;b&gt;odd&lt;/b&gt;" in html and "<b>odd" not in html
    href = re.search(r'<a href="([^"]+)">open</a>', html).group(1)
    assert (out.parent / href).resolve() == (site["site"] / "index.html").resolve()
    assert pareto_front([(2, .6), (6, .3), (9, .5)]) == [0, 1]
    # the Python API, without evaluation rows: Pareto from the last logged L0 and MSE
    page = write_run_report(run_dir, [], tmp_path / "plain.html").read_text()
    assert page.count("<svg") == 5 and "final training MSE" not in page.split("<svg")[0]
    code = main(["report", str(tmp_path / "nowhere")])
    assert code == 2


@pytest.mark.parametrize("kind", ["relu", "transcoder"])
def test_dashboards_for_other_dictionaries(kind, site, tmp_path):
    from saekit.inspect.dashboard import build_dashboards

    model, tokenizer = load_model(str(site["model"]))
    extra = dict(hookpoint="mlp_in.0", target_hookpoint="mlp_out.0") if kind == "transcoder" else \
        dict(hookpoint="resid_post.1")
    spec = saekit.DictionarySpec.from_options(method="relu", d_in=32, d_sae=24, **extra)
    d = saekit.Dictionary(spec.dictionary)
    d.provenance = spec.source
    d.initialize(torch.randn(64, 32, generator=torch.Generator().manual_seed(0)), spec.training,
                 generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d.b_enc.fill_(0.01)  # fire often
    batches = TokenStream(tokenizer, str(site["corpus"]), context=32, batch_size=8, max_tokens=800)
    summary = build_dashboards(d, model, tokenizer, batches, tmp_path / "s", top_examples=5)
    assert summary["tokens"] == 800 and summary["alive"] > 0
    assert len(list((tmp_path / "s" / "latents").glob("*.html"))) == 24
    assert "Logit lens" in (tmp_path / "s" / "latents" / "0.html").read_text()  # d_out = d_model
