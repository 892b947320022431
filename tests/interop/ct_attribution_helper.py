"""circuit-tracer side of the attribution comparison: runs with the python of `.cache/ct-tl-venv`
(tests/interop/circuit_tracer_tl_env.sh: circuit-tracer 0.5.0 + transformer-lens 2.16.1; saekit NOT
importable).

    python ct_attribution_helper.py WORKDIR

WORKDIR/job.json: {"model": HF model folder, "config": Llama sizes, "cases": {case: {"transcoders": folder
written by saekit in circuit-tracer's layout, "prompts": [[token ids], ...], "max_feature_nodes": int|null,
"batch_size": int}}}.

The Llama's weights are read from its safetensors and converted by transformer-lens's own
`convert_llama_weights` into a `TransformerLensReplacementModel` built from a hand-made
`HookedTransformerConfig` (`from_pretrained` only knows published model names), before circuit-tracer
configures it with the transcoders (loaded by its own `load_transcoders_from_cache`). For each prompt,
circuit-tracer's `attribute` gives the graph; its adjacency, node tensors, `compute_graph_scores` and
`prune_graph` masks, and the logits of `feature_intervention` ablating the strongest active feature
(attention frozen), are written to WORKDIR/ct/<case>/<i>.safetensors (+ .json), with the wall time and the
peak RSS of `attribute` (job "threads": torch threads, default 1).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

warnings.filterwarnings("ignore")
CPU = torch.device("cpu")


def rss_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, MiB."""
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1]) / 1024


def reset_peak_rss() -> None:
    """Start VmHWM again from the current RSS (Linux: "5" to clear_refs), so the peak is the attribution's."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def build_model(model_dir: Path, sizes: dict, transcoders):
    from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel
    from tokenizers import Tokenizer
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    hf_config = LlamaConfig(**sizes)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(hf_config)
    from safetensors.torch import load_file

    state = load_file(str(model_dir / "model.safetensors"))
    missing, _unexpected = hf.load_state_dict(state, strict=False)
    assert not [k for k in missing if "rotary" not in k and k != "lm_head.weight"], missing
    if "lm_head.weight" not in state:
        hf.lm_head.weight = hf.model.embed_tokens.weight
    hf.eval()
    d_head = sizes["hidden_size"] // sizes["num_attention_heads"]
    cfg = HookedTransformerConfig(
        d_model=sizes["hidden_size"], d_head=d_head, n_heads=sizes["num_attention_heads"],
        n_key_value_heads=sizes["num_key_value_heads"], d_mlp=sizes["intermediate_size"],
        n_layers=sizes["num_hidden_layers"], n_ctx=sizes["max_position_embeddings"], d_vocab=sizes["vocab_size"],
        act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=d_head,
        rotary_base=sizes.get("rope_theta", 10000.0), rotary_adjacent_pairs=False, gated_mlp=True, final_rms=True,
        eps=sizes.get("rms_norm_eps", 1e-6), original_architecture="LlamaForCausalLM", model_name="tiny-llama",
        default_prepend_bos=False, dtype=torch.float32, device="cpu")
    special = json.loads((model_dir / "tokenizer_config.json").read_text())
    names = {key: special[key] for key in ("bos_token", "eos_token", "pad_token", "unk_token")
             if isinstance(special.get(key), str)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(model_dir / "tokenizer.json")),
                                        **names)
    model = TransformerLensReplacementModel(cfg)
    model.tokenizer = tokenizer  # set_tokenizer would reload it by name from the Hub
    model.load_and_process_state_dict(convert_llama_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False)
    model._configure_replacement_model(transcoders)
    model.eval()
    return model, hf


def main(work: Path) -> None:
    from circuit_tracer.attribution.attribute import attribute
    from circuit_tracer.graph import compute_graph_scores, prune_graph
    from circuit_tracer.utils.caching import load_transcoders_from_cache

    job = json.loads((work / "job.json").read_text())
    torch.set_num_threads(int(job.get("threads", 1)))
    model_dir = Path(job["model"])
    for case, spec in job["cases"].items():
        folder = Path(spec["transcoders"])
        transcoders, _ = load_transcoders_from_cache(folder.name, cache_dir=folder.parent, device=CPU,
                                                     dtype=torch.float32)
        model, hf = build_model(model_dir, job["config"], transcoders)
        out = work / "ct" / case
        out.mkdir(parents=True, exist_ok=True)
        for i, ids in enumerate(spec["prompts"]):
            tokens = torch.tensor(ids)
            with torch.no_grad():
                tl_logits = model(tokens[None])[0]
                hf_logits = hf(input_ids=tokens[None]).logits[0]
            rss_before = rss_mib("VmRSS")
            reset_peak_rss()
            start = time.perf_counter()
            graph = attribute(tokens, model, batch_size=spec.get("batch_size", 64),
                              max_feature_nodes=spec.get("max_feature_nodes"))
            seconds = time.perf_counter() - start
            peak = rss_mib("VmHWM")
            replacement, completeness = compute_graph_scores(graph)
            # an intervention: the strongest active feature ablated, attention patterns frozen
            strongest = int(torch.argmax(graph.activation_values))
            layer, pos, feature = (int(v) for v in graph.active_features[strongest])
            ablated, _ = model.feature_intervention(tokens, [(layer, pos, feature, 0.0)], freeze_attention=True)
            pruned = prune_graph(graph, node_threshold=0.8, edge_threshold=0.98)
            save_file({"adjacency": graph.adjacency_matrix.float().contiguous(),
                       "active_features": graph.active_features.long().contiguous(),
                       "activation_values": graph.activation_values.float().contiguous(),
                       "selected_features": graph.selected_features.long().contiguous(),
                       "logit_tokens": graph.logit_token_ids.long().contiguous(),
                       "logit_probabilities": graph.logit_probabilities.float().contiguous(),
                       "node_mask": pruned.node_mask.contiguous(), "edge_mask": pruned.edge_mask.contiguous(),
                       "ablated_logits": ablated[0].float().contiguous(),
                       "ablated_feature": torch.tensor([layer, pos, feature])},
                      str(out / f"{i}.safetensors"))
            (out / f"{i}.json").write_text(json.dumps({
                "replacement_score": replacement, "completeness_score": completeness, "seconds": seconds,
                "rss_before_mib": rss_before, "peak_rss_mib": peak,
                "tl_vs_hf_logits": float((tl_logits - hf_logits).abs().max())}))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
