"""The sparse TopK kernels compute the same loss and gradients as the dense path."""

import dataclasses

import pytest
import torch

from saekit import DictionaryConfig
from saekit.dictionary import Dictionary
from saekit.losses import training_loss
from saekit.sparse import select_batch_topk, sparse_decode, sparse_topk_encode


def pair(method: str, seed: int = 0) -> tuple[Dictionary, Dictionary]:
    cfg = DictionaryConfig(method=method, d_in=24, d_sae=96, k=5, matryoshka_prefixes=None)
    g = torch.Generator().manual_seed(seed)
    dense = Dictionary(dataclasses.replace(cfg, sparse_kernels=False))
    sparse = Dictionary(cfg)
    with torch.no_grad():
        for p in dense.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    sparse.load_weights(dense.weights())
    return dense, sparse


@pytest.mark.parametrize("method", ["topk", "batchtopk", "matryoshka"])
@pytest.mark.parametrize("with_dead", [False, True])
def test_sparse_and_dense_paths_agree(method, with_dead, generator):
    dense, sparse = pair(method)
    x = torch.randn(64, 24, generator=generator)
    dead = None
    if with_dead:
        dead = torch.zeros(96, dtype=torch.bool)
        dead[::3] = True
    results = []
    for d in (dense, sparse):
        result = training_loss(d, x, 0.0, dead)
        result.total.backward()
        results.append(result)
    assert torch.allclose(results[0].total, results[1].total, rtol=1e-5, atol=1e-6)
    assert torch.allclose(results[0].reconstruction, results[1].reconstruction, atol=1e-5)
    assert results[1].encoding.codes is not None and results[0].encoding.codes is None
    for name, p_dense in dense.named_parameters():
        p_sparse = dict(sparse.named_parameters())[name]
        assert torch.allclose(p_dense.grad, p_sparse.grad, rtol=1e-4, atol=1e-5), name
    counts = [r.encoding.firing_counts(96) for r in results]
    assert torch.equal(counts[0], counts[1])
    assert results[0].encoding.mean_l0() == pytest.approx(results[1].encoding.mean_l0())


def test_batch_topk_selection_groups_rows_and_keeps_the_largest(generator):
    pre = torch.randn(10, 30, generator=generator)
    rows, cols, offsets = select_batch_topk(pre, 4)
    assert rows.numel() == 40 and torch.all(rows[1:] >= rows[:-1])
    assert torch.equal(offsets, torch.cumsum(torch.bincount(rows, minlength=10), 0)
                       - torch.bincount(rows, minlength=10))
    cutoff = pre[rows, cols].min()
    mask = torch.ones_like(pre, dtype=torch.bool)
    mask[rows, cols] = False
    assert (pre[mask] <= cutoff).all()


def test_sparse_decode_handles_empty_rows(generator):
    W_enc = torch.randn(8, 16, generator=generator)
    x = torch.randn(6, 8, generator=generator)
    x[2] = -100.0  # this row's pre-activations lose every batch-level contest
    codes, _ = sparse_topk_encode(x, W_enc, torch.zeros(16), None, 2, batch_level=True)
    W_dec = torch.randn(16, 8, generator=generator)
    out = sparse_decode(codes, W_dec)
    assert torch.allclose(out, codes.to_dense(16) @ W_dec, atol=1e-5)
