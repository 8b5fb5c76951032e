"""Our Table 2: the RDP audit of the committed table2 SAEBench results (dev machine, CPU, seconds).

For every model-layer folder ``results/<model>-L<layer>/`` (core, ``sparse_probing_sae_probes`` and
``absorption_first_letter`` JSONs of every trained SAE, checkpoints included) it runs the audit
(``sae_rdp_plugin.evals.rdp_audit.main.run_eval``, the code behind ``sae-rdp audit run``) three ways:

* ``architecture``: one sweep per architecture (group by release = model-layer-architecture; both widths
  and the training checkpoints pooled, as the paper pools a suite);
* ``width``: one sweep per architecture and width (release, d_sae);
* ``pooled``: every SAE of the model-layer in one sweep (model, layer).

Rate R = ``core.sparsity.l0``; distortion D = 1 - ``core.reconstruction_quality.explained_variance_legacy``
(SAEBench's per-token formula, 1 - sum_i (x_i - x_hat_i)^2 / sum_i (x_i - mean_batch x_i)^2 averaged over
tokens), and ``core.reconstruction_quality.mse`` as a second distortion. SAEBench 0.6's newer
``explained_variance`` is not used: it subtracts the square of the mean of x^2 (not of x) from the mean
squared norm, and on Gemma-3-270M layer 9 it reads 1.0000-1.0001 for every SAE (saturated, no order). A
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

import json
import math
import os
import re
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run_stage import EVAL_DIRS  # noqa: E402  (the eval folders, in the audit's column order)
from run_stage import RELEASE_ID as _RELEASE  # noqa: E402
from run_stage import REPLICATE_NAME as _REPLICATE  # noqa: E402

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
    "absorption_first_letter.mean.mean_absorption_fraction_score": "Absorption",
    "absorption_first_letter.mean.mean_num_split_features": "Splitting",
}
GROUPINGS = {"architecture": ["release"], "width": ["release", "d_sae"], "pooled": ["model", "layer"]}
#: distortion name -> the audit's distortion field; the first is the primary one (the paper's comparison)
DISTORTIONS = {
    "1-EV": "1-reconstruction_quality.explained_variance_legacy",
    "MSE": "reconstruction_quality.mse",
}
#: A sweep whose median SAE recovers less than this share of the CE loss (SAEBench ``ce_loss_score``:
#: (CE_ablated - CE_sae) / (CE_ablated - CE_orig)) does not hold working SAEs: its V is computed and shown, but
#: not set against the paper's value (the paper's sweeps are SAEBench's trained suites).
MIN_CE_LOSS_SCORE = 0.5
#: The WSAE arm's architectures. The pooled replicate audit ``pooled-<model>-L<layer>`` pools the paper's
#: architectures only, so that it answers the paper's Table 2 question across them; with a WSAE replicate
#: present, ``pooled-<model>-L<layer>-with-wsae`` pools it as well (its uncapped alpha-1 SAEs recover about none
#: of the CE loss: a second line, not a change of the first). Decided before the WSAE replicate existed.
WSAE_ARCHITECTURES = ("weighted_topk",)
WITH_WSAE = "-with-wsae"


def fail(msg: str) -> None:
    print(f"error: {msg}".splitlines()[0], file=sys.stderr)
    raise SystemExit(2)


def _read(path: Path) -> Any:
    """A JSON file the report reads; SaeRdpError naming it when it is unreadable or malformed."""
    from sae_rdp_plugin.errors import SaeRdpError

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise SaeRdpError(f"{path}: unreadable or not JSON ({type(exc).__name__}: {exc})") from None


def _per_file(f: Path, fn: Any) -> Any:
    """``fn()`` for the JSON ``f``; a missing key or a value of the wrong type: SaeRdpError naming the file."""
    from sae_rdp_plugin.errors import SaeRdpError

    try:
        return fn()
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise SaeRdpError(f"{f}: not a SAEBench JSON of the expected shape ({type(exc).__name__}: {exc})") from None


#: the first line of the table2.md this script writes (how an earlier output is told from a user's file)
MD_HEAD = "# table2: our Table 2 (generated by report.py"


def check_out(out: Path, folders: list[Path], replicates: list[Path] | None = None) -> None:
    """Before anything is written: ``--out`` is a folder (or absent), and every file / folder the report would
    replace there is one it wrote (table2.md by its first line, table2.json by its keys, an audit folder by
    holding only rdp_audit_* files). Exit 2 with one line otherwise."""
    if out.exists() and not out.is_dir():
        fail(f"--out {out} exists and is not a folder")
    above = out.absolute()
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        fail(f"--out {out}: {above} is not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        fail(f"--out {out}: no permission to write in {above}")
    md, js = out / "table2.md", out / "table2.json"
    if md.exists() or md.is_symlink():
        try:
            first = md.read_text().split("\n", 1)[0] if md.is_file() else ""
        except (OSError, ValueError):
            first = ""
        if not first.startswith(MD_HEAD):
            fail(f"--out {out}: {md.name} there was not written by report.py (it would be overwritten)")
    if js.exists() or js.is_symlink():
        try:
            d = json.loads(js.read_text()) if js.is_file() else None
        except (OSError, ValueError, RecursionError):
            d = None
        if not (isinstance(d, dict) and isinstance(d.get("rows"), list) and isinstance(d.get("sources"), dict)):
            fail(f"--out {out}: {js.name} there was not written by report.py (it would be overwritten)")
    for folder in folders:
        for d in (out / "audit", out / "audit" / folder.name):
            if d.exists() and not d.is_dir():
                fail(f"--out {out}: {d} exists and is not a folder")
        for grouping in GROUPINGS:
            for distortion in DISTORTIONS:
                _check_dest(out, out / "audit" / folder.name / f"{grouping}_{distortion.replace('-', '')}")
    for folder in replicates or []:
        for d in (out / "audit" / "replicates", out / "audit" / "replicates" / folder.name):
            if d.exists() and not d.is_dir():
                fail(f"--out {out}: {d} exists and is not a folder")
        for grouping, distortion in REPLICATE_AUDITS:
            _check_dest(out, replicate_dest(out, folder, grouping, distortion))
    for tag in pooled_replicates(replicates or []):
        d = pooled_dest(out, tag)
        if d.parent.exists() and not d.parent.is_dir():
            fail(f"--out {out}: {d.parent} exists and is not a folder")
        _check_dest(out, d)


def _check_dest(out: Path, dest: Path) -> None:
    """An audit folder the report replaces: absent, or a folder holding only the audit's files."""
    from sae_rdp_plugin.io import folder_holds_only

    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        fail(f"--out {out}: {dest} exists and is not a folder")
    if dest.is_dir() and not folder_holds_only(dest, lambda n: n.startswith("rdp_audit_")):
        fail(f"--out {out}: {dest} holds files the audit did not write (it would be replaced)")


def check_inputs(results: Path, folders: list[Path]) -> None:
    """Before anything is written: every JSON the report reads parses (SaeRdpError naming the first that does
    not), and every core JSON has the fields the tables use."""
    archive = sorted(p for p in (results / "archive").glob("*") if (p / "core").is_dir())
    for folder in [*folders, *archive]:
        for f in sorted(folder.rglob("*.json")):
            _read(f)
        quality(folder)
    for folder in folders:
        _core_points(folder)
    diag = results.parent / "diagnostics"
    for f in [diag / "l1_massive_dim.json", *sorted(diag.glob("absorption_probe_*.json"))]:
        if f.is_file():
            _read(f)


def model_layer_folders(results: Path) -> list[Path]:
    """``results/<model>-L<layer>/`` folders holding a ``core/`` folder of JSONs."""
    return sorted(p for p in results.iterdir() if p.is_dir() and re.search(r"-L\d+$", p.name) and (p / "core").is_dir())


def audit(
    folder: Path | list[Path], grouping: str, distortion: str, out: Path, n_boot: int, n_perm: int, seed: int
) -> dict[str, dict[str, Any]]:
    """Run the audit of one model-layer folder (or of several folders' SAEs together) for one grouping and
    distortion; ``{sweep slug: eval output}``."""
    from sae_rdp_plugin.evals.rdp_audit.eval_config import RdpAuditEvalConfig
    from sae_rdp_plugin.evals.rdp_audit.main import run_eval
    from sae_rdp_plugin.io import staged_folder

    folders = [folder] if isinstance(folder, Path) else folder
    paths = [str(f / d) for f in folders for d in EVAL_DIRS if (f / d).is_dir() and any((f / d).glob("*.json"))]
    cfg = RdpAuditEvalConfig(
        results_paths=paths,
        group_by=list(GROUPINGS[grouping]),
        distortion_field=DISTORTIONS[distortion],
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


def quality(folder: Path) -> dict[tuple[str, int | None], dict[str, float | int]]:
    """SAE quality from the core JSONs, per (release, width) and per (release, None) (widths pooled), and per
    ("pooled", None): the number of SAEs and the median / min / max of ``ce_loss_score``,
    ``explained_variance_legacy`` and the core L0."""
    vals: dict[tuple[str, int | None], dict[str, list[float]]] = {}
    for f in sorted((folder / "core").glob("*.json")):
        d = _read(f)
        arch, width, x = _per_file(f, lambda: _quality_of(d))
        for key in ((arch, width), (arch, None), ("pooled", None)):
            slot = vals.setdefault(key, {k: [] for k in x})
            for k, v in x.items():
                slot[k].append(_per_file(f, lambda: float(v)))
    out: dict[tuple[str, int | None], dict[str, float | int]] = {}
    for key, slot in vals.items():
        out[key] = {"n": len(slot["ce_loss_score"])}
        for k, xs in slot.items():
            out[key].update({f"median_{k}": statistics.median(xs), f"min_{k}": min(xs), f"max_{k}": max(xs)})
    return out


def _quality_of(d: dict[str, Any]) -> tuple[str, Any, dict[str, Any]]:
    q = d["eval_result_metrics"]
    rel = _RELEASE.match(d["sae_lens_release_id"])
    arch = rel["arch"] if rel else d["sae_lens_release_id"]
    width = d.get("sae_cfg_dict", {}).get("d_sae")
    x = {
        "ce_loss_score": q["model_performance_preservation"]["ce_loss_score"],
        "explained_variance_legacy": q["reconstruction_quality"]["explained_variance_legacy"],
        "l0": q["sparsity"]["l0"],
    }
    return arch, width, x


def per_architecture(qual: dict[tuple[str, int | None], dict[str, float | int]]) -> list[tuple[str, dict]]:
    """(architecture, its quality over both widths) of :func:`quality`'s output, by name."""
    return sorted((arch, q) for (arch, width), q in qual.items() if arch != "pooled" and width is None)


def quality_text(q: dict[str, float | int]) -> str:
    """SAEBench ``ce_loss_score``, ``explained_variance_legacy`` and core L0: median (min-max)."""
    return (
        f"SAEBench `ce_loss_score` median {q['median_ce_loss_score']:.2f} ({q['min_ce_loss_score']:.2f}-"
        f"{q['max_ce_loss_score']:.2f}), `explained_variance_legacy` median "
        f"{q['median_explained_variance_legacy']:.2f} ({q['min_explained_variance_legacy']:.2f}-"
        f"{q['max_explained_variance_legacy']:.2f}), L0 median {q['median_l0']:.1f} ({q['min_l0']:.1f}-"
        f"{q['max_l0']:.1f})"
    )


def rows_of(
    outputs: dict[str, dict[str, Any]],
    grouping: str,
    distortion: str,
    folder: Path,
    qual: dict[tuple[str, int | None], dict[str, float | int]],
    name: str | None = None,
) -> list[dict[str, Any]]:
    """table2.json rows of one grouping's audit outputs (each with its sweep's median SAE quality from ``qual``,
    :func:`quality` of ``folder``); ``name``: the model-layer (``<model>-L<layer>``) when the folder's name is
    not it (a replicate's)."""
    m = re.match(r"^(?P<model>.+)-L(?P<layer>\d+)$", name or folder.name)
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
                    "distortion": distortion,
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
                    "median_ce_loss_score": qual.get((arch, group.get("d_sae")), {}).get("median_ce_loss_score"),
                    "median_explained_variance_legacy": qual.get((arch, group.get("d_sae")), {}).get(
                        "median_explained_variance_legacy"
                    ),
                }
            )
    return rows


def release_of(ml: str, arch: str) -> str:
    """The SAELens release id of a model-layer's (``<model>-L<layer>``) sweep of one architecture."""
    return f"table2-{ml}-{arch}"


def _f(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def compare(row: dict[str, Any]) -> str:
    """Our V against the paper's, at the strength of the interval: inside / above / below our 95% interval."""
    paper = PAPER_V.get(row["paper_proxy"] or "", {}).get(row["architecture"])
    lo, hi = row["V_ci"]
    if paper is None or row["V"] is None:
        return "no paper value"
    ce = row.get("median_ce_loss_score")
    if ce is not None and ce < MIN_CE_LOSS_SCORE:
        return (
            f"not compared with the paper's {paper:.3f}: median CE loss recovered {ce:.2f} < {MIN_CE_LOSS_SCORE} "
            "(the sweep's SAEs do not work)"
        )
    if lo is None or hi is None:
        return f"paper {paper:.3f}; no interval"
    where = _place(paper, lo, hi)
    if where is None:
        return f"paper {paper:.3f}; our interval [0, 1] holds any value: no comparison"
    return f"paper {paper:.3f} is {where} our interval"


def _place(paper: float, lo: float, hi: float) -> str | None:
    """Where the paper's V lies against our interval [lo, hi]: "inside", "below" or "above"; None for an interval
    spanning all of [0, 1] (few pairs), which any value lies in: no agreement with the paper."""
    if lo <= 0.0 and hi >= 1.0:
        return None
    return "inside" if lo <= paper <= hi else ("below" if paper < lo else "above")


def markdown(rows: list[dict[str, Any]], sources: dict[str, Any], rep_rows: list[dict[str, Any]] | None = None) -> str:
    """table2.md: the architecture rows of the paper's proxies first (primary distortion, with V under the
    second distortion beside it), then the paper's proxies on each training-run replicate (``rep_rows``: an
    architecture's sweep trained again, with evals its committed sweep may lack; per architecture, then per width,
    likewise with V under the second distortion beside it), then every row; all text from the numbers."""
    primary, second = list(DISTORTIONS)
    lines = [
        "# table2: our Table 2 (generated by report.py from table2.json; do not edit)",
        "",
        f"SAEs audited per model-layer (checkpoints included): {json.dumps(sources['n_saes'])}. Rate = core L0; "
        f"distortion = {primary} (`{DISTORTIONS[primary]}`), and {second} (`{DISTORTIONS[second]}`) as a check. "
        "V = share of dominated pairs ordered against the RDP direction (0 faithful, 0.5 random, 1 inverted), "
        "95% bootstrap interval over SAEs, p(V) a permutation p-value; rho = -Spearman(joint budget rank, Pi).",
        "",
        "## Paper's proxies, per architecture (widths and checkpoints pooled)",
        "",
        f"| model | layer | architecture | proxy (ours) | paper proxy | N | pairs | V [95% CI] | rho | p(V) "
        f"| V with D = {second} | median CE rec. / EV legacy | vs paper |",
        "|---|---:|---|---|---|---:|---:|---|---:|---:|---|---|---|",
    ]

    def same(r: dict[str, Any], dist: str, pool: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any] | None:
        """The row of ``pool`` equal to ``r`` in ``keys``, under distortion ``dist`` (None if none)."""
        return next((o for o in pool if o["distortion"] == dist and all(o[k] == r[k] for k in keys)), None)

    row_keys = ("model", "layer", "grouping", "architecture", "width", "proxy")

    key = [r for r in rows if r["grouping"] == "architecture" and r["paper_proxy"] and r["distortion"] == primary]
    for r in key:
        lo, hi = r["V_ci"]
        o = same(r, second, rows, row_keys)
        alt = "n/a" if o is None else f"{_f(o['V'])} ({o['n_pairs']} pairs)"
        lines.append(
            f"| {r['model']} | {r['layer']} | {r['architecture']} | `{r['proxy']}` | {r['paper_proxy']} | "
            f"{r['n_saes']} | {r['n_pairs']} | {_f(r['V'])} [{_f(lo)}, {_f(hi)}] | {_f(r['rho'], '+.3f')} | "
            f"{_f(r['p_value_V'])} | {alt} | {_f(r.get('median_ce_loss_score'), '.2f')} / "
            f"{_f(r.get('median_explained_variance_legacy'), '.2f')} | {compare(r)} |"
        )
    if not key:
        lines.append("| (no paper proxy evaluated yet) | | | | | | | | | | | | |")
    reps = [
        r
        for r in rep_rows or []
        if r["grouping"] in ("architecture", "width") and r["paper_proxy"] and r["distortion"] == primary
    ]

    if reps:
        lines += [
            "",
            "## Paper's proxies on the training-run replicates (per architecture, then per width; checkpoints pooled)",
            "",
            "An architecture's sweep trained again with the same recipe and seed (`results/replicates/`), with the "
            "evals its committed sweep may lack. FINDINGS.md says how close each replicate's SAEs are to the "
            "committed sweep's. The paper's V is per architecture: width rows are not set against it.",
            "",
            "| replicate | model | layer | architecture | width | proxy (ours) | paper proxy | N | pairs | V [95% CI] "
            f"| rho | p(V) | V with D = {second} | median CE rec. / EV legacy | vs paper |",
            "|---|---|---:|---|---:|---|---|---:|---:|---|---:|---:|---|---|---|",
        ]
        order = {"architecture": 0, "width": 1}
        for r in sorted(
            reps,
            key=lambda r: (
                r["model"],
                r["layer"],
                r["architecture"],
                r["replicate"],
                order[r["grouping"]],
                r["width"] or 0,
            ),
        ):
            lo, hi = r["V_ci"]
            o = same(r, second, rep_rows or [], ("replicate", *row_keys))
            alt = "n/a" if o is None else f"{_f(o['V'])} ({o['n_pairs']} pairs)"
            vs = compare(r) if r["grouping"] == "architecture" else ""
            lines.append(
                f"| `{r['replicate']}` | {r['model']} | {r['layer']} | {r['architecture']} | {r['width'] or ''} | "
                f"`{r['proxy']}` | {r['paper_proxy']} | {r['n_saes']} | {r['n_pairs']} | {_f(r['V'])} "
                f"[{_f(lo)}, {_f(hi)}] | {_f(r['rho'], '+.3f')} | {_f(r['p_value_V'])} | {alt} | "
                f"{_f(r.get('median_ce_loss_score'), '.2f')} / {_f(r.get('median_explained_variance_legacy'), '.2f')} "
                f"| {vs} |"
            )
    lines += [
        "",
        "## Every sweep and metric",
        "",
        "| distortion | grouping | model | layer | architecture | width | metric | role | N | pairs | V [95% CI] "
        "| rho | verdict |",
        "|---|---|---|---:|---|---:|---|---|---:|---:|---|---:|---|",
    ]
    for r in rows:
        lo, hi = r["V_ci"]
        lines.append(
            f"| {r['distortion']} | {r['grouping']} | {r['model']} | {r['layer']} | {r['architecture']} | "
            f"{r['width'] or ''} | `{r['proxy']}` | {r['role']} | {r['n_saes']} | {r['n_pairs']} | "
            f"{_f(r['V'])} [{_f(lo)}, {_f(hi)}] | {_f(r['rho'], '+.3f')} | {r['verdict']} |"
        )
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- report.py: begin (generated; do not edit) -->", "<!-- report.py: end -->"


def _core_points(folder: Path) -> list[dict[str, Any]]:
    """(release, width, level, seed, step, L0, 1 - EV legacy, EV, CE loss score, file name) of every core JSON of
    a model-layer folder."""
    pts = []
    for f in sorted((folder / "core").glob("*.json")):
        d = _read(f)
        pts.append(_per_file(f, lambda: _point(d, f)))
    return pts


def _point(d: dict[str, Any], f: Path) -> dict[str, Any]:
    m = re.search(r"__w(\d+)_(.+)_s(\d+)_step_(\w+)$", d["sae_lens_id"])
    q = d["eval_result_metrics"]
    return {
        "release": d["sae_lens_release_id"],
        "width": int(m[1]) if m else None,
        "level": m[2] if m else None,
        "seed": int(m[3]) if m else None,
        "step": m[4] if m else None,
        "R": q["sparsity"]["l0"],
        "D": 1 - q["reconstruction_quality"]["explained_variance_legacy"],
        "ev": q["reconstruction_quality"]["explained_variance"],
        "ce": q["model_performance_preservation"]["ce_loss_score"],
        "file": f.name,
    }


def _dominating(pts: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(a, b) for every pair of ``pts`` where a dominates b under (R, D): ``audit.stats.dominated_pairs``."""
    from sae_rdp_plugin.audit.stats import dominated_pairs

    return [(pts[i], pts[j]) for i, j in dominated_pairs([p["R"] for p in pts], [p["D"] for p in pts])]


def _target_level(level: str | None) -> str | None:
    """The sparsity level an SAE id's level names: its calibration target ``cal<i>`` where it has one (ReLU-L1 and
    JumpReLU: the coefficient reaching the i-th target L0 differs by width, e.g. ``l0_coefficient0_18_cal0`` at 16k
    and ``l0_coefficient0_218_cal0`` at 4k), else the level itself (k, or the WSAE arm's variant)."""
    m = re.search(r"_(cal\d+)$", level or "")
    return m[1] if m else level


def pair_kinds(pts: list[dict[str, Any]]) -> dict[str, int]:
    """Dominated pairs of one release (R_i <= R_j, D_i <= D_j, not equal) by what separates the two SAEs, in this
    order: the level (the part of the SAE id between width and seed, its calibration target where it has one
    (:func:`_target_level`): the sparsity level, or for the WSAE arm's ``weighted_topk`` the alpha / cap variant at
    one k), the width, the seed, else the training step."""
    kinds = {
        "sparsity level": 0,
        "WSAE variant (alpha / cap)": 0,
        "width (same level)": 0,
        "seed (same width, level)": 0,
        "checkpoint vs final (same width, level, seed)": 0,
    }
    for a, b in _dominating(pts):
        if a["release"] != b["release"]:
            continue
        if _target_level(a["level"]) != _target_level(b["level"]):
            wsae = str(a["release"]).endswith("-weighted_topk")
            kinds["WSAE variant (alpha / cap)" if wsae else "sparsity level"] += 1
        elif a["width"] != b["width"]:
            kinds["width (same level)"] += 1
        elif a.get("seed") != b.get("seed"):
            kinds["seed (same width, level)"] += 1
        else:
            kinds["checkpoint vs final (same width, level, seed)"] += 1
    return {k: v for k, v in kinds.items() if v or not k.startswith(("WSAE", "seed"))}


def wsae_variants(folder: Path, pts: list[dict[str, Any]] | None = None) -> list[str]:
    """One line per WSAE-arm variant (the final ``weighted_topk`` SAEs among ``pts``, :func:`_core_points` of
    ``folder`` by default, grouped by level: k, alpha and the variance cap): SAEBench ``ce_loss_score`` and
    ``explained_variance_legacy`` per seed, and the dead-latent fraction of our proxies' held-out sample where
    that JSON exists."""
    pts = _core_points(folder) if pts is None else pts
    by: dict[str, list[tuple[int, float, float, float | None]]] = {}
    for p in pts:
        if not str(p["release"]).endswith("-weighted_topk") or p["step"] != "final":
            continue  # checkpoints: the arm trains final SAEs only
        prox = folder / "rdp_proxies" / p["file"]
        dead = None
        if prox.is_file():
            dead = _read(prox)["eval_result_metrics"]["sample"]["dead_fraction"]
        by.setdefault(p["level"], []).append((p["seed"], p["ce"], 1 - p["D"], dead))
    out = []
    for level, rows in sorted(by.items()):
        rows.sort()
        seeds = ", ".join(f"s{r[0]}" for r in rows)
        line = (
            f"- WSAE `{level}` ({seeds}): `ce_loss_score` {', '.join(f'{r[1]:.3f}' for r in rows)}; "
            f"`explained_variance_legacy` {', '.join(f'{r[2]:.3f}' for r in rows)}"
        )
        if all(r[3] is not None for r in rows):
            line += f"; held-out dead-latent fraction {', '.join(f'{r[3]:.2f}' for r in rows)}"
        out.append(line + ".")
    return out


def cross_pairs(pts: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """Dominated pairs between SAEs of different releases (R_a <= R_b, D_a <= D_b, not equal), counted per
    (dominating architecture, dominated architecture)."""
    out: dict[tuple[str, str], int] = {}
    for a, b in _dominating(pts):
        if a["release"] != b["release"]:
            key = (str(a["release"]).rsplit("-", 1)[-1], str(b["release"]).rsplit("-", 1)[-1])
            out[key] = out.get(key, 0) + 1
    return out


def v_by_pair_kind(
    folders: list[Path], proxy: str, orientation: int, release: str | None = None
) -> dict[str, tuple[float | None, int, int]]:
    """Definition 3's V over the dominated pairs of ``folders``' SAEs taken together (those with a core JSON and a
    value of ``proxy``; of ``release`` only, if given), split into pairs of one architecture (``"within"``: one
    release) and pairs of two (``"across"``): ``{kind: (V or None without pairs, number of pairs, tied pairs)}``.
    Pi = ``orientation`` x the proxy (higher = more polysemantic); a pair (a dominating b) violates when
    Pi_a < Pi_b, ties (equal values: each counts 1/2, as in the audit) pull V to 0.5. The two parts, weighted by
    their pairs, give the pooled audit's V over the same SAEs."""
    pts = []
    for f in folders:
        for p in _core_points(f):
            v = _proxy_value(f, proxy, p["file"])
            if v is not None and (release is None or p["release"] == release):
                pts.append({**p, "pi": orientation * v})
    out: dict[str, tuple[float | None, int, int]] = {}
    for kind in ("within", "across"):
        n, ties, viol = 0, 0, 0.0
        for a, b in _dominating(pts):
            if (a["release"] == b["release"]) == (kind == "within"):
                n += 1
                ties += a["pi"] == b["pi"]
                viol += 1.0 if a["pi"] < b["pi"] else (0.5 if a["pi"] == b["pi"] else 0.0)
        out[kind] = (viol / n if n else None, n, ties)
    return out


def _ties_text(ties: int, n: int) -> str:
    """ "; T of the N pairs tied" (each counts 1/2) where any pair's two SAEs have equal values, else ""."""
    return f"; {ties} of the {n} pairs tied (each counts 1/2)" if ties else ""


def _cal_fix(grid: list[list[float]], targets: list[float]) -> str:
    """What a calibration grid whose levels collapse needs: its held-out L0 miss the targets on one side, or
    the targets fall between too few grid points."""
    l0 = [g[1] for g in grid]
    if min(l0) > max(targets):
        return f"every grid value leaves L0 above the largest target {max(targets)}: extend the grid to larger values"
    if max(l0) < min(targets):
        return f"every grid value leaves L0 below the smallest target {min(targets)}: extend the grid to smaller values"
    return "redo with a finer grid"


def calibration_drift(folder: Path, pts: list[dict[str, Any]]) -> list[str]:
    """Per calibrated architecture and width: each level's target L0 (held-out, after the calibration's short
    runs) against the core L0 of the final SAE trained at that level's coefficient, and their ratio.

    A calibration made with ``final_over_calibration_l0`` r (its file records it; absent: 1) set each level's
    coefficient for the L0 it aimed at, target / r, in the short runs; the ratio a later calibration of this
    model-layer should use is then final / aim = r x final / target, which the pooled line gives (it is
    final / target itself where r = 1)."""
    out = []
    for cal in sorted(folder.glob("calibration_*.json")):
        c = _read(cal)
        arch = c["stage"].rsplit("-", 1)[1]
        release = release_of(folder.name, arch)
        pooled: list[float] = []
        for width, levels in c["levels"].items():
            pairs = []
            for i, name in enumerate(sorted(levels, key=lambda n: int(n.removeprefix("cal")))):
                got = [
                    p["R"]
                    for p in pts
                    if p["release"] == release
                    and p["width"] == int(width)
                    and p["step"] == "final"
                    and str(p["level"]).endswith(f"_{name}")
                ]
                if len(got) == 1:
                    pairs.append((c["target_l0"][i], levels[name], got[0]))
            if not pairs:
                continue
            ratios = [g / t for t, _, g in pairs]
            pooled += ratios
            out.append(
                f"- `{arch}` width {width}, target L0 -> final SAE's core L0 (coefficient): "
                + ", ".join(f"{t:g} -> {g:.1f} ({v:g})" for t, v, g in pairs)
                + f"; final / target {min(ratios):.2f}-{max(ratios):.2f}."
            )
        if pooled:
            med, r = statistics.median(pooled), float(c.get("final_over_calibration_l0", 1.0))
            head = f"- `{arch}` final / target over its {len(pooled)} final SAEs: median {med:.3f}"
            out.append(
                head + " (recipe.json's `final_over_calibration_l0` for later calibrations comes from this line)."
                if r == 1.0
                else head + f"; the calibration aimed at target / {r:g}, so final / calibration L0 at the same "
                f"coefficient is {r * med:.3f} (the `final_over_calibration_l0` for this model-layer's later "
                "calibrations)."
            )
    return out


def findings(rows: list[dict[str, Any]], folders: list[Path], quals: dict[Path, dict]) -> str:
    """The generated part of FINDINGS.md: every number from the committed files (``quals``: :func:`quality`
    of each folder)."""
    primary = list(DISTORTIONS)[0]
    out = []
    for folder in folders:
        out.append(f"### {folder.name}")
        out.append("")
        for st in sorted(folder.glob("stage_*.json")):
            d = _read(st)
            calls = d.get("calls", [])
            dev = sorted({c.get("device", "?") for c in calls})
            out.append(
                f"- Stage `{d['stage']}`: {len(calls)} device call(s) on {', '.join(dev)}, "
                f"{d.get('gpu_s_total', 0):.0f} GPU seconds."
            )
        sums = [_read(f) for f in sorted((folder / "train_summaries").glob("*.json"))]
        final = [t for t in sums if not t["name"].endswith("/cal")]
        if final:
            tok = sorted({t["tokens"] for t in final})
            dead = [t["heldout_dead_fraction"] for t in final if t.get("heldout_dead_fraction") is not None]
            out.append(
                f"- {len(final)} final SAEs trained ({', '.join(sorted({t['architecture'] for t in final}))}), "
                f"{', '.join(f'{x:,}' for x in tok)} tokens each ({final[0]['epochs']:.2f} passes over the training "
                f"split), context {final[0]['context_size']}; held-out dead-latent fraction "
                f"{min(dead):.2f}-{max(dead):.2f}."
            )
        for cal in sorted(folder.glob("calibration_*.json")):
            c = _read(cal)
            for width, levels in c["levels"].items():
                grid = c["heldout_l0"][width]
                distinct = len(set(levels.values()))
                l0 = [g[1] for g in grid]
                out.append(
                    f"- Calibration `{c['stage']}` width {width}: grid {grid[0][0]}-{grid[-1][0]} gave held-out L0 "
                    f"{min(l0):.0f}-{max(l0):.0f} for targets {c['target_l0']}; the {len(levels)} levels map "
                    f"to {distinct} distinct values"
                    + (f" (UNUSABLE: {_cal_fix(grid, c['target_l0'])})" if distinct < len(levels) else "")
                    + "."
                )
        out += eval_counts(folder)
        pts = _core_points(folder)
        out += wsae_variants(folder, pts)
        out += calibration_drift(folder, pts)
        ev = [p["ev"] for p in pts]
        dl = [1 - p["D"] for p in pts]
        out.append(
            f"- SAEBench core over {len(pts)} SAEs: `explained_variance` {min(ev):.4f}-{max(ev):.4f}, "
            f"`explained_variance_legacy` {min(dl):.4f}-{max(dl):.4f}."
        )
        for arch, q in per_architecture(quals[folder]):
            out.append(
                f"- {arch}: {quality_text(q)} over {q['n']} SAEs"
                + (
                    f"; below the working-SAE bar (median CE loss recovered >= {MIN_CE_LOSS_SCORE})"
                    if q["median_ce_loss_score"] < MIN_CE_LOSS_SCORE
                    else ""
                )
                + "."
            )
        for rel in sorted({p["release"] for p in pts}):
            kinds = pair_kinds([p for p in pts if p["release"] == rel])
            out.append(
                f"- `{rel}`: {sum(kinds.values())} dominated pairs under D = {primary}: "
                + ", ".join(f"{v} {k}" for k, v in kinds.items())
                + "."
            )
        if len({p["release"] for p in pts}) > 1:
            cross = cross_pairs(pts)
            out.append(
                f"- pooled: {sum(cross.values())} dominated pairs across architectures under D = {primary} ("
                + ", ".join(f"{v} with `{a}` dominating `{b}`" for (a, b), v in sorted(cross.items()))
                + ")."
            )
        out.append("")
        for r in rows:
            if r["grouping"] != "architecture" or not r["paper_proxy"] or r["distortion"] != primary:
                continue
            if r["model"] + f"-L{r['layer']}" != folder.name:
                continue
            lo, hi = r["V_ci"]
            if r["V"] is None or lo is None:
                continue
            half = direction_text(lo, hi, r["p_value_V"])
            out.append(
                f"- {r['paper_proxy']} ({r['architecture']}, `{r['proxy']}`): V = {r['V']:.3f} "
                f"[{lo:.3f}, {hi:.3f}] over {r['n_saes']} SAEs and {r['n_pairs']} dominated pairs, permutation "
                f"p = {r['p_value_V']:.3f}, rho = {r['rho']:+.3f}; {half}; {compare(r)}."
            )
        out.append("")
    return "\n".join(out)


def eval_counts(folder: Path) -> list[str]:
    """Generated lines: per architecture, how many SAEs have a JSON in each eval folder, and how many SAEs of the
    model-layer have at least one (an SAE = release + SAE id, checkpoints counted as SAEs)."""
    per: dict[str, dict[str, set]] = {}
    for d in EVAL_DIRS:
        for f in sorted((folder / d).glob("*.json")):
            j = _read(f)
            rel = _RELEASE.match(str(j.get("sae_lens_release_id")))
            arch = rel["arch"] if rel else str(j.get("sae_lens_release_id"))
            per.setdefault(arch, {}).setdefault(d, set()).add(j.get("sae_lens_id"))
    if not per:
        return []
    every = {(a, i) for a, ds in per.items() for ids in ds.values() for i in ids}
    return [
        f"- {len(every)} SAEs (checkpoints included) with at least one SAEBench JSON; per architecture and eval: "
        + "; ".join(
            f"{a} " + ", ".join(f"`{d}` {len(per[a].get(d, ()))}" for d in EVAL_DIRS if per[a].get(d))
            for a in sorted(per)
        )
        + "."
    ]


def direction(lo: float, hi: float, p: float, alpha: float = 0.05) -> str | None:
    """The direction V's interval and permutation p-value name: None where the interval holds 0.5, "inverted"
    (above 0.5) or "faithful" (below) where the permutation test also rejects random order (p < alpha), else "no
    direction". The percentile bootstrap over SAEs is degenerate with a handful of dominated pairs (every resample
    that keeps a pair repeats its order), so an interval off 0.5 alone names none."""
    if lo <= 0.5 <= hi:
        return None
    if p < alpha:
        return "inverted" if lo > 0.5 else "faithful"
    return "no direction"


def direction_text(lo: float, hi: float, p: float, alpha: float = 0.05) -> str:
    """:func:`direction` in words."""
    word = direction(lo, hi, p, alpha)
    if word is None:
        return "0.5 (random) lies inside the interval"
    side = "above" if lo > 0.5 else "below"
    if word != "no direction":
        return f"the interval lies {side} 0.5 and p < {alpha:g} ({word})"
    return f"the interval lies {side} 0.5, but the permutation test does not reject random order: no direction"


def replicate_folders(results: Path) -> list[Path]:
    """``results/replicates/<model>-L<layer>-<architecture>-r<N>/`` folders holding a ``core/`` folder (SaeRdpError
    for one named otherwise)."""
    from sae_rdp_plugin.errors import SaeRdpError

    root = results / "replicates"
    if not root.is_dir():
        return []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / "core").is_dir())
    for f in folders:
        if not _REPLICATE.match(f.name):
            raise SaeRdpError(f"{f}: a replicate folder is named <model>-L<layer>-<architecture>-r<N>")
    return folders


#: the (grouping, distortion) audits of each replicate: per architecture and per width, under both distortions
REPLICATE_AUDITS = tuple((g, d) for g in ("architecture", "width") for d in DISTORTIONS)


def replicate_dest(out: Path, folder: Path, grouping: str = "architecture", distortion: str | None = None) -> Path:
    """Where a replicate's audit of one grouping and distortion (default: the primary one) goes under ``--out``."""
    dist = distortion or list(DISTORTIONS)[0]
    return out / "audit" / "replicates" / folder.name / f"{grouping}_{dist.replace('-', '')}"


def check_replicate(folder: Path) -> None:
    """SaeRdpError unless the replicate's core JSONs are all of the model-layer and architecture its name says."""
    from sae_rdp_plugin.errors import SaeRdpError

    m = _REPLICATE.match(folder.name)
    assert m, folder
    want = release_of(m["ml"], m["arch"])
    got = sorted({p["release"] for p in _core_points(folder)})
    if got != [want]:
        raise SaeRdpError(f"{folder}: its core JSONs are of {', '.join(got) or 'no release'}, not {want} alone")


def audit_replicate(folder: Path, out: Path, n_boot: int, n_perm: int, seed: int) -> list[dict[str, Any]]:
    """The replicate's rows: the audits of its SAEs as one sweep (architecture grouping) and per width, under
    each distortion (:data:`REPLICATE_AUDITS`), each row tagged ``replicate`` with the folder's name
    (:func:`check_replicate` first)."""
    check_replicate(folder)
    m = _REPLICATE.match(folder.name)
    assert m, folder
    qual = quality(folder)
    rows = []
    for grouping, distortion in REPLICATE_AUDITS:
        dest = replicate_dest(out, folder, grouping, distortion)
        outs = audit(folder, grouping, distortion, dest, n_boot, n_perm, seed)
        rows += rows_of(outs, grouping, distortion, folder, qual, name=m["ml"])
    return [{**r, "replicate": folder.name} for r in rows]


def pooled_replicates(reps: list[Path]) -> dict[str, list[Path]]:
    """``{tag: replicate folders}``, the pooled audits of each model-layer's replicates: of each architecture its
    latest run (the highest ``r<N>``: two runs of one recipe share their SAE ids, so they cannot be one sweep),
    their SAEs audited together (:func:`audit_pooled_replicates`). ``pooled-<model>-L<layer>``: the paper's
    architectures (not :data:`WSAE_ARCHITECTURES`), where at least two have a replicate;
    ``pooled-<model>-L<layer>-with-wsae``: every architecture, where a WSAE replicate joins at least one other."""
    latest: dict[str, dict[str, tuple[int, Path]]] = {}
    for f in reps:
        m = _REPLICATE.match(f.name)
        assert m, f
        runs = latest.setdefault(m["ml"], {})
        if m["arch"] not in runs or int(m["run"]) > runs[m["arch"]][0]:
            runs[m["arch"]] = (int(m["run"]), f)
    out: dict[str, list[Path]] = {}
    for ml, runs in latest.items():
        paper = [f for arch, (_, f) in sorted(runs.items()) if arch not in WSAE_ARCHITECTURES]
        if len(paper) >= 2:
            out[f"pooled-{ml}"] = paper
        if len(runs) >= 2 and len(paper) < len(runs):
            out[f"pooled-{ml}{WITH_WSAE}"] = [f for _, (_, f) in sorted(runs.items())]
    return out


def pooled_model_layer(tag: str) -> str:
    """``<model>-L<layer>`` of a pooled audit's tag (:func:`pooled_replicates`)."""
    return tag.removeprefix("pooled-").removesuffix(WITH_WSAE)


def pooled_dest(out: Path, tag: str) -> Path:
    """Where a pooled audit of a model-layer's replicates (``tag``: :func:`pooled_replicates`) goes under ``--out``."""
    return out / "audit" / "replicates" / tag / f"pooled_{list(DISTORTIONS)[0].replace('-', '')}"


def audit_pooled_replicates(
    tag: str, folders: list[Path], out: Path, n_boot: int, n_perm: int, seed: int
) -> list[dict[str, Any]]:
    """The rows of one model-layer's replicates audited as one sweep (pooled grouping, primary distortion): the
    dominated pairs then also join SAEs of different architectures, and so of different L0 where each replicate's
    own pairs may all share one (TopK's). Tagged ``replicate`` = ``tag`` (:func:`pooled_replicates`)."""
    primary = list(DISTORTIONS)[0]
    outs = audit(folders, "pooled", primary, pooled_dest(out, tag), n_boot, n_perm, seed)
    ml = pooled_model_layer(tag)
    return [{**r, "replicate": tag} for r in rows_of(outs, "pooled", primary, folders[0], {}, name=ml)]


def _proxy_value(folder: Path, proxy: str, file: str) -> float | None:
    """The proxy ``<eval folder>.<metric path>`` (a table2.json row's ``proxy``) of the SAE whose eval JSON is
    ``file`` in ``folder``, or None where that JSON or value is missing."""
    eval_dir, _, path = proxy.partition(".")
    f = folder / eval_dir / file
    if not f.is_file():
        return None
    v: Any = _read(f).get("eval_result_metrics", {})
    for key in path.split("."):
        v = v.get(key) if isinstance(v, dict) else None
    return _finite(v)


def pair_flips(main: Path, rep: Path, release: str, proxies: list[str]) -> dict[str, Any]:
    """The dominated pairs (under the primary distortion) the committed sweep and a replicate share (the same two
    SAE ids), and per proxy how many of the shared pairs with the proxy in both runs the two runs order the
    other way round (the sign of the difference, ties a sign of their own): run-to-run noise at the pair level.
    The orientation of a proxy does not change a flip."""

    def pairs(folder: Path) -> set[tuple[str, str]]:
        pts = [p for p in _core_points(folder) if p["release"] == release]
        return {(a["file"], b["file"]) for a, b in _dominating(pts)}

    def sign(x: float, y: float) -> int:
        return (x > y) - (x < y)

    pm, pr = pairs(main), pairs(rep)
    shared = sorted(pm & pr)
    files = sorted({f for pair in shared for f in pair})
    flips: dict[str, dict[str, int]] = {}
    for proxy in proxies:
        value = {(d, f): _proxy_value(d, proxy, f) for d in (main, rep) for f in files}  # each JSON read once
        n = flipped = 0
        for a, b in shared:
            vals = [value[(d, x)] for d in (main, rep) for x in (a, b)]
            if any(v is None for v in vals):
                continue
            n += 1
            flipped += sign(vals[0], vals[1]) != sign(vals[2], vals[3])
        flips[proxy] = {"pairs": n, "flipped": flipped}
    return {"shared": len(shared), "main_only": len(pm - pr), "replicate_only": len(pr - pm), "flips": flips}


def run_differences(main: Path, rep: Path, release: str) -> dict[str, Any]:
    """Per SAE id in both runs (the core JSONs of ``release``), the largest absolute difference between the two
    runs' SAEBench ``ce_loss_score``, ``explained_variance_legacy`` (1 - D) and L0: how far training noise moves an
    SAE's own core metrics."""
    a = {p["file"]: p for p in _core_points(main) if p["release"] == release}
    b = {p["file"]: p for p in _core_points(rep) if p["release"] == release}
    both = sorted(set(a) & set(b))
    diff = {
        key: max((abs(a[f][field] - b[f][field]) for f in both), default=None)
        for key, field in (("ce_loss_score", "ce"), ("explained_variance_legacy", "D"), ("l0", "R"))
    }
    return {"saes": len(both), "max_abs_diff": diff}


def _v_line(r: dict[str, Any]) -> str:
    """A replicate block's line for one proxy row: its V, interval, SAEs, pairs and permutation p-value."""
    return (
        f"  - `{r['proxy']}`: V = {r['V']:.3f} [{r['V_ci'][0]:.3f}, {r['V_ci'][1]:.3f}] over {r['n_saes']} "
        f"SAEs and {r['n_pairs']} pairs (p = {r['p_value_V']:.3f})"
    )


def replicates_text(rows: list[dict[str, Any]], reps: list[dict[str, Any]], results: Path) -> str:
    """The generated lines on the replicates: per replicate its SAEs' quality and GPU time, then per proxy its V
    next to the committed sweep's V of the same architecture (architecture grouping, primary distortion)."""
    if not reps:
        return ""
    primary = list(DISTORTIONS)[0]
    main = {
        (f"{r['model']}-L{r['layer']}", r["architecture"], r["proxy"]): r
        for r in rows
        if r["grouping"] == "architecture" and r["distortion"] == primary
    }
    reps = [r for r in reps if r["grouping"] in ("architecture", "pooled") and r["distortion"] == primary]
    out = ["", "### training-run replicates (same recipe and seed, trained again)", ""]
    for name in sorted({r["replicate"] for r in reps if not r["replicate"].startswith("pooled-")}):
        folder = results / "replicates" / name
        m = _REPLICATE.match(name)
        assert m
        release = release_of(m["ml"], m["arch"])
        gpu = sum(_read(st).get("gpu_s_total", 0.0) for st in folder.glob("stage_*.json"))
        for arch, q in per_architecture(quality(folder)):
            out.append(f"- `{name}` ({arch}): {q['n']} SAEs, {quality_text(q)}; {gpu:.0f} GPU seconds in its stages.")
        if m["arch"] in WSAE_ARCHITECTURES:  # its variants' quality, as the committed sweep's WSAE lines give it
            out += [f"  {line}" for line in wsae_variants(folder)]
        kinds = pair_kinds([p for p in _core_points(folder) if p["release"] == release])
        out.append(
            f"  - its {sum(kinds.values())} dominated pairs under D = {primary}: "
            + ", ".join(f"{v} {k}" for k, v in kinds.items())
            + "."
        )
        proxies = sorted({r["proxy"] for r in reps if r["replicate"] == name and r["role"] == "proxy"})
        main_folder = results / m["ml"]
        if main_folder.is_dir() and proxies:
            fl = pair_flips(main_folder, folder, release, proxies)
            rd = run_differences(main_folder, folder, release)
            if rd["saes"]:
                d = rd["max_abs_diff"]
                out.append(
                    f"  - the same SAE ids in both runs: {rd['saes']}; largest run-to-run difference of an SAE's "
                    f"`ce_loss_score` {d['ce_loss_score']:.4f}, `explained_variance_legacy` "
                    f"{d['explained_variance_legacy']:.4f}, L0 {d['l0']:.2f}."
                )
            both = {p: v for p, v in fl["flips"].items() if v["pairs"]}
            only = sorted(p for p in fl["flips"] if p not in both)
            out.append(
                f"  - dominated pairs (D = {primary}): {fl['shared']} in both runs, {fl['main_only']} in the committed "
                f"sweep only, {fl['replicate_only']} in the replicate only; of the shared pairs, ordered the other "
                "way round by the replicate: "
                + (", ".join(f"`{p}` {v['flipped']} of {v['pairs']}" for p, v in both.items()) or "none compared")
                + (f"; no shared pair with a value in both runs: {', '.join(f'`{p}`' for p in only)}" if only else "")
                + "."
            )
        for r in sorted((r for r in reps if r["replicate"] == name and r["role"] == "proxy"), key=lambda r: r["proxy"]):
            base = main.get((m["ml"], r["architecture"], r["proxy"]))
            if r["V"] is None or r["V_ci"][0] is None:
                continue
            _, n_pairs, ties = v_by_pair_kind([folder], r["proxy"], r["orientation"])["within"]
            line = _v_line(r) + _ties_text(ties, n_pairs)
            if base is not None and base["V"] is not None and base["V_ci"][0] is not None:
                line += (
                    f"; committed sweep {base['V']:.3f} [{base['V_ci'][0]:.3f}, {base['V_ci'][1]:.3f}] over "
                    f"{base['n_pairs']} pairs: difference {r['V'] - base['V']:+.3f}"
                )
            if r["paper_proxy"]:
                line += f"; {r['paper_proxy']}: {compare(r)}"
            out.append(line + ".")
        out.append(f"  - {away_from_half([r for r in reps if r['replicate'] == name and r['role'] == 'proxy'])}")
    for tag, folders in pooled_replicates(
        sorted({results / "replicates" / r["replicate"] for r in reps if not r["replicate"].startswith("pooled-")})
    ).items():
        pooled = [r for r in reps if r["replicate"] == tag and r["role"] == "proxy"]
        pts = [p for f in folders for p in _core_points(f)]
        cross = sum(cross_pairs(pts).values())
        what = "pooled with the WSAE arm:" if tag.endswith(WITH_WSAE) else "pooled,"
        out.append(
            f"- {what} the replicates of {pooled_model_layer(tag)} audited as one sweep "
            f"({', '.join(f'`{f.name}`' for f in folders)}): "
            f"{len(pts)} SAEs with a core JSON, {len(_dominating(pts))} dominated pairs under D = {primary}, "
            f"{cross} of them joining two architectures; no paper value (the paper's V is per architecture)."
        )
        for r in sorted(pooled, key=lambda r: r["proxy"]):
            if r["V"] is None or r["V_ci"][0] is None:
                continue
            split = v_by_pair_kind(folders, r["proxy"], r["orientation"])
            out.append(
                _v_line(r)
                + "; "
                + ", ".join(
                    f"{kind} architectures {_f(v)} over {n} pairs" + (f" ({t} tied)" if t else "")
                    for kind, (v, n, t) in (("within", split["within"]), ("across", split["across"]))
                )
                + "."
            )
        out.append(f"  - {away_from_half(pooled)}")
    return "\n".join(out + [""])


def paper_comparisons(rows: list[dict[str, Any]], reps: list[dict[str, Any]], results: Path) -> str:
    """The generated lines setting each of our V of a paper proxy (committed sweeps' and replicates' rows,
    architecture grouping, primary distortion) against the paper's V for the same architecture: where the paper's
    value falls in our 95% interval, and whether that interval also holds 0.5 (then agreement cannot tell the
    paper's V from a random ordering), and how many of its pairs are ties (each counts 1/2, pulling V to 0.5;
    ``results``: the folder of the rows' eval JSONs). Sweeps whose SAEs fail the working-SAE bar, and intervals
    spanning all of [0, 1] (:func:`_place`), are listed and counted, not compared."""
    primary = list(DISTORTIONS)[0]
    cands = [
        r
        for r in [*rows, *reps]
        if r["grouping"] == "architecture"
        and r["distortion"] == primary
        and r["paper_proxy"]
        and PAPER_V.get(r["paper_proxy"], {}).get(r["architecture"]) is not None
        and r["V"] is not None
        and r["V_ci"][0] is not None
    ]
    if not cands:
        return ""
    out = ["", "### against the paper's Table 2", ""]
    lines, where_n, weak, skipped, spans = [], {"inside": 0, "below": 0, "above": 0}, 0, 0, 0
    for r in sorted(
        cands, key=lambda r: (r["paper_proxy"], r["architecture"], r["model"], r["layer"], r.get("replicate", ""))
    ):
        ce = r.get("median_ce_loss_score")
        if ce is not None and ce < MIN_CE_LOSS_SCORE:
            skipped += 1
            continue
        paper = PAPER_V[r["paper_proxy"]][r["architecture"]]
        lo, hi = r["V_ci"]
        where = _place(paper, lo, hi)
        if where is None:
            spans += 1
        else:
            where_n[where] += 1
            weak += where == "inside" and lo <= 0.5 <= hi
        ml = f"{r['model']}-L{r['layer']}"
        src = f"`{r['replicate']}`" if r.get("replicate") else f"`{ml}` sweep"  # several models' sweeps share a list
        folder = results / "replicates" / r["replicate"] if r.get("replicate") else results / ml
        _, n_pairs, ties = v_by_pair_kind([folder], r["proxy"], r["orientation"], release_of(ml, r["architecture"]))[
            "within"
        ]
        head = f"- {r['paper_proxy']}, {r['architecture']} ({src}, {r['n_saes']} SAEs, {r['n_pairs']} pairs): ours "
        if where is None:
            lines.append(
                head + f"{r['V']:.3f} [{lo:.3f}, {hi:.3f}], paper {paper:.3f}: our interval holds any value, "
                "so no comparison" + _ties_text(ties, n_pairs) + "."
            )
            continue
        lines.append(
            head
            + f"{r['V']:.3f} [{lo:.3f}, {hi:.3f}], paper {paper:.3f}: {where} our interval"
            + ("; 0.5 is inside it too" if lo <= 0.5 <= hi else "; 0.5 is outside it")
            + _ties_text(ties, n_pairs)
            + "."
        )
    n = sum(where_n.values())
    out.append(
        f"- {n} comparisons (D = {primary}, one row per sweep or replicate and paper proxy): the paper's V is inside "
        f"our 95% interval in {where_n['inside']}, below it in {where_n['below']}, above it in {where_n['above']}; "
        f"{weak} of the {where_n['inside']} intervals holding the paper's V hold 0.5 (random ordering) too"
        + (f"; {skipped} not compared (median CE loss recovered < {MIN_CE_LOSS_SCORE})" if skipped else "")
        + (f"; {spans} not compared (an interval spanning [0, 1], which holds any value)" if spans else "")
        + "."
    )
    return "\n".join(out + lines) + "\n"


def away_from_half(rows: list[dict[str, Any]], alpha: float = 0.05) -> str:
    """The proxies among ``rows`` that show a direction by :func:`direction`'s rule (V's interval excludes 0.5
    and the permutation test rejects random order, p < ``alpha``): "inverted" where the pairs are mostly ordered
    against the RDP direction (the SAE under the tighter budget is the less polysemantic by the proxy), "faithful"
    where with it; one sentence, naming the proxies whose interval is off 0.5 without the permutation test too."""
    shown: dict[str, list[str]] = {"inverted": [], "faithful": [], "no direction": []}
    n = 0
    for r in sorted(rows, key=lambda r: r["proxy"]):
        if r["V_ci"][0] is None:
            continue
        n += 1
        word = direction(r["V_ci"][0], r["V_ci"][1], r["p_value_V"], alpha)
        if word is not None:
            shown[word].append(f"`{r['proxy']}`")
    if not any(shown.values()):
        return f"every V interval of the {n} proxies contains 0.5: none shows a direction over these pairs."
    labels = {
        "inverted": "inverted (against the RDP direction)",
        "faithful": "faithful (with the RDP direction)",
        "no direction": f"interval off 0.5 but permutation p >= {alpha:g}",
    }
    parts = [f"{labels[w]}: {', '.join(v)}" for w, v in shown.items() if v]
    return (
        f"of the {n} proxies, by V's interval and permutation test (p < {alpha:g}): "
        + "; ".join(parts)
        + "; the others' intervals contain 0.5."
    )


def archived(results: Path) -> str:
    """The generated lines on ``results/archive/<name>/`` (sweeps set aside, e.g. trained with a normalisation
    the recipe no longer uses): per architecture the SAE quality from the core JSONs, and the stages' GPU time.
    They are not audited."""
    folders = sorted(p for p in (results / "archive").glob("*") if (p / "core").is_dir())
    if not folders:
        return ""
    out = ["", "### archived sweeps (not audited)", ""]
    for folder in folders:
        gpu = sum(_read(st).get("gpu_s_total", 0.0) for st in folder.glob("stage_*.json"))
        for arch, q in per_architecture(quality(folder)):
            out.append(
                f"- `{folder.name}` ({arch}): {q['n']} SAEs, {quality_text(q)}; {gpu:.0f} GPU seconds in its stages."
            )
    return "\n".join(out + [""])


def diagnostics(path: Path) -> str:
    """The generated table of ``diagnostics/l1_massive_dim.json`` (CPU fits on real layer-9 activations)."""
    if not path.is_file():
        return ""
    d = _read(path)
    st = d["stats"]
    out = [
        "",
        "### diagnostics (CPU, `diagnostics/l1_massive_dim.json`)",
        "",
        f"- {d['model']}; {st['tokens_train']:,} training and {st['tokens_heldout']:,} held-out tokens; dimension "
        f"{st['massive_dim']} holds {st['massive_share_pooled']:.1%} of the pooled variance, the next two "
        f"{st['top3_var_share'][1]:.2%} and {st['top3_var_share'][2]:.2%}; its median share of a token's centred "
        f"energy is {st['massive_share_of_token_centred_energy']['p50']:.2f}.",
        "",
        "| fit | architecture | input | coefficient / k | threshold lr x | steps | L0 | dead | EV-legacy | FVU | "
        "FVU of the other dimensions |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in d["fits"]:
        coef = f.get("l1_coefficient", f.get("l0_coefficient", f.get("k")))
        extra = f.get("jumprelu_extra_cfg") or {}
        arch = f["arch"] + (f" ({', '.join(f'{k}={v}' for k, v in extra.items())})" if extra else "")
        if f["arch"] == "jumprelu":
            arch += f", init threshold {f.get('jumprelu_init_threshold')}"
        if f["arch"] == "wtopk":
            capq = f.get("variance_cap_quantile")
            arch = (
                f"weighted_topk (alpha {f['alpha']:g}, "
                + (f"variance cap q {capq:g}" if capq is not None else "no cap")
                + f"; massive dimension's share of gamma^2 {f['gamma_sq_share_of_massive_dim']:.3f})"
            )
        steps = str(f["steps"]) + (f" (L1 warm-up {f['l1_warm_up_steps']})" if f.get("l1_warm_up_steps") else "")
        out.append(
            f"| `{f['name']}` | {arch} | {f['transform']} | {coef:g} | {f.get('threshold_lr_mult', 1.0):g} | "
            f"{steps} | {f['l0']:.1f} | {f['dead_fraction_heldout']:.3f} | {f['ev_legacy_mean']:.3f} | "
            f"{f['fvu_pooled']:.3f} | {f['fvu_other_639']:.3f} |"
        )
    if ce := d.get("ce_loss_recovered"):
        out += [
            "",
            f"- CE loss recovered (SAEBench's definition; the whole model on CPU, {ce['tokens_scored']:,} held-out "
            f"tokens of {ce['rows']} rows x {ce['context']}; CE clean {ce['ce_clean']:.3f}, zero-ablated "
            f"{ce['ce_zero_ablation']:.3f}): "
            + ", ".join(f"`{n}` {v['ce_loss_recovered']:.3f}" for n, v in ce["fits"].items())
            + ".",
        ]
    return "\n".join(out + [""])


def absorption_probes(folder: Path) -> str:
    """The generated lines of ``diagnostics/absorption_probe_*.json``: SAEBench's first-letter ground-truth probe
    on a vocabulary sample (CPU), i.e. whether its absorption eval would write results at that model-layer."""
    runs = [(_read(p), p) for p in folder.glob("absorption_probe_*.json")]
    if not runs:
        return ""
    out = [
        "",
        "### absorption: SAEBench's first-letter probe on a vocabulary sample "
        "(CPU, `diagnostics/absorption_probe_*.json`)",
        "",
    ]
    for d, path in sorted(runs, key=lambda r: (r[0]["model"], r[0]["hook"], r[0]["words"], r[0]["seed"])):
        thr, need = d["min_GT_probe_f1"], d["min_feats_for_eval"]
        low = sorted((r for r in d["letters"] if r["f1"] <= thr), key=lambda r: r["f1"])
        verdict = "enough" if d["letters_passing"] >= need else "too few"
        out.append(
            f"- {d['model']} `{d['hook']}`: {d['letters_passing']} of 26 letters with probe F1 > {thr:g} "
            f"({verdict}: SAEBench evaluates absorption only with >= {need}); a sample of {d['words']:,} of the "
            f"model's {d['alpha_vocab']:,} alphabetic tokens ({d['n_train']:,} train / {d['n_test']:,} test words, "
            f"seed {d['seed']}), where SAEBench trains on 80% of all of them; at or below {thr:g}: "
            + (", ".join(f"{r['letter']} {r['f1']:.2f} ({r['n_test']} test words)" for r in low) or "none")
            + f"; {d['seconds']['probe']:.0f} s on {d['machine']} (`{path.name}`)."
        )
    return "\n".join(out + [""])


def check_markers(path: Path) -> str:
    """FINDINGS.md's text; fails (exit 2) unless it holds BEGIN and END once each, in that order."""
    doc = path.read_text()
    if doc.count(BEGIN) != 1 or doc.count(END) != 1 or doc.index(BEGIN) > doc.index(END):
        fail(f"{path}: needs the markers {BEGIN!r} and {END!r} once each, in that order")
    return doc


def write_findings(path: Path, text: str) -> None:
    """Replace the generated block of FINDINGS.md (between BEGIN and END), or fail if the markers are missing."""
    from sae_rdp_plugin.io import atomic_write_text

    doc = check_markers(path)
    head, rest = doc.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    atomic_write_text(path, f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    from sae_rdp_plugin.cli import OneLineArgumentParser

    ap = OneLineArgumentParser(prog="report.py", description=__doc__.split("\n\n")[0])
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
    from sae_rdp_plugin.errors import SaeRdpError

    try:
        reps = replicate_folders(args.results)
    except SaeRdpError as exc:
        fail(str(exc))
    check_out(args.out, folders, reps)
    if (args.out / "FINDINGS.md").is_file():
        check_markers(args.out / "FINDINGS.md")  # before anything is written
    from sae_rdp_plugin.audit.stats import check_resamples

    try:
        check_resamples(args.n_boot, args.n_perm)
        check_inputs(args.results, [*folders, *reps])
        for f in reps:
            check_replicate(f)
        rows: list[dict[str, Any]] = []
        n_saes: dict[str, int] = {}
        quals = {folder: quality(folder) for folder in folders}  # read once, used by the rows and FINDINGS
        for folder in folders:
            n_saes[folder.name] = len(list((folder / "core").glob("*.json")))
            for distortion in DISTORTIONS:
                for grouping in GROUPINGS:
                    dest = args.out / "audit" / folder.name / f"{grouping}_{distortion.replace('-', '')}"
                    outs = audit(folder, grouping, distortion, dest, args.n_boot, args.n_perm, args.seed)
                    rows += rows_of(outs, grouping, distortion, folder, quals[folder])
        rep_rows = [r for f in reps for r in audit_replicate(f, args.out, args.n_boot, args.n_perm, args.seed)]
        for tag, fs in pooled_replicates(reps).items():
            rep_rows += audit_pooled_replicates(tag, fs, args.out, args.n_boot, args.n_perm, args.seed)
    except SaeRdpError as exc:
        fail(str(exc))
    sources = {
        "results": sorted(str(f.relative_to(args.results.parent)) for f in folders),
        "replicates": [str(f.relative_to(args.results.parent)) for f in reps],
        "n_saes": n_saes,
        "rate": "core.sparsity.l0",
        "distortions": DISTORTIONS,
        "checkpoints": "all (a checkpoint is a separate SAE)",
        "n_boot": args.n_boot,
        "n_perm": args.n_perm,
        "seed": args.seed,
        "paper_V": PAPER_V,
        "min_ce_loss_score": MIN_CE_LOSS_SCORE,
    }
    from sae_rdp_plugin.io import atomic_write_text

    text = None
    if (args.out / "FINDINGS.md").is_file():
        try:  # every text computed before the first file is written
            text = (
                findings(rows, folders, quals)
                + replicates_text(rows, rep_rows, args.results)
                + paper_comparisons(rows, rep_rows, args.results)
                + archived(args.results)
                + diagnostics(args.results.parent / "diagnostics" / "l1_massive_dim.json")
                + absorption_probes(args.results.parent / "diagnostics")
            )
        except SaeRdpError as exc:
            fail(str(exc))
        except (KeyError, TypeError, IndexError, ValueError, AttributeError) as exc:
            fail(
                f"FINDINGS.md's lines: a results JSON lacks a field or has the wrong type ({type(exc).__name__}: {exc})"
            )
    table = {"rows": rows, "replicates": rep_rows, "sources": sources}
    atomic_write_text(args.out / "table2.json", json.dumps(table, indent=1) + "\n")
    md = markdown(rows, sources, rep_rows)
    atomic_write_text(args.out / "table2.md", md)
    if text is not None:
        write_findings(args.out / "FINDINGS.md", text)
    print(md.split("## Every sweep")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
