"""Dictionaries with random weights in every tensor, shared by the format tests.

Zero biases (saekit's init) would hide exactly the bugs format code makes: a b_dec subtracted twice or
not at all, an encoder bias in the wrong space. Thresholds are positive (as trained ones are) and, for
BatchTopK/Matryoshka, one shared value.
"""

from __future__ import annotations

import torch

from saekit.config import TOPK_FAMILY, DictionaryConfig
from saekit.dictionary import Dictionary

D_IN, D_SAE, D_OUT, K = 16, 64, 12, 4
LM, HOOK = "EleutherAI/pythia-70m-deduped", "blocks.3.hook_resid_post"


def random_dictionary(method: str, seed: int = 0, unit_norm_decoder: bool = False,
                      dtype: torch.dtype = torch.float32, **overrides) -> Dictionary:
    kwargs = dict(method=method, d_in=D_IN, d_sae=D_SAE, hookpoint=HOOK, model_name=LM)
    if method in TOPK_FAMILY:
        kwargs["k"] = K
    if method == "matryoshka":
        kwargs["matryoshka_prefixes"] = [16, 32, D_SAE]
    kwargs.update(overrides)
    d = Dictionary(DictionaryConfig(**kwargs))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in d.weights().items():
            tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.3)
        if unit_norm_decoder:
            d.normalize_decoder()
        if method == "jumprelu":
            d.threshold.copy_(torch.rand(D_SAE, generator=g) * 0.2)
        elif method in ("batchtopk", "matryoshka"):
            d.threshold.fill_(0.15)
    d.meta["trained_by"] = "tests"
    for param in d.parameters():
        param.requires_grad_(False)
    return d.to(dtype).eval()


def inputs(n: int = 128, seed: int = 0) -> torch.Tensor:
    """Off-centre activations, so that b_dec conventions change the outputs."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_IN, generator=g) * 2.0 + 1.5
