"""The empirical RDP experiments on trained SAEs (``experiments/rdp_sweeps/run.py`` runs them; ``sae-rdp demo``
runs a small one). Each experiment is a :class:`~sae_rdp_plugin.sweep.config.SweepConfig` (a CPU size and a
GPU size) plus an analysis that writes JSON and PNG figures:

* ``frontier``: small m (4 concepts, 2 co-occurring pairs): trained TopK SAEs against the exact toy
  theory (``sae_rdp_plugin.rdp.theory``): the best binary-atom code and the best monosemantic code at the
  same width and K, from exhaustive enumeration.
* ``cooccurrence``: larger m: the monosemanticity premium E|S| - R - D of trained TopK and ReLU SAEs as
  the mass on co-occurring pairs (rho) grows, with no co-occurrence at all at rho = 0 (exclusive base),
  and the empirical budget function D*(R_budget, P_budget).
* ``rotation``: SAEs initialised monosemantic (atoms = concepts) vs randomly, tracking P_dec and the
  MSE during training.
* ``saelens``: SAELens synthetic models (hierarchy, low-rank correlation, neither).
"""

from __future__ import annotations

import json
import platform
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from sae_rdp_plugin.io import atomic_save, atomic_write_json, atomic_write_text
from sae_rdp_plugin.sweep.analysis import _p, pareto_mask, plot_sweep, summarize
from sae_rdp_plugin.sweep.config import DGPSpec, SweepConfig
from sae_rdp_plugin.sweep.data import build_dgp
from sae_rdp_plugin.sweep.train import train_sweep

EXPERIMENTS = ("frontier", "cooccurrence", "rotation", "saelens")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    atomic_save(path, lambda p: fig.savefig(p, dpi=110, bbox_inches="tight", format="png"))
    _plt().close(fig)
    return path


def _pairs(name: str, m: int, d: int, rho: float, q: float) -> DGPSpec:
    return DGPSpec(name=name, kind="pairs", m=m, d=d, rho=rho, q=q, base="exclusive")


# ----------------------------------------------------------------------------- configs


def config(name: str, size: str = "cpu") -> SweepConfig:
    """The sweep of experiment ``name`` at ``size`` "cpu" (minutes here) or "gpu" (paper-sized)."""
    gpu = size == "gpu"
    if name == "frontier":
        rhos = [0.0, 0.3, 0.6]
        return SweepConfig(
            dgps=[_pairs(f"m4_rho{r}", 4, 8, r, 0.2) for r in rhos],
            architectures=["topk"],
            widths=[4, 6],
            ks=[1, 2],
            seeds=list(range(6 if gpu else 3)),
            steps=6000 if gpu else 2000,
            batch_size=2048 if gpu else 512,
            lr=3e-3,
            eval_samples=50000 if gpu else 20000,
            record_every=0,
        )
    if name == "cooccurrence":
        rhos = [0.0, 0.2, 0.4, 0.6]
        m = 32 if gpu else 16
        return SweepConfig(
            dgps=[_pairs(f"m{m}_rho{r}", m, 2 * m, r, 0.8 / m) for r in rhos],
            architectures=["topk", "standard"],
            widths=[m, m + m // 2],
            ks=[1, 2, 3],
            l1_coefficients=[0.03, 0.1, 0.3, 1.0] if gpu else [0.1, 0.3, 1.0],
            seeds=list(range(4 if gpu else 2)),
            steps=8000 if gpu else 1500,
            batch_size=2048 if gpu else 512,
            lr=3e-3,
            eval_samples=50000 if gpu else 10000,
        )
    if name == "rotation":
        m = 8
        return SweepConfig(
            dgps=[_pairs("m8_rho0.5", m, 16, 0.5, 0.1), _pairs("m8_rho0", m, 16, 0.0, 0.1)],
            architectures=["topk"],
            widths=[m, m + m // 2],
            ks=[1],
            seeds=list(range(4 if gpu else 2)),
            inits=["monosemantic", "random"],
            steps=8000 if gpu else 2000,
            batch_size=2048 if gpu else 512,
            lr=3e-3,
            eval_samples=20000,
            record_every=100 if gpu else 50,
        )
    if name == "saelens":
        base = {
            "num_features": 16,
            "hidden_dim": 32,
            "firing_probability": {"generator_name": "constant", "probability": 0.08},
            "bias": False,
            "seed": 0,
        }
        hier = {"total_root_nodes": 4, "branching_factor": 3, "max_depth": 1}
        corr = {"rank": 4, "correlation_scale": 0.3, "seed": 0}
        dgps = [
            DGPSpec(name="saelens_plain", kind="saelens", saelens_config=dict(base)),
            DGPSpec(name="saelens_hierarchy", kind="saelens", saelens_config={**base, "hierarchy": hier}),
            DGPSpec(name="saelens_correlated", kind="saelens", saelens_config={**base, "correlation": corr}),
        ]
        return SweepConfig(
            dgps=dgps,
            architectures=["topk"],
            widths=[16, 24],
            ks=[1, 2, 4],
            seeds=list(range(3 if gpu else 2)),
            steps=6000 if gpu else 1500,
            batch_size=2048 if gpu else 512,
            lr=3e-3,
            eval_samples=20000,
        )
    raise ValueError(f"unknown experiment {name!r} (one of {', '.join(EXPERIMENTS)})")


# ----------------------------------------------------------------------------- analyses


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _by_dgp(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        by[r["dgp"]].append(r)
    return by


def analyze_frontier(results: list[dict[str, Any]], cfg: SweepConfig, out: Path) -> tuple[dict[str, Any], str]:
    """Trained TopK SAEs vs the exact theory at the same (width, K): best binary code, best monosemantic."""
    from sae_rdp_plugin.rdp import theory

    rows = []
    specs = {g.name: g for g in cfg.dgps}
    plt = _plt()
    names = list(_by_dgp(results))
    fig, axes = plt.subplots(1, len(names), figsize=(4.3 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        pmf = build_dgp(specs[name]).pmf
        es = float(pmf.expected_size())
        for w in cfg.widths:
            for k in sorted({int(r["k"]) for r in results}):
                table = theory.enumerate_codes(pmf, w, k)
                table_nnls = theory.enumerate_codes(pmf, w, k, coefficients="nnls")
                mono = theory.monosemantic_points(pmf, w, k, "topk")  # trained SAEs decode TopK
                rs = [r for r in results if r["dgp"] == name and r["width"] == w and int(r["k"]) == k]
                best = min(rs, key=lambda r: r["distortion"])
                rows.append(
                    {
                        "dgp": name,
                        "width": w,
                        "K": k,
                        "E|S|": es,
                        "theory_best_D": float(table.distortion.min()),
                        "theory_best_D_nnls": float(table_nnls.distortion.min()),
                        "theory_best_mono_D": float(mono.d_min),
                        "theory_tax_at_D0": theory.rate_tax_zero_distortion(pmf),
                        "trained_best_D": best["distortion"],
                        "trained_best_R": best["rate"],
                        "trained_best_P_dec": _p(best),
                        "trained_median_D": float(np.median([r["distortion"] for r in rs])),
                        "n_seeds": len(rs),
                    }
                )
                if w == max(cfg.widths):
                    par = pareto_mask(table.rate, table.distortion)
                    ax.scatter(
                        table.rate[par],
                        table.distortion[par],
                        marker="x",
                        c="gray",
                        s=30,
                        label="theory: Pareto binary codes" if k == 1 else None,
                    )
                    st = theory.monosemantic_frontier(mono)
                    ax.plot(
                        [r for _, r in st],
                        [d for d, _ in st],
                        "r.",
                        ms=6,
                        label="theory: monosemantic codes" if k == 1 else None,
                    )
        rs = [r for r in results if r["dgp"] == name]
        sc = ax.scatter(
            [r["rate"] for r in rs],
            [r["distortion"] for r in rs],
            c=[_p(r) for r in rs],
            cmap="viridis",
            vmin=0,
            vmax=0.4,
            s=22,
            edgecolors="k",
            linewidths=0.3,
            label="trained TopK SAEs",
        )
        rr = np.linspace(0, es, 10)
        ax.plot(rr, es - rr, "r--", lw=0.8)
        ax.set_title(f"{name}  E|S|={es:.2f}", fontsize=9)
        ax.set_xlabel("rate R")
        ax.set_ylabel("distortion D")
        ax.legend(fontsize=6)
    fig.colorbar(sc, ax=axes[0].tolist(), label="P_dec (live latents)")
    _save(fig, out / "frontier_vs_theory.png")
    lines = [
        "| DGP | width | K | theory best D, binary coefficients | theory best D, nnls coefficients | theory best D, "
        "monosemantic | trained best D | its R | its P_dec (live) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dgp']} | {r['width']} | {r['K']} | {r['theory_best_D']:.3f} | {r['theory_best_D_nnls']:.3f} | "
            f"{r['theory_best_mono_D']:.3f} | "
            f"{r['trained_best_D']:.3f} | {r['trained_best_R']:.2f} | {r['trained_best_P_dec']:.3f} |"
        )
    return {"rows": rows}, "\n".join(lines)


def analyze_cooccurrence(results: list[dict[str, Any]], cfg: SweepConfig, out: Path) -> tuple[dict[str, Any], str]:
    """Premium E|S| - R - D (best member, and per K for TopK) against the co-occurrence mass."""
    from sae_rdp_plugin.rdp import theory

    specs = {g.name: g for g in cfg.dgps}
    rows = []
    for name, rs in _by_dgp(results).items():
        pmf = build_dgp(specs[name]).pmf
        sd = pmf.size_distribution() if hasattr(pmf, "size_distribution") else None
        co_mass = float(sd[2:].sum()) if sd is not None else float("nan")
        prem = [r["expected_size"] - r["rate"] - r["distortion"] for r in rs]
        i = int(np.argmax(prem))
        row = {
            "dgp": name,
            "rho": specs[name].rho,
            "cooccurrence_mass": co_mass,
            "E|S|": rs[0]["expected_size"],
            "theory_tax_at_D0": theory.rate_tax_zero_distortion(pmf),
            "premium_max": prem[i],
            "premium_argmax": rs[i]["member_id"],
            "P_dec_at_argmax": _p(rs[i]),
            "mean_P_dec_topk": float(np.mean([_p(r) for r in rs if r["architecture"] == "topk"])),
            "evidence": premium_evidence(rs),
        }
        for k in sorted({int(r["k"]) for r in rs if r["k"] is not None}):
            sel = [r for r in rs if r["architecture"] == "topk" and int(r["k"]) == k and r["width"] == max(cfg.widths)]
            if sel:
                b = min(sel, key=lambda r: r["distortion"])
                row[f"topk_K{k}_best_D"] = b["distortion"]
                row[f"topk_K{k}_mono_D_min"] = (
                    float(theory.monosemantic_points(pmf, b["width"], k, "topk").d_min) if pmf.m <= 16 else None
                )
                row[f"topk_K{k}_P_dec"] = _p(b)
        rows.append(row)
    rows.sort(key=lambda r: r["rho"])
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    ax = axes[0]
    ax.plot(
        [r["cooccurrence_mass"] for r in rows],
        [r["premium_max"] for r in rows],
        "o-",
        label="trained: max(E|S| - R - D)",
    )
    ax.plot(
        [r["cooccurrence_mass"] for r in rows],
        [r["theory_tax_at_D0"] for r in rows],
        "s--",
        label="theory: rate tax at D=0",
    )
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("Pr[|S| >= 2] (co-occurrence mass)")
    ax.set_ylabel("monosemanticity premium")
    ax.legend(fontsize=7)
    ax = axes[1]
    for k in (1, 2, 3):
        xs = [r["cooccurrence_mass"] for r in rows if f"topk_K{k}_best_D" in r]
        if xs:
            ax.plot(
                xs,
                [r[f"topk_K{k}_best_D"] for r in rows if f"topk_K{k}_best_D" in r],
                "o-",
                label=f"trained TopK K={k}",
            )
            if rows[0].get(f"topk_K{k}_mono_D_min") is not None:
                ax.plot(
                    xs,
                    [r[f"topk_K{k}_mono_D_min"] for r in rows if f"topk_K{k}_best_D" in r],
                    "x:",
                    label=f"best monosemantic K={k}",
                )
    ax.set_xlabel("Pr[|S| >= 2]")
    ax.set_ylabel("best distortion D")
    ax.legend(fontsize=6)
    _save(fig, out / "premium_vs_cooccurrence.png")
    budget = budget_function(results, out)
    lines = [
        "| DGP | Pr[abs(S)>=2] | E abs(S) | theory tax at D=0 | trained max(E abs(S) - R - D) | P_dec there | TopK "
        "K=1 best D | mono K=1 min D |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dgp']} | {r['cooccurrence_mass']:.3f} | {r['E|S|']:.3f} | {r['theory_tax_at_D0']:.3f} | "
            f"{r['premium_max']:.3f} | {r['P_dec_at_argmax']:.3f} | {r.get('topk_K1_best_D', float('nan')):.3f} | "
            f"{_num(r.get('topk_K1_mono_D_min')):.3f} |"
        )
    lines += _evidence_lines(rows)
    return {"rows": rows, "budget_function": budget}, "\n".join(lines)


def premium_evidence(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """What one DGP's largest premium E|S| - R - D rests on: how many SAEs it is the best of, the best
    SAE's architecture, the premium of the same configuration at every seed, the largest premium of each
    seed, and the largest premium of each architecture."""

    def prem(r: dict[str, Any]) -> float:
        return r["expected_size"] - r["rate"] - r["distortion"]

    def cfg_key(r: dict[str, Any]) -> tuple:
        return (r["architecture"], r["width"], r["k"], r["l1_coefficient"], r["init"])

    best = max(rs, key=prem)
    same = sorted((r for r in rs if cfg_key(r) == cfg_key(best)), key=lambda r: r["seed"])
    seeds = sorted({r["seed"] for r in rs})
    archs = sorted({r["architecture"] for r in rs})
    return {
        "n_saes": len(rs),
        "best": best["member_id"],
        "best_architecture": best["architecture"],
        "premium_max": prem(best),
        "best_config_by_seed": {str(r["seed"]): prem(r) for r in same},
        "best_config_seed_spread": max(map(prem, same)) - min(map(prem, same)),
        "max_by_seed": {str(sd): max(prem(r) for r in rs if r["seed"] == sd) for sd in seeds},
        "max_by_architecture": {a: max(prem(r) for r in rs if r["architecture"] == a) for a in archs},
    }


def _evidence_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Report sentences computed from :func:`premium_evidence` of each DGP (rows sorted by rho)."""
    ev = [r["evidence"] for r in rows]
    seeds = list(ev[0]["max_by_seed"])
    rising = {sd: all(a["max_by_seed"][sd] < b["max_by_seed"][sd] for a, b in zip(ev, ev[1:])) for sd in seeds}
    lines = [
        "",
        f"Each premium above is the largest of {' / '.join(str(e['n_saes']) for e in ev)} SAEs "
        f"({sum(e['n_saes'] for e in ev)} in all), from {len(seeds)} seeds; the best SAE is "
        + ", ".join(f"{e['best_architecture']} ({r['dgp']})" for r, e in zip(rows, ev))
        + ". Its configuration's premium at the other seed(s) differs by "
        + " / ".join(f"{e['best_config_seed_spread']:.3f}" for e in ev)
        + "; the largest premium of each seed is "
        + "; ".join(
            f"seed {sd}: "
            + ", ".join(f"{e['max_by_seed'][sd]:.3f}" for e in ev)
            + (" (increasing with rho)" if rising[sd] else " (not increasing with rho)")
            for sd in seeds
        )
        + ".",
        "Largest premium per architecture: "
        + "; ".join(
            f"{r['dgp']}: " + ", ".join(f"{a} {v:.3f}" for a, v in e["max_by_architecture"].items())
            for r, e in zip(rows, ev)
        )
        + ". A premium > 0 places (R, D) below every zero-bias monosemantic code (Proposition 2); trained SAEs "
        "have a decoder bias, which the theory excludes, so it does not show that no monosemantic SAE with a "
        "bias reaches that point.",
    ]
    return lines


def budget_function(results: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """Empirical D*(R_b, P_b) = min{D_i : R_i <= R_b, P_i <= P_b} per DGP (Theorem 3: non-increasing in
    each budget), plotted for the DGP with the most co-occurrence."""
    by = _by_dgp(results)
    name = max(by, key=lambda n: by[n][0]["expected_size"])
    rs = by[name]
    R = np.array([r["rate"] for r in rs])
    D = np.array([r["distortion"] for r in rs])
    P = np.array([_p(r) for r in rs])
    rb = np.linspace(R.min(), R.max(), 12)
    pb = np.linspace(P.min(), P.max(), 12)
    grid = np.full((len(pb), len(rb)), np.nan)
    for i, p in enumerate(pb):
        for j, r in enumerate(rb):
            ok = (R <= r + 1e-9) & (P <= p + 1e-9)
            if ok.any():
                grid[i, j] = D[ok].min()
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 3.8))
    im = ax.imshow(grid, origin="lower", aspect="auto", extent=[rb[0], rb[-1], pb[0], pb[-1]], cmap="magma_r")
    fig.colorbar(im, ax=ax, label="D*(R budget, P budget)")
    ax.set_xlabel("rate budget")
    ax.set_ylabel("polysemanticity budget (P_dec)")
    ax.set_title(f"{name}: tightening one budget raises D*", fontsize=9)
    _save(fig, out / "budget_function.png")
    return {
        "dgp": name,
        "rate_budgets": rb.tolist(),
        "P_budgets": pb.tolist(),
        "D_star": [[None if np.isnan(v) else float(v) for v in row] for row in grid],
    }


def analyze_rotation(
    results: list[dict[str, Any]], cfg: SweepConfig, out: Path, sweep_dir: Path
) -> tuple[dict[str, Any], str]:
    """P_dec and batch MSE over training, monosemantic vs random init."""
    curves = {}
    for f in sorted((sweep_dir / "groups").glob("*.curve.json")):
        c = json.loads(f.read_text())
        for i, mid in enumerate(c["members"]):
            curves[mid] = {
                "step": [p["step"] for p in c["curve"]],
                "P_dec": [p["P_dec"][i] for p in c["curve"]],
                "mse": [p["mse"][i] for p in c["curve"]],
            }
    plt = _plt()
    names = list(_by_dgp(results))
    fig, axes = plt.subplots(2, len(names), figsize=(4.3 * len(names), 6), squeeze=False)
    rows = []
    for col, name in enumerate(names):
        for r in [r for r in results if r["dgp"] == name]:
            c = curves.get(r["member_id"])
            if c is None:
                continue
            style = "-" if r["init"] == "monosemantic" else ":"
            lab = f"{r['init']} w{r['width']} s{r['seed']}"
            axes[0, col].plot(c["step"], c["P_dec"], style, lw=1, label=lab)
            axes[1, col].plot(c["step"], c["mse"], style, lw=1, label=lab)
            rows.append(
                {
                    "member_id": r["member_id"],
                    "dgp": name,
                    "init": r["init"],
                    "width": r["width"],
                    "seed": r["seed"],
                    "P_dec_start": c["P_dec"][0],
                    "P_dec_end": r["P_dec"],
                    "P_dec_live_end": r.get("P_dec_live"),
                    "D_start_batch": c["mse"][0],
                    "D_end": r["distortion"],
                    "R_end": r["rate"],
                }
            )
        axes[0, col].set_title(name, fontsize=9)
        axes[0, col].set_ylabel("P_dec")
        axes[1, col].set_ylabel("batch distortion")
        axes[1, col].set_xlabel("step")
        axes[1, col].set_yscale("log")
        axes[0, col].legend(fontsize=5)
    _save(fig, out / "rotation_curves.png")
    lines = [
        "| DGP | init | width | P_dec after 1 step | P_dec final | P_dec final (live latents) | D final | R final | "
        "seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    agg: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        agg[(r["dgp"], r["init"], r["width"])].append(r)
    for (d, i, w), rs in sorted(agg.items()):
        lines.append(
            f"| {d} | {i} | {w} | {np.mean([r['P_dec_start'] for r in rs]):.3f} | "
            f"{np.mean([r['P_dec_end'] for r in rs]):.3f} | {np.mean([r['P_dec_live_end'] for r in rs]):.3f} | "
            f"{np.mean([r['D_end'] for r in rs]):.3f} | {np.mean([r['R_end'] for r in rs]):.2f} | {len(rs)} |"
        )
    return {"rows": rows}, "\n".join(lines)


def analyze_saelens(results: list[dict[str, Any]], cfg: SweepConfig, out: Path) -> tuple[dict[str, Any], str]:
    """Per SAELens synthetic model and K: mean R, D, P_dec, P_ED, MCC and premium over seeds (widest)."""
    import torch

    specs = {g.name: g for g in cfg.dgps}
    sizes = {}
    for name, spec in specs.items():  # |S| on 50,000 samples (binary magnitudes: ||x||-free count)
        _, acts = build_dgp(spec).sample(50000, torch.Generator().manual_seed(7))
        sizes[name] = (acts > 0).sum(1).double().numpy()
    agg: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        agg[(r["dgp"], r["width"], int(r["k"]))].append(r)
    rows = []
    for (d, w, k), rs in sorted(agg.items()):
        f = lambda key: float(np.mean([r[key] for r in rs]))  # noqa: E731
        mono_d = float(np.maximum(sizes[d] - k, 0).mean())  # E(|S| - K)_+: best monosemantic TopK-K (width >= m)
        rows.append(
            {
                "dgp": d,
                "width": w,
                "K": k,
                "E|S|": rs[0]["expected_size"],
                "R": f("rate"),
                "D": f("distortion"),
                "mono_D_at_K": mono_d,
                "EV": f("explained_variance"),
                "P_dec": float(np.mean([_p(r) for r in rs])),
                "P_ED": f("P_ED"),
                "MCC": f("mcc"),
                "premium": float(np.mean([r["expected_size"] - r["rate"] - r["distortion"] for r in rs])),
            }
        )
    lines = [
        "| model | width | K | E abs(S) | R | D | monosemantic TopK-K D = E(abs(S)-K)+ | EV | P_dec (live) | P_ED | "
        "MCC |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dgp']} | {r['width']} | {r['K']} | {r['E|S|']:.2f} | {r['R']:.2f} | {r['D']:.3f} | "
            f"{r['mono_D_at_K']:.3f} | "
            f"{r['EV']:.3f} | {r['P_dec']:.3f} | {r['P_ED']:.3f} | {r['MCC']:.3f} |"
        )
    return {"rows": rows}, "\n".join(lines)


ANALYSES: dict[str, Callable[..., tuple[dict[str, Any], str]]] = {
    "frontier": analyze_frontier,
    "cooccurrence": analyze_cooccurrence,
    "saelens": analyze_saelens,
}


def run_experiment(
    name: str, out: str | Path, work: str | Path, device: str = "cpu", size: str = "cpu", resume: bool = True
) -> tuple[dict[str, Any], str]:
    """Train experiment ``name``'s sweep in ``work/name`` and write its results, analysis JSON, figures
    and ``README.md`` section text into ``out/name``. Returns (analysis dict, markdown)."""
    cfg = config(name, size)
    o = Path(out) / name
    w = Path(work) / f"{name}_{size}"
    o.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res = train_sweep(cfg, w, device=device, resume=resume)
    secs = time.time() - t0
    meta = {
        "experiment": name,
        "size": size,
        "device": device,
        "machine": platform.machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": secs,
        "n_saes": len(res),
    }
    atomic_write_json(o / "config.json", cfg.to_dict())
    atomic_write_json(o / "results.json", {"meta": meta, "members": res})
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        md = (
            f"results only (matplotlib missing): rerun `python experiments/rdp_sweeps/run.py --only {name} --size "
            f"{size} "
            f"--work {Path(work)}` where matplotlib is installed to analyse (training is skipped on resume)"
        )
        atomic_write_text(o / "table.md", md + "\n")
        return {}, md
    plot_sweep(res, o, prefix=name)
    if name == "rotation":
        analysis, md = analyze_rotation(res, cfg, o, w)
    else:
        analysis, md = ANALYSES[name](res, cfg, o)
    atomic_write_json(o / "analysis.json", {"meta": meta, "analysis": analysis, "summary": summarize(res)})
    atomic_write_text(o / "table.md", md + "\n")
    return analysis, md


def demo(out: Path) -> str:
    """CPU demo (< 60 s): TopK K in {1, 2} on 8 concepts in 4 pairs, rho in {0, 0.6} (no co-occurrence
    at rho = 0), width 12; the premium E|S| - R - D against the conservation line."""
    import torch

    from sae_rdp_plugin.rdp import theory

    out.mkdir(parents=True, exist_ok=True)
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = SweepConfig(
            dgps=[_pairs("rho0", 8, 16, 0.0, 0.1), _pairs("rho0.6", 8, 16, 0.6, 0.1)],
            architectures=["topk"],
            widths=[12],
            ks=[1, 2],
            seeds=[0, 1],
            steps=500,
            batch_size=256,
            lr=3e-3,
            eval_samples=5000,
            checkpoint_every=250,
        )
        import shutil

        shutil.rmtree(out / "sweep_run", ignore_errors=True)
        t0 = time.time()
        res = train_sweep(cfg, out / "sweep_run", progress=False)
        secs = time.time() - t0
    finally:
        torch.set_num_threads(n_threads)
    figs = plot_sweep(res, out, prefix="demo")
    atomic_write_json(out / "demo_results.json", {"seconds": secs, "members": res})
    lines = [
        "| DGP | K | seed | R | D | E abs(S) - R - D | P_dec (live latents) | MCC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res:
        lines.append(
            f"| {r['dgp']} | {int(r['k'])} | {r['seed']} | {r['rate']:.2f} | {r['distortion']:.3f} | "
            f"{r['expected_size'] - r['rate'] - r['distortion']:.3f} | {r['P_dec_live']:.3f} | {r['mcc']:.3f} |"
        )
    specs = {g.name: g for g in cfg.dgps}
    tax = {n: theory.rate_tax_zero_distortion(build_dgp(s).pmf) for n, s in specs.items()}
    rel = lambda p: f"{out.name}/{Path(p).name}"  # noqa: E731
    return "\n".join(
        [
            "## Empirical RDP: a batched sweep of trained SAEs",
            "",
            f"{len(res)} TopK SAEs (width 12, K = 1, 2, two seeds) trained at once by the batched sweep trainer "
            f"in {secs:.1f} s on CPU, on 8 orthonormal concepts in R^16 that fire alone (rho = 0: never two together) "
            "or, with probability rho = 0.6, as one of 4 co-occurring pairs. Every monosemantic code obeys the "
            "conservation law R + D >= E|S| (dashed line); a positive E|S| - R - D means the SAE reached a point no "
            "monosemantic code reaches, by using polysemantic atoms (P_dec > 0). Theory's rate tax at D = 0: "
            + ", ".join(f"{n}: {v:.2f}" for n, v in tax.items())
            + ".",
            "",
            " ".join(
                f"At K = 1 on {n}: mean E|S| - R - D = "
                f"{np.mean([r['expected_size'] - r['rate'] - r['distortion'] for r in k1]):.2f}, "
                f"mean P_dec = {np.mean([_p(r) for r in k1]):.2f}."
                for n in specs
                for k1 in ([r for r in res if r["dgp"] == n and r["k"] == 1],)
            )
            + " TopK spends K latents on every sample (R = K, even when |S| < K), hence the negative gaps at K = 2.",
            "",
            f"![rate-distortion]({rel(figs[1])})" if len(figs) > 1 else "",
            "",
            "\n".join(lines),
        ]
    )
