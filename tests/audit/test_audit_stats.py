"""Definitions 3 and 4 (THEORY.md section 6) against brute-force O(N^2) references."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from sae_rdp_plugin.audit.stats import (
    audit_proxy,
    dominated_pairs,
    orientation_of,
    parse_proxy_spec,
    rdp_rank_correlation,
    violation_rate,
)
from sae_rdp_plugin.errors import SaeRdpError


def brute_v(r, d, p, tie=0.5):
    num, den = 0.0, 0
    for i, j in itertools.permutations(range(len(r)), 2):
        if r[i] <= r[j] and d[i] <= d[j] and (r[i], d[i]) != (r[j], d[j]):
            den += 1
            if p[i] < p[j]:
                num += 1
            elif p[i] == p[j]:
                num += tie
    return num / den if den else None


def brute_rho(r, d, p):
    def avg_rank(x):
        x = list(x)
        return [sum(1 for y in x if y < v) + (sum(1 for y in x if y == v) + 1) / 2 for v in x]

    b = [a + c for a, c in zip(avg_rank(r), avg_rank(d))]
    return -spearmanr(b, p).statistic


small = st.integers(0, 4)  # small integer grids force ties in R, D and Pi


@st.composite
def sweeps(draw):
    n = draw(st.integers(2, 9))
    rows = draw(st.lists(st.tuples(small, small, small), min_size=n, max_size=n, unique=True))
    r, d, p = (np.array(c, dtype=float) for c in zip(*rows))
    return r, d, p


@settings(max_examples=200, deadline=None)
@given(sweeps(), st.sampled_from([0.0, 0.5, 1.0]))
def test_violation_rate_matches_brute_force(sw, tie):
    r, d, p = sw
    ref = brute_v(r, d, p, tie)
    if ref is None:
        with pytest.raises(SaeRdpError, match="no dominated pairs"):
            violation_rate(r, d, p, tie_weight=tie)
    else:
        assert violation_rate(r, d, p, tie_weight=tie) == pytest.approx(ref, abs=1e-12)
        assert len(dominated_pairs(r, d)) == sum(
            1
            for i, j in itertools.permutations(range(len(r)), 2)
            if r[i] <= r[j] and d[i] <= d[j] and (r[i], d[i]) != (r[j], d[j])
        )


@settings(max_examples=200, deadline=None)
@given(sweeps())
def test_rank_correlation_matches_scipy(sw):
    r, d, p = sw
    ref = brute_rho(r, d, p)
    if np.isnan(ref):  # undefined (constant ranks): an error, as violation_rate without dominated pairs
        with pytest.raises(SaeRdpError, match="is constant across"):
            rdp_rank_correlation(r, d, p)
    else:
        assert rdp_rank_correlation(r, d, p) == pytest.approx(ref, abs=1e-12)


def _chain(n=12, seed=0):
    rng = np.random.default_rng(seed)
    r = np.sort(rng.random(n))
    d = np.sort(rng.random(n))  # every pair comparable: i < j dominates
    return r, d


def test_known_cases():
    r, d = _chain()
    faithful = -np.arange(12.0)  # tighter budget (smaller index) -> more polysemantic
    assert violation_rate(r, d, faithful) == 0.0
    assert rdp_rank_correlation(r, d, faithful) == pytest.approx(1.0)
    assert violation_rate(r, d, -faithful) == 1.0
    assert rdp_rank_correlation(r, d, -faithful) == pytest.approx(-1.0)
    # random proxies average to 0.5 / 0
    rng = np.random.default_rng(1)
    vs = [violation_rate(r, d, rng.random(12)) for _ in range(400)]
    assert abs(np.mean(vs) - 0.5) < 0.02
    # all ties -> exactly the tie weight
    assert violation_rate(r, d, np.zeros(12)) == 0.5
    assert violation_rate(r, d, np.zeros(12), tie_weight=0.0) == 0.0
    # rho of a constant proxy is undefined: an error, as V is without dominated pairs
    with pytest.raises(SaeRdpError, match="the proxy is constant"):
        rdp_rank_correlation(r, d, np.zeros(12))


def test_ties_in_rate_and_distortion():
    # equal rate, lower distortion dominates; identical (R, D) is not a pair
    r = [1.0, 1.0, 1.0]
    d = [0.1, 0.2, 0.2]
    p = [5.0, 1.0, 3.0]
    # pairs: (0,1), (0,2); (1,2) have equal (R, D) -> no pair
    assert len(dominated_pairs(r, d)) == 2
    assert violation_rate(r, d, p) == 0.0
    assert violation_rate(r, d, [0.0, 1.0, 3.0]) == 1.0


def test_audit_intervals_and_pvalues():
    r, d = _chain(15)
    res = audit_proxy(r, d, -np.arange(15.0), n_boot=500, n_perm=500, seed=3)
    assert res.violation_rate == 0 and res.rank_correlation == pytest.approx(1)
    assert res.violation_rate_ci[1] <= 0.01 and res.rank_correlation_ci[0] > 0.9
    assert res.p_value_violation < 0.01 and res.verdict() == "faithful"
    res2 = audit_proxy(r, d, -np.arange(15.0), n_boot=500, n_perm=500, seed=3)
    assert res2.to_dict() == res.to_dict()  # seeded


def test_permutation_pvalue_calibration():
    """Under the null (Pi independent of (R, D)) the p-values are roughly uniform."""
    rng = np.random.default_rng(0)
    ps = []
    for t in range(150):
        r, d = rng.random(10), rng.random(10)
        pv = audit_proxy(r, d, rng.random(10), n_boot=0, n_perm=199, seed=t)
        ps.append(pv.p_value_violation)
    ps = np.array(ps)
    assert 0.03 <= np.mean(ps < 0.1) <= 0.2
    assert 0.35 <= np.mean(ps < 0.5) <= 0.65
    assert ps.min() >= 1 / 200


@pytest.mark.parametrize(
    "args,match",
    [
        (([1.0], [1.0], [1.0]), "at least 2"),
        (([1.0, 2.0], [1.0, 2.0], [1.0]), "mismatched lengths"),
        (([1.0, np.nan], [1.0, 2.0], [1.0, 2.0]), "NaN"),
        (([1.0, 2.0], [2.0, 1.0], [1.0, 2.0]), "no dominated pairs"),
        (([1.0, 1.0, 2.0], [1.0, 1.0, 2.0], [3.0, 3.0, 1.0]), "duplicate SAE"),
    ],
)
def test_errors(args, match):
    with pytest.raises(SaeRdpError, match=match):
        violation_rate(*args)
    with pytest.raises(SaeRdpError, match=match):
        audit_proxy(*args, n_boot=10, n_perm=10)


def test_duplicate_names():
    with pytest.raises(SaeRdpError, match="duplicate SAE 'a'"):
        violation_rate([1, 2], [1, 2], [1, 2], names=["a", "a"])


def test_orientation_table():
    assert orientation_of("sparse_probing.sae.sae_top_1_test_accuracy").sign == -1
    assert orientation_of("absorption_first_letter.mean.mean_absorption_fraction_score").sign == +1
    assert orientation_of("autointerp.autointerp.autointerp_score").sign == -1
    assert orientation_of("core.model_performance_preservation.ce_loss_score").role == "control"
    assert orientation_of("tpp.tpp_metrics.tpp_threshold_10_unintended_diff_only").sign == +1
    with pytest.raises(SaeRdpError, match="unknown metric"):
        orientation_of("my_eval.cat.score")
    with pytest.raises(SaeRdpError, match="not an SAE polysemanticity proxy"):
        orientation_of("sparse_probing.llm.llm_test_accuracy")
    # SAEBench's sae-probes variant reads as sparse probing does
    assert orientation_of("sparse_probing_sae_probes.sae.sae_top_1_test_accuracy").sign == -1
    with pytest.raises(SaeRdpError, match="not an SAE polysemanticity proxy"):
        orientation_of("sparse_probing_sae_probes.llm.llm_top_1_test_accuracy")
    assert parse_proxy_spec("x.y:+") == ("x.y", 1)
    assert parse_proxy_spec("x.y:-") == ("x.y", -1)
    assert parse_proxy_spec("x.y") == ("x.y", None)
