#!/usr/bin/env python3
"""Turn the GPU run's results.json into experiments/gemma3_270m/RESULTS.md + rd_plane.png (CPU, seconds).

python experiments/gemma3_270m/report.py OUT/results.json --out experiments/gemma3_270m
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def fmt(v, nd=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def sparse_probing_lines(sp: dict) -> list[str]:
    """Markdown for results.json["sparse_probing"] (probing.py)."""
    L = [
        "",
        "SAEBench `sparse_probing_sae_probes` (sae-probes, setting normal, L1 probes on the top-k latents; "
        "LLM baseline: logistic regression on the residual stream); mean test accuracy over the datasets run:",
        "",
    ]
    if sp.get("error") or sp.get("skipped"):
        L.append(f"Not completed: {sp.get('error') or sp.get('skipped')}.")
        return L
    ks = sp.get("ks", [1, 2, 5])
    ran = sp.get("datasets_run", [])
    L += [
        f"Datasets ({len(ran)}): {', '.join(ran)}."
        + (
            f" Dropped (LLM baseline unfinished in the budget): {', '.join(sp['datasets_dropped_no_baseline'])}."
            if sp.get("datasets_dropped_no_baseline")
            else ""
        ),
        "",
    ]
    L += [
        "| SAE | "
        + " | ".join(f"top-{k} acc." for k in ks)
        + " | LLM baseline acc. | "
        + " | ".join(f"top-{k} AUC" for k in ks)
        + " | LLM AUC |",
        "|---|" + "---|" * (2 * len(ks) + 2),
    ]
    for name, s in sp.get("saes", {}).items():
        if "skipped" in s:
            L.append(f"| {name} | skipped ({s['skipped']}) |" + " |" * (2 * len(ks) + 1))
            continue
        L.append(
            f"| {name} | "
            + " | ".join(fmt(s.get(f"sae_top_{k}_test_accuracy")) for k in ks)
            + f" | {fmt(s.get('llm_test_accuracy'))} | "
            + " | ".join(fmt(s.get(f"sae_top_{k}_test_auc")) for k in ks)
            + f" | {fmt(s.get('llm_test_auc'))} |"
        )
    per = {n: s["per_dataset_test_accuracy"] for n, s in sp.get("saes", {}).items() if "per_dataset_test_accuracy" in s}
    if per and ran:
        names = list(per)
        kmax = max(ks)
        L += [
            "",
            f"Per dataset, test accuracy at k = {kmax} (LLM baseline in the last column):",
            "",
            "| dataset | " + " | ".join(names) + " | LLM |",
            "|---|" + "---|" * (len(names) + 1),
        ]
        for ds in ran:
            llm = next((per[n][ds].get("llm") for n in names if ds in per[n]), None)
            L.append(
                f"| {ds} | " + " | ".join(fmt(per[n].get(ds, {}).get(f"k{kmax}")) for n in names) + f" | {fmt(llm)} |"
            )
    return L


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("--out", default="experiments/gemma3_270m")
    args = ap.parse_args(argv)
    from sae_rdp_plugin.errors import SaeRdpError
    from sae_rdp_plugin.io import atomic_save, atomic_write_text

    try:
        R = json.loads(Path(args.results).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SaeRdpError(f"cannot read {args.results}: {exc}") from exc
    out = Path(args.out)
    run, act, plan = R.get("run", {}), R.get("activations", {}), R.get("plan", {})
    L = [
        "# Gemma-3-270M results",
        "",
        f"Device: {run.get('device')}; started {run.get('started_utc')} UTC; torch {run.get('torch')}; "
        f"elapsed {fmt(run.get('elapsed_s'), 0)} s; finished: {run.get('finished', False)}.",
        f"Model: {run.get('model')}. Hook `{act.get('hook')}`; {act.get('train_tokens_cached', 0):,} training and "
        f"{act.get('heldout_tokens_cached', 0):,} held-out activations (BOS excluded), "
        "cached once in GPU memory (bf16).",
        f"Tokens per SAE: main requested {plan.get('main_tokens_requested', 0):,}, "
        f"planned {plan.get('main_tokens_planned', 0):,} "
        f"({fmt(plan.get('main_epochs_over_cache'), 2)} epochs over the cache); "
        + (
            "sweep not run (--skip-sweep); budget-limited: tokens = min(requested, calibrated throughput x "
            "time share), "
            "re-planned per SAE."
            if plan.get("skip_sweep")
            else f"sweep requested {plan.get('sweep_tokens_requested', 0):,}, "
            f"planned {plan.get('sweep_tokens_planned', 0):,} "
            "(budget-limited: tokens = min(requested, calibrated throughput x time share), re-planned per SAE)."
        ),
        "",
        "| SAE | tokens trained | L0 | explained var. | MSE/token | dead | CE loss recovered | KL score | CE with SAE "
        "| CE clean | token entropy | dec. max cos |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    pts = []
    for group in ("main", "sweep"):
        for name, r in R.get(group, {}).items():
            if "heldout" not in r:
                L.append(f"| {name} | skipped ({r.get('skipped', r.get('error', '?'))}) |" + " |" * 10)
                continue
            h, e = r["heldout"], r.get("saelens_evals", {})
            L.append(
                f"| {name} | {r['tokens_trained']:,} | {fmt(h['l0'], 1)} | {fmt(h['explained_variance'])} | "
                f"{fmt(h['mse_per_token'], 1)} | "
                f"{h['dead_latents']} | {fmt(e.get('model_performance_preservation/ce_loss_score'))} | "
                f"{fmt(e.get('model_behavior_preservation/kl_div_score'))} | "
                f"{fmt(e.get('model_performance_preservation/ce_loss_with_sae'))} | "
                f"{fmt(e.get('model_performance_preservation/ce_loss_without_sae'))} | {fmt(h['token_entropy'], 2)} | "
                f"{fmt(h['decoder_max_cos'])} |"
            )
            pts.append((group, name, r.get("architecture"), h["l0"], 1 - h["explained_variance"]))
    sp = R.get("sparse_probing")
    if sp:
        L += sparse_probing_lines(sp)
    au = R.get("audit", {})
    if au.get("skipped"):
        L += ["", f"RDP audit on the sweep: not run ({au['skipped']})."]
        au = {}
    else:
        L += [
            "",
            f"RDP audit on the sweep ({au.get('n_saes', 0)} SAEs; rate = {au.get('rate')}, "
            f"distortion = {au.get('distortion')}, Pi = +proxy):",
            "",
            "| proxy | dominated pairs | V | V 95% CI | p(V) | rho | rho 95% CI | p(rho) | verdict |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    for proxy, a in au.get("proxies", {}).items():
        if "error" in a:
            L.append(f"| {proxy} | error: {a['error']} |" + " |" * 7)
            continue
        ci = lambda c: "-" if not c else f"[{c[0]:.2f}, {c[1]:.2f}]"  # noqa: E731
        L.append(
            f"| {proxy} | {a['n_dominated_pairs']} | {fmt(a['violation_rate'], 2)} | {ci(a['violation_rate_ci'])} | "
            f"{fmt(a['p_value_violation'])} | {fmt(a['rank_correlation'], 2)} | {ci(a['rank_correlation_ci'])} | "
            f"{fmt(a['p_value_rank_correlation'])} | {a.get('verdict')} |"
        )
    if pts:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for arch, mk in (("topk", "o"), ("standard", "s"), ("weighted_topk", "*")):
            p = [q for q in pts if q[2] == arch]
            if p:
                ax.scatter([q[3] for q in p], [q[4] for q in p], marker=mk, s=60 if mk == "*" else 30, label=arch)
                for q in p:
                    ax.annotate(q[1].replace("sweep_", "").replace("wsae_topk_", ""), (q[3], q[4]), fontsize=6)
        ax.set_xscale("log")
        ax.set_xlabel("rate: held-out L0")
        ax.set_ylabel("distortion: 1 - explained variance")
        ax.set_title(f"Gemma-3-270M {act.get('hook')}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        atomic_save(out / "rd_plane.png", lambda p: fig.savefig(p, dpi=120, format="png"))
        L += ["", "![rate-distortion plane](rd_plane.png)"]
    atomic_write_text(out / "RESULTS.md", "\n".join(L) + "\n")
    print("\n".join(L))
    return 0


if __name__ == "__main__":
    sys.exit(main())
