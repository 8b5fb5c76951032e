"""The exact Rate-Distortion-Polysemanticity theory of the binary-atom toy model (THEORY.md sections 2-5).

Setting (the paper's Assumptions 1-4)
-------------------------------------
* m orthonormal concepts v_0 .. v_{m-1}; an active set S (a subset of {0..m-1}) drawn from p(S);
  the observation is x = sum_{l in S} v_l, i.e. the indicator vector 1_S in concept coordinates.
* Zero biases. A *binary atom* is a non-empty subset A of concepts; its decoder row is the unit vector
  w_A = sum_{l in A} v_l / sqrt(|A|). There are 2^m - 1 binary atoms; atom id a <-> bitmask a + 1
  (bit l set <=> concept l in A).
* A *code* (an idealised TopK-K SAE of width n) is a dictionary of n distinct binary atoms and an encoder
  that activates, for each active set S, a subset T(S) of at most K dictionary atoms. CHOICE ``encoders``
  (the class), default ``"all"``:
    - "all" (the paper's Assumption 4): ANY deterministic map S -> T (:func:`enumerate_encoders`);
    - "optimal": the distortion-optimal K-sparse encoding only: T(S) minimises the squared error
      ||x - x_hat_T||^2, ties broken toward fewer atoms (then arbitrarily: R and D do not depend on the
      rest) (:func:`enumerate_codes`).
  Errors are compared on a grid of 2^-32 (binary-mode errors are integers, so exactly). Whether a linear
  encoder followed by TopK realises these maps is not checked (the paper also treats an SAE as a map
  S -> S_hat).
* CHOICE ``coefficients`` (how the active atoms are weighted), default ``"binary"``:
    - "binary" (the paper's Assumption 4, default): each active atom writes its concepts with unit
      weight, x_hat_T = sum_{A in T} 1_A; overlapping active atoms add up (a concept covered twice is
      reconstructed with weight 2) and the distortion is the exact squared error ||1_S - x_hat_T||^2.
      With pairwise-disjoint atoms this is Lemma 1: D = E |S symmetric-difference S_hat|,
      S_hat = union of the active atoms.
    - "nnls": optimal non-negative coefficients (an SAE's latents are >= 0): the exact non-negative
      least-squares residual of 1_S on the active atoms.
    - "lstsq": optimal unconstrained least-squares coefficients (the projection residual).
  For monosemantic codes (singleton atoms) the three coincide.
* Rate R = E |T(S)| (expected L0), distortion D = E ||x - x_hat||^2 (sum over dimensions).
* Polysemanticity (THEORY.md section 3) of the dictionary rows against the concept basis:
  P = mean_j (1 - max_l |cos(w_j, v_l)|); for a binary atom A, max_l |cos| = 1/sqrt(|A|).
  CHOICE ``poly_reduce`` ("mean" | "sum" | "max", default "mean") and ``poly_power`` (1: |C|, 2: C^2).
  A code's P is over the atoms it fires (an atom that never fires is a zero row in effect; a code that
  fires nothing has P = 0); where several encoders or decodings attain the same (R, D), the least P.

What is computed
----------------
* :func:`evaluate_code` - exact (R, D, P) of any dictionary, with the per-set decoding.
* :func:`enumerate_codes` - every dictionary of n distinct atoms (no symmetry reduction), vectorised
  over codes and active sets; :func:`enumerate_encoders` - every encoder of every dictionary, as each
  dictionary's exact (R, D) frontier (a Pareto merge over active sets); :func:`pareto_front` in
  (R, D, P); :func:`best_code_staircase` (best distortion at each rate budget); :func:`rdp_function`
  (Theorem 3's D(R_budget, P_budget)).
* :func:`monosemantic_points` / :func:`monosemantic_frontier` / :func:`r_mono` - Proposition 2 and
  Theorem 5: the exact monosemantic staircase R_mono(D) = E|S| - max{D' attainable : D' <= D}.
* :func:`rate_tax` (Theorem 4) and :func:`rate_tax_zero_distortion` (= E(|S| - 1)_+).
* :func:`example1` - the three-concept Example 1 in closed form (binary coefficients).
* :func:`frontier_summary` - all of the above for one (pmf, width, K) as a JSON-ready dict.

Cost: the enumeration evaluates C(2^m - 1, n) codes x (number of active sets in the support, <= 2^m)
x (number of subsets of at most K atoms of a code, sum_{k<=K} C(n, k)); the error of every k-subset
of the 2^m - 1 atoms against every active set is tabulated once (sum_{k<=K} C(2^m - 1, k) rows).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.rdp.dgp import ActiveSetPMF

COEFFICIENTS = ("binary", "nnls", "lstsq")
POLY_REDUCE = ("mean", "sum", "max")
MONO_CLASSES = ("omission", "topk")
ENCODERS = ("all", "optimal")
TIE_TOL = 2.0**-32  # errors are compared on this grid (see _error_keys); closer errors tie
NNLS_TOL = 1e-10  # a least-squares coefficient above -NNLS_TOL counts as non-negative
MAX_CODES = 5_000_000
MAX_TABLE_ROWS = 3_000_000
MAX_POINTS = 4_000_000  # rows of the unrestricted class (frontier points of every dictionary)

__all__ = [
    "COEFFICIENTS",
    "atom_masks",
    "atom_id",
    "atoms_to_ids",
    "ids_to_atoms",
    "polysemanticity",
    "atom_polysemanticity",
    "evaluate_code",
    "CodeTable",
    "enumerate_codes",
    "enumerate_encoders",
    "enumerate_class",
    "ENCODERS",
    "pareto_front",
    "best_code_staircase",
    "rdp_function",
    "MonoPoints",
    "monosemantic_points",
    "monosemantic_frontier",
    "r_mono",
    "monosemantic_rate_distortion",
    "rate_tax",
    "rate_tax_zero_distortion",
    "example1",
    "example1_closed_form",
    "EXAMPLE1_PRESETS",
    "frontier_summary",
]


# ----------------------------------------------------------------------------- atoms


def atom_masks(m: int) -> np.ndarray:
    """``[2^m - 1, m]`` bool: row a is the concept set of atom id a (bitmask a + 1)."""
    r = np.arange(1, 2**m, dtype=np.int64)
    return ((r[:, None] >> np.arange(m)[None, :]) & 1).astype(bool)


def atom_id(concepts: Iterable[int], m: int) -> int:
    """Atom id of a non-empty set of concept indices."""
    items = list(concepts)
    if not items:
        raise SaeRdpError("an atom must contain at least one concept")
    if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0 or i >= m for i in items):
        raise SaeRdpError(f"atom {items!r} has a concept index out of range for {m} concepts")
    if len(set(items)) != len(items):
        raise SaeRdpError(f"atom {items!r} repeats a concept")
    return sum(1 << int(i) for i in items) - 1


def atoms_to_ids(atoms: Sequence[Iterable[int]], m: int) -> np.ndarray:
    ids = [atom_id(a, m) for a in atoms]
    if len(set(ids)) != len(ids):
        raise SaeRdpError("a dictionary must not contain the same atom twice")
    return np.array(ids, dtype=np.int64)


def ids_to_atoms(ids: Iterable[int]) -> list[list[int]]:
    """Atom ids -> lists of concept indices."""
    out = []
    for a in ids:
        b = int(a) + 1
        out.append([l for l in range(b.bit_length()) if (b >> l) & 1])
    return out


def polysemanticity(
    W: np.ndarray | torch.Tensor,
    V: np.ndarray | torch.Tensor,
    reduce: str = "mean",
    power: int = 1,
    tol: float = 1e-8,
) -> float:
    """Definition 1: P(W) = reduce_j (1 - max_l |cos(w_j, v_l)|^power) over rows j of W with norm > tol.

    W: ``[n, d]`` rows (decoder or encoder rows); V: ``[m, d]`` concept rows. CHOICEs: ``reduce`` in
    mean/sum/max (default mean), ``power`` 1 (|C|, default) or 2 (C^2); rows with norm <= tol are zero rows
    and are skipped. Returns 0.0 when every row is zero."""
    if reduce not in POLY_REDUCE:
        raise SaeRdpError(f"unknown poly_reduce {reduce!r}: expected one of {', '.join(POLY_REDUCE)}")
    if power not in (1, 2):
        raise SaeRdpError(f"poly_power must be 1 or 2, got {power!r}")
    w = np.asarray(W.detach().cpu() if isinstance(W, torch.Tensor) else W, dtype=np.float64)
    v = np.asarray(V.detach().cpu() if isinstance(V, torch.Tensor) else V, dtype=np.float64)
    if w.ndim != 2 or v.ndim != 2 or w.shape[1] != v.shape[1]:
        raise SaeRdpError(f"shape mismatch: rows {w.shape} vs concepts {v.shape}")
    if not (np.isfinite(w).all() and np.isfinite(v).all()):
        raise SaeRdpError("NaN/Inf in rows or concepts")
    wn = np.linalg.norm(w, axis=1)
    vn = np.linalg.norm(v, axis=1)
    if (vn <= tol).any():
        raise SaeRdpError("a concept direction has zero norm")
    live = wn > tol
    if not live.any():
        return 0.0
    c = np.abs((w[live] / wn[live, None]) @ (v / vn[:, None]).T).max(1) ** power
    vals = 1.0 - c
    return float({"mean": np.mean, "sum": np.sum, "max": np.max}[reduce](vals))


def atom_polysemanticity(m: int, power: int = 1) -> np.ndarray:
    """1 - max_l |cos(w_A, v_l)|^power for every binary atom id: 1 - |A|^(-power/2)."""
    sizes = atom_masks(m).sum(1).astype(np.float64)
    return 1.0 - sizes ** (-power / 2.0)


def _reduce_p(vals: np.ndarray, reduce: str) -> np.ndarray:
    """Reduce atom P values over the last axis."""
    if reduce == "mean":
        return vals.mean(-1)
    if reduce == "sum":
        return vals.sum(-1)
    return vals.max(-1)


# ----------------------------------------------------------------------------- input checks


def _check_common(pmf: Any, k: Any, coefficients: str, width: Any | None = None) -> None:
    if not isinstance(pmf, ActiveSetPMF):
        raise SaeRdpError(f"pmf must be an ActiveSetPMF, got {type(pmf).__name__}")
    if not pmf.exact:
        raise SaeRdpError("the exact theory needs a finite exact pmf (not a Monte-Carlo CorrelatedPMF)")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise SaeRdpError(f"TopK K must be a positive integer, got {k!r}")
    if coefficients not in COEFFICIENTS:
        raise SaeRdpError(f"unknown coefficients {coefficients!r}: expected one of {', '.join(COEFFICIENTS)}")
    if width is not None and (isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1):
        raise SaeRdpError(f"width must be a positive integer, got {width!r}")


# ----------------------------------------------------------------------------- errors of atom subsets


def _subset_errors(T_masks: np.ndarray, S: np.ndarray, coefficients: str, chunk: int = 20_000) -> np.ndarray:
    """Squared error of reconstructing every active set from every atom subset.

    T_masks: ``[numT, k, m]`` bool (k atoms per subset; k may be 0); S: ``[N, m]`` bool.
    Returns ``[numT, N]`` float64; +inf where "nnls" finds the least-squares solution infeasible
    (a negative coefficient; a smaller subset then attains the NNLS optimum, see :func:`evaluate_code`)."""
    numT, k, m = T_masks.shape
    s = S.astype(np.float64)
    s2 = (s * s).sum(1)
    if k == 0:
        return np.broadcast_to(s2, (numT, S.shape[0])).copy()
    if coefficients == "binary":
        cnt = T_masks.sum(1).astype(np.float64)  # [numT, m]
        return s2[None, :] - 2.0 * cnt @ s.T + (cnt * cnt).sum(1)[:, None]
    out = np.empty((numT, S.shape[0]), dtype=np.float64)
    st = torch.from_numpy(s.T.copy())  # [m, N]
    for lo in range(0, numT, chunk):
        B = torch.from_numpy(T_masks[lo : lo + chunk].astype(np.float64))  # [c, k, m]
        Bt = B.transpose(1, 2)  # [c, m, k]
        coef = torch.linalg.pinv(Bt) @ st  # [c, k, N]
        recon = Bt @ coef  # [c, m, N]
        err = ((st.unsqueeze(0) - recon) ** 2).sum(1)  # [c, N]
        if coefficients == "nnls":
            bad = (coef < -NNLS_TOL).any(1)
            err = torch.where(bad, torch.full_like(err, math.inf), err)
        out[lo : lo + chunk] = err.numpy()
    return out


KEY_SCALE = 2.0**32  # errors are compared on a grid of 2^-32 (~2.3e-10); binary-mode errors are integers
KEY_INF = np.int64(2**62)


def _error_keys(E: np.ndarray, size: int | np.ndarray) -> np.ndarray:
    """Integer keys that order (error, number of atoms) lexicographically: round(E * 2^32) * 64 + size.
    The minimum key is the least error (on the 2^-32 grid; ties within it broken toward fewer atoms)."""
    fin = np.isfinite(E)
    q = np.round(np.where(fin, E, 0.0) * KEY_SCALE).astype(np.int64)
    return np.where(fin, q * 64 + np.asarray(size, dtype=np.int64), KEY_INF).astype(np.int64, copy=False)


def _keys_to_error_size(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (keys // 64).astype(np.float64) / KEY_SCALE, keys % 64


def _decode_from_errors(E: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """E: ``[..., U, N]`` errors of U candidate subsets; sizes ``[U]``. Returns (error of the chosen subset
    [..., N], its size [..., N], its index [..., N]): the least error (on the 2^-32 grid), ties broken
    toward fewer atoms, then toward the lower candidate index."""
    keys = _error_keys(E, sizes[:, None])
    choice = keys.argmin(-2)
    emin = np.take_along_axis(E, choice[..., None, :], -2)[..., 0, :]
    return emin, sizes[choice], choice


def _subset_patterns(n: int, k: int) -> list[tuple[int, ...]]:
    """All subsets of positions {0..n-1} with at most k elements, by size then lexicographically."""
    return [c for r in range(min(n, k) + 1) for c in itertools.combinations(range(n), r)]


# ----------------------------------------------------------------------------- one code


@dataclass
class CodeEval:
    """Exact evaluation of one code. ``decoding`` lists, per active set in the support, the chosen atoms."""

    atoms: list[list[int]]
    k: int
    rate: float
    distortion: float
    polysemanticity: float
    coefficients: str
    sets: list[list[int]] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    chosen: list[list[list[int]]] = field(default_factory=list)
    errors: list[float] = field(default_factory=list)
    used: list[list[int]] = field(default_factory=list)
    dictionary_polysemanticity: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "atoms": self.atoms,
            "used": self.used,
            "k": self.k,
            "rate": self.rate,
            "distortion": self.distortion,
            "polysemanticity": self.polysemanticity,
            "dictionary_polysemanticity": self.dictionary_polysemanticity,
            "coefficients": self.coefficients,
            "decoding": [
                {"set": s, "p": p, "atoms": c, "error": e}
                for s, p, c, e in zip(self.sets, self.probs, self.chosen, self.errors)
            ],
        }


def evaluate_code(
    pmf: ActiveSetPMF,
    atoms: Sequence[Iterable[int]],
    k: int,
    coefficients: str = "binary",
    poly_reduce: str = "mean",
    poly_power: int = 1,
) -> CodeEval:
    """Exact rate, distortion and polysemanticity of the dictionary ``atoms`` (lists of concept indices)
    under distortion-optimal TopK-``k`` decoding (see the module docstring for the definitions).

    P is over the atoms the code fires (``used``); where several subsets tie for a set (same error on the
    2^-32 grid, same size), the choice per set is the one that makes P over the used atoms least (then the
    lowest mask of used positions, then the first subset); ``dictionary_polysemanticity`` is P over all
    of ``atoms`` (Definition 1 of the dictionary)."""
    _check_common(pmf, k, coefficients)
    _check_poly(poly_reduce, poly_power)
    m = pmf.m
    ids = atoms_to_ids(atoms, m)
    if len(ids) == 0:
        raise SaeRdpError("a dictionary needs at least one atom")
    S, p = pmf.support()
    am = atom_masks(m)
    n = len(ids)
    pats = _subset_patterns(n, k)
    E = np.stack([_subset_errors(am[ids[list(c)]][None, :, :], S, coefficients)[0] for c in pats])  # [U, N]
    sizes = np.array([len(c) for c in pats], dtype=np.int64)
    emin, size, _ = _decode_from_errors(E, sizes)
    keys = _error_keys(E, sizes[:, None])
    ties = [np.flatnonzero(keys[:, s] == keys[:, s].min()).tolist() for s in range(S.shape[0])]
    pat_mask = [sum(1 << i for i in c) for c in pats]
    # reachable used-position masks, set by set, with one way back to each (a few masks: n <= width)
    layers: list[dict[int, tuple[int, int]]] = []
    reach = {0: (0, -1)}
    for s in range(S.shape[0]):
        nxt: dict[int, tuple[int, int]] = {}
        for c in sorted(reach):
            for t in ties[s]:
                nxt.setdefault(c | pat_mask[t], (c, t))
        layers.append(nxt)
        reach = nxt
    ptab = _mask_poly(ids[None, :], m, poly_reduce, poly_power)[0]
    best = min(reach, key=lambda c: (ptab[c], c))
    choice, c = [], best
    for layer in reversed(layers):
        c, t = layer[c]
        choice.append(t)
    choice.reverse()
    atom_lists = ids_to_atoms(ids)
    return CodeEval(
        atoms=atom_lists,
        k=int(k),
        rate=float(size @ p),
        distortion=float(emin @ p),
        polysemanticity=float(ptab[best]),
        coefficients=coefficients,
        sets=[np.flatnonzero(r).tolist() for r in S],
        probs=p.tolist(),
        chosen=[[atom_lists[i] for i in pats[c]] for c in choice],
        errors=emin.tolist(),
        used=[atom_lists[i] for i in range(n) if (best >> i) & 1],
        dictionary_polysemanticity=float(_reduce_p(atom_polysemanticity(m, poly_power)[ids], poly_reduce)),
    )


# ----------------------------------------------------------------------------- all codes


def _colex_rank(combos: np.ndarray, binom: np.ndarray) -> np.ndarray:
    """Colexicographic rank of sorted combinations ``[C, k]``: sum_i binom(c_i, i + 1)."""
    if combos.shape[-1] == 0:
        return np.zeros(combos.shape[:-1], dtype=np.int64)
    i = np.arange(1, combos.shape[-1] + 1)
    return binom[combos, i].sum(-1)


def _binom_table(nmax: int, kmax: int) -> np.ndarray:
    b = np.zeros((nmax + 1, kmax + 2), dtype=np.int64)
    for n in range(nmax + 1):
        for k in range(kmax + 2):
            b[n, k] = math.comb(n, k)
    return b


def _combinations(N: int, k: int) -> np.ndarray:
    """All k-combinations of range(N), lexicographic, as ``[C(N,k), k]`` int64."""
    if k == 0:
        return np.zeros((1, 0), dtype=np.int64)
    c = math.comb(N, k)
    flat = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(N), k)), dtype=np.int64, count=c * k)
    return flat.reshape(c, k)


@dataclass
class CodeTable:
    """The (R, D, P) rows of one SAE class (m concepts, width n, TopK k). ``codes[i]`` are the sorted atom
    ids of the dictionary of row i. ``encoders="optimal"``: one row per dictionary (its distortion-optimal
    decoding); ``"all"``: one row per point of each dictionary's (R, D) frontier over every encoder
    (``dictionary[i]`` indexes the dictionaries in colex order). ``polysemanticity`` is P over the atoms
    the code uses where ``used`` is set (a bitmask over the positions of ``codes[i]``), else over all of
    the dictionary's atoms."""

    m: int
    width: int
    k: int
    coefficients: str
    codes: np.ndarray  # [rows, n] int64 atom ids
    rate: np.ndarray  # [rows]
    distortion: np.ndarray  # [rows]
    polysemanticity: np.ndarray  # [rows]
    expected_size: float
    poly_reduce: str = "mean"
    poly_power: int = 1
    encoders: str = "optimal"
    used: np.ndarray | None = None  # [rows] bitmask over the n positions: the atoms the code uses
    dictionary: np.ndarray | None = None  # [rows] dictionary index ("all"); None: row i is dictionary i

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def atoms(self, i: int) -> list[list[int]]:
        """All atoms of the dictionary of row i."""
        return ids_to_atoms(self.codes[i])

    def used_atoms(self, i: int) -> list[list[int]]:
        """The atoms row i's code fires (all of the dictionary's atoms where ``used`` is not recorded)."""
        if self.used is None:
            return self.atoms(i)
        u = int(self.used[i])
        return ids_to_atoms(a for j, a in enumerate(self.codes[i]) if (u >> j) & 1)

    @property
    def monosemantic(self) -> np.ndarray:
        """Mask of rows whose dictionary atoms are all singletons."""
        sizes = atom_masks(self.m).sum(1)
        return (sizes[self.codes] == 1).all(1)


def _check_poly(poly_reduce: str, poly_power: int) -> None:
    if poly_reduce not in POLY_REDUCE:
        raise SaeRdpError(f"unknown poly_reduce {poly_reduce!r}: expected one of {', '.join(POLY_REDUCE)}")
    if poly_power not in (1, 2):
        raise SaeRdpError(f"poly_power must be 1 or 2, got {poly_power!r}")


def _class_setup(pmf: ActiveSetPMF, width: int, k: int, coefficients: str) -> tuple[np.ndarray, int, np.ndarray]:
    """Checks shared by both encoder classes; returns (all dictionaries ``[C, n]``, kk = min(k, n), binom)."""
    _check_common(pmf, k, coefficients, width)
    m = pmf.m
    n_atoms = 2**m - 1
    if width > n_atoms:
        raise SaeRdpError(f"width {width} exceeds the {n_atoms} distinct binary atoms of m={m} concepts")
    n_codes = math.comb(n_atoms, width)
    if n_codes > MAX_CODES:
        raise SaeRdpError(
            f"C({n_atoms}, {width}) = {n_codes} codes exceeds the limit {MAX_CODES}; use a smaller m or width"
        )
    kk = min(k, width)
    rows = sum(math.comb(n_atoms, j) for j in range(kk + 1))
    if rows > MAX_TABLE_ROWS:
        raise SaeRdpError(
            f"the subset-error table would need {rows} rows (limit {MAX_TABLE_ROWS}); use a smaller m or K"
        )
    return _combinations(n_atoms, width), kk, _binom_table(n_atoms, kk)


def _error_tables(
    pmf: ActiveSetPMF, kk: int, coefficients: str, binom: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The squared error of every subset of j <= kk atoms (of all 2^m - 1) against every active set of
    the support, one ``[C(2^m - 1, j), N]`` table per j, rows in colex order: as comparison keys
    (:func:`_error_keys`: the error on the 2^-32 grid, then j) and as exact floats (+inf = infeasible)."""
    S, _ = pmf.support()
    am = atom_masks(pmf.m)
    keys, errs = [], []
    for j in range(kk + 1):
        comb = _combinations(am.shape[0], j)
        comb = comb[np.argsort(_colex_rank(comb, binom), kind="stable")]
        e = _subset_errors(am[comb], S, coefficients)
        keys.append(_error_keys(e, j))
        errs.append(e)
    return keys, errs


# ----------------------------------------------------------------------------- used-atom sets as bitsets
#
# Which atoms of a dictionary a code uses (fires with positive probability) is a mask c over the n
# positions; the set of masks reachable by the encoders that attain one (R, D) is a bitset over the
# 2^n masks, stored as ceil(2^n / 64) uint64 words per row (bit c of word c // 64 <=> mask c reachable).

_LOW_MASKS = [
    np.uint64(sum(1 << c for c in range(64) if (c >> b) & 1)) for b in range(6)
]  # positions c < 64 with bit b set


def _bits_words(n: int) -> int:
    return max(1, (1 << n) // 64)


def _bits_start(rows: int, n: int) -> np.ndarray:
    """Every row reaches only the empty mask (no atom used yet)."""
    b = np.zeros((rows, _bits_words(n)), dtype=np.uint64)
    b[:, 0] = 1
    return b


def _bits_or_pattern(bits: np.ndarray, t: int, n: int) -> np.ndarray:
    """{c | t : c in B} for the set B of masks of every row (using the atoms t as well)."""
    out = bits
    for b in range(n):
        if not (t >> b) & 1:
            continue
        if b < 6:  # within a word: positions with bit b clear move up by 2^b
            m_b = _LOW_MASKS[b]
            out = (out & m_b) | ((out & ~m_b) << np.uint64(1 << b))
        else:  # across words: word w without bit (b - 6) moves to word w + 2^(b-6)
            wb = 1 << (b - 6)
            words = np.arange(out.shape[1])
            hi = (words & wb) != 0
            new = np.zeros_like(out)
            new[:, hi] = out[:, hi] | out[:, words[hi] ^ wb]
            out = new
    return out


def _bits_to_bool(bits: np.ndarray, n: int) -> np.ndarray:
    """``[rows, 2^n]`` bool: mask c reachable."""
    c = np.arange(1 << n)
    return ((bits[:, c // 64] >> (c % 64).astype(np.uint64)) & np.uint64(1)).astype(bool)


def _mask_poly(codes: np.ndarray, m: int, reduce: str, power: int) -> np.ndarray:
    """``[C, 2^n]``: P (Definition 1, over the atoms at the positions in mask c) of every dictionary and
    mask; 0 for the empty mask (a code that writes nothing has no non-zero row)."""
    n = codes.shape[1]
    pi = atom_polysemanticity(m, power)[codes]  # [C, n]
    masks = ((np.arange(1 << n)[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)  # [2^n, n]
    out = np.zeros((codes.shape[0], 1 << n))
    for c in range(1, 1 << n):  # loop over the <= 2^n masks; vectorised over dictionaries
        out[:, c] = _reduce_p(pi[:, masks[c]], reduce)
    return out


def _least_p(
    bits: np.ndarray, dict_index: np.ndarray, ptab: np.ndarray, n: int, chunk: int = 200_000
) -> tuple[np.ndarray, np.ndarray]:
    """Least P over the reachable used-atom masks of each row, and that mask (the lowest on ties)."""
    P = np.empty(bits.shape[0])
    used = np.empty(bits.shape[0], dtype=np.int64)
    for lo in range(0, bits.shape[0], chunk):
        reach = _bits_to_bool(bits[lo : lo + chunk], n)
        vals = np.where(reach, ptab[dict_index[lo : lo + chunk]], np.inf)
        used[lo : lo + chunk] = vals.argmin(1)
        P[lo : lo + chunk] = vals.min(1)
    return P, used


def _grid(x: np.ndarray) -> np.ndarray:
    """Values on the 2^-32 grid as int64 (the comparison grid of errors, rates and distortions)."""
    return np.round(np.asarray(x, dtype=np.float64) * KEY_SCALE).astype(np.int64)


def _pareto_merge(
    key: np.ndarray, r: np.ndarray, d: np.ndarray, bits: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per ``key`` (a dictionary), the (r, d) Pareto points (both minimised, compared on the 2^-32
    grid): points equal on the grid are merged (their used-mask bitsets OR-ed), dominated points dropped.
    Returned sorted by (key, r)."""
    rq, dq = _grid(r), _grid(d)
    o = np.lexsort((dq, rq, key))
    key, rq, dq, r, d, bits = key[o], rq[o], dq[o], r[o], d[o], bits[o]
    first = np.ones(key.size, dtype=bool)
    first[1:] = (key[1:] != key[:-1]) | (rq[1:] != rq[:-1]) | (dq[1:] != dq[:-1])
    starts = np.flatnonzero(first)
    bits = np.bitwise_or.reduceat(bits, starts, axis=0)
    key, dq, r, d = key[starts], dq[starts], r[starts], d[starts]
    # keep a point iff its d is below every earlier point's d of the same key (earlier = less r, or
    # equal r and less d): a segmented running minimum, made global by offsetting each key's values
    gid = np.cumsum(np.r_[True, key[1:] != key[:-1]]) - 1
    drank = np.unique(dq, return_inverse=True)[1].reshape(-1).astype(np.int64)  # < number of points
    off = drank - gid * np.int64(key.size + 1)
    prev = np.empty_like(off)
    prev[0] = np.iinfo(np.int64).max
    prev[1:] = np.minimum.accumulate(off)[:-1]
    newg = np.r_[True, gid[1:] != gid[:-1]]
    keep = newg | (off < prev)
    return key[keep], r[keep], d[keep], bits[keep]


def enumerate_codes(
    pmf: ActiveSetPMF,
    width: int,
    k: int,
    coefficients: str = "binary",
    poly_reduce: str = "mean",
    poly_power: int = 1,
    chunk: int = 8192,
) -> CodeTable:
    """Exact (R, D, P) of EVERY dictionary of ``width`` distinct binary atoms (all C(2^m - 1, width)
    of them, no deduplication by symmetry) under distortion-optimal TopK-``k`` decoding (the
    ``encoders="optimal"`` class). P is over the atoms the code fires (``used``), the least over the
    decodings that tie (same error on the 2^-32 grid and same number of atoms for every set).

    Vectorised: the squared error of every subset of at most k atoms against every active set is
    tabulated once; each code then gathers the rows of its own subsets (colex ranks) and takes the
    tie-broken minimum, in chunks of ``chunk`` codes; the used-atom masks reachable through tied choices
    are carried set by set as bitsets."""
    _check_poly(poly_reduce, poly_power)
    codes, kk, binom = _class_setup(pmf, width, k, coefficients)
    m = pmf.m
    S, p = pmf.support()
    tables, errs = _error_tables(pmf, kk, coefficients, binom)
    pats = _subset_patterns(width, kk)
    pat_mask = [sum(1 << i for i in c) for c in pats]
    n_codes = codes.shape[0]
    R = np.empty(n_codes)
    D = np.empty(n_codes)
    P = np.empty(n_codes)
    used = np.empty(n_codes, dtype=np.int64)
    for lo in range(0, n_codes, chunk):
        cc = codes[lo : lo + chunk]
        rows = [_colex_rank(cc[:, list(c)], binom) for c in pats]
        best = np.full((cc.shape[0], S.shape[0]), KEY_INF, dtype=np.int64)
        for c, rw in zip(pats, rows):  # loop over the <= 2^width subset patterns; vectorised over codes and sets
            np.minimum(best, tables[len(c)][rw], out=best)
        _, size = _keys_to_error_size(best)
        emin = np.full(best.shape, np.nan)  # the exact error of a chosen subset (equal keys: equal on the grid)
        tied = []
        for c, rw in zip(pats, rows):
            tie = tables[len(c)][rw] == best  # [chunk, N]: this subset is an optimal choice for the set
            sel = tie & np.isnan(emin)
            emin[sel] = errs[len(c)][rw][sel]
            tied.append(tie)
        D[lo : lo + chunk] = emin @ p
        R[lo : lo + chunk] = size.astype(np.float64) @ p
        bits = _bits_start(cc.shape[0], width)  # used-atom masks reachable through tied optimal choices
        for s in range(S.shape[0]):
            acc = np.zeros_like(bits)
            for i, tie in enumerate(tied):
                t = tie[:, s]
                if t.any():
                    acc[t] |= _bits_or_pattern(bits[t], pat_mask[i], width)
            bits = acc
        ptab = _mask_poly(cc, m, poly_reduce, poly_power)
        P[lo : lo + chunk], used[lo : lo + chunk] = _least_p(bits, np.arange(cc.shape[0]), ptab, width)
    return CodeTable(
        m=m,
        width=int(width),
        k=int(k),
        coefficients=coefficients,
        codes=codes,
        rate=R,
        distortion=D,
        polysemanticity=P,
        expected_size=float(pmf.expected_size()),
        poly_reduce=poly_reduce,
        poly_power=poly_power,
        used=used,
    )


def enumerate_encoders(
    pmf: ActiveSetPMF,
    width: int,
    k: int,
    coefficients: str = "binary",
    poly_reduce: str = "mean",
    poly_power: int = 1,
    max_points: int = MAX_POINTS,
) -> CodeTable:
    """The unrestricted class (the paper's Assumption 4, ``encoders="all"``): every dictionary of
    ``width`` distinct binary atoms with ANY deterministic encoder S -> T (T a set of at most k of its
    atoms), not only the distortion-optimal one. Exact; one row per point of each dictionary's (R, D)
    Pareto frontier.

    For a dictionary W the attainable (R, D) are the sums over active sets S of one option per set,
    (p(S) |T|, p(S) err(S, T)): a Minkowski sum, whose Pareto frontier is a Pareto merge over the sets
    (frontier of the first s sets + the options of set s+1, pruned). Per set only the least error of
    each size |T| = j can be on the frontier. An encoder attaining a frontier point has a frontier prefix
    after every set (else a dominating prefix would dominate the point), so carrying, per prefix point,
    the set of used-atom masks reachable with tie-optimal options gives, for every frontier point, every
    set of atoms an encoder attaining it can use: ``polysemanticity`` is the least P over those used
    atoms (atoms that never fire do not count; a code that writes nothing has P = 0) and ``used`` that
    mask. The class's R-D envelope is the envelope of these rows (an encoder off its dictionary's
    frontier is dominated by one on it); a P budget can favour an encoder off every frontier, which the
    rows do not list. Rates and distortions are compared on a 2^-32 grid. Raises when the frontiers
    would hold more than ``max_points`` rows in all (use the "optimal" class)."""
    _check_poly(poly_reduce, poly_power)
    codes, kk, binom = _class_setup(pmf, width, k, coefficients)
    m, n = pmf.m, int(width)
    S, p = pmf.support()
    tables, errs = _error_tables(pmf, kk, coefficients, binom)
    pats = _subset_patterns(n, kk)
    pat_mask = [sum(1 << i for i in c) for c in pats]
    ranks = [_colex_rank(codes[:, list(c)], binom) for c in pats]  # [C] row of each pattern per code
    by_size = [[i for i, c in enumerate(pats) if len(c) == j] for j in range(kk + 1)]
    key = np.arange(codes.shape[0], dtype=np.int64)
    r = np.zeros(key.size)
    d = np.zeros(key.size)
    bits = _bits_start(key.size, n)
    for s in range(S.shape[0]):  # Pareto merge, one active set at a time; vectorised over dictionaries
        E = np.stack([tables[len(c)][ranks[i], s] for i, c in enumerate(pats)], 1)  # [C, npat] keys
        Ef = np.stack([errs[len(c)][ranks[i], s] for i, c in enumerate(pats)], 1)  # [C, npat] exact errors
        parts = []
        for j in range(kk + 1):
            Ej = E[:, by_size[j]]
            emin = Ej.min(1)
            efl = Ef[np.arange(Ej.shape[0]), np.asarray(by_size[j])[Ej.argmin(1)]]  # exact error of a minimiser
            ok = emin[key] < KEY_INF
            if not ok.any():
                continue
            kj, bok = key[ok], bits[ok]
            nb = np.zeros_like(bok)
            for col, i in enumerate(by_size[j]):  # OR over the tie-optimal patterns of size j
                tie = Ej[kj, col] == emin[kj]
                if tie.any():
                    nb[tie] |= _bits_or_pattern(bok[tie], pat_mask[i], n)
            parts.append((kj, r[ok] + p[s] * j, d[ok] + p[s] * efl[kj], nb))
        key, r, d, bits = (np.concatenate([x[i] for x in parts]) for i in range(4))
        key, r, d, bits = _pareto_merge(key, r, d, bits)
        if key.size > max_points:
            raise SaeRdpError(
                f"the unrestricted class has more than {max_points} frontier points here; "
                "use encoders 'optimal' (--encoders optimal) or a smaller m, width or support"
            )
    P, used = _least_p(bits, key, _mask_poly(codes, m, poly_reduce, poly_power), n)
    return CodeTable(
        m=m,
        width=n,
        k=int(k),
        coefficients=coefficients,
        codes=codes[key],
        rate=r,
        distortion=d,
        polysemanticity=P,
        expected_size=float(pmf.expected_size()),
        poly_reduce=poly_reduce,
        poly_power=poly_power,
        encoders="all",
        used=used,
        dictionary=key,
    )


def enumerate_class(
    pmf: ActiveSetPMF,
    width: int,
    k: int,
    encoders: str = "all",
    coefficients: str = "binary",
    poly_reduce: str = "mean",
    poly_power: int = 1,
) -> CodeTable:
    """:func:`enumerate_encoders` (``encoders="all"``, the paper's class) or :func:`enumerate_codes`
    (``"optimal"``: each dictionary with its distortion-optimal decoding only)."""
    if encoders not in ENCODERS:
        raise SaeRdpError(f"unknown encoders {encoders!r}: expected one of {', '.join(ENCODERS)}")
    fn = enumerate_encoders if encoders == "all" else enumerate_codes
    return fn(pmf, width, k, coefficients, poly_reduce, poly_power)


# ----------------------------------------------------------------------------- frontiers


def _rounded(x: np.ndarray, digits: int = 10) -> np.ndarray:
    return np.round(np.asarray(x, dtype=np.float64), digits)


def pareto_front(R: np.ndarray, D: np.ndarray, P: np.ndarray, digits: int = 10) -> np.ndarray:
    """Indices of the codes not dominated in (R, D, P) (all minimised): i is dominated iff some j has
    R_j <= R_i, D_j <= D_i, P_j <= P_i with at least one strict. Values are compared after rounding to
    ``digits`` decimals; codes with identical triples are all kept. Sorted by (R, D, P)."""
    r, d, q = _rounded(R, digits), _rounded(D, digits), _rounded(P, digits)
    n = r.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((q, d, r))
    r, d, q = r[order], d[order], q[order]
    same_prev = np.zeros(n, dtype=bool)
    same_prev[1:] = (r[1:] == r[:-1]) & (d[1:] == d[:-1]) & (q[1:] == q[:-1])
    start = np.maximum.accumulate(np.where(~same_prev, np.arange(n), 0))  # first index of each tie run
    levels = np.unique(q)
    lvl = np.searchsorted(levels, q)
    running = np.full(n, np.inf)  # min D over earlier points with P level <= current level
    dominated = np.zeros(n, dtype=bool)
    for li in range(levels.size):
        at = lvl == li
        pref = np.minimum.accumulate(np.where(at, d, np.inf))
        running = np.minimum(running, pref)
        idx = np.flatnonzero(at)
        before = start[idx] - 1
        has = before >= 0
        dominated[idx[has]] = running[before[has]] <= d[idx[has]]
    return order[~dominated]


def best_code_staircase(
    R: np.ndarray, D: np.ndarray, mask: np.ndarray | None = None, digits: int = 10, P: np.ndarray | None = None
) -> list[tuple[float, float, int]]:
    """The (R, D) lower envelope: the codes that give the best distortion at some rate budget, as
    ``[(rate, distortion, index), ...]`` with rate increasing and distortion strictly decreasing.
    D*(R_b) = distortion of the last entry with rate <= R_b. ``mask`` restricts to a subset of codes.
    Where several codes attain one envelope point, the index is that of the least ``P`` (if given),
    then the lowest index."""
    idx = np.arange(R.size) if mask is None else np.flatnonzero(mask)
    if idx.size == 0:
        return []
    r, d = _rounded(R[idx], digits), _rounded(D[idx], digits)
    q = np.zeros(idx.size) if P is None else np.asarray(P, dtype=np.float64)[idx]
    o = np.lexsort((q, d, r))
    out: list[tuple[float, float, int]] = []
    best = np.inf
    for j in o:  # loop over the sorted envelope candidates (cheap: one pass, no per-code work)
        if d[j] < best:
            best = d[j]
            out.append((float(R[idx[j]]), float(D[idx[j]]), int(idx[j])))
    return out


def rdp_function(
    R: np.ndarray, D: np.ndarray, P: np.ndarray, r_budgets: np.ndarray, p_budgets: np.ndarray, tol: float = 1e-10
) -> np.ndarray:
    """Theorem 3's D(R_b, P_b) = min { D_i : R_i <= R_b, P_i <= P_b } over the given codes, on a grid:
    ``[len(r_budgets), len(p_budgets)]`` (+inf where no code fits the budgets)."""
    rb = np.asarray(r_budgets, dtype=np.float64)
    pb = np.asarray(p_budgets, dtype=np.float64)
    out = np.full((rb.size, pb.size), np.inf)
    o = np.argsort(R, kind="stable")
    r, d, q = R[o], D[o], P[o]
    pos = np.searchsorted(r, rb + tol, side="right") - 1
    has = pos >= 0
    for j, pv in enumerate(pb):
        dmin = np.minimum.accumulate(np.where(q <= pv + tol, d, np.inf))
        out[has, j] = dmin[pos[has]]
    return out


# ----------------------------------------------------------------------------- monosemantic theory


@dataclass
class MonoPoints:
    """Attainable (R, D) of monosemantic codes. For ``mono_class="topk"``, point i is the code that
    represents the concept set ``sets[i]`` with TopK ``ks[i]``; for "omission" only (R, D) are kept.
    ``d_min`` is the least attainable distortion (the staircase's first corner); ``d_threshold`` the
    paper's Theorem-5 threshold min_{|A| <= width} sum_{l not in A} Pr[l in S] (no monosemantic code
    below it); ``topk_overflow`` = d_min - d_threshold >= 0, the extra distortion the cap of K atoms per
    sample forces on top of the omitted marginals (0 when no sample has more than K concepts)."""

    rate: np.ndarray
    distortion: np.ndarray
    expected_size: float
    d_min: float
    mono_class: str
    sets: list[list[int]] = field(default_factory=list)
    ks: list[int] = field(default_factory=list)
    d_threshold: float = 0.0
    topk_overflow: float = 0.0


def monosemantic_points(
    pmf: ActiveSetPMF, width: int, k: int, mono_class: str = "omission", max_values: int = 2_000_000
) -> MonoPoints:
    """Every attainable (R, D) of a tied monosemantic width-``width`` TopK-``k`` code (Proposition 2).

    A monosemantic code represents a concept set A with |A| <= min(width, m) (the other latents are zero
    rows) and outputs S_hat(S) subset of (S intersect A), |S_hat| <= k, so R = E|S_hat|, D = E|S| - R
    (Proposition 2 with equality: no false positives). CHOICE ``mono_class``:
      * "omission" (default, the class of the paper's Theorem 5): every deterministic map (any
        |S_hat(S)| in 0..min(|S intersect A|, k) per set); the attainable set is computed as a subset-sum
        (values rounded to 12 decimals at each step, to merge equal sums; at most ``max_values`` distinct
        values, else an error naming "topk");
      * "topk": the distortion-optimal TopK-k' decoder for some k' <= k, so
        |S_hat(S)| = min(|S intersect A|, k'); the attainable points are indexed by (A, k').
    Both classes have the same least distortion d_min = min over |A| <= width of
    [sum_{l not in A} Pr[l in S] + E(|S intersect A| - k)_+]; the paper's threshold drops the second
    term (``d_threshold``; ``topk_overflow`` = d_min - d_threshold)."""
    _check_common(pmf, k, "binary", width)
    if mono_class not in MONO_CLASSES:
        raise SaeRdpError(f"unknown mono_class {mono_class!r}: expected one of {', '.join(MONO_CLASSES)}")
    m = pmf.m
    S, p = pmf.support()
    es = float(pmf.expected_size())
    amax = min(int(width), m)
    allA = ((np.arange(2**m)[:, None] >> np.arange(m)[None, :]) & 1).astype(bool)  # [2^m, m]
    allA = allA[allA.sum(1) <= amax]
    inter = (S.astype(np.int64) @ allA.T.astype(np.int64)).T  # [nA, N] = |S intersect A|
    d_threshold = float(((~allA).astype(np.float64) @ pmf.marginals()).min())
    if mono_class == "topk":
        ks = np.arange(0, k + 1)
        rates = np.minimum(inter[:, None, :], ks[None, :, None]) @ p  # [nA, k+1]
        R = rates.reshape(-1)
        sets = [np.flatnonzero(a).tolist() for a in allA for _ in ks]
        kl = [int(kk) for _ in allA for kk in ks]
        D = es - R
        dmin = float(D.min())
        return MonoPoints(R, D, es, dmin, mono_class, sets, kl, d_threshold, max(dmin - d_threshold, 0.0))
    # omission codes: only maximal A matter (a superset allows every choice of a subset)
    full = allA[allA.sum(1) == amax]
    inter_f = (S.astype(np.int64) @ full.T.astype(np.int64)).T
    found = []
    for caps in np.unique(np.minimum(inter_f, k), axis=0):
        v = np.zeros(1)
        for cap, pr in zip(caps, p):
            if cap == 0 or pr == 0:
                continue
            v = _unique_on_grid((v[:, None] + pr * np.arange(cap + 1)[None, :]).reshape(-1))
            if v.size > max_values:
                raise SaeRdpError(
                    f"the omission class has more than {max_values} attainable distortions here; "
                    "use mono_class 'topk' (--mono-class topk)"
                )
        found.append(v)
    R = _unique_on_grid(np.concatenate(found))
    D = es - R
    dmin = float(D.min())
    return MonoPoints(R, D, es, dmin, mono_class, d_threshold=d_threshold, topk_overflow=max(dmin - d_threshold, 0.0))


def _unique_on_grid(v: np.ndarray, digits: int = 12) -> np.ndarray:
    """Sorted values with those equal after rounding to ``digits`` decimals merged; the values themselves
    are kept unrounded (one representative each), so sums stay exact to float precision."""
    _, idx = np.unique(np.round(v, digits), return_index=True)
    return v[idx]


def monosemantic_frontier(points: MonoPoints, digits: int = 10) -> list[tuple[float, float]]:
    """Corners of the exact staircase R_mono(D) (Theorem 5) as ``[(distortion, rate), ...]`` with
    distortion increasing: R_mono(D) = E|S| - max{D' attainable : D' <= D}, constant on
    [D_i, D_{i+1}); infeasible (no code) below the first corner, D < d_min."""
    d = np.unique(_rounded(points.distortion, digits))
    return [(float(x), float(points.expected_size - x)) for x in d]


def r_mono(points: MonoPoints, D: float | np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """R_mono(D) = E|S| - max{D' attainable : D' <= D}; +inf where D < d_min (no monosemantic code)."""
    d = np.unique(points.distortion)
    Dq = np.atleast_1d(np.asarray(D, dtype=np.float64))
    pos = np.searchsorted(d, Dq + tol, side="right") - 1
    out = np.full(Dq.shape, np.inf)
    out[pos >= 0] = points.expected_size - d[pos[pos >= 0]]
    return out


def monosemantic_rate_distortion(
    pmf: ActiveSetPMF, outputs: dict[frozenset[int], Iterable[int]]
) -> tuple[float, float]:
    """(R, D) of a deterministic tied monosemantic code given as its output map S -> S_hat (a set of
    concepts; sets missing from ``outputs`` output nothing): R = E|S_hat|, D = E|S symdiff S_hat|
    (orthonormal concepts, unit atoms). Proposition 2: R + D >= E|S|, equality iff S_hat subset of S."""
    R = D = 0.0
    for s, pr in pmf.table().items():
        sh = frozenset(outputs.get(s, ()))
        R += pr * len(sh)
        D += pr * len(s ^ sh)
    return R, D


def rate_tax_zero_distortion(pmf: ActiveSetPMF) -> float:
    """Theorem 4 at D = 0 with enough width: E|S| - Pr[S non-empty] = E(|S| - 1)_+.

    The unrestricted optimum writes each non-empty S with one atom (rate Pr[S != empty]); a monosemantic
    code with D = 0 must write every active concept (rate E|S|). Valid when width >= the number of
    non-empty sets in the support and >= the number of concepts that ever fire, and K >= max |S|."""
    sd = pmf.size_distribution()
    return float(sum(max(j - 1, 0) * q for j, q in enumerate(sd)))


def rate_tax(table: CodeTable, points: MonoPoints, pmf: ActiveSetPMF | None = None, digits: int = 10) -> dict[str, Any]:
    """Theorem 4 on the enumerated class. The unrestricted class is every row of ``table`` (encoders
    "all" or "optimal") together with the monosemantic codes of ``points`` (these are width-n TopK-K SAEs
    too, with zero latents or fewer active atoms), so the unrestricted optimum is never worse than the
    monosemantic one. For every point (R, D*) on its lower envelope (best distortion D* at rate budget R;
    among the codes attaining it, the one of least P), the least monosemantic rate with distortion <= D*
    is R_mono(D*) = E|S| - D_bar (D_bar = the largest attainable monosemantic distortion <= D*) and the
    tax is R_mono(D*) - R >= 0 (None where no monosemantic code reaches D*: an infinite tax). Also the
    dual distortion tax D_mono(R) - D*(R), D_mono(R) = least monosemantic distortion at rate <= R. With
    ``pmf``, adds the wide-enough D = 0 closed form E(|S| - 1)_+ (:func:`rate_tax_zero_distortion`)."""
    nc = len(table)
    R_all = np.concatenate([table.rate, points.rate])
    D_all = np.concatenate([table.distortion, points.distortion])
    P_all = np.concatenate([table.polysemanticity, np.zeros(points.rate.size)])
    stair = best_code_staircase(R_all, D_all, digits=digits, P=P_all)
    mono_r, mono_d = points.rate, points.distortion
    rows = []
    for r, d, i in stair:
        rm = float(r_mono(points, d)[0])
        ok = mono_r <= r + 1e-10
        dm = float(mono_d[ok].min()) if ok.any() else math.inf
        if i < nc:
            atoms, code, poly = table.used_atoms(i), i, float(table.polysemanticity[i])
        else:
            j = i - nc
            atoms = [[l] for l in points.sets[j]] if points.sets else None
            code, poly = None, 0.0
        rows.append(
            {
                "code": code,
                "atoms": atoms,
                "rate": r,
                "distortion": d,
                "polysemanticity": poly,
                "r_mono": None if math.isinf(rm) else rm,
                "rate_tax": None if math.isinf(rm) else rm - r,
                "d_mono": None if math.isinf(dm) else dm,
                "distortion_tax": None if math.isinf(dm) else dm - d,
            }
        )
    finite = [x["rate_tax"] for x in rows if x["rate_tax"] is not None]
    out: dict[str, Any] = {
        "definition": "rate_tax = R_mono(D*) - R for each (R, D*) on the lower envelope of the unrestricted "
        f"class (encoders '{table.encoders}', plus the monosemantic codes; code = None marks a monosemantic "
        "point, atoms = the atoms the code fires, ties toward the least P); None = no monosemantic code "
        "reaches D* (infinite tax)",
        "per_rate": rows,
        "max_rate_tax": max(finite) if finite else None,
        "infeasible_points": sum(x["rate_tax"] is None for x in rows),
    }
    if pmf is not None:
        out["zero_distortion_closed_form"] = rate_tax_zero_distortion(pmf)
    return out


# ----------------------------------------------------------------------------- Example 1

# Closed forms derived by hand (binary coefficients, distortion-optimal TopK decoding, ties toward fewer
# atoms), for a pair (a, b) and the third concept c: for each of the 8 sets (written in letters a, b, c)
# its (distortion, rate) per unit probability, so D = sum_S d_S p(S) and R = sum_S r_S p(S).


def _ex1_forms(k: int) -> dict[str, dict[str, Any]]:
    """Per-set (distortion, rate) of each Example-1 code, derived by hand (see the module docstring).

    Codes (pair (a, b), third concept c):
      mono2   {v_a, v_b}            monosemantic, width 2 (represents the pair)
      hedged2 {v_a+v_b, v_c}        the joint atom replaces the pair's monosemantic atoms
      split2  {v_a+v_b, v_a}        joint atom plus a fallback atom for one component
      mono3   {v_a, v_b, v_c}       monosemantic, width 3
      hedged3 {v_a+v_b, v_b, v_c}   the joint atom replaces v_a
      split3  {v_a+v_b, v_a, v_b}   joint atom plus fallbacks for both components (v_c dropped)
    """
    k1 = k == 1
    f: dict[str, dict[str, tuple[int, int]]] = {
        "mono2": {
            "": (0, 0),
            "a": (0, 1),
            "b": (0, 1),
            "c": (1, 0),
            "ab": (1, 1) if k1 else (0, 2),
            "ac": (1, 1),
            "bc": (1, 1),
            "abc": (2, 1) if k1 else (1, 2),
        },
        "hedged2": {
            "": (0, 0),
            "a": (1, 0),
            "b": (1, 0),
            "c": (0, 1),
            "ab": (0, 1),
            "ac": (1, 1),
            "bc": (1, 1),
            "abc": (1, 1) if k1 else (0, 2),
        },
        "split2": {
            "": (0, 0),
            "a": (0, 1),
            "b": (1, 0),
            "c": (1, 0),
            "ab": (0, 1),
            "ac": (1, 1),
            "bc": (2, 0),
            "abc": (1, 1),
        },
        "mono3": {
            "": (0, 0),
            "a": (0, 1),
            "b": (0, 1),
            "c": (0, 1),
            "ab": (1, 1) if k1 else (0, 2),
            "ac": (1, 1) if k1 else (0, 2),
            "bc": (1, 1) if k1 else (0, 2),
            "abc": (2, 1) if k1 else (1, 2),
        },
        "hedged3": {
            "": (0, 0),
            "a": (1, 0),
            "b": (0, 1),
            "c": (0, 1),
            "ab": (0, 1),
            "ac": (1, 1),
            "bc": (1, 1) if k1 else (0, 2),
            "abc": (1, 1) if k1 else (0, 2),
        },
        "split3": {
            "": (0, 0),
            "a": (0, 1),
            "b": (0, 1),
            "c": (1, 0),
            "ab": (0, 1),
            "ac": (1, 1),
            "bc": (1, 1),
            "abc": (1, 1),
        },
    }
    atoms = {
        "mono2": ["a", "b"],
        "hedged2": ["ab", "c"],
        "split2": ["ab", "a"],
        "mono3": ["a", "b", "c"],
        "hedged3": ["ab", "b", "c"],
        "split3": ["ab", "a", "b"],
    }
    return {name: {"per_set": f[name], "atoms": atoms[name]} for name in f}


def _letters_to_set(s: str, a: int, b: int, c: int) -> frozenset[int]:
    return frozenset({"a": a, "b": b, "c": c}[ch] for ch in s)


def _set_label(s: frozenset[int]) -> str:
    return "p({" + ",".join(str(i) for i in sorted(s)) + "})" if s else "p({})"


def example1_closed_form(pmf: ActiveSetPMF, k: int, pair: tuple[int, int] = (0, 1)) -> dict[str, dict[str, Any]]:
    """Closed-form (R, D) of the six Example-1 codes (see :func:`_ex1_forms`) for a three-concept pmf:
    R and D are linear in the eight probabilities p(S), with the hand-derived coefficients."""
    if pmf.m != 3:
        raise SaeRdpError(f"Example 1 needs a three-concept pmf, got m={pmf.m}")
    if k not in (1, 2):
        raise SaeRdpError(f"Example 1 is defined for K in {{1, 2}}, got {k!r}")
    a, b = pair
    if not (isinstance(a, int) and isinstance(b, int)) or a == b or not (0 <= a < 3 and 0 <= b < 3):
        raise SaeRdpError(f"pair must be two distinct concepts in 0..2, got {pair!r}")
    c = 3 - a - b
    tab = pmf.table()
    out = {}
    for name, spec in _ex1_forms(k).items():
        dcoef = {_letters_to_set(s, a, b, c): v[0] for s, v in spec["per_set"].items()}
        rcoef = {_letters_to_set(s, a, b, c): v[1] for s, v in spec["per_set"].items()}
        out[name] = {
            "atoms": [sorted(_letters_to_set(x, a, b, c)) for x in spec["atoms"]],
            "width": len(spec["atoms"]),
            "distortion": float(sum(dcoef[s] * tab.get(s, 0.0) for s in dcoef)),
            "rate": float(sum(rcoef[s] * tab.get(s, 0.0) for s in rcoef)),
            "distortion_coefficients": {_set_label(s): dcoef[s] for s in dcoef},
            "rate_coefficients": {_set_label(s): rcoef[s] for s in rcoef},
            "_dcoef": dcoef,
        }
    return out


def _inequality(dmono: dict, dpoly: dict) -> str:
    """'lhs > rhs' such that D_poly < D_mono  <=>  sum (dmono - dpoly)_S p(S) > 0."""
    diff = {s: dmono[s] - dpoly[s] for s in dmono}
    lhs = [(s, v) for s, v in diff.items() if v > 0]
    rhs = [(s, -v) for s, v in diff.items() if v < 0]

    def term(s: frozenset[int], v: int) -> str:
        return (f"{v} " if v != 1 else "") + _set_label(s)

    def side(xs: list) -> str:
        xs = sorted(xs, key=lambda t: (len(t[0]), sorted(t[0])))
        return " + ".join(term(s, v) for s, v in xs) if xs else "0"

    return f"{side(lhs)} > {side(rhs)}"


# The paper's counterexample (its Section E.3: co-occurrence, not correlation, drives hedging) as concrete
# pmfs for Example 1 with the pair (0, 1): hedging although concepts 0 and 1 are uncorrelated (independent
# firing), and no hedging although they are strongly correlated (rare, but mostly together).
EXAMPLE1_PRESETS: dict[str, dict[str, Any]] = {
    "hedging-zero-correlation": {
        "concepts": 3,
        "pmf": {
            ",".join(str(l) for l in range(3) if (b >> l) & 1): float(
                np.prod([q if (b >> l) & 1 else 1 - q for l, q in enumerate((0.8, 0.8, 0.5))])
            )
            for b in range(8)
        },
    },
    "no-hedging-strong-correlation": {"concepts": 3, "pmf": {"": 0.945, "0": 0.02, "1": 0.02, "0,1": 0.015}},
}


def _best_dictionary(pmf: ActiveSetPMF, width: int, k: int, mono_only: bool = False) -> dict[str, Any]:
    """The dictionary of least distortion (then least rate, then least P over the atoms it fires) among
    all ``width``-atom dictionaries (only single-concept atoms if ``mono_only``), by enumeration. The
    least distortion is the same in both encoder classes (every set takes a least-error subset)."""
    t = enumerate_codes(pmf, width, k)
    idx = np.flatnonzero(t.monosemantic) if mono_only else np.arange(len(t))
    i = int(idx[np.lexsort((t.polysemanticity[idx], _rounded(t.rate[idx]), _rounded(t.distortion[idx])))[0]])
    return {
        "atoms": t.used_atoms(i),
        "dictionary": t.atoms(i),
        "rate": float(t.rate[i]),
        "distortion": float(t.distortion[i]),
        "polysemanticity": float(t.polysemanticity[i]),
    }


def example1(pmf: ActiveSetPMF, k: int, pair: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """Example 1 (three concepts, K in {1, 2}, widths 2 and 3; binary coefficients): rate and distortion
    of the monosemantic, hedged and feature-splitting codes in closed form, the winner among them per
    width (least distortion, then least rate, then the monosemantic code) and, for each polysemantic code,
    the exact inequality in p under which it has strictly less distortion than the monosemantic code of
    the same width (``can_hold`` = False when no pmf satisfies it: no set has a positive coefficient).
    Next to the named codes: the best of ALL dictionaries of each width and the best monosemantic one (by
    enumeration; the paper assumes the pair's code {v_a, v_b} is the best monosemantic one), and the
    pair's co-occurrence Pr[a, b in S] and correlation. Indices are 0-based (THEORY.md's example is
    1-based: its {v1, v2, v1+v2} is split3 here)."""
    forms = example1_closed_form(pmf, k, pair)
    res: dict[str, Any] = {"k": int(k), "pair": list(pair), "codes": {}, "winner": {}, "inequalities": {}}
    for name, f in forms.items():
        res["codes"][name] = {
            x: f[x] for x in ("atoms", "width", "rate", "distortion", "distortion_coefficients", "rate_coefficients")
        }
    a, b = pair
    mg, co = pmf.marginals(), pmf.cooccurrence()
    var = mg[a] * (1 - mg[a]) * mg[b] * (1 - mg[b])
    res["pair_cooccurrence"] = float(co[a, b])
    res["pair_correlation"] = float((co[a, b] - mg[a] * mg[b]) / math.sqrt(var)) if var > 0 else None
    res["best_of_all_dictionaries"], res["best_monosemantic"] = {}, {}
    res["winner_is_best_of_all"], res["pair_code_is_best_monosemantic"] = {}, {}
    for w in (2, 3):
        names = [f"mono{w}", f"hedged{w}", f"split{w}"]
        order = sorted(
            names, key=lambda nm: (round(forms[nm]["distortion"], 12), round(forms[nm]["rate"], 12), nm != f"mono{w}")
        )
        res["winner"][f"width{w}"] = order[0]
        best, best_mono = _best_dictionary(pmf, w, k), _best_dictionary(pmf, w, k, mono_only=True)
        res["best_of_all_dictionaries"][f"width{w}"] = best
        res["best_monosemantic"][f"width{w}"] = best_mono
        res["winner_is_best_of_all"][f"width{w}"] = bool(forms[order[0]]["distortion"] <= best["distortion"] + 1e-12)
        res["pair_code_is_best_monosemantic"][f"width{w}"] = bool(
            forms[f"mono{w}"]["distortion"] <= best_mono["distortion"] + 1e-12
        )
        for nm in names[1:]:
            dmono, dpoly = forms[f"mono{w}"]["_dcoef"], forms[nm]["_dcoef"]
            gap = forms[f"mono{w}"]["distortion"] - forms[nm]["distortion"]
            res["inequalities"][nm] = {
                "beats_monosemantic_in_distortion_iff": _inequality(dmono, dpoly),
                "can_hold": any(dmono[s] > dpoly[s] for s in dmono),
                "holds": bool(gap > 1e-12),
                "distortion_gap": gap,
            }
    return res


# ----------------------------------------------------------------------------- one-call summary


def frontier_summary(
    pmf: ActiveSetPMF,
    width: int,
    k: int,
    coefficients: str = "binary",
    mono_class: str = "omission",
    poly_reduce: str = "mean",
    poly_power: int = 1,
    include_codes: bool = True,
    encoders: str = "all",
) -> tuple[dict[str, Any], CodeTable, MonoPoints]:
    """Enumerate the class (``encoders``: "all" = every encoder of every dictionary, the paper's
    Assumption 4; "optimal" = each dictionary's distortion-optimal decoding, see :func:`enumerate_class`),
    then the Pareto set, the best unrestricted and best monosemantic codes at each rate budget, the exact
    monosemantic staircase, the rate tax and the Theorem-3 / Proposition-2 checks, as a JSON-ready dict
    (plus the raw :class:`CodeTable` and :class:`MonoPoints`)."""
    mono = monosemantic_points(pmf, width, k, mono_class)
    table = enumerate_class(pmf, width, k, encoders, coefficients, poly_reduce, poly_power)
    R, D, P = table.rate, table.distortion, table.polysemanticity
    pareto = pareto_front(R, D, P)
    stair = best_code_staircase(R, D, P=P)
    mono_mask = P == 0  # codes that fire only single-concept atoms (or nothing)
    stair_mono = best_code_staircase(R, D, mono_mask)
    es = table.expected_size
    marg = pmf.marginals()
    # Proposition 2 on the enumerated monosemantic codes: R + D = E|S|, D >= omitted marginal mass
    prop2: dict[str, Any] = {"n_monosemantic_codes": int(mono_mask.sum())}
    if mono_mask.any():
        fired = ((table.used[mono_mask, None] >> np.arange(table.width)[None, :]) & 1).astype(bool)  # [Cm, n]
        rep = (atom_masks(pmf.m)[table.codes[mono_mask]] & fired[..., None]).any(1)  # [Cm, m] concepts written
        omitted = (~rep).astype(np.float64) @ marg
        prop2["max_abs(R+D-E|S|)"] = float(np.abs(R[mono_mask] + D[mono_mask] - es).max())
        prop2["min(D - omitted_mass)"] = float((D[mono_mask] - omitted).min())
    # Theorem 3 on the enumerated class: D(R_b, P_b) non-increasing in each budget
    rb = np.unique(_rounded(R))
    pb = np.unique(_rounded(P))
    rb = rb[np.unique(np.linspace(0, rb.size - 1, min(rb.size, 512)).round().astype(int))]  # budget grid (<= 512)
    pb = pb[np.unique(np.linspace(0, pb.size - 1, min(pb.size, 512)).round().astype(int))]
    grid = rdp_function(R, D, P, rb, pb)
    g = np.where(np.isinf(grid), 1e300, grid)
    mono_r = bool((np.diff(g, axis=0) <= 1e-12).all())
    mono_p = bool((np.diff(g, axis=1) <= 1e-12).all())
    atom_lists = ids_to_atoms(range(2**pmf.m - 1))
    used = table.used.tolist() if table.used is not None else [(1 << table.width) - 1] * len(table)
    codes_json = (
        [
            {
                "atoms": [atom_lists[a] for a in c],
                "used": [atom_lists[a] for j, a in enumerate(c) if (u >> j) & 1],
                "rate": r,
                "distortion": d,
                "polysemanticity": q,
            }
            for c, u, r, d, q in zip(table.codes.tolist(), used, R.tolist(), D.tolist(), P.tolist())
        ]
        if include_codes
        else []
    )
    out = {
        "inputs": {
            "pmf": pmf.to_json(),
            "width": int(width),
            "k": int(k),
            "encoders": encoders,
            "coefficients": coefficients,
            "mono_class": mono_class,
            "poly_reduce": poly_reduce,
            "poly_power": int(poly_power),
        },
        "stats": {
            "concepts": pmf.m,
            "expected_size": es,
            "marginals": marg.tolist(),
            "pr_nonempty": float(1.0 - pmf.size_distribution()[0]),
            "n_codes": len(table),
            "n_dictionaries": math.comb(2**pmf.m - 1, int(width)),
        },
        "codes": codes_json,
        "pareto": [int(i) for i in pareto],
        "best_unrestricted": [
            {"rate": r, "distortion": d, "code": i, "polysemanticity": float(P[i]), "atoms": table.used_atoms(i)}
            for r, d, i in stair
        ],
        "best_monosemantic_enumerated": [{"rate": r, "distortion": d, "code": i} for r, d, i in stair_mono],
        "monosemantic_frontier": [[d, r] for d, r in monosemantic_frontier(mono)],
        "monosemantic_d_min": mono.d_min,
        "monosemantic_infeasible_below": mono.d_threshold,
        "monosemantic_topk_overflow": mono.topk_overflow,
        "rate_tax": rate_tax(table, mono, pmf),
        "checks": {
            "proposition2": prop2,
            "theorem3_nonincreasing_in_rate_budget": mono_r,
            "theorem3_nonincreasing_in_poly_budget": mono_p,
            "theorem3_grid": [int(rb.size), int(pb.size)],
        },
    }
    return out, table, mono
