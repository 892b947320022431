"""Transcoders at every layer and cross-layer transcoders on the offline default model (SmolLM2-135M-Instruct,
30 layers, d 576; Python docs): the issue's figures.

    train       a per-layer transcoder set and a CLT over the chosen layers (default all 30), TopK with the
                same k per layer (so equal total L0), trained from ONE model stream through saekit.train;
                then the replacement model on held-out tokens (every MLP replaced at once, and each layer
                alone): NMSE, L0 and dead fraction per layer, CE-loss score, KL, delta LM loss; throughput
                (tokens/s, CPU-seconds) against the model forward alone; figures and a JSON file.
    throughput  tokens/s and CPU-seconds of the model forward alone, of the PLT set alone, of the CLT
                alone and of both, each on the same number of streamed tokens.
    memory      peak RSS of CLT training (one child process per configuration, random activations)
                against the formula 4 × (parameter bytes) (+ activations), as L grows, with a reach limit
                and with bf16 decoders.

    .venv/bin/python benchmarks/circuits.py train [--layers all --tokens 65536 --d-sae 1152 --k 32]
    .venv/bin/python benchmarks/circuits.py throughput [--tokens 8192]
    .venv/bin/python benchmarks/circuits.py memory

Budgets (2-core machine): `train` at the defaults reads 65,536 training tokens (64 steps of 1,024) and 2,048
held-out tokens, ~25 CPU-minutes (a shared machine stretches the wall time several-fold); `throughput` ~5;
`memory` ~5. `train` checkpoints to --out and resumes if killed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import machine, offline_model, peak_rss_mib, rss_mib

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "figures"


def cpu_seconds() -> float:
    """CPU time of this process, all threads (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _text(args: argparse.Namespace) -> Any:
    from saekit.data.config import TextConfig

    return TextConfig(dataset="offline-default", context_size=args.context, model_batch_size=args.model_batch)


def _specs(args: argparse.Namespace, layers: list[int], d: int, kinds: tuple[str, ...]) -> list[Any]:
    from saekit.circuits import CLTSpec
    from saekit.circuits.transcoder_set import transcoder_set_specs

    specs: list[Any] = []
    options = dict(method="topk", d_sae=args.d_sae, k=args.k, lr=args.lr, model_name="offline-default",
                   dataset="offline-default", context_size=args.context)
    if "plt" in kinds:
        specs += transcoder_set_specs(layers, d, name="plt", **options)
    if "clt" in kinds:
        specs.append(CLTSpec.from_options(n_layers=len(layers), layers=layers, d_in=d, name="clt",
                                          decoder_dtype=args.decoder_dtype, **options))
    return specs


def _stream(model: Any, tokenizer: Any, args: argparse.Namespace, layers: list[int]) -> Any:
    from saekit.circuits.layers import hookpoints_for
    from saekit.data.stream import ActivationStream

    return ActivationStream(model, _text(args).token_stream(tokenizer, "train"), hookpoints_for(layers))


# ------------------------------------------------------------------------------------------ train
def train(args: argparse.Namespace) -> None:
    import saekit
    from saekit.circuits import mlp_layer_count, parse_layers
    from saekit.circuits.replacement import replacement_evaluation
    from saekit.circuits.transcoder_set import TranscoderSet

    torch.set_num_threads(args.threads)
    model, tokenizer = offline_model()
    layers = parse_layers(args.layers, mlp_layer_count(model))
    d = model.config.hidden_size
    out = Path(args.out)
    specs = _specs(args, layers, d, ("plt", "clt"))
    stream = _stream(model, tokenizer, args, layers)
    run = saekit.RunConfig(total_tokens=args.tokens, batch_size=args.batch, checkpoint_dir=str(out / "checkpoints"),
                           checkpoint_every=args.checkpoint_every, normalization_tokens=args.batch * 4, log_every=4)
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    trained = saekit.train(stream, specs, run=run)
    train_wall, train_cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    tset = TranscoderSet.from_training(specs[:-1], trained[:-1], name="plt")
    clt = trained[-1]
    saekit.save(tset, out / "plt")
    saekit.save(clt, out / "clt")
    print(f"{machine(args.threads)} trained {len(layers)} layers on {args.tokens} tokens in {train_wall:.0f} s "
          f"({train_cpu:.0f} CPU-s; model forward {stream.forward_seconds:.0f} s wall in the stream)")

    held = list(_text(args).token_stream(tokenizer, "test", max_tokens=args.eval_tokens))
    results = {}
    for name, obj in (("plt", tset), ("clt", clt)):
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        results[name] = replacement_evaluation(model, held, obj, per_layer=not args.no_per_layer)
        results[name]["eval_cpu_s"] = cpu_seconds() - cpu0
        results[name]["eval_wall_s"] = time.perf_counter() - wall0
    summary = {"machine": machine(args.threads), "layers": layers, "d_sae_per_layer": args.d_sae, "k_per_layer": args.k,
               "train_tokens": args.tokens, "batch": args.batch, "eval_tokens": int(results["plt"]["eval_targets"]),
               "train_wall_s": train_wall, "train_cpu_s": train_cpu, "stream_forward_wall_s": stream.forward_seconds,
               "peak_rss_mib": peak_rss_mib(), "results": results}
    out.mkdir(parents=True, exist_ok=True)
    (out / "circuits-results.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_results(summary)
    _figures(summary, Path(args.figures))


def _print_results(summary: dict[str, Any]) -> None:
    print("\nreplacement model, every MLP replaced at once (held-out tokens):")
    print("kind  L0_total  mean_NMSE  CE_clean  CE_replaced  CE_zero  CE_loss_score  delta_LM  KL   KL_score")
    for name, r in summary["results"].items():
        print(f"{name:4}  {r['l0']:8.1f}  {r['fvu']:9.4f}  {r['ce_clean']:8.4f}  {r['ce_replaced']:11.4f}  "
              f"{r['ce_zero_ablation']:7.3f}  {r['ce_loss_score']:13.4f}  {r['delta_lm_loss']:8.4f}  "
              f"{r['kl_replaced']:.4f}  {r['kl_score']:.4f}")
    print("\nper layer (PLT | CLT): NMSE, L0, dead fraction, delta LM loss and KL with that layer alone replaced")
    for p, c in zip(summary["results"]["plt"]["layers"], summary["results"]["clt"]["layers"]):
        alone = (f"  dLM {p.get('delta_lm_loss', float('nan')):.4f} | {c.get('delta_lm_loss', float('nan')):.4f}"
                 f"  KL {p.get('kl_spliced', float('nan')):.4f} | {c.get('kl_spliced', float('nan')):.4f}")
        print(f"layer {p['layer']:2}: NMSE {p['fvu']:.4f} | {c['fvu']:.4f}  L0 {p['l0']:5.1f} | {c['l0']:5.1f}  "
              f"dead {p['dead_fraction']:.3f} | {c['dead_fraction']:.3f}{alone}")


def _figures(summary: dict[str, Any], where: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    where.mkdir(parents=True, exist_ok=True)
    import math

    panels = [("fvu", "NMSE (FVU) of the MLP output"), ("dead_fraction", "dead fraction"),
              ("delta_lm_loss", "delta LM loss, layer alone (nats)"), ("kl_spliced", "KL, layer alone")]
    # without per-layer splices (--no-per-layer) the last two are missing or nan: no empty panels
    panels = [(key, label) for key, label in panels if any(
        isinstance(r.get(key), float) and math.isfinite(r[key]) for r in summary["results"]["plt"]["layers"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.3))
    for ax, (key, label) in zip(axes, panels):
        for name, color in (("plt", "#1f77b4"), ("clt", "#d62728")):
            rows = [r for r in summary["results"][name]["layers"] if key in r]
            ax.plot([r["layer"] for r in rows], [r[key] for r in rows], marker="o", markersize=3, color=color,
                    label=f"{name.upper()} (total L0 {summary['results'][name]['l0']:.0f})")
        ax.set_xlabel("layer")
        ax.set_ylabel(label)
        ax.grid(alpha=.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"SmolLM2-135M-Instruct, {len(summary['layers'])} layers, TopK k={summary['k_per_layer']} per "
                 f"layer, d_sae {summary['d_sae_per_layer']} per layer, {summary['train_tokens']:,} training tokens",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(where / "circuits-per-layer.png", dpi=110)
    plt.close(fig)
    print(f"figure -> {where / 'circuits-per-layer.png'}")


# ----------------------------------------------------------------------------------- throughput
def throughput(args: argparse.Namespace) -> None:
    import saekit
    from saekit.circuits import mlp_layer_count, parse_layers

    torch.set_num_threads(args.threads)
    model, tokenizer = offline_model()
    layers = parse_layers(args.layers, mlp_layer_count(model))
    d = model.config.hidden_size
    rows = []
    for label, kinds in (("model forward alone", ()), ("PLT set", ("plt",)), ("CLT", ("clt",)),
                         ("PLT set + CLT", ("plt", "clt"))):
        stream = _stream(model, tokenizer, args, layers)
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        if kinds:
            saekit.train(stream, _specs(args, layers, d, kinds), total_tokens=args.tokens, batch_size=args.batch,
                         progress=False, normalization_tokens=args.batch, log_every=1000)
        else:
            seen = 0
            for batch in stream:
                seen += next(iter(batch.values())).shape[0]
                if seen >= args.tokens:
                    break
        wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
        rows.append((label, args.tokens / wall, cpu, stream.forward_seconds))
        print(f"{label:20} {args.tokens / wall:8.0f} tok/s  {cpu:7.1f} CPU-s  (forward {stream.forward_seconds:.1f} s "
              f"wall)  {machine(args.threads)}", flush=True)


# ---------------------------------------------------------------------------------------- memory
def _formula(L: int, F: int, d: int, reach: int | None, decoder_bytes: int) -> dict[str, float]:
    from saekit.circuits import CLTConfig

    cfg = CLTConfig(method="topk", n_layers=L, d_in=d, d_sae=F, k=32, max_reach=reach)
    encoder = L * (d * F + F) * 4 + L * d * 4
    decoder = cfg.decoder_pairs * F * d * decoder_bytes
    # weights, their gradients and Adam's two moments: four copies of every parameter
    return {"pairs": cfg.decoder_pairs, "decoder_mib": decoder / 2**20, "formula_mib": 4 * (encoder + decoder) / 2**20}


def memory_child(args: argparse.Namespace) -> None:
    import saekit
    from saekit.circuits import CLTSpec

    torch.set_num_threads(args.threads)
    L, F, d, B = args.n_layers, args.d_sae, 576, args.batch
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(B, L, d, generator=g), torch.randn(B, L, d, generator=g)
    batch = {**{f"mlp_in.{i}": x[:, i] for i in range(L)}, **{f"mlp_out.{i}": y[:, i] for i in range(L)}}
    base = rss_mib()
    spec = CLTSpec.from_options(method="topk", n_layers=L, d_in=d, d_sae=F, k=32, max_reach=args.reach,
                                decoder_dtype=args.decoder_dtype)
    saekit.train((batch for _ in range(args.steps)), [spec], total_tokens=args.steps * B, batch_size=B,
                 progress=False, normalization_tokens=B)
    print(json.dumps({"peak_mib": peak_rss_mib() - base, "base_mib": base}))


def memory(args: argparse.Namespace) -> None:
    configs = [(4, None, "float32"), (8, None, "float32"), (16, None, "float32"), (30, None, "float32"),
               (30, 4, "float32"), (30, None, "bfloat16")]
    print(f"CLT training, TopK k=32, d_sae {args.d_sae} per layer, d 576, batch {args.batch}, {args.steps} steps; "
          f"{machine(args.threads)}")
    print("layers  reach  decoders  pairs  decoder MiB  formula MiB  measured peak MiB (above baseline)")
    rows = []
    for L, reach, dtype in configs:
        command = [sys.executable, __file__, "memory-child", "--n-layers", str(L), "--d-sae", str(args.d_sae),
                   "--batch", str(args.batch), "--steps", str(args.steps), "--decoder-dtype", dtype,
                   "--threads", str(args.threads)] + (["--reach", str(reach)] if reach is not None else [])
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=3600)
        if result.returncode != 0:
            raise SystemExit(result.stderr[-2000:])
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        formula = _formula(L, args.d_sae, 576, reach, 2 if dtype == "bfloat16" else 4)
        rows.append({"layers": L, "reach": reach, "decoder_dtype": dtype, **formula, **measured})
        print(f"{L:6}  {str(reach) if reach is not None else 'all':5}  {dtype:8}  {formula['pairs']:5}  "
              f"{formula['decoder_mib']:11.0f}  {formula['formula_mib']:11.0f}  {measured['peak_mib']:9.0f}",
              flush=True)
    FIGURES.mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "circuits-memory.json").parent.mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "circuits-memory.json").write_text(json.dumps(rows, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("train", "throughput", "memory", "memory-child"))
    parser.add_argument("--layers", default="all", help="Layers (all, 0,3,5, ::2, 4:12).")
    parser.add_argument("--tokens", type=int, default=None, help="Training tokens (train 65536, throughput 8192).")
    parser.add_argument("--eval-tokens", type=int, default=2048)
    parser.add_argument("--no-per-layer", action="store_true", help="Skip the per-layer splices in the evaluation.")
    parser.add_argument("--d-sae", type=int, default=1152, help="Latents per layer.")
    parser.add_argument("--k", type=int, default=32, help="TopK: active latents per token and layer.")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--model-batch", type=int, default=16)
    parser.add_argument("--decoder-dtype", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint-every", type=int, default=16)
    parser.add_argument("--out", default=str(ROOT / "runs" / "circuits-bench"))
    parser.add_argument("--figures", default=str(FIGURES))
    parser.add_argument("--n-layers", type=int, default=30, help=argparse.SUPPRESS)
    parser.add_argument("--reach", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.tokens is None:
        args.tokens = 65_536 if args.what == "train" else 8192
    {"train": train, "throughput": throughput, "memory": memory, "memory-child": memory_child}[args.what](args)


if __name__ == "__main__":
    main()
