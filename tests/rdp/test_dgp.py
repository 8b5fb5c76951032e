"""Tests of the data-generating process: sampled statistics against exact values (independent
references: brute-force sums over the table, closed forms), JSON round trip, and every bad input."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.rdp.dgp import (
    DGP,
    BernoulliPMF,
    CooccurringBlocksPMF,
    CorrelatedPMF,
    ExplicitPMF,
    concepts_from_feature_dictionary,
    cooccurring_pairs,
    orthonormal_concepts,
    random_unit_concepts,
)

N = 200_000


def _brute_stats(table: dict, m: int):
    """Independent reference: marginals / co-occurrence / E|S| by a plain loop over the table."""
    marg = np.zeros(m)
    co = np.zeros((m, m))
    es = 0.0
    for s, p in table.items():
        for i in s:
            marg[i] += p
            for j in s:
                co[i, j] += p
        es += p * len(s)
    return marg, co, es


def _assert_close_stat(est: np.ndarray, exact: np.ndarray, n: int, z: float = 5.0):
    se = np.sqrt(np.clip(exact * (1 - exact), 1e-12, None) / n)
    assert np.all(np.abs(est - exact) <= z * se + 1e-9), (est, exact)


def _sample_stats(pmf, n=N, seed=0):
    a = pmf.sample(n, generator=torch.Generator().manual_seed(seed)).double()
    assert a.dtype == torch.float64 and a.shape == (n, pmf.m)
    co = (a.T @ a / n).numpy()
    return np.diag(co).copy(), co


EXPLICIT = {"concepts": 3, "pmf": {"": 0.1, "0": 0.25, "1": 0.05, "2": 0.1, "0,1": 0.3, "0,1,2": 0.2}}


def test_concepts_shapes_and_orthonormality():
    v = orthonormal_concepts(5, 12, seed=3, dtype=torch.float64)
    assert v.shape == (5, 12)
    assert torch.allclose(v @ v.T, torch.eye(5, dtype=torch.float64), atol=1e-12)
    assert not torch.equal(v, orthonormal_concepts(5, 12, seed=4, dtype=torch.float64))
    u = random_unit_concepts(20, 4, seed=1)
    assert u.shape == (20, 4) and torch.allclose(u.norm(dim=1), torch.ones(20), atol=1e-6)
    with pytest.raises(SaeRdpError, match="d >= m"):
        orthonormal_concepts(5, 3)


def test_concepts_from_feature_dictionary():
    from sae_lens.synthetic import FeatureDictionary

    fd = FeatureDictionary(6, 16, seed=0, initializer=None)
    v = concepts_from_feature_dictionary(fd)
    assert v.shape == (6, 16)
    ref = fd.feature_vectors.detach() / fd.feature_vectors.detach().norm(dim=1, keepdim=True)
    assert torch.allclose(v, ref, atol=1e-6)
    fdb = FeatureDictionary(6, 16, bias=True, seed=0, initializer=None)
    with pytest.raises(SaeRdpError, match="bias"):
        concepts_from_feature_dictionary(fdb)


@pytest.mark.parametrize(
    "pmf",
    [
        ExplicitPMF.from_json(EXPLICIT),
        BernoulliPMF([0.1, 0.5, 0.3, 0.9]),
        CooccurringBlocksPMF(5, [(0, 1), (2, 3, 4)], q=[0.1, 0.2, 0.05, 0.3, 0.15], rho=0.35),
        cooccurring_pairs(4, rho=0.4, q=0.1, base="exclusive"),
    ],
    ids=["explicit", "bernoulli", "blocks", "pairs-exclusive"],
)
def test_exact_stats_match_table_and_samples(pmf):
    tab = pmf.table()
    assert abs(sum(tab.values()) - 1) < 1e-12
    marg, co, es = _brute_stats(tab, pmf.m)
    assert np.allclose(pmf.marginals(), marg, atol=1e-12)
    assert np.allclose(pmf.cooccurrence(), co, atol=1e-12)
    assert abs(pmf.expected_size() - es) < 1e-12
    sm, sco = _sample_stats(pmf)
    _assert_close_stat(sm, marg, N)
    _assert_close_stat(sco, co, N)
    # full distribution of active sets: chi-square-like check per set
    a = pmf.sample(N, generator=torch.Generator().manual_seed(1)).numpy()
    codes = (a * (1 << np.arange(pmf.m))).sum(1)
    counts = np.bincount(codes, minlength=2**pmf.m) / N
    for s, p in tab.items():
        code = sum(1 << i for i in s)
        _assert_close_stat(np.array([counts[code]]), np.array([p]), N)
    support_codes = {sum(1 << i for i in s) for s, p in tab.items() if p > 0}
    assert set(np.flatnonzero(counts)) <= support_codes


def test_blocks_closed_forms_by_hand():
    # m=3, one block {0,1}, q=0.2 independent, rho=0.5
    p = CooccurringBlocksPMF(3, [(0, 1)], q=0.2, rho=0.5)
    assert np.allclose(p.marginals(), [0.5 + 0.1, 0.6, 0.1])
    assert np.isclose(p.cooccurrence()[0, 1], 0.5 + 0.5 * 0.04)
    assert np.isclose(p.cooccurrence()[0, 2], 0.5 * 0.04)
    # rho = 0 with the exclusive base: no co-occurrence at all
    ex = cooccurring_pairs(4, rho=0.0, q=0.2, base="exclusive")
    co = ex.cooccurrence()
    assert np.allclose(co - np.diag(np.diag(co)), 0)
    assert np.allclose(cooccurring_pairs(4, rho=0.0, q=0.2).cooccurrence(), BernoulliPMF([0.2] * 4).cooccurrence())


def test_bernoulli_closed_form_large_m_and_size_distribution():
    q = np.linspace(0.01, 0.5, 40)
    p = BernoulliPMF(q)
    assert np.allclose(p.marginals(), q)
    assert np.isclose(p.expected_size(), q.sum())
    with pytest.raises(SaeRdpError, match="m <= 20"):
        p.table()
    small = BernoulliPMF([0.3, 0.6])
    # Pr[|S|=k] by hand
    assert np.allclose(small.size_distribution(), [0.7 * 0.4, 0.3 * 0.4 + 0.7 * 0.6, 0.18])


def test_correlated_pmf_estimates():
    from sae_lens.synthetic import create_correlation_matrix_from_correlations
    from scipy.stats import multivariate_normal, norm

    probs = [0.2, 0.3, 0.1]
    corr = create_correlation_matrix_from_correlations(3, {(0, 1): 0.6, (1, 2): -0.3})
    p = CorrelatedPMF(probs, corr, n_estimate=100_000, seed=0)
    assert not p.exact
    _assert_close_stat(p.marginals(), np.array(probs), 100_000)
    # exact bivariate-normal orthant probability for the pair (0, 1), via scipy
    t = norm.ppf(1 - np.array(probs))
    exact01 = multivariate_normal(mean=[0, 0], cov=[[1, 0.6], [0.6, 1]]).cdf(-t[:2])
    _assert_close_stat(np.array([p.cooccurrence()[0, 1]]), np.array([exact01]), 100_000)
    # reproducible with a generator; global RNG untouched
    g1 = p.sample(100, generator=torch.Generator().manual_seed(5))
    state = torch.random.get_rng_state()
    g2 = p.sample(100, generator=torch.Generator().manual_seed(5))
    assert torch.equal(g1, g2) and torch.equal(state, torch.random.get_rng_state())
    with pytest.raises(NotImplementedError):
        p.table()
    with pytest.raises(SaeRdpError, match="correlation"):
        CorrelatedPMF(probs, torch.ones(3, 3) * 2)


def test_dgp_sample_binary_and_magnitudes():
    v = orthonormal_concepts(4, 10, dtype=torch.float64)
    pmf = BernoulliPMF([0.5, 0.2, 0.7, 0.1])
    x, a = DGP(v, pmf).sample(1000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (1000, 10) and a.shape == (1000, 4) and a.dtype == torch.bool
    # binary: coordinates in the concept basis are exactly the indicator of S
    assert torch.allclose(x @ v.T, a.double(), atol=1e-12)
    x2, a2 = DGP(v, pmf, magnitude="uniform", magnitude_range=(0.5, 1.5)).sample(2000)
    c = x2 @ v.T
    assert torch.all((c[a2] >= 0.5 - 1e-9) & (c[a2] <= 1.5 + 1e-9)) and bool((c[~a2].abs() < 1e-9).all())
    x3, _ = DGP(v, pmf, noise_std=0.1).sample(5000, generator=torch.Generator().manual_seed(1))
    resid = x3 - (x3 @ v.T) @ v  # noise component orthogonal to the concepts
    assert abs(resid.pow(2).sum(1).mean().item() - 0.01 * 6) < 0.01
    for mag in ("exponential", "lognormal"):
        xm, am = DGP(v, pmf, magnitude=mag).sample(100)
        assert torch.isfinite(xm).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_sampling_on_cuda():
    pmf = cooccurring_pairs(4, 0.3)
    a = pmf.sample(10, device="cuda")
    assert a.device.type == "cuda"
    x, a = DGP(orthonormal_concepts(4, 8), pmf).sample(10, device="cuda")
    assert x.device.type == "cuda"


def test_json_round_trip(tmp_path):
    pmf = CooccurringBlocksPMF(4, [(0, 1, 2)], q=[0.1, 0.2, 0.3, 0.4], rho=0.25)
    path = tmp_path / "p.json"
    pmf.to_json(path)
    back = ExplicitPMF.from_json(path)
    t0, t1 = pmf.table(), back.table()
    assert set(t0) == set(t1) and all(abs(t0[s] - t1[s]) < 1e-15 for s in t0)
    assert json.loads(path.read_text())["concepts"] == 4
    again = ExplicitPMF.from_json(back.to_json())
    assert again.table() == back.table()


def _write(tmp_path, obj, name="bad.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


BAD = [
    ({"concepts": 2, "pmf": {"": 0.5, "0": -0.1, "1": 0.6}}, "negative probability"),
    ({"concepts": 2, "pmf": {"": 0.5, "0": 0.4}}, "sum to"),
    ({"concepts": 2, "pmf": {"": 0.5, "0": 0.5 + 1e-8}}, "sum to"),
    ({"concepts": 2, "pmf": {"": 0.5, "2": 0.5}}, "out of range"),
    ({"concepts": 2, "pmf": {"0,1": 0.5, "1,0": 0.5}}, "duplicate set"),
    ({"concepts": 2, "pmf": {"0,0": 1.0}}, "repeats concept 0"),
    ({"concepts": 2, "pmf": {"a": 1.0}}, "malformed PMF key"),
    ({"concepts": 2, "pmf": {"0;1": 1.0}}, "malformed PMF key"),
    ({"concepts": 2, "pmf": {"-1": 1.0}}, "malformed PMF key"),
    ({"concepts": 2, "pmf": {"0,": 1.0}}, "malformed PMF key"),
    ({"pmf": {"": 1.0}}, "missing 'concepts'"),
    ({"concepts": 0, "pmf": {"": 1.0}}, "positive integer"),
    ({"concepts": "3", "pmf": {"": 1.0}}, "positive integer"),
    ({"concepts": 2.0, "pmf": {"": 1.0}}, "positive integer"),
    ({"concepts": True, "pmf": {"": 1.0}}, "positive integer"),
    ({"concepts": 2}, "missing 'pmf'"),
    ({"concepts": 2, "pmf": [0.5, 0.5]}, "must be an object"),
    ({"concepts": 2, "pmf": {"": "0.5", "0": 0.5}}, "must be a number"),
    ([1, 2], "must be an object"),
]


@pytest.mark.parametrize("obj,msg", BAD)
def test_bad_pmf_inputs(tmp_path, obj, msg):
    with pytest.raises(SaeRdpError, match=msg) as ei:
        ExplicitPMF.from_json(_write(tmp_path, obj))
    assert "\n" not in str(ei.value)


def test_bad_pmf_files(tmp_path):
    with pytest.raises(SaeRdpError, match="not found"):
        ExplicitPMF.from_json(tmp_path / "nope.json")
    with pytest.raises(SaeRdpError, match="malformed JSON"):
        ExplicitPMF.from_json(_write(tmp_path, "{not json"))
    with pytest.raises(SaeRdpError, match="duplicate key"):
        ExplicitPMF.from_json(_write(tmp_path, '{"concepts": 1, "pmf": {"0": 0.5, "0": 0.5}}'))
    with pytest.raises(SaeRdpError, match="not finite"):
        ExplicitPMF.from_json(_write(tmp_path, '{"concepts": 1, "pmf": {"0": NaN}}'))


def test_bad_constructor_inputs():
    v = orthonormal_concepts(3, 5)
    with pytest.raises(SaeRdpError, match="shape mismatch"):
        DGP(v, BernoulliPMF([0.1, 0.2]))
    with pytest.raises(SaeRdpError, match="unknown magnitude"):
        DGP(v, BernoulliPMF([0.1] * 3), magnitude="gaussian")
    with pytest.raises(SaeRdpError, match="noise_std"):
        DGP(v, BernoulliPMF([0.1] * 3), noise_std=-1.0)
    with pytest.raises(SaeRdpError, match="NaN"):
        DGP(v * float("nan"), BernoulliPMF([0.1] * 3))
    with pytest.raises(SaeRdpError, match=r"\[0, 1\]"):
        BernoulliPMF([0.1, 1.5])
    with pytest.raises(SaeRdpError, match="rho"):
        CooccurringBlocksPMF(3, [(0, 1)], rho=1.2)
    with pytest.raises(SaeRdpError, match="out of range"):
        CooccurringBlocksPMF(3, [(0, 3)], rho=0.2)
    with pytest.raises(SaeRdpError, match="sum\\(q\\) <= 1"):
        CooccurringBlocksPMF(3, [(0, 1)], q=0.5, rho=0.2, base="exclusive")
    with pytest.raises(SaeRdpError, match="index"):
        ExplicitPMF(2, {(0, 5): 1.0})
    with pytest.raises(SaeRdpError, match="duplicate set"):
        ExplicitPMF(2, {(0, 1): 0.5, (1, 0): 0.5})


def test_all_subsets_enumeration_is_complete():
    # BernoulliPMF's table covers every subset exactly once (2^m entries when 0 < q < 1)
    p = BernoulliPMF([0.3, 0.4, 0.5])
    assert set(p.table()) == {frozenset(c) for r in range(4) for c in itertools.combinations(range(3), r)}


@pytest.mark.parametrize("obj,msg", BAD[:8])
def test_cli_bad_pmf_exits_nonzero_one_line(tmp_path, capsys, obj, msg):
    from sae_rdp_plugin.cli import main

    out = tmp_path / "out.json"
    rc = main(
        ["theory", "frontier", "--pmf", str(_write(tmp_path, obj)), "--width", "2", "--k", "1", "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert not out.exists()
