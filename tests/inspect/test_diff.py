"""Model diffing end to end: two-model streams, the held-out pass, the loss comparison, `saekit diff` and
its report page (the `diff_run` fixture is in conftest.py)."""

import json
import re

import pytest
import torch

from saekit.cli import main
from saekit.data.config import TextConfig
from saekit.data.stream import ActivationStream
from saekit.data.tokens import TokenStream
from saekit.experiments.diff import HeldOut, held_out_pass, loss_difference
from saekit.models.hooks import capture
from saekit.models.sites import resolve_hookpoints
from tests.helpers import EVIL, tiny_llama, tiny_tokenizer, write_corpus


def test_two_model_stream_runs_both_models_on_the_same_tokens(tmp_path):
    tokenizer = tiny_tokenizer()
    base, chat = tiny_llama(len(tokenizer), seed=0), tiny_llama(len(tokenizer), seed=1)
    corpus = write_corpus(tmp_path / "c", n_docs=10)
    tokens = TokenStream(tokenizer, str(corpus), context=16, batch_size=4)
    stream = ActivationStream({"base": base, "chat": chat}, tokens, ["resid_post.0"])
    assert stream.widths() == {"base/resid_post.0": 32, "chat/resid_post.0": 32}
    batch = next(iter(stream))
    ids, mask = next(iter(tokens))
    for label, model in (("base", base), ("chat", chat)):
        expected = capture(model, ids, resolve_hookpoints(model, ["resid_post.0"]))["resid_post.0"]
        torch.testing.assert_close(batch[f"{label}/resid_post.0"], expected[mask.bool()])
    assert not torch.allclose(batch["base/resid_post.0"], batch["chat/resid_post.0"])


def test_held_out_pass_matches_each_models_own_loss_and_activations(tmp_path):
    tokenizer = tiny_tokenizer()
    models = {"a": tiny_llama(len(tokenizer), seed=0), "b": tiny_llama(len(tokenizer), seed=1)}
    text = TextConfig(dataset=str(write_corpus(tmp_path / "c", n_docs=60)), context_size=24, model_batch_size=4)
    held = held_out_pass(models, tokenizer, text, "resid_post.1", eval_tokens=300)
    ids = held.ids
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[held.positions[:, 0], held.positions[:, 1]] = False
    mask = ~mask  # the counted positions, rebuilt from the pass
    assert held.inputs.shape == (int(mask.sum()), 64) and len(held.losses) == len(held.inputs)
    for m, model in enumerate(models.values()):
        acts = capture(model, ids, resolve_hookpoints(model, ["resid_post.1"]))["resid_post.1"]
        torch.testing.assert_close(held.inputs[:, m * 32:(m + 1) * 32], acts[mask])
        # Hugging Face's own loss over the same (input counted, target counted) pairs.
        labels = ids.clone()
        labels[~mask] = -100
        labels[:, 1:][~mask[:, :-1]] = -100
        expected = float(model(input_ids=ids, labels=labels).loss.detach())
        assert float(held.losses[:, m].nanmean()) == pytest.approx(expected, rel=1e-5)
        logits = model(input_ids=ids).logits.detach()
        assert torch.equal(held.predictions[:, m], logits.argmax(-1)[mask])


def test_loss_difference_finds_the_latent_that_fires_where_the_losses_differ():
    """Tokens 0-9 are where the second model is better (Δ = 2), elsewhere Δ = 0; latent 1 fires on exactly
    those tokens, latent 0 everywhere, latent 2 on unrelated ones."""
    n = 40
    positions = torch.stack([torch.zeros(n, dtype=torch.long), torch.arange(n)], dim=-1)
    losses = torch.full((n, 2), 1.0)
    losses[:10, 0] = 3.0
    losses[-1] = float("nan")
    held = HeldOut(torch.arange(n + 1)[None] % 7, positions, torch.zeros(n, 8), losses, torch.zeros(n, 2).long())
    latents = torch.zeros(n, 3)
    latents[:, 0] = 1.0
    latents[:10, 1] = torch.linspace(1, 2, 10)
    latents[20:25, 2] = 1.0
    classes = {"first_only": torch.tensor([False, False, True]), "second_only": torch.tensor([False, True, False]),
               "shared": torch.tensor([True, False, False]), "other": torch.zeros(3, dtype=torch.bool)}

    class Decoder:
        def decode(self, ids):
            return f"<t{ids[0]}>"

    result = loss_difference(held, latents, classes, ["a", "b"], Decoder())
    assert result["tokens"] == n - 1 and result["mean_delta"] == pytest.approx(20 / 39)
    assert result["mean_loss"] == pytest.approx([59 / 39, 1.0])
    top = result["latents"][0]
    assert top["latent"] == 1 and top["class"] == "second_only" and top["correlation"] > 0.8
    assert top["share_of_abs_delta"] == pytest.approx(1.0) and top["mean_delta_when_firing"] == pytest.approx(2.0)
    assert result["by_class"]["second_only"] == pytest.approx(
        {"token_fraction": 10 / 39, "share_of_abs_delta": 1.0, "mean_delta_when_firing": 2.0})
    assert result["by_class"]["shared"]["share_of_abs_delta"] == pytest.approx(1.0)
    assert result["by_class"]["first_only"]["share_of_abs_delta"] == 0.0
    assert sum(t["total_delta"] for t in result["target_tokens"] if t["total_delta"] > 0) == pytest.approx(20.0)


def test_diff_command_writes_a_readable_report(diff_run, capsys):
    out = diff_run["out"]
    report = json.loads((out / "report.json").read_text())
    counts = report["summary"]["counts"]
    assert sum(counts.values()) + report["dead"] == 128
    assert report["crosscoder"]["training"]["crosscoder_init"] == "same"
    # The corpus' train split is ~4k tokens: the 16,384-token budget was trained in passes, not cut short.
    assert report["crosscoder"]["training_tokens"] == 16_384
    scaling = report["latent_scaling"]
    assert scaling["second_only"]["labelled"] == counts["second_only"]
    assert 0 <= scaling["second_only"]["survive"] <= counts["second_only"]
    page = (out / "report.html").read_text()
    assert "<script" not in page and EVIL not in page and "window.__pwned" in page  # escaped, not run
    assert page.count("<svg") == 2 and "<pre" not in page and '{"' not in page  # plots, no JSON dump
    # The header names each model once, label and model apart ("base = base=..." was a bug).
    models = re.findall(r"<tr><td>(base|chat)</td><td>([^<]*)</td>", page)
    assert models == [("base", str(diff_run["base"])), ("chat", str(diff_run["chat"]))]
    assert "base=" not in page.split("<h2>")[0]
    for cell in ("r &lt; 0.1", "r &gt; 0.9", "0.3 ≤ r ≤ 0.7", "confirmed by latent scaling"):
        assert cell in page
    assert counts["second_only"] >= 1 and counts["first_only"] == 0
    shown = report["model_specific"]["chat"]
    # Its base block was zeroed by hand, but the base model still carries the direction (the trained block
    # was ~0.2 of the row): latent scaling must see it in the base model's error and reject the label.
    edited = next(item for item in shown if item["latent"] == diff_run["chat_latent"])
    assert not edited["survives"] and edited["nu_error"] > 0.2 and edited["beta_error"][1] > 0
    assert len(shown) == counts["second_only"] and report["model_specific"]["base"] == []
    for item in shown + report["model_specific"]["base"]:
        assert f'id="latent-{item["latent"]}"' in page and "ν<sub>ε</sub>" in page
        assert len(item["beta_error"]) == 2 and item["contexts"]
        for context in item["contexts"]:
            assert context["values"][context["peak"]] == pytest.approx(context["activation"])
    losses = report["loss_difference"]
    assert 200 < losses["tokens"] <= report["eval_tokens"] and len(losses["mean_loss"]) == 2
    # the shared latents whose blocks differ most, lowest cosine first, each with its card
    rotated = report["rotated_shared"]
    assert 0 < len(rotated) <= min(8, counts["shared"])
    cosines = [item["decoder_cosine"] for item in rotated]
    assert cosines == sorted(cosines) and min(cosines) <= min(report["shared_cosines"]) + 1e-6
    assert all(0.3 <= item["relative_norm"] <= 0.7 and item["contexts"] for item in rotated)
    assert "decoder differs most" in page and all(f'id="latent-{item["latent"]}"' in page for item in rotated)


def test_diff_reports_again_from_a_saved_crosscoder_and_rejects_bad_input(diff_run, capsys):
    root, args = diff_run["root"], diff_run["args"]
    code = main([*args, "--crosscoder", str(diff_run["trained"] / "crosscoder"), "--out", str(root / "e"),
                 "--no-progress"])
    assert code == 0
    first = json.loads((diff_run["trained"] / "report.json").read_text())
    again = json.loads((root / "e" / "report.json").read_text())
    assert again["summary"]["counts"] == first["summary"]["counts"]
    assert again["latent_scaling"] == first["latent_scaling"]
    capsys.readouterr()
    base = diff_run["base"]
    code = main(["diff", "--models", f"base={base}", f"also={base}", "--hookpoint", "x", "--out", str(root / "f")])
    err = capsys.readouterr().err
    assert code == 2 and "hookpoint 'x' matches no module" in err.strip().splitlines()[-1]
    code = main(["diff", "--models", f"base={base}", str(base), "--hookpoint", "resid_post.1",
                 "--out", str(root / "f")])
    assert code == 2 and "LABEL=MODEL" in capsys.readouterr().err
    code = main([*args, "--tokens", "0", "--out", str(root / "f")])
    assert code == 2 and "--tokens must be positive" in capsys.readouterr().err


def test_report_page_escapes_model_labels_and_names(diff_run):
    """Labels and model names come from the command line: render the run's report under hostile ones."""
    from saekit.inspect.diff_page import render_diff_page

    report = json.loads((diff_run["out"] / "report.json").read_text())
    evil_labels = ["<b>base</b>", EVIL]
    report["model_specific"] = dict(zip(evil_labels, report["model_specific"].values()))
    report["models"] = {evil_labels[0]: EVIL, evil_labels[1]: "<img src=x>"}
    report["labels"] = evil_labels
    page = render_diff_page(report)
    assert "<script" not in page and "<img" not in page and "<b>base" not in page
    assert "&lt;b&gt;base&lt;/b&gt;" in page
