"""The gated-attention toy experiment (METHODS-2.md §4.1; docs/attention.md): for each toy, train the
attention-only model on its skip trigrams (it must superpose them: fewer heads than trigrams), train a
gated attention block with twice the heads to reproduce its attention output, and apply the published
test to both: is each trigram produced by exactly one head under every ablation of the others?

The block trains through the one trainer (`ReplacementObjective`); its stream replays the toy's training
batches as sequences {embed, attn_out} for the given number of epochs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from saekit.attention.gated import GatedAttentionBlock
from saekit.attention.skip_trigrams import SkipTrigrams, ToyAttentionModel, check_superposition, train_toy_model
from saekit.config import DictionaryConfig, Provenance
from saekit.errors import SaekitError
from saekit.spec import DictionarySpec
from saekit.training.config import RunConfig, TrainingConfig
from saekit.training.replacement import ReplacementObjective


@dataclass
class ToySettings:
    """One toy and how its two stages train (the published values are in PUBLISHED)."""

    n_heads: int  # heads of the toy model; the block has twice as many
    n_trigrams: int
    alpha: float  # gate penalty coefficient
    block_lr: float
    block_epochs: int
    model_lr: float = 1e-3
    model_epochs: int = 1000
    n_batches: int = 100
    per_batch: int = 1000
    data_seed: int = 0
    model_seed: int = 0
    block_seed: int = 0
    reference_data: bool = False  # the reference's own batches, draw for draw (SkipTrigrams.reference_batches)
    compile: bool = False  # train the block through torch.compile (GatedAttentionBlock.compile_loss)

    @property
    def name(self) -> str:
        return f"{self.n_heads}H/{self.n_trigrams}ST"


# The reference's experiments/config.yaml (block) and create_skip_trigram_model.py (toy model):
# 1000 epochs × 100 batches × 1000 sequences each, ~10⁹ token-steps per stage.
PUBLISHED = {
    "2H/3ST": ToySettings(2, 3, alpha=0.5, block_lr=5e-4, block_epochs=1000),
    "3H/4ST": ToySettings(3, 4, alpha=0.1, block_lr=5e-4, block_epochs=1000),
    "4H/5ST": ToySettings(4, 5, alpha=0.3, block_lr=1e-3, block_epochs=1000),
}
# Settings that reach the published outcome on a CPU in minutes (benchmarks/attention_toy.py).
CPU = {
    "2H/3ST": dataclasses.replace(PUBLISHED["2H/3ST"], model_epochs=60, model_lr=1e-2, block_epochs=60,
                                  block_lr=5e-3),
    "3H/4ST": dataclasses.replace(PUBLISHED["3H/4ST"], model_epochs=60, model_lr=1e-2, block_epochs=60,
                                  block_lr=5e-3),
    "4H/5ST": dataclasses.replace(PUBLISHED["4H/5ST"], model_epochs=60, model_lr=1e-2, block_epochs=60,
                                  block_lr=5e-3),
}
PUBLISHED_OUTCOME = "pass: each trigram by one head"


def block_spec(settings: ToySettings, d_model: int) -> DictionarySpec:
    """The block's spec: its heads are its latents, α its sparsity coefficient, Adam at a constant lr
    and no gradient clipping or normalisation, as in the reference."""
    cfg = DictionaryConfig(method="relu", d_in=d_model, d_sae=2 * settings.n_heads, transcoder=True,
                           name=f"gated-block-{2 * settings.n_heads}H-{settings.n_trigrams}ST")
    training = TrainingConfig(lr=settings.block_lr, adam_betas=(0.9, 0.999), lr_warmup=0.0, lr_decay=0.0,
                              sparsity_coefficient=settings.alpha, sparsity_warmup=0.0, grad_clip=0.0,
                              normalize_activations="none", b_dec_init="zeros", unit_norm_decoder=False,
                              decoder_init_norm=1.0, seed=settings.block_seed)
    return DictionarySpec(cfg, training, Provenance(model_name="skip-trigram toy", hookpoint="embed",
                                                    target_hookpoint="attn_out"))


class ToyStream:
    """The toy's training batches as sequences {embed, attn_out, mask}, replayed `epochs` times."""

    def __init__(self, model: ToyAttentionModel, batches: list[tuple[Tensor, Tensor]], epochs: int) -> None:
        with torch.no_grad():
            self.items = []
            for tokens, _ in batches:
                x = model.embed(tokens)
                self.items.append({"embed": x, "attn_out": model.attention(x),
                                   "mask": torch.ones(tokens.shape, dtype=torch.bool)})
        self.epochs = epochs

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for _ in range(self.epochs):
            yield from self.items


def train_gated_block(model: ToyAttentionModel, batches: list[tuple[Tensor, Tensor]], settings: ToySettings,
                      progress: bool = False) -> tuple[GatedAttentionBlock, float]:
    """(trained block, its final training MSE averaged over the last epoch's batches)."""
    spec = block_spec(settings, model.d_model)

    def build(spec: DictionarySpec, device: torch.device) -> GatedAttentionBlock:
        block = GatedAttentionBlock(spec.dictionary, spec.training, device)
        if settings.compile:
            block.compile_loss()
        return block

    objective = ReplacementObjective(build)
    run = RunConfig(total_tokens=settings.block_epochs * len(batches) * settings.per_batch,
                    batch_size=settings.per_batch, progress=progress, log_every=len(batches))
    from saekit.training.trainer import train

    (trained,) = train(ToyStream(model, batches, settings.block_epochs), [spec], run=run, objective=[objective])
    block = cast(GatedAttentionBlock, trained)  # what the objective built
    return block, block_mse(block, model, batches)


@torch.no_grad()
def block_mse(block: GatedAttentionBlock, model: ToyAttentionModel, batches: list[tuple[Tensor, Tensor]]) -> float:
    """The block's MSE to the toy model's attention output, averaged over the batches."""
    items = ToyStream(model, batches, 1).items
    return sum(float((block(item["embed"]) - item["attn_out"]).pow(2).mean()) for item in items) / len(items)


def reference_file(folder: Any, stem: str) -> Any:
    """`folder/stem.st`, a safetensors file of the reference's `saved_models` (cmathw/gated-attn)."""
    from pathlib import Path

    path = Path(folder) / f"{stem}.st"
    if not path.is_file():
        raise SaekitError(f"no {path.name} in {folder}: pass the reference's gated_attention/experiments/saved_models")
    return path


def load_reference_model(folder: Any, settings: ToySettings) -> ToyAttentionModel:
    """The reference's trained toy model (`toy_model_{H}H_{n}ST.st`, keys `attn.W_Q` …, same layout)."""
    from safetensors.torch import load_file

    state = load_file(str(reference_file(folder, f"toy_model_{settings.name.replace('/', '_')}")))
    model = ToyAttentionModel(SkipTrigrams(settings.n_trigrams).vocab, settings.n_heads)
    model.load_state_dict({k.removeprefix("attn."): v for k, v in state.items() if k != "attn.IGNORE"})
    return model.eval()


def load_reference_block(folder: Any, settings: ToySettings) -> GatedAttentionBlock:
    """The reference's trained gated block (`gated_block_{2H}H_{n}ST.st`; saekit's parameter names)."""
    from safetensors.torch import load_file

    spec = block_spec(settings, SkipTrigrams(settings.n_trigrams).vocab)
    block = GatedAttentionBlock(spec.dictionary, spec.training)
    block.load_state_dict(load_file(str(reference_file(folder, f"gated_block_{2 * settings.n_heads}H_"
                                                                f"{settings.n_trigrams}ST"))))
    return block.eval()


REFERENCE_COLUMNS = ["toy", "model_learnt", "model_distributed", "one_head", "block_distributed", "block_passes",
                     "final_mse", "published"]


def check_reference(folder: Any, settings: ToySettings) -> dict[str, Any]:
    """saekit's check on the reference's shipped original and block: the published verdicts (original
    distributed, block one head per trigram) come out only if saekit's model, block and check compute
    what the reference's do."""
    task = SkipTrigrams(settings.n_trigrams)
    model = load_reference_model(folder, settings)
    block = load_reference_block(folder, settings)
    with torch.no_grad():
        original = check_superposition(task, lambda tokens: model.head_outputs(model.embed(tokens)))
        gated = check_superposition(task, lambda tokens: block.details(model.embed(tokens))[0])
    mse = block_mse(block, model, task.batches(settings.n_batches, settings.per_batch, settings.data_seed))
    n = settings.n_trigrams
    return {"toy": settings.name, "model_learnt": f"{sum(original.learnt.values())}/{n}",
            "model_distributed": len(original.distributed), "one_head": f"{gated.exactly_one_head}/{n}",
            "block_distributed": len(gated.distributed), "block_passes": gated.passes and gated.exactly_one_head == n,
            "final_mse": mse, "published": PUBLISHED_OUTCOME}


def run_toy(settings: ToySettings, progress: bool = False, model: ToyAttentionModel | None = None) -> dict[str, Any]:
    """Train both stages of one toy and check both (one row of the table); with `model`, only the block
    is trained, on that toy model (e.g. the reference's, `load_reference_model`)."""
    if settings.n_heads < 1 or settings.n_trigrams < 1:
        raise SaekitError("a toy needs at least one head and one trigram")
    started = time.perf_counter()
    task = SkipTrigrams(settings.n_trigrams)
    sample = task.reference_batches if settings.reference_data else task.batches
    batches = sample(settings.n_batches, settings.per_batch, settings.data_seed)
    toy_model = "saekit" if model is None else "given"
    if model is None:
        model = train_toy_model(task, settings.n_heads, batches, settings.model_epochs, settings.model_lr,
                                settings.model_seed, progress)
    original = check_superposition(task, lambda tokens: model.head_outputs(model.embed(tokens)))
    model_seconds = time.perf_counter() - started
    block, mse = train_gated_block(model, batches, settings, progress)
    gated = check_superposition(task, lambda tokens: block.details(model.embed(tokens))[0])
    n = settings.n_trigrams
    return {
        "toy": settings.name,
        "toy_model": toy_model,
        "data": "reference" if settings.reference_data else "saekit",
        "model_learnt": f"{sum(original.learnt.values())}/{n}",
        "model_distributed": len(original.distributed),
        "block_heads": 2 * settings.n_heads,
        "one_head": f"{gated.exactly_one_head}/{n}",
        "block_learnt": f"{sum(gated.learnt.values())}/{n}",
        "block_distributed": len(gated.distributed),
        "block_passes": gated.passes and gated.exactly_one_head == n,
        "final_mse": mse,
        "published": PUBLISHED_OUTCOME,
        "heads_by_trigram": {b: heads for b, heads in gated.heads.items()},
        "settings": dataclasses.asdict(settings),
        "model_seconds": model_seconds,
        "block_seconds": time.perf_counter() - started - model_seconds,
    }
