"""Auditing real polysemanticity proxies against the RDP ordering (THEORY.md section 6).

Given a sweep of N SAEs with rate ``R_i`` (e.g. L0), distortion ``D_i`` (e.g. 1 - explained variance)
and a proxy value ``s_i``, the proxy is first *oriented* as a polysemanticity score ``Pi_i``
(higher = more polysemantic): ``Pi = -s`` for higher-is-better interpretability metrics
(autointerp, unlearning, RAVEL, SCR, TPP, sparse probing), ``Pi = +s`` for absorption and
splitting (see :data:`ORIENTATION`).

The RDP function is non-increasing in each budget (Theorem 3), so an SAE under a tighter joint
(rate, distortion) budget cannot be *more* monosemantic than one under a looser budget:

* **Dominated pairs**: ``(i, j)`` with ``R_i <= R_j``, ``D_i <= D_j`` and ``(R_i, D_i) != (R_j, D_j)``;
  SAE ``i`` sits under the tighter joint budget, so theory says ``Pi_i >= Pi_j``.
* **Definition 3** (violation rate)::

      V = (1/|P|) sum_{(i,j) in P} ( 1[Pi_i < Pi_j] + tie_weight * 1[Pi_i == Pi_j] )

  0 = faithful, 0.5 = random, 1 = inverted. CHOICE ``tie_weight = 0.5``.
* **Definition 4** (rank correlation): joint budget rank ``b_i = rank(R_i) + rank(D_i)`` (ascending,
  average ranks for ties; CHOICE ``aggregation = "sum"``), ``rho = -Spearman(b, Pi)``:
  +1 = faithful, 0 = no trend, -1 = inverted.

Uncertainty (:func:`audit_proxy`): the **resampling unit is the SAE**. Bootstrap intervals redraw N SAEs
with replacement (the dominated pairs are recomputed inside each resample; copies of one SAE never
form a pair with each other, since their (R, D) are equal) and take percentile intervals; resamples
where the statistic is undefined (no dominated pair, constant ranks) are dropped and counted.
Permutation p-values shuffle ``Pi`` across SAEs while keeping every SAE's (R, D): the null hypothesis
is "the proxy is unrelated to the joint budget". They are two-sided, around 0.5 for V and 0 for rho,
``p = (1 + #{|T* - c| >= |T - c|}) / (1 + n_perm)``. Everything is seeded and vectorised over
resamples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from scipy.stats import rankdata

from sae_rdp_plugin.errors import SaeRdpError

Aggregation = Literal["sum", "max"]

# ----------------------------------------------------------------------------------------------
# Orientation table for SAEBench metrics
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Orientation:
    """How a SAEBench metric becomes a polysemanticity score: ``Pi = sign * s``.

    ``role`` is ``"proxy"`` for interpretability metrics (THEORY.md section 6) and ``"control"`` for
    reconstruction-side core metrics (they describe the (R, D) point itself, so they show what a
    metric that merely tracks reconstruction looks like under the audit; not polysemanticity proxies).
    """

    sign: int
    role: Literal["proxy", "control"]
    note: str


_HIB = "higher is better (more monosemantic / more useful), so Pi = -s"
# Patterns are matched against the metric's column name "<eval>.<category>.<metric>" with fnmatch;
# the first match wins. Eval type ids are as SAEBench writes them (autointerp, unlearning, RAVEL,
# scr, tpp, absorption_first_letter, sparse_probing, core) and sae-rdp's rdp_proxies.
ORIENTATION: dict[str, Orientation] = {
    "autointerp.*.autointerp_score": Orientation(-1, "proxy", _HIB),
    "unlearning.*.unlearning_score": Orientation(-1, "proxy", _HIB),
    "RAVEL.*.disentanglement_score": Orientation(-1, "proxy", _HIB),
    "RAVEL.*.isolation_score": Orientation(-1, "proxy", _HIB),
    "RAVEL.*.cause_score": Orientation(-1, "proxy", _HIB),
    "ravel.*.disentanglement_score": Orientation(-1, "proxy", _HIB),
    "ravel.*.isolation_score": Orientation(-1, "proxy", _HIB),
    "ravel.*.cause_score": Orientation(-1, "proxy", _HIB),
    "scr.*.scr_metric_threshold_*": Orientation(-1, "proxy", _HIB),
    "scr.*.scr_dir1_threshold_*": Orientation(-1, "proxy", _HIB),
    "scr.*.scr_dir2_threshold_*": Orientation(-1, "proxy", _HIB),
    "tpp.*.tpp_threshold_*_total_metric": Orientation(-1, "proxy", _HIB),
    "tpp.*.tpp_threshold_*_intended_diff_only": Orientation(-1, "proxy", _HIB),
    "tpp.*.tpp_threshold_*_unintended_diff_only": Orientation(
        +1, "proxy", "accuracy lost on the other classes: higher is worse, so Pi = +s"
    ),
    "absorption_first_letter.*.mean_absorption_fraction_score": Orientation(
        +1, "proxy", "absorption: higher = more polysemantic, Pi = +s"
    ),
    "absorption_first_letter.*.mean_full_absorption_score": Orientation(
        +1, "proxy", "absorption: higher = more polysemantic, Pi = +s"
    ),
    "absorption_first_letter.*.mean_num_split_features": Orientation(
        +1, "proxy", "feature splitting: higher = more split, Pi = +s"
    ),
    # sae-rdp's rdp_proxies eval: ground-truth-free proxies, both higher = more polysemantic
    "rdp_proxies.proxies.token_entropy": Orientation(
        +1, "proxy", "entropy of the token ids at a latent's top activations: higher = more polysemantic, Pi = +s"
    ),
    "rdp_proxies.proxies.decoder_max_cos": Orientation(
        +1, "proxy", "max |cos| of a decoder row with another: higher = more entangled, Pi = +s"
    ),
    "rdp_proxies.sample.dead_fraction": Orientation(+1, "control", "fraction of latents never active, Pi = +s"),
    "sparse_probing.sae.sae_test_accuracy": Orientation(-1, "proxy", _HIB),
    "sparse_probing.sae.sae_top_*_test_accuracy": Orientation(-1, "proxy", _HIB),
    # SAEBench's sae-probes variant (sparse_probing_sae_probes): the same accuracies, the same reading
    "sparse_probing_sae_probes.sae.sae_test_accuracy": Orientation(-1, "proxy", _HIB),
    "sparse_probing_sae_probes.sae.sae_top_*_test_accuracy": Orientation(-1, "proxy", _HIB),
    # core: reconstruction-side controls (higher-is-better fidelity -> Pi = -s; errors -> Pi = +s)
    "core.reconstruction_quality.explained_variance": Orientation(-1, "control", "fidelity, Pi = -s"),
    "core.reconstruction_quality.cossim": Orientation(-1, "control", "fidelity, Pi = -s"),
    "core.reconstruction_quality.mse": Orientation(+1, "control", "error, Pi = +s"),
    "core.model_performance_preservation.ce_loss_score": Orientation(
        -1, "control", "loss recovered (fidelity), Pi = -s"
    ),
    "core.model_performance_preservation.ce_loss_with_sae": Orientation(+1, "control", "error, Pi = +s"),
    "core.model_behavior_preservation.kl_div_score": Orientation(-1, "control", "fidelity, Pi = -s"),
    "core.model_behavior_preservation.kl_div_with_sae": Orientation(+1, "control", "error, Pi = +s"),
    "core.shrinkage.l2_ratio": Orientation(-1, "control", "norm kept (1 = none lost; < 1 = shrinkage), Pi = -s"),
    "core.sparsity.l1": Orientation(+1, "control", "rate-side (L1 of latents), Pi = +s"),
    "basic.l2_loss": Orientation(+1, "control", "error (mean ||x - x_hat||), Pi = +s"),
    "basic.frac_alive": Orientation(-1, "control", "fraction of latents alive, Pi = -s"),
}

# Fields with no polysemanticity reading at all: refusing them is clearer than guessing.
NOT_PROXIES = (
    "sparse_probing.llm.*",  # probes on the LLM itself: identical for every SAE of a layer
    "sparse_probing_sae_probes.llm.*",
    "core.sparsity.l0",  # the rate itself
    "rdp_proxies.sample.l0",  # the rate itself (rdp_proxies' held-out sample)
    "rdp_proxies.sample.n_tokens",  # settings of the rdp_proxies measurement
    "rdp_proxies.sample.top_m",
    "core.token_stats.*",
    "*std_dev*",
)


def orientation_of(name: str) -> Orientation:
    """The :class:`Orientation` of a SAEBench metric column (``eval.category.metric``).

    Raises SaeRdpError for a metric not in :data:`ORIENTATION` (pass ``NAME:+`` or ``NAME:-`` instead).
    """
    from fnmatch import fnmatchcase

    for pat in NOT_PROXIES:
        if fnmatchcase(name, pat):
            raise SaeRdpError(f"metric {name!r} is not an SAE polysemanticity proxy (matches {pat!r})")
    for pat, o in ORIENTATION.items():
        if fnmatchcase(name, pat):
            return o
    raise SaeRdpError(
        f"unknown metric {name!r}: give its orientation explicitly "
        "(NAME:+ if higher = more polysemantic, NAME:- if higher = more monosemantic)"
    )


def parse_proxy_spec(spec: str) -> tuple[str, int | None]:
    """``"NAME"`` -> (NAME, None); ``"NAME:+"`` -> (NAME, +1); ``"NAME:-"`` -> (NAME, -1)."""
    if spec.endswith(":+"):
        return spec[:-2], +1
    if spec.endswith(":-"):
        return spec[:-2], -1
    if not spec or spec.endswith(":"):
        raise SaeRdpError(f"bad proxy spec {spec!r}: use NAME, NAME:+ or NAME:-")
    return spec, None


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def _as_arrays(
    rate: Sequence[float], distortion: Sequence[float], pi: Sequence[float], names: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrs = []
    for label, a in (("rate", rate), ("distortion", distortion), ("pi", pi)):
        x = np.asarray(a, dtype=np.float64)
        if x.ndim != 1:
            raise SaeRdpError(f"{label} must be 1-D, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            bad = np.flatnonzero(~np.isfinite(x)).tolist()
            raise SaeRdpError(f"{label} has NaN/Inf values at SAE positions {bad[:10]}")
        arrs.append(x)
    r, d, p = arrs
    if not (len(r) == len(d) == len(p)):
        raise SaeRdpError(f"mismatched lengths: rate {len(r)}, distortion {len(d)}, pi {len(p)}")
    if len(r) < 2:
        raise SaeRdpError(f"need at least 2 SAEs, got {len(r)}")
    if names is not None:
        if len(names) != len(r):
            raise SaeRdpError(f"mismatched lengths: names {len(names)}, rate {len(r)}")
        seen: dict[str, int] = {}
        for i, n in enumerate(names):
            if n in seen:
                raise SaeRdpError(f"duplicate SAE {n!r} (positions {seen[n]} and {i})")
            seen[n] = i
    rows = np.stack([r, d, p], axis=1)
    _, first, counts = np.unique(rows, axis=0, return_index=True, return_counts=True)
    if np.any(counts > 1):
        i = int(first[np.argmax(counts > 1)])
        raise SaeRdpError(
            f"duplicate SAE: position {i} appears {int(counts.max())} times with identical rate, "
            "distortion and proxy; pass each SAE once"
        )
    return r, d, p


# ----------------------------------------------------------------------------------------------
# Core statistics (batched over resamples: leading axis B)
# ----------------------------------------------------------------------------------------------


def _dominance(r: np.ndarray, d: np.ndarray) -> np.ndarray:
    """dom[..., i, j] = SAE i is under a tighter joint budget than SAE j (Definition 3's pairs)."""
    ri, rj = r[..., :, None], r[..., None, :]
    di, dj = d[..., :, None], d[..., None, :]
    return (ri <= rj) & (di <= dj) & ((ri != rj) | (di != dj))


def _check_tie_weight(tie_weight: float) -> float:
    """tie_weight as a float in [0, 1] (the weight of a tie in V, which then stays in [0, 1]), else SaeRdpError."""
    try:
        w = float(tie_weight)
    except (TypeError, ValueError):
        raise SaeRdpError(f"tie_weight must be a number in [0, 1], got {tie_weight!r}") from None
    if isinstance(tie_weight, bool) or not 0 <= w <= 1:  # NaN fails too
        raise SaeRdpError(f"tie_weight must be a number in [0, 1], got {tie_weight!r}")
    return w


def _v_batched(dom: np.ndarray, p: np.ndarray, tie_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """V per batch row and the number of dominated pairs; V = NaN where there is none."""
    pi_, pj = p[..., :, None], p[..., None, :]
    bad = (pi_ < pj).astype(np.float64) + tie_weight * (pi_ == pj)
    n = dom.sum(axis=(-2, -1))
    s = (bad * dom).sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        v = np.where(n > 0, s / np.maximum(n, 1), np.nan)
    return v, n


def joint_budget_rank(rate: np.ndarray, distortion: np.ndarray, aggregation: Aggregation = "sum") -> np.ndarray:
    """b_i = rank(R_i) + rank(D_i) (ascending, average ranks for ties); ``aggregation="max"`` takes
    the larger of the two ranks instead (CHOICE; default "sum"). Works on the last axis."""
    if np.shape(rate) != np.shape(distortion):
        raise SaeRdpError(f"rate and distortion differ in shape: {np.shape(rate)} and {np.shape(distortion)}")
    rr = rankdata(rate, axis=-1)
    rd = rankdata(distortion, axis=-1)
    if aggregation == "sum":
        return rr + rd
    if aggregation == "max":
        return np.maximum(rr, rd)
    raise SaeRdpError(f"unknown aggregation {aggregation!r} (use 'sum' or 'max')")


def _spearman_batched(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation along the last axis (average ranks); NaN where either side is constant."""
    ra = rankdata(a, axis=-1)
    rb = rankdata(b, axis=-1)
    ra = ra - ra.mean(axis=-1, keepdims=True)
    rb = rb - rb.mean(axis=-1, keepdims=True)
    num = (ra * rb).sum(axis=-1)
    den = np.sqrt((ra * ra).sum(axis=-1) * (rb * rb).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return out


def _rho_batched(r: np.ndarray, d: np.ndarray, p: np.ndarray, aggregation: Aggregation) -> np.ndarray:
    return -_spearman_batched(joint_budget_rank(r, d, aggregation), p)


# ----------------------------------------------------------------------------------------------
# Public point estimates
# ----------------------------------------------------------------------------------------------


def dominated_pairs(rate: Sequence[float], distortion: Sequence[float]) -> np.ndarray:
    """All (i, j) with R_i <= R_j, D_i <= D_j, (R_i, D_i) != (R_j, D_j), as an (n_pairs, 2) int array."""
    r = np.asarray(rate, dtype=np.float64)
    d = np.asarray(distortion, dtype=np.float64)
    if r.ndim != 1 or r.shape != d.shape:
        raise SaeRdpError(f"rate and distortion must be 1-D of one length, got shapes {r.shape} and {d.shape}")
    return np.argwhere(_dominance(r, d))


def violation_rate(
    rate: Sequence[float],
    distortion: Sequence[float],
    pi: Sequence[float],
    *,
    tie_weight: float = 0.5,
    names: Sequence[str] | None = None,
) -> float:
    """Definition 3: V = fraction of dominated pairs (i under the tighter budget) with Pi_i < Pi_j.

    Ties Pi_i == Pi_j count ``tie_weight`` in [0, 1] (CHOICE, default 1/2). ``pi`` is already oriented
    (higher = more polysemantic). Raises SaeRdpError on < 2 SAEs, NaN, mismatched lengths,
    duplicate SAEs or a sweep with no dominated pair.
    """
    tie_weight = _check_tie_weight(tie_weight)
    r, d, p = _as_arrays(rate, distortion, pi, names)
    v, n = _v_batched(_dominance(r, d), p, tie_weight)
    if n == 0:
        raise SaeRdpError(
            f"no dominated pairs among {len(r)} SAEs: every SAE trades rate against distortion "
            "(a pure Pareto front), so Definition 3 is undefined"
        )
    return float(v)


def rdp_rank_correlation(
    rate: Sequence[float],
    distortion: Sequence[float],
    pi: Sequence[float],
    *,
    aggregation: Aggregation = "sum",
    names: Sequence[str] | None = None,
) -> float:
    """Definition 4: rho = -Spearman(b, Pi) with b_i = rank(R_i) + rank(D_i) (average ranks).

    +1 = faithful (the tighter the joint budget, the more polysemantic), -1 = inverted. Raises
    SaeRdpError, as :func:`violation_rate` does on undefined input, when Pi or b is constant across the
    sweep (Spearman undefined); :func:`audit_proxy` reports that case as ``rank_correlation=None``.
    """
    r, d, p = _as_arrays(rate, distortion, pi, names)
    rho = float(_rho_batched(r, d, p, aggregation))
    if not math.isfinite(rho):
        which = "the proxy" if np.all(p == p[0]) else "the joint budget rank"
        raise SaeRdpError(f"{which} is constant across the {len(r)} SAEs, so Definition 4 (Spearman) is undefined")
    return rho


# ----------------------------------------------------------------------------------------------
# Intervals and p-values
# ----------------------------------------------------------------------------------------------


@dataclass
class AuditResult:
    """One proxy on one sweep. Intervals are bootstrap percentile intervals over SAEs (None when
    too few resamples were defined); p-values are two-sided permutation p-values."""

    n_saes: int
    n_dominated_pairs: int
    violation_rate: float | None
    rank_correlation: float | None
    violation_rate_ci: tuple[float, float] | None
    rank_correlation_ci: tuple[float, float] | None
    p_value_violation: float | None
    p_value_rank_correlation: float | None
    n_boot: int
    n_boot_defined_v: int
    n_boot_defined_rho: int
    n_perm: int
    ci_level: float
    seed: int
    tie_weight: float = 0.5
    aggregation: str = "sum"
    extra: dict = field(default_factory=dict)

    def verdict(self, alpha: float = 0.05) -> str:
        """'faithful' / 'inverted' when V's permutation p < alpha, else 'no clear trend'. Without a
        dominated pair (V undefined) the verdict uses rho's p-value; 'undefined' when neither exists."""
        if self.violation_rate is not None and self.p_value_violation is not None:
            if self.p_value_violation < alpha:
                return "faithful" if self.violation_rate < 0.5 else "inverted"
            return "no clear trend"
        if self.rank_correlation is not None and self.p_value_rank_correlation is not None:
            if self.p_value_rank_correlation < alpha:
                return "faithful" if self.rank_correlation > 0 else "inverted"
            return "no clear trend"
        return "undefined"

    def to_dict(self) -> dict:
        out = asdict(self)
        for k, v in list(out.items()):
            if isinstance(v, float) and not math.isfinite(v):
                out[k] = None
            if isinstance(v, tuple):
                out[k] = list(v)
        return out


#: the most bootstrap resamples / permutations one audit runs: the p-value resolution is then 1e-5, and
#: the work (resamples x SAEs^2) stays bounded
MAX_RESAMPLES = 100_000


def check_resamples(n_boot: int, n_perm: int) -> None:
    """Raise SaeRdpError unless 0 <= n_boot <= MAX_RESAMPLES and 1 <= n_perm <= MAX_RESAMPLES (integers)."""
    for name, v, low in (("n_boot", n_boot, 0), ("n_perm", n_perm, 1)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not low <= v <= MAX_RESAMPLES:
            raise SaeRdpError(f"{name} must be an integer in {low}..{MAX_RESAMPLES:,}, got {v!r}")


def _chunks(total: int, size: int):
    s = 0
    while s < total:
        yield s, min(total, s + size)
        s += size


def audit_proxy(
    rate: Sequence[float],
    distortion: Sequence[float],
    pi: Sequence[float],
    *,
    n_boot: int = 2000,
    n_perm: int = 2000,
    ci_level: float = 0.95,
    seed: int = 0,
    tie_weight: float = 0.5,
    aggregation: Aggregation = "sum",
    names: Sequence[str] | None = None,
    allow_no_pairs: bool = False,
) -> AuditResult:
    """V and rho of one oriented proxy with bootstrap intervals (resampling SAEs) and permutation
    p-values (shuffling Pi across SAEs). Seeded (``seed``) and vectorised over resamples.

    Bootstrap: each resample draws N SAE indices with replacement and recomputes dominated pairs,
    V and rho on the resampled sweep; the interval is the (1-ci)/2, (1+ci)/2 percentile of the
    defined resamples (None if fewer than half are defined).
    Permutation: V*, rho* with Pi permuted; p = (1 + #{|T* - c| >= |T - c| - 1e-12}) / (1 + n_perm),
    c = 0.5 for V, 0 for rho.
    A sweep with no dominated pair (a pure rate-distortion Pareto front) raises SaeRdpError unless
    ``allow_no_pairs=True``, which returns V = None (rho may still be defined, or None when the joint
    budget rank is constant, as on an exactly anti-monotone front).
    """
    tie_weight = _check_tie_weight(tie_weight)
    r, d, p = _as_arrays(rate, distortion, pi, names)
    if not (0 < ci_level < 1):
        raise SaeRdpError(f"ci_level must be in (0, 1), got {ci_level}")
    check_resamples(n_boot, n_perm)
    n = len(r)
    dom = _dominance(r, d)
    v_obs, npairs = _v_batched(dom, p, tie_weight)
    if npairs == 0 and not allow_no_pairs:
        raise SaeRdpError(
            f"no dominated pairs among {n} SAEs: every SAE trades rate against distortion, so Definition 3 is undefined"
        )
    rho_obs = float(_rho_batched(r, d, p, aggregation))
    rng = np.random.default_rng(seed)
    chunk = max(1, 4_000_000 // (n * n))

    # bootstrap over SAEs
    vb, rb = [], []
    for a, b in _chunks(n_boot, chunk):
        idx = rng.integers(0, n, size=(b - a, n))
        rr, dd, pp = r[idx], d[idx], p[idx]
        vb.append(_v_batched(_dominance(rr, dd), pp, tie_weight)[0])
        rb.append(_rho_batched(rr, dd, pp, aggregation))
    vb_a = np.concatenate(vb) if vb else np.empty(0)
    rb_a = np.concatenate(rb) if rb else np.empty(0)
    q = [(1 - ci_level) / 2 * 100, (1 + ci_level) / 2 * 100]

    def _ci(x: np.ndarray) -> tuple[float, float] | None:
        x = x[np.isfinite(x)]
        if n_boot == 0 or len(x) < max(1, n_boot // 2):
            return None
        lo, hi = np.percentile(x, q)
        return (float(lo), float(hi))

    # permutation of Pi across SAEs (R, D and hence the dominated pairs stay fixed)
    vp, rp = [], []
    for a, b in _chunks(n_perm, chunk):
        perm = np.argsort(rng.random((b - a, n)), axis=1)
        pp = p[perm]
        vp.append(_v_batched(dom[None], pp, tie_weight)[0])
        rp.append(_rho_batched(np.broadcast_to(r, pp.shape), np.broadcast_to(d, pp.shape), pp, aggregation))
    vp_a = np.concatenate(vp)
    rp_a = np.concatenate(rp)
    eps = 1e-12
    p_v = (1 + np.sum(np.abs(vp_a - 0.5) >= abs(v_obs - 0.5) - eps)) / (1 + n_perm) if npairs else None
    if math.isfinite(rho_obs):
        p_rho: float | None = float((1 + np.sum(np.abs(np.nan_to_num(rp_a)) >= abs(rho_obs) - eps)) / (1 + n_perm))
    else:
        p_rho = None
    return AuditResult(
        n_saes=n,
        n_dominated_pairs=int(npairs),
        violation_rate=float(v_obs) if npairs else None,
        rank_correlation=rho_obs if math.isfinite(rho_obs) else None,
        violation_rate_ci=_ci(vb_a),
        rank_correlation_ci=_ci(rb_a),
        p_value_violation=None if p_v is None else float(p_v),
        p_value_rank_correlation=p_rho,
        n_boot=n_boot,
        n_boot_defined_v=int(np.isfinite(vb_a).sum()),
        n_boot_defined_rho=int(np.isfinite(rb_a).sum()),
        n_perm=n_perm,
        ci_level=ci_level,
        seed=seed,
        tie_weight=tie_weight,
        aggregation=aggregation,
    )
