"""Matryoshka BatchTopK SAE (Bussmann, Nabeshima, Karvonen, Nanda 2025; docs/methods.md).

One BatchTopK code over the full width; the reconstruction term is the mean over nested prefixes
m_1 < … < m_G = d_sae of ||y − (b_dec + Σ_{i<m_g} f_i d_i)||² (uniform group weights), so early latents
must reconstruct on their own. Default prefixes d_sae/16, /8, /4, /2, 1. Inference as BatchTopK.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saekit.errors import SaekitError
from saekit.methods.base import Encoding
from saekit.methods.batchtopk import BatchTopK
from saekit.methods.dead_latents import squared_error
from saekit.sparse import sparse_decode


class Matryoshka(BatchTopK):
    name = "matryoshka"
    config_fields = frozenset({"k", "matryoshka_prefixes"})

    def check_config(self, cfg: Any) -> None:
        super().check_config(cfg)
        prefixes = cfg.matryoshka_prefixes
        if prefixes is None:
            sizes = [max(cfg.d_sae // div, 1) for div in (16, 8, 4, 2)] + [cfg.d_sae]
            prefixes = sorted(set(sizes))
        prefixes = list(prefixes)
        if not all(isinstance(p, int) and not isinstance(p, bool) for p in prefixes) or \
                prefixes != sorted(set(prefixes)) or prefixes[-1] != cfg.d_sae or prefixes[0] <= 0:
            raise SaekitError("matryoshka_prefixes must be increasing positive sizes ending at "
                              f"d_sae={cfg.d_sae}, got {prefixes}")
        cfg.matryoshka_prefixes = prefixes

    def reconstruction_loss(self, d: Any, x: Tensor, target: Tensor, enc: Encoding,
                            per_token_error: Tensor) -> Tensor:
        partial = d.add_skip(d.b_dec.expand_as(target), x)
        losses = []
        start = 0
        for end in d.cfg.matryoshka_prefixes:
            if enc.codes is not None:
                group = enc.codes.subset((enc.codes.cols >= start) & (enc.codes.cols < end))
                partial = partial + sparse_decode(group, d.W_dec)
            else:
                assert enc.latents is not None
                partial = partial + enc.latents[:, start:end] @ d.W_dec[start:end]
            losses.append(squared_error(target, partial).mean())
            start = end
        return torch.stack(losses).mean()
