"""One SAE trained data-parallel over ``torch.distributed`` ranks with SAELens's own trainer.

:class:`DistributedSAETrainer` is a subclass of SAELens's ``SAETrainer`` whose model is wrapped in
``torch.nn.parallel.DistributedDataParallel``. With ``W`` ranks each drawing a distinct shard of ``B``
rows of the global batch ``X = [X_0; ...; X_{W-1}]`` (``W*B`` rows), every SAELens loss is a per-row
mean, ``L(X) = (1/WB) sum_i l(x_i)``, so

    grad L(X) = (1/W) sum_r grad L(X_r)          (DDP's all-reduce-mean of the rank gradients)

and the step (grad-norm clipping at 1.0, Adam, LR schedule) is the single-process step on ``X``.
The trainer's per-latent statistics are reduced so the next step sees the same state on all ranks:
``n_forward_passes_since_fired`` (the TopK/JumpReLU dead-latent mask) by MIN (a latent fired in the
global batch iff it fired on some rank), ``act_freq_scores`` by SUM; ``n_frac_active_samples`` and
``n_training_samples`` count global rows. BatchTopK's batch-level selection is made global
(:class:`GlobalBatchTopK`: the ``floor(k*W*B)``-th largest activation over all ranks is the cut-off) and
its running ``topk_threshold`` (an EMA of the batch's smallest kept activation) is reduced by MIN, which
is what one process sees on ``X``. The ``expected_average_only_in`` norm scale is
``sqrt(d_in) / mean ||x||`` over all ranks' rows (equal shard sizes, so the global mean is the mean of
rank means). Equal up to floating-point summation order: the tests bound the parameter difference after
a few steps by 1e-5 (float32).

SAELens 6.54's trainer applies no post-step decoder-norm constraint (the decoder norm enters through
``rescale_acts_by_decoder_norm`` inside the forward pass), so there is nothing further to reduce.
A WSAE's gamma is estimated from the union of the ranks' rows (or broadcast from rank 0 if set).

:func:`train_distributed` runs it end to end on the synthetic stream
(:class:`~sae_rdp_plugin.train.synthetic.ShardedSyntheticStream`) for a
:class:`~sae_rdp_plugin.train.config.TrainConfig`, with atomic checkpoints and resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.io import atomic_save, atomic_write_json, replace_dir
from sae_rdp_plugin.train.config import SyntheticStreamConfig, TrainConfig
from sae_rdp_plugin.train.distributed import DistContext, barrier, broadcast_object, mean_over_ranks
from sae_rdp_plugin.train.saelens import build_training_sae
from sae_rdp_plugin.train.synthetic import ShardedSyntheticStream, synthetic_model


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
                self.activation_scaler.scaling_factor = self.sae.cfg.d_in**0.5 / mean_over_ranks(self.ctx, local)
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
                replace_dir(tmp, final)
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


def build_sae(cfg: TrainConfig) -> Any:
    """A freshly initialised SAELens training SAE for ``cfg`` on ``cfg.device``, seeded by ``cfg.seed``
    (the global RNG state is left as it was, so every rank and a one-process run start identical)."""
    with torch.random.fork_rng(devices=[torch.device(cfg.device)] if cfg.device.startswith("cuda") else []):
        torch.manual_seed(cfg.seed)
        return build_training_sae(cfg.sae_config_dict())


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
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    ctx: DistContext,
    stream: SyntheticStreamConfig | None = None,
    resume: bool = True,
    warmup_steps: int = 0,
) -> dict[str, Any] | None:
    """Train one SAE data-parallel over the ranks of ``ctx`` on the synthetic stream ``stream`` (default
    :class:`SyntheticStreamConfig`); ``cfg.batch_size`` is the global batch, the SAE lives on
    ``ctx.device``. Rank 0 saves ``out_dir/sae`` (SAELens format, loadable with ``SAE.load_from_disk``),
    ``out_dir/training_state.pt`` (the training SAE's state dict) and ``out_dir/train_metrics.json``
    (returned on rank 0; None elsewhere). Checkpoints go to ``out_dir/checkpoints`` and a rerun resumes
    from the latest one (``resume=True``). ``samples_per_s`` counts all steps; ``steady_samples_per_s``
    those after ``warmup_steps``."""
    stream = stream or SyntheticStreamConfig()
    cfg.require_zero_b_dec("train_distributed (sae-rdp distributed train)")
    cfg = dataclasses.replace(cfg, device=ctx.device)
    out = Path(out_dir)
    ck_dir = out / "checkpoints"
    data_model = synthetic_model(cfg.d_in, stream.n_features, stream.data_seed, device=ctx.device)
    sae = build_sae(cfg)
    tcfg = cfg.trainer_config(str(ck_dir))
    start = latest_checkpoint(ck_dir) if resume else None
    start = broadcast_object(ctx, start)
    batches = ShardedSyntheticStream(data_model, cfg.batch_size, ctx, seed=stream.data_seed, n_chunks=stream.n_chunks)
    # SAETrainer draws the norm-estimate batches from the same stream before the first step
    n_est = tcfg.n_batches_for_norm_estimate if sae.cfg.normalize_activations == "expected_average_only_in" else 0
    timed = _TimedStream(batches, (0 if start is not None else n_est) + warmup_steps, ctx.device)
    trainer = DistributedSAETrainer(tcfg, sae, timed, ctx)
    if start is not None:
        trainer.load_checkpoint(start)
        batches.t = trainer.n_training_samples // cfg.batch_size + n_est
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
        replace_dir(tmp, sae_dir)
        atomic_save(
            out / "training_state.pt",
            lambda p: torch.save({k: v.detach().cpu() for k, v in trainer.sae.state_dict().items()}, p),
        )
        steps_run = trainer.n_training_steps - steps_before
        result = {
            "config": {**dataclasses.asdict(cfg), **dataclasses.asdict(stream)},
            "world_size": ctx.world_size,
            "backend": ctx.backend,
            "device": ctx.device,
            "device_name": torch.cuda.get_device_name(ctx.device) if ctx.device.startswith("cuda") else "cpu",
            "resumed_from": str(start) if start is not None else None,
            "steps_run": steps_run,
            "n_training_steps": trainer.n_training_steps,
            "n_training_samples": trainer.n_training_samples,
            "wall_s": wall,
            "samples_per_s": steps_run * cfg.batch_size / wall if wall > 0 else None,
            "warmup_steps": warmup_steps,
            "steady_samples_per_s": (steps_run - warmup_steps) * cfg.batch_size / (t_end - timed.t_mark)
            if timed.t_mark is not None and steps_run > warmup_steps
            else None,
            "dead_latents": int(trainer.dead_neurons.sum().item()),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(out / "train_metrics.json", result)
    barrier(ctx)
    return result
