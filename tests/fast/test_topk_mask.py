"""topk_kernel.topk_mask (the dense top-k selection of the dead-latent aux loss) against a brute-force
reference: a stable sort of each row's kept values (ties: leftmost column first) in float64 numpy.

On CPU the kernel runs in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1)."""

from __future__ import annotations

import numpy as np
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


def _reference(x, k, keep=None, cols=None, div=None, out_dtype=torch.float32):
    """(A, M) by sorting: per row the k largest kept values of x[:, cols], leftmost first among equals."""
    xs = x.double().numpy()
    B, n_src = xs.shape
    cols_np = np.arange(n_src) if cols is None else cols.numpy()
    keep_np = np.ones(n_src, bool) if keep is None else keep.numpy()
    S = xs[:, cols_np]
    kept = np.flatnonzero(keep_np[cols_np])
    M = np.zeros(S.shape, bool)
    for b in range(B):
        order = kept[np.argsort(-S[b, kept], kind="stable")]  # stable: equal values keep column order
        M[b, order[:k]] = True
    # the values as the kernel forms them: x's value in fp32, divided in fp32, cast to the output dtype
    vals = x[:, torch.as_tensor(cols_np)].float()
    if div is not None:
        vals = vals / div.float()[torch.as_tensor(cols_np)]
    A = torch.where(torch.as_tensor(M), vals, 0.0).to(out_dtype)
    return A, torch.as_tensor(M)


def _run(x, k, **kw):
    dev_kw = {n: (t.to(DEV) if isinstance(t, torch.Tensor) else t) for n, t in kw.items()}
    A, M = tk.topk_mask(x.to(DEV), k, **dev_kw)
    return A.cpu(), M.cpu()


def _check(x, k, **kw):
    A, M = _run(x, k, **kw)
    rA, rM = _reference(x, k, **kw)
    assert A.dtype == rA.dtype and M.dtype == torch.bool and A.shape == rA.shape == M.shape
    assert torch.equal(M, rM), "selection differs from the sorted reference"
    assert torch.equal(A, rA), "values differ from the reference"
    return M


# on CUDA every new flag / dtype / block combination is a compilation: fewer examples there
@settings(max_examples=60 if DEV == "cpu" else 15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    B=st.integers(1, 5),
    n_src=st.integers(1, 300),
    k_frac=st.floats(0.0, 1.0),
    dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.float32]),
    levels=st.sampled_from([0, 3, 40]),  # 0: continuous values; else integer values (heavy ties)
    use_cols=st.booleans(),
    use_keep=st.booleans(),
    use_div=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_sorted_reference(B, n_src, k_frac, dtype, levels, use_cols, use_keep, use_div, seed):
    g = torch.Generator().manual_seed(seed)
    if levels:
        x = torch.randint(-levels, levels + 1, (B, n_src), generator=g).to(dtype)
    else:
        x = (torch.randn(B, n_src, generator=g) * 3).to(dtype)
    x = torch.where(x == 0, torch.ones((), dtype=dtype), x)  # -0.0 and +0.0 rank apart in the kernel only
    kw = {}
    if use_cols:
        n = int(torch.randint(1, n_src + 1, (1,), generator=g))
        kw["cols"] = torch.randperm(n_src, generator=g)[:n].sort().values  # ascending, as the aux loss's
    else:
        n = n_src
    if use_keep:
        kw["keep"] = torch.rand(n_src, generator=g) < 0.6
    if use_div:
        kw["div"] = torch.rand(n_src, generator=g) + 0.5
    kw["out_dtype"] = torch.float32 if dtype == torch.float32 else torch.bfloat16
    k = max(1, min(n, round(k_frac * n)))
    M = _check(x, k, **kw)
    kept = (kw["keep"] if use_keep else torch.ones(n_src, dtype=torch.bool))[kw.get("cols", slice(None))]
    assert bool((M.sum(1) == min(k, int(kept.sum()))).all())  # k picks, or every kept column


def test_extremes_and_ties_at_the_threshold():
    """Infinities, the largest and smallest finite values, and a tie that straddles the k-th place."""
    x = torch.tensor(
        [
            [1.0, 5.0, 5.0, 5.0, -2.0, 5.0, 0.5, -1.0],  # k=3: three of four 5.0s, the leftmost
            [float("inf"), -float("inf"), 3e38, -3e38, 1e-30, -1e-30, 2.0, 2.0],  # (no subnormals: FTZ)
        ]
    )
    for dtype in (torch.float32, torch.bfloat16):
        for k in (1, 3, 5, 8):
            _check(x.to(dtype), k, out_dtype=dtype)
    A, M = _run(x, 3)
    assert M[0].tolist() == [False, True, True, True, False, False, False, False]


def test_no_kept_column_and_fewer_kept_than_k():
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(1))
    none = torch.zeros(40, dtype=torch.bool)
    A, M = _run(x, 5, keep=none)
    assert not M.any() and not A.any()
    few = torch.zeros(40, dtype=torch.bool)
    few[[3, 17, 30]] = True
    M = _check(x, 5, keep=few)
    assert M.sum(1).tolist() == [3, 3, 3]


def test_row_of_the_widest_block():
    """A row of TOPK_MASK_MAX_COLS columns (the largest block) in bf16 with the aux loss's k."""
    x = torch.randn(2, tk.TOPK_MASK_MAX_COLS, generator=torch.Generator().manual_seed(2)).bfloat16()
    _check(x, 320, keep=torch.rand(tk.TOPK_MASK_MAX_COLS, generator=torch.Generator().manual_seed(3)) < 0.5)


def test_aux_loss_shape():
    """The aux loss's case at (640, 16384, k32) with half the latents dead: bf16 pre-activations, the 8192
    compacted columns (dead ones first), the dead mask, the decoder norms, bf16 output; 8 rows."""
    g = torch.Generator().manual_seed(4)
    d_sae, n_pad = 16384, 8192
    x = (torch.randn(8, d_sae, generator=g) * 2).bfloat16()
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[torch.randperm(d_sae, generator=g)[: n_pad - 100]] = True
    cols = torch.argsort((~dead).to(torch.int8), stable=True)[:n_pad]
    M = _check(x, 320, keep=dead, cols=cols, div=torch.rand(d_sae, generator=g) + 0.5, out_dtype=torch.bfloat16)
    assert M.sum(1).tolist() == [320] * 8


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda x: tk.topk_mask(x, 0), "k must be"),
        (lambda x: tk.topk_mask(x, 11), "k must be"),
        (lambda x: tk.topk_mask(x, 3, cols=torch.arange(4, dtype=torch.int32, device=x.device)), "cols must"),
        (lambda x: tk.topk_mask(x, 5, cols=torch.arange(4, device=x.device)), "len\\(cols\\)"),
        (lambda x: tk.topk_mask(x, 2, keep=torch.ones(9, dtype=torch.bool, device=x.device)), "keep must"),
        (lambda x: tk.topk_mask(x, 2, div=torch.ones(10, 1, device=x.device)), "div must"),
        (lambda x: tk.topk_mask(x.int(), 2), "dtype"),
        (lambda x: tk.topk_mask(x, 2, out_dtype=torch.float16), "out_dtype"),
        (
            lambda x: tk.topk_mask(torch.zeros(1, tk.TOPK_MASK_MAX_COLS + 1, device=x.device), 2),
            "TOPK_MASK_MAX_COLS",
        ),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.randn(2, 10, device=DEV))


@pytest.mark.parametrize("lean", [True, False])
def test_both_register_layouts(lean, monkeypatch):
    """The kernel with only the keys live through the search (values re-read at the end) and with the values
    kept in registers (the default): both equal the reference, with and without compaction, ties included."""
    monkeypatch.setattr(tk, "_TOPK_MASK_LEAN", lean)
    g = torch.Generator().manual_seed(5)
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randint(-6, 7, (4, 700), generator=g).to(dtype) + 0.5  # ties, no zeros
        keep = torch.rand(700, generator=g) < 0.7
        cols = torch.argsort((~keep).to(torch.int8), stable=True)[:512]
        div = torch.rand(700, generator=g) + 0.5
        out = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
        _check(x, 50, keep=keep, cols=cols, div=div, out_dtype=out)
        _check(x, 300, keep=keep, out_dtype=out)


def test_bench_script_quick(tmp_path):
    """benchmarks/training_speed/bench_topk_mask.py --quick (tiny shapes; the interpreter on the CPU): every dead
    fraction has the torch row and the three warp settings, each kernel row equal to the first and with torch's
    picks per row."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "training_speed" / "bench_topk_mask.py"
    spec = importlib.util.spec_from_file_location("bench_topk_mask", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    defaults = tk._TOPK_MASK_LEAN, tk._TOPK_MASK_WARPS
    assert mod.main(["--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "topk_mask.json").read_text())
    rows = res["rows"]
    kernels = [f"{lay}_w{w}" for lay in ("lean", "regs") for w in (4, 8, 16)]
    assert [r["impl"] for r in rows] == (["torch"] + kernels) * 3
    assert all(r["same_as_first_kernel_and_torch_picks"] is True for r in rows if r["impl"] != "torch")
    assert (tk._TOPK_MASK_LEAN, tk._TOPK_MASK_WARPS) == defaults  # the script restores the defaults
