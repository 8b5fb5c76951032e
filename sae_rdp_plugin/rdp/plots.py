"""Figures of the exact toy theory (matplotlib, Agg backend): the rate-distortion plane with the
monosemantic staircase, the polysemantic optimum and the rate tax; distortion against the
polysemanticity budget at fixed rate budgets; the tax against co-occurrence mass."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sae_rdp_plugin.io import atomic_save
from sae_rdp_plugin.rdp.theory import CodeTable, MonoPoints, best_code_staircase, r_mono, rdp_function


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _rate_staircase(R: np.ndarray, D: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Corners of R*(D_b) = min{R_i : D_i <= D_b} (distortion increasing, rate strictly decreasing)."""
    idx = np.arange(R.size) if mask is None else np.flatnonzero(mask)
    d, r = np.round(D[idx], 10), np.round(R[idx], 10)
    o = np.lexsort((r, d))
    xs, ys, best = [], [], np.inf
    for j in o:
        if r[j] < best:
            best = r[j]
            xs.append(D[idx[j]])
            ys.append(R[idx[j]])
    return np.array(xs), np.array(ys)


def _steps(xs: np.ndarray, ys: np.ndarray, xmax: float) -> tuple[np.ndarray, np.ndarray]:
    """Right-continuous step path through corners (xs increasing): y = ys[i] on [xs[i], xs[i+1])."""
    px, py = [], []
    for i in range(len(xs)):
        x1 = xs[i + 1] if i + 1 < len(xs) else xmax
        px += [xs[i], x1]
        py += [ys[i], ys[i]]
    return np.array(px), np.array(py)


def plot_frontier(
    table: CodeTable,
    mono: MonoPoints,
    path: str | os.PathLike,
    title: str = "",
    n_rate_budgets: int = 4,
    max_arrows: int = 24,
) -> Path:
    """Two panels. Left: every row of the class in the (D, R) plane coloured by P; the unrestricted optimum
    R*(D) = min rate at distortion <= D (black staircase), the exact monosemantic staircase R_mono(D)
    (Theorem 5, red; dotted: the paper's threshold, dash-dotted: the least monosemantic distortion when
    the cap of K atoms adds to it), the conservation line R + D = E|S| and the rate tax R_mono(D*) - R at
    corners of the unrestricted optimum (arrows). Right: D(R_b, P_b) against the polysemanticity budget
    P_b at a few fixed rate budgets R_b (Theorem 3: each curve is non-increasing)."""
    plt = _plt()
    R, D, P = table.rate, table.distortion, table.polysemanticity
    es = table.expected_size
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8))
    sc = ax.scatter(D, R, c=P, s=6, cmap="viridis", alpha=0.5, rasterized=True, linewidths=0)
    fig.colorbar(sc, ax=ax, label="polysemanticity P of the code")
    xmax = max(float(D.max()), es) * 1.02
    ux, uy = _rate_staircase(np.concatenate([R, mono.rate]), np.concatenate([D, mono.distortion]))
    px, py = _steps(ux, uy, xmax)
    ax.plot(px, py, color="black", lw=2, label="best code, any P: R*(D) (incl. monosemantic)")
    md = np.unique(np.round(mono.distortion, 10))
    mx, my = _steps(md, es - md, xmax)
    ax.plot(mx, my, color="crimson", lw=2, label=f"monosemantic staircase R_mono(D) (Thm 5, {mono.mono_class})")
    ax.axvline(mono.d_threshold, color="crimson", ls=":", lw=1, label="no monosemantic code left of this (Thm 5)")
    if mono.topk_overflow > 1e-12:
        ax.axvline(mono.d_min, color="crimson", ls="-.", lw=1, label="... nor left of this, with K atoms per sample")
    dd = np.linspace(0, xmax, 50)
    ax.plot(dd, np.clip(es - dd, 0, None), color="grey", ls="--", lw=1, label="R + D = E|S| (Prop 2)")
    stair = best_code_staircase(np.concatenate([R, mono.rate]), np.concatenate([D, mono.distortion]))
    arrows = []
    for r, d, _ in stair:
        rm = float(r_mono(mono, d)[0])
        if np.isfinite(rm) and rm - r > 1e-9:
            arrows.append((d, r, rm))
    if len(arrows) > max_arrows:  # thin out evenly; the JSON has every point
        arrows = [arrows[i] for i in np.linspace(0, len(arrows) - 1, max_arrows).round().astype(int)]
    for d, r, rm in arrows:
        ax.annotate(
            "",
            xy=(d, rm),
            xytext=(d, r),
            arrowprops=dict(arrowstyle="->", color="darkorange", lw=1.2, mutation_scale=9),
        )
    if arrows:
        ax.plot([], [], color="darkorange", lw=1.5, label="rate tax R_mono(D*) - R (Thm 4)")
    ax.set_xlabel("distortion D = E||x - x_hat||^2")
    ax.set_ylabel("rate R = E||z||_0")
    ax.set_xlim(-0.02 * xmax, xmax)
    ax.set_ylim(-0.05, max(float(R.max()), es) * 1.08)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title or f"m={table.m}, width {table.width}, TopK K={table.k}, encoders {table.encoders}")
    # right panel: D against P at fixed rate budgets
    rvals = np.unique(np.round(R, 10))
    if rvals.size > n_rate_budgets:
        rvals = rvals[np.linspace(0, rvals.size - 1, n_rate_budgets).round().astype(int)]
    pb = np.unique(np.round(P, 10))
    grid = rdp_function(R, D, P, rvals, pb)
    for i, rb in enumerate(rvals):
        ok = np.isfinite(grid[i])
        if ok.any():
            mk = dict(marker="o", ms=3) if ok.sum() <= 30 else {}
            bx.step(pb[ok], grid[i, ok], where="post", label=f"R_b = {rb:.3f}", **mk)
    bx.set_xlabel("polysemanticity budget P_b")
    bx.set_ylabel("D(R_b, P_b) = best distortion")
    bx.set_title("distortion against polysemanticity at fixed rate (Thm 3)")
    bx.legend(fontsize=8)
    fig.tight_layout()
    out = atomic_save(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return out


def plot_tax_sweep(
    rhos: Sequence[float], series: dict[str, Sequence[float | None]], path: str | os.PathLike, title: str = ""
) -> Path:
    """Rate tax against the co-occurrence knob rho, one line per series (None = infeasible, skipped)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = [
        dict(marker="o", ls="-"),
        dict(marker="s", ms=9, ls="-", mfc="none", lw=2.5),
        dict(marker="x", ms=7, ls="--"),
    ]
    for j, (name, ys) in enumerate(series.items()):
        xs = [r for r, y in zip(rhos, ys) if y is not None]
        yv = [y for y in ys if y is not None]
        ax.plot(xs, yv, label=name, **styles[j % len(styles)])
    ax.set_xlabel("co-occurrence knob rho (pair block probability)")
    ax.set_ylabel("rate tax")
    ax.set_title(title or "rate tax of monosemanticity vs co-occurrence")
    ax.axhline(0, color="grey", lw=0.8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = atomic_save(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return out


def plot_example1(res: dict[str, Any], path: str | os.PathLike, title: str = "") -> Path:
    """Bar chart of rate and distortion of the six Example-1 codes (winner per width marked)."""
    plt = _plt()
    names = list(res["codes"])
    d = [res["codes"][n]["distortion"] for n in names]
    r = [res["codes"][n]["rate"] for n in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.bar(x - 0.2, d, 0.4, label="distortion D")
    ax.bar(x + 0.2, r, 0.4, label="rate R")
    winners = set(res["winner"].values())
    ax.set_xticks(x, [n + (" *" if n in winners else "") for n in names])
    ax.set_title(title or f"Example 1, K={res['k']} (* = winner of its width)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = atomic_save(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return out
