"""Attribution graphs on the offline default model (SmolLM2-135M-Instruct, 30 layers, d 576): issue 16's figures.

    train       a TopK transcoder set and a TopK CLT (reach-limited) over all 30 layers from ONE model stream,
                saved under --out (small budgets: the figures are about the graph method, not SOTA transcoders)
    identities  on a few prompts, PLT and CLT: the local replacement model's logits with error nodes vs the
                model's; the column identity (one source added again in the constrained model moves every
                target by its edge); the row residual (what non-node terms — b_dec, position 0 — add)
    scores      replacement and completeness scores on N offline-text prompts and N factual prompts, PLT vs
                CLT, and the intervention check: for each graph's top features, ablation in the real model
                (attention frozen) vs the graph's prediction; correlation over all
    scaling     time and peak RSS of one graph against prompt length (64 … 1024 tokens), one child process
                per length, with a feature budget (--max-feature-nodes)
    ct          circuit-tracer 0.5.0 (TransformerLens backend, .cache/ct-tl-venv) on SmolLM2 itself, with a
                random JumpReLU transcoder set saved in its layout: same adjacency, scores, time per prompt

    .venv/bin/python benchmarks/attribution.py train [--tokens 16384]
    .venv/bin/python benchmarks/attribution.py identities|scores|scaling|ct

Prints every figure and writes JSON to --out. Budgets on the 2-core machine: train ~10 CPU-minutes, scores
~10, scaling ~10, ct ~5 (a shared machine stretches wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import machine, offline_model, peak_rss_mib

ROOT = Path(__file__).resolve().parents[1]
FACTUAL = [
    "The capital of France is", "The capital of Germany is", "The capital of Italy is", "The capital of Japan is",
    "The capital of Spain is", "The capital of Canada is", "The capital of Egypt is", "The capital of Russia is",
    "The capital of China is", "The capital of England is", "The Eiffel Tower is in the city of",
    "The largest planet in the solar system is", "Water freezes at zero degrees", "The opposite of hot is",
    "Python is a programming", "The first president of the United States was George",
    "The chemical symbol for gold is", "A week has seven", "The Statue of Liberty is in New",
    "Shakespeare wrote Romeo and",
]


def _load(args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    import saekit

    model, tokenizer = offline_model()
    out = Path(args.out)
    if not (out / "plt").exists():
        raise SystemExit(f"no transcoders under {out}: run `benchmarks/attribution.py train` first")
    return model, tokenizer, saekit.load(out / "plt").eval(), saekit.load(out / "clt").eval()


def train(args: argparse.Namespace) -> None:
    import saekit
    from saekit.circuits import CLTSpec
    from saekit.circuits.layers import hookpoints_for
    from saekit.circuits.transcoder_set import TranscoderSet, transcoder_set_specs
    from saekit.data.config import TextConfig
    from saekit.data.stream import ActivationStream

    torch.set_num_threads(args.threads)
    model, tokenizer = offline_model()
    layers = list(range(model.config.num_hidden_layers))
    d = model.config.hidden_size
    options = dict(method="topk", d_sae=args.d_sae, k=args.k, lr=args.lr, model_name="offline-default",
                   dataset="offline-default", context_size=args.context)
    specs: list[Any] = transcoder_set_specs(layers, d, name="plt", **options)
    specs.append(CLTSpec.from_options(n_layers=len(layers), layers=layers, d_in=d, name="clt", max_reach=args.reach,
                                      **options))
    text = TextConfig(dataset="offline-default", context_size=args.context, model_batch_size=8)
    stream = ActivationStream(model, text.token_stream(tokenizer, "train"), hookpoints_for(layers))
    start = time.perf_counter()
    trained = saekit.train(stream, specs, run=saekit.RunConfig(total_tokens=args.tokens, batch_size=args.batch,
                                                               normalization_tokens=args.batch * 2, log_every=8))
    out = Path(args.out)
    saekit.save(TranscoderSet.from_training(specs[:-1], trained[:-1], name="plt"), out / "plt", overwrite=True)
    saekit.save(trained[-1], out / "clt", overwrite=True)
    print(f"{machine(args.threads)} trained a {len(layers)}-layer TopK set and CLT (k {args.k}, {args.d_sae} latents "
          f"per layer, CLT reach {args.reach}) on {args.tokens} tokens in {time.perf_counter() - start:.0f} s")


def _offline_prompts(tokenizer: Any, n: int, length: int) -> list[list[int]]:
    from saekit.data.config import TextConfig

    text = TextConfig(dataset="offline-default", context_size=length, model_batch_size=1)
    prompts = []
    for ids, _mask in text.token_stream(tokenizer, "test", max_tokens=n * length * 4):
        for row in ids:
            tokens = [int(t) for t in row.tolist()][1:length]  # the stream puts BOS first
            prompts.append(tokens)
            if len(prompts) == n:
                return prompts
    return prompts


def identities(args: argparse.Namespace) -> None:
    from saekit.circuits.attribution import active_features_and_errors, attribute, tokenize_prompt
    from saekit.circuits.interventions import frozen_effects
    from saekit.circuits.local_model import LocalReplacementModel

    torch.set_num_threads(args.threads)
    model, tokenizer, plt_set, clt = _load(args)
    results = []
    for name, tc in (("plt", plt_set), ("clt", clt)):
        for prompt in FACTUAL[:3]:
            local = LocalReplacementModel(model, tc)
            ids = tokenize_prompt(tokenizer, prompt)
            clean = local.clean_run(ids)
            with torch.no_grad():
                ref = model(input_ids=ids[None]).logits[0].float()
                errors = local.reconstruction_errors(clean)
                _a, _v, node_errors = active_features_and_errors(local, clean["mlp_in"], clean["mlp_out"], 1)
            with_errors = local.replacement_logits(ids, clean["state"], errors)
            without = local.replacement_logits(ids, clean["state"])
            graph = attribute(model, tokenizer, tc, prompt, batch_size=args.batch_size)
            W_U = model.lm_head.weight.detach().float()
            dirs = W_U[graph.logit_tokens] - W_U.mean(0)
            logit_in = dirs @ clean["unembed_in"][-1]
            row_sums = graph.adjacency[graph.logit_start:].sum(1)
            # column identity: the top-influence feature, added again in the constrained model
            node = int(torch.argmax(graph.node_influence()[:graph.n_features]))
            layer, pos, f = graph.active_features[graph.selected_features[node]].tolist()
            value = float(graph.activation_values[graph.selected_features[node]])
            adds = {}
            for t in range(layer, local.n_layers):
                block = tc.decoder(layer, t)
                if block is not None:
                    v = torch.zeros(len(ids), model.config.hidden_size)
                    v[pos] = value * block[f].detach().float()
                    adds[f"mlp_out.{t}"] = v
            moved = frozen_effects(local, ids, clean, adds)
            change = dirs @ (moved["unembed_in"][-1] - clean["unembed_in"][-1])
            edge = graph.adjacency[graph.logit_start:, node]
            row = {"transcoders": name, "prompt": prompt, "tokens": len(ids),
                   "logits_with_errors_max_abs_diff": float((with_errors - ref).abs().max()),
                   "logits_without_errors_max_abs_diff": float((without - ref).abs().max()),
                   "max_abs_logit": float(ref.abs().max()),
                   "column_identity_rel_err": float((change - edge).abs().max() / edge.abs().max().clamp_min(1e-12)),
                   "logit_row_sum_vs_logit_rel": float((row_sums - logit_in).abs().max() / logit_in.abs().max()),
                   "error_node_norm_mean": float(node_errors[:, 1:].norm(dim=-1).mean())}
            results.append(row)
            print(json.dumps(row))
    _write(args, "identities", results)


def scores(args: argparse.Namespace) -> None:
    from saekit.circuits.attribution import attribute
    from saekit.circuits.interventions import check_graph

    torch.set_num_threads(args.threads)
    model, tokenizer, plt_set, clt = _load(args)
    prompts = [("factual", p) for p in FACTUAL[:args.n]] + [
        ("offline-text", p) for p in _offline_prompts(tokenizer, args.n, args.length)]
    rows: list[dict[str, Any]] = []
    for name, tc in (("plt", plt_set), ("clt", clt)):
        for kind, prompt in prompts:
            start = time.perf_counter()
            graph = attribute(model, tokenizer, tc, prompt, batch_size=args.batch_size,
                              max_feature_nodes=args.max_feature_nodes)
            seconds = time.perf_counter() - start
            checks = check_graph(model, tokenizer, tc, graph, top=args.top, scale=0.0)
            row = {"transcoders": name, "set": kind, "tokens": graph.n_pos, "features": graph.n_features,
                   "active": graph.meta["n_active_features"], "seconds": seconds, **graph.scores(),
                   "top_logit": graph.logit_strings[0], "checks": checks}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "checks"}, ensure_ascii=False))
    summary = []
    for name in ("plt", "clt"):
        for kind in ("factual", "offline-text"):
            sel = [r for r in rows if r["transcoders"] == name and r["set"] == kind]
            pred = torch.tensor([c["predicted"] for r in sel for c in r["checks"]])
            meas = torch.tensor([c["measured"] for r in sel for c in r["checks"]])
            corr = float(torch.corrcoef(torch.stack([pred, meas]))[0, 1]) if len(pred) > 2 else float("nan")
            summary.append({"transcoders": name, "set": kind, "graphs": len(sel),
                            "replacement_mean": sum(r["replacement_score"] for r in sel) / len(sel),
                            "completeness_mean": sum(r["completeness_score"] for r in sel) / len(sel),
                            "intervention_pairs": len(pred), "intervention_corr": corr,
                            "seconds_median": sorted(r["seconds"] for r in sel)[len(sel) // 2]})
    print("\ntranscoders  prompts       graphs  replacement  completeness  corr(pred, measured)  pairs  s/graph")
    for s in summary:
        print(f"{s['transcoders']:11}  {s['set']:12}  {s['graphs']:6}  {s['replacement_mean']:11.3f}  "
              f"{s['completeness_mean']:12.3f}  {s['intervention_corr']:20.3f}  {s['intervention_pairs']:5}  "
              f"{s['seconds_median']:7.1f}")
    _write(args, "scores", {"machine": machine(args.threads), "summary": summary, "graphs": rows})


def _one_length(args: argparse.Namespace) -> None:
    """Child process: one graph of `--length` tokens; prints time and peak RSS as JSON."""
    from saekit.circuits.attribution import attribute

    torch.set_num_threads(args.threads)
    model, tokenizer, plt_set, clt = _load(args)
    tc = plt_set if args.kind == "plt" else clt
    prompt = _offline_prompts(tokenizer, 1, args.length + 1)[0][:args.length - 1]
    base = peak_rss_mib()
    start = time.perf_counter()
    graph = attribute(model, tokenizer, tc, prompt, batch_size=args.batch_size,
                      max_feature_nodes=args.max_feature_nodes)
    print(json.dumps({"kind": args.kind, "tokens": graph.n_pos, "active_features": graph.meta["n_active_features"],
                      "features": graph.n_features, "seconds": time.perf_counter() - start,
                      "peak_rss_mib": peak_rss_mib(), "rss_before_mib": base, "machine": machine(args.threads)}))


def scaling(args: argparse.Namespace) -> None:
    rows = []
    for length in args.lengths:
        cmd = [sys.executable, __file__, "one-length", "--length", str(length), "--out", args.out, "--kind", args.kind,
               "--threads", str(args.threads), "--batch-size", str(args.batch_size),
               "--max-feature-nodes", str(args.max_feature_nodes)]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            rows.append({"tokens": length, "failed": (result.stderr or result.stdout)[-300:]})
        else:
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    _write(args, f"scaling-{args.kind}", rows)


def ct(args: argparse.Namespace) -> None:
    """circuit-tracer on SmolLM2 itself: a random JumpReLU set (thresholds at a per-latent quantile of its
    pre-activations on the offline text, so ~1% fire) saved in circuit-tracer's layout; both graphs on the
    same token ids."""
    from saekit.circuits.attribution import attribute
    from saekit.formats.detect import save_as
    from saekit.models.loading import offline_default_directory

    torch.set_num_threads(args.threads)
    model, tokenizer = offline_model()
    out = Path(args.out) / "ct"
    tc = _calibrated_jumprelu_set(model, tokenizer, args.ct_d_sae)
    folder = save_as(tc, out / "transcoders", "circuit-tracer", overwrite=True)
    model_dir = offline_default_directory()
    sizes = {key: getattr(model.config, key) for key in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings")}
    rope = getattr(model.config, "rope_parameters", None) or {}
    sizes["rope_theta"] = float(rope.get("rope_theta", getattr(model.config, "rope_theta", 10000.0)))
    prompts = [[tokenizer.bos_token_id] + p for p in _offline_prompts(tokenizer, 1, args.ct_length)]
    prompts.append(tokenizer(FACTUAL[0])["input_ids"])
    prompts[-1] = [tokenizer.bos_token_id] + prompts[-1]
    job = {"model": str(model_dir), "config": sizes,
           "cases": {"smollm_plt": {"transcoders": str(folder), "prompts": prompts, "batch_size": args.batch_size}}}
    (out / "job.json").write_text(json.dumps(job))
    python = ROOT / ".cache" / "ct-tl-venv" / "bin" / "python"
    start = time.perf_counter()
    result = subprocess.run([str(python), str(ROOT / "tests" / "interop" / "ct_attribution_helper.py"), str(out)],
                            capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1",
                                 "OMP_NUM_THREADS": str(args.threads)})
    if result.returncode != 0:
        print("circuit-tracer failed:", (result.stdout + result.stderr)[-2000:])
        return
    print(f"circuit-tracer helper ran in {time.perf_counter() - start:.0f} s (model conversion included)")
    from safetensors.torch import load_file

    rows = []
    for i, ids in enumerate(prompts):
        theirs = load_file(str(out / "ct" / "smollm_plt" / f"{i}.safetensors"))
        info = json.loads((out / "ct" / "smollm_plt" / f"{i}.json").read_text())
        start = time.perf_counter()
        graph = attribute(model, tokenizer, tc, ids, batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        same_nodes = torch.equal(graph.active_features, theirs["active_features"])
        rel = float((graph.adjacency - theirs["adjacency"]).abs().max() / theirs["adjacency"].abs().max()) \
            if graph.adjacency.shape == theirs["adjacency"].shape else float("nan")
        s = graph.scores()
        row = {"tokens": len(ids), "active_features": graph.meta["n_active_features"], "same_nodes": same_nodes,
               "adjacency_max_rel_diff": rel, "tl_vs_hf_logits": info["tl_vs_hf_logits"],
               "replacement": [s["replacement_score"], info["replacement_score"]],
               "completeness": [s["completeness_score"], info["completeness_score"]],
               "seconds_saekit": seconds, "seconds_circuit_tracer": info["seconds"], "machine": machine(args.threads)}
        rows.append(row)
        print(json.dumps(row))
    _write(args, "ct-smollm", rows)


@torch.no_grad()
def _calibrated_jumprelu_set(model: Any, tokenizer: Any, d_sae: int) -> Any:
    from saekit.circuits.layers import hookpoints_for
    from saekit.circuits.transcoder_set import TranscoderSet
    from saekit.config import DictionaryConfig, Provenance
    from saekit.dictionary import Dictionary
    from saekit.models.hooks import capture
    from saekit.models.sites import resolve_hookpoints

    L, d = model.config.num_hidden_layers, model.config.hidden_size
    ids = torch.tensor([[tokenizer.bos_token_id] + p for p in _offline_prompts(tokenizer, 4, 64)])
    values = capture(model, ids, resolve_hookpoints(model, hookpoints_for(list(range(L)))))
    g = torch.Generator().manual_seed(0)
    dictionaries = []
    for layer in range(L):
        x = values[f"mlp_in.{layer}"].reshape(-1, d).float()
        y_scale = values[f"mlp_out.{layer}"].float().std()
        cfg = DictionaryConfig(method="jumprelu", d_in=d, d_sae=d_sae, d_out=d, transcoder=True)
        dct = Dictionary(cfg)
        W_enc = torch.randn(d, d_sae, generator=g) / x.norm(dim=-1).mean()
        pre = x @ W_enc
        weights = {"W_enc": W_enc, "b_enc": torch.zeros(d_sae),
                   "W_dec": torch.randn(d_sae, d, generator=g) * float(y_scale) / d_sae ** 0.5,
                   "b_dec": torch.zeros(d), "threshold": torch.quantile(pre, 0.99, dim=0).clamp_min(1e-3)}
        dct.load_weights(weights)
        dct.provenance = Provenance(model_name="offline-default", hookpoint=f"mlp_in.{layer}",
                                    target_hookpoint=f"mlp_out.{layer}")
        dictionaries.append(dct.eval())
    return TranscoderSet(list(range(L)), dictionaries, name="random-jumprelu")


def _write(args: argparse.Namespace, name: str, data: Any) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"attribution-{name}.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("train", "identities", "scores", "scaling", "ct", "one-length"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "attribution-bench"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=16384, help="train: training tokens")
    parser.add_argument("--d-sae", type=int, default=768, help="train: latents per layer")
    parser.add_argument("--k", type=int, default=8, help="train: TopK active latents per token and layer")
    parser.add_argument("--reach", type=int, default=3, help="train: CLT decoders reach this many later layers")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--n", type=int, default=20, help="scores: prompts per set")
    parser.add_argument("--length", type=int, default=16, help="scores: offline-text prompt length")
    parser.add_argument("--top", type=int, default=5, help="scores: features ablated per graph")
    parser.add_argument("--batch-size", type=int, default=64, help="targets per backward pass")
    parser.add_argument("--max-feature-nodes", type=int, default=None)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--kind", default="plt", choices=("plt", "clt"))
    parser.add_argument("--ct-d-sae", type=int, default=256)
    parser.add_argument("--ct-length", type=int, default=32)
    args = parser.parse_args()
    if args.step == "scaling" and args.max_feature_nodes is None:
        args.max_feature_nodes = 2048
    {"train": train, "identities": identities, "scores": scores, "scaling": scaling, "ct": ct,
     "one-length": _one_length}[args.step](args)


if __name__ == "__main__":
    main()
