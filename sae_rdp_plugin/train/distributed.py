"""Multi-GPU training and sweeps on PyTorch's own distributed engine (``torch.distributed``).

Two things run under ``torchrun`` (one process per GPU; NCCL on CUDA, gloo on CPU):

* **Data-parallel training of one SAELens training SAE** (:class:`DistributedSAETrainer`, a subclass of
  SAELens's ``SAETrainer`` whose model is wrapped in ``torch.nn.parallel.DistributedDataParallel``).
  With ``W`` ranks each drawing a distinct shard of ``B`` rows of the global batch ``X = [X_0; ...; X_{W-1}]``
  (``W*B`` rows), every SAELens loss is a per-row mean, ``L(X) = (1/WB) sum_i l(x_i)``, so

      grad L(X) = (1/W) sum_r grad L(X_r)          (DDP's all-reduce-mean of the rank gradients)

  and the step (grad-norm clipping at 1.0, Adam, LR schedule) is the single-process step on ``X``.
  The trainer's per-latent statistics are reduced so the next step sees the same state on all ranks:
  ``n_forward_passes_since_fired`` (the TopK/JumpReLU dead-latent mask) by MIN (a latent fired in the
  global batch iff it fired on some rank), ``act_freq_scores`` by SUM; ``n_frac_active_samples`` and
  ``n_training_samples`` count global rows. BatchTopK's batch-level selection is made global (the
  ``floor(k*W*B)``-th largest activation over all ranks is the cut-off) and its running
  ``topk_threshold`` (an EMA of the batch's smallest kept activation) is reduced by MIN, which is what one
  process sees on ``X``. The ``expected_average_only_in`` norm scale is ``sqrt(d_in) / mean ||x||`` over
  all ranks' rows (equal shard sizes, so the global mean is the mean of rank means).
  Equal up to floating-point summation order: the tests bound the parameter difference after a few steps
  by 1e-5 (float32).

  SAELens 6.54's trainer applies no post-step decoder-norm constraint (the decoder norm enters through
  ``rescale_acts_by_decoder_norm`` inside the forward pass), so there is nothing further to reduce.
  A WSAE's gamma is estimated from the union of the ranks' rows (or broadcast from rank 0 if set).

* **Sweeps spread over ranks**: :func:`sae_rdp_plugin.sweep.distributed.train_sweep_distributed` runs a :mod:`sae_rdp_plugin.sweep.core`
  grid with its groups assigned to ranks (deterministic greedy assignment); :func:`run_partitioned`
  maps any callable over items (item ``i`` to rank ``i mod W``). Each member keeps the seeds and data
  of the one-process run, so its results are identical; results are gathered on rank 0 and written
  atomically there.

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

import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

for _var, _val in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")):
    os.environ.setdefault(_var, _val)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from sae_rdp_plugin.errors import SaeRdpError  # noqa: E402
from sae_rdp_plugin.io import atomic_save, atomic_write_json  # noqa: E402

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
    rank = int(os.environ.get("RANK", "0"))
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


def broadcast_object(ctx: DistContext, obj: T) -> T:
    """Rank 0's ``obj`` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --------------------------------------------------------------------------------------------------
# Sweeps: members partitioned over ranks
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


# --------------------------------------------------------------------------------------------------
# Data: a deterministic synthetic activation stream, sharded by rank
# --------------------------------------------------------------------------------------------------


class ShardedSyntheticStream:
    """Rank ``rank``'s shard of a deterministic stream of global batches of synthetic activations.

    Global batch ``t`` is the concatenation of ``n_chunks`` chunks of ``chunk_rows`` rows; chunk ``c``
    is drawn from SAELens's ``SyntheticModel`` (SynthSAEBench) under the seed ``(seed, t, c)``. A rank
    generates only its own contiguous run of ``n_chunks / world_size`` chunks, so the union over ranks
    is the same global batch for every world size that divides ``n_chunks`` (1, 2, 4, 8 for the default
    8 chunks), and a one-process run sees exactly the same rows.
    """

    def __init__(
        self,
        model: Any,
        global_batch: int,
        ctx: DistContext,
        seed: int = 0,
        n_chunks: int = 8,
        start_batch: int = 0,
    ) -> None:
        if global_batch % n_chunks:
            raise SaeRdpError(f"global batch {global_batch} is not divisible by n_chunks={n_chunks}")
        if n_chunks % ctx.world_size:
            raise SaeRdpError(f"n_chunks={n_chunks} is not divisible by the world size {ctx.world_size}")
        self.model, self.ctx, self.seed = model, ctx, seed
        self.chunk_rows = global_batch // n_chunks
        per_rank = n_chunks // ctx.world_size
        self.chunks = range(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)
        self.t = start_batch

    def batch(self, t: int) -> torch.Tensor:
        """This rank's rows of global batch ``t``."""
        parts = []
        dev = torch.device(self.ctx.device)
        devices = [dev] if dev.type == "cuda" else []
        for c in self.chunks:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed((self.seed * 1_000_003 + t) * 1009 + c)
                parts.append(self.model.sample(self.chunk_rows))
        return torch.cat(parts).to(dev)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        out = self.batch(self.t)
        self.t += 1
        return out


def synthetic_model(d_in: int, n_features: int, seed: int, device: str = "cpu") -> Any:
    """A SynthSAEBench ``SyntheticModel``: Zipfian firing probabilities, magnitudes ``1 +- 0.25``
    (a non-zero spread, so rows with the same firing features are not exact duplicates)."""
    from sae_lens.synthetic import SyntheticModel, SyntheticModelConfig

    mcfg = SyntheticModelConfig(num_features=n_features, hidden_dim=d_in, seed=seed, std_firing_magnitudes=0.25)
    return SyntheticModel(mcfg, device=device)


# --------------------------------------------------------------------------------------------------
# Data-parallel SAELens trainer
# --------------------------------------------------------------------------------------------------


class _TrainingForward(torch.nn.Module):
    """Module whose ``forward`` is the SAE's ``training_forward_pass`` (what DDP wraps)."""

    def __init__(self, sae: torch.nn.Module) -> None:
        super().__init__()
        self.sae = sae

    def forward(self, step_input: Any) -> Any:
        return type(self.sae).training_forward_pass(self.sae, step_input)


class GlobalBatchTopK(torch.nn.Module):
    """BatchTopK over the global batch: keep the ``n = floor(k * N)`` largest ReLU activations among
    the ``N`` rows of all ranks. Each rank sends its local top ``min(n, numel)`` values; the ``n``-th
    largest gathered value is the cut-off ``tau``; a rank keeps its activations ``> tau`` and, of those
    ``== tau``, as many as are still needed (ranks in order, then flat position), so exactly ``n``
    are kept. Equal to one process's ``torch.topk`` on the concatenated batch when the cut-off is not
    tied (torch leaves the order of ties unspecified)."""

    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acts = x.relu()
        world, rank = dist.get_world_size(), dist.get_rank()
        n_keep = int(self.k * acts.shape[:-1].numel() * world)
        flat = acts.detach().flatten()
        local_top = torch.topk(flat, min(n_keep, flat.numel())).values
        allv = [torch.empty_like(local_top) for _ in range(world)]
        dist.all_gather(allv, local_top)
        tau = torch.topk(torch.cat(allv), n_keep).values[-1]
        gt, eq = flat > tau, flat == tau
        counts = torch.stack([gt.sum(), eq.sum()])
        allc = [torch.empty_like(counts) for _ in range(world)]
        dist.all_gather(allc, counts)
        c = torch.stack(allc)
        take = (n_keep - c[:, 0].sum() - c[:rank, 1].sum()).clamp(min=0)
        keep = gt | (eq & (torch.cumsum(eq.long(), 0) <= take))
        return acts * keep.view_as(acts).to(acts.dtype)


def _is_batchtopk(module: Any) -> bool:
    from sae_lens.saes.batchtopk_sae import BatchTopK

    return isinstance(module, BatchTopK)


def _make_trainer_class() -> type:
    """Build the SAETrainer subclass lazily (keeps ``import sae_rdp_plugin.train.distributed`` light)."""
    from sae_lens.training.sae_trainer import SAETrainer

    class DistributedSAETrainer(SAETrainer):  # type: ignore[misc, valid-type]
        """SAELens's ``SAETrainer`` with data-parallel steps over a ``torch.distributed`` group.

        ``cfg`` describes the *global* run: ``train_batch_size_samples`` is the global batch (``W*B``)
        and ``total_training_samples`` the global sample count; ``data_provider`` yields this rank's
        ``B = global / W`` rows. Parameters are broadcast from rank 0 when the trainer is built
        (DDP), so all ranks start identical. Checkpoints are written by rank 0 only, atomically.
        """

        def __init__(
            self,
            cfg: Any,
            sae: Any,
            data_provider: Any,
            ctx: DistContext,
            ddp_kwargs: dict[str, Any] | None = None,
            **kwargs: Any,
        ) -> None:
            if cfg.train_batch_size_samples % ctx.world_size:
                raise SaeRdpError(
                    f"global batch {cfg.train_batch_size_samples} is not divisible by world size {ctx.world_size}"
                )
            if not ctx.is_main:
                cfg = dataclasses.replace(cfg, logger=dataclasses.replace(cfg.logger, log_to_wandb=False))
            self.ctx = ctx
            sae.to(cfg.device)
            super().__init__(cfg, sae, data_provider, **kwargs)
            self.ddp: torch.nn.Module | None = None
            if ctx.distributed:
                dev = torch.device(cfg.device)
                self.ddp = torch.nn.parallel.DistributedDataParallel(
                    _TrainingForward(sae),
                    device_ids=[dev.index] if dev.type == "cuda" else None,
                    **(ddp_kwargs or {}),  # e.g. find_unused_parameters=True for SAEs with unused parameters
                )
                if _is_batchtopk(getattr(sae, "activation_fn", None)):
                    sae.activation_fn = GlobalBatchTopK(sae.activation_fn.k)

        # -- data accounting: global rows -------------------------------------------------------
        def step(self, batch: torch.Tensor) -> Any:
            batch = batch.to(self.sae.device)
            self.n_training_samples += batch.shape[0] * self.ctx.world_size
            return self._train_step(sae=self.sae, sae_in=self.activation_scaler(batch))

        # -- one step: forward through DDP, then reduce the trainer's statistics ----------------
        @contextlib.contextmanager
        def _forward_through_ddp(self) -> Iterator[None]:
            if self.ddp is None:
                yield
                return
            ddp = self.ddp
            self.sae.training_forward_pass = lambda step_input: ddp(step_input)  # instance attribute
            try:
                yield
            finally:
                del self.sae.training_forward_pass

        def _train_step(self, sae: Any, sae_in: torch.Tensor) -> Any:
            if self.ctx.distributed and getattr(self.sae, "gamma_is_set", True) is False:
                # WSAE without a gamma: SAELens's one-process run estimates it from the first training
                # batch; here that batch is spread over the ranks, so gather it (rank order) first.
                parts = [torch.empty_like(sae_in) for _ in range(self.ctx.world_size)]
                dist.all_gather(parts, sae_in.detach().contiguous())
                self.sae._ensure_gamma(torch.cat(parts))
            old_freq = self.act_freq_scores.clone()
            with self._forward_through_ddp():
                out = super()._train_step(sae, sae_in)
            if self.ctx.distributed:
                with torch.no_grad():
                    dist.all_reduce(self.n_forward_passes_since_fired, op=dist.ReduceOp.MIN)
                    delta = self.act_freq_scores - old_freq
                    dist.all_reduce(delta, op=dist.ReduceOp.SUM)
                    self.act_freq_scores = old_freq + delta
                    thr = getattr(self.sae, "topk_threshold", None)
                    if isinstance(thr, torch.Tensor):
                        dist.all_reduce(thr, op=dist.ReduceOp.MIN)
            return out

        # -- norm estimate over all ranks ---------------------------------------------------------
        def fit(self) -> Any:
            norm = self.sae.cfg.normalize_activations
            if (
                self.ctx.distributed
                and self.activation_scaler.scaling_factor is None
                and norm == "expected_average_only_in"
            ):
                local = self.activation_scaler._calculate_mean_norm(
                    self.data_provider, self.cfg.n_batches_for_norm_estimate
                )
                t = torch.tensor([local], dtype=torch.float64, device=self.cfg.device)
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
                self.activation_scaler.scaling_factor = self.sae.cfg.d_in**0.5 / (t.item() / self.ctx.world_size)
            elif self.ctx.distributed and norm == "covariance_whitening":
                raise SaeRdpError("covariance_whitening is not supported in distributed training yet")
            if self.ctx.distributed and getattr(self.sae, "gamma_is_set", False):
                sync_gamma(self.sae, self.ctx)
            self.checkpoint_thresholds = [x for x in self.checkpoint_thresholds if x >= self.n_training_samples]
            try:
                return super().fit()
            finally:
                if isinstance(getattr(self.sae, "activation_fn", None), GlobalBatchTopK):
                    self.sae.activation_fn = self.sae.get_activation_fn()  # plain BatchTopK for inference

        # -- checkpoints: rank 0 writes, atomically -----------------------------------------------
        def save_checkpoint(self, checkpoint_name: str, base_path: Any = None, wandb_aliases: Any = None) -> None:
            base = base_path if base_path is not None else self.cfg.checkpoint_path
            if base is None:
                barrier(self.ctx)
                return
            if self.ctx.is_main:
                final = Path(base) / checkpoint_name
                tmp = Path(base) / f".{checkpoint_name}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                super().save_checkpoint(f".{checkpoint_name}.tmp", base_path=base, wandb_aliases=wandb_aliases)
                atomic_write_json(tmp / "rdp_dist_state.json", {"world_size": self.ctx.world_size})
                _replace_dir(tmp, final)
                atomic_write_json(Path(base) / "latest.json", {"checkpoint": checkpoint_name})
            barrier(self.ctx)

        def load_checkpoint(self, path: str | os.PathLike) -> None:
            """Resume from a checkpoint folder written by :meth:`save_checkpoint` (every rank reads it)."""
            self.sae.load_weights_from_checkpoint(path)
            self.load_trainer_state(path)
            # SAETrainer checkpoints from inside fit() after step() but before n_training_steps += 1,
            # so the stored step count is one short; the sample count is right.
            self.n_training_steps = self.n_training_samples // self.cfg.train_batch_size_samples

    return DistributedSAETrainer


def reduce_activation_stats(stats: Any, ctx: DistContext) -> Any:
    """Combine per-rank float64 ``ActivationStats`` (mean, population variance, n) into the stats of
    all ranks' samples together (Chan et al.'s parallel formula):
    ``N = sum n_r``, ``mu = sum n_r mu_r / N``, ``var = (sum n_r var_r + sum n_r (mu_r - mu)^2) / N``."""
    if not ctx.distributed:
        return stats
    parts: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(parts, (stats.n_samples, stats.mean.double().cpu(), stats.variance.double().cpu()))
    n = torch.tensor([float(p[0]) for p in parts], dtype=torch.float64)
    mu = torch.stack([p[1] for p in parts])
    var = torch.stack([p[2] for p in parts])
    total = n.sum()
    mean = (n[:, None] * mu).sum(0) / total
    variance = ((n[:, None] * var).sum(0) + (n[:, None] * (mu - mean) ** 2).sum(0)) / total
    return dataclasses.replace(
        stats,
        mean=mean,
        variance=variance,
        n_samples=int(total.item()),
        source=f"{stats.source} ({ctx.world_size} ranks)",
    )


def estimate_gamma_distributed(sae: Any, batches: Any, n_batches: int, ctx: DistContext) -> Any:
    """WSAE gamma from ``n_batches`` of this rank's batches, reduced over all ranks (equal to the
    one-process estimate on the union of the ranks' rows, up to float64 rounding); installs it on
    ``sae`` on every rank and returns the combined ``ActivationStats``."""
    from sae_rdp_plugin.wsae.gamma import estimate_activation_stats

    stats = reduce_activation_stats(estimate_activation_stats(batches, sae.cfg.d_in, n_batches), ctx)
    sae.set_gamma_from_stats(stats)
    return stats


def sync_gamma(sae: Any, ctx: DistContext) -> None:
    """Make every rank use rank 0's WSAE gamma (bit for bit, float64 master copy included)."""
    if not ctx.distributed:
        return
    g, src, stats = broadcast_object(ctx, (sae.gamma_float64.cpu(), sae._gamma_source, sae._gamma_stats))
    sae._install_gamma(g, src or "rank 0", stats)


_TRAINER_CLS: type | None = None


def DistributedSAETrainer(cfg: Any, sae: Any, data_provider: Any, ctx: DistContext, **kwargs: Any) -> Any:
    """Build a :class:`DistributedSAETrainer` (see ``_make_trainer_class``); signature as SAELens's
    ``SAETrainer(cfg, sae, data_provider)`` plus the :class:`DistContext`."""
    global _TRAINER_CLS
    if _TRAINER_CLS is None:
        _TRAINER_CLS = _make_trainer_class()
    return _TRAINER_CLS(cfg, sae, data_provider, ctx, **kwargs)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` to ``dst``, replacing an existing ``dst`` (rename-based, so ``dst`` is
    always either the old or the new complete checkpoint; an interrupted swap leaves ``dst.old``)."""
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    """The folder named by ``checkpoint_dir/latest.json`` (None when there is none)."""
    p = Path(checkpoint_dir) / "latest.json"
    if not p.exists():
        return None
    try:
        name = json.loads(p.read_text())["checkpoint"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise SaeRdpError(f"malformed checkpoint pointer {p}: {exc}") from exc
    ck = Path(checkpoint_dir) / name
    return ck if ck.is_dir() else None


# --------------------------------------------------------------------------------------------------
# One SAE, end to end
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DistTrainConfig:
    """A data-parallel run on the synthetic stream. ``batch`` is the global batch (all ranks)."""

    architecture: str = "topk"
    d_in: int = 64
    d_sae: int = 256
    k: float = 8
    sae_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    n_features: int = 512
    batch: int = 1024
    steps: int = 200
    lr: float = 3e-4
    seed: int = 0
    data_seed: int = 1
    n_chunks: int = 8
    n_checkpoints: int = 0
    dead_feature_window: int = 1000
    feature_sampling_window: int = 2000
    normalize_activations: str = "none"
    autocast: bool = False


def build_sae(cfg: DistTrainConfig, device: str) -> Any:
    """A freshly initialised SAELens training SAE of ``cfg.architecture`` (any registered training
    architecture, including the plugin's ``weighted_*``), seeded by ``cfg.seed``."""
    from sae_lens.registry import get_sae_training_class

    import sae_rdp_plugin  # noqa: F401  (registers weighted_* architectures)

    try:
        sae_cls, cfg_cls = get_sae_training_class(cfg.architecture)
    except KeyError as exc:
        raise SaeRdpError(f"unknown training architecture {cfg.architecture!r}") from exc
    names = {f.name for f in dataclasses.fields(cfg_cls)}
    kw: dict[str, Any] = {
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "device": device,
        "normalize_activations": cfg.normalize_activations,
    }
    if "k" in names:
        kw["k"] = cfg.k if cfg.architecture.endswith("batchtopk") else int(cfg.k)
    unknown = set(cfg.sae_kwargs) - names
    if unknown:
        raise SaeRdpError(f"unknown config fields for {cfg.architecture}: {sorted(unknown)}")
    kw.update(cfg.sae_kwargs)
    with torch.random.fork_rng(devices=[torch.device(device)] if device.startswith("cuda") else []):
        torch.manual_seed(cfg.seed)
        sae = sae_cls(cfg_cls(**kw))
    return sae


def trainer_config(cfg: DistTrainConfig, device: str, checkpoint_path: str | None) -> Any:
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    return SAETrainerConfig(
        total_training_samples=cfg.batch * cfg.steps,
        train_batch_size_samples=cfg.batch,
        lr=cfg.lr,
        lr_end=cfg.lr,
        device=device,
        autocast=cfg.autocast,
        dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=cfg.feature_sampling_window,
        n_checkpoints=cfg.n_checkpoints,
        checkpoint_path=checkpoint_path,
        save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=4,
    )


class _TimedStream:
    """Pass-through iterator that notes the (device-synchronised) time of its ``mark``-th ``next``."""

    def __init__(self, inner: Any, mark: int, device: str) -> None:
        self.inner, self.mark, self.device, self.calls, self.t_mark = inner, mark, device, 0, None

    def __iter__(self) -> _TimedStream:
        return self

    def __next__(self) -> torch.Tensor:
        if self.calls == self.mark:
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            self.t_mark = time.perf_counter()
        self.calls += 1
        return next(self.inner)


def train_distributed(
    cfg: DistTrainConfig, out_dir: str | os.PathLike, ctx: DistContext, resume: bool = True, warmup_steps: int = 0
) -> dict[str, Any] | None:
    """Train one SAE data-parallel over the ranks of ``ctx``; rank 0 saves ``out_dir/sae`` (SAELens
    format, loadable with ``SAE.load_from_disk``), ``out_dir/training_state.pt`` (the training SAE's
    state dict) and ``out_dir/train_metrics.json`` (returned on rank 0; None elsewhere). Checkpoints go
    to ``out_dir/checkpoints`` and a rerun resumes from the latest one (``resume=True``).
    ``samples_per_s`` counts all steps; ``steady_samples_per_s`` those after ``warmup_steps``."""
    out = Path(out_dir)
    ck_dir = out / "checkpoints"
    if cfg.steps < 1 or cfg.batch < 1:
        raise SaeRdpError("steps and batch must be positive")
    data_model = synthetic_model(cfg.d_in, cfg.n_features, cfg.data_seed, device=ctx.device)
    sae = build_sae(cfg, ctx.device)
    tcfg = trainer_config(cfg, ctx.device, str(ck_dir))
    start = latest_checkpoint(ck_dir) if resume else None
    start = broadcast_object(ctx, start)
    stream = ShardedSyntheticStream(data_model, cfg.batch, ctx, seed=cfg.data_seed, n_chunks=cfg.n_chunks)
    n_est = tcfg.n_batches_for_norm_estimate if cfg.normalize_activations == "expected_average_only_in" else 0
    timed = _TimedStream(stream, (0 if start is not None else n_est) + warmup_steps, ctx.device)
    trainer = DistributedSAETrainer(tcfg, sae, timed, ctx)
    if start is not None:
        trainer.load_checkpoint(start)
        stream.t = trainer.n_training_samples // cfg.batch + n_est
    steps_before = trainer.n_training_steps
    if ctx.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    trainer.fit()
    if ctx.device.startswith("cuda"):
        torch.cuda.synchronize()
    t_end = time.perf_counter()
    wall = t_end - t0
    result = None
    if ctx.is_main:
        sae_dir = out / "sae"
        tmp = out / ".sae.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        trainer.sae.save_inference_model(str(tmp))
        _replace_dir(tmp, sae_dir)
        atomic_save(
            out / "training_state.pt",
            lambda p: torch.save({k: v.detach().cpu() for k, v in trainer.sae.state_dict().items()}, p),
        )
        steps_run = trainer.n_training_steps - steps_before
        result = {
            "config": dataclasses.asdict(cfg),
            "world_size": ctx.world_size,
            "backend": ctx.backend,
            "device": ctx.device,
            "device_name": torch.cuda.get_device_name(ctx.device) if ctx.device.startswith("cuda") else "cpu",
            "resumed_from": str(start) if start is not None else None,
            "steps_run": steps_run,
            "n_training_steps": trainer.n_training_steps,
            "n_training_samples": trainer.n_training_samples,
            "wall_s": wall,
            "samples_per_s": steps_run * cfg.batch / wall if wall > 0 else None,
            "warmup_steps": warmup_steps,
            "steady_samples_per_s": (steps_run - warmup_steps) * cfg.batch / (t_end - timed.t_mark)
            if timed.t_mark is not None and steps_run > warmup_steps
            else None,
            "dead_latents": int(trainer.dead_neurons.sum().item()),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(out / "train_metrics.json", result)
    barrier(ctx)
    return result


# --------------------------------------------------------------------------------------------------
# A sweep of small SAEs, members spread over ranks
# --------------------------------------------------------------------------------------------------


def _sweep_member(base: DistTrainConfig, device: str) -> Callable[[int, dict[str, Any]], dict[str, Any]]:
    """The per-member job of :func:`sweep_distributed`: one process trains one SAE on the full batch
    (world size 1 inside the member), seeded by ``base.seed + i``, and reports MSE / L0 / explained
    variance on a held-out synthetic batch."""

    def run(i: int, overrides: dict[str, Any]) -> dict[str, Any]:
        mcfg = dataclasses.replace(base, seed=base.seed + i, **overrides)
        solo = DistContext(0, 1, 0, device, None)
        data_model = synthetic_model(mcfg.d_in, mcfg.n_features, mcfg.data_seed, device=device)
        sae = build_sae(mcfg, device)
        trainer = DistributedSAETrainer(
            trainer_config(mcfg, device, None),
            sae,
            ShardedSyntheticStream(data_model, mcfg.batch, solo, mcfg.data_seed, mcfg.n_chunks),
            solo,
        )
        t0 = time.perf_counter()
        trainer.fit()
        wall = time.perf_counter() - t0
        held = ShardedSyntheticStream(data_model, mcfg.batch, solo, mcfg.data_seed + 10_000, mcfg.n_chunks).batch(0)
        with torch.no_grad():
            s = trainer.sae
            s.eval()
            acts = s.encode(held)
            rec = s.decode(acts)
            err = (rec - held).pow(2).sum(-1)
            var = (held - held.mean(0)).pow(2).sum(-1)
        return {
            "member": i,
            "seed": mcfg.seed,
            "overrides": overrides,
            "mse": err.mean().item(),
            "explained_variance": 1.0 - err.mean().item() / var.mean().item(),
            "l0": (acts > 0).float().sum(-1).mean().item(),
            "wall_s": wall,
        }

    return run


def sweep_distributed(
    base: DistTrainConfig, grid: list[dict[str, Any]], out_dir: str | os.PathLike, ctx: DistContext
) -> list[dict[str, Any]] | None:
    """Train one SAE per grid point (``dataclasses.replace(base, **grid[i])``, seed ``base.seed+i``),
    members round-robin over ranks; rank 0 writes ``out_dir/sweep_results.json`` atomically and
    returns the member results in grid order."""
    t0 = time.perf_counter()
    results = run_partitioned(grid, _sweep_member(base, ctx.device), ctx)
    wall = time.perf_counter() - t0
    if ctx.is_main:
        assert results is not None
        atomic_write_json(
            Path(out_dir) / "sweep_results.json",
            {
                "world_size": ctx.world_size,
                "device": ctx.device,
                "wall_s": wall,
                "members_per_s": len(grid) / wall if wall > 0 else None,
                "base": dataclasses.asdict(base),
                "members": results,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            },
        )
    return results
