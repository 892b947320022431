"""Sparse probing and autointerp on the offline default model, with times on this machine.

1. Trains a TopK SAE (d_sae 2304 = 4 x 576, k 32) on SmolLM2-135M-Instruct's resid_post.15 (the middle
   of 30 layers) over --train-tokens tokens of the Python docs, or reuses the one a previous run saved.
2. Sparse probing (`saekit eval --probing`, the library call behind it) on five sae-probes datasets:
   k-sparse L1 probes on latents (k 1, 2, 5, 16) vs an L2 probe on the raw activations; test AUC per
   dataset and the mean, a plot, and the time of each stage.
3. Autointerp end to end through `saekit autointerp` against the local fake chat server
   (tests/chat_server.py, started as a separate process: real HTTP), then the same command again, which
   the answer cache serves without a request.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/evaluation_suite.py --out runs/eval-suite
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import machine

ROOT = Path(__file__).resolve().parents[1]
HOOKPOINT = "resid_post.15"
DATASETS = ["117_us_state_FL", "118_us_state_CA", "154_athlete_sport_football", "125_world_country_Italy",
            "95_toxic_is"]


def train_sae(out: Path, tokens: int) -> tuple[Path, float]:
    import saekit
    from saekit.data.config import ModelConfig, TextConfig
    from saekit.data.stream import ActivationStream

    path = out / "topk-k32-2304"
    if (path / "cfg.json").exists():
        return path, 0.0
    start = time.perf_counter()
    model, tokenizer = ModelConfig(model="offline-default").load()
    text = TextConfig(context_size=128, model_batch_size=16)
    stream = ActivationStream(model, text.token_stream(tokenizer, "train"), [HOOKPOINT])
    spec = saekit.DictionarySpec.from_options(method="topk", d_in=576, d_sae=2304, k=32, hookpoint=HOOKPOINT,
                                              model_name="offline-default", dataset=text.dataset,
                                              context_size=text.context_size)
    (d,) = saekit.train(stream, [spec], total_tokens=tokens, batch_size=1024, log_file=str(out / "log.jsonl"))
    saekit.save(d, path)
    return path, time.perf_counter() - start


def run_cli(args: list[str]) -> tuple[str, float]:
    from saekit.cli import main

    buffer = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        code = main(args)
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"saekit {' '.join(args)} failed with {code}")
    return buffer.getvalue(), seconds


def probing(sae: Path, out: Path) -> tuple[dict, float]:
    import saekit
    from saekit.evaluation.probing import ProbingOptions, plot_probing, sparse_probing
    from saekit.models.loading import load_model

    start = time.perf_counter()
    model, tokenizer = load_model("offline-default")
    options = ProbingOptions(ks=[1, 2, 5, 16], cache_dir=out / "probing-cache", progress=True)
    result = sparse_probing(model, tokenizer, {"topk-k32": saekit.load(sae)}, DATASETS, options)
    seconds = time.perf_counter() - start
    (out / "probing.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_probing(result, out / "probing.png")
    return result, seconds


def autointerp(sae: Path, out: Path, latents: int, tokens: int) -> list[tuple[str, float]]:
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "chat_server.py")], stdout=subprocess.PIPE,
                              text=True)
    try:
        url = server.stdout.readline().strip()  # type: ignore[union-attr]
        args = ["autointerp", str(sae), "--endpoint", url, "--model", "oracle", "--latents", str(latents),
                "--tokens", str(tokens), "--cache", str(out / "chat-cache"), "--no-progress",
                "--out", str(out / "autointerp.json")]
        return [run_cli(args), run_cli(args)]
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/eval-suite"))
    parser.add_argument("--train-tokens", type=int, default=150_000)
    parser.add_argument("--latents", type=int, default=30)
    parser.add_argument("--autointerp-tokens", type=int, default=20_000)
    parser.add_argument("--parts", nargs="+", choices=("probing", "autointerp"), default=["probing", "autointerp"],
                        help="Which evaluations to run (the SAE is trained or reused either way).")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(machine(torch.get_num_threads()))
    sae, train_s = train_sae(args.out, args.train_tokens)
    print(f"SAE: {sae} (trained in {train_s:.0f}s)" if train_s else f"SAE: {sae} (reused)")

    if "probing" in args.parts:
        report_probing(sae, args.out)
    if "autointerp" in args.parts:
        report_autointerp(sae, args)
    print(machine(torch.get_num_threads()))


def report_probing(sae: Path, out: Path) -> None:
    result, probe_s = probing(sae, out)
    print(f"\nsparse probing at {HOOKPOINT}: test AUC, k-sparse L1 probes on latents vs L2 probe on raw activations")
    ks = result["options"]["ks"]
    print(f"{'dataset':32s} {'train':>5s} {'test':>5s} {'raw':>6s} " + " ".join(f"{'k=' + str(k):>6s}" for k in ks))
    for row in result["rows"]:
        print(f"{row['dataset']:32s} {row['n_train']:5d} {row['n_test']:5d} {row['baseline_auc']:6.3f} "
              + " ".join(f"{row[f'auc_k{k}']:6.3f}" for k in ks))
    mean = result["summary"][0]
    print(f"{'mean':32s} {'':5s} {'':5s} {mean['baseline_auc']:6.3f} "
          + " ".join(f"{mean[f'auc_k{k}']:6.3f}" for k in ks))
    timing = ", ".join(f"{k.removesuffix('_s')} {v:.1f}s" for k, v in result["timing"].items())
    print(f"probing time: {probe_s:.1f}s in all (model load included; {timing})")


def report_autointerp(sae: Path, args: argparse.Namespace) -> None:
    print(f"\nautointerp through the local fake chat server ({args.latents} latents, "
          f"{args.autointerp_tokens} held-out tokens)")
    for label, (text, seconds) in zip(("first run", "rerun"), autointerp(sae, args.out, args.latents,
                                                                           args.autointerp_tokens)):
        lines = [line for line in text.splitlines() if line.startswith(("autointerp score", "chat:", "time:"))]
        print(f"[{label}, {seconds:.1f}s wall incl. model load and dashboard pass]")
        print("\n".join(lines))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
