"""The ``rdp_audit`` SAEBench eval: audit interpretability metrics against the RDP ordering.

Unlike the per-SAE SAEBench evals this one works on a *sweep*: it reads SAEBench results that already
exist (any eval type; see :mod:`sae_rdp_plugin.audit.readers`), splits the SAEs into sweeps (``group_by``),
and for every proxy reports the violation rate V (Definition 3) and rank correlation rho (Definition 4)
with bootstrap intervals (SAEs resampled) and permutation p-values. It writes, under ``output_path``:

* ``rdp_audit_<sweep>_eval_results.json`` per sweep (SAEBench format, ``eval_type_id = "rdp_audit"``;
  passes ``validate_eval_output_format_file``),
* ``rdp_audit_summary.md`` (one table over sweeps and proxies) and ``rdp_audit_summary.json``,
* ``rdp_audit_<sweep>.png``: each proxy's Pi against the joint budget rank b = rank(R) + rank(D).

The readers skip these outputs, so ``output_path`` may lie inside the results folder (SAEBench's layout
``--results_paths eval_results/ --output_folder eval_results/rdp_audit``) and the audit can be re-run. SAEs
that lack a ``group_by`` key (e.g. no layer in their cfg) are grouped apart, with a warning.

Use from Python (``run_eval(config, selected_saes, device, output_path)``), from SAEBench's CLI style
(``python -m sae_rdp_plugin.evals.rdp_audit.main --results_paths DIR --sae_regex_pattern ".*"
--sae_block_pattern ".*"``), or with ``sae-rdp audit run``. ``device`` is unused (CPU statistics).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from sae_rdp_plugin.audit.readers import ResultsTable, check_checkpoint_mode, filter_checkpoints, read_results
from sae_rdp_plugin.audit.stats import audit_proxy, dominated_pairs, joint_budget_rank, orientation_of, parse_proxy_spec
from sae_rdp_plugin.cli import OneLineArgumentParser, run_entry_point
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.evals import sae_lens_version
from sae_rdp_plugin.evals.rdp_audit.eval_config import RdpAuditEvalConfig
from sae_rdp_plugin.evals.rdp_audit.eval_output import (
    EVAL_TYPE_ID_RDP_AUDIT,
    RdpAuditEvalOutput,
    RdpAuditMetricCategories,
    RdpAuditResultDetail,
    RdpAuditSummaryMetrics,
    RdpAuditSweepMetrics,
)
from sae_rdp_plugin.io import atomic_save, atomic_write_json, atomic_write_text


def select_proxies(
    table: ResultsTable, proxies: Sequence[str], include_controls: bool, exclude: Sequence[str] = ()
) -> list[tuple[str, int, str]]:
    """(column, sign, role) per proxy. Explicit specs: NAME[:+|-]; NAME alone must have a known
    orientation. Empty list: every column with a known orientation (controls if asked)."""
    out: list[tuple[str, int, str]] = []
    if proxies:
        for spec in proxies:
            name, sign = parse_proxy_spec(spec)
            col = table.resolve(name)
            if sign is None:
                o = orientation_of(col)
                out.append((col, o.sign, o.role))
            else:
                role = "proxy"
                try:
                    role = orientation_of(col).role
                except SaeRdpError:
                    pass
                out.append((col, sign, role))
    else:
        for col in sorted(table.metric_names, key=_natural):
            if col in exclude:
                continue
            try:
                o = orientation_of(col)
            except SaeRdpError:
                continue
            if o.role == "control" and not include_controls:
                continue
            out.append((col, o.sign, o.role))
    seen = set()
    uniq = []
    for c in out:
        if c[0] not in seen:
            seen.add(c[0])
            uniq.append(c)
    return uniq


def _natural(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def split_sweeps(table: ResultsTable, group_by: Sequence[str]) -> list[tuple[dict[str, Any], ResultsTable]]:
    """Group rows by the metadata columns ``group_by`` (sorted by group value)."""
    for g in group_by:
        if g not in table.meta:
            raise SaeRdpError(f"unknown group_by column {g!r} (have {sorted(table.meta)})")
    groups: dict[tuple, list[int]] = {}
    for i in range(len(table)):
        groups.setdefault(tuple(table.meta[g][i] for g in group_by), []).append(i)
    out = []
    for key in sorted(groups, key=lambda k: tuple((x is None, str(type(x)), x if x is not None else 0) for x in k)):
        out.append((dict(zip(group_by, key)), table.subset(groups[key])))
    return out


def missing_group_keys(table: ResultsTable, group_by: Sequence[str]) -> list[str]:
    """One line per ``group_by`` column that some SAEs lack (they would form a sweep of their own)."""
    notes = []
    for g in group_by:
        miss = [k for k, v in zip(table.keys, table.meta.get(g, [None] * len(table))) if v is None]
        if miss:
            shown = ", ".join(miss[:3]) + (", ..." if len(miss) > 3 else "")
            notes.append(
                f"{len(miss)} of {len(table)} SAEs have no {g!r} (grouped together as {g}=None): {shown}; "
                "give it in the results (CSV column) or drop it from group_by"
            )
    return notes


#: the flag naming each checked config field in error messages (config field names by default)
CONFIG_FLAGS = {"min_saes": "min_saes", "random_seed": "random_seed"}


def check_config(config: RdpAuditEvalConfig, flags: dict[str, str] | None = None) -> None:
    """Raise SaeRdpError, naming the field (or its flag in ``flags``), for a setting that cannot be run:
    ``min_saes`` below 2 (a sweep of fewer SAEs has no pair to compare) or a negative ``random_seed``."""
    names = dict(CONFIG_FLAGS, **(flags or {}))
    m = config.min_saes
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 2:
        raise SaeRdpError(f"{names['min_saes']} must be an integer >= 2 (a sweep needs two SAEs to compare), got {m!r}")
    s = config.random_seed
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
        raise SaeRdpError(f"{names['random_seed']} must be a non-negative integer, got {s!r}")


def check_rate_distortion(table: ResultsTable, rate_field: str, distortion_field: str) -> None:
    """Raise SaeRdpError naming the SAE (and its file) and the field for an impossible value: a negative rate, or a
    negative distortion field. A ``1-<field>`` distortion is not checked: SAEBench's core ``explained_variance``
    exceeds 1 slightly on real SAEs (1.0000-1.0008 on our 65 Gemma-3-270M SAEs), and the audit only ranks the
    distortions. Missing (NaN) and infinite values are left to the per-sweep filter."""
    rate_col = table.resolve(rate_field)
    spec = distortion_field.replace(" ", "")
    # (column named in the message, values that must not be negative, why)
    checks = [(rate_col, table.columns[rate_col], "a rate cannot be negative")]
    if not spec.startswith("1-"):
        dist_col = table.resolve(spec)
        checks.append((dist_col, table.columns[dist_col], "a distortion cannot be negative"))
    for col, v, why in checks:
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(np.isfinite(v) & (v < 0))
        if len(bad):
            i = int(bad[0])
            src = f" ({', '.join(table.sources[i])})" if table.sources and table.sources[i] else ""
            raise SaeRdpError(
                f"SAE {table.keys[i]}{src}: {col} = {table.columns[col][i]:g} is impossible: {why}"
                + (f" ({len(bad)} SAEs have such a value)" if len(bad) > 1 else "")
            )


def checkpoint_mode(config: RdpAuditEvalConfig) -> str:
    """The checkpoint filter of a config: ``checkpoints``, or "all" for the older include_checkpoints=True."""
    mode = check_checkpoint_mode(config.checkpoints)
    return "all" if config.include_checkpoints and mode == "exclude" else mode


def sweep_slug(group: dict[str, Any]) -> str:
    if not group:
        return "pooled"
    short = {"layer": "L", "d_sae": "w", "model": "", "architecture": "", "release": ""}
    parts = [f"{short.get(k, k + '-')}{v}" for k, v in group.items()]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts)).strip("-")


def _none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def audit_sweep(
    sub: ResultsTable,
    config: RdpAuditEvalConfig,
    proxies: list[tuple[str, int, str]],
    rate: np.ndarray,
    dist: np.ndarray,
) -> tuple[list[RdpAuditResultDetail], list[str], dict[str, np.ndarray]]:
    """Audit each proxy on one sweep (rows with finite rate and distortion)."""
    details, skipped, pis = [], [], {}
    for col, sign, role in proxies:
        v = sub.columns[col]
        ok = np.isfinite(v)
        n_missing = int((~ok).sum())
        if ok.sum() < max(2, config.min_saes):
            skipped.append(f"{col}: only {int(ok.sum())} SAEs have it ({n_missing} missing)")
            continue
        pi = sign * v[ok]
        names = [k for k, o in zip(sub.keys, ok) if o]
        try:
            res = audit_proxy(
                rate[ok],
                dist[ok],
                pi,
                n_boot=config.n_bootstrap,
                n_perm=config.n_permutations,
                ci_level=config.ci_level,
                seed=config.random_seed,
                tie_weight=config.tie_weight,
                aggregation=config.aggregation,  # type: ignore[arg-type]
                names=names,
                allow_no_pairs=True,
            )
        except SaeRdpError as e:
            skipped.append(f"{col}: {e}")
            continue
        pis[col] = sign * v
        vci = res.violation_rate_ci or (None, None)
        rci = res.rank_correlation_ci or (None, None)
        details.append(
            RdpAuditResultDetail(
                proxy=col,
                orientation=sign,
                role=role,
                n_saes=res.n_saes,
                n_missing=n_missing,
                n_dominated_pairs=res.n_dominated_pairs,
                violation_rate=res.violation_rate,
                violation_rate_ci_low=_none(vci[0]),
                violation_rate_ci_high=_none(vci[1]),
                rank_correlation=_none(res.rank_correlation),
                rank_correlation_ci_low=_none(rci[0]),
                rank_correlation_ci_high=_none(rci[1]),
                p_value_violation=res.p_value_violation,
                p_value_rank_correlation=_none(res.p_value_rank_correlation),
                verdict=res.verdict(config.alpha),
            )
        )
    return details, skipped, pis


#: marker colour and legend label of each metric role in the audit figure
ROLE_STYLE: dict[str, tuple[str, str]] = {
    "proxy": ("C0", "proxy (interpretability metric, audited)"),
    "control": ("C3", "control (reconstruction-side metric)"),
}


def audit_figure(title: str, b: np.ndarray, pis: dict[str, np.ndarray], details: list[RdpAuditResultDetail]) -> Any:
    """One panel per metric (at most 16): Pi against the joint budget rank b, coloured by role, with a
    legend naming the roles shown. Returns a matplotlib Figure made without pyplot (no global backend or
    figure state is touched, so a notebook's inline plots keep working)."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    dd = details[:16]
    n = len(dd)
    ncol = min(4, n)
    nrow = math.ceil(n / ncol)
    fig = Figure(figsize=(3.2 * ncol, 2.6 * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, d in zip(axes.flat, dd):
        y = pis[d.proxy]
        ok = np.isfinite(y)
        ax.scatter(b[ok], y[ok], s=18, c=ROLE_STYLE[d.role][0])
        short = d.proxy.split(".")[-1].replace("_test_accuracy", "").replace("sae_", "")
        rho = "n/a" if d.rank_correlation is None else f"{d.rank_correlation:+.2f}"
        vv = "n/a" if d.violation_rate is None else f"{d.violation_rate:.2f}"
        ax.set_title(f"{short}\nV={vv} rho={rho}", fontsize=8)
        ax.set_xlabel("joint budget rank b (tighter ->)", fontsize=7)
        ax.set_ylabel(("-" if d.orientation < 0 else "+") + "value (Pi)", fontsize=7)
        ax.invert_xaxis()
        ax.tick_params(labelsize=6)
    fig.suptitle(f"{title}\nfaithful proxy: Pi rises to the right (tighter budget)", fontsize=9)
    roles = [r for r in ROLE_STYLE if any(d.role == r for d in dd)]
    handles = [Line2D([], [], marker="o", linestyle="", color=ROLE_STYLE[r][0], label=ROLE_STYLE[r][1]) for r in roles]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.3 / fig.get_figheight(), 1, 1))  # 0.3 inch at the bottom for the legend
    return fig


def _plot(
    path: Path, title: str, b: np.ndarray, pis: dict[str, np.ndarray], details: list[RdpAuditResultDetail]
) -> None:
    fig = audit_figure(title, b, pis, details)
    atomic_save(path, lambda p: fig.savefig(p, dpi=80, format="png"))


def _fmt_ci(x: float | None, lo: float | None, hi: float | None, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    s = f"{x:+.2f}" if signed else f"{x:.2f}"
    if lo is None or hi is None:
        return s
    return f"{s} [{lo:+.2f}, {hi:+.2f}]" if signed else f"{s} [{lo:.2f}, {hi:.2f}]"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of per-(sweep, proxy) audit rows (as in rdp_audit_summary.json)."""
    lines = [
        "| sweep | proxy | role | N | pairs | V [95% CI] | rho [95% CI] | p(V) | verdict |",
        "|---|---|---|---:|---:|---|---|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sweep']} | {r['proxy']}{'' if r['orientation'] < 0 else ' (+)'} | {r['role']} | {r['n_saes']} | "
            f"{r['n_dominated_pairs']} | "
            f"{_fmt_ci(r['violation_rate'], r['violation_rate_ci_low'], r['violation_rate_ci_high'])} | "
            f"{_fmt_ci(r['rank_correlation'], r['rank_correlation_ci_low'], r['rank_correlation_ci_high'], True)} | "
            f"{'n/a' if r['p_value_violation'] is None else format(r['p_value_violation'], '.3f')} | {r['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def _select_rows(table: ResultsTable, selected_saes: Sequence[tuple[str, Any]] | None, model_name: str) -> ResultsTable:
    mask = np.ones(len(table), dtype=bool)
    if selected_saes:
        want = set()
        for rel, obj in selected_saes:
            want.add(f"{rel}/{obj}" if isinstance(obj, str) else f"{rel}/custom_sae")
        mask &= np.array([k in want for k in table.keys])
        if not mask.any():
            raise SaeRdpError(f"none of the {len(want)} selected SAEs is in the results")
    if model_name:
        mask &= np.array([m == model_name for m in table.meta["model"]])
    return table.subset(mask)


def run_eval(
    config: RdpAuditEvalConfig,
    selected_saes: Sequence[tuple[str, Any]] | None,
    device: str,
    output_path: str,
    force_rerun: bool = False,
    table: ResultsTable | None = None,
) -> dict[str, dict[str, Any]]:
    """Audit every sweep; return ``{sweep_slug: eval output dict}`` and write the files (see module doc).

    ``selected_saes``: (release, sae_id) pairs (or (name, SAE object), keyed ``name/custom_sae``) to keep;
    None or empty = every SAE in the results. ``table``: an already-read :class:`ResultsTable` instead
    of ``config.results_paths``. ``device`` is accepted for SAEBench compatibility and unused.
    """
    check_config(config)
    if table is None:
        if not config.results_paths:
            raise SaeRdpError("no results given: set results_paths (folders or files of SAEBench results)")
        table = read_results(config.results_paths, checkpoints=checkpoint_mode(config))
    else:
        table = filter_checkpoints(table, checkpoint_mode(config))
        if not len(table):
            raise SaeRdpError(f"no SAE left after the checkpoint filter checkpoints={checkpoint_mode(config)!r}")
    table = _select_rows(table, selected_saes, config.model_name)
    grouping_notes = missing_group_keys(table, config.group_by)
    for note in grouping_notes:
        warnings.warn(f"rdp_audit: {note}", stacklevel=2)
    rate_col = table.resolve(config.rate_field)
    dist_spec = config.distortion_field.replace(" ", "")
    dist_col = table.resolve(dist_spec[2:] if dist_spec.startswith("1-") else dist_spec)
    check_rate_distortion(table, config.rate_field, config.distortion_field)
    proxies = select_proxies(table, config.proxies, config.include_controls, exclude=(rate_col, dist_col))
    if not proxies:
        raise SaeRdpError("no proxies to audit: none given and no metric with a known orientation in the results")
    out_dir = Path(output_path)  # created by the first file written: nothing is left if no sweep is audited
    files: list[str] = []
    results: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    skipped_sweeps: list[str] = []
    for group, sub in split_sweeps(table, config.group_by):
        slug = sweep_slug(group)
        r_all, d_all = sub.column(config.rate_field), sub.column(config.distortion_field)
        ok = np.isfinite(r_all) & np.isfinite(d_all)
        sub = sub.subset(ok)
        if len(sub) < max(2, config.min_saes):
            skipped_sweeps.append(f"{slug}: {len(sub)} SAEs with rate and distortion")
            continue
        fpath = out_dir / f"rdp_audit_{slug}_eval_results.json"
        if fpath.exists() and not force_rerun:
            obj = json.loads(fpath.read_text())
            results[slug] = obj
            files += [p.name for p in (fpath, out_dir / f"rdp_audit_{slug}.png") if p.is_file()]
            rows += [dict(d, sweep=slug) for d in obj["eval_result_details"]]
            continue
        rate, dist = sub.column(config.rate_field), sub.column(config.distortion_field)
        details, skipped, pis = audit_sweep(sub, config, proxies, rate, dist)
        n = len(sub)
        npairs = len(dominated_pairs(rate, dist))
        if not details:
            skipped_sweeps.append(f"{slug}: no proxy could be audited ({'; '.join(skipped[:2])})")
            continue
        vs = [d.violation_rate for d in details if d.violation_rate is not None]
        rhos = [d.rank_correlation for d in details if d.rank_correlation is not None]
        releases = sorted({r for r in sub.meta["release"] if r})
        output = RdpAuditEvalOutput(
            eval_type_id=EVAL_TYPE_ID_RDP_AUDIT,
            eval_config=config,
            eval_id=str(uuid.uuid4()),
            datetime_epoch_millis=int(time.time() * 1000),
            eval_result_metrics=RdpAuditMetricCategories(
                sweep=RdpAuditSweepMetrics(
                    n_saes=n,
                    n_dominated_pairs=npairs,
                    frac_pairs_dominated=npairs / (n * (n - 1) / 2),
                    rate_min=float(rate.min()),
                    rate_max=float(rate.max()),
                    distortion_min=float(dist.min()),
                    distortion_max=float(dist.max()),
                ),
                summary=RdpAuditSummaryMetrics(
                    n_proxies=len(details),
                    n_faithful=sum(d.verdict == "faithful" for d in details),
                    n_inverted=sum(d.verdict == "inverted" for d in details),
                    n_no_clear_trend=sum(d.verdict == "no clear trend" for d in details),
                    n_undefined=sum(d.verdict == "undefined" for d in details),
                    median_violation_rate=float(np.median(vs)) if vs else None,
                    median_rank_correlation=float(np.median(rhos)) if rhos else None,
                ),
            ),
            eval_result_details=details,
            sae_bench_commit_hash="unknown (sae-rdp rdp_audit)",
            sae_lens_id=None,
            sae_lens_release_id=releases[0] if len(releases) == 1 else None,
            sae_lens_version=sae_lens_version(),
            sae_cfg_dict=None,
            eval_result_unstructured={
                "sweep": {k: v for k, v in group.items()},
                "saes": sub.keys,
                "rate_field": rate_col,
                "distortion_field": config.distortion_field,
                "skipped_proxies": skipped,
                "reader_report": table.report[:3]
                + ([f"... {len(table.report) - 3} more"] if len(table.report) > 3 else []),
            },
        )
        obj = json.loads(json.dumps(asdict(output), default=str))
        atomic_write_json(fpath, obj)
        files.append(fpath.name)
        results[slug] = obj
        rows += [dict(asdict(d), sweep=slug) for d in details]
        if config.make_plots:
            b = joint_budget_rank(rate, dist, config.aggregation)  # type: ignore[arg-type]
            _plot(out_dir / f"rdp_audit_{slug}.png", slug, b, pis, details)
            files.append(f"rdp_audit_{slug}.png")
    if not results:
        raise SaeRdpError("no sweep could be audited: " + "; ".join(skipped_sweeps[:3]))
    summary = {
        "rows": rows,
        "skipped_sweeps": skipped_sweeps,
        "reader_report": grouping_notes + table.report,
        # every file of this audit (a later `audit run --out` here may replace only a folder holding these)
        "files": sorted(files) + ["rdp_audit_summary.json", "rdp_audit_summary.md"],
    }
    atomic_write_json(out_dir / "rdp_audit_summary.json", summary)
    md = "# RDP audit\n\n" + markdown_table(rows)
    if skipped_sweeps:
        md += "\nSkipped sweeps: " + "; ".join(skipped_sweeps) + "\n"
    atomic_write_text(out_dir / "rdp_audit_summary.md", md)
    return results


def arg_parser() -> argparse.ArgumentParser:
    """SAEBench's standard CLI (sae_regex_pattern, sae_block_pattern, output_folder, force_rerun,
    model_name) plus one flag per config field (validated by validate_eval_cli_interface)."""
    p = OneLineArgumentParser(description="Run the RDP audit of interpretability metrics (sae-rdp)")
    d = RdpAuditEvalConfig()
    p.add_argument("--sae_regex_pattern", type=str, default=".*", help="Regex on the SAE release (SAEs kept)")
    p.add_argument("--sae_block_pattern", type=str, default=".*", help="Regex on the SAE id (SAEs kept)")
    p.add_argument("--output_folder", type=str, default="eval_results/rdp_audit", help="Output folder")
    p.add_argument("--force_rerun", action="store_true", help="Overwrite existing audit outputs")
    p.add_argument("--model_name", type=str, default="", help="Keep only SAEs of this model ('' = all)")
    p.add_argument("--results_paths", type=str, nargs="+", required=True, help="SAEBench result folders/files")
    p.add_argument("--rate_field", type=str, default=d.rate_field, help="Rate metric (default sparsity.l0)")
    p.add_argument(
        "--distortion_field", type=str, default=d.distortion_field, help="Distortion metric; '1-NAME' = 1 - NAME"
    )
    p.add_argument("--proxies", type=str, nargs="*", default=[], help="NAME, NAME:+ or NAME:- (default: all known)")
    p.add_argument("--group_by", type=str, nargs="*", default=d.group_by, help="Metadata columns defining a sweep")
    p.add_argument(
        "--checkpoints",
        type=str,
        default=d.checkpoints,
        choices=["exclude", "only", "all"],
        help="Training checkpoints: exclude (final SAEs), only, or all",
    )
    p.add_argument("--include_checkpoints", action="store_true", help="Same as --checkpoints all")
    p.add_argument(
        "--include_controls",
        type=lambda s: s.lower() in ("1", "true", "yes"),
        default=True,
        help="Audit core controls too (true/false)",
    )
    p.add_argument("--min_saes", type=int, default=d.min_saes, help="Minimum SAEs per sweep and proxy")
    p.add_argument("--n_bootstrap", type=int, default=d.n_bootstrap, help="Bootstrap resamples (SAEs)")
    p.add_argument("--n_permutations", type=int, default=d.n_permutations, help="Permutations for p-values")
    p.add_argument("--ci_level", type=float, default=d.ci_level, help="Interval level")
    p.add_argument("--tie_weight", type=float, default=d.tie_weight, help="Weight of ties (Definition 3)")
    p.add_argument(
        "--aggregation", type=str, default=d.aggregation, choices=["sum", "max"], help="Budget rank aggregation"
    )
    p.add_argument("--alpha", type=float, default=d.alpha, help="p-value threshold for verdicts")
    p.add_argument(
        "--make_plots",
        type=lambda s: s.lower() in ("1", "true", "yes"),
        default=True,
        help="Write PNG plots (true/false)",
    )
    p.add_argument("--random_seed", type=int, default=d.random_seed, help="Random seed")
    return p


def config_from_args(args: argparse.Namespace) -> RdpAuditEvalConfig:
    fields = RdpAuditEvalConfig.__dataclass_fields__  # type: ignore[attr-defined]
    return RdpAuditEvalConfig(**{k: getattr(args, k) for k in fields if hasattr(args, k)})


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    args = arg_parser().parse_args(argv)
    config = config_from_args(args)
    table = read_results(config.results_paths, checkpoints=checkpoint_mode(config))
    rel_re, blk_re = re.compile(args.sae_regex_pattern), re.compile(args.sae_block_pattern)
    keep = [
        i
        for i in range(len(table))
        if rel_re.fullmatch(str(table.meta["release"][i])) and blk_re.fullmatch(str(table.meta["sae_id"][i]))
    ]
    if not keep:
        raise SaeRdpError("no SAE matches --sae_regex_pattern/--sae_block_pattern")
    return run_eval(config, None, "cpu", args.output_folder, args.force_rerun, table=table.subset(keep))


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
