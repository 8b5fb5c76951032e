"""A :mod:`sae_rdp_plugin.sweep` grid spread over the ranks of a ``torch.distributed`` job, group by group.

Each rank trains the groups :func:`assign_groups` gives it; rank 0 merges the rank folders into the
one-process layout, so every member's result equals a one-process ``train_sweep`` run's.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.io import atomic_save, atomic_write_json
from sae_rdp_plugin.sweep.config import SweepConfig, json_safe
from sae_rdp_plugin.sweep.members import group_members
from sae_rdp_plugin.sweep.train import load_results, train_sweep
from sae_rdp_plugin.train.distributed import DistContext, barrier, broadcast_object


def assign_groups(sizes: Sequence[int], world_size: int) -> list[int]:
    """Rank of each sweep group: greedy longest-processing-time (largest group first, to the least
    loaded rank; ties to the lower index). Deterministic: depends only on the sizes and world size."""
    load = [0] * world_size
    owner = [0] * len(sizes)
    for g in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        r = min(range(world_size), key=lambda j: (load[j], j))
        owner[g] = r
        load[r] += sizes[g]
    return owner


def train_sweep_distributed(
    cfg: SweepConfig, out_dir: str | os.PathLike, ctx: DistContext, resume: bool = False, progress: bool = True
) -> list[dict[str, Any]] | None:
    """:func:`sae_rdp_plugin.sweep.train.train_sweep` with its groups spread over the ranks.

    The grid, its groups and each group's index (which seeds the group's data stream) are the
    one-process ones (:func:`~sae_rdp_plugin.sweep.members.group_members`); rank ``r`` trains the groups
    :func:`assign_groups` gives it, via ``train_sweep(..., groups=mine)`` on its own folder
    ``out_dir/ranks/rank<r>``. Every member therefore sees the same initialisation, data and updates as
    in a one-process ``train_sweep`` (same config, same ``max_group_size``). Rank 0 then merges the rank
    folders into ``out_dir`` (``state.json``, ``members/``, ``groups/``, ``results.json``: the one-process
    layout, so ``load_results`` and ``export_member`` work on it). A rerun with ``resume=True`` continues
    each rank's groups from their checkpoints; without it, a rank folder left by an earlier run is an
    error, as in ``train_sweep``. Returns the results (grid order) on rank 0, None elsewhere.
    """
    cfg.validate()
    out = Path(out_dir)
    groups = group_members(cfg)
    owner = assign_groups([len(m) for _, m in groups], ctx.world_size)
    mine = [gid for (gid, _), r in zip(groups, owner) if r == ctx.rank]
    if ctx.is_main and len(groups) < ctx.world_size:
        print(
            f"[dist-sweep] warning: {len(groups)} group(s) for {ctx.world_size} ranks; some ranks idle "
            "(set max_group_size to split groups; results then match a one-process run with the same value)",
            file=sys.stderr,
            flush=True,
        )
    if ctx.is_main and (out / "state.json").exists() and not resume:
        err = f"{out} already holds a sweep: pass --resume (resume=True) or use a new folder"
    else:
        err = None
    err = broadcast_object(ctx, err)
    if err:
        raise SaeRdpError(err)
    import sae_lens.training.optim  # noqa: F401  (train_sweep imports SAELens lazily: keep it out of the timing)

    rank_dir = out / "ranks" / f"rank{ctx.rank}"
    t0 = time.perf_counter()
    status = "ok"
    try:
        train_sweep(cfg, rank_dir, device=ctx.device, resume=resume, progress=progress and bool(mine), groups=mine)
    except Exception as exc:  # reported on rank 0 after the barrier
        status = f"rank {ctx.rank}: {type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
    wall = time.perf_counter() - t0
    if ctx.distributed:
        statuses: list[Any] = [None] * ctx.world_size
        dist.all_gather_object(statuses, (status, wall))
    else:
        statuses = [(status, wall)]
    bad = [s for s, _ in statuses if s != "ok"]
    if bad:
        raise SaeRdpError(f"distributed sweep failed: {bad[0]}")
    if not ctx.is_main:
        barrier(ctx)
        return None
    try:
        cfg_dict = json_safe(cfg.to_dict())
        (out / "members").mkdir(parents=True, exist_ok=True)
        (out / "groups").mkdir(parents=True, exist_ok=True)
        merged = {"config": cfg_dict, "groups": {}, "members": {mb.member_id: gid for gid, mbs in groups for mb in mbs}}
        for (gid, mbs), r in zip(groups, owner):
            src = out / "ranks" / f"rank{r}"
            gstate = json.loads((src / "state.json").read_text())["groups"].get(gid, {})
            if gstate.get("status") != "done":
                raise SaeRdpError(f"group {gid} did not finish on rank {r}")
            merged["groups"][gid] = {**gstate, "rank": r}
            for f in (src / "groups").glob(f"{gid}.*"):
                atomic_save(out / "groups" / f.name, lambda p, f=f: shutil.copyfile(f, p))
            for mb in mbs:
                atomic_save(
                    out / "members" / f"{mb.member_id}.json",
                    lambda p, mb=mb, src=src: shutil.copyfile(src / "members" / f"{mb.member_id}.json", p),
                )
        atomic_write_json(out / "state.json", merged)
        results = load_results(out)
        atomic_write_json(
            out / "results.json",
            {
                "config": cfg_dict,
                "seconds": max(w for _, w in statuses),
                "world_size": ctx.world_size,
                "rank_seconds": [w for _, w in statuses],
                "group_rank": dict(zip([g for g, _ in groups], owner)),
                "members": results,
            },
        )
    finally:
        barrier(ctx)
    return results
