"""Per-dimension loss weights gamma for weighted SAEs (WSAE): estimation, validation and files.

The WSAE reconstruction loss (THEORY.md section 7) is

    L = E || Gamma (x - x_hat) ||_2^2,   Gamma = diag(gamma_1 .. gamma_d),   gamma_i = s_i ** alpha,

with s_i the variance of input dimension i over the training activations. alpha = 0 gives gamma = 1
(the ordinary SAE). CHOICE ``gamma_normalization="mean_square"`` rescales gamma so that
mean_i(gamma_i^2) = 1, which keeps the loss scale (and so the learning rate) comparable with the
unweighted SAE; ``"none"`` keeps gamma_i = s_i ** alpha.

Zero-variance rule (CHOICE ``variance_floor``, default 1e-6): before the power, every variance is
floored at ``variance_floor * mean_j(s_j)``, so a constant dimension gets a tiny but finite, positive
weight instead of 0 (or NaN / inf for negative powers). If every dimension has zero variance
(constant data) gamma = 1 everywhere. The floor is relative, so gamma does not change when the
activations are rescaled by a constant.

Massive-activation rule (CHOICE ``variance_cap_quantile`` = q, default None = no cap): after the floor and
before the power, every variance is capped at the q-quantile of the d floored variances,
s_i <- min(s_i, Q_q(s)). Why: in a model with massive activations one dimension can hold most of the
variance (Gemma-3-270M layer 9: 94% in one of 640); then gamma_i^2 = s_i^(2 alpha) puts nearly all of the
loss weight on that dimension and the SAE learns to reconstruct it only. With the cap, the largest
dimensions share the weight of the q-quantile dimension and the others keep their relative weights. q = 1
caps at the maximum, which changes nothing. The cap is a quantile of the variances, so it too is unchanged
when the activations are rescaled.

The statistics are accumulated in float64 in one streaming pass (Chan et al.'s pairwise merge of
per-batch mean and sum of squared deviations), so any number of batches fits in O(d) memory.

The gamma used by a run is saved as ``gamma.safetensors`` next to the SAE (never inside
``sae_weights.safetensors``: SAELens loads weights strictly): tensor ``gamma`` (float64) plus, when
estimated, ``mean`` and ``variance``; string metadata records alpha, normalization, floor, cap quantile,
source and the number of samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from sae_rdp_plugin.errors import SaeRdpError

GAMMA_FILENAME = "gamma.safetensors"
GAMMA_FORMAT_VERSION = "1"
GammaNormalization = Literal["mean_square", "none"]
GAMMA_NORMALIZATIONS: tuple[str, ...] = ("mean_square", "none")


def check_alpha(alpha: float) -> float:
    """Return alpha as a float; raise SaeRdpError unless it is finite and >= 0."""
    try:
        a = float(alpha)
    except (TypeError, ValueError) as exc:
        raise SaeRdpError(f"alpha must be a number >= 0, got {alpha!r}") from exc
    if not math.isfinite(a) or a < 0:
        raise SaeRdpError(f"alpha must be a finite number >= 0 (alpha = 0 is the ordinary SAE), got {alpha!r}")
    return a


def check_variance_cap_quantile(q: float | None) -> float | None:
    """Return q as a float (None stays None: no cap); raise SaeRdpError unless 0 < q <= 1."""
    if q is None:
        return None
    try:
        v = float(q) if not isinstance(q, bool) else math.nan
    except (TypeError, ValueError):
        v = math.nan
    if not (0 < v <= 1):  # also false for NaN
        raise SaeRdpError(f"variance_cap_quantile must be a number in (0, 1] (None: no cap), got {q!r}")
    return v


def check_normalization(normalization: str) -> str:
    if normalization not in GAMMA_NORMALIZATIONS:
        raise SaeRdpError(
            f"gamma_normalization must be one of {', '.join(GAMMA_NORMALIZATIONS)}, got {normalization!r}"
        )
    return normalization


def is_hook_z_shape(shape: torch.Size | tuple[int, ...], d_in: int) -> bool:
    """True for attention ``hook_z`` activations as SAELens passes them, (..., n_heads, d_head) with
    n_heads * d_head = d_in != d_head."""
    return len(shape) >= 2 and shape[-1] != d_in and shape[-2] * shape[-1] == d_in


def flatten_activations(x: torch.Tensor, d_in: int) -> torch.Tensor:
    """Activations of shape (..., d_in) or hook_z's (..., n_heads, d_head) as rows of length d_in.

    A hook_z row is flattened in SAELens's order ``(n_heads d_head)``: coordinate i = h * d_head + j,
    so gamma_i of a hook_z SAE weights head h, dimension j. Anything else raises SaeRdpError."""
    if x.shape[-1:] != (d_in,) and not is_hook_z_shape(x.shape, d_in):
        raise SaeRdpError(
            f"activation batch has shape {tuple(x.shape)}: expected (..., {d_in}) or hook_z's "
            f"(..., n_heads, d_head) with n_heads * d_head = d_in = {d_in}"
        )
    return x.reshape(-1, d_in)


class RunningMoments:
    """Streaming float64 per-dimension mean and variance (Chan/Welford merge of batch moments).

    For batches B_1, B_2, ... with sizes n_b, means m_b and M2_b = sum_{x in B_b} (x - m_b)^2:
        n = n_a + n_b,  delta = m_b - m_a,  m = m_a + delta n_b / n,
        M2 = M2_a + M2_b + delta^2 n_a n_b / n,   variance = M2 / n  (population variance).
    """

    def __init__(self, d: int) -> None:
        if d <= 0:
            raise SaeRdpError(f"dimension must be positive, got {d}")
        self.d = int(d)
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise SaeRdpError(f"activation batch must be a torch.Tensor, got {type(x).__name__}")
        xb = flatten_activations(x, self.d).detach().to(torch.float64)
        if xb.shape[0] == 0:
            return
        if not bool(torch.isfinite(xb).all()):
            raise SaeRdpError("activations contain NaN or Inf: cannot estimate gamma (check the model / hook)")
        nb = xb.shape[0]
        mb = xb.mean(0)
        m2b = (xb - mb).pow(2).sum(0)
        if self.mean is None:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        mb = mb.to(self.mean.device)
        m2b = m2b.to(self.mean.device)
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta.pow(2) * (self.n * nb / n)
        self.n = n

    @property
    def variance(self) -> torch.Tensor:
        if self.m2 is None or self.n == 0:
            raise SaeRdpError("no activations seen: cannot compute a variance")
        return self.m2 / self.n


@dataclass
class ActivationStats:
    """Per-dimension float64 mean and (population) variance of activations, over n samples."""

    mean: torch.Tensor
    variance: torch.Tensor
    n_samples: int
    source: str = "estimated"
    extra: dict[str, str] = field(default_factory=dict)


def estimate_activation_stats(
    batches: Iterable[torch.Tensor] | Iterator[torch.Tensor],
    d_in: int,
    n_batches: int,
    progress: bool = False,
) -> ActivationStats:
    """One streaming float64 pass over ``n_batches`` batches of shape [..., d_in] or hook_z's
    [..., n_heads, d_head] (:func:`flatten_activations`), e.g. SAELens's ActivationsStore or any iterator of
    activation tensors. NaN/Inf activations raise SaeRdpError."""
    if n_batches <= 0:
        raise SaeRdpError(f"n_batches must be positive, got {n_batches}")
    it = iter(batches)
    moments = RunningMoments(d_in)
    rng = range(n_batches)
    if progress:
        from tqdm.auto import tqdm

        rng = tqdm(rng, desc="Estimating gamma (activation variance)", leave=False)
    for _ in rng:
        try:
            batch = next(it)
        except StopIteration:
            break
        moments.update(batch)
    if moments.n == 0:
        raise SaeRdpError("the activation source yielded no data: cannot estimate gamma")
    return ActivationStats(
        mean=moments.mean.cpu(), variance=moments.variance.cpu(), n_samples=moments.n, source="estimated"
    )


def normalize_gamma(gamma: torch.Tensor, normalization: str = "mean_square") -> torch.Tensor:
    """Apply the normalization CHOICE: "mean_square" -> gamma / sqrt(mean(gamma^2)); "none" -> gamma."""
    check_normalization(normalization)
    g = gamma.to(torch.float64)
    if normalization == "none":
        return g.clone()
    ms = g.pow(2).mean()
    if not bool(ms > 0):
        raise SaeRdpError("gamma is zero everywhere: cannot normalise it to mean(gamma^2) = 1")
    return g / ms.sqrt()


def gamma_from_variance(
    variance: torch.Tensor,
    alpha: float,
    normalization: str = "mean_square",
    variance_floor: float = 1e-6,
    variance_cap_quantile: float | None = None,
) -> torch.Tensor:
    """gamma_i = t_i ** alpha, then normalised (float64), with

        f_i = max(s_i, variance_floor * mean(s))        (zero-variance rule)
        t_i = min(f_i, Q_q(f))   if variance_cap_quantile = q is given, else t_i = f_i

    Q_q is torch.quantile's linear interpolation between order statistics: with f sorted ascending
    f_(0) <= ... <= f_(d-1), h = q (d - 1) and j = floor(h), Q_q = f_(j) + (h - j) (f_(j+1) - f_(j)). The cap
    keeps a dimension holding most of the variance (massive activations) from getting gamma ~ its
    variance^alpha and so nearly all of the loss; q = 1 (Q = max f) and None give the same gamma.

    An alpha so large that some gamma_i leaves float64 range (overflow, or underflow to 0) raises
    SaeRdpError. alpha = 0 returns exactly 1 everywhere (the ordinary SAE), whatever the variances.
    """
    alpha = check_alpha(alpha)
    cap_q = check_variance_cap_quantile(variance_cap_quantile)
    s = variance.detach().to(torch.float64).flatten()
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise SaeRdpError("variance must be finite and non-negative")
    if variance_floor < 0 or not math.isfinite(variance_floor):
        raise SaeRdpError(f"variance_floor must be finite and >= 0, got {variance_floor}")
    if alpha == 0:
        return torch.ones_like(s)
    mean_s = s.mean()
    if not bool(mean_s > 0):  # constant data: every dimension has zero variance
        return torch.ones_like(s)
    floor = variance_floor * mean_s
    s = torch.clamp(s, min=floor) if variance_floor > 0 else s
    if cap_q is not None:
        s = torch.clamp(s, max=torch.quantile(s, cap_q))
    if bool((s == 0).any()):
        raise SaeRdpError("a dimension has zero variance and variance_floor = 0: gamma would be 0 there")
    gamma = s.pow(alpha)
    if normalization == "mean_square":
        gamma = gamma / gamma.pow(2).mean().sqrt()  # normalize_gamma, with its non-finite cases checked below
    else:
        check_normalization(normalization)
    # a large alpha takes s^alpha (or its square) out of float64 range: inf, then NaN or 0 after normalising
    if not bool(torch.isfinite(gamma).all()) or bool((gamma == 0).any()):
        raise SaeRdpError(
            f"alpha={alpha} is too large for these variances (from {float(s.min()):.3g} to {float(s.max()):.3g}): "
            "gamma = variance^alpha leaves float64 range; use a smaller alpha"
        )
    return gamma


def check_gamma(gamma: torch.Tensor | Iterable[float], d_in: int) -> torch.Tensor:
    """Validate an explicit gamma: 1-D of length d_in, finite, >= 0, not all zero. Returns float64."""
    g = torch.as_tensor(gamma if isinstance(gamma, torch.Tensor) else list(gamma), dtype=torch.float64)
    g = g.detach().cpu()
    if g.ndim != 1 or g.shape[0] != d_in:
        raise SaeRdpError(f"gamma has shape {tuple(g.shape)}, expected ({d_in},) (one weight per input dimension)")
    if not bool(torch.isfinite(g).all()):
        raise SaeRdpError("gamma contains NaN or Inf")
    if bool((g < 0).any()):
        raise SaeRdpError("gamma must be non-negative")
    if not bool((g > 0).any()):
        raise SaeRdpError("gamma is zero everywhere")
    return g


def save_gamma_file(
    path: str | Path,
    gamma: torch.Tensor,
    *,
    alpha: float | None,
    normalization: str,
    variance_floor: float | None,
    variance_cap_quantile: float | None = None,
    stats: ActivationStats | None = None,
    source: str = "explicit",
) -> Path:
    """Write gamma (+ optional mean/variance) to a safetensors file atomically; metadata values are strings
    ("" for None)."""
    from safetensors.torch import save_file

    from sae_rdp_plugin.io import atomic_save

    tensors = {"gamma": gamma.detach().to(torch.float64).cpu().contiguous()}
    meta = {
        "format_version": GAMMA_FORMAT_VERSION,
        "alpha": "" if alpha is None else repr(float(alpha)),
        "gamma_normalization": normalization,
        "variance_floor": "" if variance_floor is None else repr(float(variance_floor)),
        "variance_cap_quantile": "" if variance_cap_quantile is None else repr(float(variance_cap_quantile)),
        "source": source,
        "d_in": str(int(gamma.shape[0])),
    }
    if stats is not None:
        tensors["mean"] = stats.mean.detach().to(torch.float64).cpu().contiguous()
        tensors["variance"] = stats.variance.detach().to(torch.float64).cpu().contiguous()
        meta["n_samples"] = str(int(stats.n_samples))
    return atomic_save(Path(path), lambda p: save_file(tensors, str(p), metadata=meta))


@dataclass
class GammaFile:
    gamma: torch.Tensor
    metadata: dict[str, str]
    stats: ActivationStats | None


def load_gamma_file(path: str | Path, d_in: int | None = None) -> GammaFile:
    """Read a gamma file (a directory means ``<dir>/gamma.safetensors``); validate its gamma."""
    from safetensors import safe_open

    p = Path(path)
    if p.is_dir():
        p = p / GAMMA_FILENAME
    if not p.exists():
        raise SaeRdpError(f"gamma file not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise SaeRdpError(f"cannot read gamma file {p}: {exc}") from exc
    if "gamma" not in tensors:
        raise SaeRdpError(f"gamma file {p} has no 'gamma' tensor")
    g = tensors["gamma"]
    g = check_gamma(g, g.shape[0] if (d_in is None and g.ndim == 1) else (d_in if d_in is not None else -1))
    stats = None
    if "variance" in tensors:
        var = tensors["variance"].to(torch.float64)
        mean = tensors.get("mean", torch.zeros_like(var)).to(torch.float64)
        if var.shape != g.shape:
            raise SaeRdpError(f"gamma file {p}: variance has shape {tuple(var.shape)}, gamma {tuple(g.shape)}")
        stats = ActivationStats(mean=mean, variance=var, n_samples=int(meta.get("n_samples", "0") or 0), source="file")
    return GammaFile(gamma=g, metadata=meta, stats=stats)
