"""A fast training step for (weighted) TopK and BatchTopK SAEs: sparse decoder, sparse gradients,
fused gradient clipping + Adam.

The step computes exactly the loss and gradients of SAELens's ``TopKTrainingSAE`` /
``BatchTopKTrainingSAE`` (and of this plugin's ``weighted_topk`` / ``weighted_batchtopk``) followed by
SAELens's ``SAETrainer`` update (``clip_grad_norm_(params, 1.0)`` then Adam), but never forms the dense
``[batch, d_sae]`` activation matrix after the TopK and never runs the dense decoder matmuls.

Math (one batch x of B rows, n_j = ||W_dec[j]|| when ``rescale_acts_by_decoder_norm`` else 1)::

    u      = x - b_dec                      (apply_b_dec_to_input; else u = x)
    pre    = u W_enc + b_enc                ([B, d_sae], the only dense matmul)
    S_b    = TopK_j(pre_bj * n_j)           (BatchTopK: the k*B largest of relu(pre * n) over the batch)
    a_bj   = relu(pre_bj * n_j) / n_j = relu(pre_bj)          for j in S_b
    x_hat  = b_dec + sum_{j in S_b} a_bj W_dec[j]             (gather / embedding_bag, B*k rows)
    L_mse  = (1/B) sum_b sum_i w_i (x_hat_bi - x_bi)^2        (w = gamma^2; w = 1 unweighted)
    L_aux  = c * min(n_dead/(d_in/2), 1) * (1/B) sum_b sum_i w_i (e_hat_bi - (x - x_hat)_bi)^2,
             e_hat_b = sum_{j in A_b} pre_bj W_dec[j],  A_b = top min(d_in/2, n_dead) dead latents of pre*n

Gradients, with r = dL/dx_hat = (2/B) w (x_hat - x):
    dL/dW_dec[j] = sum_{b: j in S_b} a_bj r_b               (only active rows; sort + segment sum)
    dL/da_bj     = r_b . W_dec[j]                           (B*k dot products)
    g_bj         = dL/da_bj * 1[a_bj > 0]                   (sparse pre-activation gradient)
    dL/dW_enc[:, j] = sum_b g_bj u_b,  dL/db_enc[j] = sum_b g_bj
    dL/db_dec    = sum_b r_b - W_enc (sum_b g_b)            (second term only with apply_b_dec_to_input)
The decoder-norm factor n_j cancels in a_bj, so its gradient is zero analytically (SAELens's autograd
evaluates it to rounding error); it only moves the selection S. Two kernel sets (``kernels``): on CUDA
with Triton, :mod:`sae_rdp_plugin.fast.kernels` (bf16 gathers; the weight gradients are formed row by row
inside one fused "gradient norm, then clipped Adam" pass, never as dense [d_sae, d_in] tensors; see
:meth:`FastTopKTrainer._fused_step`), the TopK by :func:`sae_rdp_plugin.fast.topk_kernel.row_topk`, and TopK
steps replayed as one CUDA graph; elsewhere PyTorch's own ``embedding_bag`` / CSR kernels and ``torch.topk``
(CPU and CUDA), so this module runs anywhere PyTorch runs.

Then ``total = ||(grads)||_2``, ``grads *= min(1, 1/(total + 1e-6))`` (folded into the fused Adam as its
``grad_scale``, no extra pass), Adam(lr, betas, eps=1e-8) exactly as ``torch.optim.Adam``.
Dead-latent bookkeeping follows ``SAETrainer`` (``n_forward_passes_since_fired``, ``act_freq_scores``,
dead = passes > ``dead_feature_window``); BatchTopK's threshold follows
``BatchTopKTrainingSAE.update_topk_threshold``.

``bf16=True`` is the counterpart of SAELens's ``autocast=True``: the encoder matmul runs on a bf16 copy of
W_enc (fp32 accumulation); the sparse decoder gathers fp32 rows (``decoder_bf16`` gathers bf16 rows on
CPU); weights, gradients and Adam state stay fp32. The weight gradients are sparse-times-dense products
(``weight_grad_impl="csr"``, default, or PyTorch's embedding_bag backward).

The aux loss has B*k_aux entries (k_aux = d_in/2 when enough latents are dead, e.g. 1152 per row at
d_in=2304 against k=64), so gathering that many decoder rows costs more than SAELens's dense matmuls
(tens of ms per step at (2304, 65536) bf16; benchmarks/training_speed). ``aux_impl="auto"`` (default)
therefore runs the aux term densely (scatter into [B, d_sae], three dense matmuls, bf16 under bf16) when
k_aux / d_sae is large enough for the device, and through the sparse gathers otherwise; both give SAELens's
loss and gradients. With ``aux_compact="auto"`` (default) its selection (top k_aux of the dead latents per row)
and its dense products run over the dead columns only: the step counts the dead latents on the host (the one
sync it already made to skip the aux loss when none is dead) and picks a static padded width n_pad from a few
buckets (:func:`aux_pad_width`); the device gathers the dead columns first (padded with live ones, masked to
-inf), takes the top k_aux of those n_pad columns instead of all d_sae, and multiplies by the n_pad gathered
decoder rows, so the step stays graph-capturable (the captured aux step is redone when the bucket changes;
aux_pad_width keeps a bucket while it fits). It pays when at most 3/4 of the latents are dead (the largest
bucket; more dead: all d_sae columns, as "off"): benchmarks/training_speed/aux_compact/.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch

from sae_rdp_plugin.architectures import ARCHITECTURES, FAST_NAMES
from sae_rdp_plugin.devices import profile_summary, synchronize
from sae_rdp_plugin.errors import SaeRdpError
from sae_rdp_plugin.fast.rows import RowsAt, rows_at

__all__ = ["FastTopKConfig", "FastTopKTrainer", "fast_architecture_of", "FAST_ARCHITECTURES", "aux_pad_width"]

#: training architectures the fast step implements -> ("topk" | "batchtopk"), from sae_rdp_plugin.architectures
FAST_ARCHITECTURES: dict[str, str] = {name: ARCHITECTURES[name].stock for name in FAST_NAMES}
#: FastTopKConfig fields that FastTopKTrainer.from_training_sae sets from the SAE and its trainer's config (the
#: other fields are options a caller may override)
FIELDS_FROM_SAE = frozenset(
    {"d_in", "d_sae", "k", "kind", "rescale_acts_by_decoder_norm", "apply_b_dec_to_input", "aux_loss_coefficient"}
    | {"topk_threshold_lr", "dead_feature_window", "lr", "adam_beta1", "adam_beta2", "bf16"}
)

_EB_SUM = 0  # embedding_bag mode "sum"


def fast_architecture_of(architecture: str) -> str | None:
    """'topk' / 'batchtopk' when the fast step implements ``architecture``, else None."""
    return FAST_ARCHITECTURES.get(architecture)


#: the compacted dense aux loss's weight gradients: "rows" (a RowsAt over the compacted columns, read by the fused
#: kernels as they are) or "dense" (zero-filled [d_sae, d_in] matrices with the rows added: the layout before
#: 2026-12-04, kept for benchmarks/training_speed's side-by-side rows)
AUX_GRAD_ROWS = "rows"

#: the aux selection's top-k by torch.topk runs over a copy of the pre-activations with the live latents at -inf (over
#: the compacted columns: their gather): "full" writes that copy inside the main TopK's row_topk read
#: (topk_kernel.row_topk_masked_copy) when the selection runs over all d_sae columns, "all" also writes the compacted
#: selection's gather there (not yet measured on a GPU), "off" makes it by a separate index_select / masked_fill (the
#: step before 2026-12-07, kept for side-by-side benchmarks)
AUX_COPY_IN_TOPK = "full"

#: fractions of d_sae that are the padded widths of the compacted aux-loss selection (see aux_pad_width)
#: (no 7/8: at 85% dead it measured no faster than all d_sae columns, benchmarks/training_speed/aux_heavy78/)
_AUX_BUCKET_FRACTIONS = (1 / 8, 1 / 4, 1 / 2, 3 / 4)
#: aux_pad_width hysteresis: move down to a smaller bucket only once n_dead <= this fraction of it
_AUX_SHRINK_MARGIN = 0.9


def aux_pad_buckets(d_sae: int, k_aux: int) -> tuple[int, ...]:
    """The padded widths below d_sae that the compacted aux selection uses: d_sae/8, /4, /2, 3/4 rounded up
    to a multiple of g, the largest power of two <= d_sae/16 capped at 128 (128 for d_sae >= 2048; at most
    d_sae/16, so rounding never merges two buckets of d_sae >= 16), keeping those >= k_aux (the top k_aux
    needs k_aux columns) and < d_sae. Ascending, no duplicates; empty when none qualifies (k_aux = d_sae)."""
    g = 1 << max(0, min(7, (d_sae // 16).bit_length() - 1))
    out: list[int] = []
    for f in _AUX_BUCKET_FRACTIONS:
        b = -(-math.ceil(f * d_sae) // g) * g
        if k_aux <= b < d_sae and b not in out:
            out.append(b)
    return tuple(out)


#: dead_count="lagged": how many steps ahead the dead-count bound is recorded (FastTopKConfig.dead_count); the
#: host may run this many steps ahead of the device before it waits
DEAD_COUNT_LAG = 4


class LaggedDeadCount:
    """dead_count="lagged" (FastTopKConfig.dead_count): upper bounds of the dead-latent count, each recorded L =
    ``lag`` steps before the step that reads it, so that reading it does not wait for the device's latest work.

    A latent is dead at step s when its steps-since-fired counter c_s exceeds the window W; c grows by at most
    one per step (c_{s+1} <= c_s + 1: +1, or 0 when it fires; a data-parallel MIN only lowers it), so a latent dead
    at step s + L had c_s > W - L, and #{c_s > W - L} bounds the dead count of step s + L. ``record`` enqueues that
    count on the device's current stream (behind the work queued so far, i.e. from the counters at the start of
    step s) with a copy into a pinned host slot; ``bound`` reads the slot of its step, waiting at most for the
    device to reach the point where it was recorded, L steps back."""

    def __init__(self, lag: int = DEAD_COUNT_LAG) -> None:
        self.lag = lag
        self.slots: list[list[Any]] = []  # per step in flight: [step index, pinned host count, CUDA event]

    def record(self, counters: torch.Tensor, step: int, window: int) -> None:
        """At the start of step ``step`` (counters as they are then): the bound for step ``step + lag``."""
        target = step + self.lag
        if target <= window:
            return  # no latent is dead before the window has passed (the steps pass no dead mask then)
        cuda = counters.device.type == "cuda"
        if not self.slots:  # one slot per step in flight, reused (read by bound before it is written again)
            self.slots = [
                [-1, torch.zeros((), dtype=torch.int64, pin_memory=cuda), torch.cuda.Event() if cuda else None]
                for _ in range(self.lag)
            ]
        slot = self.slots[target % self.lag]
        slot[1].copy_((counters > window - self.lag).sum(), non_blocking=cuda)
        slot[0] = target
        if slot[2] is not None:
            slot[2].record()

    def bound(self, step: int) -> int | None:
        """The bound recorded for ``step``, or None (none: the first ``lag`` steps after the window, a resumed or
        restarted count): the caller then counts exactly."""
        if not self.slots or self.slots[step % self.lag][0] != step:
            return None
        _, host, event = self.slots[step % self.lag]
        if event is not None:
            event.synchronize()
        return int(host)


def aux_pad_width(n_dead: int, d_sae: int, k_aux: int, mode: str = "auto", prev: int | None = None) -> int:
    """Static number of columns n_pad the aux-loss top-k runs over, given n_dead dead latents: the smallest
    bucket of :func:`aux_pad_buckets` that holds all of them (n_dead <= n_pad), or d_sae (the uncompacted
    selection over all columns) when none does or ``mode`` is "off". Any n_pad >= max(n_dead, k_aux) gives
    the same loss, so ``prev`` (the width of the previous step) is kept while it still holds the dead
    latents and n_dead is not yet <= 0.9 x a smaller bucket: a dead count hovering at a bucket's edge
    would otherwise re-capture the step's CUDA graph (one per width) every step."""
    if mode == "off":
        return d_sae
    buckets = aux_pad_buckets(d_sae, k_aux)
    need = next((b for b in buckets if n_dead <= b), d_sae)
    if prev is None or prev < need or prev > d_sae or (prev != d_sae and prev not in buckets):
        return need
    roomy = next((b for b in buckets if n_dead <= _AUX_SHRINK_MARGIN * b), d_sae)
    return min(prev, roomy)


def _first_step_profiler(device: torch.device) -> Any:
    """torch.profiler over one step (CPU activity, and CUDA's on a GPU)."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=acts)


@contextlib.contextmanager
def triton_compiles() -> Iterator[list[dict[str, Any]]]:
    """The Triton kernels compiled inside the block, in order: ``{"name", "s"}`` (the kernel's qualified name, the
    seconds from Triton's pre-compile hook to its post-compile hook). Installs ``triton.knobs.runtime``'s
    ``jit_cache_hook`` / ``jit_post_compile_hook`` for the block, calling any hooks set before (the pre-compile
    hook's answer is theirs: a true one skips the compilation) and restoring them after. Empty without Triton's
    hooks, and under the interpreter (nothing is compiled)."""
    found: list[dict[str, Any]] = []
    try:
        from triton import knobs
    except Exception:  # noqa: BLE001 (no triton, or one without knobs)
        yield found
        return
    rt = knobs.runtime
    before, after = rt.jit_cache_hook, rt.jit_post_compile_hook
    started: dict[str, float] = {}  # compilation key -> when its pre-compile hook ran

    def pre(**kw: Any) -> bool | None:
        started[repr(kw["key"])] = time.perf_counter()
        return before(**kw) if before is not None else None

    def post(**kw: Any) -> bool | None:
        t0 = started.pop(repr(kw["key"]), None)
        fn = kw["fn"]
        name = f"{getattr(fn, 'module', '')}.{getattr(fn, 'name', fn)}".lstrip(".")
        found.append({"name": name, "s": round(time.perf_counter() - t0, 4) if t0 is not None else None})
        return after(**kw) if after is not None else None

    rt.jit_cache_hook, rt.jit_post_compile_hook = pre, post
    try:
        yield found
    finally:
        rt.jit_cache_hook, rt.jit_post_compile_hook = before, after


def first_step_profile(
    prof: Any, wall_s: float, compiled: list[dict[str, Any]] | None = None, top: int = 8
) -> dict[str, Any]:
    """Where one profiled step's ``wall_s`` seconds of host time went: ``devices.profile_summary``'s top ops by
    self CPU time, ``ops_cpu_s`` (the self CPU time of all ops, nested ones counted once) and ``unattributed_s`` =
    wall_s - ops_cpu_s, the time in Python outside any op (Triton compiling a kernel, the allocator's own calls
    are inside ops); ``triton_compiled``: the kernels Triton compiled in the step (:func:`triton_compiles`) and
    ``triton_compile_s`` their seconds, the part of ``unattributed_s`` that compilation explains."""
    ops = sum(ev.self_cpu_time_total for ev in prof.key_averages()) / 1e6
    out = profile_summary(prof, wall_s, top=top)
    compiled = compiled or []
    return {"wall_s": round(wall_s, 4), "ops_cpu_s": round(ops, 4), "unattributed_s": round(wall_s - ops, 4),
            "host_syncs": out["host_syncs_per_step"],
            "top": [{"name": r["name"], "calls": r["calls_per_step"], "ms": round(r["ms_per_step"], 3)}
                    for r in out["top"]],
            "triton_compiled": compiled,
            "triton_compile_s": round(sum(c["s"] or 0.0 for c in compiled), 4)}  # fmt: skip


@dataclass
class FastTopKConfig:
    """What one fast step needs. Defaults are SAELens's (TopKTrainingSAEConfig, SAETrainerConfig)."""

    d_in: int
    d_sae: int
    k: float
    kind: str = "topk"  # "topk" | "batchtopk"
    rescale_acts_by_decoder_norm: bool = True
    apply_b_dec_to_input: bool = True
    aux_loss_coefficient: float = 1.0
    topk_threshold_lr: float = 0.01
    dead_feature_window: int = 1000
    lr: float = 3e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    bf16: bool = False
    batchtopk_candidates: float = 4.0  # per-row candidates = this * k (exactness is checked each step)
    # weight gradients: "csr" (CSR x dense, cuSPARSE SpMM on CUDA; the faster of the two in
    # benchmarks/training_speed) | "embedding_bag" (PyTorch's sort + segment-sum embedding backward)
    weight_grad_impl: str = "csr"
    # with bf16: gather bf16 decoder rows instead of fp32 rows. CPU only: PyTorch's CUDA kernel for the
    # per-sample-weight gradient has no bf16 version (torch 2.11), so CUDA always gathers fp32 rows.
    decoder_bf16: bool = False
    # dead-latent aux loss: "dense" ([B, d_sae] scatter + three dense matmuls, bf16 under bf16, as
    # SAELens), "sparse" (the main path's gathers over B*k_aux rows) or "auto" (dense when
    # k_aux / d_sae >= aux_dense_min_density; see _aux_dense_threshold for the default per device)
    aux_impl: str = "auto"
    aux_dense_min_density: float | None = None
    # dead-latent aux loss: "auto" takes its top k_aux over the dead columns only, gathered into a static
    # padded width (d_sae/8, /4, /2 or 3/4: aux_pad_width; all d_sae columns when more are dead; the CUDA
    # graph is recaptured when it changes; the dense aux products then use those columns only); "off": always
    # all d_sae columns, the live ones masked (same loss; slower: benchmarks/training_speed/aux_compact/)
    aux_compact: str = "auto"
    # "auto": the Triton kernels of sae_rdp_plugin.fast.kernels on CUDA when Triton imports (fused sparse
    # weight gradients + clipping + Adam, bf16 decoder gathers), else the PyTorch kernels; "triton":
    # always Triton (on CPU only under TRITON_INTERPRET=1, for tests); "torch": never. Default from the
    # environment variable SAE_RDP_FAST_KERNELS when set (e.g. SAE_RDP_FAST_KERNELS=torch to rule Triton out)
    kernels: str = field(default_factory=lambda: os.environ.get("SAE_RDP_FAST_KERNELS", "auto"))
    # replay TopK steps of the Triton path as one CUDA graph (after two eager steps): one graph without the
    # aux loss and one with it (recaptured when the aux selection's padded width changes: aux_compact), each
    # for the batch shape of the captured step; anything else runs eagerly. Removes the per-kernel launch
    # cost that dominates small SAEs (numbers: benchmarks/training_speed); its GPU tests
    # (tests/fast/test_fast_kernels.py, marked gpu) check replay == eager steps. Default from
    # SAE_RDP_FAST_CUDA_GRAPH ("0" turns it off).
    cuda_graph: bool = field(default_factory=lambda: os.environ.get("SAE_RDP_FAST_CUDA_GRAPH", "1") != "0")
    # run every step under torch.use_deterministic_algorithms(True, warn_only=True): the float atomics of
    # index_add_ (bias gradient, firing counts, aux loss) become sorted segment sums, so two runs with the
    # same seed and data give bit-identical weights on one GPU. Off by default: the atomic sums are faster
    # and the differences they leave are at float rounding level per step (they grow over a run as
    # training amplifies them, as for any nondeterministic GPU training). Default from
    # SAE_RDP_FAST_DETERMINISTIC ("1" turns it on).
    deterministic: bool = field(default_factory=lambda: os.environ.get("SAE_RDP_FAST_DETERMINISTIC", "0") == "1")
    # Triton path: up to hot_rows latents with more than hot_min_count entries in a batch get their weight
    # gradients from a small dense product instead of one long per-latent gather loop (0 turns it off;
    # -1 = automatic, sized from B*k: see FastTopKTrainer._hot_rows). Real activations have hundreds of
    # busy latents (SmolLM2-135M layer 2 at init: 531 of 16384 latents with > 64 of 131k entries).
    hot_rows: int = -1
    hot_min_count: int = 32
    # Triton path: TopK with the exact per-row kernel sae_rdp_plugin.fast.topk_kernel.row_topk instead of torch.topk
    row_topk: bool = True
    # dead-latent aux loss's top k_aux of the dead columns: "torch" (a masked copy, then torch.topk), "radix"
    # (sae_rdp_plugin.fast.topk_kernel.masked_topk on the Triton path: radix select with the mask applied while
    # reading, no masked copy; same entries up to ties; it saved ~3% of the step in
    # benchmarks/training_speed/aux_radix and nothing end to end) or "mask" (the dense aux products only, on the
    # Triton path with at most topk_kernel.TOPK_MASK_MAX_COLS selection columns: topk_kernel.topk_mask writes
    # the dense selection in one pass, the k_aux-th value found by bisection over the row held in registers,
    # no indices, no scatter or gather; else as "torch"); "auto" (the default): "mask" where the selection runs over
    # all d_sae columns (more than 3/4 of the latents dead, or aux_compact "off"), where it measured faster in two
    # runs, and "torch" over compacted columns, where it measured slower (benchmarks/training_speed/aux_copy_2)
    aux_topk: str = "auto"
    # how the step learns the dead-latent count that picks its graph (with or without the aux loss) and the aux
    # selection's padded width, when it keeps its own dead-latent counters (``step(x)``): "sync" counts the
    # dead latents each step (one host sync per step: the host waits for the GPU before it can launch the next
    # step); "lagged" reads, without waiting, an upper bound recorded DEAD_COUNT_LAG steps earlier. A latent's
    # steps-since-fired counter grows by at most one per step, so every latent dead at step s (counter >
    # window) had a counter > window - L at step s - L: the count of those bounds the dead count. Same losses
    # and updates: the aux selection masks latents that are not dead, and a bound > 0 with no latent dead runs
    # the aux graph with coefficient 0 (SAELens's aux loss is then 0 too); the padded width can be one bucket
    # wider than the exact count gives.
    dead_count: str = "sync"
    # run the first step at each aux width (0: the steps without the aux loss) under torch.profiler and keep where
    # its host time went (aux_stats' ``first_steps_profile_by_width``: the top ops by self CPU time and the seconds
    # no op accounts for, such as Triton's compilation in Python). Those one-off steps compile and load what a new
    # width needs and have cost seconds at some widths; the profile tells which part. Off: no profiler.
    profile_first_steps: bool = False
    # compile the dead-latent aux loss's kernels at the first step, before the aux loss can run: "auto" (on CUDA
    # with the Triton step, single process), "on" (any device: tests), "off". Otherwise they compile at the run's
    # first aux step (step dead_feature_window + 1), whatever its width, inside the steps a run times as its
    # steady state (benchmarks/e2e). See warm_aux_path: a scratch trainer's steps; this trainer's parameters,
    # state and random generators are untouched.
    warm_aux: str = "auto"

    def __post_init__(self) -> None:
        if self.kind not in ("topk", "batchtopk"):
            raise SaeRdpError(f"fast step: unknown kind {self.kind!r} (topk or batchtopk)")
        if self.d_in <= 0 or self.d_sae <= 0:
            raise SaeRdpError(f"fast step: d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}")
        if not (0 < self.k <= self.d_sae):
            raise SaeRdpError(f"fast step: k must be in (0, d_sae={self.d_sae}], got {self.k}")
        if self.weight_grad_impl not in ("embedding_bag", "csr"):
            raise SaeRdpError(
                f"fast step: weight_grad_impl must be embedding_bag or csr, got {self.weight_grad_impl!r}"
            )
        if self.kernels not in ("auto", "triton", "torch"):
            raise SaeRdpError(
                f"fast step: kernels (or SAE_RDP_FAST_KERNELS) must be auto, triton or torch, got {self.kernels!r}"
            )
        if self.hot_rows < -1 or self.hot_min_count < 0:
            raise SaeRdpError(
                "fast step: hot_rows must be >= 0 or -1 (automatic) and hot_min_count >= 0, "
                f"got {self.hot_rows}, {self.hot_min_count}"
            )
        if self.aux_impl not in ("auto", "dense", "sparse"):
            raise SaeRdpError(f"fast step: aux_impl must be auto, dense or sparse, got {self.aux_impl!r}")
        if self.aux_compact not in ("auto", "off"):
            raise SaeRdpError(f"fast step: aux_compact must be auto or off, got {self.aux_compact!r}")
        if self.aux_topk not in ("torch", "radix", "mask", "auto"):
            raise SaeRdpError(f"fast step: aux_topk must be torch, radix, mask or auto, got {self.aux_topk!r}")
        if self.dead_count not in ("sync", "lagged"):
            raise SaeRdpError(f"fast step: dead_count must be sync or lagged, got {self.dead_count!r}")
        if self.warm_aux not in ("auto", "on", "off"):
            raise SaeRdpError(f"fast step: warm_aux must be auto, on or off, got {self.warm_aux!r}")
        if self.kind == "topk" and int(self.k) != self.k:
            raise SaeRdpError(f"fast step: TopK needs an integer k, got {self.k}")


@dataclass
class _Captured:
    """One captured CUDA graph of the step: what it replays, its input buffers (the batch; the dead-latent
    mask when it runs the aux loss) and outputs, the (batch shape, parameter cache) key it is valid for and
    the padded width of its aux selection (None without the aux loss; see aux_pad_width)."""

    graph: Any
    key: tuple[Any, ...]
    x: torch.Tensor
    dead: torch.Tensor | None
    out: dict[str, torch.Tensor]
    sparse: Any
    vals_s: torch.Tensor
    n_pad: int | None = None


class _CopyPlan(NamedTuple):
    """The aux selection's masked copy the main TopK writes (:meth:`FastTopKTrainer._aux_copy_plan`): ``keep`` (the
    dead mask), ``pos`` (int32 [d_sae]: each latent's column in the compacted selection, -1 if none; None over all
    columns) and the copy's ``width``."""

    keep: torch.Tensor
    pos: torch.Tensor | None
    width: int


class _Sparse:
    """A batch of sparse codes in embedding_bag layout: flat latent indices, bag offsets, and the
    offset2bag / bag_size / max_indices that PyTorch's embedding_bag kernels return and reuse."""

    __slots__ = ("idx", "offsets", "vals", "offset2bag", "bag_size", "max_idx", "csr")

    def __init__(self, idx: torch.Tensor, offsets: torch.Tensor, vals: torch.Tensor, offset2bag: torch.Tensor):
        self.idx = idx
        self.offsets = offsets
        self.vals = vals
        # computed here: some CPU kernels (float32 fbgemm path) return an empty offset2bag
        self.offset2bag = offset2bag
        self.bag_size = self.max_idx = None  # type: ignore[assignment]
        self.csr = None


def _decode(sp: _Sparse, W: torch.Tensor) -> torch.Tensor:
    """out_b = sum_{entries e of bag b} vals_e W[idx_e] (fp32 accumulate; dtype of W)."""
    out, _, bag_size, max_idx = torch.ops.aten._embedding_bag(
        W, sp.idx, sp.offsets, False, _EB_SUM, False, sp.vals.to(W.dtype), False, -1
    )
    sp.bag_size, sp.max_idx = bag_size, max_idx  # unused in "sum" mode, passed through
    return out


def _vals_grad(sp: _Sparse, W: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """d/dvals_e of <grad_out, decode(sp, W)> = grad_out[bag(e)] . W[idx_e] (no [nnz, d] temporary)."""
    return torch.ops.aten._embedding_bag_per_sample_weights_backward(
        grad_out.to(W.dtype), W, sp.idx, sp.offsets, sp.offset2bag, _EB_SUM, -1
    )


def _weight_grad(sp: _Sparse, grad_out: torch.Tensor, coef: torch.Tensor, num_weights: int) -> torch.Tensor:
    """G[j] = sum_{entries e with idx_e = j} coef_e grad_out[bag(e)] as a dense [num_weights, d] tensor
    (PyTorch's sort + segment-sum embedding backward; untouched rows are zero)."""
    return torch.ops.aten._embedding_bag_dense_backward(
        grad_out,
        sp.idx,
        sp.offset2bag,
        sp.bag_size,
        sp.max_idx,
        num_weights,
        False,
        _EB_SUM,
        coef.to(grad_out.dtype),
        -1,
    )


def _weight_grad_csr(sp: _Sparse, grad_out: torch.Tensor, coef: torch.Tensor, num_weights: int) -> torch.Tensor:
    """Same as :func:`_weight_grad` as a CSR [num_weights, B] x dense [B, d] product (cuSPARSE SpMM on
    CUDA; no host sync). The latent-sorted order is computed once per batch and cached on ``sp``."""
    if sp.csr is None:
        order = torch.argsort(sp.idx)
        sidx = sp.idx[order]
        crow = torch.searchsorted(sidx, torch.arange(num_weights + 1, device=sidx.device, dtype=sidx.dtype))
        sp.csr = (order, crow, sp.offset2bag[order])
    order, crow, cols = sp.csr
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        M = torch.sparse_csr_tensor(crow, cols, coef[order].to(grad_out.dtype), size=(num_weights, grad_out.shape[0]))
    return M @ grad_out


@contextlib.contextmanager
def _deterministic_algorithms(on: bool) -> Iterator[None]:
    """torch's deterministic mode (warn-only: ops without a deterministic kernel warn instead of raising)
    for the duration of a step; the caller's setting is restored afterwards."""
    if not on:
        yield
        return
    prev, prev_warn = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


class FastTopKTrainer:
    """Owns fp32 parameters (W_enc stored transposed, [d_sae, d_in]), Adam state and dead-latent
    statistics, and runs :meth:`step` on activation batches. Use :meth:`from_training_sae` to start from
    a SAELens (weighted) TopK/BatchTopK training SAE and :meth:`write_to` to copy the result back."""

    def __init__(
        self,
        cfg: FastTopKConfig,
        W_enc: torch.Tensor,
        b_enc: torch.Tensor,
        W_dec: torch.Tensor,
        b_dec: torch.Tensor,
        gamma: torch.Tensor | None = None,
        topk_threshold: torch.Tensor | float = 0.0,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        in_place: bool = False,
    ):
        self.cfg = cfg
        dev = torch.device(device) if device is not None else W_dec.device
        self.device = dev
        if tuple(W_enc.shape) != (cfg.d_in, cfg.d_sae) or tuple(W_dec.shape) != (cfg.d_sae, cfg.d_in):
            raise SaeRdpError(
                f"fast step: W_enc {tuple(W_enc.shape)} / W_dec {tuple(W_dec.shape)} do not match "
                f"d_in={cfg.d_in}, d_sae={cfg.d_sae}"
            )
        f32 = dict(device=dev, dtype=dtype)
        self.dtype = dtype
        # in_place: train the given tensors themselves (SAELens layout, W_enc [d_in, d_sae]); else own
        # copies with W_enc stored latent-major ([d_sae, d_in]), which saves a transpose of its gradient
        self.in_place = in_place
        if in_place:
            ts = [W_enc, b_enc, W_dec, b_dec]
            if any(t.dtype != dtype or t.device != dev or not t.is_contiguous() for t in ts):
                raise SaeRdpError(f"fast step: in-place training needs contiguous {dtype} parameters on {dev}")
            self.params = [t.detach() for t in ts]
            self.W_encT = self.params[0].t()
        else:
            self.params = [
                W_enc.detach().to(**f32).t().contiguous(),
                b_enc.detach().to(**f32).clone(),
                W_dec.detach().to(**f32).contiguous().clone(),
                b_dec.detach().to(**f32).clone(),
            ]
            self.W_encT = self.params[0]
        self.b_enc, self.W_dec, self.b_dec = self.params[1:]
        for p in self.params:
            if not torch.isfinite(p).all():
                raise SaeRdpError("fast step: initial parameters contain NaN/Inf")
        if gamma is not None:
            gamma = gamma.detach().to(**f32).reshape(-1)
            if gamma.numel() != cfg.d_in or not torch.isfinite(gamma).all() or bool((gamma < 0).any()):
                raise SaeRdpError(f"fast step: gamma must be {cfg.d_in} finite non-negative numbers")
            self.w = gamma.pow(2)  # loss weights gamma_i^2
        else:
            self.w = None
        if in_place and isinstance(topk_threshold, torch.Tensor):
            self.topk_threshold = topk_threshold  # updated in place (the SAE's buffer)
        else:
            self.topk_threshold = torch.as_tensor(topk_threshold, dtype=torch.float64, device=dev).clone()
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.state_steps = [torch.zeros((), device=dev, dtype=torch.float32) for _ in self.params]
        self.n_forward_passes_since_fired = torch.zeros(cfg.d_sae, **f32)
        self.act_freq_scores = torch.zeros(cfg.d_sae, **f32)
        self.n_frac_active_samples = 0
        self.n_training_steps = 0
        self.n_inexact_batchtopk_fallbacks = 0
        self._fused = dev.type in ("cuda", "cpu")
        self._lr = cfg.lr
        self._lr_t = torch.full((), float(cfg.lr), device=dev, dtype=torch.float32)
        self._lp_cache: dict[str, Any] | None = None
        # captured CUDA graphs of the step, one without and one with the dead-latent aux loss: {with_aux: graph}
        # (the aux one for one padded width of the aux selection, its n_pad: recaptured when that changes)
        self._graphs: dict[bool, _Captured] = {}
        self._aux_n_pad: int | None = None  # padded width of the last step's aux selection (aux_pad_width)
        # steps of this process per padded aux width (0: no aux loss) and the dead latents summed over the aux
        # steps: the aux term's cost grows with the width, so these say where a run's step time went
        self.aux_width_steps: dict[int, int] = {}
        # seconds of the first two steps at each aux width (on CUDA; on any device with cfg.profile_first_steps)
        self.first_steps_s: dict[int, list[float]] = {}
        self.first_steps_profile: dict[int, dict[str, Any]] = {}  # cfg.profile_first_steps: the first one's profile
        self.aux_warm: dict[str, Any] | None = None  # cfg.warm_aux: what warm_aux_path did (seconds, widths)
        self.aux_dead_sum = 0
        # dead_count="lagged": the dead-count bounds of the steps in flight, and the dead latents summed over the
        # aux steps on the device (read by aux_stats)
        self.lagged_dead_count = LaggedDeadCount() if cfg.dead_count == "lagged" else None
        self._aux_dead_sum_t: torch.Tensor | None = None
        self._graph_eager_steps = 0
        self._graph_aux_widths: set[int] = set()  # aux widths that have run eagerly (warm) in _graph_step
        self._graph_failed: str | None = None
        # a capture stream per graph ({with_aux: stream}): PyTorch keys the cuBLAS workspace a graph bakes in by
        # its capture stream, so graphs captured on one stream (torch.cuda.graph's default) share it. Replayed
        # concurrently (train_saes(sae_streams=True): several SAEs on their own streams) they race on it, and
        # freeing one graph can free the workspace of the others (pytorch/pytorch#193402)
        self._capture_streams: dict[bool, Any] = {}
        self._all_rows: tuple[torch.Tensor, torch.Tensor] | None = None  # identity RowsAt index and slot (_as_rows)
        from sae_rdp_plugin.fast import kernels as fast_kernels

        if cfg.kernels == "triton" and not fast_kernels.available(dev):
            raise SaeRdpError(
                "fast step: kernels='triton' needs Triton and a CUDA device (or TRITON_INTERPRET=1 on CPU); "
                f"device {dev}"
            )
        if cfg.kernels == "triton" and dtype != torch.float32:
            raise SaeRdpError(f"fast step: the Triton kernels train float32 parameters, got {dtype}")
        self.use_triton = cfg.kernels == "triton" or (
            cfg.kernels == "auto" and dev.type == "cuda" and dtype == torch.float32 and fast_kernels.available(dev)
        )
        #: data-parallel training: called on the gradients [W_enc^T, b_enc, W_dec, b_dec] before clipping
        #: (an all-reduce mean over ranks, see install_fast_step); needs the PyTorch kernels (the Triton
        #: step never forms the weight gradients)
        self.grad_allreduce: Callable[[list[torch.Tensor]], None] | None = None
        if dev.type == "cuda":
            self.precompile_aux_selection()

    # ------------------------------------------------------------------ construction / export
    @classmethod
    def from_training_sae(
        cls,
        sae: Any,
        *,
        lr: float = 3e-4,
        adam_beta1: float = 0.9,
        adam_beta2: float = 0.999,
        dead_feature_window: int = 1000,
        bf16: bool = False,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        **cfg_overrides: Any,
    ) -> FastTopKTrainer:
        """Start from a SAELens TopK/BatchTopK training SAE (or a weighted_* one: its ``gamma`` buffer
        becomes the loss weights). Raises SaeRdpError for architectures the fast step doesn't cover."""
        arch = sae.cfg.architecture()
        kind = fast_architecture_of(arch)
        if kind is None:
            raise SaeRdpError(f"fast step: architecture {arch!r} is not one of {sorted(FAST_ARCHITECTURES)}")
        c = sae.cfg
        if getattr(c, "normalize_activations", "none") not in ("none", "expected_average_only_in"):
            raise SaeRdpError(f"fast step: normalize_activations={c.normalize_activations!r} is not supported")
        if getattr(c, "reshape_activations", "none") != "none":
            raise SaeRdpError("fast step: reshape_activations must be 'none'")
        in_place = cfg_overrides.pop("in_place", False)
        cfg = FastTopKConfig(
            d_in=c.d_in,
            d_sae=c.d_sae,
            k=c.k,
            kind=kind,
            rescale_acts_by_decoder_norm=c.rescale_acts_by_decoder_norm,
            apply_b_dec_to_input=c.apply_b_dec_to_input,
            aux_loss_coefficient=c.aux_loss_coefficient,
            topk_threshold_lr=getattr(c, "topk_threshold_lr", 0.01),
            dead_feature_window=dead_feature_window,
            lr=lr,
            adam_beta1=adam_beta1,
            adam_beta2=adam_beta2,
            bf16=bf16,
            **cfg_overrides,
        )
        gamma = getattr(sae, "gamma", None)
        thr = getattr(sae, "topk_threshold", torch.tensor(0.0))
        return cls(
            cfg,
            sae.W_enc,
            sae.b_enc,
            sae.W_dec,
            sae.b_dec,
            gamma=gamma,
            topk_threshold=thr,
            device=device,
            dtype=dtype,
            in_place=in_place,
        )

    @classmethod
    def attach(cls, sae: Any, **kwargs: Any) -> FastTopKTrainer:
        """Like :meth:`from_training_sae` but trains ``sae``'s own parameter tensors in place (they
        must be contiguous float32 or float64), so SAELens code that reads ``sae`` (checkpoints,
        saving, evals) always sees the current weights."""
        tr = cls.from_training_sae(sae, in_place=True, dtype=sae.W_dec.dtype, device=sae.W_dec.device, **kwargs)
        return tr

    @torch.no_grad()
    def adam_state_to(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
        """Write this trainer's Adam state into ``optimizer`` (a torch Adam over ``params`` =
        [W_enc, b_enc, W_dec, b_dec] in SAELens layout), so its state_dict is a valid checkpoint."""
        for i, p in enumerate(params):
            m, v = self.exp_avg[i], self.exp_avg_sq[i]
            if i == 0 and not self.in_place:
                m, v = m.t(), v.t()
            optimizer.state[p] = {
                "step": self.state_steps[i].clone().cpu(),
                "exp_avg": m.clone(),
                "exp_avg_sq": v.clone(),
            }

    @torch.no_grad()
    def adam_state_from(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> None:
        """Read Adam state (e.g. a resumed SAELens checkpoint) from ``optimizer`` if it has any."""
        for i, p in enumerate(params):
            st = optimizer.state.get(p)
            if not st:
                continue
            m, v = st["exp_avg"], st["exp_avg_sq"]
            if i == 0 and not self.in_place:
                m, v = m.t(), v.t()
            self.exp_avg[i].copy_(m)
            self.exp_avg_sq[i].copy_(v)
            self.state_steps[i].fill_(float(st["step"]))

    @torch.no_grad()
    def write_to(self, sae: Any) -> Any:
        """Copy the trained parameters (and BatchTopK threshold) into a SAELens training SAE of the same
        shape, on its device and dtype; returns it (save it with ``sae.save_inference_model(path)``)."""
        if self.in_place and sae.W_enc.data.data_ptr() == self.params[0].data_ptr():
            return sae
        sae.W_enc.data.copy_(self.W_encT.t())
        sae.b_enc.data.copy_(self.b_enc)
        sae.W_dec.data.copy_(self.W_dec)
        sae.b_dec.data.copy_(self.b_dec)
        if hasattr(sae, "topk_threshold"):
            sae.topk_threshold = self.topk_threshold.to(sae.topk_threshold.device).clone()
        return sae

    def set_lr(self, lr: float) -> None:
        self._lr = float(lr)
        self._lr_t.fill_(self._lr)

    @property
    def dead_neurons(self) -> torch.Tensor:
        return self.n_forward_passes_since_fired > self.cfg.dead_feature_window

    def aux_stats(self) -> dict[str, Any]:
        """This process's steps per padded aux width (``"0"``: without the aux loss; d_sae: over all columns), the
        widths in the order they first ran (``aux_widths_in_order``: a width's first step pays the one-off costs
        that no earlier step paid, such as the first aux step's kernels), the seconds of the first two steps at each
        width on CUDA (``first_steps_s_by_width``: the first runs eagerly and compiles that width's kernels, the
        second captures its CUDA graph; ``first_steps_profile_by_width``: the first one's profile with
        ``profile_first_steps``, else empty) and the mean dead fraction over its aux
        steps (None without any), what the aux path's warm-up did (``aux_warm``: its seconds and widths, None when
        it did not run; cfg.warm_aux), and why CUDA-graph replay was given up (``cuda_graph_failed``: the capture error;
        None if it never failed): where the step time went."""
        aux_steps = sum(n for w, n in self.aux_width_steps.items() if w)
        dead_sum = self.aux_dead_sum + (int(self._aux_dead_sum_t) if self._aux_dead_sum_t is not None else 0)
        return {
            "aux_steps_by_width": {str(w): n for w, n in sorted(self.aux_width_steps.items())},
            "aux_widths_in_order": list(self.aux_width_steps),  # (a dict keeps its keys' first-insertion order)
            "first_steps_s_by_width": {str(w): [round(t, 4) for t in s] for w, s in sorted(self.first_steps_s.items())},
            "first_steps_profile_by_width": {str(w): p for w, p in sorted(self.first_steps_profile.items())},
            "mean_dead_fraction_aux_steps": dead_sum / (aux_steps * self.cfg.d_sae) if aux_steps else None,
            "aux_warm": self.aux_warm,
            "cuda_graph_failed": self._graph_failed,
        }

    @property
    def feature_sparsity(self) -> torch.Tensor:
        return self.act_freq_scores / max(self.n_frac_active_samples, 1)

    # ------------------------------------------------------------------ selection
    def _row_topk(
        self, pre_s: torch.Tensor, k: int, copy: _CopyPlan | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Per-row top k (unsorted): the Triton kernel sae_rdp_plugin.fast.topk_kernel.row_topk on the Triton
        path (faster than torch.topk: benchmarks/training_speed; exact, same values; ties may pick other
        columns) when cfg.row_topk, k <= 256 (its lower bound needs k <= 256 column groups) and on CUDA
        (under Triton's CPU interpreter it is far too slow for whole steps; tests/fast/test_topk_kernel.py
        checks it there on its own, and tests/fast/test_fast_kernels.py::test_row_topk_in_the_triton_step in
        one step), else torch.topk. ``copy`` (:meth:`_aux_copy_plan`): also return the aux selection's masked copy
        when row_topk writes it from the same read (:func:`topk_kernel.row_topk_masked_copy`), else None."""
        if (
            self.use_triton
            and self.cfg.row_topk
            and k <= 256
            and (pre_s.device.type == "cuda" or self._row_topk_on_cpu)
        ):
            from sae_rdp_plugin.fast import topk_kernel

            if topk_kernel.available(pre_s.device):
                if copy is not None:
                    return topk_kernel.row_topk_masked_copy(pre_s, k, copy.keep, pos=copy.pos, width=copy.width)
                return (*topk_kernel.row_topk(pre_s, k), None)
        return (*pre_s.topk(k, dim=1, sorted=False), None)

    #: tests only: use row_topk on CPU too (Triton interpreter)
    _row_topk_on_cpu = False

    def _aux_topk(
        self, sel: torch.Tensor, keep: torch.Tensor | None, k: int, fresh: bool, masked: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top k per row of ``sel`` among the columns ``keep`` (the others as -inf): cfg.aux_topk "radix" on the
        Triton path (topk_kernel.masked_topk: the mask read by the kernel, no masked copy; on CPU only with
        ``_row_topk_on_cpu``, as row_topk), else a masked copy and torch.topk (``fresh``: ``sel`` is a temporary
        of the caller and is filled in place; ``masked``: that masked copy, already made by the main TopK's read)."""
        if self.cfg.aux_topk == "radix" and self.use_triton and (sel.device.type == "cuda" or self._row_topk_on_cpu):
            from sae_rdp_plugin.fast import topk_kernel

            if topk_kernel.available(sel.device):
                return topk_kernel.masked_topk(sel, k, keep)
        if masked is None:
            masked = sel.masked_fill_(~keep, -torch.inf) if fresh else sel.masked_fill(~keep, -torch.inf)
        return masked.topk(k, dim=1, sorted=False)

    def _select(self, pre_s: torch.Tensor, copy: _CopyPlan | None = None) -> tuple[_Sparse, torch.Tensor | None]:
        """Sparse codes from the rescaled pre-activations pre_s = pre * n (values: relu(pre_s), rescaled), and the
        aux selection's masked copy ``copy`` asks for when the row TopK kernel wrote it (else None)."""
        B, d_sae = pre_s.shape
        cfg = self.cfg
        if cfg.kind == "topk":
            k = int(cfg.k)
            v, i, masked = self._row_topk(pre_s, k, copy)
            offsets = torch.arange(0, B * k, k, device=pre_s.device)
            o2b = torch.arange(B * k, device=pre_s.device) // k
            return _Sparse(i.reshape(-1), offsets, v.to(self.dtype).relu_().reshape(-1), o2b), masked
        K = int(cfg.k * B)  # BatchTopK: the K largest of relu(pre_s) over the whole batch
        kc = min(d_sae, max(1, int(math.ceil(cfg.batchtopk_candidates * cfg.k))))
        masked = None
        if kc < d_sae:
            cv, ci, masked = self._row_topk(pre_s, kc, copy)
            flat = cv.to(self.dtype).relu_().reshape(-1)
            K = min(K, flat.numel())
            tv, tp = flat.topk(K, sorted=False)
            rows = tp // kc
            counts = torch.bincount(rows, minlength=B)
            # exact unless some row had all its kc candidates selected (it might hold more)
            if bool((counts >= kc).any()):
                self.n_inexact_batchtopk_fallbacks += 1
            else:
                order = torch.argsort(tp)
                tp = tp[order]
                offsets = torch.cumsum(counts, 0) - counts
                return _Sparse(ci.reshape(-1)[tp], offsets, tv[order], rows[order]), masked
        flat = pre_s.to(self.dtype).relu().reshape(-1)
        tv, tp = flat.topk(min(K, flat.numel()), sorted=False)
        order = torch.argsort(tp)
        tp = tp[order]
        rows = tp // d_sae
        counts = torch.bincount(rows, minlength=B)
        offsets = torch.cumsum(counts, 0) - counts
        return _Sparse(tp % d_sae, offsets, tv[order], rows), masked

    # ------------------------------------------------------------------ the step
    def step(
        self, x: torch.Tensor, dead: torch.Tensor | None | str = "auto", n_dead_bound: int | None = None
    ) -> dict[str, torch.Tensor]:
        """One training step on a batch ``x`` [B, d_in]; returns the losses (device tensors, no sync):
        ``mse_loss``, ``auxiliary_reconstruction_loss``, ``loss``, ``l0``, and ``fired`` (per-latent
        count of nonzero activations in this batch). ``dead``: the dead-latent mask for the aux loss
        ("auto": from this trainer's own counters, as SAETrainer does; with dead_count="lagged" their lagged
        bound replaces the count). ``n_dead_bound``: an upper bound of the dead count of a given mask
        (:class:`LaggedDeadCount`), used instead of counting it (a host sync); None counts."""
        cfg = self.cfg
        if x.ndim != 2 or x.shape[1] != cfg.d_in:
            raise SaeRdpError(f"fast step: batch must be [B, {cfg.d_in}], got {tuple(x.shape)}")
        x = x.to(device=self.device, dtype=self.dtype)
        B = x.shape[0]
        if self.n_training_steps == 0 and self.aux_warm is None and self._warm_aux_applies():
            self.warm_aux_path(x)
        # dead mask as SAETrainer computes it before the forward pass; a latent can be dead only after
        # dead_feature_window steps, so the host sync to count them is skipped until then
        if isinstance(dead, str):
            dead = self.dead_neurons if self.n_training_steps > cfg.dead_feature_window else None
            lag, n = self.lagged_dead_count, self.n_training_steps
            if lag is not None:  # read this step's bound before recording the one L steps ahead (same slot)
                n_dead_bound = lag.bound(n)
                lag.record(self.n_forward_passes_since_fired, n, cfg.dead_feature_window)
        if cfg.aux_loss_coefficient == 0:
            # the aux loss and its gradients are c * (...) = 0: skip its work and the host sync counting the dead
            dead = None
        graph = self._graph_applicable()
        n_pad = None
        if dead is not None:
            # the dead count (or its bound): whether the aux loss runs, its width; counting is one host sync
            lagged = n_dead_bound is not None
            n_dead = n_dead_bound if lagged else int(dead.sum())
            if n_dead == 0:
                dead = None  # no latent is dead: no aux loss, the cheaper graph
            else:
                n_pad = self._aux_n_pad = aux_pad_width(
                    n_dead, cfg.d_sae, self._k_aux(), cfg.aux_compact, prev=self._aux_n_pad
                )
                if lagged:  # the exact count, summed on the device
                    s = dead.sum()
                    self._aux_dead_sum_t = s if self._aux_dead_sum_t is None else self._aux_dead_sum_t + s
                else:
                    self.aux_dead_sum += n_dead
        width = n_pad if dead is not None else 0
        # the first two steps at a width compile its kernels and capture its graph: timed (two syncs each, twice
        # per width) so that a run's report shows what that one-off cost was
        done = self.aux_width_steps.get(width, 0)
        first = done < 2 and (self.device.type == "cuda" or cfg.profile_first_steps)
        with contextlib.ExitStack() as stack:
            prof = compiled = None
            if first:
                synchronize(self.device)
                if cfg.profile_first_steps and done == 0:
                    prof = stack.enter_context(_first_step_profiler(self.device))
                    compiled = stack.enter_context(triton_compiles())
                t_first = time.perf_counter()
            self.aux_width_steps[width] = done + 1
            with _deterministic_algorithms(cfg.deterministic):
                if graph:
                    losses = self._graph_step(x, dead, n_pad)
                else:
                    losses, sp, vals_s = self._device_step(x, dead, n_pad)
                    self._last_sparse = sp
                    self._last_vals_s = vals_s
            if first:
                synchronize(self.device)
                dt = time.perf_counter() - t_first
                self.first_steps_s.setdefault(width, []).append(dt)
        if prof is not None:  # stopped on leaving the block
            self.first_steps_profile[width] = first_step_profile(prof, dt, compiled)
        self.n_frac_active_samples += B
        self.n_training_steps += 1
        return losses

    @torch.no_grad()
    def _device_step(
        self, x: torch.Tensor, dead: torch.Tensor | None, n_pad: int | None = None
    ) -> tuple[dict[str, torch.Tensor], _Sparse, torch.Tensor]:
        """Everything :meth:`step` runs on the device (loss, gradients, clipping, Adam, dead-latent and
        BatchTopK bookkeeping); no host sync for TopK. ``n_pad``: padded width of the aux selection
        (:func:`aux_pad_width`; it must hold all dead latents); None = all d_sae columns."""
        cfg = self.cfg
        B = x.shape[0]
        if n_pad is None:
            n_pad = cfg.d_sae  # never derived here (that would sync inside a graph capture)
        if self.use_triton and self.grad_allreduce is None:
            losses, sp, vals_s = self._fused_step(x, dead, n_pad)
        else:
            losses, grads, sp, vals_s = self.loss_and_grads(x, dead, n_pad=n_pad)
            if self.grad_allreduce is not None:
                self.grad_allreduce(grads)
            # ---- clip_grad_norm_(max_norm) folded into Adam's grad_scale (grad / scale)
            total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            clip = torch.clamp(cfg.max_grad_norm / (total + 1e-6), max=1.0)
            self._adam(grads, clip)
        # ---- trainer bookkeeping (no host sync)
        a = sp.vals
        fired = torch.zeros(cfg.d_sae, device=self.device, dtype=self.dtype).index_add_(
            0, sp.idx, (a > 0).to(self.dtype)
        )
        self.act_freq_scores += fired
        self.n_forward_passes_since_fired += 1
        self.n_forward_passes_since_fired.masked_fill_(fired > 0, 0)
        if cfg.kind == "batchtopk":
            pos = torch.where(vals_s > 0, vals_s, torch.full_like(vals_s, torch.inf))
            mn = pos.min() if pos.numel() else torch.tensor(torch.inf, device=self.device)
            lr_t = cfg.topk_threshold_lr
            new = (1 - lr_t) * self.topk_threshold + lr_t * mn.double()
            self.topk_threshold.copy_(torch.where(torch.isfinite(mn), new, self.topk_threshold))
        losses["l0"] = (a > 0).sum() / B
        losses["fired"] = fired
        return losses, sp, vals_s

    # ------------------------------------------------------------------ CUDA graph replay
    def _graph_applicable(self) -> bool:
        return (
            self.cfg.cuda_graph
            and self.grad_allreduce is None
            and self._graph_failed is None
            and self.use_triton
            and self.cfg.kind == "topk"
            and self.device.type == "cuda"
        )

    def _graph_step(
        self, x: torch.Tensor, dead: torch.Tensor | None, n_pad: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Run the step as a replay of a captured CUDA graph: the batch (and the dead-latent mask) are
        copied into the graph's input buffers, the learning rate lives in a device tensor. Two graphs are
        kept, without and with the aux loss (its shapes are static: see :meth:`_aux_loss`); the aux one is
        valid for one padded width n_pad of the aux selection and is recaptured when the step asks for
        another (aux_pad_width keeps the width while it fits). The first two steps (Triton compilation,
        cache allocation) and the first step at each aux width (its kernels and shapes are new: they run
        once outside a capture) run eagerly; steps of another batch shape or after the parameters changed
        otherwise run eagerly and (re)capture."""
        aux = dead is not None
        n_pad = (n_pad if n_pad is not None else self.cfg.d_sae) if aux else None
        key = (tuple(x.shape), self._cache_key() if self._lp_cache is not None else None)
        held = self._graphs.get(aux)
        if held is not None and held.n_pad != n_pad:
            # another aux width: drop the old graph (and its memory pool) before capturing the new one
            del self._graphs[aux]
            held = None
        if held is not None and key == held.key:
            held.x.copy_(x)
            if aux:
                held.dead.copy_(dead)
            held.graph.replay()
            self._last_sparse, self._last_vals_s = held.sparse, held.vals_s
            return {k: v.clone() for k, v in held.out.items()}
        if any(h.key != key for h in self._graphs.values()):
            self._graphs.clear()  # another batch shape, or the parameters changed outside the step
        if self._graph_eager_steps < 2 or self._lp_cache is None or (aux and n_pad not in self._graph_aux_widths):
            self._graph_eager_steps += 1
            if aux:
                self._graph_aux_widths.add(n_pad)
            losses, sp, vals_s = self._device_step(x, dead, n_pad)
            self._last_sparse, self._last_vals_s = sp, vals_s
            return losses
        static_x = x.clone()
        static_dead = dead.clone() if aux else None
        g = torch.cuda.CUDAGraph()
        try:
            if aux not in self._capture_streams:
                self._capture_streams[aux] = torch.cuda.Stream(self.device)
            stream = self._capture_streams[aux]
            with torch.cuda.graph(g, stream=stream):
                out, sp, vals_s = self._device_step(static_x, static_dead, n_pad)
        except Exception as e:  # noqa: BLE001  (capture unsupported here: stay eager from now on)
            self._graph_failed = f"{type(e).__name__}: {e}"[:300]
            warnings.warn(f"fast step: CUDA graph capture failed, running eagerly ({self._graph_failed})", stacklevel=2)
            self._graphs.clear()
            losses, sp, vals_s = self._device_step(x, dead, n_pad)
            self._last_sparse, self._last_vals_s = sp, vals_s
            return losses
        self._graphs[aux] = _Captured(
            g, (tuple(x.shape), self._cache_key()), static_x, static_dead, out, sp, vals_s, n_pad
        )
        self._last_sparse, self._last_vals_s = sp, vals_s
        g.replay()  # capturing does not run the step: run it
        return {k: v.clone() for k, v in out.items()}

    @torch.no_grad()
    def loss_and_grads(
        self, x: torch.Tensor, dead: torch.Tensor | None = None, n_pad: int | None = None
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor], _Sparse, torch.Tensor]:
        """Losses and the gradients of (mse + aux) w.r.t. [W_enc^T, b_enc, W_dec, b_dec], without
        updating anything. ``dead``: boolean [d_sae] dead-latent mask (None: no aux loss). ``n_pad``: the
        padded width of the aux selection (>= the number of dead latents; d_sae = all columns); None: from
        the dead count and ``aux_compact`` (a host sync)."""
        cfg = self.cfg
        if dead is not None and n_pad is None:
            n_pad = self._aux_n_pad_of(dead)
        B = x.shape[0]
        _, b_enc, W_dec, b_dec = self.params
        W_encT = self.W_encT
        lowp = self._lowp
        wgrad = _weight_grad_csr if cfg.weight_grad_impl == "csr" else _weight_grad
        u = x - b_dec if cfg.apply_b_dec_to_input else x
        n = W_dec.norm(dim=1) if cfg.rescale_acts_by_decoder_norm else None
        # ---- encoder: the one dense matmul, with the decoder-norm rescale folded into it
        if cfg.bf16:
            Wl = W_encT.to(lowp)
            if n is not None:
                Wl.mul_(n.to(lowp)[:, None])
            bias = (b_enc * n if n is not None else b_enc).to(lowp)
            pre_s = torch.addmm(bias, u.to(lowp), Wl.t())
        else:
            pre_s = torch.addmm(b_enc, u, W_encT.t())
            if n is not None:
                pre_s.mul_(n)
        cols = self._aux_cols(dead, n_pad)
        sp, masked = self._select(pre_s, self._aux_copy_plan(dead, cols))
        vals_s = sp.vals  # relu(pre * n), fp32 (what SAELens calls feature_acts)
        inv_n_sel = (1.0 / n)[sp.idx] if n is not None else None
        a = vals_s * inv_n_sel if n is not None else vals_s
        sp.vals = a
        # ---- sparse decoder
        Wd = W_dec.to(lowp) if (cfg.bf16 and cfg.decoder_bf16 and W_dec.device.type != "cuda") else W_dec
        x_hat = _decode(sp, Wd).to(self.dtype) + b_dec
        err = x_hat - x
        werr = err * self.w if self.w is not None else err
        mse = (werr * err).sum() / B
        r = werr * (2.0 / B)  # dL/dx_hat
        # ---- backward through the decoder
        g_a = _vals_grad(sp, Wd, r).to(self.dtype)
        g_Wdec = wgrad(sp, r, a, cfg.d_sae)
        g_pre = g_a * (a > 0)
        # ---- backward through the encoder (sparse pre-activation gradient)
        g_WencT = wgrad(sp, u, g_pre, cfg.d_sae)
        g_benc = torch.zeros_like(b_enc).index_add_(0, sp.idx, g_pre)
        # ---- dead-latent auxiliary loss (SAELens calculate_topk_aux_loss; gamma^2-weighted if weighted)
        aux = torch.zeros((), device=self.device, dtype=self.dtype)
        if dead is not None:
            aux, x_enc, x_dec = self._aux_loss(dead, pre_s, n, err, u, g_benc, lowp, Wd, wgrad, cols, masked)
            _add_rows(g_WencT, x_enc)
            _add_rows(g_Wdec, x_dec)
        g_bdec = r.sum(0)
        if cfg.apply_b_dec_to_input:
            g_bdec -= g_benc @ W_encT
        if self.in_place:
            g_WencT = g_WencT.t().contiguous()  # the gradient in the parameter's own layout
        grads = [g_WencT, g_benc, g_Wdec, g_bdec]
        self._last_x_hat = x_hat
        return {"mse_loss": mse, "auxiliary_reconstruction_loss": aux, "loss": mse + aux}, grads, sp, vals_s

    # ------------------------------------------------------------------ the Triton step
    def invalidate_cache(self) -> None:
        """Forget the cached decoder norms and low-precision weight copies, and the captured CUDA graph
        (call after changing the parameters by other means than :meth:`step`, e.g. through ``.data``;
        in-place changes to the parameters themselves are detected through their version counters)."""
        self._lp_cache = None
        self._graphs.clear()

    def _cache_key(self) -> tuple[int, ...]:
        W_enc, _, W_dec, _ = self.params
        return (W_dec._version, W_enc._version, W_dec.data_ptr(), W_enc.data_ptr())

    def _lowp_weights(self) -> dict[str, Any]:
        """Decoder row norms n, the decoder rows to gather (bf16 copy under bf16, else W_dec itself) and,
        under bf16, the encoder's latent-major bf16 copy pre-multiplied by n. Written by the fused Adam
        pass of the previous step; recomputed here only when the parameters changed otherwise."""
        c = self._lp_cache
        if c is not None and c["key"] == self._cache_key():
            return c
        cfg = self.cfg
        W_dec, W_encT = self.W_dec, self.W_encT
        n = W_dec.norm(dim=1) if cfg.rescale_acts_by_decoder_norm else None
        c = {"n": n, "Wdec": W_dec, "Wenc": None}
        if cfg.bf16:
            c["Wdec"] = W_dec.to(torch.bfloat16)
            c["Wenc"] = torch.empty(cfg.d_sae, cfg.d_in, device=self.device, dtype=torch.bfloat16)
            c["Wenc"].copy_(W_encT * n[:, None] if n is not None else W_encT)
        c["key"] = self._cache_key()
        self._lp_cache = c
        return c

    @torch.no_grad()
    def _fused_backward(self, x: torch.Tensor, dead: torch.Tensor | None, n_pad: int | None = None) -> dict[str, Any]:
        """Forward and backward of the Triton step up to (not including) the weight gradients: losses,
        sparse codes, the latent-major CSR (crow, tok) with the decoder / encoder coefficients and the
        rows they scale (S_dec = dL/dx_hat, S_enc = u; bf16 under bf16), dense extra gradients of the aux
        loss, and the bias gradients."""
        from sae_rdp_plugin.fast import kernels as fk

        cfg = self.cfg
        B = x.shape[0]
        _, b_enc, W_dec, b_dec = self.params
        W_encT = self.W_encT
        c = self._lowp_weights()
        n = c["n"]
        u = x - b_dec if cfg.apply_b_dec_to_input else x
        lowp = self._lowp
        if cfg.bf16:
            u_l = u.to(lowp)
            bias = (b_enc * n if n is not None else b_enc).to(lowp)
            pre_s = torch.addmm(bias, u_l, c["Wenc"].t())
        else:
            u_l = u
            pre_s = torch.addmm(b_enc, u, W_encT.t())
            if n is not None:
                pre_s.mul_(n)
        cols = self._aux_cols(dead, n_pad)
        sp, masked = self._select(pre_s, self._aux_copy_plan(dead, cols))
        vals_s = sp.vals
        a = vals_s / n[sp.idx] if n is not None else vals_s
        sp.vals = a
        nnz = sp.idx.numel()
        off = torch.cat([sp.offsets, torch.full((1,), nnz, device=self.device, dtype=sp.offsets.dtype)])
        Wd = c["Wdec"]
        x_hat = fk.decode(Wd, sp.idx, a, off, b_dec)
        err = x_hat - x
        werr = err * self.w if self.w is not None else err
        mse = (werr * err).sum() / B
        r = werr * (2.0 / B)
        g_pre = fk.rowdot(Wd, sp.idx, off, r) * (a > 0)
        # latent-major CSR of the entries: tokens and coefficients of each latent's gradient rows
        order = torch.argsort(sp.idx)
        crow = torch.searchsorted(sp.idx[order], torch.arange(cfg.d_sae + 1, device=self.device, dtype=sp.idx.dtype))
        g_benc = torch.zeros_like(b_enc).index_add_(0, sp.idx, g_pre)
        # dead-latent aux loss: dense extra gradients (both aux implementations)
        aux = torch.zeros((), device=self.device, dtype=self.dtype)
        X_dec = X_enc = None  # the aux loss's weight gradients: dense, or at the compacted columns only (RowsAt)
        if dead is not None:
            wgrad = _weight_grad_csr if cfg.weight_grad_impl == "csr" else _weight_grad
            Wdl = c["Wdec"] if cfg.bf16 else None  # the bf16 decoder the step keeps (no second conversion)
            aux, X_enc, X_dec = self._aux_loss(dead, pre_s, n, err, u, g_benc, lowp, W_dec, wgrad, cols, masked, Wdl)
            if AUX_GRAD_ROWS == "rows":
                X_enc, X_dec = self._as_rows(X_enc), self._as_rows(X_dec)
        g_bdec = r.sum(0)
        if cfg.apply_b_dec_to_input:
            g_bdec -= g_benc @ W_encT
        S_dec = r.to(lowp) if cfg.bf16 else r
        hot_dec = hot_enc = None
        n_hot = self._hot_rows(B)
        if n_hot > 0:
            slot, (gh_dec, gh_enc) = fk.hot_rows(
                crow,
                sp.idx,
                sp.offset2bag,
                [a, g_pre],
                [S_dec, u_l],
                max_hot=n_hot,
                min_count=cfg.hot_min_count,
                unique=True,
            )
            hot_dec, hot_enc = (slot, gh_dec), (slot, gh_enc)
        self._last_x_hat = x_hat
        return {
            "losses": {"mse_loss": mse, "auxiliary_reconstruction_loss": aux, "loss": mse + aux},
            "sp": sp,
            "vals_s": vals_s,
            "crow": crow,
            "tok": sp.offset2bag[order],
            "coef_dec": a[order].contiguous(),
            "coef_enc": g_pre[order].contiguous(),
            "S_dec": S_dec,
            "S_enc": u_l,
            "X_dec": X_dec,
            "X_enc": X_enc,
            "hot_dec": hot_dec,
            "hot_enc": hot_enc,
            "g_benc": g_benc,
            "g_bdec": g_bdec,
            "cache": c,
        }

    def _as_rows(self, X: torch.Tensor | RowsAt) -> RowsAt:
        """The aux loss's weight gradient as :class:`RowsAt`: a dense [d_sae, d_in] one (the selection over all
        d_sae columns, or the sparse aux products) at every row. The fused kernels then take it the same way
        (X_MAPPED, one specialisation) at every aux width: given dense at width d_sae only, it compiled three
        more variants of the fused Adam kernel on the first step at that width (seconds per width on a cold
        Triton cache, inside a run's timed steps). The identity slot costs one int32 read per latent row."""
        if isinstance(X, RowsAt):
            return X
        if self._all_rows is None or self._all_rows[0].device != X.device:
            d = self.cfg.d_sae
            self._all_rows = (
                torch.arange(d, device=X.device, dtype=torch.int64),
                torch.arange(d, device=X.device, dtype=torch.int32),
            )
        return RowsAt(self._all_rows[0], X, self._all_rows[1])

    def _hot_rows(self, B: int) -> int:
        """Hot-row capacity H of the Triton step (static per batch size). Automatic (hot_rows=-1): with
        H >= B*k / c, every latent left to the gather loop has at most c entries (the (H+1)-th busiest
        latent has at most B*k / (H+1)); c = 64 under bf16 (the two [H, B] x [B, d] products run as bf16
        GEMMs) and 256 in float32 (float32 GEMMs are ~15x slower); at least 256, at most d_sae."""
        if self.cfg.hot_rows >= 0:
            return self.cfg.hot_rows
        c = 64 if self.cfg.bf16 else 256
        return min(self.cfg.d_sae, max(256, -(-int(B * math.ceil(self.cfg.k)) // c)))

    @torch.no_grad()
    def triton_loss_and_grads(
        self, x: torch.Tensor, dead: torch.Tensor | None = None, n_pad: int | None = None
    ) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
        """Losses and the gradients [W_enc^T, b_enc, W_dec, b_dec] as the Triton step forms them (the
        weight gradients materialised through the same fused kernel, with Adam reduced to the identity),
        without updating anything. For tests and on-device checks against :meth:`loss_and_grads`
        (``n_pad`` as there)."""
        from sae_rdp_plugin.fast import kernels as fk

        x = x.to(device=self.device, dtype=self.dtype)
        if dead is not None and n_pad is None:
            n_pad = self._aux_n_pad_of(dead)
        f = self._fused_backward(x, dead, n_pad)
        grads = []
        for key in ("enc", "dec"):
            grads.append(
                fk.sparse_grad(f["crow"], f["tok"], f["coef_" + key], f["S_" + key], f["X_" + key], hot=f["hot_" + key])
            )
        return f["losses"], [grads[0], f["g_benc"], grads[1], f["g_bdec"]]

    @torch.no_grad()
    def _fused_step(
        self, x: torch.Tensor, dead: torch.Tensor | None, n_pad: int | None = None
    ) -> tuple[dict[str, torch.Tensor], _Sparse, torch.Tensor]:
        """The whole step with the Triton kernels: the same loss, gradients and update as
        :meth:`loss_and_grads` + clipping + Adam, but the weight gradients are formed row by row inside
        two fused passes (norm, then clipped Adam), never as dense [d_sae, d_in] tensors."""
        from sae_rdp_plugin.fast import kernels as fk

        cfg = self.cfg
        f = self._fused_backward(x, dead, n_pad)
        c, crow, tok = f["cache"], f["crow"], f["tok"]
        g_benc, g_bdec = f["g_benc"], f["g_bdec"]
        n = c["n"]
        _, b_enc, W_dec, b_dec = self.params
        # SAELens's W_enc layout ([d_in, d_sae], in_place): its Adam tiles are narrow in d, so forming the
        # gradient rows inside them would gather every entry d/BD times (slow when a latent has many
        # entries, as on real activations): form G_enc latent-major first, then a dense Adam pass over it
        G_enc = None
        if self.in_place:
            G_enc = fk.sparse_grad(crow, tok, f["coef_enc"], f["S_enc"], f["X_enc"], hot=f["hot_enc"])
        # ---- pass 1: the global gradient norm -> clip coefficient (SAETrainer's clip_grad_norm_)
        sq_enc = (
            G_enc.square().sum()
            if G_enc is not None
            else fk.sparse_grad_sq(crow, tok, f["coef_enc"], f["S_enc"], f["X_enc"], hot=f["hot_enc"])
        )
        sq = (
            fk.sparse_grad_sq(crow, tok, f["coef_dec"], f["S_dec"], f["X_dec"], hot=f["hot_dec"])
            + sq_enc
            + g_benc.square().sum()
            + g_bdec.square().sum()
        )
        clip = torch.clamp(cfg.max_grad_norm / (sq.sqrt() + 1e-6), max=1.0)
        # ---- pass 2: clipped Adam on the weight rows (decoder first: its new row norms scale the
        # encoder's bf16 copy), then torch's fused Adam on the two bias vectors
        torch._foreach_add_(self.state_steps, 1)
        t = self.state_steps[0]
        b1, b2 = cfg.adam_beta1, cfg.adam_beta2
        hp = torch.stack(
            [self._lr_t / (1 - torch.pow(b1, t)), torch.sqrt(1 - torch.pow(b2, t)), clip.to(t.dtype)]
        ).float()
        M_enc, V_enc = self.exp_avg[0], self.exp_avg_sq[0]
        if self.in_place:
            M_enc, V_enc = M_enc.t(), V_enc.t()
        fk.sparse_grad_adam(
            crow,
            tok,
            f["coef_dec"],
            f["S_dec"],
            W_dec,
            self.exp_avg[2],
            self.exp_avg_sq[2],
            hp,
            betas=(b1, b2),
            eps=cfg.adam_eps,
            X=f["X_dec"],
            norm_out=n,
            lp_out=c["Wdec"] if cfg.bf16 else None,
            hot=f["hot_dec"],
        )
        if G_enc is not None:  # dense pass: no entries (an empty CSR), the gradient comes in as X
            csr_enc = (torch.zeros(cfg.d_sae + 1, device=self.device, dtype=crow.dtype), tok[:1], f["coef_enc"][:1])
            X_enc, hot_enc = G_enc, None
        else:
            csr_enc, X_enc, hot_enc = (crow, tok, f["coef_enc"]), f["X_enc"], f["hot_enc"]
        fk.sparse_grad_adam(
            *csr_enc,
            f["S_enc"],
            self.W_encT,
            M_enc,
            V_enc,
            hp,
            betas=(b1, b2),
            eps=cfg.adam_eps,
            X=X_enc,
            scale=n if cfg.bf16 else None,
            lp_out=c["Wenc"],
            hot=hot_enc,
        )
        torch._fused_adam_(
            [b_enc, b_dec],
            [g_benc, g_bdec],
            [self.exp_avg[1], self.exp_avg[3]],
            [self.exp_avg_sq[1], self.exp_avg_sq[3]],
            [],
            [self.state_steps[1], self.state_steps[3]],
            lr=self._lr_t,
            beta1=b1,
            beta2=b2,
            weight_decay=0.0,
            eps=cfg.adam_eps,
            amsgrad=False,
            maximize=False,
            grad_scale=(1.0 / clip).float().reshape(1),
            found_inf=None,
        )
        c["key"] = self._cache_key()
        return f["losses"], f["sp"], f["vals_s"]

    # ------------------------------------------------------------------ dead-latent aux loss
    @property
    def _lowp(self) -> torch.dtype:
        """The dtype of the step's products: bf16 under cfg.bf16, else the trainer's dtype."""
        return torch.bfloat16 if self.cfg.bf16 else self.dtype

    def _k_aux(self) -> int:
        """Width of the aux selection: min(d_in/2, d_sae) (SAELens's k_aux, capped at the latent count)."""
        return min(self.cfg.d_in // 2, self.cfg.d_sae)

    def _aux_cols(self, dead: torch.Tensor | None, n_pad: int | None) -> torch.Tensor | None:
        """The compacted aux selection's columns (n_pad < d_sae): the latent of each, the dead ones first (ascending),
        then live ones as padding; None over all d_sae columns or without the aux loss."""
        if dead is None or n_pad is None or n_pad >= self.cfg.d_sae:
            return None
        # a stable sort of one byte per latent: one radix pass on CUDA, no sync
        return torch.argsort((~dead).to(torch.int8), stable=True)[:n_pad]

    def _aux_copy_plan(self, dead: torch.Tensor | None, cols: torch.Tensor | None) -> _CopyPlan | None:
        """What the main TopK should write of the aux selection (AUX_COPY_IN_TOPK): over all d_sae columns
        pre_s.masked_fill(~dead, -inf), over the compacted ``cols`` ("all" only) its gather at those columns; None
        when the selection is not a torch.topk over such a copy (the radix and topk_mask kernels read pre_s with the
        mask themselves) or the switch is off."""
        cfg = self.cfg
        if dead is None or AUX_COPY_IN_TOPK == "off" or cfg.aux_topk == "radix":
            return None
        if cols is not None and AUX_COPY_IN_TOPK != "all":
            return None
        width = cfg.d_sae if cols is None else int(cols.numel())
        if self._aux_dense(self._k_aux(), width) and self._aux_mask_kernel_applies(width, self._lowp, self.device):
            return None  # topk_kernel.topk_mask selects from pre_s itself
        if cols is None:
            return _CopyPlan(dead, None, width)
        pos = torch.full((cfg.d_sae,), -1, device=dead.device, dtype=torch.int32)
        pos[cols] = torch.arange(width, device=dead.device, dtype=torch.int32)
        return _CopyPlan(dead, pos, width)

    def _aux_n_pad_of(self, dead: torch.Tensor) -> int:
        """aux_pad_width for this mask (counts it: a host sync; no hysteresis)."""
        return aux_pad_width(int(dead.sum()), self.cfg.d_sae, self._k_aux(), self.cfg.aux_compact)

    def _aux_loss(
        self,
        dead: torch.Tensor,
        pre_s: torch.Tensor,
        n: torch.Tensor | None,
        err: torch.Tensor,
        u: torch.Tensor,
        g_benc: torch.Tensor,
        lowp: torch.dtype,
        Wd: torch.Tensor,
        wgrad: Callable[..., torch.Tensor],
        cols: torch.Tensor | None = None,
        masked: torch.Tensor | None = None,
        Wdl: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | RowsAt, torch.Tensor | RowsAt]:
        """SAELens's calculate_topk_aux_loss (gamma^2-weighted if weighted): the top k_aux = min(d_in/2,
        n_dead) dead latents of pre*n per row, their pre-activations (no ReLU) decoding the residual,
        scale c * min(n_dead / (d_in/2), 1). Accumulates its bias gradient into g_benc; returns (the loss,
        its W_enc^T and W_dec gradients [d_sae, d_in]: dense, or given at the compacted columns only as
        :class:`RowsAt`, which the fused kernels read without a dense zero-filled matrix).

        Shapes are static (no host sync, so the step can be captured as a CUDA graph): the top
        K = min(d_in/2, d_sae) of pre*n with live latents set to -inf are taken, and the entries that
        are not dead latents are zeroed. With n_dead >= K these are SAELens's K entries; with
        n_dead < K they are all n_dead dead latents plus zeroed entries, i.e. SAELens's top n_dead.

        ``cols`` (compacted selection, :meth:`_aux_cols` of a padded width n_pad < d_sae; the caller guarantees
        n_dead <= n_pad and K <= n_pad, see aux_pad_width): the top K runs over those n_pad columns only, the dead
        latents' columns (ascending) followed by live ones masked to -inf; same entries, static shapes. None: all
        d_sae columns.

        ``masked``: the selection's copy with the live latents at -inf (``pre_s``'s, or its gather at the compacted
        columns), written by the main TopK (:meth:`_aux_copy_plan`); ``Wdl``: W_dec in lowp, if the caller holds
        it."""
        cfg = self.cfg
        k_aux_full = cfg.d_in // 2
        k_aux = self._k_aux()
        num_dead = dead.sum().to(self.dtype)
        c = cfg.aux_loss_coefficient * torch.clamp(num_dead / k_aux_full, max=1.0)
        width = cfg.d_sae if cols is None else int(cols.numel())
        if self._aux_dense(k_aux, width):
            # compacted: the dense products run over the n_pad selected columns only (W_dec rows gathered)
            A, M = self._aux_dense_selection(pre_s, dead, n, cols, k_aux, lowp, masked)
            return self._aux_loss_dense(A, M, err, c, u, g_benc, lowp, cols, Wdl)
        _, ai, valid, aux_a = self._aux_entries(pre_s, dead, n, cols, k_aux, masked)
        aux, aux_sp, g_aux_a, g_dec = self._aux_loss_sparse(ai, aux_a, valid, err, c, Wd, wgrad)
        g_benc.index_add_(0, aux_sp.idx, g_aux_a)
        return aux, wgrad(aux_sp, u, g_aux_a, cfg.d_sae), g_dec

    def _aux_entries(
        self,
        pre_s: torch.Tensor,
        dead: torch.Tensor,
        n: torch.Tensor | None,
        cols: torch.Tensor | None,
        k_aux: int,
        masked: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The aux selection as [B, k_aux] entries: (column in the selection ``j``, latent ``ai``, whether it is
        dead ``valid``, its value pre = pre_s / n, zeroed where not ``valid``) from :meth:`_aux_topk` over the
        columns ``cols`` (compacted) or all d_sae (``masked``: their copy with the live latents at -inf, if made)."""
        compact = cols is not None
        if masked is not None:  # written by the main TopK: no gather, no mask here
            sel, sel_dead = masked, None
        else:
            sel, sel_dead = (pre_s.index_select(1, cols), dead[cols]) if compact else (pre_s, dead)
        # not row_topk: its candidate ranking grows as k^2 and measured slower at k_aux (benchmarks/training_speed)
        av, j = self._aux_topk(sel, sel_dead, k_aux, fresh=compact, masked=masked)
        ai = cols[j] if compact else j
        valid = dead[ai]
        av = av.to(self.dtype)
        aux_a = torch.where(valid, av / n[ai] if n is not None else av, 0.0)  # = pre (no relu), as SAELens
        return j, ai, valid, aux_a

    def _aux_mask_kernel_applies(self, width: int, lowp: torch.dtype, device: torch.device) -> bool:
        """Whether the dense aux selection runs as topk_kernel.topk_mask (cfg.aux_topk "mask", or "auto" at width
        d_sae; the Triton path, a row of at most TOPK_MASK_MAX_COLS columns, fp32 or bf16 products; on CPU only with
        ``_row_topk_on_cpu``, as row_topk)."""
        mode = self.cfg.aux_topk
        if not self.use_triton or not (mode == "mask" or (mode == "auto" and width >= self.cfg.d_sae)):
            return False
        if device.type != "cuda" and not self._row_topk_on_cpu:
            return False
        from sae_rdp_plugin.fast import topk_kernel

        return (
            width <= topk_kernel.TOPK_MASK_MAX_COLS
            and lowp in (torch.float32, torch.bfloat16)
            and topk_kernel.available(device)
        )

    def aux_widths(self) -> tuple[int, ...]:
        """Every padded width the aux selection can take (:func:`aux_pad_width`): the buckets and d_sae."""
        buckets = aux_pad_buckets(self.cfg.d_sae, self._k_aux()) if self.cfg.aux_compact == "auto" else ()
        return (*buckets, self.cfg.d_sae)

    def precompile_aux_selection(self) -> list[int]:
        """Compile the aux selection's kernels for every aux width now (on CUDA: at construction, before any
        step), where they specialise on the width: topk_kernel.topk_mask (cfg.aux_topk "mask") holds a row in
        registers, so its block (and warps) follow the width's power of two, and at width d_sae it reads all
        columns (no ``cols``). Otherwise the first step at each new width compiled them inside the run's timed
        steps (about 1 to 2.5 s each on an H200 with a cold Triton cache, benchmarks/e2e 2026-12-05). Each is
        one launch on a one-row input with the step's argument types (a cache hit once compiled). Returns the
        widths compiled for (none on other paths: their kernels do not depend on the width)."""
        cfg = self.cfg
        lowp = self._lowp
        k_aux = self._k_aux()
        done = []
        for width in self.aux_widths():
            if not (self._aux_dense(k_aux, width) and self._aux_mask_kernel_applies(width, lowp, self.device)):
                continue  # (topk_mask runs in the dense aux products only)
            from sae_rdp_plugin.fast import topk_kernel

            d_sae, dev = cfg.d_sae, self.device
            cols = torch.arange(width, device=dev) if width < d_sae else None
            div = torch.ones(d_sae, device=dev, dtype=self.dtype) if cfg.rescale_acts_by_decoder_norm else None
            keep = torch.ones(d_sae, device=dev, dtype=torch.bool)
            x = torch.zeros(1, d_sae, device=dev, dtype=lowp)
            topk_kernel.topk_mask(x, k_aux, keep=keep, cols=cols, div=div, out_dtype=lowp)
            done.append(width)
        return done

    def _warm_aux_applies(self) -> bool:
        """cfg.warm_aux: "on", or "auto" on CUDA with the Triton step in one process (data-parallel steps all-reduce
        inside the step, which a scratch step must not), when the aux loss can run at all."""
        cfg = self.cfg
        if cfg.warm_aux == "off" or cfg.aux_loss_coefficient == 0:
            return False
        if cfg.warm_aux == "on":
            return True
        return self.device.type == "cuda" and self.use_triton and self.grad_allreduce is None

    def warm_aux_path(self, x: torch.Tensor) -> dict[str, Any]:
        """Compile and load what the dead-latent aux loss adds to the step, now: one eager step of a scratch
        trainer (this config, a copy of this trainer's parameters in its layout, in place or not: the kernels
        specialise on it; the batch ``x``) with every latent dead (the selection over all d_sae columns) and,
        where the selection compacts (:func:`aux_pad_buckets`), one with the smallest bucket's worth dead. The
        scratch trainer is then dropped: this trainer's parameters, Adam state, counters and (forked) random
        generators are as before, so training gives the same weights with and without it
        (``tests/fast/test_warm_aux.py``). Kernels are compiled once per process, so the run's first aux step no
        longer pays for them inside its timed steps. On a GPU without twice the scratch's memory free it is
        skipped (``aux_warm["skipped"]``). Returns (and keeps in ``aux_warm``) the seconds and the widths it ran."""
        cfg = self.cfg
        t0 = time.perf_counter()
        if self.device.type == "cuda":
            # the scratch holds a copy of the parameters and its own Adam state (3x the parameters) plus one step's
            # activations: skipped (the aux kernels then compile at the first aux step, as without it) unless twice
            # that is free, so that the warm-up never makes a run fail for memory
            n_params = sum(p.numel() for p in self.params)
            need = 3 * n_params * self.dtype.itemsize + 8 * x.shape[0] * cfg.d_sae * 4
            free, _ = torch.cuda.mem_get_info(self.device)
            if free < 2 * need:
                self.aux_warm = {
                    "s": 0.0,
                    "widths": [],
                    "skipped": f"{free / 2**30:.1f} GiB free < 2 x {need / 2**30:.1f}",
                }
                return self.aux_warm
        gamma = self.w.sqrt() if self.w is not None else None
        # the scratch trainer trains copies in this trainer's layout (in place: SAELens's W_enc [d_in, d_sae]; else
        # latent-major), since the kernels specialise on it; cloned (the constructor keeps a transposed contiguous
        # W_enc without copying it, and in place trains what it is given): this trainer's tensors stay untouched
        if self.in_place:
            W_enc = self.params[0].clone()
        else:
            W_enc = self.W_encT.t().clone()
        devices = [self.device] if self.device.type == "cuda" else []
        widths = []
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=devices))
            compiled = stack.enter_context(triton_compiles()) if cfg.profile_first_steps else None
            scratch = FastTopKTrainer(
                replace(cfg, warm_aux="off", profile_first_steps=False),
                W_enc,
                self.b_enc.clone(),
                self.W_dec.clone(),
                self.b_dec.clone(),
                gamma=gamma,
                topk_threshold=self.topk_threshold.clone(),
                device=self.device,
                dtype=self.dtype,
                in_place=self.in_place,
            )
            buckets = aux_pad_buckets(cfg.d_sae, self._k_aux()) if cfg.aux_compact == "auto" else ()
            for n_dead in (cfg.d_sae, *buckets[:1]):
                dead = torch.zeros(cfg.d_sae, device=self.device, dtype=torch.bool)
                dead[:n_dead] = True
                scratch._aux_n_pad = None  # (no hysteresis from the previous width: aux_pad_width's prev)
                scratch.step(x, dead=dead)
                widths.append(scratch._aux_n_pad)
            synchronize(self.device)
            del scratch
        self.aux_warm = {"s": round(time.perf_counter() - t0, 4), "widths": widths}
        if compiled is not None:  # cfg.profile_first_steps: what the warm-up compiled
            self.aux_warm["triton_compiled"] = compiled
        return self.aux_warm

    def _aux_dense_selection(
        self,
        pre_s: torch.Tensor,
        dead: torch.Tensor,
        n: torch.Tensor | None,
        cols: torch.Tensor | None,
        k_aux: int,
        lowp: torch.dtype,
        masked: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The aux selection as dense matrices over the selection's columns (``cols``, else all d_sae): ``A``
        [B, width] (lowp) holds pre = pre_s / n at each row's top k_aux dead latents of pre_s and 0 elsewhere,
        ``M`` [B, width] (bool) marks those entries. By topk_kernel.topk_mask (one pass, no indices) where
        :meth:`_aux_mask_kernel_applies`, else by a top-k (:meth:`_aux_topk`) scattered into zeros; both take
        the same entries (leftmost among ties for the kernels; torch.topk's tie order is unspecified)."""
        width = self.cfg.d_sae if cols is None else int(cols.numel())
        if self._aux_mask_kernel_applies(width, lowp, pre_s.device):
            from sae_rdp_plugin.fast import topk_kernel

            return topk_kernel.topk_mask(pre_s, k_aux, keep=dead, cols=cols, div=n, out_dtype=lowp)
        j, _, valid, aux_a = self._aux_entries(pre_s, dead, n, cols, k_aux, masked)
        B = pre_s.shape[0]
        A = torch.zeros(B, width, device=pre_s.device, dtype=lowp).scatter_(1, j, aux_a.to(lowp))
        M = torch.zeros(B, width, device=pre_s.device, dtype=torch.bool).scatter_(1, j, valid)
        return A, M

    def _aux_dense_threshold(self) -> float:
        """k_aux / d_sae above which the dense aux path is faster. Per aux term the sparse path reads
        ~4 * B*k_aux*d_in gathered elements (fp32 rows on CUDA), the dense one runs 3 GEMMs of
        2*B*d_sae*d_in FLOPs; with an H100's ~800 TFLOP/s bf16, ~52 TFLOP/s fp32 and ~3 TB/s, dense wins
        above ~1/700 (bf16) and ~1/45 (fp32); the CUDA defaults keep a 2x margin toward sparse at
        bf16. On CPU (2 shared cores, B=512, d_sae=4096, fp32; benchmarks/training_speed/bench_fast_aux_cpu.py) dense is
        1.3x slower than sparse at 1/32 and 1.0-1.1x at 1/16, and bf16 matmuls are 2x slower than fp32
        gathers, so CPU uses dense only in fp32 from 1/8."""
        if self.cfg.aux_dense_min_density is not None:
            return self.cfg.aux_dense_min_density
        if self.device.type == "cuda":
            return 1 / 350 if self.cfg.bf16 else 1 / 45
        return math.inf if self.cfg.bf16 else 1 / 8

    def _aux_dense(self, k_aux: int, width: int | None = None) -> bool:
        """Dense or sparse aux products; ``width``: the columns of the selection (n_pad when compacted)."""
        if self.cfg.aux_impl != "auto":
            return self.cfg.aux_impl == "dense"
        return k_aux / (width or self.cfg.d_sae) >= self._aux_dense_threshold()

    def _aux_loss_dense(
        self,
        A: torch.Tensor,
        M: torch.Tensor,
        err: torch.Tensor,
        c: torch.Tensor,
        u: torch.Tensor,
        g_benc: torch.Tensor,
        lowp: torch.dtype,
        cols: torch.Tensor | None = None,
        Wdl: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | RowsAt, torch.Tensor | RowsAt]:
        """SAELens's aux loss the way SAELens computes it (the selection as a dense [B, width] matrix ``A``,
        dense decoder matmul; bf16 under bf16), with the backward as three dense matmuls: e_hat = A W_dec,
        G = M * (r_aux W_dec^T) (dL/dpre at the selected entries ``M``), dW_dec += A^T r_aux,
        dW_enc^T += G^T u, db_enc += column sums of G. ``cols`` (compacted selection): A has one column per
        latent in ``cols``, the products use W_dec[cols] and the weight gradients are given at the rows ``cols``
        (distinct) only. ``Wdl``: W_dec in lowp if the caller holds it (else converted here). Accumulates into
        g_benc; returns (aux loss, dW_enc^T, dW_dec) in lowp, dense [d_sae, d_in] or :class:`RowsAt`."""
        B = err.shape[0]
        W_dec = self.W_dec if Wdl is None else Wdl
        if cols is not None:
            W_dec = W_dec.index_select(0, cols)
        Wdl = W_dec.to(lowp)
        e_hat = (A @ Wdl).to(self.dtype)
        d_aux = e_hat + err  # e_hat - (x - x_hat); the residual is detached in SAELens
        wd_aux = d_aux * self.w if self.w is not None else d_aux
        aux = c * (wd_aux * d_aux).sum() / B
        rl = (wd_aux * (2.0 * c / B)).to(lowp)
        gW = A.t() @ rl
        # dL/dpre (pre itself, no ReLU: SAELens's aux acts); masked_fill_ runs as a vectorised kernel, while
        # torch.where(M, ., 0) promotes the scalar and runs element by element (slower: profile_fast_step.py --heavy)
        G = (rl @ Wdl.t()).masked_fill_(~M, 0)
        gE = G.t() @ u.to(lowp)
        gb = G.sum(0, dtype=self.dtype)
        if cols is None:
            g_benc += gb
            return aux, gE, gW
        g_benc.index_add_(0, cols, gb)
        g_enc = rows_at(cols, gE, self.cfg.d_sae)
        g_dec = g_enc._replace(rows=gW)
        if AUX_GRAD_ROWS == "dense":  # the layout before RowsAt, for side-by-side benchmarks
            shape = (self.cfg.d_sae, self.cfg.d_in)
            zeros = [torch.zeros(shape, device=gW.device, dtype=self.dtype) for _ in range(2)]
            return aux, g_enc.add_to(zeros[0]), g_dec.add_to(zeros[1])
        return aux, g_enc, g_dec

    def _aux_loss_sparse(
        self,
        ai: torch.Tensor,
        aux_a: torch.Tensor,
        valid: torch.Tensor,
        err: torch.Tensor,
        c: torch.Tensor,
        Wd: torch.Tensor,
        wgrad: Callable[..., torch.Tensor],
    ) -> tuple[torch.Tensor, _Sparse, torch.Tensor, torch.Tensor]:
        """The aux loss with the main path's sparse decoder (gathers of B*k_aux rows). Returns (aux loss, the
        sparse codes, dL/d aux_a flat, dW_dec dense [d_sae, d_in])."""
        B, k_aux = ai.shape
        dev = err.device
        aux_sp = _Sparse(
            ai.reshape(-1),
            torch.arange(0, B * k_aux, k_aux, device=dev),
            aux_a.reshape(-1),
            torch.arange(B * k_aux, device=dev) // k_aux,
        )
        e_hat = _decode(aux_sp, Wd).to(self.dtype)
        d_aux = e_hat + err
        wd_aux = d_aux * self.w if self.w is not None else d_aux
        aux = c * (wd_aux * d_aux).sum() / B
        r_aux = wd_aux * (2.0 * c / B)
        g_aux_a = _vals_grad(aux_sp, Wd, r_aux).to(self.dtype) * valid.reshape(-1)
        return aux, aux_sp, g_aux_a, wgrad(aux_sp, r_aux, aux_sp.vals, self.cfg.d_sae)

    def _adam(self, grads: list[torch.Tensor], clip: torch.Tensor) -> None:
        cfg = self.cfg
        torch._foreach_add_(self.state_steps, 1)
        if self._fused:
            torch._fused_adam_(
                self.params,
                grads,
                self.exp_avg,
                self.exp_avg_sq,
                [],
                self.state_steps,
                lr=self._lr,
                beta1=cfg.adam_beta1,
                beta2=cfg.adam_beta2,
                weight_decay=0.0,
                eps=cfg.adam_eps,
                amsgrad=False,
                maximize=False,
                grad_scale=(1.0 / clip).float().reshape(1),
                found_inf=None,
            )
            return
        torch._foreach_mul_(grads, clip)  # pragma: no cover - other devices
        for p, g, m, v, s in zip(self.params, grads, self.exp_avg, self.exp_avg_sq, self.state_steps):
            m.lerp_(g, 1 - cfg.adam_beta1)
            v.mul_(cfg.adam_beta2).addcmul_(g, g, value=1 - cfg.adam_beta2)
            t = float(s)
            bc1 = 1 - cfg.adam_beta1**t
            bc2 = 1 - cfg.adam_beta2**t
            p.addcdiv_(m, (v / bc2).sqrt_().add_(cfg.adam_eps), value=-self._lr / bc1)


def _add_rows(G: torch.Tensor, X: torch.Tensor | RowsAt) -> None:
    """G += X (dense, in G's dtype), or at X's rows only (:class:`RowsAt`)."""
    if isinstance(X, RowsAt):
        X.add_to(G)
    else:
        G += X.to(G.dtype)


def train_fast(
    sae: Any,
    batches: Any,
    n_steps: int,
    *,
    lr: float = 3e-4,
    adam_beta1: float = 0.9,
    adam_beta2: float = 0.999,
    dead_feature_window: int = 1000,
    bf16: bool = False,
    lr_fn: Callable[[int], float] | None = None,
    device: str | torch.device | None = None,
    on_step: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
) -> FastTopKTrainer:
    """Train ``sae`` (a SAELens topk/batchtopk or weighted_* training SAE) for ``n_steps`` batches from
    the iterator ``batches`` with the fast step, then copy the weights back into ``sae``. ``lr_fn(step)``
    optionally gives the learning rate per step (SAELens's schedulers multiply ``lr``)."""
    tr = FastTopKTrainer.from_training_sae(
        sae,
        lr=lr,
        adam_beta1=adam_beta1,
        adam_beta2=adam_beta2,
        dead_feature_window=dead_feature_window,
        bf16=bf16,
        device=device,
    )
    it = iter(batches)
    for s in range(n_steps):
        if lr_fn is not None:
            tr.set_lr(lr_fn(s))
        out = tr.step(next(it))
        if on_step is not None:
            on_step(s, out)
    tr.write_to(sae)
    return tr


# ---------------------------------------------------------------------------- SAELens SAETrainer hook
def install_fast_step(trainer: Any, ctx: Any = None, **cfg_overrides: Any) -> FastTopKTrainer | None:
    """Make a SAELens ``SAETrainer`` run its steps with the fast path when it applies: the SAE is a
    (weighted_)topk / (weighted_)batchtopk training SAE in float32/float64 with no activation
    normalisation other than SAELens's scalar scaling. Returns the FastTopKTrainer, or None (the
    trainer is left untouched) when the fast path does not apply.

    ``ctx`` (a :class:`~sae_rdp_plugin.train.distributed.DistContext` of world size W > 1, the trainer a
    :func:`~sae_rdp_plugin.train.ddp.DistributedSAETrainer`): data-parallel. Each rank's gradients are
    all-reduced to their mean before clipping (every loss is a per-row mean, so the mean of the ranks'
    gradients is the gradient on the global batch) and the per-latent firing counts are summed over the
    ranks before the dead-latent counters move, so every rank takes the one-process step on the
    concatenated batch. The weight gradients must exist for that: the PyTorch kernels run (no Triton
    step, no CUDA graph). TopK only: BatchTopK's batch-level selection would be per rank (None).

    Only ``trainer._train_step`` is replaced (on this instance): ``fit()``'s loop, the activation
    scaler, the lr and coefficient schedulers, dead-latent statistics, sparsity windows, checkpoints
    (the Adam state is written into the trainer's torch Adam before each save) and the final folding
    and saving stay SAELens's own. Autocast (``SAETrainerConfig.autocast``) maps to ``bf16=True``."""
    from sae_lens.saes.sae import TrainStepOutput

    sae = trainer.sae
    try:
        arch = sae.cfg.architecture()
    except Exception:  # noqa: BLE001
        return None
    if fast_architecture_of(arch) is None or sae.W_dec.dtype not in (torch.float32, torch.float64):
        return None
    if getattr(sae.cfg, "normalize_activations", "none") not in ("none", "expected_average_only_in"):
        return None
    if getattr(sae.cfg, "reshape_activations", "none") != "none" or getattr(sae, "use_error_term", False):
        return None
    if arch.startswith("weighted_") and hasattr(sae, "gamma_is_set") and not sae.gamma_is_set:
        return None  # let the weighted SAE's first-batch gamma estimate run on the reference path
    distributed = ctx is not None and getattr(ctx, "distributed", False)
    if distributed:
        if fast_architecture_of(arch) != "topk":
            return None
        cfg_overrides = {**cfg_overrides, "kernels": "torch", "cuda_graph": False}
    tc = trainer.cfg
    ft = FastTopKTrainer.attach(
        sae,
        lr=tc.lr,
        adam_beta1=tc.adam_beta1,
        adam_beta2=tc.adam_beta2,
        dead_feature_window=tc.dead_feature_window,
        bf16=bool(tc.autocast),
        **cfg_overrides,
    )
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    if set(map(id, params)) != {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}:
        return None  # extra trainable parameters: not a plain TopK SAE
    ft.adam_state_from(trainer.optimizer, params)
    if distributed:
        import torch.distributed as dist

        def _allreduce_mean(grads: list[torch.Tensor]) -> None:
            flat = torch.cat([g.reshape(-1) for g in grads])  # one collective for all four gradients
            dist.all_reduce(flat)
            flat /= ctx.world_size
            i = 0
            for g in grads:
                g.copy_(flat[i : i + g.numel()].view_as(g))
                i += g.numel()

        ft.grad_allreduce = _allreduce_mean

    def _train_step(sae: Any, sae_in: torch.Tensor) -> Any:
        ft.set_lr(trainer.optimizer.param_groups[0]["lr"])
        dead = trainer.dead_neurons if trainer.n_training_steps > tc.dead_feature_window else None
        bound, lag = None, ft.lagged_dead_count
        if lag is not None and not distributed:  # SAETrainer's counters move as the fast step's own (below)
            bound = lag.bound(trainer.n_training_steps)
            lag.record(trainer.n_forward_passes_since_fired, trainer.n_training_steps, tc.dead_feature_window)
        out = ft.step(sae_in, dead=dead, n_dead_bound=bound)
        fired = out.pop("fired")
        if distributed:
            dist.all_reduce(fired)  # firing counts over the global batch
        with torch.no_grad():
            trainer.n_forward_passes_since_fired += 1
            trainer.n_forward_passes_since_fired.masked_fill_(fired > 0, 0)
            trainer.act_freq_scores += fired.to(trainer.act_freq_scores.dtype)
            trainer.n_frac_active_samples += tc.train_batch_size_samples
        trainer.lr_scheduler.step()
        for sched in trainer.coefficient_schedulers.values():
            sched.step()
        sp = ft._last_sparse
        feature_acts = torch.sparse_coo_tensor(
            torch.stack([sp.offset2bag, sp.idx]), ft._last_vals_s, (sae_in.shape[0], sae.cfg.d_sae)
        )
        losses = {"mse_loss": out["mse_loss"], "auxiliary_reconstruction_loss": out["auxiliary_reconstruction_loss"]}
        metrics: dict[str, Any] = {}
        if hasattr(sae, "topk_threshold"):
            metrics["topk_threshold"] = sae.topk_threshold
        return TrainStepOutput(
            sae_in=sae_in,
            sae_out=ft._last_x_hat,
            feature_acts=feature_acts,
            hidden_pre=sae_in.new_empty(0),
            loss=out["loss"],
            losses=losses,
            metrics=metrics,
        )

    orig_save_state = trainer.save_trainer_state

    def save_trainer_state(checkpoint_path: Any) -> None:
        ft.adam_state_to(trainer.optimizer, params)
        orig_save_state(checkpoint_path)

    trainer._train_step = _train_step
    trainer.save_trainer_state = save_trainer_state
    ft.invalidate_cache()
    trainer.fast_step = ft
    return ft
