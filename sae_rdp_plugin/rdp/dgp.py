"""The data-generating process (DGP) of the RDP theory (THEORY.md section 1).

m concepts with unit directions v_1 .. v_m in R^d (rows of a ``[m, d]`` tensor), a joint pmf p(S) over
active sets S (subsets of {0, .., m-1}; 0-based here, 1-based in the paper), and observations

    x = sum_{l in S} c_l v_l  (+ optional Gaussian noise),

with c_l = 1 in the binary toy theory (``magnitude="binary"``).

Active-set pmfs share the :class:`ActiveSetPMF` interface: ``m``, ``marginals()`` (Pr[l in S]),
``cooccurrence()`` (Pr[{i, j} subset of S], diagonal = marginals), ``expected_size()`` (E|S|),
``sample(n, generator, device)`` (a ``[n, m]`` bool tensor) and, where the pmf is finite and exact,
``table()`` (``{frozenset: probability}``) and ``support()`` (masks and probabilities as arrays).

Families: :class:`ExplicitPMF` (a table; JSON file format below), :class:`BernoulliPMF` (independent
firing), :class:`CooccurringBlocksPMF` (a mixture with a co-occurrence knob rho; :func:`cooccurring_pairs`
for sweeps) and :class:`CorrelatedPMF` (SAELens ``ActivationGenerator`` Gaussian-copula correlations;
its statistics are Monte-Carlo estimates).

PMF file format (JSON)::

    {"concepts": 3, "pmf": {"": 0.1, "0": 0.3, "1": 0.2, "0,1": 0.4}}

keys are comma-separated 0-based concept indices ("" is the empty set); missing sets have probability 0;
probabilities are non-negative and sum to 1 within 1e-9.

Heavy libraries (``sae_lens``) are imported only inside the functions that need them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae_rdp_plugin.errors import SaeRdpError

SUM_TOL = 1e-9
MAX_ENUM_CONCEPTS = 20  # exact tables by enumeration of 2^m sets up to this m

__all__ = [
    "orthonormal_concepts",
    "random_unit_concepts",
    "concepts_from_feature_dictionary",
    "ActiveSetPMF",
    "ExplicitPMF",
    "BernoulliPMF",
    "CooccurringBlocksPMF",
    "cooccurring_pairs",
    "CorrelatedPMF",
    "DGP",
    "load_pmf",
    "set_key",
    "parse_set_key",
]


# ----------------------------------------------------------------------------- concept dictionaries


def _check_md(m: Any, d: Any) -> None:
    if not isinstance(m, (int, np.integer)) or isinstance(m, bool) or m < 1:
        raise SaeRdpError(f"number of concepts m must be a positive integer, got {m!r}")
    if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 1:
        raise SaeRdpError(f"dimension d must be a positive integer, got {d!r}")


def orthonormal_concepts(m: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[m, d]`` orthonormal concept directions (rows), a random rotation of the first m basis vectors
    (QR of a seeded Gaussian matrix). Needs d >= m."""
    _check_md(m, d)
    if d < m:
        raise SaeRdpError(f"orthonormal concepts need d >= m, got m={m}, d={d}")
    g = torch.Generator().manual_seed(int(seed))
    a = torch.randn(d, m, generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # unique QR (positive diagonal)
    return q.T.contiguous().to(dtype)


def random_unit_concepts(m: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[m, d]`` independent uniformly random unit directions (rows); overlapping when m > d."""
    _check_md(m, d)
    g = torch.Generator().manual_seed(int(seed))
    a = torch.randn(m, d, generator=g, dtype=torch.float64)
    return (a / a.norm(dim=1, keepdim=True)).to(dtype)


def concepts_from_feature_dictionary(fd: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Concept directions from a SAELens ``sae_lens.synthetic.FeatureDictionary``: its
    ``feature_vectors`` ``[num_features, hidden_dim]`` rows, renormalised to unit length.

    The DGP has no bias term, so a dictionary with a non-zero ``bias`` is rejected."""
    fv = getattr(fd, "feature_vectors", None)
    if not isinstance(fv, torch.Tensor) or fv.ndim != 2:
        raise SaeRdpError("expected a sae_lens FeatureDictionary with a 2-D feature_vectors tensor")
    v = fv.detach().to("cpu", torch.float64)
    if not torch.isfinite(v).all():
        raise SaeRdpError("FeatureDictionary feature_vectors contain NaN/Inf")
    norms = v.norm(dim=1, keepdim=True)
    if (norms < 1e-12).any():
        raise SaeRdpError("FeatureDictionary has a zero feature vector")
    bias = getattr(fd, "bias", None)
    if isinstance(bias, torch.Tensor) and bias.detach().abs().max().item() > 0:
        raise SaeRdpError("FeatureDictionary has a non-zero bias; the RDP DGP has none (use bias=False)")
    return (v / norms).to(dtype)


# ----------------------------------------------------------------------------- set keys


def set_key(s: Iterable[int]) -> str:
    """Canonical PMF-file key of a set: sorted comma-separated indices ("" for the empty set)."""
    return ",".join(str(i) for i in sorted(s))


def parse_set_key(key: Any, m: int) -> frozenset[int]:
    """Parse a PMF-file key ("", "0", "0,2") into a frozenset, validating it against m concepts."""
    if not isinstance(key, str):
        raise SaeRdpError(f"malformed PMF key {key!r}: expected a string of comma-separated indices")
    k = key.strip()
    if k == "":
        return frozenset()
    parts = [p.strip() for p in k.split(",")]
    idx: list[int] = []
    for p in parts:
        if not p.isdigit():
            raise SaeRdpError(f"malformed PMF key {key!r}: expected comma-separated 0-based concept indices")
        idx.append(int(p))
    for i in idx:
        if i >= m:
            raise SaeRdpError(f"PMF key {key!r}: concept index {i} out of range for {m} concepts (0..{m - 1})")
    if len(set(idx)) != len(idx):
        dup = next(i for i in idx if idx.count(i) > 1)
        raise SaeRdpError(f"PMF key {key!r} repeats concept {dup} (duplicate set element)")
    return frozenset(idx)


def _masks_from_sets(sets: Sequence[frozenset[int]], m: int) -> np.ndarray:
    masks = np.zeros((len(sets), m), dtype=bool)
    for r, s in enumerate(sets):
        for i in s:
            masks[r, i] = True
    return masks


def _all_masks(m: int) -> np.ndarray:
    """All 2^m subsets as a ``[2^m, m]`` bool array; row r is the binary expansion of r (bit l = concept l)."""
    r = np.arange(2**m, dtype=np.int64)
    return ((r[:, None] >> np.arange(m)[None, :]) & 1).astype(bool)


def _gen_device(generator: torch.Generator | None, device: str | torch.device) -> torch.device:
    return generator.device if generator is not None else torch.device(device)


# ----------------------------------------------------------------------------- base class


class ActiveSetPMF:
    """A distribution p(S) over active sets S subset of {0..m-1}.

    Subclasses set ``self.m`` and implement ``table()`` (exact, finite) or override the statistics and
    ``sample``. The defaults compute every statistic exactly from ``support()``:
    marginals_l = sum_S p(S) [l in S], cooccurrence_ij = sum_S p(S) [i, j in S], E|S| = sum_S p(S) |S|.
    """

    m: int
    exact: bool = True  # False where the statistics are Monte-Carlo estimates

    def table(self) -> dict[frozenset[int], float]:
        raise NotImplementedError(f"{type(self).__name__} has no exact finite table")

    def support(self) -> tuple[np.ndarray, np.ndarray]:
        """(masks ``[N, m]`` bool, probs ``[N]`` float64) of the sets with positive probability, in a
        deterministic order (by size, then lexicographically)."""
        cached = getattr(self, "_support_cache", None)
        if cached is not None:
            return cached
        tab = self.table()
        sets = sorted((s for s, p in tab.items() if p > 0), key=lambda s: (len(s), sorted(s)))
        masks = _masks_from_sets(sets, self.m)
        probs = np.array([tab[s] for s in sets], dtype=np.float64)
        self._support_cache = (masks, probs)
        return masks, probs

    def marginals(self) -> np.ndarray:
        """Pr[l in S] for each concept l, ``[m]`` float64."""
        masks, probs = self.support()
        return probs @ masks.astype(np.float64)

    def cooccurrence(self) -> np.ndarray:
        """Pr[{i, j} subset of S], ``[m, m]`` float64; the diagonal is the marginals."""
        masks, probs = self.support()
        f = masks.astype(np.float64)
        return (f * probs[:, None]).T @ f

    def expected_size(self) -> float:
        """E|S|."""
        return float(self.marginals().sum())

    def size_distribution(self) -> np.ndarray:
        """Pr[|S| = k] for k = 0..m, ``[m+1]`` float64."""
        masks, probs = self.support()
        return np.bincount(masks.sum(1), weights=probs, minlength=self.m + 1).astype(np.float64)

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        """``n`` i.i.d. active sets as a ``[n, m]`` bool tensor (categorical draw over the support)."""
        n = _check_n(n)
        masks, probs = self.support()
        gdev = _gen_device(generator, device)
        p = torch.as_tensor(probs, dtype=torch.float64, device=gdev)
        idx = (
            torch.multinomial(p, n, replacement=True, generator=generator)
            if n > 0
            else torch.zeros(0, dtype=torch.long, device=gdev)
        )
        mt = torch.as_tensor(masks, device=gdev)
        return mt[idx].to(device)

    def to_explicit(self) -> ExplicitPMF:
        return ExplicitPMF(self.m, self.table())

    def to_json(self, path: str | os.PathLike | None = None) -> dict[str, Any]:
        """The PMF-file dict of the exact table (written atomically to ``path`` if given)."""
        masks, probs = self.support()
        d = {
            "concepts": int(self.m),
            "pmf": {set_key(np.flatnonzero(mk).tolist()): float(p) for mk, p in zip(masks, probs)},
        }
        if path is not None:
            from sae_rdp_plugin.io import atomic_write_json

            atomic_write_json(path, d)
        return d


def _check_n(n: Any) -> int:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise SaeRdpError(f"number of samples must be a non-negative integer, got {n!r}")
    return int(n)


def _check_prob(x: Any, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise SaeRdpError(f"{what} must be a number, got {x!r}")
    x = float(x)
    if not math.isfinite(x):
        raise SaeRdpError(f"{what} is not finite ({x})")
    if x < 0 or x > 1:
        raise SaeRdpError(f"{what} must lie in [0, 1], got {x}")
    return x


# ----------------------------------------------------------------------------- explicit table


class ExplicitPMF(ActiveSetPMF):
    """An explicit table p(S) over subsets of {0..m-1}.

    ``table`` maps sets (frozensets / iterables of ints, or PMF-file string keys) to probabilities.
    Validation: m a positive int; every index in range; no set given twice; probabilities finite,
    non-negative and summing to 1 within 1e-9. Sets not listed have probability 0.
    """

    def __init__(self, m: int, table: Mapping[Any, Any]):
        if not isinstance(m, (int, np.integer)) or isinstance(m, bool) or m < 1:
            raise SaeRdpError(f"PMF 'concepts' (m) must be a positive integer, got {m!r}")
        self.m = int(m)
        if not isinstance(table, Mapping):
            raise SaeRdpError(f"PMF table must be a mapping from sets to probabilities, got {type(table).__name__}")
        tab: dict[frozenset[int], float] = {}
        names: dict[frozenset[int], str] = {}
        for key, p in table.items():
            if isinstance(key, str):
                s = parse_set_key(key, self.m)
            else:
                try:
                    items = list(key)
                except TypeError:
                    raise SaeRdpError(f"malformed PMF key {key!r}: expected a set of concept indices") from None
                if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) for i in items):
                    raise SaeRdpError(f"malformed PMF key {key!r}: indices must be integers")
                if any(i < 0 or i >= self.m for i in items):
                    bad = next(i for i in items if i < 0 or i >= self.m)
                    raise SaeRdpError(
                        f"PMF key {key!r}: concept index {bad} out of range for {self.m} concepts (0..{self.m - 1})"
                    )
                if len(set(items)) != len(items) and not isinstance(key, (set, frozenset)):
                    raise SaeRdpError(f"PMF key {key!r} repeats a concept (duplicate set element)")
                s = frozenset(int(i) for i in items)
            label = key if isinstance(key, str) else set_key(s)
            if s in tab:
                raise SaeRdpError(f"duplicate set in PMF: {names[s]!r} and {label!r} both name {{{set_key(s)}}}")
            if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
                raise SaeRdpError(f"PMF probability of {label!r} must be a number, got {p!r}")
            p = float(p)
            if not math.isfinite(p):
                raise SaeRdpError(f"PMF probability of {label!r} is not finite ({p})")
            if p < 0:
                raise SaeRdpError(f"negative probability {p} for set {label!r}")
            tab[s] = p
            names[s] = label
        total = math.fsum(tab.values())
        if abs(total - 1.0) > SUM_TOL:
            raise SaeRdpError(f"PMF probabilities sum to {total!r}, not 1 (tolerance {SUM_TOL})")
        self._table = tab

    def table(self) -> dict[frozenset[int], float]:
        return dict(self._table)

    @classmethod
    def from_json(cls, src: str | os.PathLike | Mapping[str, Any]) -> ExplicitPMF:
        """Load a PMF file (path) or its parsed dict: ``{"concepts": m, "pmf": {"0,1": p, ...}}``."""
        if isinstance(src, Mapping):
            obj: Any = src
        else:
            path = Path(src)
            try:
                text = path.read_text()
            except FileNotFoundError:
                raise SaeRdpError(f"PMF file not found: {path}") from None
            except OSError as exc:
                raise SaeRdpError(f"cannot read PMF file {path}: {exc.strerror}") from None

            def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
                seen: set[str] = set()
                for k, _ in pairs:
                    if k in seen:
                        raise SaeRdpError(f"duplicate key {k!r} in PMF file {path}")
                    seen.add(k)
                return dict(pairs)

            try:
                obj = json.loads(text, object_pairs_hook=hook)
            except json.JSONDecodeError as exc:
                raise SaeRdpError(f"malformed JSON in PMF file {path}: {exc.msg} (line {exc.lineno})") from None
        if not isinstance(obj, Mapping):
            raise SaeRdpError("PMF JSON must be an object with keys 'concepts' and 'pmf'")
        unknown = sorted(str(k) for k in obj if k not in ("concepts", "pmf"))
        if unknown:  # a misspelt key would otherwise be ignored
            raise SaeRdpError(f"unknown key(s) in PMF JSON: {', '.join(unknown)} (expected 'concepts' and 'pmf')")
        if "concepts" not in obj:
            raise SaeRdpError("PMF JSON is missing 'concepts' (the number of concepts m)")
        m = obj["concepts"]
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise SaeRdpError(f"PMF 'concepts' must be a positive integer, got {m!r}")
        if "pmf" not in obj:
            raise SaeRdpError("PMF JSON is missing 'pmf' (the table of set probabilities)")
        if not isinstance(obj["pmf"], Mapping):
            raise SaeRdpError("PMF 'pmf' must be an object mapping set keys to probabilities")
        return cls(m, dict(obj["pmf"]))

    def __repr__(self) -> str:
        return f"ExplicitPMF(m={self.m}, support={len(self._table)})"


def load_pmf(src: str | os.PathLike | Mapping[str, Any]) -> ExplicitPMF:
    """Alias of :meth:`ExplicitPMF.from_json`."""
    return ExplicitPMF.from_json(src)


# ----------------------------------------------------------------------------- independent firing


class BernoulliPMF(ActiveSetPMF):
    """Independent firing: concept l is active with probability q_l, independently.

    Closed forms for any m: marginals = q, cooccurrence_ij = q_i q_j (i != j), E|S| = sum q.
    ``table()`` enumerates all 2^m sets (m <= 20)."""

    def __init__(self, q: Sequence[float] | np.ndarray | torch.Tensor):
        qa = np.asarray(q.detach().cpu() if isinstance(q, torch.Tensor) else q, dtype=np.float64).reshape(-1)
        if qa.size == 0:
            raise SaeRdpError("BernoulliPMF needs at least one firing probability")
        for i, x in enumerate(qa):
            _check_prob(x, f"firing probability q[{i}]")
        self.q = qa
        self.m = int(qa.size)

    def marginals(self) -> np.ndarray:
        return self.q.copy()

    def cooccurrence(self) -> np.ndarray:
        c = np.outer(self.q, self.q)
        np.fill_diagonal(c, self.q)
        return c

    def expected_size(self) -> float:
        return float(self.q.sum())

    def table(self) -> dict[frozenset[int], float]:
        if self.m > MAX_ENUM_CONCEPTS:
            raise SaeRdpError(f"exact table needs m <= {MAX_ENUM_CONCEPTS} (2^m sets), got m={self.m}")
        masks = _all_masks(self.m)
        probs = np.where(masks, self.q[None, :], 1 - self.q[None, :]).prod(1)
        return {frozenset(np.flatnonzero(mk).tolist()): float(p) for mk, p in zip(masks, probs) if p > 0}

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        n = _check_n(n)
        gdev = _gen_device(generator, device)
        q = torch.as_tensor(self.q, dtype=torch.float64, device=gdev)
        u = torch.rand(n, self.m, generator=generator, device=gdev, dtype=torch.float64)
        return (u < q).to(device)

    def __repr__(self) -> str:
        return f"BernoulliPMF(q={self.q.tolist()})"


# ----------------------------------------------------------------------------- co-occurring blocks


class CooccurringBlocksPMF(ActiveSetPMF):
    """A mixture with a co-occurrence knob rho.

    Draw Z ~ Bernoulli(rho).
      * Z = 1 (block mode): pick block b with probability w_b (``block_weights``, default uniform) and set
        S = B_b: the whole block fires together and nothing else fires.
      * Z = 0 (base mode): ``base="independent"``: each concept l fires independently with probability
        q_l; ``base="exclusive"``: exactly one concept l fires with probability q_l, none with
        probability 1 - sum q (so at most one concept is ever active; needs sum q <= 1).

    Exact statistics (1[.] = indicator, q_l scalar or per-concept):
        Pr[l in S]      = rho sum_b w_b 1[l in B_b] + (1 - rho) q_l
        Pr[i, j in S]   = rho sum_b w_b 1[i, j in B_b] + (1 - rho) q_i q_j   (exclusive base: + 0)
        E|S|            = rho sum_b w_b |B_b| + (1 - rho) sum_l q_l
    rho = 0 is the base pmf (no extra co-occurrence; with the exclusive base, no co-occurrence at all).
    ``table()`` is exact (the independent base enumerates 2^m sets, m <= 20).
    """

    def __init__(
        self,
        m: int,
        blocks: Sequence[Sequence[int]],
        q: float | Sequence[float] = 0.1,
        rho: float = 0.0,
        block_weights: Sequence[float] | None = None,
        base: str = "independent",
    ):
        if not isinstance(m, (int, np.integer)) or isinstance(m, bool) or m < 1:
            raise SaeRdpError(f"number of concepts m must be a positive integer, got {m!r}")
        self.m = int(m)
        self.rho = _check_prob(rho, "rho")
        qa = (
            np.broadcast_to(np.asarray(q, dtype=np.float64), (self.m,)).copy()
            if np.ndim(q) == 0
            else np.asarray(q, dtype=np.float64)
        )
        if qa.shape != (self.m,):
            raise SaeRdpError(f"q must be a scalar or have {self.m} entries, got shape {qa.shape}")
        for i, x in enumerate(qa):
            _check_prob(x, f"q[{i}]")
        self.q = qa
        if base not in ("independent", "exclusive"):
            raise SaeRdpError(f"unknown base {base!r}: expected 'independent' or 'exclusive'")
        if base == "exclusive" and qa.sum() > 1 + SUM_TOL:
            raise SaeRdpError(f"exclusive base needs sum(q) <= 1, got {qa.sum()}")
        self.base = base
        bl: list[frozenset[int]] = []
        for b in blocks:
            items = list(b)
            if len(items) == 0:
                raise SaeRdpError("a co-occurring block must not be empty")
            if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0 or i >= self.m for i in items):
                raise SaeRdpError(f"block {items!r} has an index out of range for {self.m} concepts")
            if len(set(items)) != len(items):
                raise SaeRdpError(f"block {items!r} repeats a concept")
            bl.append(frozenset(int(i) for i in items))
        if self.rho > 0 and not bl:
            raise SaeRdpError("rho > 0 needs at least one block")
        self.blocks = bl
        if block_weights is None:
            w = np.full(len(bl), 1.0 / max(len(bl), 1))
        else:
            w = np.asarray(block_weights, dtype=np.float64)
            if w.shape != (len(bl),) or (w < 0).any() or not np.isfinite(w).all() or abs(w.sum() - 1) > SUM_TOL:
                raise SaeRdpError("block_weights must be non-negative, one per block, and sum to 1")
        self.block_weights = w
        self._bmask = _masks_from_sets(bl, self.m).astype(np.float64) if bl else np.zeros((0, self.m))

    def marginals(self) -> np.ndarray:
        return self.rho * (self.block_weights @ self._bmask) + (1 - self.rho) * self.q

    def cooccurrence(self) -> np.ndarray:
        blk = (self._bmask * self.block_weights[:, None]).T @ self._bmask
        if self.base == "independent":
            basec = np.outer(self.q, self.q)
            np.fill_diagonal(basec, self.q)
        else:
            basec = np.diag(self.q)
        return self.rho * blk + (1 - self.rho) * basec

    def expected_size(self) -> float:
        return float(self.marginals().sum())

    def table(self) -> dict[frozenset[int], float]:
        tab: dict[frozenset[int], float] = {}
        if self.rho < 1:
            if self.base == "independent":
                for s, p in BernoulliPMF(self.q).table().items():
                    tab[s] = tab.get(s, 0.0) + (1 - self.rho) * p
            else:
                p0 = max(0.0, 1.0 - float(self.q.sum()))
                if p0 > 0:
                    tab[frozenset()] = (1 - self.rho) * p0
                for l in range(self.m):
                    if self.q[l] > 0:
                        s = frozenset([l])
                        tab[s] = tab.get(s, 0.0) + (1 - self.rho) * self.q[l]
        if self.rho > 0:
            for b, w in zip(self.blocks, self.block_weights):
                if w > 0:
                    tab[b] = tab.get(b, 0.0) + self.rho * w
        return tab

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        n = _check_n(n)
        gdev = _gen_device(generator, device)
        q = torch.as_tensor(self.q, dtype=torch.float64, device=gdev)
        if self.base == "independent":
            u = torch.rand(n, self.m, generator=generator, device=gdev, dtype=torch.float64)
            base = u < q
        else:
            probs = torch.cat([q, (1 - q.sum()).clamp(min=0).reshape(1)])
            idx = (
                torch.multinomial(probs, n, replacement=True, generator=generator)
                if n
                else torch.zeros(0, dtype=torch.long, device=gdev)
            )
            base = torch.nn.functional.one_hot(idx, self.m + 1)[:, : self.m].bool()
        z = torch.rand(n, generator=generator, device=gdev, dtype=torch.float64) < self.rho
        if self.blocks and n:
            w = torch.as_tensor(self.block_weights, dtype=torch.float64, device=gdev)
            b = torch.multinomial(w, n, replacement=True, generator=generator)
            bm = torch.as_tensor(self._bmask, device=gdev).bool()[b]
            base = torch.where(z[:, None], bm, base)
        return base.to(device)

    def __repr__(self) -> str:
        return (
            f"CooccurringBlocksPMF(m={self.m}, blocks={[sorted(b) for b in self.blocks]}, "
            f"q={self.q.tolist()}, rho={self.rho}, base={self.base!r})"
        )


def cooccurring_pairs(
    m: int, rho: float, q: float | Sequence[float] = 0.1, base: str = "independent"
) -> CooccurringBlocksPMF:
    """Pairs that co-occur, with one scalar knob for sweeps: blocks {0,1}, {2,3}, ... (floor(m/2) pairs,
    uniform weights), mixture weight ``rho`` (see :class:`CooccurringBlocksPMF`). The co-occurrence mass
    of pair {2k, 2k+1} is rho / floor(m/2) (+ (1-rho) q^2 with the independent base)."""
    if not isinstance(m, (int, np.integer)) or isinstance(m, bool) or m < 2:
        raise SaeRdpError(f"cooccurring_pairs needs m >= 2 concepts, got {m!r}")
    blocks = [(2 * k, 2 * k + 1) for k in range(m // 2)]
    return CooccurringBlocksPMF(m, blocks, q=q, rho=rho, base=base)


# ----------------------------------------------------------------------------- SAELens correlated firing


class CorrelatedPMF(ActiveSetPMF):
    """Correlated firing through SAELens's ``sae_lens.synthetic.ActivationGenerator`` (Gaussian copula):
    concept l fires when g_l > Phi^{-1}(1 - p_l), with g ~ N(0, correlation_matrix).

    ``marginals()``, ``cooccurrence()`` and ``expected_size()`` are MONTE-CARLO ESTIMATES from
    ``n_estimate`` samples (default 200,000; standard error <= 0.5/sqrt(n_estimate) ~ 0.0011 per entry)
    drawn once with ``seed``; ``exact`` is False. ``table()`` is not available (the pmf is not finite-exact).

    ``correlation_matrix``: ``[m, m]`` tensor, a ``LowRankCorrelationMatrix``, a ``(factor, diag)``
    tuple, or None (independent). Build one with ``sae_lens.synthetic.create_correlation_matrix_from_correlations``.
    """

    exact = False

    def __init__(
        self,
        firing_probabilities: float | Sequence[float] | torch.Tensor,
        correlation_matrix: Any = None,
        m: int | None = None,
        n_estimate: int = 200_000,
        seed: int = 0,
    ):
        if isinstance(firing_probabilities, torch.Tensor):
            fp = firing_probabilities.detach().cpu().double().reshape(-1)
        elif np.ndim(firing_probabilities) == 0:
            if m is None:
                raise SaeRdpError("CorrelatedPMF with a scalar firing probability needs m")
            fp = torch.full((int(m),), float(firing_probabilities), dtype=torch.float64)  # type: ignore[arg-type]
        else:
            fp = torch.as_tensor(np.asarray(firing_probabilities, dtype=np.float64))
        if fp.numel() == 0:
            raise SaeRdpError("CorrelatedPMF needs at least one concept")
        for i, x in enumerate(fp.tolist()):
            _check_prob(x, f"firing probability [{i}]")
        self.m = int(fp.numel())
        if m is not None and int(m) != self.m:
            raise SaeRdpError(f"m={m} does not match {self.m} firing probabilities")
        self.firing_probabilities = fp.float()
        self.correlation_matrix = correlation_matrix
        self.n_estimate = _check_n(n_estimate)
        if self.n_estimate < 1:
            raise SaeRdpError("n_estimate must be positive")
        self.seed = int(seed)
        self._generators: dict[str, Any] = {}
        self._stats: tuple[np.ndarray, np.ndarray] | None = None
        self._generator_for("cpu")  # validate the correlation matrix now (SAELens raises ValueError)

    def _generator_for(self, device: torch.device | str) -> Any:
        key = str(torch.device(device))
        if key not in self._generators:
            from sae_lens.synthetic import ActivationGenerator

            corr = self.correlation_matrix
            if isinstance(corr, torch.Tensor):
                corr = corr.to(device=device, dtype=torch.float32)
            elif corr is not None:
                corr = (corr[0].to(device=device, dtype=torch.float32), corr[1].to(device=device, dtype=torch.float32))
            try:
                self._generators[key] = ActivationGenerator(
                    self.m,
                    self.firing_probabilities.to(device),
                    std_firing_magnitudes=0.0,
                    mean_firing_magnitudes=1.0,
                    correlation_matrix=corr,
                    device=device,
                )
            except ValueError as exc:
                raise SaeRdpError(f"invalid correlation structure: {exc}") from None
        return self._generators[key]

    def sample(
        self, n: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        """ActivationGenerator draws from torch's global RNG; a ``generator`` is used to derive a seed for a
        forked global RNG, so results are reproducible and the caller's global RNG state is untouched."""
        n = _check_n(n)
        dev = torch.device(device)
        if n == 0:
            return torch.zeros(0, self.m, dtype=torch.bool, device=dev)
        gen = self._generator_for(dev)
        devices = [dev] if dev.type == "cuda" else []
        if generator is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                acts = gen.sample(n)
        else:
            acts = gen.sample(n)
        return acts > 0

    def _estimate(self) -> tuple[np.ndarray, np.ndarray]:
        if self._stats is None:
            g = torch.Generator().manual_seed(self.seed)
            co = np.zeros((self.m, self.m))
            done = 0
            while done < self.n_estimate:
                b = min(50_000, self.n_estimate - done)
                a = self.sample(b, generator=g).double()
                co += (a.T @ a).numpy()
                done += b
            co /= self.n_estimate
            self._stats = (np.diag(co).copy(), co)
        return self._stats

    def marginals(self) -> np.ndarray:
        """Monte-Carlo estimate (``n_estimate`` samples) of Pr[l in S]."""
        return self._estimate()[0].copy()

    def cooccurrence(self) -> np.ndarray:
        """Monte-Carlo estimate (``n_estimate`` samples) of Pr[{i, j} subset of S]."""
        return self._estimate()[1].copy()

    def expected_size(self) -> float:
        """Monte-Carlo estimate of E|S|."""
        return float(self._estimate()[0].sum())

    def size_distribution(self) -> np.ndarray:
        raise NotImplementedError("CorrelatedPMF has no exact size distribution")

    def __repr__(self) -> str:
        return f"CorrelatedPMF(m={self.m}, n_estimate={self.n_estimate})"


# ----------------------------------------------------------------------------- the DGP


MAGNITUDES = ("binary", "uniform", "exponential", "lognormal")


class DGP:
    """x = sum_{l in S} c_l v_l + noise_std * N(0, I_d).

    ``concepts``: ``[m, d]`` tensor of concept directions (rows). ``pmf``: an :class:`ActiveSetPMF` with
    the same m. ``magnitude`` (c_l for active l, i.i.d.):
      * "binary": c_l = 1 (the toy theory);
      * "uniform": c_l ~ Uniform(low, high), ``magnitude_range`` = (low, high), default (0, 1);
      * "exponential": c_l ~ Exponential(1) (mean 1);
      * "lognormal": c_l = exp(sigma * N(0,1)), sigma = ``magnitude_sigma`` (default 0.5).
    """

    def __init__(
        self,
        concepts: torch.Tensor,
        pmf: ActiveSetPMF,
        magnitude: str = "binary",
        noise_std: float = 0.0,
        magnitude_range: tuple[float, float] = (0.0, 1.0),
        magnitude_sigma: float = 0.5,
    ):
        if not isinstance(concepts, torch.Tensor) or concepts.ndim != 2:
            raise SaeRdpError("concepts must be a 2-D tensor [m, d]")
        if not torch.isfinite(concepts).all():
            raise SaeRdpError("concepts contain NaN/Inf")
        if not isinstance(pmf, ActiveSetPMF):
            raise SaeRdpError(f"pmf must be an ActiveSetPMF, got {type(pmf).__name__}")
        if concepts.shape[0] != pmf.m:
            raise SaeRdpError(f"shape mismatch: {concepts.shape[0]} concept rows but the pmf has m={pmf.m}")
        if magnitude not in MAGNITUDES:
            raise SaeRdpError(f"unknown magnitude {magnitude!r}: expected one of {', '.join(MAGNITUDES)}")
        if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or not math.isfinite(noise_std):
            raise SaeRdpError(f"noise_std must be a finite number, got {noise_std!r}")
        if noise_std < 0:
            raise SaeRdpError(f"noise_std must be >= 0, got {noise_std}")
        lo, hi = (float(magnitude_range[0]), float(magnitude_range[1]))
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi < lo:
            raise SaeRdpError(f"magnitude_range must satisfy 0 <= low <= high, got {magnitude_range}")
        self.concepts = concepts
        self.pmf = pmf
        self.magnitude = magnitude
        self.noise_std = float(noise_std)
        self.magnitude_range = (lo, hi)
        self.magnitude_sigma = float(magnitude_sigma)

    @property
    def m(self) -> int:
        return int(self.concepts.shape[0])

    @property
    def d(self) -> int:
        return int(self.concepts.shape[1])

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x [n, d] float, active [n, m] bool)``; x has the concepts' dtype unless ``dtype`` is given."""
        n = _check_n(n)
        dtype = dtype or (self.concepts.dtype if self.concepts.is_floating_point() else torch.float32)
        gdev = _gen_device(generator, device)
        active = self.pmf.sample(n, generator=generator, device=gdev)
        if self.magnitude == "binary":
            c = active.to(dtype)
        else:
            if self.magnitude == "uniform":
                lo, hi = self.magnitude_range
                mag = lo + (hi - lo) * torch.rand(n, self.m, generator=generator, device=gdev, dtype=dtype)
            elif self.magnitude == "exponential":
                u = torch.rand(n, self.m, generator=generator, device=gdev, dtype=dtype)
                mag = -torch.log1p(-u)
            else:
                mag = torch.exp(
                    self.magnitude_sigma * torch.randn(n, self.m, generator=generator, device=gdev, dtype=dtype)
                )
            c = mag * active.to(dtype)
        x = c @ self.concepts.to(device=gdev, dtype=dtype)
        if self.noise_std > 0:
            x = x + self.noise_std * torch.randn(n, self.d, generator=generator, device=gdev, dtype=dtype)
        return x.to(device), active.to(device)

    def __repr__(self) -> str:
        return (
            f"DGP(m={self.m}, d={self.d}, pmf={self.pmf!r}, magnitude={self.magnitude!r}, noise_std={self.noise_std})"
        )
