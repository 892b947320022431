"""The bf16 screen of the encoder's top-k selects what the fp32 product selects (saekit.screen)."""

import pytest
import torch

import saekit
from saekit import screen, sparse
from saekit.sparse import fused_encode_topk, transposed


def fp32_topk(x, W, b, k):
    return torch.topk(torch.addmm(b, x, W), k, dim=1, sorted=False)


def screened(x, W, b, k, fallback_rows: list[int]):
    def exact(rows):
        fallback_rows.append(rows.shape[0])
        return fused_encode_topk(rows, W, b, k, screen=False)
    return screen.screened_topk(x, W, transposed(W), b, k, exact, chunk_rows=256)


def same_selection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.sort(1).values == b.sort(1).values).all(1)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_screen_selects_the_fp32_top_k_with_fp32_values(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(700, 256, generator=g)
    W = torch.randn(256, 2048, generator=g) / 16
    b = torch.randn(2048, generator=g) / 4
    fallback: list[int] = []
    values, indices = screened(x, W, b, 16, fallback)
    reference = fp32_topk(x, W, b, 16)
    assert bool(same_selection(indices, reference.indices).all())
    torch.testing.assert_close(values.gather(1, indices.argsort(1)),
                               reference.values.gather(1, reference.indices.argsort(1)), rtol=1e-5, atol=1e-5)
    assert values.dtype == torch.float32
    assert sum(fallback) < x.shape[0] // 4  # most rows are certified by the screen itself


def test_rows_the_bf16_product_cannot_order_take_the_fp32_product(monkeypatch):
    """48 latents whose encoder columns differ by less than bf16 resolves lead every row: their bf16 entries
    tie, so the screen's 16 candidates (k 8 + 8) are an arbitrary 16 of the 48. The certificate must send
    those rows to the fp32 product; without it the selection is wrong."""
    g = torch.Generator().manual_seed(0)
    d, width, k = 256, 2048, 8
    base = torch.randn(d, generator=g)
    W = torch.randn(d, width, generator=g) / 64
    W[:, :48] = base[:, None] * (1 + 1e-4 * torch.randn(1, 48, generator=g))
    x = base / base.norm() * 4 + 0.01 * torch.randn(300, d, generator=g)
    b = torch.zeros(width)
    reference = fp32_topk(x, W, b, k)
    assert bool((reference.indices < 48).all())

    fallback: list[int] = []
    _, indices = screened(x, W, b, k, fallback)
    assert bool(same_selection(indices, reference.indices).all())
    assert sum(fallback) > 0

    monkeypatch.setattr(screen, "_rounding_bound", lambda *args: torch.zeros(x.shape[0]))
    _, uncertified = screened(x, W, b, k, [])
    assert not bool(same_selection(uncertified, reference.indices).all())


def test_the_screen_runs_only_where_it_pays(monkeypatch):
    x, W = torch.randn(8, 384), torch.randn(384, 6144)
    monkeypatch.setenv(screen.SCREEN_VARIABLE, "1")
    assert screen.screen_applies(x, W, 32)
    assert not screen.screen_applies(x, W[:, :1024], 32)  # narrow: selecting 64 candidates costs more
    assert not screen.screen_applies(x[:, :64], W[:64], 32)  # a small product saves little
    assert not screen.screen_applies(x.double(), W.double(), 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not screen.screen_applies(x, W, 32)  # autocast's bf16 product is asked for already
    monkeypatch.setenv(screen.SCREEN_VARIABLE, "0")
    assert not screen.screen_applies(x, W, 32)
    monkeypatch.setenv(screen.SCREEN_VARIABLE, "auto")
    assert screen.screen_applies(x, W, 32) == screen.bf16_matrix_units()
    monkeypatch.setenv(screen.SCREEN_VARIABLE, "yes")
    for operands in ((x, W), (x[:, :64], W[:64])):  # refused also where the screen would not run
        with pytest.raises(saekit.SaekitError, match="SAEKIT_BF16_SCREEN='yes' is not a setting"):
            screen.screen_applies(*operands, 32)


def test_training_with_the_screen_selects_as_fp32_at_every_step(monkeypatch):
    """Every screened selection of a real run is the fp32 product's; the weights then differ from an unscreened
    run only by fp32 rounding of the values (amplified where Adam divides a near-zero gradient by its own size)."""
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(6, 512, 256, generator=g) @ torch.randn(256, 256, generator=g)
    spec = saekit.DictionarySpec.from_options(method="topk", d_in=256, d_sae=2048, k=16)
    kernel, mismatched_rows, calls = sparse.screened_topk, [], []

    def checked(x, W, W_T, b, k, exact, chunk_rows):
        values, indices = kernel(x, W, W_T, b, k, exact, chunk_rows)
        calls.append(1)
        mismatched_rows.append(int((~same_selection(indices, fp32_topk(x, W, b, k).indices)).sum()))
        return values, indices

    monkeypatch.setattr(sparse, "screened_topk", checked)
    trained = {}
    for setting in ("0", "1"):
        monkeypatch.setenv(screen.SCREEN_VARIABLE, setting)
        trained[setting] = saekit.train(iter(rows), [spec], total_tokens=6 * 512, batch_size=512, progress=False)[0]
    assert len(calls) >= 6 and sum(mismatched_rows) == 0  # every step of the second run screened
    for name, weight in trained["0"].weights().items():
        other = trained["1"].weights()[name]
        assert float((other - weight).norm() / weight.norm()) < 1e-3, name


@pytest.mark.parametrize("outliers", [False, True])
def test_the_rounding_bound_covers_every_entry_of_the_bf16_product(outliers):
    """|fp32 entry − bf16 entry| is within the bound of its row for every entry (the bound's `floor` taken as
    the row's largest |ṽ|, so the output-rounding term covers all of them), with and without a few huge
    input dimensions (as residual streams have)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 320, generator=g)
    if outliers:
        x[:, :3] *= 300
    W = torch.randn(320, 3000, generator=g) / 18
    b = torch.randn(3000, generator=g)
    x_low, b_low = x.bfloat16(), b.bfloat16()
    low = torch.addmm(b_low, x_low, W.bfloat16()).float()
    error = (torch.addmm(b.double(), x.double(), W.double()) - low.double()).abs().amax(1)
    bound = screen._rounding_bound(x, x_low, transposed(W), b, b_low, low.abs().amax(1))
    assert bool((error <= bound.double()).all())
    assert float((error / bound).max()) > 0.01  # a margin, not a wall that certifies nothing


def test_column_norms_by_blocks_match_the_whole():
    W_T = torch.randn(1000, 64)
    whole = screen._column_norms(W_T, block_elements=W_T.numel())
    for got, expected in zip(screen._column_norms(W_T, block_elements=64 * 7), whole, strict=True):
        assert float(got) == float(expected)
