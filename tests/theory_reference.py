"""Pure-Python brute-force references for the exact theory (independent of sae_rdp_plugin.rdp.theory)."""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import nnls


def ref_error(S, T, m, coef):
    s = np.array([1.0 if l in S else 0.0 for l in range(m)])
    if not T:
        return float(s @ s)
    B = np.array([[1.0 if l in A else 0.0 for l in range(m)] for A in T])  # unnormalised rows: same span/cone
    if coef == "binary":
        r = s - B.sum(0)
        return float(r @ r)
    if coef == "lstsq":
        c, *_ = np.linalg.lstsq(B.T, s, rcond=None)
        r = s - B.T @ c
        return float(r @ r)
    c, rn = nnls(B.T, s)
    return float(rn**2)


def ref_code(pmf, atoms, K, coef):
    """Pure-Python distortion-optimal TopK decoding: (R, D)."""
    m = pmf.m
    atoms = [frozenset(a) for a in atoms]
    R = D = 0.0
    for S, p in pmf.table().items():
        best = None
        for k in range(min(K, len(atoms)) + 1):
            for T in itertools.combinations(atoms, k):
                e = ref_error(S, T, m, coef)
                if best is None or e < best[0] - 1e-9:
                    best = (e, k)
        R += p * best[1]
        D += p * best[0]
    return R, D
