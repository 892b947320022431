"""Sparse kernels for the TopK family: only the encoder's forward product stays dense.

A TopK step with dense tensors costs five [B, d]×[d, M] products. With k active latents per token the
gradient of the loss reaches the pre-activations only at the B·k selected entries, so everything but the
encoder's forward product can be done on those entries (≈ 1/M of the work each):
- decode: `embedding_bag` over the selected decoder rows, weighted by the latent values;
- the values' gradient: ⟨W_dec[c], ∂L/∂x̂_b⟩ for each selected (b, c), by embedding_bag's own
  per-sample-weight backward kernel (no [B·k, d] gather is materialised);
- the weight gradients ∂L/∂W_dec = Sᵀ·∂L/∂x̂ and ∂L/∂W_encᵀ = Sᵀ·(x − b_dec), with S the sparse
  [B, M] matrix of selected entries: the entries are sorted by latent once per step (`LatentOrder`) and
  each product is an `embedding_bag` with one bag per latent, i.e. a CSR sparse-dense product on the
  library's fastest gather-sum kernel; no dense [B, M] gradient exists at any point;
- per-row TopK fuses the encoder product with the selection: rows are processed in chunks whose
  pre-activations stay in cache while `topk` reads them, so training never holds a [B, M] tensor
  (peak memory grows with B·M only through one chunk).
The dense and sparse paths compute the same function and gradients (tests compare them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from saekit.activations import largest_per_row
from saekit.screen import screen_applies, screened_topk

# Pre-activation elements per chunk of the fused encoder + top-k (~32 MB): large enough that each
# product and selection still runs at full speed on every thread (small chunks pay a thread
# fork/join each, which on a loaded machine costs more than the cache reuse gains), small enough that
# memory does not grow with batch × d_sae. Measured on 2 threads at d_sae 6144: chunks of 1024-1365
# rows match or beat one [4096, M] product + topk; 128-256 rows are slower.
CHUNK_ELEMENTS = 1 << 23
MIN_CHUNK_ROWS = 256
# On a GPU a [B, M] product is small next to its memory, and each extra chunk is two more launches
# on a launch-bound step (H100, d_sae 6144: four chunks cost four topk calls of ~0.1 ms each).
CUDA_CHUNK_ELEMENTS = 1 << 28


# Column slices per CPU transposed copy (see `transposed`).
TRANSPOSE_PARTS = 4


def transposed(t: Tensor) -> Tensor:
    """t.T [n, m] as a contiguous tensor, for a 2-D t [m, n].

    On a CPU, torch copies a whole transposed matrix by a blocked loop on one thread (~10 ms for [4608, 576]);
    copied in column slices it goes through the general strided copy, which runs on every thread and is
    faster even on one (~3 ms on 2 threads, ~7.5 ms on 1; benchmarked at the live shape)."""
    if t.device.type != "cpu":
        return t.T.contiguous()
    rows, cols = t.shape
    out = torch.empty(cols, rows, dtype=t.dtype)
    part = max(1, -(-rows // TRANSPOSE_PARTS))
    for start in range(0, rows, part):
        out[:, start:start + part].copy_(t[start:start + part].T)
    return out


def index_counts(index: Tensor, size: int) -> Tensor:
    """bincount(index, minlength=size) for indices known to be < size, without a host sync (CUDA's
    bincount reads the largest index back to size its output)."""
    counts = torch.zeros(size, dtype=torch.long, device=index.device)
    return counts.index_add_(0, index, torch.ones_like(index))


class LatentOrder:
    """The selected entries sorted by latent (a CSR view of Sᵀ), computed once and shared by the
    backward of the encoder and of the decoder."""

    def __init__(self, rows: Tensor, cols: Tensor, width: int):
        # int32 keys: torch's CPU argsort of 131k latent indices takes half the time of int64 ones (2.1 vs 3.9 ms)
        self.order = torch.argsort(cols.int())
        self.rows = rows.index_select(0, self.order)
        counts = index_counts(cols, width)
        self.offsets = torch.cumsum(counts, 0) - counts
        self.width = width

    def product(self, weights: Tensor, dense: Tensor) -> Tensor:
        """Sᵀ·dense [M, d] where S [B, M] holds `weights` (in entry order) at the selected entries."""
        return F.embedding_bag(self.rows, dense, self.offsets, mode="sum",
                               per_sample_weights=weights.index_select(0, self.order))


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
    # LatentOrder per width, shared with the backward functions (which hold this dict, never the codes:
    # the codes hold `values`, whose graph holds the backward's context, and a cycle would keep a step's
    # tensors alive until the garbage collector ran).
    orders: dict = field(default_factory=dict, repr=False)

    def by_latent(self, width: int) -> LatentOrder:
        return _latent_order(self.orders, self.rows, self.cols, width)

    def to_dense(self, d_sae: int) -> Tensor:
        dense = torch.zeros(self.batch_size, d_sae, dtype=self.values.dtype, device=self.values.device)
        return dense.index_put((self.rows, self.cols), self.values)

    def subset(self, mask: Tensor) -> SparseCodes:
        rows = self.rows[mask]
        counts = index_counts(rows, self.batch_size)
        offsets = torch.cumsum(counts, 0) - counts
        return SparseCodes(rows, self.cols[mask], self.values[mask], offsets, self.batch_size)


def _latent_order(orders: dict, rows: Tensor, cols: Tensor, width: int) -> LatentOrder:
    if width not in orders:
        orders[width] = LatentOrder(rows, cols, width)
    return orders[width]


def _offsets_from_rows(rows: Tensor, batch_size: int) -> Tensor:
    counts = index_counts(rows, batch_size)
    return torch.cumsum(counts, 0) - counts


def _row_entries(batch: int, k: int, device: torch.device) -> tuple[Tensor, Tensor]:
    rows = torch.arange(batch, device=device).repeat_interleave(k)
    offsets = torch.arange(0, batch * k, k, device=device)
    return rows, offsets


@torch.no_grad()
def select_topk(pre: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """(rows, cols, offsets) of the k largest pre-activations of each row."""
    cols = largest_per_row(pre, k)[1].reshape(-1)
    rows, offsets = _row_entries(pre.shape[0], k, pre.device)
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


@torch.no_grad()
def fused_encode_topk(x_centered: Tensor, W_enc: Tensor, b_enc: Tensor, k: int,
                      chunk_rows: int | None = None, screen: bool = True) -> tuple[Tensor, Tensor]:
    """(values [B, k], cols [B, k]) of the k largest entries of each row of x_centered·W_enc + b_enc,
    computed chunk by chunk into one reused buffer, so no [B, M] tensor is ever allocated.

    Under autocast the product runs in autocast's dtype, as the dense path's does (an `out=` product
    is outside autocast's reach: left to itself it ran in fp32, on an H200 ~15x slower than in bf16);
    the values come back in x_centered's dtype. On CPUs with bf16 matrix units an fp32 selection is
    screened by a bf16 product (`saekit.screen`: the same selection, certified, in about half the time)."""
    batch, width = x_centered.shape[0], W_enc.shape[1]
    device = x_centered.device
    if chunk_rows is None:
        elements = CUDA_CHUNK_ELEMENTS if x_centered.is_cuda else CHUNK_ELEMENTS
        chunk_rows = max(MIN_CHUNK_ROWS, elements // width)
    n_chunks = -(-batch // max(1, chunk_rows))
    chunk_rows = -(-batch // n_chunks)  # equal chunks: no small last product
    if screen and batch and screen_applies(x_centered, W_enc, k):
        def exact(rows: Tensor) -> tuple[Tensor, Tensor]:
            return fused_encode_topk(rows, W_enc, b_enc, k, chunk_rows, screen=False)
        return screened_topk(x_centered, W_enc, transposed(W_enc), b_enc, k, exact, chunk_rows)
    dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else x_centered.dtype
    product_input, W, b = (t.to(dtype) for t in (x_centered, W_enc, b_enc))
    values = torch.empty(batch, k, dtype=x_centered.dtype, device=device)
    cols = torch.empty(batch, k, dtype=torch.long, device=device)
    buffer = torch.empty(chunk_rows, width, dtype=dtype, device=device)
    for start in range(0, batch, chunk_rows):
        end = min(batch, start + chunk_rows)
        pre = torch.addmm(b, product_input[start:end], W, out=buffer[:end - start])
        values[start:end], cols[start:end] = largest_per_row(pre, k)
    return values, cols


class _SelectedPreactivations(torch.autograd.Function):
    """pre[rows, cols] of pre = (x − b_dec)·W_enc + b_enc, with a sparse backward."""

    @staticmethod
    def forward(ctx, selected: Tensor, x_centered: Tensor, codes: SparseCodes,
                W_enc: Tensor, b_enc: Tensor, b_dec: Tensor | None) -> Tensor:
        ctx.save_for_backward(x_centered, W_enc, codes.rows, codes.cols)
        ctx.orders = codes.orders
        ctx.has_b_dec = b_dec is not None
        return selected

    @staticmethod
    def backward(ctx, grad: Tensor):
        x_centered, W_enc, rows, cols = ctx.saved_tensors
        width = W_enc.shape[1]
        grad_W_enc = grad_b_enc = grad_b_dec = None
        if ctx.needs_input_grad[3]:
            # [M, d] in latent order; the transposed copy gives W_enc's own layout, which the optimiser's
            # fused kernels need to run fast (stored latent-major instead, W_enc saves this copy, ~3 ms at
            # d_sae 4608, but Adam's step on the strided tensors costs more than twice that).
            order = _latent_order(ctx.orders, rows, cols, width)
            grad_W_enc = transposed(order.product(grad, x_centered))
        if ctx.needs_input_grad[4] or (ctx.has_b_dec and ctx.needs_input_grad[5]):
            per_latent = torch.zeros(width, dtype=grad.dtype, device=grad.device).index_add_(
                0, cols, grad)
            grad_b_enc = per_latent if ctx.needs_input_grad[4] else None
            if ctx.has_b_dec and ctx.needs_input_grad[5]:
                grad_b_dec = -(W_enc @ per_latent)
        return None, None, None, grad_W_enc, grad_b_enc, grad_b_dec


def sparse_topk_encode(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor | None, k: int,
                       batch_level: bool, score_scale: Tensor | None = None
                       ) -> tuple[SparseCodes, Tensor | None]:
    """Select and differentiate only the active latents. Returns the codes and the (detached)
    pre-activations where the selection needed them whole (BatchTopK, decoder-norm-scaled scores);
    plain per-row TopK fuses product and selection and returns None instead of a [B, M] tensor.
    `score_scale` ranks by pre·scale."""
    batch = x.shape[0]
    with torch.no_grad():
        x_centered = x - b_dec if b_dec is not None else x
        if not batch_level and score_scale is None:
            selected, cols = fused_encode_topk(x_centered, W_enc, b_enc, k)
            selected, cols = selected.reshape(-1), cols.reshape(-1)
            rows, offsets = _row_entries(batch, k, x.device)
            pre = None
        else:
            pre = x_centered @ W_enc + b_enc
            scores = pre if score_scale is None else pre.relu() * score_scale
            rows, cols, offsets = (select_batch_topk if batch_level else select_topk)(scores, k)
            selected = pre[rows, cols]
    codes = SparseCodes(rows, cols, selected, offsets, batch)
    values = _SelectedPreactivations.apply(selected, x_centered, codes, W_enc, b_enc, b_dec)
    codes.values = values.relu()
    return codes, pre


def sparse_topk_of_columns(x: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor | None, k: int,
                           columns: Tensor) -> SparseCodes:
    """The k largest pre-activations of each row among the latents `columns` (indices), differentiable
    like `sparse_topk_encode` (AuxK over the dead latents: its forward product costs
    len(columns)/d_sae of the encoder's, and its backward touches only the selected entries)."""
    batch = x.shape[0]
    with torch.no_grad():
        x_centered = x - b_dec if b_dec is not None else x
        selected, local = fused_encode_topk(x_centered, W_enc.index_select(1, columns),
                                            b_enc.index_select(0, columns), k)
        selected, cols = selected.reshape(-1), columns.index_select(0, local.reshape(-1))
        rows, offsets = _row_entries(batch, k, x.device)
    codes = SparseCodes(rows, cols, selected, offsets, batch)
    codes.values = _SelectedPreactivations.apply(selected, x_centered, codes, W_enc, b_enc, b_dec).relu()
    return codes


class _SparseDecode(torch.autograd.Function):
    """Forward by `embedding_bag`; backward by embedding_bag's per-sample-weight kernel for the values
    and a latent-ordered `embedding_bag` for W_dec (embedding_bag's own weight backward sorts all
    indices into a dense [M, d] gradient by a slower path)."""

    @staticmethod
    def forward(ctx, values: Tensor, codes: SparseCodes, W_dec: Tensor) -> Tensor:
        ctx.save_for_backward(values, W_dec, codes.rows, codes.cols, codes.offsets)
        ctx.orders = codes.orders
        return F.embedding_bag(codes.cols, W_dec, codes.offsets, mode="sum", per_sample_weights=values)

    @staticmethod
    def backward(ctx, grad: Tensor):
        values, W_dec, rows, cols, offsets = ctx.saved_tensors
        grad = grad.contiguous()
        grad_values = grad_W_dec = None
        if ctx.needs_input_grad[0]:
            grad_values = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad, W_dec, cols, offsets, rows, 0)
        if ctx.needs_input_grad[2]:
            grad_W_dec = _latent_order(ctx.orders, rows, cols, W_dec.shape[0]).product(values, grad)
        return grad_values, None, grad_W_dec


def sparse_decode(codes: SparseCodes, W_dec: Tensor) -> Tensor:
    """Σ_i f_i·W_dec[i] over the active latents of each row (no decoder bias)."""
    return _SparseDecode.apply(codes.values, codes, W_dec)
