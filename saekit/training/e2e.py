"""End-to-end SAEs (Braun et al. 2024; docs/methods.md "End-to-end SAEs"): train through the model's
output distribution.

This is an objective of the one trainer, not a second training loop: the stream yields batches of
sequences (`input_ids`, `mask`), and for each the dictionary's reconstruction replaces the activation
at one module's output during the forward pass (`saekit.models.hooks.splice`, counted positions only),
with loss KL(p_clean ‖ p_spliced) over the vocabulary (averaged over non-special tokens) plus
φ·||f||₁ / d_in. The "e2e + downstream" variant adds the MSE between later modules' spliced and clean
outputs, β_ds/|L'| each. The model is frozen; gradients flow through it into the dictionary. Per the
paper the decoder is unit-norm and there is no pre-encoder bias: the relu method with
`unit_norm_decoder=True` (so the norm-weighted L1 is the plain L1) and no input normalisation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from saekit.config import DictionaryConfig, Provenance
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.methods import Encoding
from saekit.models.hooks import capture, hooks, splice
from saekit.models.outputs import kl_per_position, masked_mean
from saekit.models.sites import resolve_hookpoints
from saekit.spec import DictionarySpec
from saekit.training.config import RunConfig, TrainingConfig
from saekit.training.objective import LossResult


@dataclass
class E2EConfig:
    hookpoint: str  # named site (resid_post.6) or module name whose output the dictionary replaces
    d_sae: int
    sparsity_coefficient: float = 1.5  # φ (GPT-2 config); unused for TopK
    method: str = "relu"  # the paper's L1 SAE; "topk" fixes L0 = k, for comparisons at equal L0
    k: int | None = None
    kl_coefficient: float = 1.0
    downstream_hookpoints: list[str] = field(default_factory=list)  # e2e+ds: later modules
    downstream_coefficient: float = 2.5  # total β_ds, split over the downstream modules
    lr: float = 5e-4
    lr_warmup: float = 0.05
    lr_decay: float = 0.2
    grad_clip: float = 10.0
    seed: int = 0


def kl_clean_to_spliced(clean_logits: Tensor, spliced_logits: Tensor, mask: Tensor) -> Tensor:
    """KL(p_clean ‖ p_spliced) summed over the vocabulary, averaged over the masked-in positions."""
    clean = torch.log_softmax(clean_logits.float(), dim=-1)
    return masked_mean(kl_per_position(clean, spliced_logits), mask)


class E2EObjective:
    """The e2e loss of the dictionary spliced into `model` at `cfg.hookpoint` (see the module doc).

    `init`: start from a trained local dictionary of the same method and shape (raw-activation weights,
    as saved) instead of from scratch: e2e fine-tuning, which reaches the KL regime in far fewer (costly)
    steps."""

    reads_rows = False  # token sequences: the dictionary is spliced into the model's forward

    def __init__(self, model: nn.Module, cfg: E2EConfig, init: Dictionary | None = None) -> None:
        self.model, self.cfg, self.init = model, cfg, init
        self.site = resolve_hookpoints(model, [cfg.hookpoint])[0]
        self.downstream = resolve_hookpoints(model, list(cfg.downstream_hookpoints)) \
            if cfg.downstream_hookpoints else []
        self.device = next(model.parameters()).device

    def start(self, member: Any, batch: dict[str, Tensor], _target: Any) -> None:
        d = member.dictionary
        if self.init is not None:
            d.load_weights({k: v.to(d.W_dec.dtype) for k, v in self.init.weights().items()})
            return
        ids, mask = batch["input_ids"].to(self.device), batch["mask"].bool()
        acts = capture(self.model, ids, [self.site])[self.site.name]
        d.initialize(acts[mask.to(acts.device)].float().to(member.device), member.training, member.generator)

    def loss(self, member: Any, batch: dict[str, Tensor], _target: Any, sparsity_coefficient: float | Tensor,
             dead_mask: Tensor | None) -> LossResult:
        d, cfg = member.dictionary, self.cfg
        ids, mask = batch["input_ids"].to(self.device), batch["mask"].to(self.device).float()
        keep = mask.bool()
        clean: dict[str, Tensor] = {}
        with torch.no_grad(), hooks(self.model, self.downstream, clean):
            clean_logits = self.model(input_ids=ids).logits
        encodings: list[Encoding] = []

        def reconstruct(rows: Tensor) -> Tensor:
            # BOS and other special tokens keep their clean values, as in spliced evaluation: their
            # residuals are outliers (attention sinks) that no dictionary is trained on.
            enc = d.encode_with_details(rows.float().to(member.device))
            encodings.append(enc)
            return d.decode_encoding(enc).to(self.device)

        spliced: dict[str, Tensor] = {}
        with splice(self.model, self.site, reconstruct, positions=keep), \
                hooks(self.model, self.downstream, spliced):
            spliced_logits = self.model(input_ids=ids).logits
        kl = kl_clean_to_spliced(clean_logits, spliced_logits, mask)
        enc = encodings[-1]
        assert enc.latents is not None
        l1 = enc.latents.abs().sum(-1).mean() / d.d_in  # latents exist at counted positions only
        total = cfg.kl_coefficient * kl + sparsity_coefficient * l1
        parts = {"kl": kl.detach(), "l1": l1.detach()}
        for point in self.downstream:
            error = (spliced[point.name].float() - clean[point.name].float()).pow(2).mean(-1)
            term = masked_mean(error, mask)
            total = total + cfg.downstream_coefficient / len(self.downstream) * term
            parts[f"downstream_mse.{point.name}"] = term.detach()
        return LossResult(total, enc, enc.latents, parts)


def e2e_spec(cfg: E2EConfig, d_in: int, init: Dictionary | None = None) -> DictionarySpec:
    """The dictionary an e2e run trains: cfg's method and width, the paper's training recipe."""
    if init is not None and (init.cfg.method, init.d_in, init.d_sae) != (cfg.method, d_in, cfg.d_sae):
        raise SaekitError(f"init dictionary is a {init.cfg.method} {init.d_in}x{init.d_sae}; the e2e SAE is a "
                          f"{cfg.method} {d_in}x{cfg.d_sae}: pass a dictionary of the same method and shape")
    from saekit.methods import get_method

    uses_l1 = get_method(cfg.method).uses_sparsity_coefficient
    name = f"e2e{'-ds' if cfg.downstream_hookpoints else ''}-{cfg.method}-{cfg.d_sae}"
    dictionary = DictionaryConfig(method=cfg.method, d_in=d_in, d_sae=cfg.d_sae, k=cfg.k, name=name)
    training = TrainingConfig(
        lr=cfg.lr, adam_betas=(0.9, 0.999), lr_warmup=cfg.lr_warmup, lr_decay=cfg.lr_decay,
        sparsity_coefficient=cfg.sparsity_coefficient if uses_l1 else 0.0, sparsity_warmup=0.0,
        grad_clip=cfg.grad_clip, normalize_activations="none", b_dec_init="zeros",
        # a local dictionary's folded decoder rows are not unit norm: keep them
        unit_norm_decoder=init is None, decoder_init_norm=1.0, aux_k=0, sparse_kernels=False, seed=cfg.seed)
    return DictionarySpec(dictionary, training, Provenance(hookpoint=cfg.hookpoint))


def train_e2e(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], cfg: E2EConfig,
              total_steps: int, progress: bool = True, init: Dictionary | None = None,
              device: str | torch.device | None = None) -> Dictionary:
    """Train an e2e (or e2e+ds) SAE with the one trainer. `batches` yields (input_ids [B, T], mask
    [B, T]) where the mask selects the tokens that count in the KL (special tokens excluded). The
    dictionary trains on `device` (default: the model's)."""
    if total_steps < 1:
        raise SaekitError(f"total_steps must be at least 1, got {total_steps}")
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    objective = E2EObjective(model, cfg, init)
    iterator = iter(batches)
    first_ids, first_mask = next(iterator)
    d_in = capture(model, first_ids[:1, :2], [objective.site])[objective.site.name].shape[-1]
    spec = e2e_spec(cfg, d_in, init)

    def sequences() -> Iterable[dict[str, Tensor]]:
        yield {"input_ids": first_ids, "mask": first_mask}
        for ids, mask in iterator:
            yield {"input_ids": ids, "mask": mask}

    from saekit.training.trainer import train

    n = first_ids.shape[0]
    run = RunConfig(total_tokens=total_steps * n, batch_size=n, progress=progress,
                    device=str(objective.device if device is None else device))
    (d,) = train(sequences(), [spec], run=run, objective=objective)
    d.meta.update(e2e=True, downstream_hookpoints=list(cfg.downstream_hookpoints))
    d.meta.pop("normalization", None)  # nothing was normalised
    return d
