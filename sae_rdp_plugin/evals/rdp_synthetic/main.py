"""``rdp_synthetic``: rate, distortion and polysemanticity of SAEs on a synthetic model with known
concepts, in SAEBench's eval format.

For each selected SAE: draw ``n_samples`` observations x from the DGP (a ``sae_rdp_plugin.sweep``
DGPSpec, or a SAELens ``SyntheticModel``), encode/decode them with the SAE, and report

* rate R = E||z||_0, distortion D = E||x - x_hat||^2 (sum over dims), explained variance, dead latents,
  E|S| and the gap to the monosemantic conservation line E|S| - R - D;
* P_dec, P_enc, P_ED (THEORY.md section 3; CHOICE parameters from the config);
* SAELens's ground-truth metrics: MCC, uniqueness, precision / recall / F1 (``sae_lens.synthetic``).

Python::

    from sae_rdp_plugin.evals.rdp_synthetic.eval_config import RDPSyntheticEvalConfig
    from sae_rdp_plugin.evals.rdp_synthetic.main import run_eval
    cfg = RDPSyntheticEvalConfig(dgp={"name": "p", "kind": "pairs", "m": 8, "d": 16, "rho": 0.5})
    run_eval(cfg, [("my_sae", sae)], "cpu", "eval_results/rdp_synthetic")

CLI (SAEBench's standard flags)::

    python -m sae_rdp_plugin.evals.rdp_synthetic.main --sae_paths DIR1 DIR2 --dgp_path cfg.json \\
        --output_folder eval_results/rdp_synthetic
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from sae_rdp_plugin.cli import OneLineArgumentParser, run_entry_point
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.evals import sae_lens_version
from sae_rdp_plugin.evals.rdp_synthetic.eval_config import RDPSyntheticEvalConfig
from sae_rdp_plugin.evals.rdp_synthetic.eval_output import (
    EVAL_TYPE_ID_RDP_SYNTHETIC,
    RDPGroundTruthMetrics,
    RDPPolysemanticityMetrics,
    RDPRateDistortionMetrics,
    RDPSyntheticEvalOutput,
    RDPSyntheticMetricCategories,
)
from sae_rdp_plugin.evals.selection import add_selection_args, pending_saes, select_saes
from sae_rdp_plugin.evals.selection import release_names as release_names  # kept importable from here
from sae_rdp_plugin.io import atomic_write_text


def load_dgp(config: RDPSyntheticEvalConfig, device: str | torch.device) -> Any:
    """The config's DGP as a ``sae_rdp_plugin.sweep.data.BuiltDGP`` on ``device``."""
    from sae_rdp_plugin.sweep.config import DGPSpec, SweepConfig
    from sae_rdp_plugin.sweep.data import build_dgp, dgp_from_synthetic_model

    if config.synthetic_model_path:
        from sae_lens.synthetic import SyntheticModel

        p = Path(config.synthetic_model_path)
        if not p.exists():
            raise SaeRdpError(f"synthetic model folder not found: {p}")
        model = SyntheticModel.load_from_disk(str(p), device=str(device))
        return dgp_from_synthetic_model(model, p.name, device, seed=config.random_seed)
    spec_d: dict[str, Any] = dict(config.dgp)
    if config.dgp_path:
        p = Path(config.dgp_path)
        try:
            obj = json.loads(p.read_text())
        except FileNotFoundError:
            raise SaeRdpError(f"DGP file not found: {p}") from None
        except json.JSONDecodeError as exc:
            raise SaeRdpError(f"malformed JSON in {p}: {exc.msg}") from None
        if isinstance(obj, dict) and "dgps" in obj:
            cfg = SweepConfig.from_dict(obj)
            names = [g.name for g in cfg.dgps]
            name = config.dgp_name or names[0]
            if name not in names:
                raise SaeRdpError(f"unknown DGP {name!r} in {p} (has {', '.join(names)})")
            return build_dgp(next(g for g in cfg.dgps if g.name == name), device)
        spec_d = obj
    try:
        spec = DGPSpec(**spec_d)
    except TypeError as exc:
        raise SaeRdpError(f"bad DGP spec: {exc}") from None
    return build_dgp(spec, device)


@torch.no_grad()
def evaluate_sae(
    sae: Any, built: Any, config: RDPSyntheticEvalConfig, device: str | torch.device
) -> dict[str, dict[str, float]]:
    """The three metric categories of one SAE on the DGP (batched; bounded memory)."""
    from sae_lens.synthetic import ClassificationMetricsCalculator, feature_uniqueness, mean_correlation_coefficient

    from sae_rdp_plugin.rdp.metrics import joint_polysemanticity, polysemanticity

    config.check()
    if int(sae.cfg.d_in) != built.d:
        raise SaeRdpError(f"shape mismatch: SAE d_in={sae.cfg.d_in} but the DGP has d={built.d}")
    gen = torch.Generator(device=torch.device(device)).manual_seed(config.random_seed)
    dec = sae.W_dec.detach().float()
    enc = sae.W_enc.detach().float().T
    concepts = built.concepts.float().to(dec.device)
    calc = ClassificationMetricsCalculator(dec.cpu(), concepts.cpu())
    n, done = config.n_samples, 0
    l0 = se = s2 = 0.0
    s1 = torch.zeros(built.d, dtype=torch.float64)
    fired = torch.zeros(dec.shape[0], dtype=torch.bool)
    while done < n:
        b = min(config.batch_size, n - done)
        x, acts = built.sample(b, gen)
        x = x.to(device=dec.device, dtype=torch.float32)
        z = sae.encode(x.to(sae.dtype))
        xh = sae.decode(z).float()
        if not bool(torch.isfinite(xh).all()):
            raise SaeRdpError("SAE reconstruction contains NaN or Inf")
        nz = z != 0
        l0 += float(nz.sum())
        se += float((x.double() - xh.double()).pow(2).sum())
        s1 += x.double().sum(0).cpu()
        s2 += float(x.double().pow(2).sum())
        fired |= nz.any(0).cpu()
        calc.add_batch(z.float().cpu(), acts.float().cpu())
        done += b
    tv = s2 - float(s1.pow(2).sum()) / n
    R, D = l0 / n, se / n
    kw = dict(reduction=config.reduction, use_abs=config.use_abs, zero_tol=config.zero_tol)
    cls = calc.compute()
    return {
        "rate_distortion": {
            "rate": R,
            "distortion": D,
            "explained_variance": 1.0 - se / tv if tv > 0 else float("nan"),
            "dead_latents": int((~fired).sum()),
            "expected_size": float(built.expected_size),
            "mono_line_gap": float(built.expected_size) - R - D,
        },
        "polysemanticity": {
            "P_dec": polysemanticity(dec, concepts, **kw),
            "P_enc": polysemanticity(enc, concepts, **kw),
            "P_ED": joint_polysemanticity(enc, dec, concepts, **kw),
        },
        "ground_truth": {
            "mcc": mean_correlation_coefficient(dec.cpu(), concepts.cpu()),
            "uniqueness": feature_uniqueness(dec.cpu(), concepts.cpu()),
            "precision": cls.precision,
            "recall": cls.recall,
            "f1": cls.f1_score,
        },
    }


def run_eval(
    config: RDPSyntheticEvalConfig,
    selected_saes: Sequence[tuple[str, Any]],
    device: str,
    output_path: str,
    force_rerun: bool = False,
) -> dict[str, dict[str, Any]]:
    """Evaluate each (release, sae_id) or (name, SAE object) pair as SAEBench does (objects get sae_id
    "custom_sae"); write ``{output_path}/{release}_{sae_id}_eval_results.json`` (existing files are kept
    unless ``force_rerun``). Returns {file path: output dict}."""
    from sae_bench.sae_bench_utils import get_eval_uuid, get_sae_bench_version

    config.check()
    os.makedirs(output_path, exist_ok=True)
    built = load_dgp(config, device)
    results: dict[str, dict[str, Any]] = {}
    for path, release, sae_id, sae in pending_saes(selected_saes, output_path, device, force_rerun, "rdp_synthetic"):
        sae = sae.to(device)
        m = evaluate_sae(sae, built, config, device)
        out = RDPSyntheticEvalOutput(
            eval_config=config,
            eval_id=get_eval_uuid(),
            datetime_epoch_millis=int(datetime.now().timestamp() * 1000),
            eval_result_metrics=RDPSyntheticMetricCategories(
                rate_distortion=RDPRateDistortionMetrics(**m["rate_distortion"]),
                polysemanticity=RDPPolysemanticityMetrics(**m["polysemanticity"]),
                ground_truth=RDPGroundTruthMetrics(**m["ground_truth"]),
            ),
            eval_result_details=[],
            sae_bench_commit_hash=get_sae_bench_version(),
            sae_lens_id=sae_id,
            sae_lens_release_id=release,
            sae_lens_version=sae_lens_version(),
            sae_cfg_dict=sae.cfg.to_dict(),
            eval_result_unstructured={
                "dgp": built.name,
                "dgp_spec": None if built.spec is None else built.spec.__dict__,
            },
        )
        assert out.eval_type_id == EVAL_TYPE_ID_RDP_SYNTHETIC
        text = out.to_json()
        atomic_write_text(path, text)
        results[path] = json.loads(text)
    return results


def run_eval_on_sweep(
    sweep_dir: str | Path,
    output_path: str | Path,
    device: str = "cpu",
    n_samples: int = 20000,
    force_rerun: bool = False,
    allow_partial: bool = False,
) -> dict[str, dict[str, Any]]:
    """Run the eval on every member of a finished sweep folder, each against its own DGP (members are
    exported as SAELens SAEs and loaded with the stock loader first). An unfinished sweep raises
    SaeRdpError unless ``allow_partial`` (then its finished members, with a warning)."""
    from sae_lens import SAE

    from sae_rdp_plugin.sweep.config import SweepConfig
    from sae_rdp_plugin.sweep.export import export_member
    from sae_rdp_plugin.sweep.train import load_results

    sweep_dir = Path(sweep_dir)
    RDPSyntheticEvalConfig(n_samples=n_samples).check()  # before any work
    results = load_results(sweep_dir, allow_partial=allow_partial)
    state = json.loads((sweep_dir / "state.json").read_text())
    cfg = SweepConfig.from_dict(state["config"])
    specs = {g.name: g for g in cfg.dgps}
    written: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in results:
            dest = export_member(sweep_dir, r["member_id"], Path(tmp) / r["member_id"])
            sae = SAE.load_from_disk(str(dest), device=device)
            ecfg = RDPSyntheticEvalConfig(dgp=dict(specs[r["dgp"]].__dict__), n_samples=n_samples)
            written.update(run_eval(ecfg, [(r["member_id"], sae)], device, str(output_path), force_rerun=force_rerun))
    return written


def arg_parser() -> argparse.ArgumentParser:
    d = RDPSyntheticEvalConfig()
    p = OneLineArgumentParser(description="Run the rdp_synthetic eval (sae-rdp): R, D and P on a synthetic model")
    add_selection_args(p, "rdp_synthetic")
    p.add_argument("--model_name", type=str, default=d.model_name, help="Label of the synthetic model")
    p.add_argument("--dgp", type=json.loads, default=None, help="DGPSpec as a JSON string")
    p.add_argument("--dgp_path", type=str, default="", help="JSON file: a DGPSpec or a sweep config")
    p.add_argument("--dgp_name", type=str, default="", help="DGP name within the sweep config")
    p.add_argument("--synthetic_model_path", type=str, default="", help="SAELens SyntheticModel folder")
    p.add_argument("--n_samples", type=int, default=d.n_samples, help="Evaluation samples")
    p.add_argument("--batch_size", type=int, default=d.batch_size, help="Samples per forward pass")
    p.add_argument("--random_seed", type=int, default=d.random_seed, help="Seed of the evaluation sample")
    p.add_argument(
        "--reduction", type=str, default=d.reduction, choices=["mean", "sum", "max"], help="P reduction (CHOICE)"
    )
    p.add_argument(
        "--use_abs",
        type=lambda s: s.lower() in ("1", "true", "yes"),
        default=True,
        help="|cos| (true) or cos^2 (false)",
    )
    p.add_argument("--zero_tol", type=float, default=d.zero_tol, help="Dead-row norm tolerance")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    args = arg_parser().parse_args(argv)
    if args.dgp is None and not args.dgp_path and not args.synthetic_model_path:
        # the config's default DGP suits the Python API's examples; on the command line it would silently
        # stand in for the user's concepts
        raise SaeRdpError(
            "give the concepts to measure against: --dgp JSON, --dgp_path FILE or --synthetic_model_path DIR"
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = RDPSyntheticEvalConfig(
        model_name=args.model_name,
        dgp=args.dgp if args.dgp is not None else RDPSyntheticEvalConfig().dgp,
        dgp_path=args.dgp_path,
        dgp_name=args.dgp_name,
        synthetic_model_path=args.synthetic_model_path,
        sae_paths=args.sae_paths,
        n_samples=args.n_samples,
        batch_size=args.batch_size,
        random_seed=args.random_seed,
        reduction=args.reduction,
        use_abs=args.use_abs,
        zero_tol=args.zero_tol,
    )
    selected = select_saes(args.sae_paths, args.sae_regex_pattern, args.sae_block_pattern, device)
    if not selected:
        raise SaeRdpError("no SAE selected")
    t0 = time.time()
    out = run_eval(config, selected, device, args.output_folder, force_rerun=args.force_rerun)
    print(f"[rdp_synthetic] {len(out)} file(s) in {time.time() - t0:.1f} s under {args.output_folder}")
    return out


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
