"""Trained SAEs against the exact frontier (theory_suite.trained_vs_exact): the exact (R, D) of a linear-encoder
TopK SAE by hand, and the gaps against each class's envelope by brute force."""

from __future__ import annotations

import torch

from sae_rdp_plugin.experiments.theory_suite import exact_rate_distortion, trained_vs_exact, trained_vs_exact_report
from sae_rdp_plugin.rdp.dgp import ExplicitPMF, cooccurring_pairs
from sae_rdp_plugin.rdp.theory import enumerate_class


def test_exact_rate_distortion_of_the_identity_sae():
    # atoms = concepts, no bias, K = 1: {0} is written exactly, {0,1} loses one concept, {} writes nothing
    pmf = ExplicitPMF(3, {frozenset(): 0.2, frozenset({0}): 0.3, frozenset({0, 1}): 0.5})
    V = torch.eye(3, dtype=torch.float64)
    zero = torch.zeros(3, dtype=torch.float64)
    R, D, live = exact_rate_distortion(V, zero, V, zero, 1, V, pmf)
    assert abs(R - 0.8) < 1e-12 and abs(D - 0.5) < 1e-12 and bool(live[0]) and not bool(live[2])
    R2, D2, _ = exact_rate_distortion(V, zero, V, zero, 2, V, pmf)  # K = 2 writes {0,1} too
    assert abs(R2 - 1.3) < 1e-12 and abs(D2) < 1e-12


def test_trained_vs_exact_gaps_against_bruteforce_envelopes():
    cfg = {"seeds": [0], "ks": [1, 2], "decoder_bias": [False], "steps": 30, "batch": 64}
    res = trained_vs_exact(cfg)
    assert len(res["rows"]) == 2 and [e["n_saes"] for e in res["summary"]] == [1, 1]
    pmf = cooccurring_pairs(4, rho=0.4, q=0.15).to_explicit()
    for r in res["rows"]:
        for enc in ("all", "optimal"):
            t = enumerate_class(pmf, 4, r["k"], enc)
            d_star = t.distortion[t.rate <= r["rate"] + 1e-9].min()
            assert abs(r[f"gap_{enc}"] - (r["distortion"] - d_star)) < 1e-9
        assert r["gap_all"] <= r["gap_optimal"] + 1e-12  # the larger class is never further away
    md = trained_vs_exact_report(res)
    assert "| 1 | False |" in md and "| 2 | False |" in md
