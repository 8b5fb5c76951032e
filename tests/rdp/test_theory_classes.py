"""The SAE classes of the exact theory against an independent brute force: the unrestricted class
(``encoders="all"``, the paper's Assumption 4: every encoder S -> T of every dictionary) enumerated
encoder by encoder with numpy outer sums (tests/theory_reference.py), on m = 3, widths 2-3, K = 1-2."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from theory_reference import ref_all_encoders, ref_frontier

from sae_rdp_plugin.rdp.dgp import ExplicitPMF
from sae_rdp_plugin.rdp.theory import (
    best_code_staircase,
    enumerate_class,
    enumerate_codes,
    evaluate_code,
    frontier_summary,
    ids_to_atoms,
    monosemantic_points,
    r_mono,
)

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENC = ["all", "optimal"]
SETS = [frozenset(i for i in range(3) if (b >> i) & 1) for b in range(8)]


@st.composite
def small_pmfs(draw, max_support=5):
    """Three-concept pmfs on at most ``max_support`` sets (the brute force is exponential in the support)."""
    idx = draw(st.lists(st.integers(0, 7), min_size=1, max_size=max_support, unique=True))
    w = draw(st.lists(st.integers(1, 6), min_size=len(idx), max_size=len(idx)))
    return ExplicitPMF(3, {SETS[i]: x / sum(w) for i, x in zip(idx, w)})


def _close(a, b, tol=1e-9):
    return len(a) == len(b) and all(all(abs(x - y) < tol for x, y in zip(u, v)) for u, v in zip(a, b))


@SETTINGS
@given(pmf=small_pmfs(), width=st.integers(2, 3), K=st.integers(1, 2), coef=st.sampled_from(["binary", "nnls"]))
def test_each_dictionary_frontier_and_least_p_equal_bruteforce(pmf, width, K, coef):
    t = enumerate_class(pmf, width, K, "all", coef)
    for di, ids in enumerate(itertools.combinations(range(7), width)):
        ref = ref_frontier(*ref_all_encoders(pmf, ids_to_atoms(ids), K, coef))
        rows = np.flatnonzero(t.dictionary == di)
        got = sorted(zip(t.rate[rows], t.distortion[rows], t.polysemanticity[rows]))
        assert _close(got, ref), (ids_to_atoms(ids), got, ref)
        for i in rows:  # the recorded used atoms are atoms of the dictionary and give the reported P
            used = t.used_atoms(i)
            assert all(a in t.atoms(i) for a in used)
            p_used = np.mean([1 - len(a) ** -0.5 for a in used]) if used else 0.0
            assert abs(p_used - t.polysemanticity[i]) < 1e-12


@SETTINGS
@given(pmf=small_pmfs(), width=st.integers(2, 3), K=st.integers(1, 2))
def test_class_envelope_and_rate_tax_equal_bruteforce(pmf, width, K):
    R, D, P = (
        np.concatenate(x)
        for x in zip(*(ref_all_encoders(pmf, ids_to_atoms(ids), K) for ids in itertools.combinations(range(7), width)))
    )
    ref = ref_frontier(R, D, P)  # every encoder of every dictionary, least P at each envelope point
    s, t, mono = frontier_summary(pmf, width, K, encoders="all", include_codes=False)
    got = [(b["rate"], b["distortion"], b["polysemanticity"]) for b in s["best_unrestricted"]]
    assert _close(got, ref), (got, ref)
    # the rate tax: every envelope point of (class + monosemantic codes) against R_mono of the staircase
    env = ref_frontier(np.concatenate([R, mono.rate]), np.concatenate([D, mono.distortion]), np.r_[P, 0 * mono.rate])
    rows = s["rate_tax"]["per_rate"]
    assert _close([(x["rate"], x["distortion"], x["polysemanticity"]) for x in rows], env)
    for x in rows:
        ok = mono.distortion <= x["distortion"] + 1e-12
        assert (x["rate_tax"] is None) == (not ok.any())
        if ok.any():
            assert abs(x["rate_tax"] - (mono.rate[ok].min() - x["rate"])) < 1e-12


@SETTINGS
@given(pmf=small_pmfs(max_support=8), width=st.integers(1, 3), K=st.integers(1, 3))
def test_unrestricted_envelope_never_above_the_optimal_decoding(pmf, width, K):
    a = enumerate_class(pmf, width, K, "all")
    o = enumerate_codes(pmf, width, K)
    for r, d, _ in best_code_staircase(o.rate, o.distortion):
        assert a.distortion[a.rate <= r + 1e-12].min() <= d + 1e-12
    # every optimal decoding is one of the class's encoders: it is on or above its dictionary's frontier
    for i in range(len(o)):
        rows = np.flatnonzero(a.dictionary == i)
        assert (a.distortion[rows][a.rate[rows] <= o.rate[i] + 1e-12] <= o.distortion[i] + 1e-12).any()


def test_leaving_atoms_out_lowers_distortion_at_a_rate_budget():
    # p({0,1}) = 0.6, p({1}) = 0.4, width 2, K = 1. Rate budget 0.4: the unrestricted class fires v1 on {1}
    # only (D = 2 * 0.6 = 1.2). A distortion-optimal decoder fires on {0,1} whenever an atom lowers its error
    # (v0, v1, v0+v1 or v0+v1+v2 in the dictionary), costing rate 0.6 > 0.4; with none of them it never fires
    # on {1} either ({1,2} and {2} do not lower ||1_{1} - x_hat||^2 = 1): R = 0 and D = 2 * 0.6 + 0.4 = 1.6.
    pmf = ExplicitPMF(3, {frozenset({0, 1}): 0.6, frozenset({1}): 0.4})
    best = {}
    for enc in ("all", "optimal"):
        t = enumerate_class(pmf, 2, 1, enc)
        best[enc] = float(t.distortion[t.rate <= 0.4 + 1e-12].min())
    assert abs(best["all"] - 1.2) < 1e-12 and abs(best["optimal"] - 1.6) < 1e-12


def test_a_code_that_never_fires_an_atom_does_not_count_it():
    # {0,1}: 0.5, {}: 0.5, width 2, K = 1: dictionary {v0+v1, v2} fires only v0+v1, so the frontier code at
    # (R, D) = (0.5, 0) has P = P({v0+v1}) = 1 - 1/sqrt(2), not the mean over both atoms
    pmf = ExplicitPMF(3, {frozenset({0, 1}): 0.5, frozenset(): 0.5})
    t = enumerate_class(pmf, 2, 1, "all")
    di = list(itertools.combinations(range(7), 2)).index((2, 3))  # atom id = concept bitmask - 1
    assert ids_to_atoms([2, 3]) == [[0, 1], [2]]
    rows = np.flatnonzero((t.dictionary == di) & (np.abs(t.distortion) < 1e-12))
    assert rows.size == 1 and abs(t.rate[rows[0]] - 0.5) < 1e-12
    assert abs(t.polysemanticity[rows[0]] - (1 - 2**-0.5)) < 1e-12 and t.used_atoms(rows[0]) == [[0, 1]]
    # a monosemantic code reaches D = 0 only with K = 2, writing both concepts of {0,1}: rate 2 * 0.5
    assert np.isinf(r_mono(monosemantic_points(pmf, 2, 1), 0.0)[0])
    assert r_mono(monosemantic_points(pmf, 2, 2), 0.0)[0] == 1.0


# ----------------------------------------------------------------------------- Theorem 5, the omission class


def _all_monosemantic_maps(pmf, width, K):
    """(R, D) of every tied monosemantic code by hand: a represented set A (|A| <= width) and, per active
    set, any output S_hat subset of S & A with |S_hat| <= K (Proposition 1's clipped codes)."""
    tab = [(S, p) for S, p in pmf.table().items() if p > 0]
    out = set()
    for r in range(min(width, 3) + 1):
        for A in itertools.combinations(range(3), r):
            per_set = [
                [frozenset(c) for j in range(K + 1) for c in itertools.combinations(sorted(S & set(A)), j)]
                for S, _ in tab
            ]
            for choice in itertools.product(*per_set):
                R = sum(p * len(sh) for (S, p), sh in zip(tab, choice))
                D = sum(p * len(S ^ sh) for (S, p), sh in zip(tab, choice))
                out.add((round(R, 12), round(D, 12)))
    return np.array(sorted(out))


@SETTINGS
@given(pmf=small_pmfs(max_support=6), width=st.integers(1, 3), K=st.integers(1, 3))
def test_theorem5_default_class_threshold_and_overflow(pmf, width, K):
    mp = monosemantic_points(pmf, width, K)  # the default class: the paper's omission codes
    assert mp.mono_class == "omission"
    pts = _all_monosemantic_maps(pmf, width, K)
    for Db in np.linspace(-0.1, 3.1, 65):  # R_mono(D) = least rate of a code with distortion <= D
        ok = pts[:, 1] <= Db + 1e-10
        ref = pts[ok, 0].min() if ok.any() else np.inf
        got = r_mono(mp, Db)[0]
        assert (np.isinf(ref) and np.isinf(got)) or abs(ref - got) < 1e-10
    tab = pmf.table()
    marg = [sum(p for S, p in tab.items() if l in S) for l in range(3)]
    threshold = min(  # the paper's threshold: omitted marginals only
        sum(marg[l] for l in range(3) if l not in A)
        for r in range(min(width, 3) + 1)
        for A in itertools.combinations(range(3), r)
    )
    assert abs(mp.d_threshold - threshold) < 1e-12
    assert abs(mp.d_min - pts[:, 1].min()) < 1e-10  # the least attainable distortion
    assert abs(mp.topk_overflow - (pts[:, 1].min() - threshold)) < 1e-10 and mp.topk_overflow >= 0
    if K >= max(len(S) for S in tab):  # no sample has more than K concepts: the threshold is attained
        assert mp.topk_overflow < 1e-12
    topk = monosemantic_points(pmf, width, K, "topk")
    assert abs(topk.d_min - mp.d_min) < 1e-12 and abs(topk.d_threshold - threshold) < 1e-12


# ----------------------------------------------------------------------------- P over the atoms a code fires


def test_decoding_ties_are_broken_toward_least_p():
    # {0,1,2}: 0.5, {0}: 0.5, K = 2, dictionary {v0, v0+v1, v2, v1+v2}: {0,1,2} is written exactly by
    # {v0, v1+v2} or by {v0+v1, v2} (a tie). With {0} -> v0 the first fires {v0, v1+v2} (P = (1 - 1/sqrt2)/2),
    # the second {v0, v0+v1, v2} (P = (1 - 1/sqrt2)/3, the least); the first is the lower subset by position.
    pmf = ExplicitPMF(3, {frozenset({0, 1, 2}): 0.5, frozenset({0}): 0.5})
    atoms = [[0], [0, 1], [2], [1, 2]]
    ev = evaluate_code(pmf, atoms, 2)
    assert abs(ev.rate - 1.5) < 1e-12 and ev.distortion == 0.0
    assert abs(ev.polysemanticity - (1 - 2**-0.5) / 3) < 1e-12
    assert ev.used == [[0], [0, 1], [2]] and abs(ev.dictionary_polysemanticity - (1 - 2**-0.5) / 2) < 1e-12
    assert ev.chosen[ev.sets.index([0, 1, 2])] == [[0, 1], [2]]
    t = enumerate_codes(pmf, 4, 2)
    i = next(i for i in range(len(t)) if t.atoms(i) == sorted(atoms, key=lambda a: sum(1 << l for l in a)))
    assert abs(t.polysemanticity[i] - ev.polysemanticity) < 1e-12 and t.used_atoms(i) == ev.used


@pytest.mark.parametrize("encoders", ["all", "optimal"])
def test_atoms_that_never_fire_do_not_count(encoders):
    # only {0} occurs: every dictionary with v0 writes it with v0 alone, whatever else it holds
    pmf = ExplicitPMF(3, {frozenset({0}): 1.0})
    t = enumerate_class(pmf, 2, 1, encoders)
    exact = np.flatnonzero(np.abs(t.distortion) < 1e-12)
    assert exact.size == 6  # the six dictionaries {v0, x}
    assert all(t.polysemanticity[i] == 0.0 and t.used_atoms(i) == [[0]] for i in exact)
    s, _, _ = frontier_summary(pmf, 2, 1, encoders=encoders)
    assert s["best_unrestricted"][-1]["polysemanticity"] == 0.0 and s["best_unrestricted"][-1]["atoms"] == [[0]]
    assert all(row["polysemanticity"] == 0.0 for row in s["rate_tax"]["per_rate"])


@SETTINGS
@given(pmf=small_pmfs(max_support=8), width=st.integers(1, 3), K=st.integers(1, 2), enc=st.sampled_from(ENC))
def test_envelope_reports_the_least_p_of_the_codes_that_attain_it(pmf, width, K, enc):
    s, t, mono = frontier_summary(pmf, width, K, encoders=enc, include_codes=False)
    R = np.concatenate([t.rate, mono.rate])
    D = np.concatenate([t.distortion, mono.distortion])
    P = np.concatenate([t.polysemanticity, np.zeros(mono.rate.size)])
    for row in s["rate_tax"]["per_rate"]:
        at = (np.abs(R - row["rate"]) < 1e-9) & (np.abs(D - row["distortion"]) < 1e-9)
        assert abs(row["polysemanticity"] - P[at].min()) < 1e-12
    for row in s["best_unrestricted"]:
        at = (np.abs(t.rate - row["rate"]) < 1e-9) & (np.abs(t.distortion - row["distortion"]) < 1e-9)
        assert abs(row["polysemanticity"] - t.polysemanticity[at].min()) < 1e-12
