"""The audit of the bundled real SAEBench data (``sae-rdp audit bundled``; ``experiments/saebench_audit``).

Final SAEs only (training checkpoints are not part of any sweep). Sweeps (``ANALYSES``):

* ``per_sweep``: one (model, layer, width, architecture) sweep, e.g. Gemma-2-2B layer 19, 18432 latents,
  TopK k = 20..640 (6 SAEs). Such a sweep is close to a pure rate-distortion Pareto front, so it has few
  or no dominated pairs.
* ``pooled_arch``: all architectures at one (model, layer, width): TopK + ReLU (+ gated, p-anneal for
  Pythia), where one architecture's SAEs dominate another's.
* ``pooled_layer``: all widths and architectures at one (model, layer) (Gemma layer 19 also holds the five
  Gemma Scope JumpReLU SAEs in the sparse-probing run).
* ``pooled_model``: one architecture over all layers and widths of a model (mixes layers whose distortion
  scales differ: ranks across layers are not a budget ordering; reported, to be read with care).

Gemma-2-2B: TopK and ReLU ("standard") sweeps (Gemma Scope only where the sparse-probing run holds it);
Pythia-70M: TopK, ReLU, gated, p-anneal. Proxies: every sparse-probing accuracy the files hold (one run at
a time: runs A, A2 and B are separate evaluations of the same SAEs), and the reconstruction-side core fields
as controls. Rate = L0, distortion = 1 - explained variance.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from sae_rdp_plugin.audit.readers import ResultsTable, read_bundled
from sae_rdp_plugin.audit.stats import check_resamples
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.evals.rdp_audit.eval_config import RdpAuditEvalConfig
from sae_rdp_plugin.evals.rdp_audit.main import markdown_table, run_eval
from sae_rdp_plugin.io import atomic_write_json, atomic_write_text

ANALYSES: dict[str, list[str]] = {
    "per_sweep": ["model", "layer", "d_sae", "architecture"],
    "pooled_arch": ["model", "layer", "d_sae"],
    "pooled_layer": ["model", "layer"],
    "pooled_model": ["model", "architecture"],
}
DISTORTIONS: dict[str, str] = {
    # the default: 1 - explained variance (the 2024 files' frac_variance_explained is noisy: 250 x 128 tokens,
    # can be negative; SOURCES.md)
    "fve": "1-reconstruction_quality.explained_variance",
    # robustness check: mean ||x - x_hat||_2 over the same tokens (monotone in L0 within every sweep)
    "l2": "basic.l2_loss",
}
#: the sparse-probing runs of the bundled data (separate evaluations of the same SAEs)
RUNS: tuple[str, ...] = ("A", "A2", "B")
PROBE_PROXIES = ["sparse_probing.sae.sae_test_accuracy"] + [
    f"sparse_probing.sae.sae_top_{k}_test_accuracy" for k in (1, 2, 5, 10, 20, 50, 100)
]


def _keep(table: ResultsTable, with_probing: bool) -> ResultsTable:
    """Gemma: TopK + ReLU sweeps (+ Gemma Scope only when it has probe results); Pythia: all."""
    keep = []
    probe = table.columns.get("sparse_probing.sae.sae_top_1_test_accuracy")
    for i, (m, a) in enumerate(zip(table.meta["model"], table.meta["architecture"])):
        if m == "gemma-2-2b" and a not in ("topk", "standard"):
            if not (with_probing and probe is not None and np.isfinite(probe[i])):
                continue
        keep.append(i)
    return table.subset(keep)


def run_bundled(
    out: Path,
    *,
    n_boot: int = 2000,
    n_perm: int = 2000,
    seed: int = 42,
    analyses: list[str] | None = None,
    runs: tuple[str, ...] = RUNS,
    plots: tuple[str, ...] = ("pooled_layer",),
    distortions: tuple[str, ...] = ("fve", "l2"),
    plot_distortion: str = "l2",
) -> dict[str, Any]:
    """Run every analysis on the bundled data into ``out/<analysis>[_run<R>]/``; write
    ``out/summary.md`` and ``out/summary.json``; return the summary rows."""
    out = Path(out)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SaeRdpError(f"seed must be a non-negative integer, got {seed!r}")
    check_resamples(n_boot, n_perm)
    for what, given, valid in (("analyses", analyses or [], ANALYSES), ("distortions", distortions, DISTORTIONS)):
        bad = [x for x in given if x not in valid]
        if bad:
            raise SaeRdpError(f"unknown {what} {bad}; valid: {', '.join(valid)}")
    bad = [r for r in runs if r not in RUNS]
    if bad:
        raise SaeRdpError(f"unknown probing runs {bad}; valid: {', '.join(RUNS)}")
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for run in runs:
        table = _keep(read_bundled(run), with_probing=True)
        for dname in distortions:
            for name in analyses or list(ANALYSES):
                has_probe = [p for p in PROBE_PROXIES if p in table.columns]
                # controls come from the core table, identical across runs: audit them with run A only
                proxies = has_probe if run != "A" else []
                cfg = RdpAuditEvalConfig(
                    group_by=ANALYSES[name],
                    distortion_field=DISTORTIONS[dname],
                    proxies=proxies,
                    include_controls=True,
                    n_bootstrap=n_boot,
                    n_permutations=n_perm,
                    random_seed=seed,
                    make_plots=name in plots and dname == plot_distortion,
                )
                sub_out = out / f"{name}_run{run}_{dname}"
                sub = table
                if proxies:  # only SAEs with this run's probe results
                    pc = table.columns[proxies[0]]
                    sub = table.subset(np.isfinite(pc))
                try:
                    res = run_eval(cfg, None, "cpu", str(sub_out), force_rerun=True, table=sub)
                except SaeRdpError as e:  # a run with no auditable sweep in this grouping
                    notes.append(f"{name} run {run} D={dname}: {e}")
                    continue
                summ = json.loads((sub_out / "rdp_audit_summary.json").read_text())
                for r in summ["rows"]:
                    rows.append(dict(r, analysis=name, probing_run=run, distortion=dname))
                notes += [f"{name} run {run} D={dname}: skipped {s}" for s in summ["skipped_sweeps"]]
                del res
    summary = {
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()} CPU, Python {platform.python_version()}",
        "rate": "core.sparsity.l0",
        "analyses": ANALYSES,
        "distortions": {k: DISTORTIONS[k] for k in distortions},
        "n_boot": n_boot,
        "n_perm": n_perm,
        "seed": seed,
        "final_saes_only": True,
        "rows": rows,
        "notes": notes,
    }
    atomic_write_json(out / "summary.json", summary)
    atomic_write_text(out / "summary.md", summary_markdown(summary))
    return summary


CSV_FIELDS = [
    "distortion",
    "analysis",
    "probing_run",
    "sweep",
    "proxy",
    "orientation",
    "role",
    "n_saes",
    "n_missing",
    "n_dominated_pairs",
    "violation_rate",
    "violation_rate_ci_low",
    "violation_rate_ci_high",
    "rank_correlation",
    "rank_correlation_ci_low",
    "rank_correlation_ci_high",
    "p_value_violation",
    "p_value_rank_correlation",
    "verdict",
]


def summary_csv(summary: dict[str, Any]) -> str:
    """All (distortion, analysis, run, sweep, proxy) audit rows as CSV (floats to 4 decimals)."""
    lines = [",".join(CSV_FIELDS)]
    for r in summary["rows"]:
        vals = []
        for f in CSV_FIELDS:
            v = r.get(f)
            vals.append("" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v))
        lines.append(",".join(vals))
    return "\n".join(lines) + "\n"


def summary_markdown(summary: dict[str, Any]) -> str:
    parts = [
        "# RDP audit of the bundled SAEBench results\n",
        f"Generated {summary['generated']} on {summary['machine']}; rate = L0; two distortions (1 - explained "
        f"variance, the default; mean L2 error as a robustness check); final SAEs only; {summary['n_boot']} bootstrap "
        f"resamples (SAEs), {summary['n_perm']} "
        "permutations. V: 0 faithful, 0.5 random, 1 inverted; rho: +1 faithful, -1 inverted.\n",
    ]
    for dname in summary["distortions"]:
        for run in sorted({r["probing_run"] for r in summary["rows"]}):
            for name in ANALYSES:
                rows = [
                    r
                    for r in summary["rows"]
                    if r["analysis"] == name and r["probing_run"] == run and r["distortion"] == dname
                ]
                if not rows:
                    continue
                what = "controls (core fields) and sparse probing" if run == "A" else "sparse probing"
                parts.append(
                    f"\n## D = {summary['distortions'][dname]}: {name}, probing run {run}: {what}\n\n"
                    + markdown_table(rows)
                )
    if summary["notes"]:
        parts.append("\n## Notes\n\n" + "\n".join(f"- {n}" for n in summary["notes"]) + "\n")
    return "\n".join(parts)


def headline(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Compact rows: per (analysis, proxy family), the proxies' V / rho over sweeps (for README/demo)."""
    out = []
    for r in summary["rows"]:
        out.append(
            {
                k: r[k]
                for k in (
                    "analysis",
                    "probing_run",
                    "distortion",
                    "sweep",
                    "proxy",
                    "role",
                    "n_saes",
                    "n_dominated_pairs",
                    "violation_rate",
                    "rank_correlation",
                    "verdict",
                )
            }
        )
    return out
