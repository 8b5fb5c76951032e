"""experiments/table2/absorption_stage.py's batched k-sparse scoring (``batched_k_sparse_raw_scores``, swapped in for
``sae_bench.evals.absorption.k_sparse_probing.eval_probe_and_sae_k_sparse_raw_scores``) against SAEBench's own
function, the independent reference: the same DataFrame (columns, order, dtypes, rows, every value's bits, the
parquet file SAEBench writes from it) on tiny TopK, standard (ReLU) and JumpReLU SAELens SAEs and on a pass-through
"SAE" that feeds the k-sparse probes chosen values (exact zeros of both signs, negatives, 1e-30..1e30, float32
subnormals), random probes for k = 1..10 per letter, eval batch sizes that do and do not divide the rows; a
hypothesis property over shapes and values; the dot / sum plans against torch's 1-D ops on data other than the
calibration's; the run-time check catching a one-ulp change (or a changed array, word or letter) in any kind of
column and falling back to SAEBench's function, with the record saying so; the environment switch; the stage's
swap and restore. ``-m slow``: the timing at 5,000 words (printed, not asserted)."""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("sae_bench")

EXP = Path(__file__).resolve().parents[2] / "experiments" / "table2"
ACTS_SUFFIX = "_acts"


@pytest.fixture
def ab(monkeypatch):
    monkeypatch.syspath_prepend(str(EXP))
    monkeypatch.delenv("SAE_RDP_ABSORPTION_SCORING", raising=False)
    return importlib.import_module("absorption_stage")


@pytest.fixture
def orig():
    from sae_bench.evals.absorption.k_sparse_probing import eval_probe_and_sae_k_sparse_raw_scores

    return eval_probe_and_sae_k_sparse_raw_scores


class PassThrough:
    """An "SAE" whose activations are its input (SAEBench's scoring uses ``device``, ``dtype`` and ``encode``)."""

    device = torch.device("cpu")
    dtype = torch.float32

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


def _sae(arch: str, d_in: int, d_sae: int) -> Any:
    """A tiny SAELens SAE with random weights (JumpReLU: thresholds that gate some positive pre-activations)."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    if arch == "passthrough":
        return PassThrough()
    sae = {
        "topk": lambda: TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=12)),
        "standard": lambda: StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae)),
        "jumprelu": lambda: JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae)),
    }[arch]()
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.rand_like(p) * 0.5 if name == "threshold" else torch.randn_like(p) * 0.4)
    return sae


def _special_values(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """float32 values of every kind the scoring meets and more: scales 1e-30..1e30, both signs, exact zeros of both
    signs, float32 subnormals, runs of one scale (cancellations)."""
    x = rng.standard_normal(shape) * np.exp(rng.normal(0, 3, shape))
    u = rng.random(shape)
    x[u < 0.25] = 0.0
    x[(u >= 0.25) & (u < 0.3)] = -0.0
    tiny = (u >= 0.3) & (u < 0.33)
    x[tiny] = rng.uniform(-1e-39, 1e-39, int(tiny.sum()))
    big = (u >= 0.33) & (u < 0.35)
    x[big] = rng.choice([-1.0, 1.0], int(big.sum())) * 10.0 ** rng.uniform(-30, 30, int(big.sum()))
    return x.astype(np.float32)


def _probes(d_sae: int, ks: list[int], rng: np.random.Generator, d_in: int) -> tuple[Any, dict]:
    """SAEBench's first-letter LinearProbe with random weights, and k-sparse probes per k and letter with random
    feature ids, weights and biases (made as SAEBench makes them: float64 -> float32 tensors, int64 ids)."""
    from sae_bench.evals.absorption.k_sparse_probing import KSparseProbe
    from sae_bench.evals.absorption.probing import LinearProbe

    probe = LinearProbe(d_in, 26)
    with torch.no_grad():
        probe.fc.weight.copy_(torch.tensor(rng.standard_normal((26, d_in))))
        probe.fc.bias.copy_(torch.tensor(rng.standard_normal(26)))
    ksp: dict[int, dict[int, Any]] = {}
    for k in ks:
        ksp[k] = {}
        for letter in range(26):
            ids = rng.permutation(d_sae)[:k] if k <= d_sae else rng.integers(d_sae, size=k)
            w = rng.standard_normal(k) * np.exp(rng.normal(0, 1.5, k))
            w[rng.random(k) < 0.05] = 0.0
            ksp[k][letter] = KSparseProbe(
                weight=torch.tensor(w).float(),
                bias=torch.tensor(rng.standard_normal() * 2).float(),
                feature_ids=torch.tensor(ids, dtype=torch.int64),
            )
    return probe, ksp


def _inputs(arch: str, rows: int, seed: int = 0, ks: list[int] | None = None, d_in: int = 16, d_sae: int = 48):
    """(sae, probe, k-sparse probes, eval labels, eval activations) for ``rows`` words."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if arch == "passthrough":
        d_sae = d_in
    sae = _sae(arch, d_in, d_sae)
    probe, ksp = _probes(d_sae, ks or list(range(1, 11)), rng, d_in)
    labels = [(f"tok{i}_{'ab'[i % 2]}", int(rng.integers(26))) for i in range(rows)]
    acts = _special_values(rng, (rows, d_in)) if arch == "passthrough" else rng.standard_normal((rows, d_in)) * 1.5
    return sae, probe, ksp, labels, torch.tensor(acts, dtype=torch.float32)


def _assert_same_bits(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Equal frames (pandas, exact) and, value by value, equal bits: float64 columns through their int64 views (also
    float32-held values, -0.0 and NaN), each ``_acts`` array's dtype, shape and bytes, the strings."""
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert list(got.columns) == list(want.columns)
    assert got.index.equals(want.index)
    for col in want.columns:
        a, b = got[col], want[col]
        assert a.dtype == b.dtype, col
        if b.dtype == np.float64:
            va, vb = a.to_numpy(), b.to_numpy()
            assert np.array_equal(va.view(np.int64), vb.view(np.int64)), col
            # the values are float32s widened (SAEBench's .item() / .tolist() of float32 tensors)
            assert np.array_equal(va.astype(np.float32).astype(np.float64).view(np.int64), va.view(np.int64)), col
        elif col.endswith(ACTS_SUFFIX):
            for u, v in zip(a.tolist(), b.tolist(), strict=True):
                assert isinstance(u, np.ndarray) and u.dtype == v.dtype == np.float32 and u.shape == v.shape, col
                assert np.array_equal(u.view(np.int32), v.view(np.int32)), col
        else:
            assert a.tolist() == b.tolist() and [type(x) for x in a] == [type(x) for x in b], col


def _column_order(ks: list[int]) -> list[str]:
    from sae_bench.evals.absorption.vocab import LETTERS

    cols = ["token", "answer_letter"]
    for letter in LETTERS:
        cols.append(f"score_probe_{letter}")
        for k in ks:
            cols += [
                f"score_sparse_sae_{letter}_k_{k}",
                f"sum_sparse_sae_{letter}_k_{k}",
                f"sparse_sae_{letter}_k_{k}_acts",
            ]
    return cols


def _run(ab, orig, inputs, batch: int, **kw) -> tuple[pd.DataFrame, list[dict]]:
    rec: list[dict] = []
    got = ab.batched_k_sparse_raw_scores(orig, *inputs, eval_batch_size=batch, record=rec.append, **kw)
    return got, rec


@pytest.mark.parametrize(
    ("arch", "rows", "batch"),
    [
        ("topk", 300, 24),  # SAEBench's default batch; 300 = 12.5 batches
        ("topk", 300, 1024),  # the stage's default: one batch
        ("standard", 300, 25),  # divides the rows
        ("jumprelu", 301, 50),
        ("passthrough", 300, 24),
        ("passthrough", 257, 7),
        ("passthrough", 1, 24),
    ],
)
def test_batched_scoring_is_saebenchs_bit_for_bit(ab, orig, arch, rows, batch):
    inputs = _inputs(arch, rows, seed=rows + batch)
    want = orig(*inputs, eval_batch_size=batch)
    got, rec = _run(ab, orig, inputs, batch)
    _assert_same_bits(got, want)
    assert list(want.columns) == _column_order(list(range(1, 11)))  # what the docstring says SAEBench gives
    assert rec == [rec[0]] and rec[0]["fast"] is True and rec[0]["mismatch"] is None, rec
    assert rec[0]["rows"] == rows and rec[0]["checked_rows"] == len(
        set(range(min(batch, rows, ab.SCORING_CHECK_FIRST)))
        | {int(r) for r in np.linspace(0, rows - 1, min(rows, ab.SCORING_CHECK_SPREAD)).round()}
    )
    assert set(rec[0]["plans"]) == {"dot", "sum"} and sorted(rec[0]["plans"]["dot"], key=int) == [
        str(k) for k in range(1, 11)
    ]
    if arch == "passthrough" and rows >= 100:  # the special values reached the probes
        acts = np.stack(want["sparse_sae_a_k_10_acts"].tolist())
        assert (acts == 0).any() and np.signbit(acts[acts == 0]).any() and (acts < 0).any()
        assert (np.abs(acts[acts != 0]) < 1.2e-38).any() and (np.abs(acts) > 1e20).any()


def test_same_parquet_bytes_as_saebench(ab, orig, tmp_path):
    """SAEBench writes the scoring's DataFrame with ``to_parquet(path, index=False)``: the same file, byte for byte."""
    inputs = _inputs("topk", 120, seed=3, ks=[1, 2, 5])
    want = orig(*inputs, eval_batch_size=24)
    got, rec = _run(ab, orig, inputs, 24)
    want.to_parquet(tmp_path / "want.parquet", index=False)
    got.to_parquet(tmp_path / "got.parquet", index=False)
    assert (tmp_path / "got.parquet").read_bytes() == (tmp_path / "want.parquet").read_bytes()
    assert rec[0]["fast"] is True


def test_other_ks_and_a_probe_output_wider_than_the_alphabet(ab, orig):
    """SAEBench's k loop follows the dict's order (here not sorted) and its letter loop zips the 26 letters with
    the probe's outputs (a wider probe: its first 26)."""
    from sae_bench.evals.absorption.probing import LinearProbe

    sae, _, ksp, labels, acts = _inputs("standard", 90, seed=5, ks=[3, 1, 7])
    probe = LinearProbe(acts.shape[1], 30)
    want = orig(sae, probe, ksp, labels, acts, eval_batch_size=16)
    got, rec = _run(ab, orig, (sae, probe, ksp, labels, acts), 16)
    _assert_same_bits(got, want)
    assert rec[0]["fast"] is True and list(want.columns)[2:5] == [
        "score_probe_a",
        "score_sparse_sae_a_k_3",
        "sum_sparse_sae_a_k_3",
    ]


def _float32_values(draw: Any, st: Any, n: int) -> list[float]:
    kinds = st.sampled_from(["normal", "zero", "negzero", "tiny", "big", "one"])
    out = []
    for _ in range(n):
        kind = draw(kinds)
        if kind == "zero":
            out.append(0.0)
        elif kind == "negzero":
            out.append(-0.0)
        elif kind == "tiny":
            out.append(draw(st.floats(-TINY, TINY, width=32)))
        elif kind == "big":
            out.append(draw(st.floats(-BIG, BIG, width=32)))
        elif kind == "one":
            out.append(draw(st.sampled_from([1.0, -1.0, 0.5, 3.0])))
        else:
            out.append(draw(st.floats(-100, 100, width=32)))
    return out


TINY, BIG = float(np.float32(1e-39)), float(np.float32(1e30))


def test_property_random_shapes_and_values(ab, orig):
    """Random rows (1-60), widths (1-24), ks (any of 1..10, any order), batch sizes (1-70), weights, biases and
    activation values of every kind (pass-through SAE): SAEBench's frame, bit for bit, and the batched path kept."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    from sae_bench.evals.absorption.k_sparse_probing import KSparseProbe
    from sae_bench.evals.absorption.probing import LinearProbe

    @hypothesis.settings(max_examples=25, deadline=None, database=None)
    @hypothesis.given(data=st.data())
    def prop(data: Any) -> None:
        rows = data.draw(st.integers(1, 60))
        width = data.draw(st.integers(1, 24))
        ks = data.draw(st.lists(st.integers(1, 10), min_size=1, max_size=4, unique=True))
        batch = data.draw(st.integers(1, 70))
        seed = data.draw(st.integers(0, 2**31 - 1))
        rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        acts = torch.tensor(np.array(_float32_values(data.draw, st, rows * width), np.float32).reshape(rows, width))
        probe = LinearProbe(width, 26)
        ksp = {}
        for k in ks:
            ksp[k] = {}
            for letter in range(26):
                w = _float32_values(data.draw, st, k) if letter == 0 else rng.standard_normal(k) * 3
                ksp[k][letter] = KSparseProbe(
                    weight=torch.tensor(np.asarray(w, np.float64)).float(),
                    bias=torch.tensor(float(rng.choice([0.0, -0.0, rng.standard_normal()]))).float(),
                    feature_ids=torch.tensor(rng.integers(width, size=k), dtype=torch.int64),
                )
        labels = [(f"w{i}", int(rng.integers(26))) for i in range(rows)]
        inputs = (PassThrough(), probe, ksp, labels, acts)
        want = orig(*inputs, eval_batch_size=batch)
        got, rec = _run(ab, orig, inputs, batch)
        _assert_same_bits(got, want)
        assert rec[0]["fast"] is True, rec

    prop()


@pytest.mark.parametrize("op", ["dot", "sum"])
def test_plans_reproduce_torchs_1d_ops_on_other_data(ab, op):
    """For every width 1..16 the chosen plan (or the row-by-row path where none is found, and for comparison
    always) gives, bit for bit, the 1-D torch op SAEBench runs (``x[ids] @ w``, ``x[ids].sum()``) on data drawn
    apart from the calibration's, including rows that are all zeros, of one sign, or cancel."""
    rng = np.random.default_rng(99)
    for n in range(1, 17):
        plan = ab.reduction_plan(op, n)
        for trial in range(6):
            rows = 400
            x = _special_values(rng, (rows, n))
            if trial == 3:
                x[::5] = 0.0  # all-zero rows
            if trial == 4:
                x = np.abs(x)  # non-negative: ReLU / TopK activations
            if trial == 5:
                x = rng.standard_normal((rows, n)).astype(np.float32)  # one scale, cancellations
            w = torch.tensor(rng.standard_normal(n) * np.exp(rng.normal(0, 1, n))).float()
            src = torch.from_numpy(x)
            ids = torch.arange(n)
            want = np.array([(src[r][ids] @ w if op == "dot" else src[r][ids].sum()).item() for r in range(rows)])
            want = want.astype(np.float32).view(np.int32)
            for p in {plan, None}:
                got = ab.batched_reduction(op, p, np.ascontiguousarray(x), w if op == "dot" else None)
                assert got.dtype == np.float32 and np.array_equal(got.view(np.int32), want), (op, n, p, trial)


def test_fma32_is_correctly_rounded(ab):
    """``_fma32`` against exact rational arithmetic, including sums that land next to a float32 rounding midpoint
    (where rounding the float64 sum to float32 again would be wrong)."""
    from fractions import Fraction

    rng = np.random.default_rng(7)
    x = _special_values(rng, (3000,))
    w = _special_values(rng, (3000,))
    c = _special_values(rng, (3000,))
    # hard cases: c a float32, x * w a tiny exact addend at half an ulp of c (+- a little)
    c[:300] = np.float32(1.0) + np.float32(2**-23) * rng.integers(0, 8, 300)
    x[:300] = np.float32(2**-24)
    w[:300] = (np.float32(1) + np.float32(2**-23) * rng.choice([-1, 0, 1], 300)).astype(np.float32)
    got = ab._fma32(x, w, c)

    def exact(a: float, b: float, d: float) -> np.float32:
        v = Fraction(a) * Fraction(b) + Fraction(d)
        f = np.float32(float(v))
        nbrs = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
        best = min(nbrs, key=lambda y: (abs(Fraction(float(y)) - v), int(np.float32(y).view(np.int32)) & 1))
        return np.float32(best) if v != 0 else np.float32(float(np.float32(a) * np.float32(b) + np.float32(d)))

    for i in range(len(x)):
        want = exact(float(x[i]), float(w[i]), float(c[i]))
        if want != 0:  # a zero's sign is left to the 1-D op (batched_reduction recomputes zeros)
            assert got[i].view(np.int32) == want.view(np.int32), (i, x[i], w[i], c[i], got[i], want)


def _perturb(df: pd.DataFrame, col: str, row: int) -> None:
    """One value of ``df`` changed as little as its kind allows (one ulp of the float32 held, an array's first
    element by one ulp, a string's last character)."""
    values, dtype = df[col].tolist(), df[col].dtype
    v = values[row]
    if isinstance(v, np.ndarray):
        v = v.copy()
        v[0] = np.nextafter(v[0], np.float32(np.inf))
    elif isinstance(v, float):
        v = float(np.nextafter(np.float32(v), np.float32(np.inf)))
    else:
        v = v[:-1] + ("x" if v[-1] != "x" else "y")
    values[row] = v
    col_values = np.empty(len(values), dtype=object)
    for i, u in enumerate(values):
        col_values[i] = u
    df[col] = pd.Series(col_values, index=df.index, dtype=dtype)


@pytest.mark.parametrize(
    ("col", "row"),
    [
        ("score_sparse_sae_c_k_3", 0),  # the first batch
        ("sum_sparse_sae_z_k_10", 149),  # a spread row (the last)
        ("score_probe_q", 50),
        ("sparse_sae_m_k_7_acts", 5),
        ("token", 1),
        ("answer_letter", 2),
    ],
)
def test_the_check_catches_a_changed_value_and_falls_back(ab, orig, monkeypatch, col, row):
    """A batched result one ulp (or one character) off in a checked row: the check finds it, the result is
    SAEBench's own and the record says so (which column and row)."""
    inputs = _inputs("topk", 150, seed=11)
    want = orig(*inputs, eval_batch_size=24)
    real = ab._batched_scores

    def off_by_one(*a: Any, **k: Any) -> Any:
        df, check = real(*a, **k)
        _perturb(df, col, row)
        return df, check

    monkeypatch.setattr(ab, "_batched_scores", off_by_one)
    calls = []

    def counted(*a: Any, **k: Any) -> Any:
        calls.append(len(a[3]))
        return orig(*a, **k)

    got, rec = _run(ab, counted, inputs, 24, check_first=8, check_spread=4)
    _assert_same_bits(got, want)
    assert rec[0]["fast"] is False and rec[0]["checked_rows"] == 8 + 4 - 1, rec  # rows 0..7 and 0, 50, 99, 149
    assert rec[0]["mismatch"].startswith(f"{col} row ") and "SAEBench" in rec[0]["mismatch"], rec
    assert calls == [11, 150]  # the check's replay of the sampled rows, then SAEBench's function on all


@pytest.mark.parametrize("op", ["dot", "sum"])
def test_a_one_ulp_change_in_a_reduction_is_caught(ab, orig, monkeypatch, op):
    """The batched dot (of a probe whose bias is 0, so that the ulp survives the addition) or sum one ulp off for
    one row of the first batch: caught, and SAEBench's result returned instead."""
    inputs = _inputs("passthrough", 100, seed=2)
    inputs[2][4][0].bias = torch.tensor(0.0)
    want = orig(*inputs, eval_batch_size=24)
    for n in range(1, 11):  # the plans calibrated before the change (the calibration runs batched_reduction too)
        ab.reduction_plan(op, n)
    real = ab.batched_reduction
    hit = []

    def off(op_: str, plan: Any, a: Any, w_t: Any = None) -> Any:
        out = real(op_, plan, a, w_t)
        if op_ == op and plan is not None and a.shape[1] == 4 and not hit:  # letter a, k 4 (not a recomputation)
            hit.append(True)
            out = out.copy()
            out[3] = np.nextafter(out[3], np.float32(np.inf))
        return out

    monkeypatch.setattr(ab, "batched_reduction", off)
    got, rec = _run(ab, orig, inputs, 24)
    _assert_same_bits(got, want)
    col = "score_sparse_sae_a_k_4" if op == "dot" else "sum_sparse_sae_a_k_4"
    assert hit and rec[0]["fast"] is False and rec[0]["mismatch"].startswith(f"{col} row 3"), rec


def test_another_order_of_operations_is_caught(ab, orig, monkeypatch):
    """What another machine's BLAS would do if the calibration chose wrongly: the dots of k >= 4 summed in another
    order (neighbouring lanes first) or left to right. The run-time check sees the difference and SAEBench's
    function gives the result."""
    inputs = _inputs("topk", 200, seed=6, ks=[4, 6, 9])
    want = orig(*inputs, eval_batch_size=24)
    for wrong in ("lanes4_lane0_+_+_pairs", "seq"):
        monkeypatch.setattr(ab, "reduction_plan", lambda op, n, w=wrong: w if op == "dot" else "torch")
        got, rec = _run(ab, orig, inputs, 24)
        _assert_same_bits(got, want)
        assert rec[0]["fast"] is False and rec[0]["mismatch"].startswith("score_sparse_sae_"), rec
        assert rec[0]["plans"]["dot"] == {"4": wrong, "6": wrong, "9": wrong}


def test_errors_and_unsupported_inputs_fall_back(ab, orig, monkeypatch):
    """An error inside the batched path, probes it does not take, no rows, or the switch: SAEBench's function,
    with the reason recorded."""
    inputs = _inputs("topk", 40, seed=4, ks=[1, 2])
    want = orig(*inputs, eval_batch_size=8)

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("boom")

    with monkeypatch.context() as m:
        m.setattr(ab, "_batched_scores", boom)
        got, rec = _run(ab, orig, inputs, 8)
    _assert_same_bits(got, want)
    assert rec[0] == {"fast": False, "rows": 40, "error": "RuntimeError: boom"}
    sae, probe, ksp, labels, acts = inputs
    ksp[2][5].bias = ksp[2][5].bias.double()  # SAEBench: a float64 score there; the batched path: not taken
    got, rec = _run(ab, orig, (sae, probe, ksp, labels, acts), 8)
    pd.testing.assert_frame_equal(got, orig(sae, probe, ksp, labels, acts, eval_batch_size=8), check_exact=True)
    assert rec[0]["fast"] is False and "k 2 letter 5" in rec[0]["reason"], rec
    got, rec = _run(ab, orig, (sae, probe, ksp, [], acts[:0]), 8)
    assert got.empty and rec[0] == {"fast": False, "reason": "no rows"}
    got, rec = _run(ab, orig, _inputs("topk", 40, seed=4, ks=[1, 2]), 8, original=True)
    _assert_same_bits(got, want)
    assert rec[0]["fast"] is False and "forced" in rec[0]["reason"]


def test_offline_absorption_swaps_the_scoring_and_restores_it(ab, tmp_path, monkeypatch):
    """Inside the stage's context SAEBench's module calls the batched scoring (which uses SAEBench's function for
    its check, with SAEBench's ``_get_sae_acts`` in place, not the k-sparse cache) and records per call;
    ``SAE_RDP_ABSORPTION_SCORING=saebench`` or ``fast_scoring=False``: SAEBench's function runs (recorded as forced);
    afterwards SAEBench's function is back."""
    import types

    import sae_bench.evals.absorption.k_sparse_probing as ksp

    orig_fn, orig_acts = ksp.eval_probe_and_sae_k_sparse_raw_scores, ksp._get_sae_acts
    model = types.SimpleNamespace(tokenizer=types.SimpleNamespace(padding_side="right"))
    inputs = _inputs("jumprelu", 60, seed=8, ks=[1, 3])
    want = orig_fn(*inputs, eval_batch_size=24)
    cases = [
        (None, {}, True),
        ("saebench", {}, False),
        ("SaeBench ", {}, False),
        (None, {"fast_scoring": False}, False),
        ("x", {}, True),
    ]
    for env, kw, fast in cases:
        if env is None:
            monkeypatch.delenv(ab.SCORING_ENV, raising=False)
        else:
            monkeypatch.setenv(ab.SCORING_ENV, env)
        rec: list[dict] = []
        seen_acts = []

        def spy(*a: Any, **k: Any) -> Any:
            seen_acts.append(ksp._get_sae_acts)
            return orig_fn(*a, **k)

        monkeypatch.setattr(ksp, "eval_probe_and_sae_k_sparse_raw_scores", spy)
        with ab.offline_absorption(model, "m", tmp_path / "w", scoring_stats=rec.append, **kw):
            assert isinstance(ksp._get_sae_acts, ab.CachedSaeActs)
            got = ksp.eval_probe_and_sae_k_sparse_raw_scores(
                inputs[0], inputs[1], k_sparse_probes=inputs[2], eval_labels=inputs[3], eval_activations=inputs[4],
                eval_batch_size=24,
            )  # fmt: skip
        assert ksp.eval_probe_and_sae_k_sparse_raw_scores is spy and ksp._get_sae_acts is orig_acts
        _assert_same_bits(got, want)
        assert len(rec) == 1 and rec[0]["fast"] is fast, (env, kw, rec)
        if fast:  # the check's replay: SAEBench's function, SAEBench's _get_sae_acts
            assert seen_acts == [orig_acts] and rec[0]["mismatch"] is None
        else:
            assert len(seen_acts) == 1 and "forced" in rec[0]["reason"]


def test_stage_gives_saebenchs_jsons_and_parquet_files(tmp_path, monkeypatch):
    """The whole absorption stage on the tiny model (3 SAEs, in process): with the batched scoring (recorded per SAE
    as fast, every test word checked) and with ``SAE_RDP_ABSORPTION_SCORING=saebench`` (SAEBench's scoring), the
    same JSONs (all fields but the run's uuid and time) and the same k-sparse probing parquet files, byte for
    byte."""
    import json

    monkeypatch.syspath_prepend(str(EXP))
    rs = importlib.import_module("run_stage")
    ab = importlib.import_module("absorption_stage")
    from test_table2_evals import _absorption_setup

    t = _absorption_setup(rs, tmp_path)
    cfg = {"min_GT_probe_f1": 0.0, "k_sparse_probe_num_epochs": 2, "max_k_value": 4, "min_feats_for_eval": 2}

    def run(name: str) -> tuple[list[dict], dict[str, bytes], dict]:
        dest = tmp_path / name
        items = [rs.probe_item(s, p, step, dest, "cpu") for s, p, step in t.trained]
        rec = ab.run_absorption(
            t.hooked, "tiny-gpt2", items, tmp_path / f"w_{name}", time.time() + 600, "cpu", config=cfg,
            log=lambda m: None, inline=True,
        )  # fmt: skip
        assert rec["complete"] and len(rec["evaluated"]) == 3, rec
        jsons = []
        for f in sorted(dest.glob("*.json")):
            d = json.loads(f.read_text())
            del d["eval_id"], d["datetime_epoch_millis"]
            jsons.append(d)
        root = tmp_path / f"w_{name}" / "results"
        files = {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*.parquet"))}
        return jsons, files, rec

    monkeypatch.delenv(ab.SCORING_ENV, raising=False)
    monkeypatch.delenv(ab.ABSORPTION_WORDS_ENV, raising=False)
    fast_jsons, fast_files, fast_rec = run("batched")
    monkeypatch.setenv(ab.SCORING_ENV, "saebench")
    monkeypatch.setenv(ab.ABSORPTION_WORDS_ENV, "saebench")
    orig_jsons, orig_files, orig_rec = run("saebench")
    assert len(fast_jsons) == 3 and fast_jsons == orig_jsons
    # per SAE the k-sparse raw results, metadata and metrics, and the absorption experiment's words
    assert len(fast_files) == 12 and fast_files == orig_files
    assert sum("absorption" in f for f in fast_files) == 3, sorted(fast_files)
    # the absorption experiment read its words from host copies, checked per SAE; timed in two parts
    assert sorted(fast_rec["absorption_words"]) == sorted(fast_rec["sae_s"]) == sorted(orig_rec["absorption_words"])
    assert all(i == {"host_batches": False, "reason": "forced"} for i in orig_rec["absorption_words"].values())
    assert fast_rec["threads_per_worker"] == orig_rec["threads_per_worker"] == ab.WORKER_THREADS
    for sae, info in fast_rec["absorption_words"].items():
        assert info["host_batches"] is True and info["checked_words"] > 0 and "mismatch" not in info, info
        parts = fast_rec["sae_parts_s"][sae]
        assert {"absorption_experiment.forward", "absorption_experiment.words"} <= set(parts), parts
    assert all("absorption_experiment.words" not in p for p in orig_rec["sae_parts_s"].values())
    assert sorted(fast_rec["ksp_scoring"]) == sorted(fast_rec["sae_s"])
    for info in fast_rec["ksp_scoring"].values():
        assert info["fast"] is True and info["mismatch"] is None and info["checked_rows"] == info["rows"], info
    assert all(i["fast"] is False and "forced" in i["reason"] for i in orig_rec["ksp_scoring"].values())


@pytest.mark.slow
def test_scoring_timing(ab, orig, capsys):
    """SAEBench's scoring vs the batched one (its calibration, once per process, and its check included) at a
    realistic size: 5,000 words, 26 letters, k 1..10, a TopK SAE of 2,048 latents, batches of 1024 (the stage's).
    Printed, not asserted (``-m slow``)."""
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    sae = TopKSAE(TopKSAEConfig(d_in=64, d_sae=2048, k=32))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    probe, ksp = _probes(2048, list(range(1, 11)), rng, 64)
    labels = [(f"w{i}", int(rng.integers(26))) for i in range(5000)]
    acts = torch.randn(5000, 64) * 2
    ab.reduction_plan.cache_clear()
    t = time.perf_counter()
    want = orig(sae, probe, ksp, labels, acts, eval_batch_size=1024)
    t_orig = time.perf_counter() - t
    t = time.perf_counter()
    got, rec = _run(ab, orig, (sae, probe, ksp, labels, acts), 1024)
    t_fast = time.perf_counter() - t
    _assert_same_bits(got, want)
    assert rec[0]["fast"] is True
    with capsys.disabled():
        print(
            f"\nk-sparse scoring, 5000 words x 26 letters x k 1..10, CPU ({torch.get_num_threads()} threads): "
            f"SAEBench {t_orig:.1f} s, batched {t_fast:.2f} s (of which the check {rec[0]['check_s']:.2f} s on "
            f"{rec[0]['checked_rows']} rows), ratio {t_orig / t_fast:.0f}x"
        )
