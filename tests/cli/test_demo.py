"""`saekit demo` end to end on a tiny local model: five methods from one stream, evaluation, report."""

import json

from saekit.cli import main
from tests.helpers import save_tiny, tiny_llama, tiny_tokenizer, write_corpus


def test_demo_trains_every_method_and_writes_a_report(tmp_path, capsys):
    tokenizer = tiny_tokenizer()
    model_dir = save_tiny(tmp_path / "tiny", tiny_llama(len(tokenizer)), tokenizer)
    corpus = write_corpus(tmp_path / "corpus", n_docs=80)
    code = main(["demo", "--model", str(model_dir), "--dataset", str(corpus), "--hookpoint", "resid_post.1",
                 "--tokens", "4096", "--eval-tokens", "300", "--context-size", "32", "--k", "4",
                 "--batch-size", "256", "--out", str(tmp_path / "demo"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads((tmp_path / "demo" / "results.json").read_text())
    rows = {row["method"]: row for row in report["results"]}
    assert set(rows) == {"topk", "batchtopk", "jumprelu", "gated", "relu", "matching_pursuit"}
    for row in rows.values():
        assert row["l0"] > 0 and row["fvu"] == row["fvu"] and "ce_loss_score" in row
    assert rows["topk"]["l0"] <= 4 + 1e-6
    page = (tmp_path / "demo" / "report.html").read_text()
    assert "delta LM loss" in page and "batchtopk" in page and page.count("<svg") >= 5  # curves + Pareto
    assert "ce_loss_score" in (tmp_path / "demo" / "report.txt").read_text()
    log = [json.loads(line) for line in (tmp_path / "demo" / "log.jsonl").read_text().splitlines()]
    steps = sorted({line["step"] for line in log})
    assert steps == list(range(1, 17))  # 16 steps: a curve, not 3 points
    # "dead" is defined on the page for both the curves and the table (whose count excludes special tokens)
    assert "W = 409 at the end" in page  # the default dead window: a tenth of the 4,096-token run
    assert f"none of the {rows['topk']['tokens']:,} evaluation tokens" in page
    for method in rows:
        assert (tmp_path / "demo" / "dictionaries" / method / "cfg.json").exists()
    assert "ce_loss_score" in captured.out
