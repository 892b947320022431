"""The k largest entries of each row of x·W + b, screened by a bf16 product on CPUs that multiply bf16 fast.

Why: half of a TopK SAE's training step on a CPU is the encoder's fp32 product [B, d]×[d, M], whose only use
is to choose k latents per row (the backward needs the chosen entries alone). CPUs with bf16 matrix units
(Intel AMX) run the same product in bf16 about three times faster. Rounding moves each entry by a bounded
amount, so the bf16 product can pick candidates without changing the choice:
1. ṽ = bf16(x)·bf16(W) + bf16(b), with fp32 accumulation, and each row's k + m largest ṽ as candidates;
2. the candidates' entries in fp32 (one dot product each);
3. the k largest of those.
Every entry j outside the candidates has ṽ_j ≤ f, the row's smallest candidate ṽ, and its fp32 value is at
most ṽ_j + E (the rounding bound of `_rounding_bound`), so at most f + E(f). A row whose k-th fp32 candidate
value is above that has its k largest entries among the candidates for certain. The rows that fail (close
calls at the k-th place; a few percent on trained dictionaries at m = k) are recomputed by the fp32 product.
The selection is therefore the fp32 product's (up to fp32 rounding, as between any two fp32 products), and
the values are fp32. Where bf16 is not faster (no AMX), on GPUs (autocast is their bf16 story) and for
narrow dictionaries (the screen's own selection of k + m would cost more than the product saves), the
fp32 product is used directly.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from saekit.activations import largest_per_row
from saekit.errors import SaekitError

BF16_UNIT_ROUNDOFF = 2.0 ** -8  # round-to-nearest with an 8-bit significand
FP32_UNIT_ROUNDOFF = 2.0 ** -24
# Candidates per row beyond k. At m = k, 92-100% of the rows of each step are certified while a MiniLM
# dictionary trains (d_sae 6144, k 32; docs/benchmarks.md); the rest take the fp32 product.
EXTRA_CANDIDATES_PER_K = 1.0
# The screen pays when the product is large next to what it adds (the selection of k + m, their dot products),
# which do not shrink with d_in while the product does: ×1.16 per step at d_in 384, even at d_in 576 in a short
# live run (fewer rows certified early in training); not used below 256.
MIN_SCREEN_D_IN = 256
MIN_SCREEN_WIDTH_PER_CANDIDATE = 32
# The environment variable that overrides the choice: "auto" (the default: where `bf16_matrix_units()`),
# "1" (always: tests, CPUs whose flags are not read) or "0" (never: benchmarks comparing the two paths).
SCREEN_VARIABLE = "SAEKIT_BF16_SCREEN"
SCREEN_SETTINGS = {"auto": None, "1": True, "0": False}


@functools.lru_cache(maxsize=1)
def bf16_matrix_units() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX-BF16), read from /proc/cpuinfo's flags;
    False where that file does not exist (non-Linux), which keeps the fp32 product."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return "amx_bf16" in flags.split()


def screen_applies(x: Tensor, W: Tensor, k: int) -> bool:
    """Whether `screened_topk` should replace the fp32 product for these operands. A bad setting of
    SAEKIT_BF16_SCREEN is refused whatever the operands, not only where the screen would run."""
    setting = os.environ.get(SCREEN_VARIABLE, "auto")
    if setting not in SCREEN_SETTINGS:
        raise SaekitError(f"{SCREEN_VARIABLE}={setting!r} is not a setting: use auto, 1 (always) or 0 (never)")
    if x.device.type != "cpu" or x.dtype != torch.float32 or W.dtype != torch.float32:
        return False
    if torch.is_autocast_enabled("cpu"):
        return False
    candidates = k + _extra(k)
    if x.shape[1] < MIN_SCREEN_D_IN or W.shape[1] < MIN_SCREEN_WIDTH_PER_CANDIDATE * candidates:
        return False
    forced = SCREEN_SETTINGS[setting]
    return forced if forced is not None else bf16_matrix_units()


def _extra(k: int) -> int:
    return max(1, round(EXTRA_CANDIDATES_PER_K * k))


def screened_topk(x: Tensor, W: Tensor, W_T: Tensor, b: Tensor, k: int,
                  exact_topk: Callable[[Tensor], tuple[Tensor, Tensor]], chunk_rows: int) -> tuple[Tensor, Tensor]:
    """(values [B, k] fp32, indices [B, k]) of the k largest entries of each row of x·W + b (x [B, d], W [d, M],
    W_T its contiguous transpose).

    `exact_topk(rows)` is the fp32 path for a subset of rows (the ones the screen cannot certify); the bf16
    product runs `chunk_rows` rows at a time into one buffer, as the fp32 path does."""
    batch, width = x.shape[0], W.shape[1]
    n_candidates = min(width, k + _extra(k))
    x_low, W_low, b_low = x.to(torch.bfloat16), W.to(torch.bfloat16), b.to(torch.bfloat16)
    candidate_values = torch.empty(batch, n_candidates, dtype=torch.bfloat16)
    candidates = torch.empty(batch, n_candidates, dtype=torch.long)
    buffer = torch.empty(min(chunk_rows, batch), width, dtype=torch.bfloat16)
    for start in range(0, batch, chunk_rows):
        end = min(batch, start + chunk_rows)
        low = torch.addmm(b_low, x_low[start:end], W_low, out=buffer[:end - start])
        candidate_values[start:end], candidates[start:end] = largest_per_row(low, n_candidates)
    floor = candidate_values.float().amin(1)  # every non-candidate's ṽ is at most this

    # The candidates' fp32 entries: ⟨x_b, W[:, c]⟩ + b_c for each (b, c), by embedding_bag's
    # per-sample-weight kernel over the rows of Wᵀ (no [B·(k+m), d] gather).
    flat = candidates.reshape(-1)
    rows = torch.arange(batch).repeat_interleave(n_candidates)
    offsets = torch.arange(0, batch * n_candidates, n_candidates)
    exact = torch.ops.aten._embedding_bag_per_sample_weights_backward(
        x.contiguous(), W_T, flat, offsets, rows, 0) + b.index_select(0, flat)
    values, local = torch.topk(exact.view(batch, n_candidates), k, dim=1, sorted=False)
    indices = candidates.gather(1, local)

    bound = _rounding_bound(x, x_low, W_T, b, b_low, floor)
    uncertain = (values.amin(1) <= floor + bound).nonzero().squeeze(1)
    if uncertain.numel():
        values[uncertain], indices[uncertain] = exact_topk(x.index_select(0, uncertain))
    return values, indices


def _rounding_bound(x: Tensor, x_low: Tensor, W_T: Tensor, b: Tensor, b_low: Tensor, floor: Tensor) -> Tensor:
    """Per row, how far any fp32 entry x·W_j + b_j with ṽ_j ≤ floor can lie above `floor`, plus the fp32
    rounding of the candidates' own entries: a margin whose excess is the certificate.

    x̃·W̃_j − x·W_j = δx·W̃_j + x·δW_j with δx = x̃ − x and δW = W̃ − W (both exact in fp32), so by
    Cauchy–Schwarz it is at most ‖δx‖·‖W̃_j‖ + ‖x‖·‖δW_j‖ (the norms of the actual rounding errors, ~0.4 of
    their worst case); fp32 accumulation adds at most d·u₃₂·‖x̃‖·‖W̃_j‖ (and as much again for the
    candidates' own dot products); the bias adds max|b̃ − b|; rounding the result to bf16 moves it by at most
    u/(1 − u)·|ṽ|, which for ṽ ≤ floor is largest at ṽ = floor (counted twice, with max|b̃|, in case the
    bias is added after a first rounding). Each column's norm is bounded by the largest."""
    u, d = BF16_UNIT_ROUNDOFF, x.shape[1]
    W_norm, dW_norm = _column_norms(W_T)
    x_rounded, b_rounded = x_low.float(), b_low.float()
    product = (x_rounded - x).norm(dim=1) * W_norm + x.norm(dim=1) * dW_norm
    accumulation = 2 * d * FP32_UNIT_ROUNDOFF / (1 - d * FP32_UNIT_ROUNDOFF) * x_rounded.norm(dim=1) * W_norm
    bias = (b_rounded - b).abs().max()
    output = 2 * u / (1 - u) * (floor.abs() + b_rounded.abs().max())
    return product + accumulation + bias + output


def _column_norms(W_T: Tensor, block_elements: int = 1 << 22) -> tuple[Tensor, Tensor]:
    """(max_j ‖W̃_j‖, max_j ‖W̃_j − W_j‖) over the rows of W_T, a block of rows at a time (a whole rounded copy
    of a wide encoder would be as large as the encoder)."""
    rows = max(1, block_elements // max(1, W_T.shape[1]))
    norms, errors = [], []
    for start in range(0, W_T.shape[0], rows):
        block = W_T[start:start + rows]
        low = block.to(torch.bfloat16).float()
        norms.append(low.norm(dim=1).max())
        errors.append((low - block).norm(dim=1).max())
    return torch.stack(norms).max(), torch.stack(errors).max()
