"""Empirical RDP metrics: polysemanticity of a dictionary against known concepts, and the rate and
distortion of an SAE on a sample (THEORY.md sections 2-3).

Polysemanticity (Definition 1). For feature rows ``w_j`` (SAE decoder rows, or encoder columns) and
concept directions ``v_l`` the cosine table is ``C_jl = <w_j, v_l> / (|w_j| |v_l|)`` and

    P(W) = mean_{j : |w_j| > zero_tol} ( 1 - max_l |C_jl| ).

``P = 0`` exactly when every live row is aligned (up to sign) with a single concept; a row spread
equally over ``k`` orthonormal concepts scores ``1 - 1/sqrt(k)``. The joint encoder-decoder score is

    P_ED = mean_j ( 1 - max_l |C^enc_jl| * |C^dec_jl| ),

zero iff each live latent's encoder and decoder rows both align with the same concept.

Rate ``R = E ||z||_0``; distortion ``D = E ||x - x_hat||_2^2`` summed over dimensions (not averaged).
Ground-truth metrics (MCC, uniqueness, precision / recall / F1) are SAELens's own
(``sae_lens.synthetic``), called here rather than rewritten.

Everything works on any device; the cosine table is computed in row chunks so a 65k x 2304
dictionary against thousands of concepts stays within a bounded amount of memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from sae_rdp_plugin.errors import SaeRdpError

Reduction = Literal["mean", "sum", "max"]

__all__ = [
    "check_matrix",
    "max_concept_similarity",
    "per_feature_polysemanticity",
    "polysemanticity",
    "joint_polysemanticity",
    "sae_feature_rows",
    "sae_polysemanticity",
    "RateDistortion",
    "rate_distortion",
    "GroundTruthMetrics",
    "ground_truth_metrics",
]


def check_matrix(name: str, t: torch.Tensor, d: int | None = None) -> torch.Tensor:
    """Check ``t`` is a finite 2-D tensor (with ``d`` columns if given); raise SaeRdpError otherwise."""
    if not isinstance(t, torch.Tensor):
        raise SaeRdpError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != 2:
        raise SaeRdpError(f"{name} must be 2-D [rows, d], got shape {tuple(t.shape)}")
    if d is not None and t.shape[1] != d:
        raise SaeRdpError(f"shape mismatch: {name} has {t.shape[1]} columns, expected d={d}")
    if t.shape[0] == 0:
        raise SaeRdpError(f"{name} has no rows")
    if not t.is_floating_point():
        raise SaeRdpError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not bool(torch.isfinite(t).all()):
        raise SaeRdpError(f"{name} contains NaN or Inf")
    return t


def _unit_rows(t: torch.Tensor, zero_tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    norms = t.norm(dim=1)
    live = norms > zero_tol
    return t / norms.clamp(min=zero_tol if zero_tol > 0 else 1e-30).unsqueeze(1), live


def _similarity(c: torch.Tensor, use_abs: bool) -> torch.Tensor:
    return c.abs() if use_abs else c.square()


@torch.no_grad()
def max_concept_similarity(
    features: torch.Tensor,
    concepts: torch.Tensor,
    use_abs: bool = True,
    zero_tol: float = 1e-8,
    chunk_size: int = 4096,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each feature row j: ``max_l s(C_jl)`` and its argmax, with ``s = |.|`` (use_abs) or ``(.)^2``.

    Returns (max_sim [n], argmax [n], live [n] bool: row norm > zero_tol). Computed ``chunk_size``
    rows at a time, so peak extra memory is ``chunk_size x m`` entries. ``dtype`` (default: the
    features' dtype, at least float32) is the compute precision.
    """
    check_matrix("features", features)
    check_matrix("concepts", concepts, d=features.shape[1])
    if chunk_size < 1:
        raise SaeRdpError(f"chunk_size must be >= 1, got {chunk_size}")
    if zero_tol < 0:
        raise SaeRdpError(f"zero_tol must be >= 0, got {zero_tol}")
    cdt = dtype or torch.promote_types(features.dtype, torch.float32)
    v, v_live = _unit_rows(concepts.to(device=features.device, dtype=cdt), zero_tol)
    if not bool(v_live.any()):
        raise SaeRdpError("concepts: all concept directions are zero")
    v = v[v_live]
    n = features.shape[0]
    best = torch.empty(n, dtype=cdt, device=features.device)
    arg = torch.empty(n, dtype=torch.long, device=features.device)
    live = torch.empty(n, dtype=torch.bool, device=features.device)
    for s in range(0, n, chunk_size):
        w, lv = _unit_rows(features[s : s + chunk_size].to(cdt), zero_tol)
        sim = _similarity(w @ v.T, use_abs)
        b, a = sim.max(dim=1)
        best[s : s + chunk_size] = b
        arg[s : s + chunk_size] = a
        live[s : s + chunk_size] = lv
    return best, arg, live


def _reduce(values: torch.Tensor, reduction: Reduction) -> float:
    if reduction == "mean":
        return float(values.mean())
    if reduction == "sum":
        return float(values.sum())
    if reduction == "max":
        return float(values.max())
    raise SaeRdpError(f"unknown reduction {reduction!r} (mean, sum or max)")


def per_feature_polysemanticity(
    features: torch.Tensor,
    concepts: torch.Tensor,
    use_abs: bool = True,
    zero_tol: float = 1e-8,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scores ``1 - max_l s(C_jl)`` [n] and the live-row mask [n] (dead rows score NaN)."""
    best, _, live = max_concept_similarity(features, concepts, use_abs, zero_tol, chunk_size)
    score = 1.0 - best
    return torch.where(live, score, torch.full_like(score, float("nan"))), live


def polysemanticity(
    features: torch.Tensor,
    concepts: torch.Tensor,
    reduction: Reduction = "mean",
    use_abs: bool = True,
    zero_tol: float = 1e-8,
    chunk_size: int = 4096,
) -> float:
    """Polysemanticity P(W) of a dictionary (THEORY.md section 3, Definition 1).

    P(W) = reduce_{j live} ( 1 - max_l s(cos(w_j, v_l)) ).

    Args:
        features: [n, d], one row per SAE feature (decoder rows ``W_dec``; encoder rows ``W_enc.T``).
        concepts: [m, d], one row per ground-truth concept direction (need not be unit norm).
        reduction: CHOICE "mean" (default) over live rows, or "sum", or "max".
        use_abs: CHOICE True (default): s = |C|; False: s = C^2 (the squared-cosine variant).
        zero_tol: CHOICE rows with L2 norm <= zero_tol count as zero (dead) and are left out.
        chunk_size: rows of the cosine table computed at once (memory bound; result unchanged).

    Raises SaeRdpError on shape mismatch, NaN/Inf, or a dictionary whose rows are all zero.
    """
    best, _, live = max_concept_similarity(features, concepts, use_abs, zero_tol, chunk_size)
    if not bool(live.any()):
        raise SaeRdpError("features: every row is zero (norm <= zero_tol); P is undefined")
    return _reduce(1.0 - best[live], reduction)


@torch.no_grad()
def joint_polysemanticity(
    enc_features: torch.Tensor,
    dec_features: torch.Tensor,
    concepts: torch.Tensor,
    reduction: Reduction = "mean",
    use_abs: bool = True,
    zero_tol: float = 1e-8,
    chunk_size: int = 4096,
) -> float:
    """Joint encoder-decoder polysemanticity P_ED (THEORY.md section 3).

    P_ED = reduce_j ( 1 - max_l s(C^enc_jl) * s(C^dec_jl) ) over latents j whose encoder and decoder
    rows are both non-zero. ``enc_features`` is [n, d] (``W_enc.T`` in SAELens), ``dec_features``
    [n, d] (``W_dec``). Same CHOICE parameters as :func:`polysemanticity`.
    """
    check_matrix("enc_features", enc_features)
    check_matrix("dec_features", dec_features, d=enc_features.shape[1])
    if enc_features.shape[0] != dec_features.shape[0]:
        raise SaeRdpError(
            f"shape mismatch: {enc_features.shape[0]} encoder rows vs {dec_features.shape[0]} decoder rows"
        )
    check_matrix("concepts", concepts, d=enc_features.shape[1])
    cdt = torch.promote_types(dec_features.dtype, torch.float32)
    v, v_live = _unit_rows(concepts.to(device=dec_features.device, dtype=cdt), zero_tol)
    v = v[v_live]
    n = dec_features.shape[0]
    scores, lives = [], []
    for s in range(0, n, chunk_size):
        we, le = _unit_rows(enc_features[s : s + chunk_size].to(dec_features.device, cdt), zero_tol)
        wd, ld = _unit_rows(dec_features[s : s + chunk_size].to(cdt), zero_tol)
        prod = _similarity(we @ v.T, use_abs) * _similarity(wd @ v.T, use_abs)
        scores.append(1.0 - prod.max(dim=1).values)
        lives.append(le & ld)
    score, live = torch.cat(scores), torch.cat(lives)
    if not bool(live.any()):
        raise SaeRdpError("every latent has a zero encoder or decoder row; P_ED is undefined")
    return _reduce(score[live], reduction)


def sae_feature_rows(sae: Any, which: Literal["decoder", "encoder"] = "decoder") -> torch.Tensor:
    """Feature rows [d_sae, d_in] of a SAELens SAE: ``W_dec`` (decoder; SAELens stores it
    [d_sae, d_in]) or ``W_enc.T`` (encoder; SAELens stores ``W_enc`` as [d_in, d_sae])."""
    if which not in ("decoder", "encoder"):
        raise SaeRdpError(f"which must be 'decoder' or 'encoder', got {which!r}")
    name = "W_dec" if which == "decoder" else "W_enc"
    w = getattr(sae, name, None)
    if not isinstance(w, torch.Tensor):
        raise SaeRdpError(f"{type(sae).__name__} has no {name} tensor: not a SAELens SAE")
    return w.detach() if which == "decoder" else w.detach().T


def sae_polysemanticity(
    sae: Any,
    concepts: torch.Tensor,
    reduction: Reduction = "mean",
    use_abs: bool = True,
    zero_tol: float = 1e-8,
    chunk_size: int = 4096,
) -> dict[str, float]:
    """``{"P_dec", "P_enc", "P_ED"}`` of a SAELens SAE against concept directions [m, d_in]."""
    dec = sae_feature_rows(sae, "decoder")
    enc = sae_feature_rows(sae, "encoder")
    concepts = concepts.to(dec.device)
    kw = dict(reduction=reduction, use_abs=use_abs, zero_tol=zero_tol, chunk_size=chunk_size)
    return {
        "P_dec": polysemanticity(dec, concepts, **kw),
        "P_enc": polysemanticity(enc, concepts, **kw),
        "P_ED": joint_polysemanticity(enc, dec, concepts, **kw),
    }


@dataclass
class RateDistortion:
    """Rate R = E||z||_0, distortion D = E||x - x_hat||^2 (sum over dims), explained variance
    1 - sum||x - x_hat||^2 / sum||x - mean(x)||^2, dead latents (never non-zero on the sample)."""

    rate: float
    distortion: float
    explained_variance: float
    dead_latents: int
    n_samples: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@torch.no_grad()
def rate_distortion(
    encode: Callable[[torch.Tensor], torch.Tensor] | Any,
    x: torch.Tensor,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 4096,
) -> RateDistortion:
    """Rate, distortion, explained variance and dead latents of an SAE on the sample ``x`` [n, d].

    ``encode`` is a SAELens SAE (its ``encode``/``decode`` are used) or an encode callable, with
    ``decode`` then given. Statistics accumulate in float64 over batches of ``batch_size``.
    """
    if decode is None:
        sae = encode
        if not (callable(getattr(sae, "encode", None)) and callable(getattr(sae, "decode", None))):
            raise SaeRdpError(f"{type(sae).__name__} has no encode/decode: give a SAELens SAE or both callables")
        encode, decode = sae.encode, sae.decode
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SaeRdpError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    check_matrix("x", x)
    n = x.shape[0]
    l0 = torch.zeros((), dtype=torch.float64)
    se = torch.zeros((), dtype=torch.float64)
    s1 = torch.zeros(x.shape[1], dtype=torch.float64)
    s2 = torch.zeros((), dtype=torch.float64)
    fired: torch.Tensor | None = None
    for s in range(0, n, batch_size):
        xb = x[s : s + batch_size]
        z = encode(xb)
        xh = decode(z)
        if not bool(torch.isfinite(xh).all()):
            raise SaeRdpError("SAE reconstruction contains NaN or Inf")
        nz = z != 0
        l0 += nz.sum().double().cpu()
        se += (xb.double() - xh.double()).square().sum().cpu()
        s1 += xb.double().sum(0).cpu()
        s2 += xb.double().square().sum().cpu()
        f = nz.any(0).cpu()
        fired = f if fired is None else fired | f
    total_var = s2 - s1.square().sum() / n
    ev = float(1.0 - se / total_var) if float(total_var) > 0 else float("nan")
    assert fired is not None
    return RateDistortion(
        rate=float(l0 / n),
        distortion=float(se / n),
        explained_variance=ev,
        dead_latents=int((~fired).sum()),
        n_samples=n,
    )


@dataclass
class GroundTruthMetrics:
    """SAELens's ground-truth metrics (sae_lens.synthetic.evals): MCC (Hungarian matching on |cos|),
    uniqueness, and latents-as-detectors precision / recall / F1 / accuracy."""

    mcc: float
    uniqueness: float
    precision: float
    recall: float
    f1: float
    accuracy: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@torch.no_grad()
def ground_truth_metrics(
    dec_features: torch.Tensor,
    concepts: torch.Tensor,
    latents: torch.Tensor | None = None,
    concept_acts: torch.Tensor | None = None,
) -> GroundTruthMetrics:
    """MCC and uniqueness of decoder rows [n, d] against concepts [m, d] (SAELens's functions), and,
    given SAE latents [N, n] and concept activations [N, m] on the same samples, SAELens's
    classification metrics (NaN otherwise)."""
    from sae_lens.synthetic import (
        ClassificationMetricsCalculator,
        feature_uniqueness,
        mean_correlation_coefficient,
    )

    check_matrix("dec_features", dec_features)
    check_matrix("concepts", concepts, d=dec_features.shape[1])
    dec = dec_features.float().cpu()
    gt = concepts.float().cpu()
    mcc = mean_correlation_coefficient(dec, gt)
    uniq = feature_uniqueness(dec, gt)
    nan = float("nan")
    p = r = f1 = acc = nan
    if latents is not None and concept_acts is not None:
        if latents.shape[0] != concept_acts.shape[0] or latents.shape[1] != dec.shape[0]:
            raise SaeRdpError(
                f"shape mismatch: latents {tuple(latents.shape)} vs concept_acts "
                f"{tuple(concept_acts.shape)} for {dec.shape[0]} features"
            )
        calc = ClassificationMetricsCalculator(dec, gt)
        calc.add_batch(latents.float().cpu(), concept_acts.float().cpu())
        c = calc.compute()
        p, r, f1, acc = c.precision, c.recall, c.f1_score, c.accuracy
    return GroundTruthMetrics(mcc=mcc, uniqueness=uniq, precision=p, recall=r, f1=f1, accuracy=acc)
