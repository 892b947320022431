"""Variants on the offline default model (SmolLM2-135M-Instruct, Python docs): the issue's real-model checks.

    transcoders  a transcoder and a skip transcoder (mlp_in.L -> mlp_out.L) at the same k from one stream:
                 FVU of each on held-out tokens (the skip connection should lower it)
    e2e          a local TopK SAE and the same SAE fine-tuned end to end (KL through the model) at
                 resid_post.L, same k (so equal L0): delta LM loss and site MSE of each, spliced on
                 held-out tokens (fine-tuning rather than e2e from scratch keeps the CPU cost of the
                 backward through the model to a few minutes)

    .venv/bin/python benchmarks/variants_real.py transcoders [--tokens 100000]
    .venv/bin/python benchmarks/variants_real.py e2e [--tokens 60000 --e2e-steps 150]
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from common import activations, offline_model

import saekit
from saekit.data.tokens import TokenStream
from saekit.evaluation.splice import spliced_evaluation
from saekit.models.sites import resolve_hookpoints
from saekit.training.e2e import E2EConfig, train_e2e


def transcoders(args: argparse.Namespace) -> None:
    model, tokenizer = offline_model()
    source, target = f"mlp_in.{args.layer}", f"mlp_out.{args.layer}"
    train = activations(model, tokenizer, [source, target], args.tokens)
    held = activations(model, tokenizer, [source, target], args.eval_tokens, split="test")
    d_in, d_out = train[source].shape[1], train[target].shape[1]
    configs = [saekit.DictionarySpec.from_options(method="topk", d_in=d_in, d_out=d_out, d_sae=args.expansion * d_in,
                                       k=args.k, lr=1e-3, hookpoint=source, target_hookpoint=target,
                                       skip_connection=skip, name="skip" if skip else "plain")
               for skip in (False, True)]
    batches = [{name: value[i:i + 1024] for name, value in train.items()}
               for i in range(0, args.tokens - 1023, 1024)]
    started = time.perf_counter()
    plain, skip = saekit.train(batches, configs, total_tokens=len(batches) * 1024, batch_size=1024,
                               progress=False)
    print(f"threads={torch.get_num_threads()} load={os.getloadavg()[0]:.1f} layer={args.layer} "
          f"k={args.k} d_sae={configs[0].d_sae} train_tokens={len(batches) * 1024} "
          f"eval_tokens={held[source].shape[0]} train_s={time.perf_counter() - started:.0f}")
    for d in (plain, skip):
        latents = d.encode(held[source])
        error = (held[target] - d.decode(latents, held[source])).pow(2).sum()
        fvu = float(error / (held[target] - held[target].mean(0)).pow(2).sum())
        print(f"{d.cfg.name:6s} transcoder: FVU {fvu:.4f}  L0 {float((latents > 0).sum(-1).float().mean()):.1f}")


def e2e(args: argparse.Namespace) -> None:
    model, tokenizer = offline_model()
    site = f"resid_post.{args.layer}"
    train = activations(model, tokenizer, [site], args.tokens)[site]
    d_in = train.shape[1]
    local_cfg = saekit.DictionarySpec.from_options(method="topk", d_in=d_in, d_sae=args.expansion * d_in, k=args.k,
                                        lr=1e-3, hookpoint=site, name="local")
    local = saekit.train(train.split(1024), [local_cfg], total_tokens=train.shape[0] // 1024 * 1024,
                         batch_size=1024, progress=False)[0]
    tokens = TokenStream(tokenizer, "offline-default", context=args.context, batch_size=args.e2e_batch,
                         split="train", seed=1)
    started = time.perf_counter()
    e2e_sae = train_e2e(model, iter(tokens), E2EConfig(hookpoint=site, d_sae=args.expansion * d_in,
                                                       method="topk", k=args.k, lr=args.e2e_lr),
                        total_steps=args.e2e_steps, init=local)
    e2e_seconds = time.perf_counter() - started
    held = list(TokenStream(tokenizer, "offline-default", context=128, batch_size=8, split="test",
                            max_tokens=args.eval_tokens))
    point = resolve_hookpoints(model, [site])[0]
    results = spliced_evaluation(model, held, point, {"local": local, "e2e": e2e_sae})
    print(f"threads={torch.get_num_threads()} load={os.getloadavg()[0]:.1f} site={site} k={args.k} "
          f"d_sae={local_cfg.d_sae} local_tokens={train.shape[0]} e2e_tokens="
          f"{args.e2e_steps * args.e2e_batch * args.context} e2e_s={e2e_seconds:.0f}")
    for name, row in results.items():
        print(f"{name:6s} L0 {row['l0']:.1f}  delta LM loss {row['delta_lm_loss']:.4f}  CE score "
              f"{row['ce_loss_score']:.3f}  KL {row['kl_spliced']:.4f}  site MSE {row['mse']:.4f}  "
              f"FVU {row['fvu']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=("transcoders", "e2e"))
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=100_000)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--e2e-steps", type=int, default=60)
    parser.add_argument("--e2e-batch", type=int, default=4)
    parser.add_argument("--e2e-lr", type=float, default=3e-4)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    {"transcoders": transcoders, "e2e": e2e}[args.experiment](args)


if __name__ == "__main__":
    main()
