"""Decoding a CLT's sparse latents into every later layer, block by (source, target) block.

A CLT has L(L+1)/2 decoder blocks W_dec^{s→t} [d_sae, d_out]. Each source's active latents (`SparseCodes`)
write into each of its targets through one `embedding_bag` over that block. A block is small enough to
stay in cache (d_sae·d_out floats: 2.6 MB at 1152 × 576) while every token's active rows are gathered from
it, where gathering from a source's concatenated decoder [d_sae, R·d_out] would stream up to R·d_out floats
per active latent and token from memory. The backward mirrors it: per block, the values' gradient by
embedding_bag's own per-sample-weight kernel and the block's gradient as a latent-ordered embedding_bag
over the target's output gradient (as `saekit.sparse` does for one dictionary). Output and gradient live
as [L, B, d_out] so every target's slice is contiguous, and nothing is copied per block (an autograd
in-place add into slices of one output would clone the whole gradient at each of the L² blocks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from saekit.sparse import SparseCodes, _latent_order


class _SparseBlockDecode(torch.autograd.Function):
    """out[t] = Σ_{s, r: s + r = t} Σ_{selected (b, i) of s} v·W[s][r, i] for sparse codes of each source."""

    @staticmethod
    def forward(ctx, codes: list[SparseCodes], sources: list[int], n_layers: int, *tensors: Tensor) -> Tensor:
        n = len(codes)
        values, weights = tensors[:n], tensors[n:]
        batch, d_out = codes[0].batch_size, weights[0].shape[-1]
        out = torch.zeros(n_layers, batch, d_out, dtype=values[0].dtype, device=values[0].device)
        for source, c, v, w in zip(sources, codes, values, weights):
            for r in range(w.shape[0]):
                block = w[r] if w.dtype == v.dtype else w[r].to(v.dtype)
                out[source + r] += F.embedding_bag(c.cols, block, c.offsets, mode="sum", per_sample_weights=v)
        ctx.save_for_backward(*values, *weights)
        ctx.codes = [(c.rows, c.cols, c.offsets, c.orders) for c in codes]
        ctx.sources = sources
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous()
        saved = ctx.saved_tensors
        n = len(ctx.codes)
        values, weights = saved[:n], saved[n:]
        grad_values: list[Tensor | None] = []
        grad_weights: list[Tensor | None] = []
        for source, (rows, cols, offsets, orders), v, w in zip(ctx.sources, ctx.codes, values, weights):
            gv = torch.zeros_like(v) if ctx.needs_input_grad[3 + len(grad_values)] else None
            gw = torch.empty(w.shape, dtype=w.dtype, device=w.device) \
                if ctx.needs_input_grad[3 + n + len(grad_weights)] else None
            order = _latent_order(orders, rows, cols, w.shape[1]) if gw is not None else None
            for r in range(w.shape[0]):
                g = grad[source + r]
                if gv is not None:
                    block = w[r] if w.dtype == v.dtype else w[r].to(v.dtype)
                    gv += torch.ops.aten._embedding_bag_per_sample_weights_backward(g, block, cols, offsets, rows, 0)
                if gw is not None:
                    assert order is not None
                    gw[r] = order.product(v, g).to(w.dtype)
            grad_values.append(gv)
            grad_weights.append(gw)
        return (None, None, None, *grad_values, *grad_weights)


def sparse_block_decode(codes: dict[int, SparseCodes], weights: list[Tensor], n_layers: int) -> Tensor:
    """[L, B, d_out]: what the sparse latents of the sources in `codes` ({source: codes}) write into every
    target through `weights[source]` [reach, d_sae, d_out] (no bias). Differentiable in the codes' values
    and the weights; a bf16 weight is read one block at a time in the values' dtype."""
    sources = sorted(codes)
    ordered = [codes[s] for s in sources]
    return _SparseBlockDecode.apply(ordered, sources, n_layers, *[c.values for c in ordered],
                                    *[weights[s] for s in sources])
