"""Sparse kernels for the TopK family: only the encoder's forward product stays dense.

A TopK step with dense tensors costs five [B, d]×[d, M] products. With k active latents per token,
everything but the encoder pre-activations can be done on the B·k selected entries:
- decode: `embedding_bag` over the selected decoder rows, weighted by the latent values; its backward
  gives the W_dec gradient by index-add and never materialises a dense [B, M] gradient;
- encoder backward: the selected pre-activations are an autograd node whose backward forms the W_enc
  gradient as a sparse [M, B]×[B, d] product, and the biases' gradients from per-latent sums.
The dense and sparse paths compute the same function and gradients (tests compare them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class SparseCodes:
    """Non-zero latents, sorted by row: `values[i]` sits at (rows[i], cols[i]).

    `offsets[b]` is where row b starts (the `embedding_bag` convention); `batch_size` rows in all.
    """

    rows: Tensor
    cols: Tensor
    values: Tensor
    offsets: Tensor
    batch_size: int

    def to_dense(self, d_sae: int) -> Tensor:
        dense = torch.zeros(self.batch_size, d_sae, dtype=self.values.dtype, device=self.values.device)
        return dense.index_put((self.rows, self.cols), self.values)

    def subset(self, mask: Tensor) -> "SparseCodes":
        rows = self.rows[mask]
        counts = torch.bincount(rows, minlength=self.batch_size)
        offsets = torch.cumsum(counts, 0) - counts
        return SparseCodes(rows, self.cols[mask], self.values[mask], offsets, self.batch_size)


def _offsets_from_rows(rows: Tensor, batch_size: int) -> Tensor:
    counts = torch.bincount(rows, minlength=batch_size)
    return torch.cumsum(counts, 0) - counts


@torch.no_grad()
def select_topk(pre: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, cols, offsets) of the k largest pre-activations of each row."""
    batch = pre.shape[0]
    cols = torch.topk(pre, k, dim=-1, sorted=False).indices.reshape(-1)
    rows = torch.arange(batch, device=pre.device).repeat_interleave(k)
    offsets = torch.arange(0, batch * k, k, device=pre.device)
    return rows, cols, offsets


@torch.no_grad()
def select_batch_topk(pre: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, cols, offsets) of the k·B largest positive pre-activations of the whole batch."""
    batch, width = pre.shape
    keep = min(k * batch, pre.numel())
    flat = torch.topk(pre.reshape(-1), keep, sorted=False).indices
    flat = torch.sort(flat).values  # row-major order groups entries by row
    rows, cols = flat // width, flat % width
    return rows, cols, _offsets_from_rows(rows, batch)


class _SelectedPreactivations(torch.autograd.Function):
    """pre[rows, cols] of pre = (x − b_dec)·W_enc + b_enc, with a sparse backward."""

    @staticmethod
    def forward(ctx, selected: Tensor, x_centered: Tensor, rows: Tensor, cols: Tensor,  # type: ignore[override]
                W_enc: Tensor, b_enc: Tensor, b_dec: Tensor | None) -> Tensor:
        ctx.save_for_backward(x_centered, rows, cols, W_enc)
        ctx.has_b_dec = b_dec is not None
        return selected

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x_centered, rows, cols, W_enc = ctx.saved_tensors
        width = W_enc.shape[1]
        per_latent = torch.zeros(width, dtype=grad.dtype, device=grad.device).index_add_(0, cols, grad)
        grad_W_enc = None
        if ctx.needs_input_grad[4]:
            sparse = torch.sparse_coo_tensor(torch.stack([cols, rows]), grad,
                                             (width, x_centered.shape[0]), check_invariants=False)
            grad_W_enc = torch.sparse.mm(sparse, x_centered).T
        grad_b_enc = per_latent if ctx.needs_input_grad[5] else None
        grad_b_dec = -(W_enc @ per_latent) if ctx.has_b_dec and ctx.needs_input_grad[6] else None
        return None, None, None, None, grad_W_enc, grad_b_enc, grad_b_dec


def sparse_topk_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor | None, k: int,
                       batch_level: bool, score_scale: Tensor | None = None
                       ) -> tuple[SparseCodes, Tensor]:
    """Select and differentiate only the active latents. Returns the codes and the (detached)
    pre-activations, which AuxK and threshold estimates read. `score_scale` ranks by pre·scale."""
    with torch.no_grad():
        x_centered = x - b_dec if b_dec is not None else x
        pre = x_centered @ W_enc + b_enc
        scores = pre if score_scale is None else pre.relu() * score_scale
        rows, cols, offsets = (select_batch_topk if batch_level else select_topk)(scores, k)
        selected = pre[rows, cols]
    values = _SelectedPreactivations.apply(selected, x_centered, rows, cols, W_enc, b_enc, b_dec)
    return SparseCodes(rows, cols, values.relu(), offsets, x.shape[0]), pre


class _SparseDecode(torch.autograd.Function):
    """Forward by `embedding_bag`; backward by a sparse [M, B]×[B, d] product for W_dec and a row-wise
    dot product for the values. (embedding_bag's own dense backward sorts all indices every step,
    which cost more than the rest of the step on CPU.)"""

    @staticmethod
    def forward(ctx, values: Tensor, rows: Tensor, cols: Tensor, offsets: Tensor,  # type: ignore[override]
                W_dec: Tensor) -> Tensor:
        ctx.save_for_backward(values, rows, cols, W_dec)
        return F.embedding_bag(cols, W_dec, offsets, mode="sum", per_sample_weights=values)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        values, rows, cols, W_dec = ctx.saved_tensors
        grad_values = grad_W_dec = None
        if ctx.needs_input_grad[0]:
            batch = grad.shape[0]
            if values.numel() % batch == 0 and bool((rows.view(batch, -1) == rows.view(batch, -1)[:, :1]).all()):
                # k entries per row (TopK): one gather and a batched matrix-vector product.
                rows_decoder = W_dec.index_select(0, cols).view(batch, -1, W_dec.shape[1])
                grad_values = torch.bmm(rows_decoder, grad.unsqueeze(-1)).reshape(-1)
            else:
                grad_values = (grad.index_select(0, rows) * W_dec.index_select(0, cols)).sum(-1)
        if ctx.needs_input_grad[4]:
            sparse = torch.sparse_coo_tensor(torch.stack([cols, rows]), values,
                                             (W_dec.shape[0], grad.shape[0]), check_invariants=False)
            grad_W_dec = torch.sparse.mm(sparse, grad)
        return grad_values, None, None, None, grad_W_dec


def sparse_decode(codes: SparseCodes, W_dec: Tensor) -> Tensor:
    """Σ_i f_i·W_dec[i] over the active latents of each row (no decoder bias)."""
    return _SparseDecode.apply(codes.values, codes.rows, codes.cols, codes.offsets, W_dec)
