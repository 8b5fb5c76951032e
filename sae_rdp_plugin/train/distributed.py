"""Multi-GPU work on PyTorch's own distributed engine (``torch.distributed``): the process group and
the partitioning of items over ranks.

Under ``torchrun`` (one process per GPU; NCCL on CUDA, gloo on CPU) :func:`init_distributed` joins the
group and returns this process's :class:`DistContext`; without torchrun it is world size 1 and every
helper here is a no-op or a plain loop. :func:`run_partitioned` maps a callable over items, item ``i``
on rank ``i mod W``, and gathers the results on rank 0.

Built on it: :mod:`sae_rdp_plugin.train.ddp` (one SAE trained data-parallel with SAELens's trainer),
:mod:`sae_rdp_plugin.train.grid` (a grid of SAELens-trainer SAEs, members over ranks) and
:mod:`sae_rdp_plugin.sweep.distributed` (a batched sweep, its groups over ranks).

Environment defaults (set at import, only where unset): ``NCCL_NVLS_ENABLE=0`` and
``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``. NVLink SHARP / multicast objects are a host-wide resource of
the NVSwitch fabric; a job that dies while holding them (or several jobs on a shared machine requesting
them) can leave the GPUs unable to create new multicast groups until an administrator resets the
fabric, which puts a shared machine out of service for everyone. All-reduce of SAE gradients does not
need them.

CLI (torchrun convention: the module is the program, ``--nproc_per_node`` the GPU count)::

    torchrun --standalone --nproc_per_node 4 -m sae_rdp_plugin distributed train --out runs/d --steps 2000
    torchrun --standalone --nproc_per_node 4 -m sae_rdp_plugin distributed sweep --config sweep.json --out runs/s
    torchrun --standalone --nproc_per_node 4 -m sae_rdp_plugin distributed grid --out runs/g --ks 8,16,32

Without torchrun the same commands run as one process (world size 1).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

for _var, _val in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")):
    os.environ.setdefault(_var, _val)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from sae_rdp_plugin.errors import SaeRdpError  # noqa: E402
from sae_rdp_plugin.io import atomic_write_json  # noqa: E402

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_TIMEOUT_S = 600.0

# --------------------------------------------------------------------------------------------------
# Process group
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``; ``device`` it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()


def init_distributed(
    device: str = "auto", backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> DistContext:
    """Join the process group described by torchrun's env vars (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT); a plain ``python`` run (no WORLD_SIZE) is world size 1 without a group.

    ``device='auto'`` picks ``cuda:LOCAL_RANK`` when CUDA is available, else CPU; the backend is NCCL on
    CUDA and gloo on CPU unless given. ``timeout_s`` bounds every collective, so a dead peer makes the
    others fail instead of hanging.
    """
    for var, val in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")):
        os.environ.setdefault(var, val)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{local}"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SaeRdpError(f"device {device!r} requested but CUDA is not available")
        torch.cuda.set_device(dev)
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if world <= 1:
        return DistContext(0, 1, 0, str(dev), None)
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "timeout": datetime.timedelta(seconds=timeout_s)}
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    return DistContext(dist.get_rank(), dist.get_world_size(), local, str(dev), backend)


def destroy_distributed() -> None:
    """Leave the process group (no-op when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        if ctx.backend == "nccl":
            dist.barrier(device_ids=[torch.device(ctx.device).index or 0])
        else:
            dist.barrier()


def mean_over_ranks(ctx: DistContext, value: float) -> float:
    """The mean of ``value`` over the ranks (float64 all-reduce); ``value`` itself without a group."""
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device if ctx.backend == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.item() / ctx.world_size


def broadcast_object(ctx: DistContext, obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --------------------------------------------------------------------------------------------------
# Items partitioned over ranks
# --------------------------------------------------------------------------------------------------


def partition(n_items: int, world_size: int, rank: int) -> list[int]:
    """Indices of the items rank ``rank`` runs: ``i`` with ``i mod world_size == rank`` (round-robin,
    deterministic, independent of timing; balanced to within one item)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise SaeRdpError(f"bad rank {rank} for world size {world_size}")
    return list(range(rank, n_items, world_size))


def run_partitioned(
    items: Sequence[T],
    fn: Callable[[int, T], R],
    ctx: DistContext,
    out_path: str | os.PathLike | None = None,
    to_json: Callable[[list[R]], Any] | None = None,
) -> list[R] | None:
    """Run ``fn(i, items[i])`` for this rank's share of the items; gather all results on rank 0.

    Returns the results in item order on rank 0 and None on the other ranks. ``fn`` must seed itself
    from the item (not from the rank), so a member's result does not depend on the world size.
    A failure on any rank is reported on rank 0 as one SaeRdpError naming the item (no rank hangs:
    every rank reaches the gather). With ``out_path`` rank 0 writes ``to_json(results)`` (default: the
    list itself) atomically.
    """
    mine = partition(len(items), ctx.world_size, ctx.rank)
    local: list[tuple[int, str, Any]] = []
    for i in mine:
        try:
            local.append((i, "ok", fn(i, items[i])))
        except Exception as exc:  # reported on rank 0, after the gather
            local.append((i, "error", f"{type(exc).__name__}: {exc}"))
            traceback.print_exc(file=sys.stderr)
            break
    if ctx.distributed:
        gathered: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
        dist.gather_object(local, gathered, dst=0)
    else:
        gathered = [local]
    failed = False
    if ctx.is_main:
        assert gathered is not None
        flat = sorted((t for part in gathered for t in part), key=lambda t: t[0])
        errors = [t for t in flat if t[1] == "error"]
        failed = bool(errors)
    failed = broadcast_object(ctx, failed)
    if failed:
        if ctx.is_main:
            i, _, msg = errors[0]
            raise SaeRdpError(f"sweep member {i} failed: {msg}")
        raise SaeRdpError("a sweep member failed on another rank (see rank 0)")
    if not ctx.is_main:
        barrier(ctx)
        return None
    results = [t[2] for t in flat]
    if len(results) != len(items):
        raise SaeRdpError(f"gathered {len(results)} results for {len(items)} sweep members")
    if out_path is not None:
        atomic_write_json(out_path, to_json(results) if to_json else results)
    barrier(ctx)
    return results
