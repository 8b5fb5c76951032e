"""Analysis of a finished sweep in (R, D, P): Pareto sets, the monosemantic conservation line
R + D = E|S| (Proposition 2), the exact monosemantic staircase from ``sae_rdp_plugin.rdp.theory`` for
small m, the monosemanticity premium, and figures.

Monosemantic premium of a trained SAE i on a DGP with E|S| = s:  pi_i = s - (R_i + D_i).
Every monosemantic code with binary orthonormal concepts satisfies R + D >= s (Proposition 2), so
pi_i > 0 certifies that SAE i reaches a (R, D) point no monosemantic code reaches: it pays for
its lower distortion with polysemantic atoms. ``premium`` per DGP is the largest pi over members.
(For trained SAEs with continuous activations and a decoder bias the line is the toy theory's bound,
compared here empirically.)
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from sae_rdp_plugin.io import atomic_save, atomic_write_json

__all__ = ["pareto_mask", "summarize", "plot_sweep"]


def _p(r: dict[str, Any]) -> float:
    """A member's decoder polysemanticity over its live latents (P_dec_live), else P_dec; NaN if none."""
    v = r.get("P_dec_live", r.get("P_dec"))
    return float("nan") if v is None else float(v)


def pareto_mask(*cols: np.ndarray) -> np.ndarray:
    """Points not dominated in every column (smaller is better): the empirical RDP lower envelope."""
    X = np.stack([np.asarray(c, dtype=float) for c in cols], axis=1)
    n = len(X)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        le = (X <= X[i]).all(1)
        lt = (X < X[i]).any(1)
        if (le & lt).any():
            keep[i] = False
    return keep


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per DGP: E|S|, member count, the (R, D, P) Pareto set, the largest monosemantic premium
    E|S| - R - D, the P of the premium-maximising members, and per architecture means."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by[r["dgp"]].append(r)
    out: dict[str, Any] = {}
    for name, rs in by.items():
        R = np.array([r["rate"] for r in rs])
        D = np.array([r["distortion"] for r in rs])
        P = np.array([_p(r) for r in rs])
        es = float(rs[0]["expected_size"])
        prem = es - R - D
        Pf = np.nan_to_num(P, nan=1.0)
        par = pareto_mask(R, D, Pf)
        i = int(np.argmax(prem))
        out[name] = {
            "expected_size": es,
            "n_members": len(rs),
            "premium_max": float(prem.max()),
            "premium_argmax": rs[i]["member_id"],
            "premium_argmax_P_dec": float(P[i]),
            "fraction_below_line": float((prem > 0.01).mean()),
            "pareto": [
                {k: rs[j][k] for k in ("member_id", "rate", "distortion", "P_dec", "P_dec_live", "P_ED")}
                for j in np.flatnonzero(par)
            ],
            "corr_premium_P": float(np.corrcoef(prem, Pf)[0, 1])
            if len(rs) > 2 and prem.std() > 0 and Pf.std() > 0
            else None,
        }
    return out


def plot_sweep(results: list[dict[str, Any]], out_dir: str | Path, prefix: str = "rdp") -> list[Path]:
    """Figures: per DGP, distortion vs rate coloured by P_dec with the line R + D = E|S|; and the
    premium against P_dec. Writes ``<prefix>_summary.json``. Returns the written paths (figures are
    skipped, with the JSON still written, if matplotlib is not installed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summ = summarize(results)
    paths = [atomic_write_json(out / f"{prefix}_summary.json", summ)]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by[r["dgp"]].append(r)
    names = list(by)
    # constrained layout: each panel's tick and axis labels get their own room (no overlap between panels)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False, layout="constrained")
    markers = {"topk": "o", "standard": "s", "jumprelu": "^", "batchtopk": "D"}
    sc = None
    for ax, name in zip(axes[0], names):
        rs = by[name]
        es = rs[0]["expected_size"]
        for arch, mk in markers.items():
            sel = [r for r in rs if r["architecture"] == arch]
            if not sel:
                continue
            sc = ax.scatter(
                [r["rate"] for r in sel],
                [r["distortion"] for r in sel],
                c=[_p(r) for r in sel],
                cmap="viridis",
                vmin=0,
                vmax=0.5,
                marker=mk,
                s=28,
                edgecolors="k",
                linewidths=0.3,
                label=arch,
            )
        rr = np.linspace(0, es, 20)
        ax.plot(rr, es - rr, "r--", lw=1, label="R + D = E|S| (mono bound)")
        ax.set_xlabel("rate R = E L0")
        if ax is axes[0][0]:  # one y label for the row: the panels share its meaning
            ax.set_ylabel("distortion D = E||x - x_hat||^2")
        ax.set_title(f"{name} (E|S| = {es:.2f})", fontsize=9)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=6)
    if sc is not None:
        fig.colorbar(sc, ax=axes[0].tolist(), label="P_dec (live latents)")
    p1 = out / f"{prefix}_rate_distortion.png"
    atomic_save(p1, lambda p: fig.savefig(p, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)
    paths.append(p1)

    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    for name in names:
        rs = by[name]
        prem = [r["expected_size"] - r["rate"] - r["distortion"] for r in rs]
        ax.scatter([_p(r) for r in rs], prem, s=16, label=name)
    ax.axhline(0, color="r", ls="--", lw=1)
    ax.set_xlabel("P_dec over live latents")
    ax.set_ylabel("E|S| - R - D (below the mono line if > 0)")
    ax.legend(fontsize=7)
    p2 = out / f"{prefix}_premium_vs_P.png"
    atomic_save(p2, lambda p: fig.savefig(p, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)
    paths.append(p2)
    return paths
