"""End-to-end SAEs (Braun et al. 2024; METHODS.md §9): train through the model's output distribution.

The dictionary's reconstruction replaces the activation at one module's output during the forward
pass, and the loss is KL(p_clean ‖ p_spliced) over the vocabulary (averaged over non-special tokens)
plus φ·||f||₁ / d_in. The "e2e + downstream" variant adds the MSE between later modules' spliced and
clean outputs, β_ds/|L'| each. The model is frozen; gradients flow through it into the dictionary.
Per the paper the decoder is unit-norm and there is no pre-encoder bias: we use the relu method with
`unit_norm_decoder=True` (so the norm-weighted L1 is the plain L1) and no input normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from saekit.config import TOPK_FAMILY, DictionaryConfig
from saekit.data.sites import resolve_hookpoints
from saekit.data.stream import hooks
from saekit.dictionary import Dictionary
from saekit.errors import SaekitError
from saekit.training.member import lr_factor


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
    clean = F.log_softmax(clean_logits.float(), dim=-1)
    spliced = F.log_softmax(spliced_logits.float(), dim=-1)
    per_token = (clean.exp() * (clean - spliced)).sum(-1)
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


class _Splice(nn.Module):
    """Replace activations [B, T, d] by the dictionary's reconstruction at the counted positions only
    (`keep`, set per batch), keeping the latents. BOS and other special tokens keep their clean values,
    as in spliced evaluation: their residuals are outliers (attention sinks) that no dictionary is
    trained on, and replacing them would dominate the KL."""

    def __init__(self, d: Dictionary) -> None:
        super().__init__()
        self.d = d
        self.latents: Tensor | None = None
        self.keep: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        keep = self.keep  # set by train_e2e before each spliced forward
        latents = self.d.encode_with_details(x[keep].float()).latents
        self.latents = latents
        out = x.clone()
        out[keep] = self.d.decode(latents).to(x.dtype)
        return out


def train_e2e(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], cfg: E2EConfig,
              total_steps: int, progress: bool = True, init: Dictionary | None = None) -> Dictionary:
    """Train an e2e (or e2e+ds) SAE. `batches` yields (input_ids [B, T], mask [B, T]) where the mask
    selects the tokens that count in the KL (special tokens excluded).

    `init`: start from a trained local dictionary of the same shape (raw-activation weights, as saved)
    instead of from scratch: e2e fine-tuning, which reaches the KL regime in far fewer (costly) steps."""
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    iterator = iter(batches)
    first_ids, first_mask = next(iterator)
    site = resolve_hookpoints(model, [cfg.hookpoint])[0]
    downstream = resolve_hookpoints(model, list(cfg.downstream_hookpoints)) if cfg.downstream_hookpoints else []
    store: dict[str, Tensor] = {}
    with torch.no_grad(), hooks(model, [site], store):
        model(input_ids=first_ids)
    d_in = store[site.name].shape[-1]
    topk = cfg.method in TOPK_FAMILY
    dict_cfg = DictionaryConfig(method=cfg.method, d_in=d_in, d_sae=cfg.d_sae, lr=cfg.lr, k=cfg.k,
                                sparsity_coefficient=0.0 if topk else cfg.sparsity_coefficient,
                                # a local dictionary's folded decoder rows are not unit norm: keep them
                                unit_norm_decoder=init is None, decoder_init_norm=1.0, b_dec_init="zeros",
                                normalize_activations="none", hookpoint=cfg.hookpoint, seed=cfg.seed,
                                name=f"e2e{'-ds' if downstream else ''}-{cfg.method}-{cfg.d_sae}")
    generator = torch.Generator().manual_seed(cfg.seed)
    d = Dictionary(dict_cfg)
    if init is None:
        d.initialize(store[site.name][first_mask.bool()].float(), generator)
    else:
        if (init.d_in, init.d_sae) != (d_in, cfg.d_sae):
            raise SaekitError(f"init dictionary is {init.d_in}x{init.d_sae}, the e2e SAE {d_in}x{cfg.d_sae}")
        d.load_state_dict({k: v.clone() for k, v in init.state_dict().items()}, strict=False)
    optimizer = torch.optim.Adam(d.parameters(), lr=cfg.lr)
    splice = _Splice(d)

    def all_batches():
        yield first_ids, first_mask
        yield from iterator

    bar = tqdm(total=total_steps, disable=not progress, desc="e2e", dynamic_ncols=True)
    for step, (input_ids, mask) in enumerate(all_batches()):
        if step >= total_steps:
            break
        mask = mask.float()
        clean: dict[str, Tensor] = {}
        with torch.no_grad(), hooks(model, downstream, clean):
            clean_logits = model(input_ids=input_ids).logits
        spliced: dict[str, Tensor] = {}
        splice.keep = mask.bool()
        with hooks(model, [site, *downstream], spliced, replace={site.name: splice}):
            spliced_logits = model(input_ids=input_ids).logits
        kl = kl_clean_to_spliced(clean_logits, spliced_logits, mask)
        l1 = splice.latents.abs().sum(-1).mean() / d_in  # latents exist at counted positions only
        loss = cfg.kl_coefficient * kl + dict_cfg.sparsity_coefficient * l1
        for point in downstream:
            error = (spliced[point.name].float() - clean[point.name].float()).pow(2).mean(-1) * mask
            loss = loss + cfg.downstream_coefficient / len(downstream) * error.sum() / mask.sum()
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, total_steps, cfg.lr_warmup, cfg.lr_decay)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if dict_cfg.unit_norm_decoder:
            d.remove_parallel_decoder_grad()
        torch.nn.utils.clip_grad_norm_(d.parameters(), cfg.grad_clip)
        optimizer.step()
        if dict_cfg.unit_norm_decoder:
            d.normalize_decoder()
        bar.update(1)
        bar.set_postfix({"kl": f"{float(kl.detach()):.4f}", "l0": f"{float((splice.latents.detach() > 0).sum(-1).float().mean()):.1f}"})
    bar.close()
    for param in d.parameters():
        param.requires_grad_(False)
    d.meta.update(e2e=True, downstream_hookpoints=list(cfg.downstream_hookpoints))
    return d.eval()
