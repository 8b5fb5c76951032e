"""`sae-rdp distributed ...`: multi-GPU training and sweeps on torch.distributed (launch under torchrun).

    torchrun --standalone --nproc_per_node 8 --no-python sae-rdp distributed train --out runs/d ...
    torchrun --standalone --nproc_per_node 8 -m sae_rdp_plugin distributed train --out runs/d ...   (same)

Subcommands: ``train`` (one SAE, data-parallel), ``sweep`` (a sae_rdp_plugin.sweep config, groups
spread over ranks), ``grid`` (SAELens-trainer SAEs of any architecture, members spread over ranks).
Without torchrun they run as one process. The argument definitions live here (no torch import); the
flags of ``train`` and ``grid`` fill a :class:`~sae_rdp_plugin.train.config.TrainConfig` (whose defaults
they share) and a :class:`~sae_rdp_plugin.train.config.SyntheticStreamConfig`. The library:
:mod:`sae_rdp_plugin.train.distributed` (process group), :mod:`sae_rdp_plugin.train.ddp` (``train``),
:mod:`sae_rdp_plugin.train.grid` (``grid``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sae_rdp_plugin.architectures import architecture_help
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.train.config import SyntheticStreamConfig, TrainConfig

DEFAULT_TIMEOUT_S = 600.0


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(s: str) -> list[Any]:
        try:
            return [kind(x) for x in s.split(",") if x.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return parse


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (rank 0 writes it)")
    p.add_argument("--architecture", default="topk", help=architecture_help())
    p.add_argument("--d-in", type=int, default=64)
    p.add_argument("--d-sae", type=int, default=256)
    p.add_argument("--k", type=float, default=TrainConfig.k, help="active latents per row for (batch)topk")
    p.add_argument("--sae-kwargs", default="{}", help="extra SAELens config fields as JSON")
    p.add_argument(
        "--n-features",
        type=int,
        default=SyntheticStreamConfig.n_features,
        help="ground-truth features of the synthetic stream",
    )
    p.add_argument("--batch", type=int, default=TrainConfig.batch_size, help="GLOBAL batch (rows, all ranks together)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--data-seed", type=int, default=SyntheticStreamConfig.data_seed)
    p.add_argument(
        "--n-chunks",
        type=int,
        default=SyntheticStreamConfig.n_chunks,
        help="chunks per global batch; must be divisible by the world size",
    )
    p.add_argument("--normalize-activations", default=TrainConfig.normalize_activations)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (cuda:LOCAL_RANK under torchrun)")
    p.add_argument("--backend", default=None, help="nccl | gloo (default: nccl on CUDA, gloo on CPU)")
    p.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="collective timeout")


def add_train_args(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    p.add_argument("--n-checkpoints", type=int, default=TrainConfig.n_checkpoints)
    p.add_argument("--dead-feature-window", type=int, default=TrainConfig.dead_feature_window)
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--warmup-steps", type=int, default=0, help="steps left out of steady_samples_per_s")
    p.add_argument("--autocast", action="store_true")


def add_sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="sweep config JSON (sae_rdp_plugin.sweep.config.SweepConfig)")
    p.add_argument("--out", required=True, help="output folder (rank 0 merges the ranks' results into it)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep in --out")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (cuda:LOCAL_RANK under torchrun)")
    p.add_argument("--backend", default=None, help="nccl | gloo (default: nccl on CUDA, gloo on CPU)")
    p.add_argument(
        "--timeout-s", type=float, default=3600.0, help="collective timeout (covers the longest rank's share)"
    )
    p.add_argument("--quiet", action="store_true")


def add_grid_args(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    p.add_argument("--ks", type=_csv(float), default=None, help="sweep over k (comma-separated)")
    p.add_argument("--d-saes", type=_csv(int), default=None, help="sweep over d_sae (comma-separated)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per grid point")


def config_from_args(a: argparse.Namespace) -> tuple[TrainConfig, SyntheticStreamConfig]:
    """The TrainConfig (``tokens = batch * steps``; the device is each rank's own) and the synthetic
    stream of ``train`` / ``grid``."""
    try:
        kw = json.loads(a.sae_kwargs)
    except json.JSONDecodeError as exc:
        raise SaeRdpError(f"--sae-kwargs is not valid JSON: {exc}") from exc
    if not isinstance(kw, dict):
        raise SaeRdpError("--sae-kwargs must be a JSON object")
    if a.steps < 1 or a.batch < 1:
        raise SaeRdpError(f"--steps and --batch must be >= 1, got {a.steps} and {a.batch}")
    cfg = TrainConfig(
        architecture=a.architecture,
        d_in=a.d_in,
        d_sae=a.d_sae,
        k=a.ks[0] if getattr(a, "ks", None) else a.k,  # grid: every point sets k; the base takes the first
        sae_kwargs=kw,
        normalize_activations=a.normalize_activations,
        tokens=a.batch * a.steps,
        batch_size=a.batch,
        lr=a.lr,
        seed=a.seed,
        n_checkpoints=getattr(a, "n_checkpoints", TrainConfig.n_checkpoints),
        dead_feature_window=getattr(a, "dead_feature_window", TrainConfig.dead_feature_window),
        autocast=getattr(a, "autocast", TrainConfig.autocast),
    )
    return cfg, SyntheticStreamConfig(n_features=a.n_features, data_seed=a.data_seed, n_chunks=a.n_chunks)


def sweep_grid(a: argparse.Namespace) -> list[dict[str, Any]]:
    """The cross product of --ks x --d-saes x seeds (seed offsets come from the member index)."""
    ks = a.ks or [a.k]
    ds = a.d_saes or [a.d_sae]
    if a.seeds < 1:
        raise SaeRdpError("--seeds must be >= 1")
    return [{"k": k, "d_sae": d} for k in ks for d in ds for _ in range(a.seeds)]


def run_train(a: argparse.Namespace) -> int:
    from sae_rdp_plugin.train.ddp import train_distributed
    from sae_rdp_plugin.train.distributed import destroy_distributed, init_distributed

    cfg, stream = config_from_args(a)
    ctx = init_distributed(a.device, a.backend, a.timeout_s)
    if not ctx.is_main:
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        res = train_distributed(cfg, a.out, ctx, stream, resume=not a.no_resume, warmup_steps=a.warmup_steps)
        if res is not None:
            print(
                json.dumps(
                    {
                        k: res[k]
                        for k in ("world_size", "n_training_steps", "wall_s", "samples_per_s", "steady_samples_per_s")
                    }
                )
            )
    finally:
        destroy_distributed()
    return 0


def run_sweep(a: argparse.Namespace) -> int:
    from sae_rdp_plugin.sweep.config import load_config
    from sae_rdp_plugin.sweep.distributed import train_sweep_distributed
    from sae_rdp_plugin.train.distributed import destroy_distributed, init_distributed

    cfg = load_config(a.config)
    ctx = init_distributed(a.device, a.backend, a.timeout_s)
    try:
        res = train_sweep_distributed(cfg, a.out, ctx, resume=a.resume, progress=not a.quiet)
        if res is not None:
            print(
                json.dumps(
                    {"members": len(res), "world_size": ctx.world_size, "out": str(Path(a.out) / "results.json")}
                )
            )
    finally:
        destroy_distributed()
    return 0


def run_grid(a: argparse.Namespace) -> int:
    from sae_rdp_plugin.train.distributed import destroy_distributed, init_distributed
    from sae_rdp_plugin.train.grid import sweep_distributed

    cfg, stream = config_from_args(a)
    grid = sweep_grid(a)
    for point in grid:  # refuse a bad grid point (k > d_sae, ...) before any rank trains
        dataclasses.replace(cfg, **point)
    ctx = init_distributed(a.device, a.backend, a.timeout_s)
    if not ctx.is_main:
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        res = sweep_distributed(cfg, grid, a.out, ctx, stream)
        if res is not None:
            print(json.dumps({"members": len(res), "out": str(Path(a.out) / "sweep_results.json")}))
    finally:
        destroy_distributed()
    return 0


def add_subcommands(parser: argparse.ArgumentParser) -> None:
    """Add ``train``, ``sweep`` and ``grid`` to ``parser``."""
    sub = parser.add_subparsers(dest="dist_command", metavar="{train,sweep,grid}")
    sub.required = True
    t = sub.add_parser("train", help="train one SAE data-parallel over the ranks (synthetic SynthSAEBench stream)")
    add_train_args(t)
    t.set_defaults(func=run_train)
    s = sub.add_parser("sweep", help="a sae_rdp_plugin.sweep grid (SweepConfig JSON), its groups spread over the ranks")
    add_sweep_args(s)
    s.set_defaults(func=run_sweep)
    g = sub.add_parser("grid", help="a grid of SAELens-trainer SAEs (any architecture), members spread over the ranks")
    add_grid_args(g)
    g.set_defaults(func=run_grid)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `distributed` command group to the top-level parser."""
    p = sub.add_parser(
        "distributed",
        help="multi-GPU training and sweeps (torch.distributed; launch under torchrun)",
        description="Multi-GPU training and sweeps on torch.distributed. Launch under torchrun: "
        "torchrun --standalone --nproc_per_node N --no-python sae-rdp distributed train ...",
    )
    add_subcommands(p)


def demo_section(out: Path) -> str | None:
    """No demo section: multi-process runs are exercised by tests/test_distributed_gloo.py."""
    return None
