"""Two-model activation streams and `saekit diff` on two tiny models."""

import json

import torch

from saekit.cli import main
from saekit.data.stream import ActivationStream
from saekit.data.tokens import TokenStream
from saekit.models.hooks import capture
from saekit.models.sites import resolve_hookpoints
from tests.helpers import save_tiny, tiny_llama, tiny_tokenizer, write_corpus


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


def test_diff_command_trains_a_crosscoder_and_writes_a_report(tmp_path, capsys):
    tokenizer = tiny_tokenizer(extra_tokens=('<script>alert("x")</script>',))
    base = save_tiny(tmp_path / "base", tiny_llama(len(tokenizer), seed=0), tokenizer)
    chat = save_tiny(tmp_path / "chat", tiny_llama(len(tokenizer), seed=1), tokenizer)
    corpus = write_corpus(tmp_path / "c", n_docs=60)
    (corpus / "evil.txt").write_text(' '.join(['<script>alert("x")</script> the cat'] * 40))
    code = main(["diff", "--models", f"base={base}", f"chat={chat}", "--hookpoint", "resid_post.1",
                 "--dataset", str(corpus), "--context-size", "32", "--tokens", "4096", "--batch-size", "256",
                 "--k", "4", "--eval-tokens", "2000", "--out", str(tmp_path / "d"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((tmp_path / "d" / "report.json").read_text())
    counts = report["summary"]["counts"]
    assert sum(counts.values()) + report["dead"] == 128
    assert (tmp_path / "d" / "relative_norms.png").exists()
    page = (tmp_path / "d" / "report.html").read_text()
    assert "<script>" not in page
    assert "shared" in captured.out
    # Reporting on the saved crosscoder again gives the same counts.
    code = main(["diff", "--models", f"base={base}", f"chat={chat}", "--hookpoint", "resid_post.1",
                 "--dataset", str(corpus), "--context-size", "32", "--eval-tokens", "2000",
                 "--crosscoder", str(tmp_path / "d" / "crosscoder"), "--out", str(tmp_path / "e")])
    assert code == 0
    again = json.loads((tmp_path / "e" / "report.json").read_text())
    assert again["summary"]["counts"] == counts
    code = main(["diff", "--models", f"base={base}", f"also={base}", "--hookpoint", "x",
                 "--out", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert code == 2 and "hookpoint 'x' matches no module" in err.strip().splitlines()[-1]
    code = main(["diff", "--models", f"base={base}", str(chat), "--hookpoint", "resid_post.1",
                 "--out", str(tmp_path / "f")])
    assert code == 2 and "LABEL=MODEL" in capsys.readouterr().err
