"""``sae-rdp audit ...``: audit interpretability metrics against the RDP ordering (THEORY.md section 6).

sae-rdp audit run --results DIR_OR_FILES... [--rate-field sparsity.l0]
                  [--distortion-field 1-explained_variance] [--proxy NAME[:+|-] ...]
                  [--group-by model layer d_sae architecture] [--checkpoints exclude|only|all] --out DIR
sae-rdp audit bundled --out DIR [--quick]      # the shipped real SAEBench data
sae-rdp audit orientations                     # the orientation table
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `audit` command group to the top-level parser."""
    p = sub.add_parser("audit", help="audit interpretability metrics against the RDP ordering (V, rho)")
    asub = p.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    asub.required = True

    r = asub.add_parser("run", help="audit SAEBench results (folders/files of any eval type, or CSV)")
    r.add_argument("--results", nargs="+", required=True, help="SAEBench result folders or files (JSON/CSV)")
    r.add_argument("--rate-field", default="sparsity.l0", help="rate metric (column or unique suffix)")
    r.add_argument(
        "--distortion-field",
        default="1-reconstruction_quality.explained_variance",
        help="distortion metric; '1-NAME' = 1 - NAME",
    )
    r.add_argument(
        "--proxy",
        action="append",
        default=[],
        metavar="NAME[:+|-]",
        help="proxy to audit (repeatable); +: higher = more polysemantic, -: higher = more "
        "monosemantic; NAME alone uses the orientation table. Default: every known metric",
    )
    r.add_argument(
        "--group-by",
        nargs="*",
        default=["model", "layer", "d_sae", "architecture"],
        help="metadata columns defining a sweep (none = pool everything)",
    )
    r.add_argument("--no-controls", action="store_true", help="skip the reconstruction-side core controls")
    r.add_argument(
        "--checkpoints",
        choices=["exclude", "only", "all"],
        default=None,
        help="training checkpoints (id ending in _step_<N>): exclude (default: final SAEs), only, or all",
    )
    r.add_argument("--include-checkpoints", action="store_true", help="also audit training checkpoints (= all)")
    r.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (over SAEs), at most 100,000")
    r.add_argument("--n-perm", type=int, default=2000, help="permutations for the p-values, at most 100,000")
    r.add_argument("--seed", type=int, default=42, help="random seed")
    r.add_argument("--min-saes", type=int, default=3, help="minimum SAEs per sweep and proxy")
    r.add_argument("--no-plots", action="store_true", help="skip the PNG scatter plots")
    r.add_argument(
        "--out", required=True, type=Path, help="output folder: new, empty, or an earlier audit run's (replaced)"
    )
    r.set_defaults(func=_run)

    b = asub.add_parser("bundled", help="audit the bundled real SAEBench results (Gemma-2-2B, Pythia-70M)")
    b.add_argument("--out", required=True, type=Path, help="output folder")
    b.add_argument("--quick", action="store_true", help="200 resamples instead of 2000")
    b.add_argument("--seed", type=int, default=42, help="random seed")
    b.set_defaults(func=_bundled)

    o = asub.add_parser("orientations", help="print the orientation table of known SAEBench metrics")
    o.set_defaults(func=_orientations)


def _run(args: argparse.Namespace) -> int:
    from sae_rdp_plugin.audit.stats import check_resamples
    from sae_rdp_plugin.errors import SaeRdpError
    from sae_rdp_plugin.evals.rdp_audit.eval_config import RdpAuditEvalConfig
    from sae_rdp_plugin.evals.rdp_audit.main import check_config, run_eval
    from sae_rdp_plugin.io import check_out_folder, staged_folder

    check_resamples(args.n_boot, args.n_perm)
    if args.include_checkpoints and args.checkpoints not in (None, "all"):
        raise SaeRdpError(
            f"--include-checkpoints (= --checkpoints all) conflicts with --checkpoints {args.checkpoints}; give one"
        )
    cfg = RdpAuditEvalConfig(
        results_paths=[str(p) for p in args.results],
        rate_field=args.rate_field,
        distortion_field=args.distortion_field,
        proxies=list(args.proxy),
        group_by=list(args.group_by),
        checkpoints=args.checkpoints or ("all" if args.include_checkpoints else "exclude"),
        include_controls=not args.no_controls,
        min_saes=args.min_saes,
        n_bootstrap=args.n_boot,
        n_permutations=args.n_perm,
        random_seed=args.seed,
        make_plots=not args.no_plots,
    )
    check_config(cfg, {"min_saes": "--min-saes", "random_seed": "--seed"})
    check_out_folder(args.out, _is_audit_output)
    import json
    import warnings

    # reader notes go to the summary, not to stderr (stderr = the error line); the warnings that change
    # what is audited (unreadable files skipped, SAEs without a grouping key) are printed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        with staged_folder(args.out) as tmp:  # the per-sweep files appear all together or not at all
            res = run_eval(cfg, None, "cpu", str(tmp), force_rerun=True)
    print((args.out / "rdp_audit_summary.md").read_text())
    for w in caught:
        msg = str(w.message)
        if msg.startswith(("rdp_audit: ", "skipped ")):
            print(f"[audit] warning: {msg.removeprefix('rdp_audit: ')}")
    notes = json.loads((args.out / "rdp_audit_summary.json").read_text())["reader_report"]
    if notes:
        print(
            f"[audit] {len(notes)} reader note(s) (skipped files, metrics missing for some SAEs): "
            f"see reader_report in {args.out / 'rdp_audit_summary.json'}"
        )
    print(f"[audit] {len(res)} sweep(s) -> {args.out}")
    return 0


def _read_json(path: Path) -> dict | None:
    import json

    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _is_audit_output(p: Path) -> bool:
    """An earlier ``audit run`` output: its summary (rdp_audit_summary.json, the marker) lists the files it
    wrote, and the folder holds those files and nothing else (a user's file put there is never replaced)."""
    from sae_rdp_plugin.io import folder_holds_only

    summary = _read_json(p / "rdp_audit_summary.json")
    if summary is None or not isinstance(summary.get("rows"), list):
        return False
    files = summary.get("files")
    if isinstance(files, list):
        known = {f for f in files if isinstance(f, str)}
    else:  # written before the summary listed its files: the names of its audited sweeps
        slugs = {r.get("sweep") for r in summary["rows"] if isinstance(r, dict)}
        known = {f"rdp_audit_{s}{e}" for s in slugs if isinstance(s, str) for e in ("_eval_results.json", ".png")}
        known |= {"rdp_audit_summary.json", "rdp_audit_summary.md"}
    return folder_holds_only(p, known.__contains__) and all(q.is_file() and not q.is_symlink() for q in p.iterdir())


def _bundled_names() -> set[str]:
    from sae_rdp_plugin.evals.rdp_audit.bundled import ANALYSES, DISTORTIONS, RUNS

    return {f"{a}_run{r}_{d}" for a in ANALYSES for r in RUNS for d in DISTORTIONS}


def _is_bundled_output(p: Path) -> bool:
    """An earlier ``audit bundled`` output: summary.json (the marker) and summary.md, and otherwise only
    its analysis folders, each an ``audit run`` output (or empty)."""
    from sae_rdp_plugin.io import folder_holds_only

    summary = _read_json(p / "summary.json")
    if summary is None or "analyses" not in summary or "final_saes_only" not in summary:
        return False
    subs = _bundled_names()
    if not folder_holds_only(p, lambda n: n in ("summary.json", "summary.md") or n in subs):
        return False
    return all(
        (q.name in subs and q.is_dir() and not q.is_symlink() and (not any(q.iterdir()) or _is_audit_output(q)))
        or (q.name not in subs and q.is_file())
        for q in p.iterdir()
    )


def _bundled(args: argparse.Namespace) -> int:
    from sae_rdp_plugin.errors import SaeRdpError
    from sae_rdp_plugin.evals.rdp_audit.bundled import run_bundled
    from sae_rdp_plugin.io import check_out_folder, staged_folder

    if args.seed < 0:
        raise SaeRdpError(f"--seed must be a non-negative integer, got {args.seed}")
    check_out_folder(args.out, _is_bundled_output)
    n = 200 if args.quick else 2000
    t0 = time.time()
    with staged_folder(args.out) as tmp:  # every analysis's files appear together or not at all
        s = run_bundled(tmp, n_boot=n, n_perm=n, seed=args.seed)
    print(f"[audit] {len(s['rows'])} (sweep, proxy) audits in {time.time() - t0:.0f} s -> {args.out}/summary.md")
    return 0


def _orientations(args: argparse.Namespace) -> int:
    from sae_rdp_plugin.audit.stats import NOT_PROXIES, ORIENTATION

    print("| metric pattern | Pi | role | note |\n|---|---|---|---|")
    for pat, o in ORIENTATION.items():
        print(f"| {pat} | {'+s' if o.sign > 0 else '-s'} | {o.role} | {o.note} |")
    print("\nNot proxies (refused): " + ", ".join(NOT_PROXIES))
    return 0


def demo_section(out: Path) -> str | None:
    """The audit of the bundled real SAEBench data (CPU, a few seconds): pooled TopK+ReLU sweeps at each
    (layer, width), sparse probing (run A) and the controls, with a short table and one figure."""
    import numpy as np

    from sae_rdp_plugin.audit.readers import read_bundled
    from sae_rdp_plugin.evals.rdp_audit.bundled import _keep
    from sae_rdp_plugin.evals.rdp_audit.eval_config import RdpAuditEvalConfig
    from sae_rdp_plugin.evals.rdp_audit.main import run_eval

    d = Path(out) / "audit"
    table = _keep(read_bundled("A"), with_probing=True)
    # D = mean L2 error: the 2024 files' explained variance is too noisy to order SAEs (FINDINGS.md section 2)
    cfg = RdpAuditEvalConfig(
        group_by=["model", "layer"],
        distortion_field="basic.l2_loss",
        n_bootstrap=300,
        n_permutations=300,
        random_seed=42,
        make_plots=True,
    )
    run_eval(cfg, None, "cpu", str(d), force_rerun=True, table=table)
    import json

    rows = json.loads((d / "rdp_audit_summary.json").read_text())["rows"]
    pick = [
        r
        for r in rows
        if r["proxy"].startswith("sparse_probing") or r["proxy"] == "core.model_performance_preservation.ce_loss_score"
    ]

    def f(x: float | None, s: str = ".2f") -> str:
        return "n/a" if x is None else format(x, s)

    lines = [
        "| sweep (pooled archs + widths) | proxy | N | pairs | V [95% CI] | rho | verdict |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    for r in pick:
        ci = (
            ""
            if r["violation_rate_ci_low"] is None
            else f" [{r['violation_rate_ci_low']:.2f}, {r['violation_rate_ci_high']:.2f}]"
        )
        name = r["proxy"].split(".")[-1].replace("_test_accuracy", "")
        lines.append(
            f"| {r['sweep']} | {name} | {r['n_saes']} | {r['n_dominated_pairs']} | "
            f"{f(r['violation_rate'])}{ci} | {f(r['rank_correlation'], '+.2f')} | {r['verdict']} |"
        )
    probe_v = [
        r["violation_rate"] for r in pick if r["proxy"].startswith("sparse_probing") and r["violation_rate"] is not None
    ]
    fig = next((p.name for p in sorted(d.glob("rdp_audit_gemma-2-2b_L19*.png"))), None)
    md = [
        "## Audit of real interpretability metrics (SAEBench, Gemma-2-2B and Pythia-70M)\n",
        "Across a sweep of SAEs, one under a tighter joint (rate, distortion) budget must not look more "
        "monosemantic (THEORY.md section 6). V = share of dominated pairs where the proxy disagrees (0 faithful, "
        "0.5 random, 1 inverted); rho = -Spearman(rank(L0) + rank(D), Pi), D = mean L2 reconstruction error "
        "(the files' explained variance is too noisy to order SAEs). Data: the published SAEBench results "
        "shipped with the package (final SAEs; sparse probing run A); sweeps pool all architectures and widths "
        "at one layer (single sweeps are almost pure Pareto fronts: nothing to compare). 300 bootstrap "
        "resamples / permutations.\n",
        "\n".join(lines),
        "",
        "Median V of the sparse-probing accuracies over these sweeps: "
        f"{f(float(np.median(probe_v)) if probe_v else None)} "
        f"({len(probe_v)} (sweep, k) audits): small-k probes lean faithful, k = 1, large k and all latents do not. "
        "ce_loss_score (loss recovered) is a reconstruction-side control, not a polysemanticity proxy: read as "
        "monosemanticity it must come out inverted (V near 1), and does. autointerp, absorption, SCR/TPP, RAVEL "
        "and unlearning are not in these files, so they are not audited here. Caveat: pooling widths and "
        "architectures can invert even the true polysemanticity (synthetic check, experiments/proxy_validation). "
        "See experiments/saebench_audit/FINDINGS.md.",
    ]
    if fig:
        md.append(f"\n![Pi against the joint budget rank, Gemma-2-2B layer 19](audit/{fig})\n")
    return "\n".join(md)
