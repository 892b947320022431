"""Spliced evaluation of attention replacements: the exact replacement changes nothing; a replacement
and a dictionary on the same output share the clean and zero-ablated forwards."""

from __future__ import annotations

import pytest
import torch

import saekit
from saekit.attention import SparseAttention, read_attention
from saekit.attention.evaluate import evaluate_replacements
from saekit.data.config import TextConfig
from tests.helpers import tiny_family, tiny_tokenizer, write_corpus


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tokenizer = tiny_tokenizer()
    model = tiny_family("qwen2", len(tokenizer), seed=2)
    with torch.no_grad():  # weights large enough that attention matters to the logits
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.mul_(20)
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"), n_docs=60)
    return model, tokenizer, TextConfig(dataset=str(corpus), context_size=16, model_batch_size=4)


def test_the_exact_replacement_spliced_in_changes_nothing(setup):
    model, tokenizer, text = setup
    exact = SparseAttention.exact(read_attention(model, 1))
    exact.provenance = saekit.Provenance(hookpoint="attn_in.1", target_hookpoint="attn_out.1")
    broken = SparseAttention.exact(read_attention(model, 1))
    broken.provenance = exact.provenance
    with torch.no_grad():
        broken.ov.W_dec.mul_(-1)  # every head's output reversed
    sae = saekit.Dictionary(saekit.DictionaryConfig(method="topk", d_in=32, d_sae=64, k=4))
    sae.provenance = saekit.Provenance(hookpoint="attn_out.1")
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.W_dec.normal_(0, 0.1)
    rows = evaluate_replacements(model, tokenizer, {"exact": exact, "broken": broken, "sae": sae}, text,
                                 tokens=600, progress=False)
    by_name = {row["name"]: row for row in rows}
    assert len({row["ce_clean"] for row in rows}) == 1  # one group: clean and zero forwards shared
    assert by_name["exact"]["kind"] == "sparse_attention" and by_name["sae"]["kind"] == "dictionary"
    assert by_name["exact"]["fvu"] < 1e-8 and by_name["exact"]["kl_spliced"] < 1e-6
    assert by_name["exact"]["ce_loss_score"] == pytest.approx(1.0, abs=1e-4)
    assert by_name["exact"]["l0"] == pytest.approx(exact.d_sae / 2)  # one of each ± pair is positive
    assert by_name["broken"]["fvu"] > 3 and by_name["broken"]["kl_spliced"] > by_name["exact"]["kl_spliced"] + 1e-3
    assert by_name["broken"]["ce_zero_ablation"] > by_name["broken"]["ce_clean"]
    assert by_name["sae"]["l0"] == 4


def test_saekit_eval_splices_a_saved_replacement(setup, tmp_path, capsys):
    import json

    from saekit.attention import save
    from saekit.cli import main
    from tests.helpers import save_tiny

    model, tokenizer, text = setup
    model_dir = save_tiny(tmp_path / "model", model, tokenizer)
    exact = SparseAttention.exact(read_attention(model, 1))
    exact.provenance = saekit.Provenance(model_name=str(model_dir), hookpoint="attn_in.1",
                                         target_hookpoint="attn_out.1")
    save(exact, tmp_path / "exact")
    code = main(["eval", str(tmp_path / "exact"), "--tokens", "300", "--dataset", text.dataset,
                 "--context-size", "16", "--model-batch-size", "4", "--no-progress", "--out",
                 str(tmp_path / "rows.json")])
    assert code == 0
    (row,) = json.loads((tmp_path / "rows.json").read_text())
    assert row["kind"] == "sparse_attention" and row["kl_spliced"] < 1e-6 and row["fvu"] < 1e-8
    assert main(["eval", str(tmp_path / "exact"), "--encoder", "topk", "--l0", "4"]) == 2
    assert "--encoder applies to single dictionaries" in capsys.readouterr().err
