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
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sae_rdp_plugin.architectures import architecture_help
from sae_rdp_plugin.errors import SaeRdpError, exc_line
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
    p.add_argument(
        "--k", type=float, default=None, help=f"active latents per row for (batch)topk (default {TrainConfig.k:g})"
    )
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


#: SAELens config fields that a flag sets: --sae-kwargs may not set them too
_FLAG_OF_FIELD = {
    "architecture": "--architecture",
    "d_in": "--d-in",
    "d_sae": "--d-sae",
    "k": "--k",
    "normalize_activations": "--normalize-activations",
    "device": "--device",
}
_BACKENDS = ("nccl", "gloo")


def _resolved_device_type(device: str) -> str:
    """The device type ``--device`` means on this machine (``auto``: cuda when CUDA is available)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def check_process_args(a: argparse.Namespace) -> None:
    """--device, --backend and --timeout-s of every subcommand (before the process group is joined)."""
    from sae_rdp_plugin.devices import check_device

    if a.device != "auto":
        check_device(a.device)
    dev_type = _resolved_device_type(a.device)
    if a.backend is not None:
        if a.backend not in _BACKENDS:
            raise SaeRdpError(f"--backend {a.backend!r} is not a backend (one of {', '.join(_BACKENDS)})")
        if a.backend == "nccl" and dev_type != "cuda":
            raise SaeRdpError(f"--backend nccl needs a CUDA device; --device {a.device!r} is {dev_type} (use gloo)")
    if not (math.isfinite(a.timeout_s) and a.timeout_s > 0):
        raise SaeRdpError(f"--timeout-s must be a finite number of seconds > 0, got {a.timeout_s}")


def check_training_args(a: argparse.Namespace) -> None:
    """The flags of ``train`` / ``grid`` that do not apply to the chosen architecture or device, and the
    ``train`` warm-up (before anything is built)."""
    from sae_rdp_plugin.architectures import get_architecture

    check_process_args(a)
    arch = get_architecture(a.architecture)
    if not arch.uses_k:
        for flag, given in (("--k", a.k is not None), ("--ks", getattr(a, "ks", None) is not None)):
            if given:
                raise SaeRdpError(f"{flag} does not apply to --architecture {a.architecture} (it has no k)")
    for flag, attr in (("--ks", "ks"), ("--d-saes", "d_saes")):
        if getattr(a, attr, None) == []:
            raise SaeRdpError(f"{flag} is empty; give comma-separated values or leave the flag out")
    if getattr(a, "autocast", False) and _resolved_device_type(a.device) != "cuda":
        raise SaeRdpError(f"--autocast needs a CUDA device; --device {a.device!r} is not one")
    if hasattr(a, "warmup_steps") and not 0 <= a.warmup_steps < a.steps:
        raise SaeRdpError(f"--warmup-steps must be in 0..--steps - 1 ({a.steps - 1}), got {a.warmup_steps}")


def _check_sae_kwargs(cfg: TrainConfig) -> None:
    """--sae-kwargs: no field a flag sets, only fields of the architecture's SAELens config, values SAELens
    accepts (checked on the config alone: nothing is allocated)."""
    import sae_rdp_plugin.wsae.registry as registry

    for key in cfg.sae_kwargs:
        if key in _FLAG_OF_FIELD:
            raise SaeRdpError(f"--sae-kwargs sets {key!r}, which {_FLAG_OF_FIELD[key]} sets; use that flag")
    registry.register_now()
    from sae_lens.registry import get_sae_training_class
    from sae_lens.saes.sae import TrainingSAEConfig

    cfg_dict = cfg.sae_config_dict()
    cfg_cls = get_sae_training_class(cfg_dict["architecture"])[1]
    unknown = sorted(set(cfg.sae_kwargs) - {f.name for f in dataclasses.fields(cfg_cls)})
    if unknown:
        raise SaeRdpError(f"--sae-kwargs: unknown config fields for {cfg.architecture}: {', '.join(unknown)}")
    try:
        TrainingSAEConfig.from_dict(cfg_dict)
    except Exception as exc:
        reason = exc_line(exc)
        raise SaeRdpError(f"--sae-kwargs {json.dumps(cfg.sae_kwargs)}: SAELens refuses it ({reason})") from None


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
    check_training_args(a)
    k = a.k if a.k is not None else TrainConfig.k
    cfg = TrainConfig(
        architecture=a.architecture,
        d_in=a.d_in,
        d_sae=a.d_sae,
        k=a.ks[0] if getattr(a, "ks", None) else k,  # grid: every point sets k; the base takes the first
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
    _check_sae_kwargs(cfg)
    return cfg, SyntheticStreamConfig(n_features=a.n_features, data_seed=a.data_seed, n_chunks=a.n_chunks)


def sweep_grid(a: argparse.Namespace) -> list[dict[str, Any]]:
    """The cross product of --ks x --d-saes x seeds (seed offsets come from the member index)."""
    from sae_rdp_plugin.architectures import get_architecture

    ds = a.d_saes or [a.d_sae]
    if a.seeds < 1:
        raise SaeRdpError("--seeds must be >= 1")
    if not get_architecture(a.architecture).uses_k:  # no k to sweep (check_training_args refuses --k / --ks)
        return [{"d_sae": d} for d in ds for _ in range(a.seeds)]
    ks = a.ks or [a.k if a.k is not None else TrainConfig.k]
    return [{"k": k, "d_sae": d} for k in ks for d in ds for _ in range(a.seeds)]


#: what each subcommand writes directly into --out (besides the temporary names of sae_rdp_plugin.io)
TRAIN_NAMES = frozenset({"sae", "training_state.pt", "train_metrics.json", "checkpoints", ".sae.tmp"})
GRID_NAMES = frozenset({"sweep_results.json"})
SWEEP_NAMES = frozenset({"state.json", "results.json", "members", "groups", "ranks", ".sae-rdp.lock"})


def _json_has(path: Path, keys: tuple[str, ...]) -> bool:
    """``path`` is a JSON object holding every one of ``keys`` (how a command recognises its own file)."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and all(k in obj for k in keys)


def _is_train_out(p: Path) -> bool:
    """An earlier ``distributed train`` run, finished (its metrics) or killed (only its checkpoint folder:
    SAELens's ``<samples>`` folders and our ``latest.json``), holding nothing but its names."""
    if not _holds_only(p, TRAIN_NAMES):
        return False
    if _json_has(p / "train_metrics.json", ("world_size", "n_training_steps", "steps_run", "config")):
        return True
    ck = p / "checkpoints"
    return (
        not (p / "train_metrics.json").exists()
        and ck.is_dir()
        and _holds_only(ck, frozenset({"latest.json"}), lambda n: n.isdigit() or n.startswith("."))
    )


def _is_grid_out(p: Path) -> bool:
    ours = _json_has(p / "sweep_results.json", ("world_size", "members_per_s", "base", "members"))
    return ours and _holds_only(p, GRID_NAMES)


def _is_sweep_plot(name: str) -> bool:
    return name == "rdp_summary.json" or (name.startswith("rdp_") and name.endswith(".png"))


def _is_sweep_out(p: Path) -> bool:
    """An earlier ``distributed sweep``: merged (its state.json) or killed before the merge (only the rank
    folders, each with the state.json of ``train_sweep``), holding nothing but its names."""
    keys = ("config", "groups", "members")
    # (`sweep plot`, and `sweep run` unless --no-plots, write rdp_summary.json and rdp_*.png into a sweep folder)
    if not _holds_only(p, SWEEP_NAMES, _is_sweep_plot):
        return False
    if _json_has(p / "state.json", keys):
        return True
    ranks = p / "ranks"
    return (
        not (p / "state.json").exists()
        and ranks.is_dir()
        and any(_json_has(r / "state.json", ("config", "groups")) for r in ranks.glob("rank*"))
        and _holds_only(ranks, frozenset(), lambda n: n.startswith("rank") and n[4:].isdigit())
    )


def _holds_only(p: Path, names: frozenset[str], also: Callable[[str], bool] | None = None) -> bool:
    from sae_rdp_plugin.io import folder_holds_only

    return folder_holds_only(p, lambda n: n in names or (also is not None and also(n)))


def _check_out(ctx: Any, out: str, is_ours: Callable[[Path], bool]) -> None:
    """Rank 0 checks --out (:func:`sae_rdp_plugin.io.check_out_folder`) before anything is written; every
    rank raises its error (no rank waits for a peer that stopped)."""
    from sae_rdp_plugin.io import check_out_folder
    from sae_rdp_plugin.train.distributed import broadcast_object

    err = None
    if ctx.is_main:
        try:
            check_out_folder(out, is_ours)
        except SaeRdpError as exc:
            err = str(exc)
    err = broadcast_object(ctx, err)
    if err:
        raise SaeRdpError(err)


def run_train(a: argparse.Namespace) -> int:
    from sae_rdp_plugin.train.ddp import train_distributed
    from sae_rdp_plugin.train.distributed import destroy_distributed, init_distributed

    cfg, stream = config_from_args(a)
    ctx = init_distributed(a.device, a.backend, a.timeout_s)
    if not ctx.is_main:
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        _check_out(ctx, a.out, _is_train_out)
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

    check_process_args(a)
    cfg = load_config(a.config)
    if a.resume:
        from sae_rdp_plugin.sweep.train import check_resume_out

        check_resume_out(a.out)
    ctx = init_distributed(a.device, a.backend, a.timeout_s)
    try:
        _check_out(ctx, a.out, _is_sweep_out)
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
        _check_out(ctx, a.out, _is_grid_out)
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
