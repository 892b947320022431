"""Attention dictionaries on the offline default model (SmolLM2-135M-Instruct, Python docs), one middle layer:

1. One model forward per batch feeds three members of one run (`saekit.train`, one stream of sequences):
   a sparse attention replacement (Lorsa: attn_in.L -> attn_out.L), a TopK SAE on attn_out.L and a TopK SAE
   on attn_z.L (per-head outputs), all of the same width and k (so the same L0).
2. Held-out: the replacement's and the attn_out SAE's FVU, L0, CE-loss score and KL with each spliced in
   (one clean and one zero-ablated forward shared); the attn_z SAE's FVU and L0.
3. Head attribution of the attn_z SAE: the fraction of decoder norm on the top head, for every alive latent
   (summary) and for 24 of them (listed).
4. Dashboards of the replacement (its latent pages show the source tokens of the top activations) and of
   the attn_z SAE (heads), and, with --screenshot, a Chromium screenshot of one latent page of each.

The train stream is read once from the model and replayed --epochs times (CPU budget). Prints a JSON
summary and writes it to --out/results.json.

    nice -n 10 .venv/bin/python benchmarks/attention_real.py --out out/attention-real
    nice -n 10 .venv/bin/python benchmarks/attention_real.py --out out/attention-real --reuse

--reuse skips steps 1's reading and training when --out already holds the three members a previous run
of this script saved (lorsa, sae_attn_out, sae_attn_z, with its log.jsonl); the results then say so and
take the training facts from that log.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import torch
from common import machine, offline_model

import saekit
from saekit.attention import save as save_attention
from saekit.attention import sparse_attention_spec
from saekit.attention.evaluate import evaluate_replacements
from saekit.attention.heads import head_attribution, summary
from saekit.data.config import TextConfig
from saekit.data.stream import ActivationStream
from saekit.evaluation.metrics import MetricsAccumulator
from saekit.inspect.dashboard import build_dashboards
from saekit.models.sites import attention_heads


class Replay:
    """Batches of sequences kept in memory (float16) and replayed `epochs` times as float32."""

    def __init__(self, batches: list[dict[str, torch.Tensor]], epochs: int) -> None:
        self.batches = [{k: v.half() if v.is_floating_point() else v for k, v in b.items()} for b in batches]
        self.epochs = epochs

    def __iter__(self):
        for _ in range(self.epochs):
            for batch in self.batches:
                yield {k: v.float() if v.is_floating_point() else v for k, v in batch.items()}


def read_batches(model, tokenizer, points: list[str], tokens: int, split: str, context: int,
                 batch: int) -> list[dict[str, torch.Tensor]]:
    text = TextConfig(context_size=context, model_batch_size=batch)
    stream = ActivationStream(model, text.token_stream(tokenizer, split=split, max_tokens=tokens), points,
                              progress=True, sequences=True)
    return list(stream)


def screenshot(page: Path, out: Path) -> bool:
    """A headless-Chromium screenshot of `page` (as tests/inspect/test_browser.py drives it)."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        print("no chromium/chromedriver: run scripts/setup_browser.sh for screenshots")
        return False
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1400", "--allow-file-access-from-files"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        driver.get(page.as_uri())
        driver.save_screenshot(str(out))
    finally:
        driver.quit()
    return True


def final_mse(log: Path) -> dict[str, float]:
    """Each member's last logged training MSE (normalised activations)."""
    last: dict[str, float] = {}
    for line in log.read_text().splitlines():
        record = json.loads(line)
        if "dictionary" in record and "mse" in record:
            last[record["dictionary"]] = record["mse"]
    return last


def reuse(out: Path) -> tuple:
    """The members an earlier run saved in `out`, and the training facts its log holds."""
    from saekit.attention import load as load_attention

    log = out / "log.jsonl"
    if not log.is_file():
        raise SystemExit(f"--reuse: {log} is missing; run without --reuse first")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [r for r in records if "step" in r]
    training = {"reused": True, "steps_logged": max(r["step"] for r in steps),
                "sequences_trained": max(r["tokens"] for r in steps), "train_s": max(r["elapsed_s"] for r in steps),
                "final_train_mse": final_mse(log), "lr": steps[0].get("lr")}
    return (load_attention(out / "lorsa"), saekit.load(out / "sae_attn_out"), saekit.load(out / "sae_attn_z"),
            training)


def train_members(args: argparse.Namespace, model, tokenizer, layer: int, points: list[str]) -> tuple:
    """Step 1: read the train stream once, train the three members in one run, save them."""
    attn_out, attn_z = f"attn_out.{layer}", f"attn_z.{layer}"
    t0 = time.perf_counter()
    batches = read_batches(model, tokenizer, points, args.train_tokens, "train", args.context, args.batch)
    read_s = time.perf_counter() - t0
    unique = int(sum(int(b["mask"].sum()) for b in batches))
    lorsa_spec, objective = sparse_attention_spec(model, layer, d_sae=args.d_sae, k=args.k,
                                                  qk_repeat=args.qk_repeat, lr=args.lr,
                                                  model_name="offline-default")
    d = batches[0][attn_out].shape[-1]
    sae_out = saekit.DictionarySpec.from_options(method="topk", d_in=d, d_sae=args.d_sae, k=args.k, lr=args.lr,
                                                 hookpoint=attn_out, model_name="offline-default",
                                                 name=f"topk-attn_out.{layer}")
    sae_z = saekit.DictionarySpec.from_options(method="topk", d_in=batches[0][attn_z].shape[-1],
                                               d_sae=args.d_sae, k=args.k, lr=args.lr, hookpoint=attn_z,
                                               model_name="offline-default", name=f"topk-attn_z.{layer}")
    t0 = time.perf_counter()
    steps = len(batches) * args.epochs
    lorsa, sae, sae_heads = saekit.train(Replay(batches, args.epochs), [lorsa_spec, sae_out, sae_z],
                                         objective=[objective, None, None], total_tokens=steps * args.batch,
                                         batch_size=args.batch, log_file=str(args.out / "log.jsonl"),
                                         log_every=10)
    train_s = time.perf_counter() - t0
    save_attention(lorsa, args.out / "lorsa", overwrite=True)
    saekit.save(sae, args.out / "sae_attn_out", overwrite=True)
    saekit.save(sae_heads, args.out / "sae_attn_z", overwrite=True)
    training = {"reused": False, "train_tokens_unique": unique, "epochs": args.epochs, "steps": steps,
                "batch_sequences": args.batch, "lr": args.lr, "read_s": read_s, "train_s": train_s,
                "final_train_mse": final_mse(args.out / "log.jsonl")}
    return lorsa, sae, sae_heads, training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=15, help="Layer (SmolLM2-135M has 30).")
    parser.add_argument("--d-sae", type=int, default=2304, help="Width of every member (OV heads, latents).")
    parser.add_argument("--k", type=int, default=32, help="Active latents per token of every member.")
    parser.add_argument("--qk-repeat", type=int, default=1, help="QK heads per model head.")
    parser.add_argument("--train-tokens", type=int, default=120_000, help="Unique training tokens read.")
    parser.add_argument("--epochs", type=int, default=2, help="Passes over them.")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-tokens", type=int, default=16_000, help="Held-out tokens for the metrics.")
    parser.add_argument("--dashboard-tokens", type=int, default=12_000)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="Sequences per step (and per model forward).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--screenshot", action="store_true", help="Chromium screenshots of two latent pages.")
    parser.add_argument("--out", type=Path, default=Path("out/attention-real"))
    parser.add_argument("--reuse", action="store_true", help="Evaluate the members saved in --out by an earlier "
                        "run instead of training them again.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model, tokenizer = offline_model()
    layer = args.layer
    attn_in, attn_out, attn_z = f"attn_in.{layer}", f"attn_out.{layer}", f"attn_z.{layer}"
    points = [attn_in, attn_z, attn_out]

    if args.reuse:
        lorsa, sae, sae_heads, training = reuse(args.out)
    else:
        lorsa, sae, sae_heads, training = train_members(args, model, tokenizer, layer, points)

    t0 = time.perf_counter()
    text = TextConfig(context_size=args.context, model_batch_size=args.batch)
    rows = evaluate_replacements(model, tokenizer, {"lorsa": lorsa, "topk_sae_attn_out": sae}, text,
                                 args.eval_tokens)
    held = read_batches(model, tokenizer, [attn_z], args.eval_tokens, "test", args.context, args.batch)
    heads_metrics = MetricsAccumulator(args.d_sae)
    for batch in held:
        z = batch[attn_z][batch["mask"]]
        latents = sae_heads.encode(z)
        heads_metrics.update(z, sae_heads.decode(latents), latents)
    eval_s = time.perf_counter() - t0

    n_heads, _ = attention_heads(model, attn_z) or (0, 0)
    fractions = head_attribution(sae_heads.W_dec, n_heads)
    alive = (heads_metrics.firing_density() > 0).nonzero().flatten().tolist()
    random.Random(0).shuffle(alive)
    listed = sorted(alive[:24])
    top_fraction, top_head = fractions.max(-1)
    attribution = {"summary_alive": summary(fractions[alive]) if alive else {},
                   "latents": [{"latent": i, "top_head": int(top_head[i]), "top_head_fraction": float(top_fraction[i]),
                                "fractions": [round(float(f), 3) for f in fractions[i]]} for i in listed]}

    t0 = time.perf_counter()
    dashboard_batches = list(text.token_stream(tokenizer, split="train", max_tokens=args.dashboard_tokens))
    lorsa_site = build_dashboards(lorsa, model, tokenizer, dashboard_batches, args.out / "lorsa-dashboard",
                                  top_examples=10)
    heads_site = build_dashboards(sae_heads, model, tokenizer, dashboard_batches, args.out / "attn-z-dashboard",
                                  top_examples=10)
    dashboard_s = time.perf_counter() - t0
    shots = []
    if args.screenshot:
        density = lorsa.log_feature_density
        assert density is not None
        pick = int(torch.argsort(density, descending=True)[len(density) // 4])  # a moderately dense latent
        for site, latent, name in ((args.out / "lorsa-dashboard", pick, "lorsa-latent.png"),
                                   (args.out / "attn-z-dashboard", listed[0] if listed else 0, "attn-z-latent.png")):
            if screenshot(site / "latents" / f"{latent}.html", args.out / name):
                shots.append(str(args.out / name))

    keep = ("name", "kind", "fvu", "l0", "ce_loss_score", "kl_spliced", "kl_score", "ce_clean", "ce_spliced",
            "ce_zero_ablation", "delta_lm_loss", "dead_fraction", "eval_targets")
    results = {
        "model": "offline-default (SmolLM2-135M-Instruct)", "layer": layer, "d_sae": args.d_sae, "k": args.k,
        "qk_heads": lorsa.qk_config.n_qk_heads, "training": training, "context": args.context,
        "spliced": [{key: row.get(key) for key in keep} for row in rows],
        "attn_z_sae": {key: value for key, value in heads_metrics.result().items()
                       if key in ("fvu", "l0", "dead_fraction")},
        "head_attribution": attribution,
        "dashboards": {"lorsa": {k: v for k, v in lorsa_site.items() if not isinstance(v, dict)},
                       "attn_z": {k: v for k, v in heads_site.items() if not isinstance(v, dict)}},
        "screenshots": shots,
        "seconds": {"eval": eval_s, "dashboards": dashboard_s,
                    "total": time.perf_counter() - started},
        "machine": machine(args.threads), "pid": os.getpid(),
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
