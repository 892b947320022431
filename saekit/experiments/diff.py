"""Model diffing, end to end: train a crosscoder over two models at one hookpoint, then report on held-out
text which latents belong to which model, whether latent scaling confirms them, and where the two
models' next-token losses differ (`saekit diff`; docs/diffing.md).

The held-out pass (`held_out_pass`) runs each model once over the test split: activations at the
hookpoint for the crosscoder, and per-token next-token loss and top prediction for the loss comparison.
`diff_report` turns a crosscoder and that pass into the report's numbers (a JSON-able dict);
`saekit.inspect.diff_page` renders it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.data.config import TextConfig
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.inspect.diffing import (
    MIN_SCALING_COUNT,
    LatentScaling,
    classify_latents,
    decoder_blocks,
    diffing_summary,
    relative_decoder_norms,
    shared_decoder_cosines,
    survives_latent_scaling,
)
from saekit.spec import DictionarySpec


def load_pair(model_names: dict[str, str], model_dtype: str = "float32", device: str = "cpu",
              trust_remote_code: bool = False) -> tuple[dict[str, Any], Any]:
    """Both models, and their (shared) tokenizer; different vocabularies are refused."""
    from saekit.data.config import ModelConfig

    models, tokenizers = {}, {}
    for label, name in model_names.items():
        models[label], tokenizers[label] = ModelConfig(name, model_dtype, trust_remote_code).load(device)
    first, second = tokenizers.values()
    if first.get_vocab() != second.get_vocab():
        raise SaekitError("the two models have different tokenizers: a crosscoder needs both to read "
                          "the same tokens")
    return models, first


def repeated_stream(models: dict[str, Any], tokenizer: Any, text: TextConfig, hookpoint: str
                    ) -> Iterator[dict[str, Tensor]]:
    """The train split's activations, pass after pass (each pass shuffled with the next data seed), so a
    token budget larger than the text is trained in epochs rather than cut short."""
    from saekit.data.stream import ActivationStream

    for epoch in itertools.count():
        pass_text = replace(text, data_seed=text.data_seed + epoch)
        yield from ActivationStream(models, pass_text.token_stream(tokenizer, "train"), [hookpoint])


def crosscoder_spec(widths: dict[str, int], model_names: dict[str, str], hookpoint: str, dataset: str,
                    context_size: int, options: dict[str, Any], expansion: int = 4) -> DictionarySpec:
    """The spec of a crosscoder over both models at `hookpoint` (sources `label/hookpoint`, one decoder
    block each, d_sae = expansion × d_model); `options` are its dictionary options (method, k, lr, ...)."""
    sources = [f"{label}/{hookpoint}" for label in model_names]
    return DictionarySpec.from_options(
        d_in=sum(widths[s] for s in sources), d_sae=expansion * widths[sources[0]], source_hookpoints=sources,
        name="crosscoder", model_name=",".join(f"{k}={v}" for k, v in model_names.items()),
        dataset=dataset, context_size=context_size, **options)


def train_crosscoder(models: dict[str, Any], tokenizer: Any, text: TextConfig, hookpoint: str,
                     model_names: dict[str, str], options: dict[str, Any], expansion: int = 4,
                     tokens: int = 100_000, batch_size: int = 1024, out: Path | None = None,
                     device: str = "cpu", progress: bool = True) -> Dictionary:
    """A crosscoder reading both models' activations at `hookpoint` (one decoder block per model),
    trained on `tokens` tokens of `text` (in passes, if the text is shorter)."""
    import saekit
    from saekit.data.stream import ActivationStream

    widths = ActivationStream(models, text.token_stream(tokenizer, "train"), [hookpoint]).widths()
    spec = crosscoder_spec(widths, model_names, hookpoint, text.dataset, text.context_size, options, expansion)
    log_file = str(out / "log.jsonl") if out is not None else None
    return saekit.train(repeated_stream(models, tokenizer, text, hookpoint), [spec], total_tokens=tokens,
                        batch_size=batch_size, device=device, log_file=log_file, progress=progress)[0]


@dataclass
class HeldOut:
    """One pass of both models over held-out text, at the counted positions (n of them)."""

    ids: Tensor  # [S, T] token ids of the held-out windows
    positions: Tensor  # [n, 2] (window, position) of each counted token
    inputs: Tensor  # [n, 2·d] both models' activations at the hookpoint, concatenated
    losses: Tensor  # [n, 2] next-token cross-entropy per model (NaN where the next token is not counted)
    predictions: Tensor  # [n, 2] each model's most likely next token


@torch.no_grad()
def held_out_pass(models: dict[str, Any], tokenizer: Any, text: TextConfig, hookpoint: str,
                  eval_tokens: int = 16_384, progress: bool = False) -> HeldOut:
    """Run both models over `eval_tokens` tokens of the test split: activations, losses, predictions."""
    from tqdm.auto import tqdm

    from saekit.models.hooks import hooks
    from saekit.models.outputs import next_token_loss
    from saekit.models.sites import resolve_hookpoints

    batches = list(text.token_stream(tokenizer, "test", max_tokens=eval_tokens))
    if not batches:
        raise SaekitError(f"the test split of {text.dataset!r} is empty: the held-out report needs text "
                          "(every 20th document is held out)")
    ids = torch.cat([b[0] for b in batches])
    mask = torch.cat([b[1] for b in batches]).bool()
    inputs, losses, predictions = [], [], []
    for input_ids, batch_mask in tqdm(batches, disable=not progress, desc="held-out pass", unit="batch"):
        keep = batch_mask.bool()
        acts, loss, top = [], [], []
        for model in models.values():
            point = resolve_hookpoints(model, [hookpoint])
            store: dict[str, Tensor] = {}
            device = next(model.parameters()).device
            with hooks(model, point, store):
                logits = model(input_ids=input_ids.to(device)).logits.float()
            ce, target_mask = next_token_loss(logits, input_ids.to(device), batch_mask.to(device))
            ce = torch.where(target_mask > 0, ce, torch.full_like(ce, float("nan")))
            ce = torch.cat([ce, torch.full_like(ce[:, :1], float("nan"))], dim=1)  # last: no next token
            acts.append(store[hookpoint].float().cpu()[keep])
            loss.append(ce.cpu()[keep])
            top.append(logits.argmax(-1).cpu()[keep])
        inputs.append(torch.cat(acts, dim=-1))
        losses.append(torch.stack(loss, dim=-1))
        predictions.append(torch.stack(top, dim=-1))
    return HeldOut(ids, mask.nonzero(), torch.cat(inputs), torch.cat(losses), torch.cat(predictions))


def _context(held: HeldOut, tokenizer: Any, latents: Tensor, latent: int, row: int,
             before: int = 12, after: int = 3) -> dict[str, Any]:
    """The tokens around one held-out position, the latent's activation on each, and what each model
    predicts next there (loss and top token)."""
    window, position = held.positions[row].tolist()
    same = (held.positions[:, 0] == window).nonzero().flatten()
    rows = same[(held.positions[same, 1] >= position - before) & (held.positions[same, 1] <= position + after)]
    return {"tokens": [tokenizer.decode([int(held.ids[window, p])]) for p in held.positions[rows, 1].tolist()],
            "values": [float(v) for v in latents[rows, latent]],
            "peak": int((rows == row).nonzero()[0, 0]),
            "activation": float(latents[row, latent]),
            "next_token": tokenizer.decode([int(held.ids[window, position + 1])])
            if position + 1 < held.ids.shape[1] else "",
            "losses": [float(v) for v in held.losses[row]],
            "predictions": [tokenizer.decode([int(t)]) for t in held.predictions[row]]}


def loss_difference(held: HeldOut, latents: Tensor, classes: dict[str, Tensor], labels: list[str],
                    tokenizer: Any, top: int = 10) -> dict[str, Any]:
    """Where the models' next-token losses differ on held-out text, and which latents fire there.

    delta = loss(first) − loss(second) per token (positive: the second model predicts better). Each
    latent gets the correlation of its activation with delta over the tokens, the mean delta where it
    fires, and the share of Σ|delta| that falls on the tokens where it fires (of |delta|, because the signed
    total can be near zero); each class the same for "any latent of the class fires".
    """
    valid = torch.isfinite(held.losses).all(-1)
    delta = (held.losses[valid, 0] - held.losses[valid, 1]).double()
    f = latents[valid].double()
    centered = f - f.mean(0)
    d_centered = delta - delta.mean()
    correlation = (centered.T @ d_centered) / (centered.norm(dim=0) * d_centered.norm()).clamp_min(1e-12)
    fires = f > 0
    total = float(delta.abs().sum())
    share = (fires.double().T @ delta.abs()) / total if total else torch.zeros(f.shape[1], dtype=torch.float64)
    class_of = {}
    for name, mask in classes.items():
        for i in torch.nonzero(mask).flatten().tolist():
            class_of[i] = name
    ranked = correlation.nan_to_num(0.0).abs().argsort(descending=True)[:top]
    explaining = [{"latent": int(i), "class": class_of.get(int(i), "dead"), "correlation": float(correlation[i]),
                   "fires": int(fires[:, i].sum()), "mean_delta_when_firing":
                       float(delta[fires[:, i]].mean()) if bool(fires[:, i].any()) else float("nan"),
                   "share_of_abs_delta": float(share[i])} for i in ranked]
    by_class = {}
    for name in ("first_only", "second_only", "shared"):
        any_fires = fires[:, classes[name]].any(1)
        by_class[name] = {"token_fraction": float(any_fires.double().mean()),
                          "share_of_abs_delta": float(delta[any_fires].abs().sum() / total) if total else 0.0,
                          "mean_delta_when_firing": float(delta[any_fires].mean()) if bool(any_fires.any())
                          else float("nan")}
    # The target tokens whose loss changed most (summed over their occurrences).
    window_pos = held.positions[valid]
    targets = held.ids[window_pos[:, 0], window_pos[:, 1] + 1]
    sums = torch.zeros(int(held.ids.max()) + 1, dtype=torch.float64).index_add_(0, targets, delta)
    counts = torch.bincount(targets, minlength=sums.numel())
    order = sums.argsort(descending=True)
    gained = [t for t in order[:top].tolist() if sums[t] > 0]  # the second model predicts them better
    lost = [t for t in order.flip(0)[:top].tolist() if sums[t] < 0]
    tokens = [{"token": tokenizer.decode([t]), "count": int(counts[t]), "total_delta": float(sums[t]),
               "mean_delta": float(sums[t] / counts[t])} for t in gained + lost]
    return {"tokens": int(valid.sum()), "mean_loss": [float(held.losses[valid, m].mean()) for m in range(2)],
            "mean_delta": float(delta.mean()), "latents": explaining, "by_class": by_class,
            "target_tokens": tokens, "labels": labels}


@torch.no_grad()
def diff_report(crosscoder: Dictionary, held: HeldOut, tokenizer: Any, model_names: dict[str, str],
                hookpoint: str, dataset: str, top_latents: int = 8, shared_baseline: int = 64,
                seed: int = 0) -> dict[str, Any]:
    """Everything the report shows, from a crosscoder and a held-out pass (JSON-able)."""
    labels = list(model_names)
    latents = torch.cat([crosscoder.encode(chunk) for chunk in held.inputs.split(4096)])
    alive = (latents > 0).any(0)
    classes = classify_latents(crosscoder, alive)
    r = relative_decoder_norms(crosscoder)
    norms = decoder_blocks(crosscoder, trained_space=True).norm(dim=-1)
    cosines = torch.nn.functional.cosine_similarity(decoder_blocks(crosscoder)[:, 0],
                                                    decoder_blocks(crosscoder)[:, 1], dim=-1)
    frequency = (latents > 0).float().mean(0)

    # Latent scaling: every model-specific latent (probed with its own model's block) and a random
    # sample of shared latents as the baseline (probed with the second model's, as Minder et al. do).
    generator = torch.Generator().manual_seed(seed)
    shared = torch.nonzero(classes["shared"]).flatten()
    shared = shared[torch.randperm(len(shared), generator=generator)[:shared_baseline]]
    first, second = (torch.nonzero(classes[k]).flatten() for k in ("first_only", "second_only"))
    probed = torch.cat([first, second, shared])
    own = torch.cat([torch.zeros_like(first), torch.ones_like(second), torch.ones_like(shared)])
    scaling = LatentScaling(crosscoder, probed, own)
    for start in range(0, len(held.inputs), 4096):
        scaling.update(held.inputs[start:start + 4096], latents[start:start + 4096])
    betas = scaling.betas()
    survives = survives_latent_scaling(betas, own)
    per_latent: dict[int, dict[str, Any]] = {
        int(i): {key: betas[key][n].tolist() for key in betas} | {"survives": bool(survives[n])}
        for n, i in enumerate(probed)}

    reconstruction = torch.cat([crosscoder(chunk) for chunk in held.inputs.split(4096)])
    width = held.inputs.shape[1] // 2
    fvu = []
    for m in range(2):
        x, x_hat = held.inputs[:, m * width:(m + 1) * width], reconstruction[:, m * width:(m + 1) * width]
        fvu.append(float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()))

    def card(i: int) -> dict[str, Any]:
        """What the page shows of latent i: its decoder and its strongest held-out contexts."""
        return {"latent": i, "relative_norm": float(r[i]), "frequency": float(frequency[i]),
                "decoder_norms": norms[i].tolist(), "decoder_cosine": float(cosines[i]),
                "contexts": [_context(held, tokenizer, latents, i, int(row))
                             for row in latents[:, i].topk(min(5, int((latents[:, i] > 0).sum()))).indices]}

    specific: dict[str, list[dict[str, Any]]] = {}
    scaling_counts = {}
    for label, key in ((labels[0], "first_only"), (labels[1], "second_only")):
        chosen = torch.nonzero(classes[key]).flatten()
        passed = [bool(per_latent[int(i)]["survives"]) for i in chosen]
        scaling_counts[key] = {"labelled": len(chosen), "survive": sum(passed),
                               "too_few_firings": sum(int(per_latent[int(i)]["count"]) < MIN_SCALING_COUNT
                                                      for i in chosen)}
        # Survivors first, then the most frequent.
        order = sorted(chosen.tolist(), key=lambda i: (not per_latent[i]["survives"], -float(frequency[i])))
        specific[label] = [card(i) | per_latent[i] for i in order[:top_latents]]
    # Shared latents whose two decoder blocks differ most: where a fine-tune that moved existing features
    # (rather than adding new ones) shows up.
    shared_all = torch.nonzero(classes["shared"]).flatten()
    turned = shared_all[cosines[shared_all].argsort()[:top_latents]].tolist()
    rotated = [card(i) for i in turned]
    baseline = [per_latent[int(i)] for i in shared]
    summary = diffing_summary(crosscoder, alive)
    return {
        "models": dict(model_names), "labels": labels, "hookpoint": hookpoint, "dataset": dataset,
        "eval_tokens": len(held.inputs), "dead": int((~alive).sum()), "d_sae": crosscoder.d_sae,
        "crosscoder": {"method": crosscoder.cfg.method, "k": crosscoder.cfg.k,
                       "training_tokens": crosscoder.meta.get("training_tokens"),
                       "training": crosscoder.training_config.to_dict()
                       if crosscoder.training_config is not None else None},
        "fvu": fvu, "l0": float((latents > 0).float().sum(1).mean()),
        "summary": summary, "latent_scaling": scaling_counts,
        "shared_baseline_nu": {key: float(torch.tensor([b[key] for b in baseline]).nanmedian())
                               if baseline else None for key in ("nu_error", "nu_reconstruction")},
        "relative_norms": r[alive].tolist(),
        "shared_cosines": shared_decoder_cosines(crosscoder, classes["shared"]).tolist(),
        "model_specific": specific,
        "rotated_shared": rotated,
        "loss_difference": loss_difference(held, latents, classes, labels, tokenizer),
    }
