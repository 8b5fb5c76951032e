"""The theory demonstration suite: a co-occurring pmf against an independent one with the same
marginals (exhaustive frontiers, figures, the rate tax), the tax against co-occurrence, and Example 1,
with a markdown report. Run by ``sae-rdp demo --only theory`` and ``experiments/theory/run_theory.py``.
"""

from __future__ import annotations

import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

DEFAULT_SUITE: dict[str, Any] = {
    "m": 4,
    "width": 4,
    "k": 1,
    "q": 0.15,
    "rho": 0.4,
    "coefficients": "binary",
    "tax_sweep_rhos": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
    "zero_tax_width": 6,
    "zero_tax_k": 2,
    "example1_pmf": {"concepts": 3, "pmf": {"": 0.1, "0": 0.2, "1": 0.15, "2": 0.15, "0,1": 0.3, "0,1,2": 0.1}},
}


def run_metadata(t0: float) -> dict[str, Any]:
    """Version, UTC date, machine and wall time of a run started at ``t0`` (``time.time()``)."""
    try:
        from importlib.metadata import version

        ver = version("sae-rdp")
    except Exception:  # pragma: no cover - not installed
        ver = "unknown"
    return {
        "sae_rdp_version": ver,
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "seconds": round(time.time() - t0, 3),
    }


def example1_with_check(pmf: Any, k: int, pair: tuple[int, int]) -> dict[str, Any]:
    """:func:`~sae_rdp_plugin.rdp.theory.example1` plus, per code, the brute-force (R, D) from
    :func:`~sae_rdp_plugin.rdp.theory.evaluate_code` and the overall best code of each width by enumeration."""
    from sae_rdp_plugin.rdp.theory import enumerate_codes, evaluate_code, example1

    res = example1(pmf, k, pair)
    ok = True
    for name, c in res["codes"].items():
        ev = evaluate_code(pmf, c["atoms"], k)
        c["enumerated_rate"], c["enumerated_distortion"] = ev.rate, ev.distortion
        ok &= abs(ev.rate - c["rate"]) < 1e-12 and abs(ev.distortion - c["distortion"]) < 1e-12
    res["closed_forms_match_enumeration"] = bool(ok)
    best = {}
    for w in (2, 3):
        t = enumerate_codes(pmf, w, k)
        i = int(min(range(len(t)), key=lambda j: (round(t.distortion[j], 12), round(t.rate[j], 12))))
        best[f"width{w}"] = {"atoms": t.atoms(i), "rate": float(t.rate[i]), "distortion": float(t.distortion[i])}
    res["best_code_by_enumeration"] = best
    return res


def run_suite(out: Path, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The theory demonstration: a co-occurring pmf vs an independent one with the same marginals
    (exhaustive frontiers, figures, the rate tax), the tax against co-occurrence, and Example 1.
    Writes JSON and PNG under ``out`` and returns a summary dict (with a markdown ``report``)."""
    import numpy as np

    from sae_rdp_plugin.io import atomic_write_json
    from sae_rdp_plugin.rdp.dgp import BernoulliPMF, ExplicitPMF, cooccurring_pairs
    from sae_rdp_plugin.rdp.plots import plot_example1, plot_frontier, plot_tax_sweep
    from sae_rdp_plugin.rdp.theory import frontier_summary, rate_tax_zero_distortion

    t0 = time.time()
    cfg = dict(DEFAULT_SUITE, **(config or {}))
    out.mkdir(parents=True, exist_ok=True)
    m, width, k, coef = cfg["m"], cfg["width"], cfg["k"], cfg["coefficients"]
    co = cooccurring_pairs(m, rho=cfg["rho"], q=cfg["q"])
    ind = BernoulliPMF(co.marginals())
    results: dict[str, Any] = {"config": cfg}
    for name, pmf in (("cooccurring", co), ("independent", ind)):
        pmf_e = pmf.to_explicit()
        summ, table, mono = frontier_summary(pmf_e, width, k, coef)
        plot_frontier(table, mono, out / f"frontier_{name}.png", title=f"{name} pmf: m={m}, width {width}, K={k}")
        summ["metadata"] = run_metadata(t0)
        atomic_write_json(out / f"frontier_{name}.json", summ, indent=None)
        pair_mass = float(co.cooccurrence()[0, 1]) if name == "cooccurring" else float(ind.cooccurrence()[0, 1])
        best = summ["best_unrestricted"]
        results[name] = {
            "expected_size": summ["stats"]["expected_size"],
            "pr_01_cooccur": pair_mass,
            "n_codes": len(table),
            "n_pareto": len(summ["pareto"]),
            "max_rate_tax": summ["rate_tax"]["max_rate_tax"],
            "tax_rows": summ["rate_tax"]["per_rate"],
            "zero_distortion_tax": summ["rate_tax"]["zero_distortion_closed_form"],
            "best_unrestricted_last": best[-1],
            "monosemantic_d_min": summ["monosemantic_d_min"],
            "checks": summ["checks"],
        }
    # tax against co-occurrence (exclusive base: rho = 0 means no two concepts ever co-occur)
    rhos = [float(r) for r in cfg["tax_sweep_rhos"]]
    zw, zk = cfg["zero_tax_width"], cfg["zero_tax_k"]
    max_tax, zero_tax, zero_enum = [], [], []
    for r in rhos:
        pmf = cooccurring_pairs(m, rho=r, q=min(cfg["q"], 1.0 / m), base="exclusive").to_explicit()
        s, _, _ = frontier_summary(pmf, width, k, coef, include_codes=False)
        max_tax.append(s["rate_tax"]["max_rate_tax"])
        zero_tax.append(rate_tax_zero_distortion(pmf))
        # enumerated tax at D = 0 with enough width: R_mono(0) - (least rate of a code with D = 0)
        s0, _, mono0 = frontier_summary(pmf, zw, zk, coef, include_codes=False)
        row0 = s0["rate_tax"]["per_rate"][-1]
        zero_enum.append(row0["rate_tax"] if abs(row0["distortion"]) < 1e-12 else None)
    plot_tax_sweep(
        rhos,
        {
            f"max tax on the enumerated frontier (width {width}, K={k})": max_tax,
            f"enumerated tax at D = 0 (width {zw}, K={zk})": zero_enum,
            "closed form E(|S|-1)_+ (D = 0, wide enough)": zero_tax,
        },
        out / "tax_vs_cooccurrence.png",
    )
    results["tax_sweep"] = {
        "rho": rhos,
        "base": "exclusive",
        "max_rate_tax": max_tax,
        "zero_distortion_tax_enumerated": zero_enum,
        "zero_distortion_closed_form": zero_tax,
        "zero_tax_width": zw,
        "zero_tax_k": zk,
    }
    # Example 1
    ex_pmf = ExplicitPMF.from_json(cfg["example1_pmf"])
    ex = {f"K{kk}": example1_with_check(ex_pmf, kk, (0, 1)) for kk in (1, 2)}
    for kk in (1, 2):
        plot_example1(ex[f"K{kk}"], out / f"example1_K{kk}.png")
    results["example1"] = ex
    results["metadata"] = run_metadata(t0)
    atomic_write_json(out / "summary.json", results)
    results["report"] = _report(results, np)
    return results


def _fmt(x: Any, nd: int = 3) -> str:
    return "infinite" if x is None else f"{x:.{nd}f}"


def _report(res: dict[str, Any], np: Any) -> str:
    cfg = res["config"]
    co, ind = res["cooccurring"], res["independent"]
    sw = res["tax_sweep"]
    e1 = res["example1"]["K1"]
    thm3 = (
        co["checks"]["theorem3_nonincreasing_in_rate_budget"] and co["checks"]["theorem3_nonincreasing_in_poly_budget"]
    )
    lines = [
        "## Exact RDP theory (binary-atom toy model)",
        "",
        f"Orthonormal concepts, m = {cfg['m']}, every dictionary of {cfg['width']} distinct binary atoms "
        f"(unit-normalised sums of concept subsets) with distortion-optimal TopK-{cfg['k']} decoding "
        f"({cfg['coefficients']} coefficients). Rate R = E L0, distortion D = E||x - x_hat||^2, "
        "polysemanticity P = mean over atoms of 1 - max|cos| with the concepts. All numbers are exact "
        "(enumeration over codes and active sets, no sampling).",
        "",
        f"Two pmfs with the same marginals: **co-occurring** pairs {{0,1}}, {{2,3}} (block probability "
        f"rho = {cfg['rho']}, else independent with q = {cfg['q']}) and **independent** Bernoulli firing. "
        f"Pr[0 and 1 both active] = {co['pr_01_cooccur']:.3f} vs {ind['pr_01_cooccur']:.3f}.",
        "",
        "| pmf | E\\|S\\| | codes | Pareto codes (R,D,P) | max rate tax | E(\\|S\\|-1)+ (D=0 tax, wide) | least D "
        "(any code) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in (("co-occurring", co), ("independent", ind)):
        lines.append(
            f"| {name} | {r['expected_size']:.3f} | {r['n_codes']} | {r['n_pareto']} | {_fmt(r['max_rate_tax'])} | "
            f"{r['zero_distortion_tax']:.3f} | {r['best_unrestricted_last']['distortion']:.3f} |"
        )
    lines += [
        "",
        f"Independent firing co-occurs too (E(|S|-1)+ = {ind['zero_distortion_tax']:.3f} > 0), so both pmfs pay a "
        f"finite tax of similar size ({_fmt(co['max_rate_tax'])} vs {_fmt(ind['max_rate_tax'])}); the difference is "
        "that block co-occurrence lets polysemantic codes reach distortion "
        f"{co['best_unrestricted_last']['distortion']:.3f}, "
        f"far below anything a monosemantic code of this width and K reaches ({co['monosemantic_d_min']:.3f}: an "
        "infinite tax there), while with independent firing the least distortion is "
        f"{ind['best_unrestricted_last']['distortion']:.3f} "
        f"for both classes. The controlled comparison is the sweep below.",
        "",
        "![frontier, co-occurring](theory/frontier_cooccurring.png)",
        "![frontier, independent](theory/frontier_independent.png)",
        "",
        "Left panels: every code (dots, coloured by P), the best rate at each distortion budget over all codes "
        "(black), the exact monosemantic staircase R_mono(D) of Theorem 5 (red; no monosemantic code exists left "
        "of the dotted line), the conservation line R + D = E|S| (Proposition 2) and the rate tax of Theorem 4 "
        "(orange arrows: the extra rate a monosemantic code needs to match the polysemantic optimum's "
        "distortion). Right panels: the best distortion against the polysemanticity budget at fixed rate "
        "budgets (Theorem 3: non-increasing).",
        "",
        "Per-rate tax on the co-occurring pmf (unrestricted optimum -> monosemantic rate needed):",
        "",
        "| R | D* | P of the optimum | R_mono(D*) | rate tax |",
        "|---|---|---|---|---|",
    ]
    n_inf = 0
    for row in co["tax_rows"]:
        if row["rate_tax"] is None:
            n_inf += 1
            continue
        lines.append(
            f"| {row['rate']:.3f} | {row['distortion']:.3f} | {row['polysemanticity']:.3f} | "
            f"{_fmt(row['r_mono'])} | {_fmt(row['rate_tax'])} |"
        )
    lines += [
        "",
        f"{n_inf} further points of the unrestricted optimum have D* below {co['monosemantic_d_min']:.3f}, the least "
        "distortion any monosemantic code of this width and K attains: there the tax is infinite.",
        "",
        "**Tax against co-occurrence.** Pairs {0,1}, {2,3} fire together with probability rho; otherwise at "
        "most one concept fires, so rho = 0 means no two concepts ever co-occur.",
        "",
        f"| rho | max tax (width {cfg['width']}, K={cfg['k']}) | enumerated D=0 tax (width {sw['zero_tax_width']}, "
        f"K={sw['zero_tax_k']}) | E(\\|S\\|-1)+ |",
        "|---|---|---|---|",
    ]
    for r, a, b, c in zip(
        sw["rho"], sw["max_rate_tax"], sw["zero_distortion_tax_enumerated"], sw["zero_distortion_closed_form"]
    ):
        lines.append(f"| {r:.2f} | {_fmt(a)} | {_fmt(b)} | {c:.3f} |")
    lines += [
        "",
        "![tax vs co-occurrence](theory/tax_vs_cooccurrence.png)",
        "",
        "**Example 1** (three concepts, K = 1, pmf "
        + ", ".join(f"p({{{k}}}) = {v}" for k, v in res["config"]["example1_pmf"]["pmf"].items())
        + "; 0-based indices):",
        "",
        "| code | atoms | R | D |",
        "|---|---|---|---|",
    ]
    for name, c in e1["codes"].items():
        atoms = " ".join("{" + ",".join(map(str, a)) + "}" for a in c["atoms"])
        lines.append(f"| {name} | {atoms} | {c['rate']:.3f} | {c['distortion']:.3f} |")
    lines += [
        "",
        f"Winners: width 2 -> **{e1['winner']['width2']}**, width 3 -> **{e1['winner']['width3']}**. "
        f"Deciding inequality (THEORY.md's example, split3 vs mono3): "
        f"`{e1['inequalities']['split3']['beats_monosemantic_in_distortion_iff']}` "
        f"({'holds' if e1['inequalities']['split3']['holds'] else 'fails'} here). "
        f"Closed forms equal brute-force enumeration: {e1['closed_forms_match_enumeration']} "
        f"(K=2: {res['example1']['K2']['closed_forms_match_enumeration']}).",
        "",
        "Best of all dictionaries by enumeration (least D, then least R): "
        + "; ".join(
            f"{w.replace('width', 'width ')}: "
            + " ".join("{" + ",".join(map(str, a)) + "}" for a in b["atoms"])
            + f" (R = {b['rate']:.3f}, D = {b['distortion']:.3f})"
            for w, b in e1["best_code_by_enumeration"].items()
        )
        + ".",
        "",
        "![example 1](theory/example1_K1.png)",
        "",
        f"Checks on the enumerated classes: Proposition 2 (R + D = E|S| for monosemantic codes) max deviation "
        f"{co['checks']['proposition2'].get('max_abs(R+D-E|S|)', 0.0):.1e}; Theorem 3 monotonicity holds: "
        f"{thm3}. "
        "JSON: `theory/summary.json`, `theory/frontier_*.json`.",
    ]
    return "\n".join(lines)
