"""Our Table 2: the RDP audit of the committed table2 SAEBench results (dev machine, CPU, seconds).

For every model-layer folder ``results/<model>-L<layer>/`` (core, ``sparse_probing_sae_probes`` and
``absorption_first_letter`` JSONs of every trained SAE, checkpoints included) it runs the audit
(``sae_rdp_plugin.evals.rdp_audit.main.run_eval``, the code behind ``sae-rdp audit run``) three ways:

* ``architecture``: one sweep per architecture (group by release = model-layer-architecture; both widths
  and the training checkpoints pooled, as the paper pools a suite);
* ``width``: one sweep per architecture and width (release, d_sae);
* ``pooled``: every SAE of the model-layer in one sweep (model, layer).

Rate R = ``core.sparsity.l0``, distortion D = 1 - ``core.reconstruction_quality.explained_variance``; a
proxy s is oriented as a polysemanticity score Pi (THEORY.md section 6: Pi = -s for sparse probing
accuracy, +s for absorption and splitting); V = the fraction of dominated pairs (R_i <= R_j, D_i <= D_j)
with Pi_i < Pi_j (ties 1/2), with a bootstrap interval over SAEs and a permutation p-value; rho =
-Spearman(rank(R) + rank(D), Pi).

Writes ``table2.json`` (``{"rows": [{"model", "layer", "architecture", "proxy", "n_saes", "n_pairs", "V",
"V_ci", "rho", ...}], ...}``), ``table2.md`` (the rows next to the paper's Table 2 values, text computed
from the rows) and the audit folders with their scatter plots under ``audit/``.

    .venv/bin/python experiments/table2/report.py            # every results/<model>-L<layer>/
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
EVAL_DIRS = ("core", "sparse_probing_sae_probes", "absorption_first_letter")

#: The RDP paper's Table 2 (V on Gemma SAEBench sweeps, TopK / ReLU), the proxies SAEBench can run offline.
#: ReLU in the paper = SAELens's "standard" (ReLU + L1) architecture here.
PAPER_V = {
    "Sparse Probing": {"topk": 0.351, "standard": 0.709},
    "Absorption": {"topk": 0.480, "standard": 0.766},
    "Splitting": {"topk": 0.441, "standard": 0.411},
}
#: Which SAEBench column stands for a paper proxy (primary first). Our sparse probing runs on sae-probes'
#: datasets (``sparse_probing_sae_probes``), not on SAEBench's hub datasets: same method, other data.
PAPER_PROXY_OF = {
    "sparse_probing_sae_probes.sae.sae_top_1_test_accuracy": "Sparse Probing",
    "absorption_first_letter.mean_absorption_fraction_score": "Absorption",
    "absorption_first_letter.mean_num_split_features": "Splitting",
}
GROUPINGS = {"architecture": ["release"], "width": ["release", "d_sae"], "pooled": ["model", "layer"]}
_RELEASE = re.compile(r"^table2-(?P<model>.+)-L(?P<layer>\d+)-(?P<arch>[a-z_]+)$")


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def model_layer_folders(results: Path) -> list[Path]:
    """``results/<model>-L<layer>/`` folders holding a ``core/`` folder of JSONs."""
    return sorted(p for p in results.iterdir() if p.is_dir() and re.search(r"-L\d+$", p.name) and (p / "core").is_dir())


def audit(folder: Path, grouping: str, out: Path, n_boot: int, n_perm: int, seed: int) -> dict[str, dict[str, Any]]:
    """Run the audit of one model-layer folder for one grouping; returns ``{sweep slug: eval output}``."""
    from sae_rdp_plugin.evals.rdp_audit.eval_config import RdpAuditEvalConfig
    from sae_rdp_plugin.evals.rdp_audit.main import run_eval
    from sae_rdp_plugin.io import staged_folder

    paths = [str(folder / d) for d in EVAL_DIRS if (folder / d).is_dir() and any((folder / d).glob("*.json"))]
    cfg = RdpAuditEvalConfig(
        results_paths=paths,
        group_by=list(GROUPINGS[grouping]),
        checkpoints="all",
        include_controls=True,
        n_bootstrap=n_boot,
        n_permutations=n_perm,
        random_seed=seed,
        make_plots=True,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with staged_folder(out) as tmp:
            return run_eval(cfg, None, "cpu", str(tmp), force_rerun=True)


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def rows_of(outputs: dict[str, dict[str, Any]], grouping: str, folder: Path) -> list[dict[str, Any]]:
    """table2.json rows of one grouping's audit outputs."""
    m = re.match(r"^(?P<model>.+)-L(?P<layer>\d+)$", folder.name)
    assert m, folder
    rows = []
    for out in outputs.values():
        group = (out.get("eval_result_unstructured") or {}).get("sweep") or {}
        rel = _RELEASE.match(str(group.get("release", "")))
        arch = rel["arch"] if rel else "pooled"
        for det in out["eval_result_details"]:
            ci = [_finite(det.get("violation_rate_ci_low")), _finite(det.get("violation_rate_ci_high"))]
            rows.append(
                {
                    "model": m["model"],
                    "layer": int(m["layer"]),
                    "grouping": grouping,
                    "architecture": arch,
                    "width": group.get("d_sae"),
                    "proxy": det["proxy"],
                    "paper_proxy": PAPER_PROXY_OF.get(det["proxy"]),
                    "role": det["role"],
                    "orientation": det["orientation"],
                    "n_saes": det["n_saes"],
                    "n_pairs": det["n_dominated_pairs"],
                    "V": _finite(det.get("violation_rate")),
                    "V_ci": ci,
                    "rho": _finite(det.get("rank_correlation")),
                    "rho_ci": [
                        _finite(det.get("rank_correlation_ci_low")),
                        _finite(det.get("rank_correlation_ci_high")),
                    ],
                    "p_value_V": _finite(det.get("p_value_violation")),
                    "verdict": det.get("verdict"),
                }
            )
    return rows


def _f(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def compare(row: dict[str, Any]) -> str:
    """Our V against the paper's, at the strength of the interval: inside / above / below our 95% interval."""
    paper = PAPER_V.get(row["paper_proxy"] or "", {}).get(row["architecture"])
    lo, hi = row["V_ci"]
    if paper is None or row["V"] is None:
        return "no paper value"
    if lo is None or hi is None:
        return f"paper {paper:.3f}; no interval"
    where = "inside" if lo <= paper <= hi else ("below" if paper < lo else "above")
    return f"paper {paper:.3f} is {where} our interval"


def markdown(rows: list[dict[str, Any]], sources: dict[str, Any]) -> str:
    """table2.md: the architecture rows of the paper's proxies first, then every row; text from the numbers."""
    lines = [
        "# table2: our Table 2 (generated by report.py from table2.json; do not edit)",
        "",
        f"SAEs audited per model-layer: {json.dumps(sources['n_saes'])}. Rate = core L0, distortion = 1 - explained "
        "variance; V = share of dominated pairs ordered against the RDP direction (0 faithful, 0.5 random, 1 "
        "inverted), 95% bootstrap interval over SAEs; rho = -Spearman(joint budget rank, Pi).",
        "",
        "## Paper's proxies, per architecture (widths and checkpoints pooled)",
        "",
        "| model | layer | architecture | proxy (ours) | paper proxy | N | pairs | V [95% CI] | rho | p(V) "
        "| vs paper |",
        "|---|---:|---|---|---|---:|---:|---|---:|---:|---|",
    ]
    key = [r for r in rows if r["grouping"] == "architecture" and r["paper_proxy"]]
    for r in key:
        lo, hi = r["V_ci"]
        lines.append(
            f"| {r['model']} | {r['layer']} | {r['architecture']} | `{r['proxy']}` | {r['paper_proxy']} | "
            f"{r['n_saes']} | {r['n_pairs']} | {_f(r['V'])} [{_f(lo)}, {_f(hi)}] | {_f(r['rho'], '+.3f')} | "
            f"{_f(r['p_value_V'])} | {compare(r)} |"
        )
    if not key:
        lines.append("| (no paper proxy evaluated yet) | | | | | | | | | | |")
    lines += [
        "",
        "## Every sweep and metric",
        "",
        "| grouping | model | layer | architecture | width | metric | role | N | pairs | V [95% CI] | rho | verdict |",
        "|---|---|---:|---|---:|---|---|---:|---:|---|---:|---|",
    ]
    for r in rows:
        lo, hi = r["V_ci"]
        lines.append(
            f"| {r['grouping']} | {r['model']} | {r['layer']} | {r['architecture']} | {r['width'] or ''} | "
            f"`{r['proxy']}` | {r['role']} | {r['n_saes']} | {r['n_pairs']} | {_f(r['V'])} [{_f(lo)}, {_f(hi)}] | "
            f"{_f(r['rho'], '+.3f')} | {r['verdict']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=HERE / "results", help="folder of <model>-L<layer>/ folders")
    ap.add_argument("--out", type=Path, default=HERE, help="where table2.json, table2.md and audit/ go")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--n-perm", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not args.results.is_dir():
        fail(f"--results {args.results} is not a folder")
    folders = model_layer_folders(args.results)
    if not folders:
        fail(f"no <model>-L<layer>/core/ folder under {args.results}")
    from sae_rdp_plugin.audit.stats import check_resamples
    from sae_rdp_plugin.errors import SaeRdpError

    try:
        check_resamples(args.n_boot, args.n_perm)
        rows: list[dict[str, Any]] = []
        n_saes: dict[str, int] = {}
        for folder in folders:
            n_saes[folder.name] = len(list((folder / "core").glob("*.json")))
            for grouping in GROUPINGS:
                outs = audit(
                    folder, grouping, args.out / "audit" / folder.name / grouping, args.n_boot, args.n_perm, args.seed
                )
                rows += rows_of(outs, grouping, folder)
    except SaeRdpError as exc:
        fail(str(exc))
    sources = {
        "results": sorted(str(f.relative_to(args.results.parent)) for f in folders),
        "n_saes": n_saes,
        "rate": "core.sparsity.l0",
        "distortion": "1 - core.reconstruction_quality.explained_variance",
        "checkpoints": "all (a checkpoint is a separate SAE)",
        "n_boot": args.n_boot,
        "n_perm": args.n_perm,
        "seed": args.seed,
        "paper_V": PAPER_V,
    }
    from sae_rdp_plugin.io import atomic_write_text

    atomic_write_text(args.out / "table2.json", json.dumps({"rows": rows, "sources": sources}, indent=1) + "\n")
    atomic_write_text(args.out / "table2.md", markdown(rows, sources))
    print(markdown(rows, sources).split("## Every sweep")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
