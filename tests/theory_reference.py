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


def ref_code_least_p(pmf, atoms, K, coef):
    """Pure-Python distortion-optimal TopK decoding with the least P over the atoms it fires: per set, every
    subset of least error (within 1e-9), then of fewest atoms, may be chosen; the reachable sets of fired
    atoms are built set by set (frozensets). Returns (R, D, least P over the fired atoms)."""
    m = pmf.m
    atoms = [frozenset(a) for a in atoms]
    R = D = 0.0
    reach = {frozenset()}
    for S, p in pmf.table().items():
        if p <= 0:
            continue
        opts = [
            (ref_error(S, [atoms[i] for i in T], m, coef), len(T), frozenset(T))
            for k in range(min(K, len(atoms)) + 1)
            for T in itertools.combinations(range(len(atoms)), k)
        ]
        e0 = min(o[0] for o in opts)
        k0 = min(o[1] for o in opts if o[0] < e0 + 1e-9)
        tied = [o[2] for o in opts if o[0] < e0 + 1e-9 and o[1] == k0]
        R += p * k0
        D += p * e0
        reach = {u | t for u in reach for t in tied}
    P = min(ref_poly_atoms([atoms[i] for i in u], m) for u in reach)
    return R, D, P


def ref_poly_atoms(atoms, m):
    """Definition 1 (mean over rows of 1 - max |cos|) of binary atoms given as concept sets; 0 for none."""
    if not atoms:
        return 0.0
    return float(np.mean([1 - 1 / np.sqrt(len(A)) for A in atoms]))


def ref_all_encoders(pmf, atoms, K, coef="binary"):
    """Every deterministic encoder of the dictionary ``atoms``: each active set S of the support maps to
    any subset T of at most K atoms. Returns arrays (R, D, P over the atoms the encoder fires) with one
    entry per encoder (the product over sets of the per-set choices, built with numpy outer sums)."""
    m = pmf.m
    atoms = [frozenset(a) for a in atoms]
    subsets = [T for k in range(min(K, len(atoms)) + 1) for T in itertools.combinations(range(len(atoms)), k)]
    R = np.zeros(1)
    D = np.zeros(1)
    U = np.zeros(1, dtype=np.int64)
    for S, p in pmf.table().items():
        if p <= 0:
            continue
        opts = []
        for T in subsets:
            e = ref_error(S, [atoms[i] for i in T], m, coef)
            if coef == "nnls":  # an atom at coefficient 0 does not fire: only subsets whose NNLS is interior
                s = np.array([1.0 if l in S else 0.0 for l in range(m)])
                B = np.array([[1.0 if l in atoms[i] else 0.0 for l in range(m)] for i in T])
                if T and (nnls(B.T, s)[0] <= 1e-9).any():
                    continue
            opts.append((len(T) * p, e * p, sum(1 << i for i in T)))
        r, d, u = (np.array(x) for x in zip(*opts))
        R = np.add.outer(R, r).ravel()
        D = np.add.outer(D, d).ravel()
        U = np.bitwise_or.outer(U, u).ravel()
    pvals = {}
    P = np.empty(U.size)
    for j, u in enumerate(U.tolist()):
        if u not in pvals:
            pvals[u] = ref_poly_atoms([atoms[i] for i in range(len(atoms)) if (u >> i) & 1], m)
        P[j] = pvals[u]
    return R, D, P


def ref_frontier(R, D, P, digits=9):
    """The (R, D) Pareto points of a finite set, each with the least P among the entries attaining it:
    a list of (r, d, p) with r increasing, d strictly decreasing (values compared after rounding)."""
    r, d = np.round(R, digits), np.round(D, digits)
    out = []
    for i in np.lexsort((P, d, r)):
        if out and d[i] >= out[-1][1]:
            if r[i] == out[-1][0] and d[i] == out[-1][1]:
                out[-1] = (out[-1][0], out[-1][1], min(out[-1][2], float(P[i])))
            continue
        out.append((float(r[i]), float(d[i]), float(P[i])))
    return out
