"""The exact per-row TopK kernel (sae_rdp_plugin.fast.topk_kernel.row_topk) against torch.topk.

On CPU the kernel runs in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1). Besides the
default block sizes, the tests shrink the module's blocks, groups and scratch capacity so that small
rows take several blocks, and rows with more candidates than the scratch holds take the radix-select
fallback path."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sae_rdp_plugin.fast import topk_kernel as tk  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    not tk.available(DEV), reason="Triton kernel unavailable (no CUDA, no TRITON_INTERPRET)"
)

DTYPES = [torch.bfloat16, torch.float32, torch.float16]
# (block_16, block_32, groups, cap, cb): the defaults; small blocks (several per row) with the bound
# and candidates spread over several rank tiles (tie-heavy rows overflow the scratch: fallback); a
# one-slot scratch (the radix-select fallback for every row)
CONFIGS = {
    "default": (tk._BLOCK_16, tk._BLOCK_32, tk._GROUPS, tk._CAP, tk._CB),
    "small": (128, 64, 64, 256, 16),  # k <= 64: bound used; ~k candidates in several 16-tiles
    "fallback": (64, 64, 16, 1, 16),
}


def _use(monkeypatch, config: str) -> None:
    for name, v in zip(("_BLOCK_16", "_BLOCK_32", "_GROUPS", "_CAP", "_CB"), CONFIGS[config]):
        monkeypatch.setattr(tk, name, v)


@pytest.fixture(params=["small", "fallback"])
def config(request, monkeypatch):
    """Small blocks (several per row) or a one-slot scratch (the radix-select fallback); the default
    sizes are slow in the interpreter and get their own, shorter test."""
    _use(monkeypatch, request.param)
    return request.param


def _check(x: torch.Tensor, k: int) -> None:
    x = x.to(DEV)  # inputs are built on CPU; the kernel runs on CUDA when there is one
    v, i = tk.row_topk(x, k)
    assert v.shape == (x.shape[0], k) and i.shape == (x.shape[0], k)
    assert v.dtype == x.dtype and i.dtype == torch.int64
    assert bool(((i >= 0) & (i < x.shape[1])).all()), "index out of range"
    si = i.sort(1).values
    assert bool((si[:, 1:] != si[:, :-1]).all()), "repeated index in a row"
    assert torch.equal(x.gather(1, i), v), "values are not x at the indices"
    tv, _ = x.topk(k, dim=1, sorted=False)
    assert torch.equal(v.sort(1).values, tv.sort(1).values), "values differ from torch.topk"


def _rows(kind: str, shape: tuple[int, int], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "randn":
        return torch.randn(*shape, generator=g)
    if kind == "integers":  # many ties at the threshold
        return torch.randint(-4, 4, shape, generator=g).float()
    if kind == "negative":
        return -torch.rand(*shape, generator=g) - 1.0
    if kind == "equal":  # every row constant
        return torch.full(shape, -0.75)
    if kind == "zeros":  # -0.0 and +0.0 (equal values, different bits) with a few positives
        x = torch.where(torch.rand(*shape, generator=g) < 0.5, torch.tensor(-0.0), torch.tensor(0.0))
        x[:, ::37] = 1.0
        return x
    raise ValueError(kind)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kind", ["randn", "integers", "negative", "equal", "zeros"])
@pytest.mark.parametrize("shape,k", [((5, 300), 7), ((3, 1000), 40)])
def test_row_topk_matches_torch(config, dtype, kind, shape, k):
    _check(_rows(kind, shape, seed=k).to(dtype), k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["randn", "integers"])
def test_row_topk_default_blocks(dtype, kind):
    """The module's own block sizes (one block per row here; integer rows: more candidates)."""
    _check(_rows(kind, (3, 1000), seed=1).to(dtype), 40)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_row_topk_k_equals_n_and_one_column(dtype, monkeypatch):
    _use(monkeypatch, "small")
    x = torch.randn(4, 37).to(dtype)
    _check(x, 37)
    _check(torch.randn(3, 1).to(dtype), 1)


def test_row_topk_non_contiguous_rows_and_empty_batch(monkeypatch):
    _use(monkeypatch, "small")
    base = torch.randn(6, 500)
    _check(base[::2], 10)  # row stride 1000
    _check(base[:, 100:400], 12)  # row stride 500, 300 columns
    v, i = tk.row_topk(torch.empty(0, 50, device=DEV), 5)
    assert v.shape == (0, 5) and i.shape == (0, 5)


@pytest.mark.parametrize(
    "x,k,msg",
    [
        (torch.randn(10), 2, "2-D"),
        (torch.randn(2, 3, 4), 2, "2-D"),
        (torch.randn(3, 10).double(), 2, "dtype"),
        (torch.randint(0, 5, (3, 10)), 2, "dtype"),
        (torch.randn(3, 10), 0, "k must be"),
        (torch.randn(3, 10), 11, "k must be"),
        (torch.randn(3, 10), 2.0, "k must be"),
    ],
)
def test_row_topk_rejects_bad_input(x, k, msg):
    with pytest.raises(ValueError, match=msg):
        tk.row_topk(x, k)


def _check_masked_copy(x: torch.Tensor, k: int, keep: torch.Tensor) -> None:
    """row_topk_masked_copy: the top-k as row_topk checks it, and the copy equal to x.masked_fill(~keep, -inf)."""
    x, keep = x.to(DEV), keep.to(DEV)
    v, i, xm = tk.row_topk_masked_copy(x, k, keep)
    _check(x, k)
    rv, ri = tk.row_topk(x, k)
    assert torch.equal(v, rv) and torch.equal(i, ri), "top-k differs from row_topk's"
    assert xm.dtype == x.dtype and xm.shape == x.shape and xm.is_contiguous()
    assert torch.equal(xm, x.masked_fill(~keep, -torch.inf)), "masked copy differs from masked_fill"


@pytest.mark.parametrize(
    "cfg,dtype,kind,kept",
    [
        ("small", torch.bfloat16, "randn", 0.15),
        ("small", torch.float32, "integers", 0.15),
        ("small", torch.float16, "zeros", 0.0),
        ("small", torch.bfloat16, "integers", 1.0),
        ("fallback", torch.float32, "integers", 0.15),
    ],
)
def test_row_topk_masked_copy(monkeypatch, cfg, dtype, kind, kept):
    """The masked copy comes from the same read as the top-k, on the bound path and the radix fallback (the
    "fallback" config: the copy is written before the branch); rows of several blocks, a strided input."""
    _use(monkeypatch, cfg)
    x = _rows(kind, (4, 300), seed=7).to(dtype)
    keep = torch.rand(400, generator=torch.Generator().manual_seed(8)) < kept
    _check_masked_copy(x, 9, keep[:300].clone())
    base = _rows(kind, (6, 500), seed=9).to(dtype)
    _check_masked_copy(base[::2, 50:450], 5, keep)  # row stride 1000, 400 columns


@pytest.mark.parametrize(
    "cfg,dtype,kind", [("small", torch.bfloat16, "randn"), ("fallback", torch.float32, "integers")]
)
def test_row_topk_masked_copy_at_positions(monkeypatch, cfg, dtype, kind):
    """With ``pos`` (the inverse of a column gather ``cols``, -1 for columns not gathered) the copy is
    ``x.masked_fill(~keep, -inf)[:, cols]``: the compacted aux selection (kept columns first, then others)."""
    _use(monkeypatch, cfg)
    x = _rows(kind, (4, 300), seed=11).to(dtype).to(DEV)
    g = torch.Generator().manual_seed(12)
    keep = (torch.rand(300, generator=g) < 0.4).to(DEV)
    for width in (int(keep.sum()), int(keep.sum()) + 17, 300):
        cols = torch.argsort((~keep).to(torch.int8), stable=True)[:width]
        pos = torch.full((300,), -1, dtype=torch.int32, device=DEV)
        pos[cols] = torch.arange(width, dtype=torch.int32, device=DEV)
        v, i, xm = tk.row_topk_masked_copy(x, 9, keep, pos=pos, width=width)
        rv, ri = tk.row_topk(x, 9)
        assert torch.equal(v, rv) and torch.equal(i, ri)
        assert xm.shape == (4, width) and xm.is_contiguous()
        assert torch.equal(xm, x.masked_fill(~keep, -torch.inf)[:, cols])


def test_row_topk_masked_copy_default_blocks_and_bad_keep():
    x = torch.randn(3, 1000).to(torch.bfloat16)
    _check_masked_copy(x, 40, torch.rand(1000, generator=torch.Generator().manual_seed(2)) < 0.2)
    v, i, xm = tk.row_topk_masked_copy(torch.empty(0, 50, device=DEV), 5, torch.ones(50, dtype=torch.bool, device=DEV))
    assert v.shape == (0, 5) and xm.shape == (0, 50)
    for keep, msg in (
        (torch.ones(999, dtype=torch.bool), "shape"),
        (torch.ones(1000), "bool"),
        (torch.ones(2, 500, dtype=torch.bool), "1-D"),
    ):
        with pytest.raises(ValueError, match=msg):
            tk.row_topk_masked_copy(x.to(DEV), 40, keep.to(DEV))
    keep = torch.ones(1000, dtype=torch.bool, device=DEV)
    for pos, width, msg in (
        (torch.zeros(1000, dtype=torch.int64), 5, "int32"),
        (torch.zeros(999, dtype=torch.int32), 5, "shaped like keep"),
        (torch.zeros(1000, dtype=torch.int32), None, "width"),
        (torch.zeros(1000, dtype=torch.int32), 0, "width"),
    ):
        with pytest.raises(ValueError, match=msg):
            tk.row_topk_masked_copy(x.to(DEV), 40, keep, pos=pos.to(DEV), width=width)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(1, 3),
    n=st.integers(1, 400),
    kfrac=st.floats(0.0, 1.0),
    levels=st.sampled_from([0, 3, 50]),  # 0: continuous values; else few distinct values (ties)
    dtype=st.sampled_from(DTYPES),
    config=st.sampled_from(["small", "fallback"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_row_topk_property(rows, n, kfrac, levels, dtype, config, seed):
    k = max(1, min(n, round(kfrac * 40) if kfrac < 0.9 else n))
    g = torch.Generator().manual_seed(seed)
    if levels == 0:
        x = torch.randn(rows, n, generator=g) * 10
    else:
        x = torch.randint(-levels, levels + 1, (rows, n), generator=g).float() / 4
    saved = (tk._BLOCK_16, tk._BLOCK_32, tk._GROUPS, tk._CAP, tk._CB)
    try:
        tk._BLOCK_16, tk._BLOCK_32, tk._GROUPS, tk._CAP, tk._CB = CONFIGS[config]
        _check(x.to(dtype), k)
    finally:
        tk._BLOCK_16, tk._BLOCK_32, tk._GROUPS, tk._CAP, tk._CB = saved


# ---- masked_topk: radix select with a column mask (the dead-latent aux loss's top k_aux)


def _check_masked(x: torch.Tensor, k: int, keep: torch.Tensor | None, block: int = 64) -> None:
    """Against ``x.masked_fill(~keep, -inf).topk(k)``: the same multiset of values per row, each value x at its
    index (-inf at a masked index), distinct indices; among tied values the leftmost columns are taken."""
    x = x.to(DEV)
    keep = keep.to(DEV) if keep is not None else None
    v, i = tk.masked_topk(x, k, keep, block=block)
    assert v.shape == (x.shape[0], k) and i.shape == (x.shape[0], k) and v.dtype == x.dtype
    ref = x.masked_fill(~keep, float("-inf")) if keep is not None else x
    si = i.sort(1).values
    assert bool((si[:, 1:] != si[:, :-1]).all()), "repeated index in a row"
    assert torch.equal(ref.gather(1, i), v), "values are not the (masked) x at the indices"
    tv, _ = ref.topk(k, dim=1, sorted=False)
    assert torch.equal(v.sort(1).values, tv.sort(1).values), "values differ from masked_fill + torch.topk"
    # the k-th largest key of each row: keys order -0.0 one below +0.0 (module docstring), so the k-th is -0.0
    # when the selection holds a -0.0 and its smallest value is 0
    kth = v.min(1, keepdim=True).values
    kth_neg = (kth == 0) & ((v == 0) & torch.signbit(v)).any(1, keepdim=True)
    sb = torch.signbit(ref)
    n_gt = ((ref > kth) | ((ref == kth) & ~sb & kth_neg)).sum(1, keepdim=True)
    tied = (ref == kth) & ((kth != 0) | (sb == kth_neg))
    assert bool((tied.sum(1, keepdim=True) >= k - n_gt).all())  # the ties hold the slots left
    # leftmost ties: the tied columns taken are the first (k - n_gt) tied columns of the row
    first = (tied.cumsum(1) <= (k - n_gt)) & tied
    taken = torch.zeros_like(tied).scatter_(1, i, True) & tied
    assert torch.equal(taken, first), "ties at the threshold are not the leftmost"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["randn", "integers", "zeros"])
@pytest.mark.parametrize("dead", [0.15, 0.5, 1.0])
def test_masked_topk_matches_masked_fill_topk(dtype, kind, dead):
    """k around d_in / 2 of a few hundred columns, with fewer kept columns than k at 15% kept (the rest of the
    k slots are masked columns at -inf, as torch.topk of the masked copy gives); several blocks per row."""
    x = _rows(kind, (4, 300), seed=3).to(dtype)
    keep = torch.rand(300, generator=torch.Generator().manual_seed(5)) < dead
    for k in (1, 32, 64, 120):
        _check_masked(x, k, keep)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_masked_topk_without_mask_default_block_and_strides(dtype):
    base = torch.randn(6, 700).to(dtype)
    _check_masked(base, 50, None, block=None)  # the module's block: one block per row
    _check_masked(base[::2, 100:600], 20, torch.rand(500) < 0.5)  # row stride 1400, 500 columns


def test_masked_topk_rejects_bad_input():
    x = torch.randn(3, 10)
    for keep, msg in (
        (torch.ones(9, dtype=torch.bool), "keep must be"),
        (torch.ones(10), "keep must be"),
    ):
        with pytest.raises(ValueError, match=msg):
            tk.masked_topk(x.to(DEV), 2, keep.to(DEV))
    with pytest.raises(ValueError, match="k must be"):
        tk.masked_topk(x, 11)
    with pytest.raises(ValueError, match="dtype"):
        tk.masked_topk(x.double(), 2)
    for block in (8, 48, 2**15):
        with pytest.raises(ValueError, match="power of two"):
            tk.masked_topk(x, 2, block=block)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 300),
    kfrac=st.floats(0.0, 1.0),
    keepfrac=st.floats(0.0, 1.0),
    levels=st.sampled_from([0, 3]),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31 - 1),
)
def test_masked_topk_property(n, kfrac, keepfrac, levels, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    k = max(1, min(n, round(kfrac * n)))
    x = torch.randn(2, n, generator=g) if levels == 0 else torch.randint(0, levels, (2, n), generator=g).float()
    keep = torch.rand(n, generator=g) < keepfrac
    _check_masked(x.to(dtype), k, keep, block=32)
