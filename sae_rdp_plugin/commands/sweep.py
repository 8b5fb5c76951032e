"""``sae-rdp sweep ...``: batched SAE sweeps on synthetic data with known concepts.

* ``sae-rdp sweep run --config CFG.json --out DIR [--device cuda] [--resume]``: train the grid
  (``sae_rdp_plugin.sweep.train.train_sweep``), write ``DIR/results.json`` and per-member JSON.
* ``sae-rdp sweep eval --out DIR [--sae-path P ...] [--config CFG.json --dgp NAME]``: run the
  ``rdp_synthetic`` SAEBench eval on finished sweep members (exported as SAELens SAEs) or on SAELens
  SAE folders, against a DGP of the sweep config.
* ``sae-rdp sweep export --sweep DIR --member ID --dest PATH``: one member as a SAELens SAE folder.
* ``sae-rdp sweep plot --sweep DIR``: the RDP figures of a finished sweep.

``eval --sweep`` and ``plot`` refuse an unfinished sweep (a killed run): the error names how many members
are missing and the ``--resume`` command; ``--allow-partial`` uses the finished members, with a warning.
``export`` writes a new folder, or replaces a previous export; it never deletes a folder it did not write.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

_PARTIAL_HELP = (
    "use the finished members of an unfinished sweep (with a warning); without it an unfinished sweep is an "
    "error naming the missing members and the --resume command"
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `sweep` command group to the top-level parser."""
    p = sub.add_parser("sweep", help="batched SAE sweeps on synthetic data: train, evaluate, export")
    ss = p.add_subparsers(dest="sweep_command", metavar="SUBCOMMAND")
    ss.required = True

    r = ss.add_parser("run", help="train a grid of SAEs at once (batched), with checkpoints")
    r.add_argument("--config", required=True, type=Path, help="SweepConfig JSON")
    r.add_argument("--out", required=True, type=Path, help="output folder")
    r.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    r.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --out")
    r.add_argument("--no-plots", action="store_true", help="skip the figures")
    r.set_defaults(func=_run)

    e = ss.add_parser("eval", help="rdp_synthetic SAEBench eval of sweep members or SAELens SAE folders")
    e.add_argument("--sweep", type=Path, default=None, help="a finished sweep folder (all its members)")
    e.add_argument("--sae-path", type=Path, nargs="*", default=[], help="SAELens SAE folders (cfg.json + weights)")
    e.add_argument("--config", type=Path, default=None, help="sweep config naming the DGP (default: the sweep's)")
    e.add_argument(
        "--dgp",
        default=None,
        help="DGP name in the config (default: the one a sweep export recorded, or the config's only DGP)",
    )
    e.add_argument("--out", required=True, type=Path, help="output folder for SAEBench-format JSON")
    e.add_argument("--device", default="cpu")
    e.add_argument("--n-samples", type=int, default=20000)
    e.add_argument("--force-rerun", action="store_true")
    e.add_argument("--allow-partial", action="store_true", help=_PARTIAL_HELP)
    e.set_defaults(func=_eval)

    x = ss.add_parser("export", help="write one sweep member as a SAELens SAE folder")
    x.add_argument("--sweep", required=True, type=Path)
    x.add_argument("--member", required=True)
    x.add_argument("--dest", required=True, type=Path)
    x.set_defaults(func=_export)

    pl = ss.add_parser("plot", help="RDP figures of a finished sweep")
    pl.add_argument("--sweep", required=True, type=Path)
    pl.add_argument("--allow-partial", action="store_true", help=_PARTIAL_HELP)
    pl.set_defaults(func=_plot)


def _run(args: argparse.Namespace) -> int:
    from sae_rdp_plugin.devices import check_device
    from sae_rdp_plugin.sweep.config import load_config
    from sae_rdp_plugin.sweep.train import check_resume_out, train_sweep

    cfg = load_config(args.config)
    check_device(args.device)
    if args.resume:
        check_resume_out(args.out)
    res = train_sweep(cfg, args.out, device=args.device, resume=args.resume)
    if not args.no_plots:
        from sae_rdp_plugin.sweep.analysis import plot_sweep

        plot_sweep(res, args.out)
    print(f"[sweep] {len(res)} SAEs; results in {args.out / 'results.json'}")
    return 0


#: the largest --n-samples of ``sweep eval``: the sample is streamed in batches, so the bound is on time
#: (about a day of CPU work at small d); real evals use 20,000
MAX_EVAL_SAMPLES = 10**9


def _eval(args: argparse.Namespace) -> int:
    from sae_rdp_plugin.devices import check_device
    from sae_rdp_plugin.errors import SaeRdpError
    from sae_rdp_plugin.evals.rdp_synthetic.eval_config import RDPSyntheticEvalConfig
    from sae_rdp_plugin.evals.rdp_synthetic.main import run_eval, run_eval_on_sweep
    from sae_rdp_plugin.sweep.config import load_config

    if args.sweep is None and not args.sae_path:
        raise SaeRdpError("give --sweep DIR or --sae-path PATH ...")
    if args.sweep is not None:
        # a sweep's members are evaluated against their own DGPs, from the sweep's own config
        given = [f for f, v in (("--sae-path", args.sae_path), ("--config", args.config), ("--dgp", args.dgp)) if v]
        if given:
            raise SaeRdpError(
                f"{', '.join(given)} cannot be combined with --sweep (its members are evaluated against their own "
                "DGPs of the sweep's config); give either --sweep DIR or --sae-path PATH ... --config CFG.json"
            )
    elif args.config is None:
        raise SaeRdpError("--sae-path needs --config (the DGP the SAEs are evaluated on)")
    if isinstance(args.n_samples, int) and args.n_samples > MAX_EVAL_SAMPLES:
        raise SaeRdpError(
            f"--n-samples {args.n_samples} is more than {MAX_EVAL_SAMPLES:,} (the eval draws and encodes every "
            "sample; that many would run for days); lower --n-samples"
        )
    RDPSyntheticEvalConfig(n_samples=args.n_samples).check()
    check_device(args.device)
    _check_eval_out(args.out)
    if args.sweep is not None:
        written = run_eval_on_sweep(
            args.sweep,
            args.out,
            device=args.device,
            n_samples=args.n_samples,
            force_rerun=args.force_rerun,
            allow_partial=args.allow_partial,
        )
    else:
        cfg = load_config(args.config)
        names = [g.name for g in cfg.dgps]
        if args.dgp is not None and args.dgp not in names:
            raise SaeRdpError(f"unknown DGP {args.dgp!r} (config has {', '.join(names)})")
        dgp_of = {p: _dgp_of(p, args.dgp, names) for p in args.sae_path}
        seen: dict[str, Path] = {}
        for p in args.sae_path:
            if p.name in seen:
                raise SaeRdpError(
                    f"--sae-path {seen[p.name]} and {p} have the same folder name {p.name!r}, so their results "
                    f"would both be written to {args.out / (p.name + '_custom_sae_eval_results.json')}; "
                    "give them distinct folder names"
                )
            seen[p.name] = p
        specs = {g.name: g for g in cfg.dgps}
        saes = [(p.name, _load_sae(p, args.device)) for p in args.sae_path]
        for p, (_, sae) in zip(args.sae_path, saes):
            d_in, d = int(sae.cfg.d_in), specs[dgp_of[p]].input_dim  # type: ignore[attr-defined]
            if d and d_in != d:
                raise SaeRdpError(
                    f"--sae-path {p}: shape mismatch: SAE d_in={d_in} but DGP {dgp_of[p]!r} of --config has d={d}"
                )
        written = []
        for name in dict.fromkeys(dgp_of.values()):  # each SAE against its own DGP
            spec = specs[name]
            ecfg = RDPSyntheticEvalConfig(dgp=json.loads(json.dumps(spec.__dict__)), n_samples=args.n_samples)
            group = [s for p, s in zip(args.sae_path, saes) if dgp_of[p] == name]
            written += run_eval(ecfg, group, args.device, str(args.out), force_rerun=args.force_rerun)
    print(f"[sweep eval] wrote {len(written)} result file(s) under {args.out}")
    return 0


def _check_eval_out(out: Path) -> None:
    """--out must be a folder (or new) in a writable place; nothing is created here."""
    from sae_rdp_plugin.errors import SaeRdpError
    from sae_rdp_plugin.io import check_parent_writable

    if out.exists() and not out.is_dir():
        raise SaeRdpError(f"--out {out} exists and is not a folder")
    check_parent_writable(out, "--out")


def _dgp_of(sae_path: Path, dgp: str | None, names: list[str]) -> str:
    """The DGP an SAE folder is evaluated against: ``--dgp``; else the one its sweep export recorded (a member is
    scored against the data it was trained on); else the config's only DGP. Several DGPs and neither is an
    error: picking the first would score the SAE against data it never saw."""
    from sae_rdp_plugin.errors import SaeRdpError
    from sae_rdp_plugin.sweep.export import EXPORT_MARKER

    if dgp is not None:
        return dgp
    marker = sae_path / EXPORT_MARKER
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text()).get("dgp")
        except (ValueError, AttributeError):
            recorded = None
        if recorded is not None:
            if recorded not in names:
                raise SaeRdpError(
                    f"--sae-path {sae_path} was exported from DGP {recorded!r}, which --config lacks "
                    f"({', '.join(names)}); give the sweep's config or --dgp"
                )
            return recorded
    if len(names) == 1:
        return names[0]
    raise SaeRdpError(
        f"--sae-path {sae_path}: --config has {len(names)} DGPs ({', '.join(names)}) and the folder does not say "
        "which it was trained on; name one with --dgp"
    )


def _load_sae(path: Path, device: str) -> object:
    """A SAELens SAE folder; a missing, truncated or foreign one is a one-line SaeRdpError."""
    from sae_lens import SAE

    from sae_rdp_plugin.errors import SaeRdpError

    if not (path / "cfg.json").is_file():
        raise SaeRdpError(f"--sae-path {path} is not a SAELens SAE folder (no cfg.json)")
    try:
        return SAE.load_from_disk(path, device=device)
    except Exception as exc:
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        # torch's load_state_dict error is "Error(s) in loading state_dict for X:" then one line per tensor
        reason = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines or [""])[0]
        reason = reason[:240] or type(exc).__name__
        raise SaeRdpError(f"--sae-path {path}: cannot load the SAE ({reason})") from None


def _export(args: argparse.Namespace) -> int:
    from sae_rdp_plugin.sweep.export import export_member

    dest = export_member(args.sweep, args.member, args.dest)
    print(f"[sweep export] {dest}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from sae_rdp_plugin.sweep.analysis import plot_sweep
    from sae_rdp_plugin.sweep.train import load_results

    figs = plot_sweep(load_results(args.sweep, allow_partial=args.allow_partial), args.sweep)
    print("\n".join(str(f) for f in figs))
    return 0


def demo_section(out: Path) -> str | None:
    """A CPU-sized RDP sweep (< 60 s): TopK SAEs on pairs that co-occur with rho in {0, 0.5},
    against the monosemantic conservation line R + D = E|S|; figures + JSON under out/sweep/."""
    from sae_rdp_plugin.experiments.rdp_sweeps import demo

    return demo(out / "sweep")
