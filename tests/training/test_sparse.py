"""The sparse TopK kernels compute the same loss and gradients as the dense path."""

import pytest
import torch

from saekit import DictionaryConfig, TrainingConfig
from saekit.dictionary import Dictionary
from saekit.methods import dead_latents as losses
from saekit.sparse import SparseCodes, fused_encode_topk, select_batch_topk, sparse_decode, sparse_topk_encode
from saekit.training.objective import training_loss

DENSE, SPARSE = TrainingConfig(sparse_kernels=False, aux_k=12), TrainingConfig(sparse_kernels=True, aux_k=12)


def pair(method: str, seed: int = 0) -> tuple[Dictionary, Dictionary]:
    cfg = DictionaryConfig(method=method, d_in=24, d_sae=96, k=5)
    g = torch.Generator().manual_seed(seed)
    dense = Dictionary(cfg, training=DENSE.resolved(cfg))
    sparse = Dictionary(cfg, training=SPARSE.resolved(cfg))
    with torch.no_grad():
        for p in dense.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    sparse.load_weights(dense.weights())
    return dense, sparse


@pytest.mark.parametrize("method", ["topk", "batchtopk", "matryoshka"])
@pytest.mark.parametrize("with_dead", [False, "aux sparse kernels", "aux dense over dead latents"])
def test_sparse_and_dense_paths_agree(method, with_dead, generator, device, monkeypatch):
    # 32 dead latents, k_aux 12: the ratio picks which AuxK form the sparse-kernel dictionary uses.
    monkeypatch.setattr(losses, "AUX_DENSE_RATIO", 1 if with_dead == "aux sparse kernels" else 4)
    kernel_calls = []
    kernel = losses.sparse_topk_of_columns
    monkeypatch.setattr(losses, "sparse_topk_of_columns",
                        lambda *a, **k: kernel_calls.append(1) or kernel(*a, **k))
    dense, sparse = (d.to(device) for d in pair(method))
    x = torch.randn(64, 24, generator=generator).to(device)
    dead = None
    if with_dead:
        dead = torch.zeros(96, dtype=torch.bool, device=device)
        dead[::3] = True
    results = []
    for d in (dense, sparse):
        result = training_loss(d, x, 0.0, dead, d.training_config)
        result.total.backward()
        results.append(result)
    assert torch.allclose(results[0].total, results[1].total, rtol=1e-5, atol=1e-6)
    assert torch.allclose(results[0].reconstruction, results[1].reconstruction, atol=1e-5)
    assert results[1].encoding.codes is not None and results[0].encoding.codes is None
    for name, p_dense in dense.named_parameters():
        p_sparse = dict(sparse.named_parameters())[name]
        assert torch.allclose(p_dense.grad, p_sparse.grad, rtol=1e-4, atol=1e-5), name
    assert len(kernel_calls) == (with_dead == "aux sparse kernels")
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


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 1000])
def test_fused_encode_topk_equals_one_product_and_topk(chunk_rows, generator):
    x = torch.randn(64, 24, generator=generator)
    W_enc, b_enc = torch.randn(24, 96, generator=generator), torch.randn(96, generator=generator)
    values, cols = fused_encode_topk(x, W_enc, b_enc, 5, chunk_rows)
    reference = torch.topk(torch.addmm(b_enc, x, W_enc), 5, dim=-1)
    assert torch.equal(cols.sort(-1).values, reference.indices.sort(-1).values)
    assert torch.allclose(values.sort(-1).values, reference.values.sort(-1).values, atol=1e-5)


def test_fused_encode_topk_runs_its_product_in_the_autocast_dtype(generator):
    """Under autocast the fused product is the dense path's: in bf16 (an `out=` product escapes autocast,
    and once ran in fp32, ~15x slower on an H200); the values come back in fp32."""
    x = torch.randn(64, 24, generator=generator)
    W_enc, b_enc = torch.randn(24, 96, generator=generator), torch.randn(96, generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values, cols = fused_encode_topk(x, W_enc, b_enc, 5)
        dense = torch.addmm(b_enc, x, W_enc)
    assert dense.dtype == torch.bfloat16 and values.dtype == torch.float32
    torch.testing.assert_close(values, dense.gather(1, cols).float(), rtol=0, atol=0)
    exact = torch.addmm(b_enc, x, W_enc).gather(1, cols)
    assert not torch.equal(values, exact)  # bf16 rounding shows: the product was not fp32


def test_per_row_topk_never_returns_dense_preactivations(generator):
    _, sparse = pair("topk")
    enc = sparse.encode_with_details(torch.randn(8, 24, generator=generator), sparse=True)
    assert enc.pre is None and enc.codes is not None and enc.codes.values.shape == (8 * 5,)


def test_crosscoder_scaled_selection_agrees_with_dense(generator):
    cfg = DictionaryConfig(method="topk", d_in=24, d_sae=96, k=5, n_sources=2)
    dense = Dictionary(cfg, training=DENSE.resolved(cfg))
    sparse = Dictionary(cfg, training=SPARSE.resolved(cfg))
    with torch.no_grad():
        for p in dense.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.4)
    sparse.load_weights(dense.weights())
    x = torch.randn(32, 24, generator=generator)
    for d in (dense, sparse):
        training_loss(d, x, 0.0, None, d.training_config).total.backward()
    for name, p in dense.named_parameters():
        assert torch.allclose(p.grad, dict(sparse.named_parameters())[name].grad, rtol=1e-4, atol=1e-5), name


def test_sparse_kernels_pass_gradcheck_in_double_precision(generator):
    """The hand-written backward functions against finite differences, with a fixed selection and
    rows of unequal length (BatchTopK), including empty ones."""
    kw = dict(dtype=torch.float64)
    x = torch.randn(6, 8, generator=generator, **kw)
    x[2] = -50.0
    W_enc = torch.randn(8, 16, generator=generator, **kw).requires_grad_()
    b_enc = torch.randn(16, generator=generator, **kw).requires_grad_()
    b_dec = torch.randn(8, generator=generator, **kw).requires_grad_()
    W_dec = torch.randn(16, 8, generator=generator, **kw).requires_grad_()
    with torch.no_grad():
        pre = (x - b_dec) @ W_enc + b_enc
        rows, cols, offsets = select_batch_topk(pre, 2)
    assert bool((torch.bincount(rows, minlength=6) == 0).any())

    def loss(W_enc, b_enc, b_dec, W_dec):
        selected = ((x - b_dec) @ W_enc + b_enc)[rows, cols].detach()
        codes = SparseCodes(rows, cols, selected, offsets, 6)
        from saekit.sparse import _SelectedPreactivations
        codes.values = _SelectedPreactivations.apply(selected, x - b_dec.detach(), codes, W_enc, b_enc,
                                                     b_dec)
        return sparse_decode(codes, W_dec)

    assert torch.autograd.gradcheck(loss, (W_enc, b_enc, b_dec, W_dec))


def test_short_training_run_matches_dense_path(device):
    """Ten optimiser steps with the sparse kernels end at the dense path's weights (float tolerance:
    the kernels sum in a different order, and Adam's first steps amplify differences only slightly)."""
    import saekit
    from saekit.data.toy import ToyConfig, ToyData

    data = ToyData(ToyConfig(d_in=16, n_features=48, mean_active=3, seed=3), chunk_size=128)
    trained = []
    for sparse_kernels in (False, True):
        # dead_tokens=256: latents silent for two steps count as dead, so AuxK takes part too.
        cfg = saekit.DictionarySpec.from_options(method="topk", d_in=16, d_sae=256, k=2, dead_tokens=256,
                                                 sparse_kernels=sparse_kernels)
        trained.append(saekit.train(iter(data), cfg, total_tokens=1280, batch_size=128, progress=False,
                                    device=device)[0])
    for (name, dense), sparse in zip(trained[0].weights().items(), trained[1].weights().values()):
        assert torch.allclose(dense, sparse, rtol=1e-4, atol=1e-5), name


@pytest.mark.parametrize("autocast", [False, True])
def test_a_step_at_the_benchmark_shape_has_the_float64_gradients(device, autocast):
    """One training loss at the peers benchmark's small shape (d_in 384, d_sae 6144, k 32; 1,024 rows), sparse
    kernels and the sparse AuxK form (3,072 dead latents, k_aux 192), against a dense float64 computation on
    the CPU written here from the formulas. The shape matters on a GPU: CUDA picks its top-k and sort
    algorithms by size, and the small tests above never reach the large-size ones. Under bf16 autocast too,
    as GPU runs train."""
    d_in, d_sae, k, rows = 384, 6144, 32, 1024
    g = torch.Generator().manual_seed(7)
    cfg = DictionaryConfig(method="topk", d_in=d_in, d_sae=d_sae, k=k)
    training = TrainingConfig(sparse_kernels=True).resolved(cfg)
    d = Dictionary(cfg, training=training)
    x = torch.randn(rows, 16, generator=g) @ torch.randn(16, d_in, generator=g) + 0.3 * torch.randn(rows, d_in,
                                                                                                   generator=g)
    with torch.no_grad():
        d.W_dec.copy_(torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=1))
        d.W_enc.copy_(d.W_dec.T + 0.05 * torch.randn(d_in, d_sae, generator=g))
        d.b_enc.copy_(0.1 * torch.randn(d_sae, generator=g))
        d.b_dec.copy_(0.2 * torch.randn(d_in, generator=g))
    reference = {name: p.detach().double().clone().requires_grad_() for name, p in d.named_parameters()}
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[::2] = True
    assert training.aux_k == 192 and training.aux_k * losses.AUX_DENSE_RATIO < int(dead.sum())

    d = d.to(device)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
        result = training_loss(d, x.to(device), 0.0, dead.to(device), training)
    result.total.backward()

    W_enc, b_enc, W_dec, b_dec = (reference[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    x64 = x.double()
    pre = (x64 - b_dec) @ W_enc + b_enc
    top = pre.detach().topk(k, dim=1).indices
    latents = torch.zeros_like(pre).scatter(1, top, pre.gather(1, top).relu())
    x_hat = latents @ W_dec + b_dec
    error = x64 - x_hat
    dead_pre = pre[:, dead]
    aux_top = dead_pre.detach().topk(training.aux_k, dim=1).indices
    aux_latents = torch.zeros_like(dead_pre).scatter(1, aux_top, dead_pre.gather(1, aux_top).relu())
    aux_error = error.detach() - aux_latents @ W_dec[dead]
    total = error.pow(2).sum(1).mean() + training.aux_coefficient * training.aux_every * aux_error.pow(2).sum(1).mean()
    total.backward()

    assert float(result.total) == pytest.approx(float(total), rel=1e-4)
    codes = result.encoding.codes
    pairs = codes.rows.cpu() * d_sae + codes.cols.cpu()
    assert codes.cols.numel() == rows * k and pairs.unique().numel() == rows * k  # k distinct latents a row
    for name, p in d.named_parameters():
        expected = reference[name].grad
        relative = float((p.grad.cpu().double() - expected).norm() / expected.norm())
        # bf16 pre-activations (3 significant digits) reorder near-ties and round every product: 2-7% here;
        # a wrong kernel is off by the whole gradient
        assert relative < (0.15 if autocast else 1e-3), (name, relative)


@pytest.mark.parametrize("shape", [(4608, 576), (7, 3), (1, 5), (3, 1), (0, 4)])
def test_the_transposed_copy_equals_the_transpose(shape, generator):
    from saekit.sparse import transposed

    t = torch.randn(shape, generator=generator)
    out = transposed(t)
    assert out.is_contiguous() and torch.equal(out, t.T)
