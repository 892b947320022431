"""Steering vectors improved with an SAE on the offline default model (METHODS.md §5(a); docs/steering.md).

For two concepts (anger vs calm, as in the GDM update's "anger" ActAdd vector, and weddings vs everyday
events, its "wedding" vector), at resid_post.6 of SmolLM2-135M-Instruct with a TopK SAE trained here
from a `saekit cache` (or one given with --dictionary): the concept-strength vs cost curves of the
difference-of-means (ActAdd) vector, its SAE reconstruction, the vector with irrelevant latents removed
and the best single latent; a page with the curves and the generations at one scale side by side; and
the one-line errors of bad input (empty prompt set, a dictionary of another width, NaN scales).

    saekit cache --model offline-default --hookpoints resid_post.6 --tokens 300000 --out out/cache-l6
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/steering.py --cache out/cache-l6 \\
        --save-dictionary out/steer-sae --out docs/figures/steering
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import offline_model

import saekit
from saekit.cli import main as cli
from saekit.data.cache import open_cache
from saekit.data.config import TextConfig
from saekit.inspect.steering_eval import NEUTRAL_PROMPTS, Concept, SteeringBench, concept_token_ids
from saekit.inspect.steering_improve import improve_steering_vector, mean_latent_difference, screen_latents
from saekit.inspect.steering_page import LABELS, write_steering_report

CONCEPTS = [
    Concept("anger (vs calm)", [
        "I am so angry at you", "He was furious about the delay", "She screamed in rage at the driver",
        "I hate you, get out of my sight", "They were enraged when they heard the news",
        "This makes me so mad I could scream", "He slammed the door in anger",
        "I'm sick of your excuses, I am furious", "She glared at him with pure hatred",
        "Stop lying to me, I am outraged", "The crowd was enraged by the verdict",
        "I can't stand this anymore, it infuriates me"], [
        "I am so calm with you", "He was relaxed about the delay", "She smiled peacefully at the driver",
        "I like you, please stay here", "They were serene when they heard the news",
        "This makes me so calm I could sleep", "He closed the door gently",
        "I'm happy with your reasons, I am at peace", "She looked at him with gentle kindness",
        "Stop worrying about it, I am relaxed", "The crowd was soothed by the verdict",
        "I can handle this easily, it relaxes me"],
        ["angry", "furious", "rage", "hate", "mad", "anger", "annoyed", "hatred"]),
    Concept("weddings (vs everyday events)", [
        "We went to a wedding last weekend", "The bride wore a white dress", "They got married in June",
        "The wedding ceremony was beautiful", "He proposed and the wedding is next year",
        "I talk about weddings constantly", "The groom gave a speech at the reception",
        "They exchanged rings at the altar", "Our wedding planner booked the venue",
        "The newlyweds left after the party", "Her bridesmaids wore blue", "The wedding cake had five tiers"], [
        "We went to a meeting last weekend", "The manager wore a grey suit", "They moved house in June",
        "The budget meeting was long", "He applied and the project is next year",
        "I talk about computers constantly", "The speaker gave a talk at the conference",
        "They exchanged emails at the office", "Our travel agent booked the hotel",
        "The engineers left after the meeting", "Her colleagues wore blue", "The birthday cake had five candles"],
        ["wedding", "bride", "groom", "married", "marriage", "weddings", "ceremony", "wed"]),
]


def train_sae(cache_dir: Path, hookpoint: str, d_sae: int, k: int, steps: int, batch: int) -> saekit.Dictionary:
    cache = open_cache(cache_dir)
    held = 16_384
    steps = min(steps, (cache.total_tokens - held) // batch)
    spec = saekit.DictionarySpec.from_options(method="topk", d_in=cache.d[hookpoint], d_sae=d_sae, k=k, lr=1e-3,
                                              hookpoint=hookpoint, model_name="offline-default", name="steer-topk")
    started = time.perf_counter()
    (d,) = saekit.train(cache.stream(hookpoint, batch, shuffle=True, seed=0), [spec], total_tokens=steps * batch,
                        batch_size=batch, progress=True)
    rows = torch.cat(list(cache.stream(hookpoint, 4096, start_token=cache.total_tokens - held)))
    with torch.no_grad():
        fvu = float((rows - d(rows)).pow(2).sum() / (rows - rows.mean(0)).pow(2).sum())
    print(f"trained {spec.name}: d_sae={d_sae} k={k} steps={steps} batch={batch} "
          f"s={time.perf_counter() - started:.0f} held-out FVU={fvu:.3f} (last {held} cache rows)")
    return d


def screens_by_scale(model, tokenizer, d: saekit.Dictionary, concept: Concept, held_out, scales: list[float],
                     candidates: int, random_directions: int) -> None:
    """The latent screen run at every scale: how its verdict depends on the scale it is run at."""
    bench = SteeringBench(model, tokenizer, d.provenance.hookpoint, NEUTRAL_PROMPTS,
                          concept_token_ids(tokenizer, concept.words), held_out)
    coefficients = mean_latent_difference(model, tokenizer, d, concept.positive, concept.negative)
    print(f"{'screen at':>10} {'random mean':>12} {'random sd':>10} {'threshold':>10} {'relevant':>9} best latent")
    for scale in scales:
        screen = screen_latents(bench, d, coefficients, scale, candidates, random_directions)
        spread = statistics.stdev(screen.random_effects)
        relevant = sum(row["relevant"] for row in screen.rows)
        print(f"{'a=' + format(scale, 'g'):>10} {statistics.mean(screen.random_effects):>+12.3f} {spread:>10.3f} "
              f"{screen.threshold:>10.3f} {relevant:>5}/{len(screen.rows):<3} {screen.best['latent']} "
              f"({screen.best['effect']:+.3f})")


def bad_input(dictionary: Path, tmp: Path) -> None:
    """The CLI's answers to bad input, one line each."""
    (tmp / "pos.txt").write_text("\n".join(CONCEPTS[0].positive))
    (tmp / "neg.txt").write_text("\n".join(CONCEPTS[0].negative))
    (tmp / "empty.txt").write_text("\n\n")
    narrow = saekit.Dictionary(saekit.DictionaryConfig(method="topk", d_in=64, d_sae=128, k=4))
    narrow.provenance = saekit.Provenance(model_name="offline-default", hookpoint="resid_post.6")
    saekit.save(narrow, tmp / "narrow")
    base = ["steering-vector", "--negative", str(tmp / "neg.txt"), "--concept-words", "angry", "--no-progress",
            "--improve", str(tmp / "out")]
    cases = {"empty prompt set": ["--dictionary", str(dictionary), "--positive", str(tmp / "empty.txt")],
             "dictionary of another width": ["--dictionary", str(tmp / "narrow"), "--positive", str(tmp / "pos.txt")],
             "NaN scales": ["--dictionary", str(dictionary), "--positive", str(tmp / "pos.txt"), "--scales", "nan"]}
    for name, extra in cases.items():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = cli([*base, *extra])
        print(f"{name}: exit {code}: {err.getvalue().strip().splitlines()[-1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=None, help="Activation cache to train the SAE from.")
    parser.add_argument("--dictionary", type=Path, default=None, help="Use this SAE instead of training one.")
    parser.add_argument("--save-dictionary", type=Path, default=None, help="Save the trained SAE here.")
    parser.add_argument("--hookpoint", default="resid_post.6")
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--steps", type=int, default=280)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0])
    parser.add_argument("--display-scale", type=float, default=None)
    parser.add_argument("--screen-scale", type=float, default=None)
    parser.add_argument("--cost-tokens", type=int, default=512)
    parser.add_argument("--candidates", type=int, default=32)
    parser.add_argument("--random-directions", type=int, default=12)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("out/steering"), help="Page, curves and vectors.")
    args = parser.parse_args()

    if args.dictionary is not None:
        d = saekit.load(args.dictionary)
        dictionary = args.dictionary
    elif args.cache is not None:
        d = train_sae(args.cache, args.hookpoint, args.d_sae, args.k, args.steps, args.batch)
        dictionary = saekit.save(d, args.save_dictionary or Path(tempfile.mkdtemp()) / "sae")
    else:
        raise SystemExit("pass --cache (to train an SAE) or --dictionary")
    model, tokenizer = offline_model()
    held_out = list(TextConfig(context_size=128, model_batch_size=8)
                    .token_stream(tokenizer, split="test", max_tokens=args.cost_tokens))
    reports = []
    for concept in CONCEPTS:
        started = time.perf_counter()
        report = improve_steering_vector(model, tokenizer, d, concept, NEUTRAL_PROMPTS, held_out, args.scales,
                                         args.display_scale, args.screen_scale, candidates=args.candidates,
                                         random_directions=args.random_directions, max_new_tokens=args.max_new_tokens)
        reports.append(report)
        removed = sum(not row["relevant"] for row in report.screen.rows)
        print(f"\n{concept.name}: threads={torch.get_num_threads()} load={os.getloadavg()[0]:.1f} "
              f"s={time.perf_counter() - started:.0f} rho={report.activation_norm:.2f} "
              f"|v|={report.meta['vector_norm']:.2f} "
              f"clean CE={report.clean_ce:.3f} probe held-out accuracy={report.probe_accuracy:.2f} "
              f"screen threshold={report.screen.threshold:.3f} removed {removed}/{len(report.screen.rows)} "
              f"best latent {report.screen.best['latent']} (effect {report.screen.best['effect']:.3f})")
        print(f"{'vector':<30} " + " ".join(f"{'a=' + format(s, 'g'):>15}" for s in report.scales)
              + f" {'at budget':>10} {'probe':>6}")
        for row in report.summary()[1:]:
            cells = " ".join(f"{p['strength']:>+7.3f}/{p['cost']:<7.3f}" for p in report.curves[row["method"]])
            print(f"{LABELS[row['method']]:<30} {cells} {row['strength_at_budget']:>10.3f} {row['probe']:>6.3f}")
        print(f"(cells: strength/cost; budget = ActAdd's cost at a={report.display_scale:g}: {report.budget:.3f}; "
              f"unsteered probe {report.summary()[0]['probe']:.3f}; most strength at budget: {report.improved})")
        screens_by_scale(model, tokenizer, d, concept, held_out, args.scales, args.candidates,
                         args.random_directions)
    page = write_steering_report(reports, args.out, f"offline-default {args.hookpoint}, {dictionary}")
    print(f"\npage -> {page}, curves -> {args.out / 'curves.png'}\n")
    with tempfile.TemporaryDirectory() as tmp:
        bad_input(Path(dictionary), Path(tmp))


if __name__ == "__main__":
    main()
