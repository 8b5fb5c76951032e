"""`sae-rdp theory ...`: the exact toy theory from the command line, and its part of `sae-rdp demo`.

  sae-rdp theory frontier --pmf P.json --width N --k K --out F.json [--plot F.png] [--encoders all|optimal]
  sae-rdp theory example1 (--pmf P.json | --preset NAME) --k K [--pair 0,1] [--json] [--check]

The PMF file format is described in :mod:`sae_rdp_plugin.rdp.dgp`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `theory` command group to the top-level parser."""
    p = sub.add_parser("theory", help="exact RDP theory of the binary-atom toy model")
    tsub = p.add_subparsers(dest="theory_command", metavar="SUBCOMMAND")
    tsub.required = True

    f = tsub.add_parser("frontier", help="enumerate every code; Pareto set, monosemantic staircase, rate tax")
    f.add_argument("--pmf", required=True, type=Path, help="PMF JSON file ({'concepts': m, 'pmf': {...}})")
    f.add_argument("--width", required=True, type=int, help="dictionary width n (number of atoms)")
    f.add_argument("--k", required=True, type=int, help="TopK K (max active atoms per sample)")
    f.add_argument("--out", required=True, type=Path, help="output JSON file")
    f.add_argument("--plot", type=Path, default=None, help="also write the frontier figure (PNG)")
    f.add_argument(
        "--encoders",
        default="all",
        choices=["all", "optimal"],
        help="the SAE class: all = every encoder S -> T of every dictionary (the paper's Assumption 4); "
        "optimal = each dictionary with its distortion-optimal decoding only",
    )
    f.add_argument(
        "--coefficients",
        default="binary",
        choices=["binary", "nnls", "lstsq"],
        help="CHOICE: atom weights (binary = unit weights, the paper's Assumption 4)",
    )
    f.add_argument(
        "--mono-class",
        default="omission",
        choices=["omission", "topk"],
        help="CHOICE: monosemantic class of the staircase (omission = any S_hat subset of S and A, at most K "
        "concepts: the paper's Theorem 5; topk = TopK decoding of a represented set A)",
    )
    f.add_argument("--poly-reduce", default="mean", choices=["mean", "sum", "max"], help="CHOICE: P aggregation")
    f.add_argument("--poly-power", default=1, type=int, choices=[1, 2], help="CHOICE: |cos| (1) or cos^2 (2)")
    f.add_argument("--no-codes", action="store_true", help="omit the per-code list from the JSON")
    f.set_defaults(func=_frontier)

    e = tsub.add_parser("example1", help="Example 1: monosemantic vs hedged vs feature-splitting codes")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--pmf", type=Path, help="three-concept PMF JSON file")
    src.add_argument(
        "--preset",
        choices=["hedging-zero-correlation", "no-hedging-strong-correlation"],
        help="the paper's counterexample (co-occurrence, not correlation, drives hedging): independent "
        "q = (.8, .8, .5), or p(0) = p(1) = .02, p(01) = .015, p({}) = .945",
    )
    e.add_argument("--k", required=True, type=int, help="TopK K (1 or 2)")
    e.add_argument("--pair", default="0,1", help="the co-occurring pair a,b (0-based), default 0,1")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.add_argument("--check", action="store_true", help="cross-check every closed form against enumeration")
    e.set_defaults(func=_example1)


def _check_out(path: Path, suffix: str) -> None:
    from sae_rdp_plugin.errors import SaeRdpError

    if path.exists() and path.is_dir():
        raise SaeRdpError(f"output path {path} is a directory")
    if path.suffix.lower() != suffix:
        raise SaeRdpError(f"output file {path} must end in {suffix}")


#: keys every `theory frontier` output JSON holds (how an earlier output is recognised before replacing it)
FRONTIER_KEYS = ("inputs", "pareto", "monosemantic_frontier", "rate_tax", "checks", "metadata")


def _frontier_output(path: Path) -> dict | None:
    """The JSON object of an earlier `theory frontier` output at ``path``, or None."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if isinstance(obj, dict) and all(k in obj for k in FRONTIER_KEYS) and isinstance(obj["inputs"], dict):
        return obj
    return None


def _is_frontier_plot(out: Path, plot: Path) -> bool:
    """Whether ``plot`` is the figure of the earlier frontier output at ``out`` (its ``figure`` entry)."""
    import os

    prev = _frontier_output(out) if out.is_file() else None
    fig = prev.get("figure") if prev else None
    if not isinstance(fig, str):
        return False
    try:
        return Path(fig).is_file() and os.path.samefile(fig, plot)
    except OSError:
        return False


def _frontier(args: argparse.Namespace) -> int:
    from sae_rdp_plugin.experiments.theory_suite import run_metadata
    from sae_rdp_plugin.io import atomic_write_json, check_out_file
    from sae_rdp_plugin.rdp.dgp import ExplicitPMF
    from sae_rdp_plugin.rdp.theory import frontier_summary

    t0 = time.time()
    _check_out(args.out, ".json")
    check_out_file(args.out, "--out", inputs=(args.pmf,), is_ours=lambda p: _frontier_output(p) is not None)
    if args.plot is not None:
        _check_out(args.plot, ".png")
        check_out_file(
            args.plot, "--plot", inputs=(args.pmf, args.out), is_ours=lambda p: _is_frontier_plot(args.out, p)
        )
    pmf = ExplicitPMF.from_json(args.pmf)
    summary, table, mono = frontier_summary(
        pmf,
        args.width,
        args.k,
        args.coefficients,
        args.mono_class,
        args.poly_reduce,
        args.poly_power,
        include_codes=not args.no_codes,
        encoders=args.encoders,
    )
    summary["inputs"]["pmf_file"] = str(args.pmf)
    if args.plot is not None:
        from sae_rdp_plugin.rdp.plots import plot_frontier

        plot_frontier(
            table, mono, args.plot, title=f"m={pmf.m}, width {args.width}, TopK K={args.k}, encoders {args.encoders}"
        )
        summary["figure"] = str(args.plot)
    summary["metadata"] = run_metadata(t0)
    atomic_write_json(args.out, summary, indent=None if len(table) > 5000 else 1)
    tax = summary["rate_tax"]
    rows = (
        "codes"
        if args.encoders == "optimal"
        else f"frontier codes of {summary['stats']['n_dictionaries']} dictionaries"
    )
    print(
        f"encoders {args.encoders}: {len(table)} {rows}, {len(summary['pareto'])} Pareto-optimal in (R, D, P); "
        f"monosemantic staircase ({args.mono_class}): {len(summary['monosemantic_frontier'])} corners, "
        f"infeasible below D = {summary['monosemantic_infeasible_below']:.4f} (Theorem 5) + TopK overflow "
        f"{summary['monosemantic_topk_overflow']:.4f} = least D {summary['monosemantic_d_min']:.4f}; "
        f"max rate tax {tax['max_rate_tax']}; E(|S|-1)_+ = {tax['zero_distortion_closed_form']:.4f}; wrote {args.out}"
    )
    return 0


def _parse_pair(s: str) -> tuple[int, int]:
    from sae_rdp_plugin.errors import SaeRdpError

    try:
        a, b = (int(x) for x in s.split(","))
    except ValueError:
        raise SaeRdpError(f"--pair must be two comma-separated concept indices, got {s!r}") from None
    return a, b


def _example1(args: argparse.Namespace) -> int:
    from sae_rdp_plugin.experiments.theory_suite import example1_with_check
    from sae_rdp_plugin.rdp.dgp import ExplicitPMF
    from sae_rdp_plugin.rdp.theory import EXAMPLE1_PRESETS, example1

    pmf = ExplicitPMF.from_json(EXAMPLE1_PRESETS[args.preset] if args.preset else args.pmf)
    pair = _parse_pair(args.pair)
    res = example1_with_check(pmf, args.k, pair) if args.check else example1(pmf, args.k, pair)
    if args.preset:
        res["preset"] = args.preset
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    corr = "undefined" if res["pair_correlation"] is None else f"{res['pair_correlation']:.3f}"
    print(
        f"Example 1, K={res['k']}, pair {tuple(res['pair'])} (0-based concept indices): "
        f"Pr[both active] = {res['pair_cooccurrence']:.4f}, correlation {corr}"
    )
    print(f"{'code':9s} {'atoms':28s} {'rate':>8s} {'distortion':>10s}")
    for name, c in res["codes"].items():
        print(f"{name:9s} {_atoms(c['atoms']):28s} {c['rate']:8.4f} {c['distortion']:10.4f}")
    for w, nm in res["winner"].items():
        b, bm = res["best_of_all_dictionaries"][w], res["best_monosemantic"][w]
        print(
            f"winner at {w}: {nm}; best of all dictionaries: {_atoms(b['atoms'])} (R {b['rate']:.4f}, "
            f"D {b['distortion']:.4f}); best monosemantic: {_atoms(bm['atoms'])} (D {bm['distortion']:.4f})"
        )
    for nm, q in res["inequalities"].items():
        state = ("holds" if q["holds"] else "fails") if q["can_hold"] else "never holds: no pmf satisfies it"
        print(f"{nm} beats mono in distortion iff {q['beats_monosemantic_in_distortion_iff']}  [{state}]")
    if args.check:
        print(f"closed forms match enumeration: {res['closed_forms_match_enumeration']}")
    return 0


def _atoms(atoms: list[list[int]]) -> str:
    return " ".join("{" + ",".join(map(str, a)) + "}" for a in atoms) or "(none)"


def demo_section(out: Path) -> str | None:
    """Run this group's part of `sae-rdp demo` into `out/theory`; return its markdown."""
    from sae_rdp_plugin.experiments.theory_suite import run_suite

    res = run_suite(out / "theory")
    return res["report"]
