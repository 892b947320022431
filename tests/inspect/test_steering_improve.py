"""Measuring steering (strength, cost, probe) and improving steering vectors, on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import saekit
from saekit.cli import main
from saekit.data.config import TextConfig
from saekit.inspect.steering import prompt_ids
from saekit.inspect.steering_eval import (
    Concept,
    SteeringBench,
    concept_token_ids,
    probe_generations,
    train_concept_probe,
)
from saekit.inspect.steering_improve import (
    improve_steering_vector,
    improved_vectors,
    screen_latents,
    strength_at_cost,
)
from saekit.inspect.steering_page import write_steering_report
from saekit.models.loading import load_model
from tests.helpers import EVIL, initialized, save_tiny, tiny_llama, tiny_tokenizer, write_corpus

NEUTRAL = ["the cat sat on", "it was a", "the dog ran to the", "a big red"]
POSITIVE = ["the happy dog ran", "a happy day in the park", "happy happy cat", "it was happy"]
NEGATIVE = ["the sad dog sat", "a sad night in the park", "sad sad cat", "it was sad"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("steer_improve")
    tokenizer = tiny_tokenizer(extra_tokens=(EVIL,))
    model_dir = save_tiny(root / "model", tiny_llama(len(tokenizer)), tokenizer)
    corpus = write_corpus(root / "corpus", n_docs=120)
    model, tokenizer = load_model(str(model_dir))
    model.generation_config.eos_token_id = None  # the random model would often stop after a few tokens
    spec = saekit.DictionarySpec.from_options(method="relu", d_in=32, d_sae=48, hookpoint="resid_post.0",
                                              model_name=str(model_dir))
    d = initialized(spec, torch.randn(256, 32, generator=torch.Generator().manual_seed(0)),
                    torch.Generator().manual_seed(1))
    saekit.save(d, root / "dict")
    held = list(TextConfig(dataset=str(corpus), context_size=32, model_batch_size=4)
                .token_stream(tokenizer, split="test", max_tokens=300))
    concept_ids = concept_token_ids(tokenizer, ["happy"])
    bench = SteeringBench(model, tokenizer, "resid_post.0", NEUTRAL, concept_ids, held)
    return {"root": root, "model": model, "tokenizer": tokenizer, "d": d, "held": held, "bench": bench,
            "concept_ids": concept_ids, "corpus": corpus, "model_dir": model_dir}


def _with_added(model, step):
    """A plain forward hook on layer 0 (resid_post.0) adding `step`: independent of saekit's splice."""
    return model.model.layers[0].register_forward_hook(
        lambda _m, _a, out: ((out[0] + step,) + tuple(out[1:])) if isinstance(out, tuple) else out + step)


def test_strength_and_cost_match_an_independent_computation(setup):
    model, tokenizer, bench = setup["model"], setup["tokenizer"], setup["bench"]
    special = set(tokenizer.all_special_ids)
    u = torch.randn(32, generator=torch.Generator().manual_seed(5))
    norms = []
    for prompt in NEUTRAL:  # ρ from hidden_states, one prompt at a time (no padding)
        ids = prompt_ids(tokenizer, prompt)
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[1][0]
        keep = torch.tensor([i not in special for i in ids[0].tolist()])
        norms.append(hidden[keep].norm(dim=-1))
    rho = float(torch.cat(norms).median())
    assert bench.activation_norm == pytest.approx(rho, rel=1e-5)
    step = 1.5 * rho * u / u.norm()

    def concept_logprob(prompt, hook):
        ids = prompt_ids(tokenizer, prompt)
        handle = _with_added(model, step) if hook else None
        try:
            logp = F.log_softmax(model(input_ids=ids).logits[0], dim=-1)
        finally:
            if handle is not None:
                handle.remove()
        keep = [t for t, i in enumerate(ids[0].tolist()) if i not in special]
        return float(torch.logsumexp(logp[keep][:, setup["concept_ids"]], dim=-1).mean())

    expected = np.mean([concept_logprob(p, True) - concept_logprob(p, False) for p in NEUTRAL])
    assert bench.strength(u, 1.5) == pytest.approx(expected, abs=1e-4)
    # batched: several directions (and scales) per forward pass give each one's own strength
    others = [torch.randn(32, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    batched = bench.strengths([u, *others], [1.5, 0.5, 1.0, 2.0], batch=3)
    alone = [bench.strength(v, a) for v, a in zip([u, *others], [1.5, 0.5, 1.0, 2.0])]
    assert batched == pytest.approx(alone, abs=1e-5) and batched[0] == pytest.approx(expected, abs=1e-4)
    assert len(set(np.round(batched, 6))) == 4

    def held_out_ce(hook):
        total = count = 0.0
        handle = _with_added(model, step) if hook else None
        try:
            for ids, mask in setup["held"]:
                logits = model(input_ids=ids).logits[:, :-1]
                ce = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
                total += float((ce * mask[:, 1:]).sum())
                count += float(mask[:, 1:].sum())
        finally:
            if handle is not None:
                handle.remove()
        return total / count

    assert bench.cost(u, 1.5) == pytest.approx(held_out_ce(True) - held_out_ce(False), abs=1e-5)
    assert bench.cost(u, 1.5) != 0 and bench.clean_ce == pytest.approx(held_out_ce(False), abs=1e-5)


def _concept_gradient(bench):
    """The direction at the hookpoint that raises the concept's log-probability fastest."""
    delta = torch.zeros(bench.width, requires_grad=True)
    from saekit.models.hooks import splice

    with torch.enable_grad(), splice(bench.model, bench.point, lambda x: x + delta):
        logits = bench.model(input_ids=bench.ids, attention_mask=bench.attention).logits
        logp = torch.logsumexp(F.log_softmax(logits, -1)[..., bench.concept_ids], -1)
        (logp * bench.counted).sum().backward()
    return delta.grad.clone()


def test_the_screen_keeps_helpful_latents_removes_harmful_ones_and_picks_the_best(setup):
    bench, d = setup["bench"], setup["d"]
    g = _concept_gradient(bench)
    dictionary = saekit.Dictionary(d.cfg)
    dictionary.provenance = d.provenance
    with torch.no_grad():
        rows = torch.randn(48, 32, generator=torch.Generator().manual_seed(3))
        rows[0], rows[1] = g / g.norm(), -g / g.norm()  # helps / hurts the concept
        dictionary.W_dec.copy_(F.normalize(rows, dim=-1))
    coefficients = torch.full((48,), 0.05)
    coefficients[0], coefficients[1] = 1.0, 0.8
    screen = screen_latents(bench, dictionary, coefficients, scale=0.3, candidates=8, random_directions=8)
    by_latent = {row["latent"]: row for row in screen.rows}
    assert by_latent[0]["relevant"] and not by_latent[1]["relevant"] and by_latent[1]["effect"] < 0
    assert screen.best["latent"] == 0 and by_latent[0]["effect"] > screen.threshold >= 0
    v = torch.randn(32, generator=torch.Generator().manual_seed(4))
    vectors = improved_vectors(dictionary, v, coefficients, screen)
    irrelevant = [row["latent"] for row in screen.rows if not row["relevant"]]
    pruned = v - sum(coefficients[i] * dictionary.W_dec[i] for i in irrelevant)
    torch.testing.assert_close(vectors["pruned"], pruned * v.norm() / pruned.norm())
    torch.testing.assert_close(vectors["best_latent"], dictionary.W_dec[0] * v.norm() / dictionary.W_dec[0].norm())
    for vector in vectors.values():
        assert float(vector.norm()) == pytest.approx(float(v.norm()), rel=1e-5)


def test_strength_at_cost_interpolates_along_the_curve():
    points = [{"cost": 0.1, "strength": 1.0}, {"cost": 0.3, "strength": 2.0}, {"cost": 0.5, "strength": 2.5}]
    assert strength_at_cost(points, 0.05) == pytest.approx(0.5)  # from the origin
    assert strength_at_cost(points, 0.2) == pytest.approx(1.5)
    assert strength_at_cost(points, 0.5) == pytest.approx(2.5)
    assert np.isnan(strength_at_cost(points, 0.6))


def test_the_probe_separates_its_prompt_sets_and_reads_generations(setup):
    model, tokenizer = setup["model"], setup["tokenizer"]
    concept = Concept("happy", POSITIVE, NEGATIVE, ["happy"])
    probe = train_concept_probe(model, tokenizer, "resid_post.0", concept)
    assert 0.0 <= probe.held_out_accuracy <= 1.0
    happy = tokenizer(" happy", add_special_tokens=False)["input_ids"]
    sad = tokenizer(" sad", add_special_tokens=False)["input_ids"]
    scores = probe_generations(model, tokenizer, "resid_post.0", probe, ["it was", "it was"], [happy * 3, sad * 3])
    assert scores[0] > 0.5 > scores[1]  # the word itself is the most separable token of the prompt sets


def test_bad_input_is_a_one_line_error(setup):
    bench = setup["bench"]
    with pytest.raises(saekit.SaekitError, match="positive prompt set of concept 'c' is empty"):
        Concept("c", ["", "  "], NEGATIVE, ["happy"])
    with pytest.raises(saekit.SaekitError, match="no concept words"):
        Concept("c", POSITIVE, NEGATIVE, [])
    with pytest.raises(saekit.SaekitError, match="finite positive"):
        bench.strength(torch.ones(32), float("nan"))
    with pytest.raises(saekit.SaekitError, match="neutral prompt set is empty"):
        SteeringBench(setup["model"], setup["tokenizer"], "resid_post.0", [], setup["concept_ids"], setup["held"])
    with pytest.raises(saekit.SaekitError, match="width 16 but resid_post.0 of the model has width 32"):
        SteeringBench(setup["model"], setup["tokenizer"], "resid_post.0", NEUTRAL, setup["concept_ids"],
                      setup["held"], width=16)


def test_improve_end_to_end_writes_curves_page_and_vectors(setup, tmp_path):
    concept = Concept(EVIL, POSITIVE, NEGATIVE, ["happy", EVIL])
    report = improve_steering_vector(setup["model"], setup["tokenizer"], setup["d"], concept, NEUTRAL, setup["held"],
                                     scales=(0.5, 1.0, 2.0), candidates=6, random_directions=4, max_new_tokens=4,
                                     progress=False)
    assert set(report.curves) == {"actadd", "sae_reconstruction", "pruned", "best_latent"}
    assert all([p["scale"] for p in points] == [0.5, 1.0, 2.0] for points in report.curves.values())
    assert report.display_scale == 1.0 and report.improved in report.curves
    assert report.screen.scale == 0.5  # the screen runs at the smallest scale unless told otherwise
    assert report.budget == pytest.approx(report.curves["actadd"][1]["cost"])
    assert set(report.generations) == {"unsteered", *report.curves}
    assert all(len(texts) == len(NEUTRAL) for texts in report.generations.values())
    page = write_steering_report([report], tmp_path / "out", title=EVIL)
    html = page.read_text()
    assert EVIL not in html and "&lt;script&gt;" in html and "<script" not in html
    assert (tmp_path / "out" / "curves.png").stat().st_size > 1000
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data[0]["improved"] == report.improved and len(data[0]["screen"]["latents"]) == 6
    norm = data[0]["meta"]["vector_norm"]
    for name in ("actadd", "sae_reconstruction", "pruned", "best_latent", "improved"):
        vector = np.load(tmp_path / "out" / "concept-0" / f"{name}.npy")
        assert vector.shape == (32,) and np.linalg.norm(vector) == pytest.approx(norm, rel=1e-5)


def test_cli_improve_and_its_bad_input(setup, tmp_path, capsys):
    root = setup["root"]
    (tmp_path / "pos.txt").write_text("\n".join(POSITIVE))
    (tmp_path / "neg.txt").write_text("\n".join(NEGATIVE))
    (tmp_path / "empty.txt").write_text("\n \n")
    (tmp_path / "neutral.txt").write_text("\n".join(NEUTRAL))
    common = ["steering-vector", "--dictionary", str(root / "dict"), "--negative", str(tmp_path / "neg.txt"),
              "--neutral", str(tmp_path / "neutral.txt"), "--concept-words", "happy", "--candidates", "4",
              "--random-directions", "3", "--cost-tokens", "200", "--dataset", str(setup["corpus"]),
              "--max-new-tokens", "3", "--no-progress"]
    out = tmp_path / "improved"
    assert main([*common, "--positive", str(tmp_path / "pos.txt"), "--scales", "0.5", "1",
                 "--improve", str(out)]) == 0
    assert (out / "index.html").is_file() and (out / "concept-0" / "improved.npy").is_file()
    assert "strength at ActAdd cost" in capsys.readouterr().out

    def one_line_error(argv, match):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()  # (model loading may print a progress bar first)
        assert match in err.splitlines()[-1] and err.splitlines()[-1].startswith("saekit steering-vector: error:")
        assert "Traceback" not in err

    one_line_error([*common, "--positive", str(tmp_path / "empty.txt"), "--improve", str(out)], "holds no prompts")
    one_line_error([*common, "--positive", str(tmp_path / "pos.txt"), "--scales", "nan", "1", "--improve", str(out)],
                   "scales must be finite positive numbers, got nan")
    narrow = saekit.Dictionary(saekit.DictionaryConfig(method="relu", d_in=16, d_sae=24))
    narrow.provenance = saekit.Provenance(model_name=str(setup["model_dir"]), hookpoint="resid_post.0")
    saekit.save(narrow, tmp_path / "narrow")
    wide = [a if a != str(root / "dict") else str(tmp_path / "narrow") for a in common]
    one_line_error([*wide, "--positive", str(tmp_path / "pos.txt"), "--improve", str(out)],
                   "has width 16 but resid_post.0 of the model has width 32")
    # the output directory: saekit's own is replaced by a second run, anything else refused before the
    # model loads unless --overwrite
    (out / "stale.txt").write_text("from the first run")
    assert main([*common, "--positive", str(tmp_path / "pos.txt"), "--scales", "1", "--screen-scale", "0.25",
                 "--improve", str(out)]) == 0
    assert not (out / "stale.txt").exists() and (out / "index.html").is_file()
    assert json.loads((out / "report.json").read_text())[0]["screen"]["scale"] == 0.25
    one_line_error([*common, "--positive", str(tmp_path / "pos.txt"), "--screen-scale", "-1", "--improve", str(out)],
                   "--screen-scale must be finite positive numbers, got -1.0")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    one_line_error([*common, "--positive", str(tmp_path / "pos.txt"), "--improve", str(foreign)],
                   "was not written by saekit")
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert main([*common, "--positive", str(tmp_path / "pos.txt"), "--scales", "1", "--improve", str(foreign),
                 "--overwrite"]) == 0
    assert not (foreign / "notes.txt").exists() and (foreign / "report.json").is_file()
