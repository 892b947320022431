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
    ct-scaling  the same set, saekit and circuit-tracer on the same prompt at each --lengths, one process each:
                time, peak RSS during attribution, same graph (--max-feature-nodes, default 2048)

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
from common import machine, offline_model, peak_rss_mib, reset_peak_rss

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
        if name not in args.kinds:
            continue
        for kind, prompt in prompts:
            start = time.perf_counter()
            graph = attribute(model, tokenizer, tc, prompt, batch_size=args.batch_size,
                              max_feature_nodes=args.max_feature_nodes)
            seconds = time.perf_counter() - start
            checks = check_graph(model, tokenizer, tc, graph, top=args.top, scale=args.scale)
            row = {"transcoders": name, "set": kind, "tokens": graph.n_pos, "features": graph.n_features,
                   "active": graph.meta["n_active_features"], "seconds": seconds, **graph.scores(),
                   "top_logit": graph.logit_strings[0], "checks": checks}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "checks"}, ensure_ascii=False))
    summary = []
    for name in args.kinds:
        for kind in ("factual", "offline-text"):
            sel = [r for r in rows if r["transcoders"] == name and r["set"] == kind]
            pred = torch.tensor([c["predicted"] for r in sel for c in r["checks"]])
            meas = torch.tensor([c["measured"] for r in sel for c in r["checks"]])
            local = torch.tensor([c["in_replacement"] for r in sel for c in r["checks"]])

            def corr_of(a: torch.Tensor, b: torch.Tensor) -> float:
                return float(torch.corrcoef(torch.stack([a, b]))[0, 1]) if len(a) > 2 else float("nan")
            summary.append({"transcoders": name, "set": kind, "graphs": len(sel),
                            "replacement_mean": sum(r["replacement_score"] for r in sel) / len(sel),
                            "completeness_mean": sum(r["completeness_score"] for r in sel) / len(sel),
                            "intervention_pairs": len(pred), "intervention_corr": corr_of(pred, meas),
                            "replacement_model_corr": corr_of(pred, local),
                            "replacement_vs_model_corr": corr_of(local, meas),
                            "seconds_median": sorted(r["seconds"] for r in sel)[len(sel) // 2]})
    print("\ncorr(pred, model): graph's prediction vs the real model (attention frozen); corr(pred, local): vs the "
          "local replacement model (features live, errors frozen); corr(local, model): the two measurements")
    print("transcoders  prompts       graphs  replacement  completeness  corr(pred, model)  corr(pred, local)  "
          "corr(local, model)  pairs  s/graph")
    for s in summary:
        print(f"{s['transcoders']:11}  {s['set']:12}  {s['graphs']:6}  {s['replacement_mean']:11.3f}  "
              f"{s['completeness_mean']:12.3f}  {s['intervention_corr']:17.3f}  {s['replacement_model_corr']:17.3f}  "
              f"{s['replacement_vs_model_corr']:18.3f}  {s['intervention_pairs']:5}  {s['seconds_median']:7.1f}")
    suffix = "" if args.scale == 0.0 and len(args.kinds) == 2 else f"-{'-'.join(args.kinds)}-scale-{args.scale:g}"
    _write(args, "scores" + suffix, {"machine": machine(args.threads), "scale": args.scale, "summary": summary,
                                     "graphs": rows})


def _one_length(args: argparse.Namespace) -> None:
    """Child process: one graph of `--length` tokens (or of the token ids in `--ids`, with the transcoders
    in `--transcoders`); prints time and the peak RSS during `attribute` as JSON (with `--save`, also
    writes the graph there)."""
    import saekit
    from saekit.circuits.attribution import attribute

    torch.set_num_threads(args.threads)
    if args.transcoders:
        model, tokenizer = offline_model()
        tc: Any = saekit.load(args.transcoders).eval()
        prompt = json.loads(Path(args.ids).read_text())
    else:
        model, tokenizer, plt_set, clt = _load(args)
        tc = plt_set if args.kind == "plt" else clt
        prompt = _offline_prompts(tokenizer, 1, args.length + 1)[0][:args.length - 1]
    with torch.no_grad():  # a forward first: the weights are memory-mapped until touched, and the helper
        model(input_ids=torch.tensor([prompt[:8]]))  # of circuit-tracer has run its model before it measures
    base = peak_rss_mib("VmRSS")
    reset_peak_rss()
    start = time.perf_counter()
    graph = attribute(model, tokenizer, tc, prompt, batch_size=args.batch_size,
                      max_feature_nodes=args.max_feature_nodes)
    seconds = time.perf_counter() - start
    peak = peak_rss_mib()
    if args.save:
        graph.save(args.save)
    print(json.dumps({"kind": args.kind, "tokens": graph.n_pos, "active_features": graph.meta["n_active_features"],
                      "features": graph.n_features, "seconds": seconds, "peak_rss_mib": peak,
                      "rss_before_mib": base, "machine": machine(args.threads)}))


def _memory_cap(args: argparse.Namespace) -> Any:
    """A preexec_fn capping a child's address space at --memory-limit-gib, so a graph too large for this
    machine fails in its own process (MemoryError) instead of waking the kernel's OOM killer."""
    if not args.memory_limit_gib:
        return None

    def cap() -> None:
        import resource

        limit = int(args.memory_limit_gib * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return cap


def _child(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """Run `one-length` in a fresh process (so its peak RSS is its own); its JSON line, or the failure."""
    cmd = [sys.executable, __file__, "one-length", "--out", args.out, "--kind", args.kind, "--threads",
           str(args.threads), "--batch-size", str(args.batch_size), *extra]
    if args.max_feature_nodes is not None:
        cmd += ["--max-feature-nodes", str(args.max_feature_nodes)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=_memory_cap(args))
    if result.returncode != 0:
        return {"failed": (result.stderr or result.stdout)[-300:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def scaling(args: argparse.Namespace) -> None:
    rows = []
    for length in args.lengths:
        rows.append({"tokens": length, **_child(args, ["--length", str(length)])})
        print(json.dumps(rows[-1]), flush=True)
    _write(args, f"scaling-{args.kind}", rows)


def ct_scaling(args: argparse.Namespace) -> None:
    """circuit-tracer and saekit on the same prompt at each length (the calibrated JumpReLU set of `ct`, one
    child process per library and length, the same feature budget): time, peak RSS during attribution,
    and whether the graphs agree."""
    from safetensors.torch import load_file

    from saekit.formats.detect import save_as

    torch.set_num_threads(args.threads)
    model, tokenizer = offline_model()
    out = Path(args.out) / "ct-scaling"
    folder = save_as(_calibrated_jumprelu_set(model, tokenizer, args.ct_d_sae), out / "transcoders",
                     "circuit-tracer", overwrite=True)
    rows = []
    for length in args.lengths:
        ids = [tokenizer.bos_token_id] + _offline_prompts(tokenizer, 1, length)[0][:length - 1]
        work = out / f"len-{length}"
        work.mkdir(parents=True, exist_ok=True)
        (work / "ids.json").write_text(json.dumps(ids))
        theirs = _run_circuit_tracer(args, work, {"case": {"transcoders": str(folder), "prompts": [ids],
                                                           "batch_size": args.batch_size,
                                                           "max_feature_nodes": args.max_feature_nodes}})
        ours = _child(args, ["--transcoders", str(folder), "--ids", str(work / "ids.json"),
                             "--save", str(work / "saekit-graph")])
        row: dict[str, Any] = {"tokens": len(ids), "saekit": ours, "circuit_tracer": theirs}
        if "failed" not in ours and "failed" not in theirs:
            from saekit.circuits.graph import AttributionGraph

            graph = AttributionGraph.load(work / "saekit-graph")
            tensors = load_file(str(work / "ct" / "case" / "0.safetensors"))
            row["same_nodes"] = bool(torch.equal(graph.active_features, tensors["active_features"])) and bool(
                torch.equal(graph.selected_features, tensors["selected_features"]))
            if graph.adjacency.shape == tensors["adjacency"].shape:
                row["adjacency_max_rel_diff"] = float((graph.adjacency - tensors["adjacency"]).abs().max()
                                                      / tensors["adjacency"].abs().max())
        rows.append(row)
        print(json.dumps(row), flush=True)
    _write(args, "ct-scaling", {"machine": machine(args.threads), "max_feature_nodes": args.max_feature_nodes,
                                "rows": rows})


def _run_circuit_tracer(args: argparse.Namespace, work: Path, cases: dict[str, Any]) -> dict[str, Any]:
    """The circuit-tracer helper (its own venv, its own process) on `cases`; the first prompt's figures."""
    job = {"model": str(_model_dir()), "config": _llama_sizes(), "threads": args.threads, "cases": cases}
    (work / "job.json").write_text(json.dumps(job))
    python = ROOT / ".cache" / "ct-tl-venv" / "bin" / "python"
    result = subprocess.run([str(python), str(ROOT / "tests" / "interop" / "ct_attribution_helper.py"), str(work)],
                            capture_output=True, text=True, preexec_fn=_memory_cap(args),
                            env={**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1",
                                 "OMP_NUM_THREADS": str(args.threads)})
    if result.returncode != 0:
        return {"failed": (result.stdout + result.stderr)[-600:]}
    case = next(iter(cases))
    return json.loads((work / "ct" / case / "0.json").read_text())


def _model_dir() -> Path:
    from saekit.models.loading import offline_default_directory

    return Path(offline_default_directory())


def _llama_sizes() -> dict[str, Any]:
    """The offline default model's Llama sizes, for the helper's hand-made configs."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(_model_dir())
    sizes = {key: getattr(config, key) for key in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings")}
    rope = getattr(config, "rope_parameters", None) or {}
    sizes["rope_theta"] = float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    return sizes


def ct(args: argparse.Namespace) -> None:
    """circuit-tracer on SmolLM2 itself: a random JumpReLU set (thresholds at a per-latent quantile of its
    pre-activations on the offline text, so ~1% fire) saved in circuit-tracer's layout; both graphs on the
    same token ids."""
    from saekit.circuits.attribution import attribute
    from saekit.formats.detect import save_as

    torch.set_num_threads(args.threads)
    model, tokenizer = offline_model()
    out = Path(args.out) / "ct"
    tc = _calibrated_jumprelu_set(model, tokenizer, args.ct_d_sae)
    folder = save_as(tc, out / "transcoders", "circuit-tracer", overwrite=True)
    prompts = [[tokenizer.bos_token_id] + p for p in _offline_prompts(tokenizer, 1, args.ct_length)]
    prompts.append([tokenizer.bos_token_id] + tokenizer(FACTUAL[0])["input_ids"])
    start = time.perf_counter()
    first = _run_circuit_tracer(args, out, {"smollm_plt": {"transcoders": str(folder), "prompts": prompts,
                                                           "batch_size": args.batch_size}})
    if "failed" in first:
        print("circuit-tracer failed:", first["failed"])
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
    parser.add_argument("step", choices=("train", "identities", "scores", "scaling", "ct", "ct-scaling",
                                         "one-length"))
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
    parser.add_argument("--scale", type=float, default=0.0,
                        help="scores: the intervention scales each feature by this (0 = ablation)")
    parser.add_argument("--kinds", nargs="+", default=["plt", "clt"], choices=("plt", "clt"),
                        help="scores: which transcoders")
    parser.add_argument("--batch-size", type=int, default=64, help="targets per backward pass")
    parser.add_argument("--max-feature-nodes", type=int, default=None)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--kind", default="plt", choices=("plt", "clt"))
    parser.add_argument("--ct-d-sae", type=int, default=256)
    parser.add_argument("--ct-length", type=int, default=32)
    parser.add_argument("--transcoders", default=None, help="one-length: this transcoder folder, with --ids")
    parser.add_argument("--ids", default=None, help="one-length: a JSON list of token ids")
    parser.add_argument("--save", default=None, help="one-length: also save the graph here")
    parser.add_argument("--memory-limit-gib", type=float, default=12.0,
                        help="scaling, ct-scaling: address-space cap of each child process (0: none)")
    args = parser.parse_args()
    if args.step in ("scaling", "ct-scaling") and args.max_feature_nodes is None:
        args.max_feature_nodes = 2048
    {"train": train, "identities": identities, "scores": scores, "scaling": scaling, "ct": ct,
     "ct-scaling": ct_scaling, "one-length": _one_length}[args.step](args)


if __name__ == "__main__":
    main()
