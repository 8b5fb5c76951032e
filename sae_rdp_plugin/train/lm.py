"""Training SAEs on language-model activations: one activation stream, several SAEs, in lockstep.

:func:`train_saes` takes any iterator of batch dicts ``{hook: [batch_size, d_in] tensor}`` and trains
every :class:`SAESpec` on it: each SAE is a SAELens training SAE
(:func:`~sae_rdp_plugin.train.saelens.build_training_sae`) driven by its own SAELens ``SAETrainer``
(:meth:`~sae_rdp_plugin.train.config.TrainConfig.trainer_config`, with the fast step of
:mod:`sae_rdp_plugin.fast.step` when ``fast``), and one batch dict serves every SAE of its hook.
:class:`SteppedFit` is ``SAETrainer.fit`` cut at its loop: :meth:`~SteppedFit.start` (what precedes the
loop), :meth:`~SteppedFit.step` (one pass of the loop body) and :meth:`~SteppedFit.finish` (what
follows it), so the driver, not the trainer, draws the batches.

The stream is consumed in this order (the order of :func:`~sae_rdp_plugin.train.saelens.train_synthetic`
and of SAELens's own runner):

1. gamma of weighted SAEs: a streaming float64 pass over the first ``gamma_estimation_batches`` batches
   (Chan/Welford, :class:`~sae_rdp_plugin.wsae.gamma.RunningMoments`),
   gamma_i = max(s_i, floor * mean(s))^alpha / sqrt(mean(gamma^2)) with s_i the variance of dimension i;
2. activation normalisation (``normalize_activations``), from the next ``n_batches_for_norm_estimate``, and
   ``b_dec_init="mean"`` from the same batches (drawn for it alone when there is no normalisation):
   b_dec = (1/n) sum_t s(x_t), the float64 mean of the normalised rows, set before the fast step is
   installed (resumed runs keep their checkpoint's b_dec);
3. training: ``ceil(tokens / batch_size)`` batches, each stepping every SAE once.

:func:`train_on_model` feeds it from :class:`sae_rdp_plugin.lm.pipeline.ActivationPipeline` (a model's
activations, several hooks from one forward). Held-out metrics, on ``heldout_batches`` batches of a
second stream, are those of :func:`sae_rdp_plugin.rdp.metrics.rate_distortion` on the saved SAE::

    FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2,   L0 = E ||z||_0,
    dead fraction = #{latents never non-zero on the held-out rows} / d_sae.

Each SAE is written to a temporary sibling of its ``out`` folder (checkpoints included) and renamed into
place at the end; an ``out`` that exists, is not empty and is not an earlier sae-rdp training output is
refused before anything runs.

Data-parallel over ``torch.distributed`` ranks (``ctx``, a
:class:`~sae_rdp_plugin.train.distributed.DistContext` of world size W > 1): ``batch_size`` is the global
batch and each rank's stream yields its ``batch_size / W`` rows (:func:`train_on_model` gives rank r the
token rows r, r + W, ...); each SAE is stepped by
:func:`~sae_rdp_plugin.train.ddp.DistributedSAETrainer` (DDP gradient all-reduce, dead-latent counters
reduced; :mod:`sae_rdp_plugin.train.ddp` gives the math), gamma comes from the moments of all ranks' rows
(Chan's parallel formula), the normalisation from the mean of the ranks' mean norms and a mean b_dec from
the all-reduced row sums and counts, so the run equals one process on the concatenated batches up to
summation order. The fast step runs there for TopK SAEs with
its PyTorch kernels and a gradient all-reduce (the Triton step fuses the gradient into Adam: no all-reduce
point); other architectures take SAELens's step under DDP. Rank 0 alone evaluates and writes.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae_rdp_plugin.errors import SaeRdpError, exc_line
from sae_rdp_plugin.io import atomic_write_json
from sae_rdp_plugin.rdp.metrics import rate_distortion
from sae_rdp_plugin.train.config import TrainConfig
from sae_rdp_plugin.train.distributed import DistContext, barrier, broadcast_object, mean_over_ranks
from sae_rdp_plugin.train.saelens import build_training_sae
from sae_rdp_plugin.wsae.gamma import GAMMA_FILENAME, ActivationStats, RunningMoments

__all__ = [
    "SAESpec",
    "SteppedFit",
    "train_saes",
    "train_on_model",
    "batches_before_training",
    "grid_specs",
    "dataset_tokens",
    "sae_name",
    "check_out_dir",
    "write_summary",
    "SUMMARY_FORMAT",
    "latest_checkpoint",
]

#: "format" of train_summary.json / summary.json written here (marks a folder as an sae-rdp output)
SUMMARY_FORMAT = "sae-rdp lm training v1"
#: the progress bar, the NaN check and wandb are refreshed when this many seconds have passed
REFRESH_S = 0.5
#: losses kept on the device between two refreshes (a refresh is forced when the buffer is full)
_LOSS_BUFFER = 1024


@dataclass
class SAESpec:
    """One SAE to train: on ``hook``'s activations, described by ``cfg``, saved to ``out``.

    ``cfg.d_in`` must equal the stream's width at ``hook``; ``cfg.tokens`` is replaced by the run's token
    budget (one stream, one budget). ``name`` (default: the last part of ``out``) labels the SAE in the
    progress bar, errors, wandb and the summaries."""

    hook: str
    cfg: TrainConfig
    out: str | Path
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or Path(self.out).name


# ------------------------------------------------------------------------------------ SAETrainer.fit, by steps


class SteppedFit:
    """SAELens's ``SAETrainer.fit``, one step at a time.

    ``fit()`` is ``start(); while not done: step(next(data)); finish()``, with the batches drawn by the
    caller instead of the trainer: :meth:`start` is what ``fit`` does before its loop, :meth:`step` one
    pass of its loop body (sparsity-window reset, ``trainer.step``, checkpoint, step count) and
    :meth:`finish` what it does after the loop (normalisation folded into the weights, final metadata).
    wandb and the progress bar are the caller's: :attr:`sparsity_log` holds the window statistics
    ``fit`` would log at this step."""

    def __init__(self, trainer: Any, standardize: bool = False) -> None:
        self.trainer = trainer
        #: ``TrainConfig.normalize_activations="standardize"``: the SAE's config says ``covariance_whitening``
        #: and :meth:`start` sets a diagonal whitening (per-dimension standardisation) instead of SAELens's PCA one
        self.standardize = standardize
        self.sparsity_log: dict[str, Any] = {}

    @property
    def done(self) -> bool:
        """``fit``'s loop condition: ``total_training_samples`` rows seen."""
        t = self.trainer
        return t.n_training_samples >= t.cfg.total_training_samples

    @property
    def norm_batches(self) -> int:
        """Batches :meth:`start` needs for the activation normalisation (0: none)."""
        t = self.trainer
        mode = t.sae.cfg.normalize_activations
        if (mode == "expected_average_only_in" and t.activation_scaler.scaling_factor is None) or (
            mode == "covariance_whitening" and t.activation_scaler.whitening is None
        ):
            return int(t.cfg.n_batches_for_norm_estimate)
        return 0

    def start(self, norm_batches: Iterable[torch.Tensor] = ()) -> None:
        """Before the loop: the SAE onto the trainer's device, and the normalisation that
        ``normalize_activations`` asks for estimated from ``norm_batches`` (``norm_batches`` of them)."""
        t = self.trainer
        t.sae.to(t.cfg.device)
        n = self.norm_batches
        if n == 0:
            return
        kw = {"d_in": t.sae.cfg.d_in, "data_provider": iter(norm_batches), "n_batches_for_norm_estimate": n}
        if self.standardize:
            t.activation_scaler.whitening = standardization(itertools.islice(iter(norm_batches), n))
        elif t.sae.cfg.normalize_activations == "expected_average_only_in":
            t.activation_scaler.estimate_scaling_factor(**kw)
        else:
            t.activation_scaler.estimate_whitening(**kw)

    def step(self, batch: torch.Tensor) -> Any:
        """One pass of the loop on a raw activation batch; returns SAELens's ``TrainStepOutput``."""
        t = self.trainer
        self.sparsity_log = t.maybe_reset_sparsity()
        out = t.step(batch)
        t._checkpoint_if_needed()
        t.n_training_steps += 1
        return out

    def finish(self) -> Any:
        """After the loop: the estimated normalisation folded into the weights, the final metadata
        (L0 and dead latents of the last sparsity window) recorded; returns the SAE."""
        t = self.trainer
        self.sparsity_log = t.full_sparsity_window_log()
        scaler = t.activation_scaler
        if scaler.scaling_factor is not None:
            t.sae.fold_activation_norm_scaling_factor(scaler.scaling_factor)
            scaler.scaling_factor = None
        if scaler.whitening is not None:
            w = scaler.whitening
            t.sae.fold_activation_whitening(mean=w.mean, whitening_matrix=w.matrix, unwhitening_matrix=w.inverse_matrix)
            scaler.whitening = None
        t.set_final_sae_metadata()
        return t.sae


def scale_threshold_lr(trainer: Any, scale: float) -> None:
    """Give a JumpReLU SAE's ``threshold`` its own Adam group at ``scale`` x lr. SAELens's ``SAETrainer``
    builds one Adam group over every parameter and a scheduler on it; both are rebuilt the same way
    (SAELens's Adam arguments, ``get_lr_scheduler`` with the trainer's config), with the threshold in group 1.
    The scheduler's warm-up / decay factors multiply each group's initial lr alike, so the ratio holds
    throughout (for the constant and linear schedules; SAELens's cosine schedules have an absolute floor).
    Called before a checkpoint's trainer state is loaded (its Adam state has the same two groups)."""
    from sae_lens.training.optim import get_lr_scheduler
    from torch.optim import Adam

    named = dict(trainer.sae.named_parameters())
    if "threshold" not in named:
        raise SaeRdpError("threshold_lr_scale: the SAE has no threshold parameter")
    c = trainer.cfg
    rest = [p for n, p in named.items() if n != "threshold"]
    groups = [{"params": rest}, {"params": [named["threshold"]], "lr": c.lr * scale}]
    trainer.optimizer = Adam(groups, lr=c.lr, betas=(c.adam_beta1, c.adam_beta2))
    trainer.lr_scheduler = get_lr_scheduler(
        c.lr_scheduler_name,
        lr=c.lr,
        optimizer=trainer.optimizer,
        warm_up_steps=c.lr_warm_up_steps,
        decay_steps=c.lr_decay_steps,
        training_steps=c.total_training_steps,
        lr_end=c.lr_end,
        num_cycles=c.n_restart_cycles,
    )


@torch.no_grad()
def standardization(batches: Iterable[torch.Tensor], eps: float = 1e-3) -> Any:
    """Per-dimension standardisation as SAELens's ``ActivationWhitening`` (z = (x - mean) @ matrix):
    mean_i and var_i (unbiased) in float64 over the rows of ``batches`` (:class:`RunningMoments`, the streaming
    moments gamma uses), matrix = diag(1 / sqrt(var_i + eps)), inverse_matrix = diag(sqrt(var_i + eps));
    ``eps`` as SAELens's ``estimate_whitening`` adds to the covariance eigenvalues."""
    from sae_lens.training.activation_scaler import ActivationWhitening

    moments: RunningMoments | None = None
    for b in batches:
        moments = moments or RunningMoments(b.shape[-1])
        moments.update(b)
    if moments is None or moments.n < 2:
        raise SaeRdpError("normalize_activations='standardize' needs at least two rows to estimate a variance")
    sd = (moments.m2 / (moments.n - 1) + eps).sqrt().cpu()
    return ActivationWhitening(mean=moments.mean.cpu(), matrix=torch.diag(1.0 / sd), inverse_matrix=torch.diag(sd))


# ------------------------------------------------------------------------------------ output folders


def check_out_dir(out: str | Path) -> Path:
    """``out`` as a Path if a training run may write it: it does not exist, is an empty folder, or holds an
    earlier sae-rdp training output (``train_summary.json``, or a ``summary.json`` of this module) and nothing
    else than the names training writes (:func:`sae_rdp_plugin.train.saelens.is_train_run`), which is replaced
    at the end; it and its nearest existing parent are writable. Anything else raises SaeRdpError; nothing is
    written or deleted here."""
    from sae_rdp_plugin.train.saelens import check_out_path, check_run_folder, is_train_run

    p = check_out_path(out)
    if p.exists() and not p.is_dir():
        raise SaeRdpError(f"output {p} exists and is not a folder")
    if p.is_dir() and any(p.iterdir()) and not is_train_run(p):
        raise SaeRdpError(f"output folder {p} is not empty and holds no sae-rdp training run; choose another --out")
    return check_run_folder(p)


def _staging_dir(out: Path) -> Path:
    """A fresh hidden sibling of ``out`` (not created here: only checkpoints or the final save create it)."""
    return out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.partial"


def _publish(staging: Path, out: Path) -> None:
    """Rename the finished ``staging`` folder to ``out`` (an earlier sae-rdp output there is replaced)."""
    from sae_rdp_plugin.io import replace_dir

    check_out_dir(out)
    replace_dir(staging, out)


#: files a complete SAETrainer checkpoint holds (a folder killed while being written lacks some)
_CHECKPOINT_FILES = ("cfg.json", "sae_weights.safetensors", "trainer_state.pt", "activation_scaler.json")


def latest_checkpoint(out: str | Path) -> tuple[Path, Path, int] | None:
    """The newest complete checkpoint an interrupted run of ``out`` left: (its staging folder, the checkpoint
    folder, the training samples it holds), or None. Checkpoints live in the hidden staging sibling
    ``.<out>.<id>.partial/checkpoints/<samples>/`` that an unfinished run keeps."""
    out = Path(out)
    best: tuple[Path, Path, int] | None = None
    for st in out.parent.glob(f".{out.name}.*.partial"):
        for ck in (st / "checkpoints").glob("*"):
            if ck.name.isdigit() and all((ck / f).is_file() for f in _CHECKPOINT_FILES):
                if best is None or int(ck.name) > best[2]:
                    best = (st, ck, int(ck.name))
    return best


def _finite_or_none(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def write_summary(out: str | Path, results: list[dict], **extra: Any) -> Path:
    """``out/summary.json`` of a run of several SAEs: ``{"format", **extra, "saes": results}``."""
    return atomic_write_json(Path(out) / "summary.json", {"format": SUMMARY_FORMAT, **extra, "saes": results})


def sae_name(cfg: TrainConfig) -> str:
    """A folder name for one SAE of a sweep: ``<architecture>-d<d_sae>[-k<k>][-a<alpha>]``."""
    a = cfg.arch
    name = f"{a.name}-d{cfg.d_sae}"
    if a.uses_k:
        name += f"-k{cfg.k:g}"
    if a.weighted:
        name += f"-a{1.0 if cfg.alpha is None else cfg.alpha:g}"
    return name


def grid_specs(hooks: list[str], cfgs: list[TrainConfig], out: str | Path) -> list[SAESpec]:
    """One SAE per (hook, cfg). A single SAE is saved in ``out`` itself; several go to
    ``out/<hook>/<sae_name(cfg)>/`` (write their :func:`write_summary` to ``out``). Duplicates raise."""
    out = Path(out)
    if len(hooks) == 1 and len(cfgs) == 1:
        return [SAESpec(hooks[0], cfgs[0], out, sae_name(cfgs[0]))]
    names = [sae_name(c) for c in cfgs]
    if len(set(names)) != len(names) or len(set(hooks)) != len(hooks):
        raise SaeRdpError(f"duplicate SAEs in the sweep: hooks {hooks}, SAEs {names}")
    return [SAESpec(h, c, out / h / n, n) for h in hooks for c, n in zip(cfgs, names)]


# ------------------------------------------------------------------------------------ the stream


class _Stream:
    """The caller's batch iterator, checked: every hooked tensor present, [rows, d_in]."""

    def __init__(self, batches: Iterator[Any], d_in: dict[str, int]) -> None:
        self.it = batches
        self.d_in = d_in
        self.n = 0
        self.wait_s = 0.0

    def next(self, what: str, rows: int | None = None) -> Mapping[str, torch.Tensor]:
        t0 = time.perf_counter()
        try:
            b = next(self.it)
        except StopIteration:
            raise SaeRdpError(f"the activation stream ended after {self.n} batches, during {what}") from None
        self.wait_s += time.perf_counter() - t0
        self.n += 1
        return self.check(b, rows)

    def check(self, b: Any, rows: int | None = None) -> Mapping[str, torch.Tensor]:
        if not isinstance(b, Mapping):
            raise SaeRdpError(f"the activation stream must yield {{hook: tensor}} dicts, got {type(b).__name__}")
        for hook, d in self.d_in.items():
            x = b.get(hook)
            if x is None:
                raise SaeRdpError(f"hook {hook!r} is not in the activation stream (it has {sorted(b)})")
            if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != d:
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise SaeRdpError(f"d_in mismatch at {hook}: the SAE config says d_in={d}, the stream gives {shape}")
            if rows is not None and x.shape[0] != rows:
                raise SaeRdpError(f"{hook} batch {self.n} has {x.shape[0]} rows, the SAEs' batch_size is {rows}")
        return b


def _forward_seconds(stats: Any) -> float | None:
    """The stream's model-forward seconds so far (first forward, with its compilation, included), if it
    reports them (``stats["forward_seconds"]`` of an ActivationPipeline)."""
    if not isinstance(stats, Mapping) or "forward_seconds" not in stats:
        return None
    return float(stats["forward_seconds"]) + float(stats.get("first_forward_seconds", 0.0))


# ------------------------------------------------------------------------------------ one SAE of the run


# the keys of FastTopKTrainer.aux_stats, None in the report of an SAE on SAELens's step
AUX_STATS_KEYS = (
    "aux_steps_by_width",
    "aux_widths_in_order",
    "first_steps_s_by_width",
    "first_steps_profile_by_width",
    "mean_dead_fraction_aux_steps",
    "aux_warm",
    "cuda_graph_failed",
)


class _Clock:
    """Seconds of one SAE's steps: ``timer()`` differences when a timer is given, CUDA events on CUDA
    (read at each refresh, after the sync the refresh does anyway), else perf_counter."""

    def __init__(self, timer: Callable[[], float] | None, device: torch.device) -> None:
        self.timer = timer
        self.cuda = timer is None and device.type == "cuda"
        self.seconds = 0.0
        self.pending: list[tuple[Any, Any]] = []

    def begin(self) -> Any:
        if self.timer is not None:
            return self.timer()
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def end(self, token: Any) -> None:
        if self.timer is not None:
            self.seconds += self.timer() - token
        elif self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.pending.append((token, ev))
        else:
            self.seconds += time.perf_counter() - token

    def collect(self) -> float:
        for a, b in self.pending:
            b.synchronize()
            self.seconds += a.elapsed_time(b) / 1000.0
        self.pending.clear()
        return self.seconds


class _Run:
    """One SAE being trained: its SAE, trainer, staging folder, step clock and loss buffer."""

    def __init__(
        self,
        spec: SAESpec,
        cfg: TrainConfig,
        timer: Callable[[], float] | None,
        ctx: DistContext | None = None,
        resume: bool = False,
    ) -> None:
        from sae_lens.training.sae_trainer import SAETrainer

        self.spec, self.cfg, self.hook, self.name = spec, cfg, spec.hook, spec.label
        self.out = Path(spec.out)
        found = latest_checkpoint(self.out) if resume else None
        # SAETrainer creates the staging folder for a checkpoint, _save at the end; rank 0's checkpoint and
        # staging name on every rank (rank 0 writes)
        staging = found[0] if found else _staging_dir(self.out)
        if ctx is not None:
            found, staging = broadcast_object(ctx, (found, staging))
        self.resumed_from = str(found[1]) if found else None
        self.staging = staging
        torch.manual_seed(cfg.seed)
        self.sae = build_training_sae(cfg.sae_config_dict())
        ckpt = str(self.staging / "checkpoints") if cfg.n_checkpoints > 0 else None
        if ctx is not None and ctx.distributed:
            from sae_rdp_plugin.train.ddp import DistributedSAETrainer

            self.trainer = DistributedSAETrainer(cfg.trainer_config(ckpt), self.sae, iter(()), ctx)
        else:
            self.trainer = SAETrainer(cfg=cfg.trainer_config(ckpt), sae=self.sae, data_provider=iter(()))
        if cfg.threshold_lr_scale != 1.0:
            if ctx is not None and ctx.distributed:
                raise SaeRdpError("threshold_lr_scale is not supported in distributed training yet")
            scale_threshold_lr(self.trainer, cfg.threshold_lr_scale)
        if found:
            t = self.trainer
            self.sae.load_weights_from_checkpoint(found[1])  # weighted SAEs: their gamma too, bit for bit
            t.load_trainer_state(found[1])  # Adam, schedules, counters, activation scaling
            # saved inside the loop before the step count moved: the count follows from the samples
            t.n_training_steps = t.n_training_samples // cfg.batch_size
            t.checkpoint_thresholds = [x for x in t.checkpoint_thresholds if x > t.n_training_samples]
        self.fit = SteppedFit(self.trainer, standardize=cfg.normalize_activations == "standardize")
        #: batches the b_dec mean needs before training (0: b_dec stays as built, or as the checkpoint holds it)
        self.mean_batches = cfg.n_batches_for_norm_estimate if cfg.b_dec_init == "mean" and not found else 0
        self.clock = _Clock(timer, torch.device(cfg.device))
        self.fast_step: Any = None  # the FastTopKTrainer when the fast step is installed
        self.losses: torch.Tensor | None = None
        self.n_buffered = 0
        self.checked_steps = 0
        self.last_loss = float("nan")
        self.last_l0 = float("nan")

    @property
    def fast(self) -> bool:
        return self.fast_step is not None

    @property
    def where(self) -> str:
        return f"SAE {self.name!r} (hook {self.hook})"

    def step(self, x: torch.Tensor) -> Any:
        token = self.clock.begin()
        out = self.fit.step(x)
        self.clock.end(token)
        loss = out.loss.detach()
        if self.losses is None:
            self.losses = torch.empty(_LOSS_BUFFER, dtype=torch.float32, device=loss.device)
        self.losses[self.n_buffered].copy_(loss)
        self.n_buffered += 1
        if self.n_buffered == _LOSS_BUFFER:
            self.check()
        return out

    def check(self) -> None:
        """Read the buffered losses (a device sync): NaN/Inf raise naming the step; the last loss and the
        L0 of the current sparsity window are kept for the progress bar."""
        if self.n_buffered:
            vals = self.losses[: self.n_buffered].tolist()
            for i, v in enumerate(vals):
                if not math.isfinite(v):
                    raise SaeRdpError(f"loss is {v} for {self.where} at step {self.checked_steps + i}")
            self.checked_steps += self.n_buffered
            self.n_buffered = 0
            self.last_loss = vals[-1]
        t = self.trainer
        if t.n_frac_active_samples > 0:
            self.last_l0 = float(t.act_freq_scores.sum()) / t.n_frac_active_samples
        self.clock.collect()


# ------------------------------------------------------------------------------------ the driver


def _check_specs(specs: list[SAESpec], tokens: int) -> tuple[int, dict[str, int]]:
    if not specs:
        raise SaeRdpError("no SAEs to train (specs is empty)")
    if any(not isinstance(s, SAESpec) or not isinstance(s.cfg, TrainConfig) for s in specs):
        raise SaeRdpError("specs must be SAESpec(hook, TrainConfig, out) objects")
    sizes = {s.cfg.batch_size for s in specs}
    if len(sizes) != 1:
        raise SaeRdpError(f"SAEs trained from one stream share its batch size; got batch_size {sorted(sizes)}")
    (batch_size,) = sizes
    try:
        tokens = operator.index(tokens)
    except TypeError:
        raise SaeRdpError(f"tokens must be an integer, got {tokens!r}") from None
    if tokens < batch_size:
        raise SaeRdpError(f"tokens ({tokens}) must be at least one batch ({batch_size} rows)")
    d_in: dict[str, int] = {}
    for s in specs:
        if d_in.setdefault(s.hook, s.cfg.d_in) != s.cfg.d_in:
            raise SaeRdpError(f"d_in mismatch: SAEs of hook {s.hook} have d_in {d_in[s.hook]} and {s.cfg.d_in}")
    outs = [Path(s.out).resolve() for s in specs]
    if len(set(outs)) != len(outs):
        raise SaeRdpError("two SAEs have the same out folder")
    for s in specs:
        check_out_dir(s.out)
    return batch_size, d_in


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise SaeRdpError("wandb_project needs wandb: pip install wandb") from None
    return wandb


@torch.no_grad()
def _gamma_pass(runs: list[_Run], stream: _Stream, ctx: DistContext | None = None) -> int:
    """gamma of each weighted SAE without one, from the first ``gamma_estimation_batches`` batches of its
    hook (one float64 pass; SAEs of a hook with the same batch count share it). Returns batches drawn."""
    todo = [r for r in runs if r.cfg.arch.weighted and not r.sae.gamma_is_set]
    if not todo:
        return 0
    moments = {(r.hook, r.cfg.gamma_estimation_batches): RunningMoments(r.cfg.d_in) for r in todo}
    n_max = max(n for _, n in moments)
    for i in range(n_max):
        b = stream.next("the gamma estimation")
        for (hook, n), m in moments.items():
            if i < n:
                try:
                    m.update(b[hook])
                except SaeRdpError as exc:
                    raise SaeRdpError(f"{hook}, gamma batch {i}: {exc}") from None
    for r in todo:
        m = moments[(r.hook, r.cfg.gamma_estimation_batches)]
        stats = ActivationStats(m.mean.cpu(), m.variance.cpu(), m.n, source=f"activation stream {r.hook}")
        if ctx is not None and ctx.distributed:
            from sae_rdp_plugin.train.ddp import reduce_activation_stats

            stats = reduce_activation_stats(stats, ctx)  # the moments of all ranks' rows
        r.sae.set_gamma_from_stats(stats)
    return n_max


@torch.no_grad()
def _init_b_dec(r: _Run, xs: list[torch.Tensor], ctx: DistContext | None = None) -> None:
    """b_dec <- (1/n) sum_t s(x_t) over the n rows of ``xs`` (of all ranks), s the run's normalisation: the
    trainer's activation scaler, then the SAE's run-time input normalisation (identity unless
    ``constant_norm_rescale`` / ``layer_norm``), in float64."""
    sae, scaler = r.sae, r.trainer.activation_scaler
    acc = torch.zeros(r.cfg.d_in + 1, dtype=torch.float64, device=sae.b_dec.device)  # [row sum, row count]
    for x in xs:
        u = sae.run_time_activation_norm_fn_in(scaler.scale(x.to(device=acc.device, dtype=torch.float64)))
        acc[:-1] += u.sum(0)
        acc[-1] += u.shape[0]
    if ctx is not None and ctx.distributed:  # as mean_over_ranks: one float64 all-reduce, same result everywhere
        import torch.distributed as dist

        acc = acc.to(ctx.device if ctx.backend == "nccl" else "cpu")
        dist.all_reduce(acc)
    sae.b_dec.copy_((acc[:-1] / acc[-1]).to(sae.b_dec.device, sae.b_dec.dtype))


def _side_streams(runs: list[_Run], wanted: bool) -> list[Any] | None:
    """One CUDA stream per SAE when asked for, there are several SAEs and they train on CUDA; else None."""
    devices = {torch.device(r.cfg.device) for r in runs}
    if not wanted or len(runs) < 2 or len(devices) != 1:
        return None
    dev = devices.pop()
    if dev.type != "cuda":
        return None
    return [torch.cuda.Stream(dev) for _ in runs]


def _step_all(runs: list[_Run], batch: Mapping[str, torch.Tensor], side: list[Any] | None) -> None:
    """One step of every SAE on ``batch``: one after the other, or each on its own stream of ``side`` after
    the work already queued for the batch (the forward, the shuffle), all joined before returning so that the
    pipeline may reuse the batch's memory."""
    if side is None:
        for r in runs:
            r.step(batch[r.hook])
        return
    cur = torch.cuda.current_stream()
    for r, st in zip(runs, side):
        st.wait_stream(cur)
        x = batch[r.hook]
        x.record_stream(st)  # allocated on cur, read on st: the allocator must not hand it out before st is done
        with torch.cuda.stream(st):
            r.step(x)
    for st in side:
        cur.wait_stream(st)


def _check_fast_options(fast_options: Mapping[str, Any] | None) -> None:
    """Unknown FastTopKConfig fields (or ones train_saes sets itself) fail before anything runs."""
    from sae_rdp_plugin.fast.step import FIELDS_FROM_SAE, FastTopKConfig

    allowed = {f.name for f in dataclasses.fields(FastTopKConfig)} - FIELDS_FROM_SAE
    bad = sorted(set(fast_options or {}) - allowed)
    if bad:
        raise SaeRdpError(f"fast_options: unknown fast-step option(s) {bad} (FastTopKConfig fields: {sorted(allowed)})")


def _start(
    runs: list[_Run],
    stream: _Stream,
    fast: bool,
    ctx: DistContext | None = None,
    fast_options: Mapping[str, Any] | None = None,
) -> int:
    """fit()'s preamble for every SAE, from shared normalisation batches; b_dec <- the mean normalised row
    for ``b_dec_init="mean"`` (same batches); then the fast step. Returns the batches drawn. Over several
    ranks the scaling factor sqrt(d_in) / mean||x|| uses the mean of the ranks' mean norms (equal shard
    sizes: the mean over all rows)."""
    from sae_rdp_plugin.fast.step import install_fast_step

    if ctx is not None and ctx.distributed and any(r.fit.standardize and r.fit.norm_batches for r in runs):
        raise SaeRdpError("normalize_activations='standardize' is not supported in distributed training yet")
    n_norm = max(max(r.fit.norm_batches, r.mean_batches) for r in runs)
    cached = []
    for _ in range(n_norm):  # a few batches, copied: the stream may reuse its buffers
        cached.append({h: x.clone() for h, x in stream.next("the normalisation estimate").items() if h in stream.d_in})
    for r in runs:
        n = r.fit.norm_batches  # (0 once start() has estimated the normalisation)
        r.fit.start([b[r.hook] for b in cached[:n]])
        scaler = r.trainer.activation_scaler
        if ctx is not None and n and scaler.scaling_factor is not None:  # sqrt(d_in) / (mean norm over ranks)
            scaler.scaling_factor = r.cfg.d_in**0.5 / mean_over_ranks(ctx, r.cfg.d_in**0.5 / scaler.scaling_factor)
        if ctx is not None and ctx.distributed and getattr(r.sae, "gamma_is_set", False):
            from sae_rdp_plugin.train.ddp import sync_gamma

            sync_gamma(r.sae, ctx)  # bit-identical gamma on every rank
        if r.mean_batches:  # after the normalisation (its space), before the fast step attaches to the SAE
            _init_b_dec(r, [b[r.hook] for b in cached[: r.mean_batches]], ctx)
        if fast:
            r.fast_step = install_fast_step(r.trainer, ctx=ctx, **dict(fast_options or {}))
    return n_norm


@torch.no_grad()
def _heldout(runs: list[_Run], heldout: Iterable[Any] | None, n_batches: int) -> dict[str, torch.Tensor]:
    """The held-out rows per hook (``n_batches`` batches of the held-out stream, fewer if it ends)."""
    if heldout is None or n_batches <= 0:
        return {}
    it = iter(heldout)
    stream = _Stream(it, {r.hook: r.cfg.d_in for r in runs})
    xs: dict[str, list[torch.Tensor]] = {h: [] for h in stream.d_in}
    for _ in range(n_batches):
        b = next(it, None)
        if b is None:
            break
        for h, x in stream.check(b).items():
            if h in xs:  # copied: the stream may reuse its buffers
                xs[h].append(x.detach().to(torch.float32, copy=True))
    if not xs or not next(iter(xs.values())):
        raise SaeRdpError("the held-out stream yielded no batches")
    return {h: torch.cat(v) for h, v in xs.items()}


class _Progress:
    """tqdm bar over tokens with tokens/s, loss and L0, and optional wandb logging, at each refresh."""

    def __init__(self, total: int, runs: list[_Run], enabled: bool, wandb: Any) -> None:
        from tqdm.auto import tqdm

        desc = runs[0].name if len(runs) == 1 else f"{len(runs)} SAEs"
        self.bar = tqdm(total=total, unit="tok", unit_scale=True, desc=desc, disable=not enabled, mininterval=0)
        self.runs, self.wandb = runs, wandb
        self.t0 = self.last = time.perf_counter()
        self.shown = 0

    def due(self) -> bool:
        return time.perf_counter() - self.last >= REFRESH_S

    def refresh(self, tokens: int, step: int) -> None:
        for r in self.runs:
            r.check()
        now = time.perf_counter()
        self.last = now
        rate = tokens / max(now - self.t0, 1e-9)
        loss = sum(r.last_loss for r in self.runs) / len(self.runs)
        l0 = sum(r.last_l0 for r in self.runs) / len(self.runs)
        self.bar.set_postfix({"tok/s": f"{rate:,.0f}", "loss": f"{loss:.4g}", "L0": f"{l0:.1f}"}, refresh=False)
        self.bar.update(tokens - self.shown)
        self.shown = tokens
        if self.wandb is not None:
            log: dict[str, Any] = {"tokens": tokens, "tokens_per_s": rate}
            for r in self.runs:
                key = f"{r.hook}/{r.name}"
                log[f"{key}/loss"] = r.last_loss
                log[f"{key}/l0"] = r.last_l0
                log[f"{key}/dead_fraction"] = float(r.trainer.dead_neurons.float().mean())
            self.wandb.log(log, step=step)


def batches_before_training(specs: Sequence[SAESpec]) -> int:
    """The batches :func:`train_saes` draws from its stream before the first training step of a fresh run: gamma of
    the weighted SAEs without a gamma file (the largest ``gamma_estimation_batches``), then the normalisation
    estimate and b_dec mean (the largest ``n_batches_for_norm_estimate`` among the SAEs that need one)."""
    gamma = [s.cfg.gamma_estimation_batches for s in specs if s.cfg.arch.weighted and not s.cfg.gamma_path]
    norm = [
        s.cfg.n_batches_for_norm_estimate
        for s in specs
        if s.cfg.normalize_activations != "none" or s.cfg.b_dec_init == "mean"
    ]
    return max(gamma, default=0) + max(norm, default=0)


def train_saes(
    batches: Iterable[Mapping[str, torch.Tensor]],
    specs: list[SAESpec],
    *,
    tokens: int,
    fast: bool = True,
    heldout: Iterable[Mapping[str, torch.Tensor]] | None = None,
    heldout_batches: int = 8,
    progress: bool = True,
    wandb_project: str | None = None,
    timer: Callable[[], float] | None = None,
    notes: dict[str, Any] | None = None,
    ctx: DistContext | None = None,
    resume: bool = False,
    fast_options: Mapping[str, Any] | None = None,
    sae_streams: bool = False,
) -> list[dict]:
    """Train every SAE of ``specs`` on one stream of ``{hook: [batch_size, d_in]}`` batches, in lockstep.

    ``tokens`` rows train every SAE (``ceil(tokens / batch_size)`` SAETrainer steps; it replaces each
    ``cfg.tokens``); all specs share ``cfg.batch_size``, the rows of each batch. Before training, gamma
    of weighted SAEs and the activation normalisation come from the same stream (module docstring).
    ``fast`` installs :func:`sae_rdp_plugin.fast.step.install_fast_step` where it applies, with
    ``fast_options`` (fields of :class:`~sae_rdp_plugin.fast.step.FastTopKConfig`, e.g.
    ``{"aux_compact": "off"}``) over its defaults. ``sae_streams`` (CUDA, several SAEs): each SAE steps on a
    CUDA stream of its own, all of them on the same batch, joined before the next batch, so that the steps of
    small SAEs overlap on the GPU (the same kernels, so the same results; on other devices it changes nothing).
    Its first GPU run (benchmarks/e2e, four SAEs) hit a NaN loss at step 4, which graphs captured on one shared
    stream explain (they share a cuBLAS workspace; each graph now has its own capture stream); the GPU tests of
    the fix pass (tests/train/test_sae_streams.py, marked gpu). Off by default: with many SAEs each stream keeps
    its own memory pool, which a caller that needs the card's memory afterwards (SAEBench's core eval after a
    table2 T stage) would not get back, and that is not measured. Its ``sae_step_s`` then sums overlapping
    intervals. ``heldout`` (another stream of the same hooks) gives each SAE's held-out FVU, L0 and dead
    fraction on ``heldout_batches`` batches. ``timer`` (a clock in seconds,
    e.g. a synchronising perf_counter) times each SAE step; without one, CUDA events on CUDA. When
    ``batches`` has a ``stats`` dict with ``forward_seconds`` (an
    :class:`~sae_rdp_plugin.lm.pipeline.ActivationPipeline`), that is the forward time; otherwise the time
    spent waiting for the next batch.

    Each SAE is saved stock-loadable in ``spec.out`` (``cfg.json``, ``sae_weights.safetensors``,
    ``gamma.safetensors`` for weighted ones, ``train_summary.json``, ``checkpoints/`` if any). Returns
    one dict per SAE (the contents of its ``train_summary.json``): tokens, steps, seconds,
    tokens_per_s, the time split ``forward_s`` / ``sae_step_s`` (this SAE) / ``sae_steps_s`` (all) /
    ``other_s`` of the training loop, ``train_dead_fraction`` (latents silent for more than
    ``dead_feature_window`` steps at the end), ``heldout_fvu`` / ``heldout_l0`` / ``heldout_dead_fraction``,
    the stream's own ``stats`` under ``stream`` (the pipeline's epochs, forwards, ...) and ``notes``.

    ``ctx`` (world size W > 1): data-parallel over the ranks (module docstring); ``batch_size`` is the
    global batch, each rank's ``batches`` yield ``batch_size / W`` rows, the fast step (TopK) all-reduces its
    gradients (PyTorch kernels, see :func:`~sae_rdp_plugin.fast.step.install_fast_step`), and only rank 0
    evaluates ``heldout``, writes the SAEs, shows progress and logs to wandb; every rank returns rank 0's
    results.

    ``resume``: every SAE continues from the newest complete checkpoint its interrupted run left
    (:func:`latest_checkpoint`; weights, gamma, Adam state, schedules, dead-latent counters and activation
    scaling restored, the remaining steps drawn from ``batches``); all SAEs must hold one at the same sample
    count, else SaeRdpError.
    """
    t_start = time.perf_counter()
    specs = list(specs)
    batch_size, d_in = _check_specs(specs, tokens)
    _check_fast_options(fast_options)
    distributed = ctx is not None and ctx.distributed
    main = not distributed or ctx.is_main
    rows = batch_size
    if distributed:
        if batch_size % ctx.world_size:
            raise SaeRdpError(f"batch_size {batch_size} is not divisible by the world size {ctx.world_size}")
        rows = batch_size // ctx.world_size
    wandb = _import_wandb() if wandb_project and main else None
    stats = getattr(batches, "stats", None)
    runs: list[_Run] = []
    try:
        for s in specs:
            runs.append(_Run(s, dataclasses.replace(s.cfg, tokens=tokens), timer, ctx, resume))
        if resume:
            at = {r.name: r.trainer.n_training_samples if r.resumed_from else None for r in runs}
            if None in at.values() or len(set(at.values())) != 1:
                raise SaeRdpError(f"cannot resume: the SAEs' newest checkpoints are at samples {at} (need one each)")
        stream = _Stream(iter(batches), d_in)
        n_gamma = _gamma_pass(runs, stream, ctx)
        n_norm = _start(runs, stream, fast, ctx, fast_options)
        if wandb is not None:
            try:
                wandb.init(
                    project=wandb_project, config={f"{r.hook}/{r.name}": dataclasses.asdict(r.cfg) for r in runs}
                )
            except wandb.Error as exc:  # not logged in, bad project name, ...
                line = exc_line(exc)
                raise SaeRdpError(f"--wandb-project {wandb_project}: wandb refused to start ({line})") from None
        bar = _Progress(tokens, runs, progress and main, wandb)
        fwd0, wait0 = (_forward_seconds(stats) if stream.n else 0.0), stream.wait_s
        loop_t0 = time.perf_counter()
        seen = step = 0
        side = _side_streams(runs, sae_streams)
        while not runs[0].fit.done:
            b = stream.next("training", rows=rows)
            _step_all(runs, b, side)
            for r in runs:
                if wandb is not None and r.fit.sparsity_log:
                    wandb.log({f"{r.hook}/{r.name}/{k}": v for k, v in r.fit.sparsity_log.items()}, step=step)
            seen += batch_size
            step += 1
            if bar.due():
                bar.refresh(min(seen, tokens), step)
        bar.refresh(min(seen, tokens), step)
        bar.bar.close()
        loop_s = time.perf_counter() - loop_t0
        fwd1 = _forward_seconds(stats)
        forward_s = fwd1 - (fwd0 or 0.0) if fwd1 is not None else stream.wait_s - wait0
        steps_s = sum(r.clock.seconds for r in runs)
        for r in runs:
            r.fit.finish()
        if not main:  # rank 0 evaluates and writes; the others wait for it and return its results
            barrier(ctx)
            return broadcast_object(ctx, None)
        held = _heldout(runs, heldout, heldout_batches)
        common = {
            "format": SUMMARY_FORMAT,
            "train_seconds": round(loop_s, 4),
            "tokens_per_s": round(seen / loop_s, 1),
            "forward_s": round(forward_s, 4),
            "sae_steps_s": round(steps_s, 4),
            "other_s": round(max(0.0, loop_s - forward_s - steps_s), 4),
            "data_wait_s": round(stream.wait_s - wait0, 4),
            "gamma_batches": n_gamma,
            "norm_batches": n_norm,
            "stream_batches": stream.n,
            "n_saes": len(runs),
            "sae_streams": side is not None,
        }
        if isinstance(stats, Mapping):
            common["stream"] = {k: v for k, v in stats.items() if isinstance(v, (bool, int, float, str))}
            if "epochs" in common["stream"]:
                common["epochs"] = round(float(common["stream"]["epochs"]), 4)
        common.update(notes or {})
        results = []
        for r in runs:
            res = _save(r, held, common, seen)
            res["seconds"] = round(time.perf_counter() - t_start, 3)
            atomic_write_json(r.staging / "train_summary.json", res)
            results.append(res)
        for r in runs:
            _publish(r.staging, r.out)
        if wandb is not None:
            wandb.log({f"{r['hook']}/{r['name']}/heldout_fvu": r["heldout_fvu"] for r in results})
            wandb.finish()
        if distributed:
            barrier(ctx)
            broadcast_object(ctx, results)
        return results
    except BaseException:
        for r in runs:  # staging folders are ours (rank 0 writes them); keep those holding checkpoints
            if main and r.staging.exists() and not (r.staging / "checkpoints").exists():
                shutil.rmtree(r.staging, ignore_errors=True)
        raise


@torch.no_grad()
def _save(r: _Run, held: dict[str, torch.Tensor], common: dict[str, Any], seen: int) -> dict[str, Any]:
    """Save the inference SAE into the staging folder, reload it with stock SAELens and evaluate that."""
    from sae_lens import SAE

    r.staging.mkdir(parents=True, exist_ok=True)
    # where the SAE reads, in SAELens's own metadata fields (SAEBench and the audit group by them)
    md = r.sae.cfg.metadata
    md.hook_name = r.hook
    md.b_dec_init = r.cfg.b_dec_init
    for key in ("model_name", "context_size", "prepend_bos"):
        if common.get(key) is not None:
            setattr(md, key, common[key])
    r.sae.save_inference_model(r.staging)
    res: dict[str, Any] = {
        "name": r.name,
        "hook": r.hook,
        "out": str(r.out),
        "architecture": r.cfg.architecture,
        "d_in": r.cfg.d_in,
        "d_sae": r.cfg.d_sae,
        "k": r.cfg.k if r.cfg.arch.uses_k else None,
        "alpha": r.sae.cfg.alpha if r.cfg.arch.weighted else None,
        "variance_cap_quantile": r.cfg.variance_cap_quantile if r.cfg.arch.weighted else None,
        "batch_size": r.cfg.batch_size,
        "lr": r.cfg.lr,
        "b_dec_init": r.cfg.b_dec_init,
        "normalize_activations": r.cfg.normalize_activations,
        "threshold_lr_scale": r.cfg.threshold_lr_scale,
        # (batch)topk's dead-latent aux loss weight as the trained SAE holds it (sae_kwargs may set it; 0: no aux loss)
        "aux_loss_coefficient": getattr(r.sae.cfg, "aux_loss_coefficient", None),
        "fast_step": r.fast,
        # the fast step's deterministic mode (sorted sums: bit-identical reruns on one GPU; docs/fast_training.md)
        "fast_deterministic": bool(r.fast_step.cfg.deterministic) if r.fast else None,
        "tokens": int(r.trainer.n_training_samples),
        "steps": int(r.trainer.n_training_steps),
        "final_loss": _finite_or_none(r.last_loss),
        "train_l0": _finite_or_none(r.last_l0),
        # latents that had not fired for dead_feature_window steps at the end: those the aux loss trains (its
        # cost depends on how many there are: benchmarks/training_speed/aux_compact/)
        "train_dead_fraction": float(r.trainer.dead_neurons.float().mean()),
        "sae_step_s": round(r.clock.seconds, 4),
        # fast step: its steps per padded width of the aux selection and mean dead fraction (FastTopKTrainer.aux_stats)
        **(r.fast_step.aux_stats() if r.fast else dict.fromkeys(AUX_STATS_KEYS)),
        # BatchTopK on the fast step: steps whose per-row candidates could miss a selected latent, redone with the
        # exact dense selection (each costs a dense top-k over the batch)
        "batchtopk_dense_fallback_steps": (
            int(r.fast_step.n_inexact_batchtopk_fallbacks) if r.fast and r.fast_step.cfg.kind == "batchtopk" else None
        ),
        "resumed_from": r.resumed_from,
        **common,
        "gamma_file": str(r.out / GAMMA_FILENAME) if r.cfg.arch.weighted else None,
    }
    x = held.get(r.hook)
    if x is not None:
        sae = SAE.load_from_disk(r.staging, device=r.cfg.device)
        rd = rate_distortion(sae, x.to(device=r.cfg.device, dtype=sae.W_dec.dtype))
        res.update(
            heldout_fvu=_finite_or_none(1.0 - rd.explained_variance),
            heldout_l0=rd.rate,
            heldout_dead_fraction=rd.dead_latents / r.cfg.d_sae,
            heldout_tokens=rd.n_samples,
        )
    else:
        res.update(heldout_fvu=None, heldout_l0=None, heldout_dead_fraction=None, heldout_tokens=0)
    return res


def train_on_model(
    model: Any,
    tokens: Any,
    pipeline_cfg: Any,
    specs: list[SAESpec],
    *,
    heldout_tokens: Any = None,
    bos_token_id: int | None = None,
    pad_token_id: int | None = None,
    fast: bool = True,
    progress: bool = True,
    wandb_project: str | None = None,
    heldout_batches: int = 8,
    notes: dict[str, Any] | None = None,
    ctx: DistContext | None = None,
    resume: bool = False,
) -> list[dict]:
    """Train ``specs`` on a language model's activations: an
    :class:`~sae_rdp_plugin.lm.pipeline.ActivationPipeline` over the token rows ``tokens`` ([n_rows,
    context_size] ids) feeds :func:`train_saes`; ``heldout_tokens`` (rows of held-out text, read in order,
    at most one pass) give the held-out metrics. The training budget is the specs' common ``cfg.tokens``;
    their ``batch_size`` must equal ``pipeline_cfg.batch_size``, their hooks be in ``pipeline_cfg.hooks``
    and their ``d_in`` the model's width. A corpus smaller than the budget is repeated: a warning says so
    and each result records the pipeline's ``epochs``. ``notes`` go into every result as they are.

    ``ctx`` (world size W > 1): rank r streams the token rows r, r + W, r + 2W, ... of ``tokens`` through
    its own copy of the model in batches of ``batch_size / W`` rows, and :func:`train_saes` trains the SAEs
    data-parallel (rank 0 alone reads ``heldout_tokens`` and writes).

    ``resume``: continue interrupted runs from their newest checkpoints (:func:`train_saes`); the stream
    starts at the first token row after those the checkpoint's samples and the gamma / normalisation
    batches used (rows that sat in the shuffle buffer at the interruption are not replayed, so the data
    order differs from an uninterrupted run)."""
    from sae_rdp_plugin.lm.pipeline import ActivationPipeline

    specs = list(specs)
    if not specs:
        raise SaeRdpError("no SAEs to train (specs is empty)")
    budgets = {s.cfg.tokens for s in specs}
    if len(budgets) != 1:
        raise SaeRdpError(f"SAEs trained from one stream share one token budget; got tokens {sorted(budgets)}")
    (budget,) = budgets
    for s in specs:
        if s.cfg.batch_size != pipeline_cfg.batch_size:
            raise SaeRdpError(
                f"SAE {s.label!r} has batch_size {s.cfg.batch_size}, the pipeline {pipeline_cfg.batch_size}"
            )
        if s.hook not in pipeline_cfg.hooks:
            raise SaeRdpError(f"SAE {s.label!r} trains on {s.hook!r}, which is not in the pipeline's hooks")
    _check_specs(specs, budget)  # before the model is touched
    if ctx is not None and ctx.distributed:
        if pipeline_cfg.batch_size % ctx.world_size:
            raise SaeRdpError(
                f"batch_size {pipeline_cfg.batch_size} is not divisible by the world size {ctx.world_size}"
            )
        tokens = tokens[ctx.rank :: ctx.world_size]  # this rank's shard of the rows
        pipeline_cfg = dataclasses.replace(pipeline_cfg, batch_size=pipeline_cfg.batch_size // ctx.world_size)
        budget_rank = budget // ctx.world_size
        if not ctx.is_main:
            heldout_tokens = None
    else:
        budget_rank = budget
    if resume:
        found = [latest_checkpoint(s.out) for s in specs]
        if all(found):
            per_row = pipeline_cfg.context_size - (1 if bos_token_id is not None else 0)
            used = found[0][2] // (ctx.world_size if ctx is not None and ctx.distributed else 1)
            used += batches_before_training(specs) * pipeline_cfg.batch_size  # what the first run drew before
            tokens = np.roll(np.asarray(tokens), -((used // max(per_row, 1)) % len(tokens)), axis=0)
    # the shuffle buffer is filled before the first batch: never larger than what the run draws (its budget and
    # the batches drawn before training), else a short run reads, and may repeat, far more of the corpus than
    # it trains on
    extra = max(
        [s.cfg.gamma_estimation_batches for s in specs if s.cfg.arch.weighted and not s.cfg.gamma_path] or [0]
    ) + max([s.cfg.n_batches_for_norm_estimate for s in specs] or [0])
    need = budget_rank + extra * pipeline_cfg.batch_size
    if pipeline_cfg.buffer_tokens > max(2 * pipeline_cfg.batch_size, need):
        pipeline_cfg = dataclasses.replace(pipeline_cfg, buffer_tokens=max(2 * pipeline_cfg.batch_size, need))
    pipe = ActivationPipeline(model, tokens, pipeline_cfg, bos_token_id=bos_token_id, pad_token_id=pad_token_id)
    for s in specs:
        if s.cfg.d_in != pipe.d_in:
            raise SaeRdpError(f"d_in mismatch: SAE {s.label!r} has d_in {s.cfg.d_in}, the model's width is {pipe.d_in}")
    if pipe.tokens_per_epoch < budget_rank:
        warnings.warn(
            f"the corpus has {pipe.tokens_per_epoch} usable tokens{' on this rank' if budget_rank < budget else ''}, "
            f"fewer than the {budget_rank} requested: it is repeated (~{budget_rank / pipe.tokens_per_epoch:.1f} "
            "epochs; each result records 'epochs')",
            stacklevel=2,
        )
    notes = {
        "model_name": (notes or {}).get("model"),
        "context_size": pipeline_cfg.context_size,
        "prepend_bos": bos_token_id is not None,
        **(notes or {}),
    }
    heldout = None
    if heldout_tokens is not None:
        # read in order (a buffer of two batches; no shuffle needed), not compiled (a few forwards)
        hcfg = dataclasses.replace(pipeline_cfg, buffer_tokens=2 * pipeline_cfg.batch_size, compile=False)

        def _heldout_batches() -> Iterator[Mapping[str, torch.Tensor]]:  # the model runs when training is done
            hp = ActivationPipeline(model, heldout_tokens, hcfg, bos_token_id=bos_token_id, pad_token_id=pad_token_id)
            yield from itertools.islice(hp, max(1, hp.tokens_per_epoch // hcfg.batch_size))  # one pass at most

        heldout = _heldout_batches()
    return train_saes(
        pipe,
        specs,
        tokens=budget,
        fast=fast,
        heldout=heldout,
        heldout_batches=heldout_batches,
        progress=progress,
        wandb_project=wandb_project,
        notes=notes,
        ctx=ctx,
        resume=resume,
    )


def dataset_tokens(
    path: str | Path, tokenizer: Any, context_size: int | None = None, heldout_fraction: float = 0.05
) -> tuple[np.ndarray, np.ndarray, str, int | None]:
    """Token rows for :func:`train_on_model` from ``sae-rdp train --dataset``: (train rows, held-out rows, where
    the held-out rows come from, the corpus's BOS id or None).

    A corpus folder of ``sae-rdp models corpus build`` (``tokens.npz``) gives its train and held-out
    splits; a ``datasets`` folder with a ``tokens`` column, or a text file (tokenised with ``tokenizer``
    into rows of ``context_size``, default 128), is split into its first and last ``heldout_fraction`` of
    rows. ``context_size`` shorter than the stored rows cuts them; longer raises."""
    from sae_rdp_plugin.lm.corpus import load_tokens, read_manifest
    from sae_rdp_plugin.train.saelens import load_dataset_arg

    p = Path(path)
    bos = None
    if (p / "tokens.npz").is_file():
        train, held = load_tokens(p, "train"), load_tokens(p, "heldout")
        bos = read_manifest(p).get("bos_token_id") if (p / "manifest.json").is_file() else None
        note = f"held-out split of corpus {p} ({held.shape[0]} rows)"
    else:
        if p.is_file() and tokenizer is None:
            raise SaeRdpError(
                f"--dataset {p} is a text file but the model has no tokenizer (random init): give a datasets "
                "folder with a 'tokens' column or a corpus folder"
            )
        rows = np.asarray(load_dataset_arg(str(p), tokenizer, context_size or 128)["tokens"])
        if rows.ndim != 2 or rows.shape[0] < 2:
            raise SaeRdpError(f"--dataset {p} has {rows.shape[0]} token rows; need at least 2 (train and held out)")
        n_held = max(1, round(heldout_fraction * rows.shape[0]))
        train, held = rows[:-n_held], rows[-n_held:]
        note = f"last {heldout_fraction:.0%} of the rows of {p} ({n_held} of {rows.shape[0]})"
    if context_size is not None and context_size != train.shape[1]:
        if context_size > train.shape[1]:
            raise SaeRdpError(f"--context-size {context_size} is longer than the dataset's rows ({train.shape[1]})")
        train, held = train[:, :context_size], held[:, :context_size]
    if held.shape[0] == 0:
        raise SaeRdpError(f"--dataset {p} has no held-out rows")
    return train, held, note, bos
