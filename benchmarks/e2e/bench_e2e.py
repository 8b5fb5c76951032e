"""End-to-end SAE training on a language-model layer: ours (sae_rdp_plugin.lm.pipeline feeding
sae_rdp_plugin.train.lm with the fast step) against SAELens's LanguageModelSAETrainingRunner and
EleutherAI sparsify's Trainer, on the same model, hook, SAE and token budget.

Model: Gemma-3-270M's architecture cut after block 6 (random init; ``--gguf PATH``: the real weights);
hook ``blocks.6.hook_resid_post`` (sparsify: ``layers.6``, the same tensor); TopK SAE, 16,384 latents,
k=32, 4096 tokens per step, bf16 compute (SAELens: autocast + autocast_lm; ours: bf16 model and the bf16
fast step; sparsify: bf16 model, as its CLI loads it). Rows, each in its own process:

    forward_only    our activation pipeline alone (model forward, shuffle buffer, batches), no SAE
    step_only       our fast step alone on pre-made batches of real activations
    ours            pipeline + train_saes, one hook, one SAE
    ours_noaux      ours without the dead-latent aux loss (aux_loss_coefficient 0): sparsify's default objective
                    (its auxk_alpha is 0), for the same-objective ratio against the sparsify row
    ours_noaux_mean ours_noaux with b_dec started at the mean of the first batches (TrainConfig.b_dec_init="mean"),
                    as sparsify's Trainer starts it: its recipe as well as its objective
    ours_overlap    the same with PipelineConfig.overlap (the next forward on a side CUDA stream during the steps)
    ours_radix      ours with the aux loss's top-k by topk_kernel.masked_topk (FastTopKConfig.aux_topk="radix")
    ours_mask       ours with the aux loss's dense selection by topk_kernel.topk_mask (FastTopKConfig.aux_topk="mask")
    ours_lagged     ours reading a lagged bound of the dead count instead of counting it each step, a host sync
                    (FastTopKConfig.dead_count="lagged")
    ours_first_profile
                    ours with the first step at each aux width under torch.profiler
                    (FastTopKConfig.profile_first_steps: where a new width's one-off seconds go)
    ours_3hooks     blocks.2/4/6 resid_post from one forward, one SAE each
    ours_4saes      one hook, four SAEs (k 16/32/64/128) from one stream
    ours_3hooks_streams, ours_4saes_streams
                    the same two with train_saes(sae_streams=True): each SAE on its own CUDA stream
    ours_3hooks_streams_noaux
                    ours_3hooks_streams without the dead-latent aux loss (sparsify's default objective, as ours_noaux)
    sparsify        sparsify's Trainer (batch 4 x 1024, its defaults otherwise), --baseline-tokens
    saelens_speed   SAELens's runner (context 128, 32 prompts per forward, 32 batches in buffer), --baseline-tokens
    saelens         the same at --tokens (held-out FVU at equal tokens with ours)
    sparsify_full   sparsify's Trainer at --tokens (held-out FVU at equal tokens with ours and ours_noaux, on the
                    common held-out rows)
    ce_recovered    CE loss recovered on held-out text by ours' and SAELens's SAEs (a default row with --gguf)

Per row: tokens/s after ``--warmup-steps`` steps (CUDA-synchronised marks at the end of the warm-up and
at the last step), the whole call's tokens/s, peak GPU memory (``torch.cuda.max_memory_allocated``), the
time split (forward / SAE step / other) and the held-out FVU of each trained SAE on the same held-out
token rows (activations from one plain bf16 forward, BOS and padding positions excluded)::

    FVU = sum_b ||x_b - x_hat_b||^2 / sum_b ||x_b - mean(x)||^2          (1 - explained variance)

Token rows: random ids from the vocabulary with BOS at each row start (random-init model), or
``--corpus DIR`` (``sae-rdp corpus build`` rows). SAELens reads the same token stream cut into rows of
its context size. Results: DIR/latest.json (written after every row; ``--resume`` skips rows it
holds) and DIR/latest.md; the table is printed last.

    python benchmarks/e2e/bench_e2e.py --quick --out /tmp/e2e        # tiny CPU run (seconds per row)
    bash benchmarks/e2e/run_on_device.sh --out $OUT [--only ROW ...]  # on the GPU machine
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import functools
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sae_rdp_plugin.devices import synchronize

ROWS = (
    "forward_only",
    "step_only",
    "ours",
    "ours_noaux",
    "ours_noaux_mean",
    "ours_overlap",
    "ours_radix",
    "ours_mask",
    "ours_lagged",
    "ours_profile",
    "ours_first_profile",
    "ours_3hooks",
    "ours_4saes",
    "ours_3hooks_streams",
    "ours_4saes_streams",
    "ours_3hooks_streams_noaux",
    "ours_reference",
    "sparsify",
    "saelens_speed",
    "saelens",
    "sparsify_full",
    "ce_recovered",
)
IMPL = {r: "ours" for r in ROWS} | {"sparsify": "sparsify", "saelens_speed": "saelens", "saelens": "saelens"}
IMPL["sparsify_full"] = "sparsify"
IMPL["ce_recovered"] = "eval"


# ---------------------------------------------------------------------------------------- settings
@dataclass
class Bench:
    """Everything one row needs, the same in every process (built from the command line)."""

    quick: bool
    device: str
    out: Path
    work: Path
    model_name: str
    n_layers: int
    d_sae: int
    k: int
    ks4: tuple[int, ...]
    batch: int
    context: int
    saelens_context: int
    saelens_prompts: int
    saelens_buffer_batches: int
    sparsify_seqs: int
    sparsify_context: int
    tokens: int
    baseline_tokens: int
    heldout_tokens: int
    warmup_steps: int
    buffer_tokens: int | None
    gguf: str | None
    corpus: str | None
    seed: int
    hook_layers3: tuple[int, ...] = field(default=(2, 4, 6))
    profile: tuple[int, int] = (2000, 200)  # ours_profile: torch.profiler over (count) steps from step (start)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def hook(self) -> str:
        return f"blocks.{self.n_layers - 1}.hook_resid_post"

    @property
    def hooks3(self) -> list[str]:
        return [f"blocks.{layer}.hook_resid_post" for layer in self.hook_layers3]


def make_bench(args: argparse.Namespace) -> Bench:
    quick = bool(args.quick)
    device = args.device or ("cuda" if torch.cuda.is_available() and not quick else "cpu")
    return Bench(
        quick=quick,
        device=device,
        out=Path(args.out),
        work=Path(args.work),
        model_name="tiny-gemma3" if quick else "gemma3-270m",
        n_layers=7,
        d_sae=256 if quick else 16384,
        k=8 if quick else 32,
        ks4=(4, 8, 16, 32) if quick else (16, 32, 64, 128),
        batch=256 if quick else 4096,
        context=args.context or (64 if quick else 1024),
        saelens_context=16 if quick else 128,
        saelens_prompts=4 if quick else 32,
        saelens_buffer_batches=16 if quick else 32,
        sparsify_seqs=4,
        sparsify_context=64 if quick else 1024,  # its CLI's rows, whatever --context gives ours
        tokens=args.tokens or (8192 if quick else 20_000_000),
        baseline_tokens=args.baseline_tokens or (4096 if quick else 2_000_000),
        heldout_tokens=args.heldout_tokens or (2048 if quick else 131_072),
        warmup_steps=args.warmup_steps if args.warmup_steps is not None else (2 if quick else 50),
        buffer_tokens=4096 if quick else None,
        gguf=args.gguf,
        corpus=args.corpus,
        seed=args.seed,
        profile=tuple(args.profile) if getattr(args, "profile", None) else (2000, 200),
    )


# ---------------------------------------------------------------------------------------- model, tokens
#: seconds of a row spent outside its timed loop, by phase (run_row resets it and stores it as ``phase_s``): what a
#: row's ``row_s`` holds besides ``wall_s``
_PHASES: dict[str, float] = {}


def _phase(name: str) -> Any:
    """Decorator: add the wrapped call's wall seconds to ``_PHASES[name]``."""

    def wrap(fn: Any) -> Any:
        @functools.wraps(fn)
        def timed(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                _PHASES[name] = _PHASES.get(name, 0.0) + time.perf_counter() - t

        return timed

    return wrap


@_phase("load_model")
def load_hf(b: Bench, *, full: bool = False) -> tuple[Any, Any]:
    """(Hugging Face CausalLM in bf16 on the bench device, tokenizer or None) from
    :func:`sae_rdp_plugin.lm.models.hf_model` (--quick: its ``tiny-gemma3``). ``full``: every block
    (for CE loss; --quick: two blocks past the hook), else cut after block ``n_layers - 1``."""
    from sae_rdp_plugin.lm.models import hf_model

    n_layers = b.n_layers if not full else b.n_layers + 2 if b.quick else None
    if b.gguf:
        return hf_model(b.model_name, path=b.gguf, n_layers=n_layers, device=b.device)
    return hf_model(b.model_name, random_init=True, n_layers=n_layers, seed=b.seed, device=b.device)


def special_ids(model: Any, tok: Any) -> tuple[int | None, int | None]:
    """(BOS id, pad id) from the tokenizer, else from the model config."""
    src = tok if tok is not None else model.config
    return getattr(src, "bos_token_id", None), getattr(src, "pad_token_id", None)


def make_tokens(n_rows: int, context: int, vocab: int, bos: int | None, seed: int) -> np.ndarray:
    """Random token rows [n_rows, context] (int32) from ids 4..vocab-1 (clear of Gemma's pad/eos/bos/unk),
    BOS at each row start."""
    rng = np.random.default_rng(seed)
    t = rng.integers(4, vocab, size=(n_rows, context), dtype=np.int64).astype(np.int32)
    if bos is not None:
        t[:, 0] = bos
    return t


def cut_rows(rows: np.ndarray, context: int) -> np.ndarray:
    """Token rows longer than ``context`` cut into consecutive rows of ``context`` tokens (each row's tail
    shorter than ``context`` dropped); shorter rows unchanged."""
    if rows.shape[1] <= context:
        return rows
    n = rows.shape[1] // context * context
    return rows[:, :n].reshape(-1, context)


@_phase("tokens")
def token_rows(b: Bench, model: Any, bos: int | None, tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows). Train rows hold ``tokens`` non-BOS tokens with a 25% margin (shuffle
    buffer, warm-up); a corpus gives what it has (the pipeline reports epochs > 1), its rows cut into rows of
    ``context`` tokens when longer (as SAELens's rows are cut: both train, and are evaluated, on the same rows)."""
    if b.corpus:
        from sae_rdp_plugin.lm.corpus import load_tokens

        return cut_rows(load_tokens(b.corpus, "train"), b.context), heldout_rows(b, model, bos)
    n_rows = math.ceil(1.25 * tokens / (b.context - 1)) + 8
    return make_tokens(n_rows, b.context, int(model.config.vocab_size), bos, b.seed), heldout_rows(b, model, bos)


def heldout_rows(b: Bench, model: Any, bos: int | None) -> np.ndarray:
    """The held-out rows of ``b.context`` tokens: the corpus's held-out split cut to that length, or
    ``b.heldout_tokens`` random tokens (seed ``b.seed + 1``). Every row's SAEs are evaluated on these, and
    sparsify's also on its own rows of ``b.sparsify_context``."""
    if b.corpus:
        from sae_rdp_plugin.lm.corpus import load_tokens

        return cut_rows(load_tokens(b.corpus, "heldout"), b.context)
    n_held = max(1, b.heldout_tokens // b.context)
    return make_tokens(n_held, b.context, int(model.config.vocab_size), bos, b.seed + 1)


def base_of(model: Any) -> Any:
    """The decoder stack (``Gemma3TextModel``): the CausalLM's ``.model``, or the model itself."""
    return model.model if hasattr(model, "model") and hasattr(model.model, "layers") else model


@_phase("heldout")
@torch.no_grad()
def hook_activations(
    model: Any, tokens: np.ndarray, hooks: list[str], device: str, exclude: list[int]
) -> dict[str, torch.Tensor]:
    """{hook: [n, d_in] float32} of ``tokens`` through one plain forward of the decoder stack (no LM head),
    positions holding an ``exclude`` id dropped. ``blocks.L.hook_resid_post`` = output of decoder layer
    L; ``blocks.L.hook_resid_pre`` = its input."""
    base = base_of(model)
    got: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    handles = []
    for h in hooks:
        _, layer, kind = h.split(".")
        mod = base.layers[int(layer)]
        if kind == "hook_resid_post":
            handles.append(
                mod.register_forward_hook(lambda m, a, o, h=h: got[h].append(o[0] if isinstance(o, tuple) else o))
            )
        else:
            handles.append(
                mod.register_forward_pre_hook(
                    lambda m, a, kw, h=h: got[h].append(a[0] if a else kw["hidden_states"]), with_kwargs=True
                )
            )
    keep_all = []
    try:
        chunk = max(1, 16384 // tokens.shape[1])
        for s in range(0, tokens.shape[0], chunk):
            ids = torch.as_tensor(tokens[s : s + chunk], dtype=torch.long, device=device)
            keep_all.append(~torch.isin(ids, torch.tensor(exclude, dtype=torch.long, device=device)).flatten())
            base(input_ids=ids, use_cache=False)
    finally:
        for hd in handles:
            hd.remove()
    keep = torch.cat(keep_all)
    return {h: torch.cat([a.reshape(-1, a.shape[-1]) for a in got[h]])[keep].float() for h in hooks}


def heldout_stats(sae: Any, x: torch.Tensor, n_latents: int, decode: Any = None) -> dict[str, float]:
    """Held-out statistics of one SAE on ``x`` (sae_rdp_plugin.rdp.metrics.rate_distortion, float64 sums):
    ``fvu`` = 1 - explained variance, ``dead_fraction`` = the fraction of latents that fire on none of the
    held-out tokens (of ``n_latents``), ``l0`` = mean active latents per token. ``sae``: a SAELens SAE, or an
    encode callable with ``decode``. The dead fraction says whether two SAEs of equal tokens/s are the same kind of
    result (without the aux loss most latents can die on real activations)."""
    from sae_rdp_plugin.rdp.metrics import rate_distortion

    rd = rate_distortion(sae, x, decode=decode)
    return {"fvu": 1.0 - rd.explained_variance, "dead_fraction": rd.dead_latents / n_latents, "l0": rd.rate}


@_phase("heldout")
def saelens_heldout(path: str | Path, x: torch.Tensor, device: str) -> dict[str, float]:
    """:func:`heldout_stats` of a saved SAELens-format SAE (ours and SAELens's both save this format)."""
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(path), device=device).eval()
    return heldout_stats(sae, x.to(device), int(sae.cfg.d_sae))


# ---------------------------------------------------------------------------------------- timing
class StepClock:
    """Steady-state rate: ``tick()`` at the start of every step; a synchronised wall-clock mark at step
    ``warmup`` and at step ``total - 1`` gives (total - 1 - warmup) steps over their time."""

    def __init__(self, device: str, warmup: int, total: int, profiler: StepProfiler | None = None):
        self.device, self.total = device, total
        self.warmup = min(warmup, max(0, total - 2))
        self.n = 0
        self.t_warm: float | None = None
        self.t_last: float | None = None
        self.profiler = profiler

    def tick(self) -> None:
        if self.profiler is not None:
            self.profiler.tick(self.n)
        if self.n in (self.warmup, self.total - 1):
            synchronize(self.device)
            now = time.perf_counter()
            if self.n == self.warmup:
                self.t_warm = now
            if self.n == self.total - 1:
                self.t_last = now
        self.n += 1

    def steps_per_s(self) -> float | None:
        """Steps per second between the marks, a profiler window inside them left out (its overhead)."""
        if self.t_warm is None or self.t_last is None or self.t_last <= self.t_warm:
            return None
        steps, seconds = self.total - 1 - self.warmup, self.t_last - self.t_warm
        w = self.profiler.window if self.profiler is not None else None
        if w is not None and self.warmup <= w[0] and w[0] + w[1] <= self.total - 1 and w[1] < steps:
            steps, seconds = steps - w[1], seconds - w[2]
        return steps / seconds if seconds > 0 else None


class StepProfiler:
    """torch.profiler over ``count`` training steps from step ``start`` of an ours row, ticked by its StepClock
    (synchronised at both ends; the window holds the forwards that fall in it; the clock's tokens/s leaves the
    window out, since profiling slows the steps it records). ``result()``: the kernels by
    self device time per step (CPU ops on a CPU run), wall ms per step, the GPU's busy share of the window (the
    union of all kernel intervals, any stream, over the window: 1 - it is idle time a faster host side could
    fill) and host syncs per step (``aten::_local_scalar_dense``: ``.item()`` / ``int()`` of a device tensor).

    Built before the row's first step: on CUDA it first runs PyTorch's workaround for profiling CUDA graphs captured
    before the profiler's first use (``torch.profiler._utils._init_for_cuda_graphs``, an empty profile; without
    it a replay under the profiler could fault: pytorch/pytorch#75504, #100441); the fast step captures its
    graphs in the first steps."""

    def __init__(self, device: str, start: int, count: int, top: int = 30):
        self.device, self.start, self.count, self.top = device, start, count, top
        if device.startswith("cuda"):
            from torch.profiler import _utils

            _utils._init_for_cuda_graphs()
        self.prof: Any = None
        self.t0 = 0.0
        self.out: dict[str, Any] | None = None
        self.window: tuple[int, int, float] | None = None  # (start step, steps, seconds) once stopped

    def tick(self, n: int) -> None:
        if n == self.start:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.startswith("cuda") else [])
            synchronize(self.device)
            self.prof = profile(activities=acts)
            self.prof.start()
            self.t0 = time.perf_counter()
        elif self.prof is not None and n == self.start + self.count:
            self._stop(self.count)

    def finish(self, steps_run: int) -> None:
        """Stop a window the run ended inside (fewer steps than asked)."""
        if self.prof is not None:
            self._stop(max(1, steps_run - self.start))

    def _stop(self, steps: int) -> None:
        synchronize(self.device)
        wall = time.perf_counter() - self.t0
        self.prof.stop()
        prof, self.prof = self.prof, None
        self.window = (self.start, steps, wall)
        try:
            self.out = self._summary(prof, steps, wall)
        except Exception as exc:  # noqa: BLE001 - a profile is a diagnostic: its failure must not lose the row
            self.out = {"error": f"{type(exc).__name__}: {exc}"}

    def _summary(self, prof: Any, steps: int, wall: float) -> dict[str, Any]:
        from sae_rdp_plugin.devices import profile_summary

        out = profile_summary(prof, wall, per=steps, top=self.top, cuda=self.device.startswith("cuda"))
        return {"start_step": self.start, "steps": steps, **out}

    def result(self) -> dict[str, Any] | None:
        return self.out


class Split:
    """Synchronised time per part (forward / sae_step), for the baselines whose loops we can only wrap."""

    def __init__(self, device: str):
        self.device = device
        self.s: dict[str, float] = {"forward_s": 0.0, "sae_step_s": 0.0}

    def timed(self, key: str, fn: Any) -> Any:
        def run(*a: Any, **kw: Any) -> Any:
            synchronize(self.device)
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            synchronize(self.device)
            self.s[key] += time.perf_counter() - t0
            return out

        return run

    def report(self, wall: float) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.s.items()} | {
            "other_s": round(max(0.0, wall - sum(self.s.values())), 3)
        }


def timed_batches(it: Any, clock: StepClock) -> Any:
    """The batch iterator with a clock tick before each batch is handed to the trainer."""
    for batch in it:
        clock.tick()
        yield batch


class TickingPipeline:
    """An ActivationPipeline whose batches tick a StepClock; ``stats`` stays the pipeline's, so
    ``train_saes`` still reads the forward time from it (as when it is handed the pipeline itself)."""

    def __init__(self, pipe: Any, clock: StepClock):
        self.pipe, self.clock = pipe, clock

    @property
    def stats(self) -> dict[str, Any]:
        return self.pipe.stats

    def __iter__(self) -> Any:
        return timed_batches(iter(self.pipe), self.clock)


# ---------------------------------------------------------------------------------------- rows
def train_cfg(
    b: Bench, d_in: int, *, k: int, tokens: int, sae_kwargs: dict[str, Any] | None = None, b_dec_init: str = "zeros"
) -> Any:
    """The one SAE of every row: TopK, d_sae latents, 4096-token steps, Adam lr 3e-4, bf16 on CUDA (``sae_kwargs``:
    SAELens config fields over its defaults; ``b_dec_init``: TrainConfig's, SAELens's zeros by default)."""
    from sae_rdp_plugin.train.config import TrainConfig

    return TrainConfig(
        "topk",
        d_in,
        b.d_sae,
        k=k,
        tokens=tokens,
        batch_size=b.batch,
        autocast=b.cuda,
        device=b.device,
        sae_kwargs=dict(sae_kwargs or {}),
        b_dec_init=b_dec_init,
    )


def pipeline_cfg(b: Bench, hooks: list[str], context: int, overlap: bool = False) -> Any:
    from sae_rdp_plugin.lm.pipeline import PipelineConfig

    kw: dict[str, Any] = {"buffer_tokens": b.buffer_tokens} if b.buffer_tokens else {}
    return PipelineConfig(
        hooks=hooks,
        context_size=context,
        batch_size=b.batch,
        model_dtype="bfloat16",
        compile=None if b.cuda else False,
        seed=b.seed,
        device=b.device,
        overlap=overlap,
        **kw,
    )


def row_forward_only(b: Bench) -> dict[str, Any]:
    """The activation pipeline alone: batches pulled and dropped (the forward-only time of the 1.5x target)."""
    from sae_rdp_plugin.lm.pipeline import ActivationPipeline

    model, tok = load_hf(b)
    bos, pad = special_ids(model, tok)
    train, _ = token_rows(b, model, bos, b.tokens)
    pipe = ActivationPipeline(
        model, train, pipeline_cfg(b, [b.hook], train.shape[1]), bos_token_id=bos, pad_token_id=pad
    )
    steps = max(2, b.tokens // b.batch)
    clock = StepClock(b.device, b.warmup_steps, steps)
    t0 = time.perf_counter()
    for i, batch in enumerate(timed_batches(iter(pipe), clock)):
        if i + 1 >= steps:
            break
    synchronize(b.device)
    wall = time.perf_counter() - t0
    sps = clock.steps_per_s()
    return {
        "hooks": [b.hook],
        "n_saes": 0,
        "tokens": steps * b.batch,
        "tokens_per_s": sps * b.batch if sps else None,
        "tokens_per_s_wall": steps * b.batch / wall,
        "wall_s": round(wall, 3),
        "pipeline_stats": _jsonable(getattr(pipe, "stats", {})),
    }


def row_step_only(b: Bench) -> dict[str, Any]:
    """The fast step alone (FastTopKTrainer.step, bf16 on CUDA) on 16 pre-made batches of real activations."""
    from sae_rdp_plugin.fast.step import FastTopKTrainer
    from sae_rdp_plugin.lm.pipeline import ActivationPipeline
    from sae_rdp_plugin.train.saelens import build_training_sae

    model, tok = load_hf(b)
    bos, pad = special_ids(model, tok)
    train, _ = token_rows(b, model, bos, 32 * b.batch)
    pipe = ActivationPipeline(
        model, train, pipeline_cfg(b, [b.hook], train.shape[1]), bos_token_id=bos, pad_token_id=pad
    )
    it = iter(pipe)
    xs = [next(it)[b.hook].clone() for _ in range(16)]
    del it, pipe, model
    gc.collect()
    cfg = train_cfg(b, xs[0].shape[1], k=b.k, tokens=b.tokens)
    torch.manual_seed(b.seed)
    ft = FastTopKTrainer.from_training_sae(
        build_training_sae(cfg.sae_config_dict()), bf16=cfg.autocast, device=b.device
    )
    steps = max(2, b.tokens // b.batch)
    clock = StepClock(b.device, b.warmup_steps, steps)
    t0 = time.perf_counter()
    for s in range(steps):
        clock.tick()
        ft.step(xs[s % len(xs)])
    synchronize(b.device)
    wall = time.perf_counter() - t0
    sps = clock.steps_per_s()
    return {
        "hooks": [b.hook],
        "n_saes": 1,
        "d_sae": b.d_sae,
        "k": b.k,
        "tokens": steps * b.batch,
        "tokens_per_s": sps * b.batch if sps else None,
        "tokens_per_s_wall": steps * b.batch / wall,
        "wall_s": round(wall, 3),
    }


def run_ours(
    b: Bench,
    name: str,
    specs_def: list[tuple[str, int]],
    fast: bool = True,
    overlap: bool = False,
    sae_streams: bool = False,
    fast_options: dict[str, Any] | None = None,
    profile: bool = False,
    sae_kwargs: dict[str, Any] | None = None,
    b_dec_init: str = "zeros",
) -> dict[str, Any]:
    """Ours: the two calls of ``train_on_model`` (an ActivationPipeline over the token rows, then
    ``train_saes`` with the fast step), made here so that a clock can tick on each batch and leave the
    warm-up (torch.compile, the first buffer fill) out of tokens/s. One SAE per (hook, k) of
    ``specs_def``; every SAE sees the same ``--tokens`` rows of one stream. ``fast=False``: SAELens's own
    training step on the same stream (separates the step's effect on FVU from the data's). ``overlap``: the
    pipeline's side-stream forward (``PipelineConfig.overlap``). ``sae_streams``: each SAE's steps on a CUDA
    stream of its own (``train_saes(sae_streams=True)``). ``fast_options``: FastTopKConfig fields over the fast
    step's defaults (``train_saes(fast_options=...)``). ``sae_kwargs``: SAELens config fields of every SAE
    (``TrainConfig.sae_kwargs``); ``b_dec_init``: ``TrainConfig.b_dec_init``. ``profile``: torch.profiler over
    the ``b.profile`` window (only the ``ours_profile`` row: profiling CUDA-graph replays has crashed processes in
    PyTorch, see :class:`StepProfiler`, so no measured row takes that risk)."""
    from sae_rdp_plugin.lm.pipeline import ActivationPipeline
    from sae_rdp_plugin.train.lm import SAESpec, batches_before_training, train_saes

    model, tok = load_hf(b)
    bos, pad = special_ids(model, tok)
    train, held = token_rows(b, model, bos, b.tokens)
    hooks = list(dict.fromkeys(h for h, _ in specs_def))
    d_in = int(model.config.hidden_size)
    specs = [
        SAESpec(
            hook=h,
            cfg=train_cfg(b, d_in, k=k, tokens=b.tokens, sae_kwargs=sae_kwargs, b_dec_init=b_dec_init),
            out=b.work / name / f"{h}-k{k}",
            name=f"{h}-k{k}",
        )
        for h, k in specs_def
    ]
    pcfg = pipeline_cfg(b, hooks, train.shape[1], overlap=overlap)
    pipe = ActivationPipeline(model, train, pcfg, bos_token_id=bos, pad_token_id=pad)
    profiler = StepProfiler(b.device, *b.profile) if profile else None
    # the batches train_saes draws before the first step (b_dec_init "mean": its estimate) tick the clock too, inside
    # the warm-up (more steps than they are), so the timed window still holds training steps only
    extra = batches_before_training(specs)
    clock = StepClock(b.device, max(b.warmup_steps, extra), math.ceil(b.tokens / b.batch) + extra, profiler)
    synchronize(b.device)
    t0 = time.perf_counter()
    reports = train_saes(
        TickingPipeline(pipe, clock),
        specs,
        tokens=b.tokens,
        fast=fast,
        progress=not b.quick,
        sae_streams=sae_streams,
        fast_options=fast_options,
    )
    synchronize(b.device)
    wall = time.perf_counter() - t0
    if profiler is not None:
        profiler.finish(clock.n)
    peak = peak_gb(b)
    sps = clock.steps_per_s()
    x = hook_activations(model, held, hooks, b.device, [i for i in (bos, pad) if i is not None])
    stats = [saelens_heldout(s.out, x[s.hook], b.device) for s in specs]
    fvus = [st["fvu"] for st in stats]
    dead = [st["dead_fraction"] for st in stats]
    rep = reports[0]
    return {
        "hooks": hooks,
        "n_saes": len(specs),
        "d_sae": b.d_sae,
        "k": [k for _, k in specs_def] if len(specs) > 1 else specs_def[0][1],
        "tokens": b.tokens,
        "tokens_per_s": sps * b.batch if sps else None,
        "tokens_per_s_wall": b.tokens / wall,
        "tokens_per_s_loop": rep.get("tokens_per_s"),
        "wall_s": round(wall, 3),
        "peak_mem_gb": peak,
        # train_saes's split of its training loop (warm-up included); the first forward (compilation) apart
        "time_split": {
            "forward_s": rep.get("forward_s"),
            "sae_step_s": rep.get("sae_steps_s"),
            "other_s": rep.get("other_s"),
            "first_forward_s": pipe.stats.get("first_forward_seconds"),
        },
        "heldout_fvu": fvus if len(specs) > 1 else fvus[0],
        "heldout_dead_fraction": dead if len(specs) > 1 else dead[0],
        "saes": [
            {
                "hook": s.hook,
                "k": k,
                "heldout_fvu": st["fvu"],
                "heldout_dead_fraction": st["dead_fraction"],
                "heldout_l0": st["l0"],
                "fast_step": r.get("fast_step"),
                "aux_loss_coefficient": r.get("aux_loss_coefficient"),
                "steps": r.get("steps"),
                "train_dead_fraction": r.get("train_dead_fraction"),
                "aux_steps_by_width": r.get("aux_steps_by_width"),
                "aux_widths_in_order": r.get("aux_widths_in_order"),
                "aux_warm": r.get("aux_warm"),
                "first_steps_s_by_width": r.get("first_steps_s_by_width"),
                "first_steps_profile_by_width": r.get("first_steps_profile_by_width") or None,
                "mean_dead_fraction_aux_steps": r.get("mean_dead_fraction_aux_steps"),
                "cuda_graph_failed": r.get("cuda_graph_failed"),
            }
            for s, (_, k), st, r in zip(specs, specs_def, stats, reports)
        ],
        "sae_streams": reports[0].get("sae_streams"),
        "fast_options": fast_options,
        "sae_kwargs": sae_kwargs,
        "b_dec_init": b_dec_init,
        # the clock's ticks (batches drawn) against the count it expected: equal when its last mark fell on the last
        # training step
        "clock": {"ticks": clock.n, "total": clock.total, "warmup": clock.warmup},
        "epochs": pipe.stats.get("epochs"),
        "pipeline": {
            key: pipe.stats.get(key) for key in ("tokens_per_forward", "compiled", "forwards", "tokens_forwarded")
        },
        "sae_dirs": [str(s.out) for s in specs],
        "profile": profiler.result() if profiler is not None else None,
    }


def row_ours(b: Bench) -> dict[str, Any]:
    return run_ours(b, "ours", [(b.hook, b.k)])


def row_ours_noaux(b: Bench) -> dict[str, Any]:
    """ours with sparsify's default objective: no dead-latent aux loss (sparsify's ``auxk_alpha`` defaults to 0,
    SAELens's TopK ``aux_loss_coefficient`` to 1), so that ours and the sparsify row optimise the same loss."""
    return run_ours(b, "ours_noaux", [(b.hook, b.k)], sae_kwargs={"aux_loss_coefficient": 0.0})


def row_ours_noaux_mean(b: Bench) -> dict[str, Any]:
    """ours_noaux with b_dec started at the mean of the first batches: sparsify's Trainer sets its b_dec to the
    first batch's mean before its first step (its pre-activations centred), SAELens starts it at zero, and with a
    large offset in the activations the two recipes can end with very different numbers of dead latents."""
    return run_ours(b, "ours_noaux_mean", [(b.hook, b.k)], sae_kwargs={"aux_loss_coefficient": 0.0}, b_dec_init="mean")


def row_ours_overlap(b: Bench) -> dict[str, Any]:
    return run_ours(b, "ours_overlap", [(b.hook, b.k)], overlap=True)


def row_ours_radix(b: Bench) -> dict[str, Any]:
    return run_ours(b, "ours_radix", [(b.hook, b.k)], fast_options={"aux_topk": "radix"})


def row_ours_mask(b: Bench) -> dict[str, Any]:
    return run_ours(b, "ours_mask", [(b.hook, b.k)], fast_options={"aux_topk": "mask"})


def row_ours_lagged(b: Bench) -> dict[str, Any]:
    return run_ours(b, "ours_lagged", [(b.hook, b.k)], fast_options={"dead_count": "lagged"})


def row_ours_first_profile(b: Bench) -> dict[str, Any]:
    return run_ours(b, "ours_first_profile", [(b.hook, b.k)], fast_options={"profile_first_steps": True})


def row_ours_profile(b: Bench) -> dict[str, Any]:
    return run_ours(b, "ours_profile", [(b.hook, b.k)], profile=True)


def row_ours_3hooks(b: Bench) -> dict[str, Any]:
    return run_ours(b, "ours_3hooks", [(h, b.k) for h in b.hooks3])


def row_ours_4saes(b: Bench) -> dict[str, Any]:
    return run_ours(b, "ours_4saes", [(b.hook, k) for k in b.ks4])


def row_ours_3hooks_streams(b: Bench) -> dict[str, Any]:
    return run_ours(b, "ours_3hooks_streams", [(h, b.k) for h in b.hooks3], sae_streams=True)


def row_ours_3hooks_streams_noaux(b: Bench) -> dict[str, Any]:
    """Three hooks, each SAE on its own CUDA stream, without the aux loss: the three-hook target at sparsify's
    default objective (ours_noaux's), beside ours_3hooks_streams at SAELens's."""
    return run_ours(
        b,
        "ours_3hooks_streams_noaux",
        [(h, b.k) for h in b.hooks3],
        sae_streams=True,
        sae_kwargs={"aux_loss_coefficient": 0.0},
    )


def row_ours_4saes_streams(b: Bench) -> dict[str, Any]:
    return run_ours(b, "ours_4saes_streams", [(b.hook, k) for k in b.ks4], sae_streams=True)


def row_ours_reference(b: Bench) -> dict[str, Any]:
    return run_ours(b, "ours_reference", [(b.hook, b.k)], fast=False)


@_phase("convert_model")
def hooked_transformer(model: Any, tok: Any, device: str) -> Any:
    """A TransformerLens HookedTransformer with the weights of the HF Gemma-3 ``model`` (float32; no hub:
    TransformerLens's hard-coded Gemma-3-270M config with the sizes of ``model.config``)."""
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config
    from transformer_lens.pretrained.weight_conversions import convert_gemma_weights

    hc = model.config
    cfg = get_pretrained_model_config("google/gemma-3-270m", first_n_layers=hc.num_hidden_layers, dtype=torch.float32)
    cfg.tokenizer_name = None
    cfg.device = device
    sizes = {
        "d_model": hc.hidden_size,
        "d_head": hc.head_dim,
        "n_heads": hc.num_attention_heads,
        "d_mlp": hc.intermediate_size,
        "d_vocab": hc.vocab_size,
        "d_vocab_out": hc.vocab_size,
        "n_key_value_heads": hc.num_key_value_heads,
        "window_size": hc.sliding_window,
        "rotary_dim": hc.head_dim,
        "attn_scale": float(hc.query_pre_attn_scalar) ** 0.5,
        "attn_types": ["global" if t == "full_attention" else "local" for t in hc.layer_types],
    }
    rope = getattr(hc, "rope_parameters", None) or {}
    if "full_attention" in rope and "sliding_attention" in rope:  # transformers 5
        sizes["rotary_base"] = float(rope["full_attention"]["rope_theta"])
        sizes["rotary_base_local"] = float(rope["sliding_attention"]["rope_theta"])
    elif getattr(hc, "rope_local_base_freq", None) is not None:  # transformers 4
        sizes["rotary_base"] = float(hc.rope_theta)
        sizes["rotary_base_local"] = float(hc.rope_local_base_freq)
    for key, v in sizes.items():
        setattr(cfg, key, v)
    hooked = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
    dtype = next(model.parameters()).dtype
    # float32 arithmetic (Gemma's 1 + w norms); the parameters are cast in place, not by model.float(), which
    # transformers refuses for a model loaded from a GGUF file (it counts as quantized)
    for prm in model.parameters():
        prm.data = prm.data.float()
    state = convert_gemma_weights(model, cfg)
    hooked.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False)
    del state
    for prm in model.parameters():
        prm.data = prm.data.to(dtype)
    hooked.to(device, print_details=False)
    return hooked.eval()


def _run_saelens(b: Bench, name: str, tokens: int) -> dict[str, Any]:
    """SAELens's LanguageModelSAETrainingRunner as shipped (its own step, not ours), on the HookedTransformer
    of the same weights and the same token stream cut into rows of its context size."""
    from datasets import Dataset
    from sae_lens.llm_sae_training_runner import LanguageModelSAETrainingRunner

    from sae_rdp_plugin.train.saelens import runner_config

    model, tok = load_hf(b)
    bos, pad = special_ids(model, tok)
    train, held = token_rows(b, model, bos, tokens)
    ctx = b.saelens_context
    rows = cut_rows(train, ctx)
    ds = Dataset.from_dict({"tokens": rows})
    hooked = hooked_transformer(model, tok, b.device)
    cfg = train_cfg(b, int(model.config.hidden_size), k=b.k, tokens=tokens)
    out = b.work / name
    rc = runner_config(
        cfg,
        model_name=b.model_name,
        hook_name=b.hook,
        out=out,
        context_size=ctx,
        n_batches_in_buffer=b.saelens_buffer_batches,
        store_batch_size_prompts=b.saelens_prompts,
    )
    rc.autocast_lm = b.cuda
    rc.prepend_bos = False  # pre-tokenized rows: BOS is where the data has it
    rc.sequence_separator_token = None
    rc.exclude_special_tokens = [i for i in (bos, pad) if i is not None]
    runner = LanguageModelSAETrainingRunner(rc, override_dataset=ds, override_model=hooked)
    clock = StepClock(b.device, b.warmup_steps, math.ceil(tokens / b.batch))
    split = Split(b.device)
    run_trainer = runner.run_trainer_with_interruption_handling

    def run_timed(trainer: Any) -> Any:
        trainer.data_provider = timed_batches(trainer.data_provider, clock)
        trainer.data_provider = _timed_iter(trainer.data_provider, split)
        trainer.step = split.timed("sae_step_s", trainer.step)
        return run_trainer(trainer)

    runner.run_trainer_with_interruption_handling = run_timed
    synchronize(b.device)
    t0 = time.perf_counter()
    runner.run()
    synchronize(b.device)
    wall = time.perf_counter() - t0
    peak = peak_gb(b)
    sps = clock.steps_per_s()
    del runner, hooked
    gc.collect()
    x = hook_activations(model, held, [b.hook], b.device, [i for i in (bos, pad) if i is not None])[b.hook]
    st = saelens_heldout(out, x, b.device)
    return {
        "hooks": [b.hook],
        "n_saes": 1,
        "d_sae": b.d_sae,
        "k": b.k,
        "tokens": tokens,
        "tokens_per_s": sps * b.batch if sps else None,
        "tokens_per_s_wall": tokens / wall,
        "wall_s": round(wall, 3),
        "peak_mem_gb": peak,
        "time_split": split.report(wall),
        "heldout_fvu": st["fvu"],
        "heldout_dead_fraction": st["dead_fraction"],
        "heldout_l0": st["l0"],
        "sae_dirs": [str(out)],
        "settings": {
            "context_size": ctx,
            "store_batch_size_prompts": b.saelens_prompts,
            "n_batches_in_buffer": b.saelens_buffer_batches,
            "autocast": cfg.autocast,
            "autocast_lm": rc.autocast_lm,
        },
    }


def _timed_iter(it: Any, split: Split) -> Any:
    nxt = split.timed("forward_s", lambda: next(it))
    while True:
        try:
            yield nxt()
        except StopIteration:
            return


def row_saelens(b: Bench) -> dict[str, Any]:
    return _run_saelens(b, "saelens", b.tokens)


def row_saelens_speed(b: Bench) -> dict[str, Any]:
    return _run_saelens(b, "saelens_speed", b.baseline_tokens)


def row_sparsify(b: Bench) -> dict[str, Any]:
    return _run_sparsify(b, "sparsify", b.baseline_tokens)


def row_sparsify_full(b: Bench) -> dict[str, Any]:
    return _run_sparsify(b, "sparsify_full", b.tokens)


def _run_sparsify(b: Bench, name: str, tokens_wanted: int) -> dict[str, Any]:
    """sparsify's Trainer as its CLI runs it for an FVU loss (the decoder stack in bf16, signum optimizer,
    batch ``sparsify_seqs`` rows), hookpoint ``layers.L``, BOS excluded, ``tokens_wanted`` tokens in whole batches
    (fewer when the corpus has fewer: ``tokens`` is what it trained on, ``short_of_tokens`` says so)."""
    if not b.cuda:  # its Triton decoder needs a GPU; on CPU the eager one (same math)
        os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
    try:
        from sparsify import SaeConfig, SparseCoder, Trainer
        from sparsify import TrainConfig as SparsifyTrainConfig
    except ImportError as exc:
        raise RuntimeError(f"sparsify not installed (pip install eai-sparsify): {exc}") from exc
    from datasets import Dataset

    model, tok = load_hf(b)
    bos, pad = special_ids(model, tok)
    train, held = token_rows(dataclasses.replace(b, context=b.sparsify_context), model, bos, tokens_wanted)
    excl = [i for i in (bos, pad) if i is not None]
    per_row = train.shape[1] - 1  # BOS excluded
    n_batches = max(2, math.ceil(tokens_wanted / (b.sparsify_seqs * per_row)))
    # one pass over the rows (sparsify's Trainer runs one epoch): a corpus with fewer rows gives fewer batches
    n_batches = min(n_batches, train.shape[0] // b.sparsify_seqs)
    ds = Dataset.from_dict({"input_ids": train[: n_batches * b.sparsify_seqs]}).with_format("torch")
    layer = b.n_layers - 1
    base = base_of(model)
    cfg = SparsifyTrainConfig(
        SaeConfig(num_latents=b.d_sae, k=b.k),
        batch_size=b.sparsify_seqs,
        hookpoints=[f"layers.{layer}"],
        exclude_tokens=excl,
        log_to_wandb=False,
        save_dir=str(b.work / name),
        run_name="run",
        save_every=10**9,
    )
    trainer = Trainer(cfg, ds, base)
    clock = StepClock(b.device, b.warmup_steps, n_batches)
    split = Split(b.device)
    marks: dict[str, float] = {}

    def pre(mod: Any, args: Any, kwargs: Any) -> None:
        clock.tick()
        synchronize(b.device)
        marks["start"] = time.perf_counter()

    def at_layer(mod: Any, args: Any, out: Any) -> None:  # runs before sparsify's own hook on this layer
        synchronize(b.device)
        marks["layer"] = time.perf_counter()
        split.s["forward_s"] += marks["layer"] - marks["start"]

    def post(mod: Any, args: Any, out: Any) -> None:
        synchronize(b.device)
        split.s["sae_step_s"] += time.perf_counter() - marks["layer"]

    handles = [
        base.register_forward_pre_hook(pre, with_kwargs=True),
        base.layers[layer].register_forward_hook(at_layer),
        base.register_forward_hook(post),
    ]
    synchronize(b.device)
    t0 = time.perf_counter()
    try:
        trainer.fit()
    finally:
        for h in handles:
            h.remove()
    synchronize(b.device)
    wall = time.perf_counter() - t0
    peak = peak_gb(b)
    sps = clock.steps_per_s()
    tokens = n_batches * b.sparsify_seqs * per_row
    sae = SparseCoder.load_from_disk(b.work / name / "run" / f"layers.{layer}", device=b.device)

    def encode(v: torch.Tensor) -> torch.Tensor:
        e = sae.encode(v.to(sae.dtype))
        return torch.zeros(v.shape[0], sae.num_latents, device=v.device).scatter_(1, e.top_indices, e.top_acts.float())

    def stats(rows: np.ndarray) -> dict[str, float]:
        x = hook_activations(model, rows, [b.hook], b.device, excl)[b.hook]
        return heldout_stats(encode, x, sae.num_latents, decode=lambda z: z @ sae.W_dec.float() + sae.b_dec.float())

    own = stats(held)
    # the held-out rows every other row is evaluated on (rows of b.context): the FVU comparable with theirs
    common = own if held.shape[1] == b.context else stats(heldout_rows(b, model, bos))
    return {
        "hooks": [b.hook],
        "hookpoint": f"layers.{layer}",
        "n_saes": 1,
        "d_sae": b.d_sae,
        "k": b.k,
        "tokens": tokens,
        "short_of_tokens": tokens < tokens_wanted,
        "tokens_per_s": sps * b.sparsify_seqs * per_row if sps else None,
        "tokens_per_s_wall": tokens / wall,
        "wall_s": round(wall, 3),
        "peak_mem_gb": peak,
        "time_split": split.report(wall),
        # on its own rows of sparsify_context tokens (as trained); _common: on the rows of --context tokens that
        # every other row's SAEs are evaluated on
        "heldout_fvu": own["fvu"],
        "heldout_dead_fraction": own["dead_fraction"],
        "heldout_l0": own["l0"],
        "heldout_fvu_common": common["fvu"],
        "heldout_dead_fraction_common": common["dead_fraction"],
        "settings": {
            "batch_seqs": b.sparsify_seqs,
            "context": train.shape[1],
            "optimizer": cfg.optimizer,
            "auxk_alpha": cfg.auxk_alpha,  # its default 0: no dead-latent aux loss (the ours_noaux row's objective)
            "model_dtype": "bfloat16",
        },
    }


def row_ce_recovered(b: Bench) -> dict[str, Any]:
    """CE loss recovered on held-out rows by the SAEs of rows ours / saelens of this run, through the whole
    model (meaningful with the real weights, --gguf; a default row only then): each SAE's reconstruction
    replaces ``hook`` at non-BOS positions, and (CE_zero - CE_sae) / (CE_zero - CE_clean) with CE_zero the
    loss with the hooked activation zeroed at those positions."""
    from sae_lens import SAE

    prior = {r["row"]: r for r in _rows_so_far(b.out / "latest.json") if "sae_dirs" in r}
    dirs = {
        f"{name}:{Path(d).name}": d for name in ("ours", "saelens") for d in prior.get(name, {}).get("sae_dirs", [])
    }
    dirs = {k: d for k, d in dirs.items() if Path(d).is_dir()}
    if not dirs:
        raise RuntimeError("ce_recovered needs the SAEs of rows ours / saelens of this run (none found)")
    model, tok = load_hf(b, full=True)
    bos, pad = special_ids(model, tok)
    _, held = token_rows(b, model, bos, b.batch)
    held = held[: max(1, 32768 // held.shape[1])]
    excl = torch.tensor([i for i in (bos, pad) if i is not None], device=b.device)
    layer = base_of(model).layers[b.n_layers - 1]
    edit: dict[str, Any] = {"fn": None}

    def hook(mod: Any, args: Any, out: Any) -> Any:
        if edit["fn"] is None:
            return None
        h = out[0] if isinstance(out, tuple) else out
        keep = ~torch.isin(edit["ids"], excl)
        new = h.clone()
        new[keep] = edit["fn"](h[keep].float()).to(h.dtype)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    @torch.no_grad()
    def ce(fn: Any) -> float:
        edit["fn"] = fn
        tot, n = 0.0, 0
        for s in range(0, held.shape[0], 4):
            ids = torch.as_tensor(held[s : s + 4], dtype=torch.long, device=b.device)
            edit["ids"] = ids
            loss = model(input_ids=ids, labels=ids).loss
            tot, n = tot + float(loss) * ids.numel(), n + ids.numel()
        edit["fn"] = None
        return tot / n

    handle = layer.register_forward_hook(hook)
    try:
        clean, zero = ce(None), ce(torch.zeros_like)
        res = {}
        for key, d in dirs.items():
            sae = SAE.load_from_disk(d, device=b.device).eval()
            with_sae = ce(lambda v, sae=sae: sae.decode(sae.encode(v)))
            res[key] = {"ce": with_sae, "ce_recovered": (zero - with_sae) / (zero - clean)}
    finally:
        handle.remove()
    return {"hooks": [b.hook], "n_saes": len(res), "ce_clean": clean, "ce_zero_ablation": zero, "saes": res}


ROW_FNS = {name: globals()[f"row_{name}"] for name in ROWS}


# ---------------------------------------------------------------------------------------- driver
def peak_gb(b: Bench) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if b.cuda else None


def _jsonable(obj: Any) -> Any:
    """JSON-safe copy: tensors and numpy scalars to numbers, paths to str, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.item() if obj.numel() == 1 else obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, int | str | bool) or obj is None:
        return obj
    return str(obj)


def run_row(name: str, b: Bench) -> dict[str, Any]:
    """One row in this process; a failure becomes {"error": ...} and the other rows still run."""
    row: dict[str, Any] = {"row": name, "impl": IMPL[name], "model": b.model_name}
    if b.cuda:
        torch.cuda.reset_peak_memory_stats()
    _PHASES.clear()
    t0 = time.perf_counter()
    try:
        row |= ROW_FNS[name](b)
        row.setdefault("peak_mem_gb", peak_gb(b))
    except Exception as exc:  # noqa: BLE001  (every failure is recorded, the other rows still run)
        row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        row["traceback"] = traceback.format_exc()[-3000:]
        print(row["traceback"], file=sys.stderr, flush=True)
    row["row_s"] = round(time.perf_counter() - t0, 2)
    row["phase_s"] = {k: round(v, 2) for k, v in _PHASES.items()}
    return _jsonable(row)


def run_row_isolated(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One row in a fresh Python process (clean GPU memory, compile caches and peak statistics)."""
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "row.json"
        child = {**vars(args), "only": None, "resume": None, "_row": name, "_row_out": str(res)}
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_child", json.dumps(child)])
        if res.is_file():
            return json.loads(res.read_text())
    return {"row": name, "impl": IMPL[name], "error": f"row process exited with code {proc.returncode}"}


def versions() -> dict[str, str | None]:
    from sae_rdp_plugin.evals import installed_versions

    dists = ("torch", "triton", "transformers", "sae-lens", "transformer-lens", "eai-sparsify", "datasets", "sae-rdp")
    out: dict[str, str | None] = {"python": sys.version.split()[0], **installed_versions(dists)}
    try:
        root = Path(__file__).resolve().parents[2]
        out["commit"] = (
            subprocess.run(
                ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        out["commit"] = None
    return out


def device_name(b: Bench) -> str:
    return torch.cuda.get_device_name() if b.cuda else f"cpu ({os.cpu_count()} cores)"


def _load_rows(path: Path, flag: str = "--resume") -> list[dict[str, Any]]:
    """The rows of a latest.json this benchmark wrote; SaeRdpError naming ``flag`` and the file when it is
    missing, unreadable, malformed or not one of ours (a resume must not silently start from nothing)."""
    from sae_rdp_plugin.errors import SaeRdpError

    if not path.is_file():
        raise SaeRdpError(f"{flag} {path}: no such file (nothing to resume)")
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise SaeRdpError(f"{flag} {path} is unreadable or not JSON ({type(exc).__name__})") from None
    rows = d.get("rows") if isinstance(d, dict) else None
    if not _is_bench_result(d) or not all(isinstance(r, dict) and isinstance(r.get("row"), str) for r in rows):
        raise SaeRdpError(f"{flag} {path} is not a latest.json of this benchmark (no rows / settings / device)")
    return list(rows)


def _rows_so_far(path: Path) -> list[dict[str, Any]]:
    """The rows this run has written to its latest.json so far (none yet: [])."""
    return [
        r for r in (json.loads(path.read_text()).get("rows", []) if _bench_json(path) else []) if isinstance(r, dict)
    ]


def _is_bench_result(d: Any) -> bool:
    """Whether a parsed JSON is a latest.json this benchmark wrote (recognised by its keys)."""
    return (
        isinstance(d, dict)
        and isinstance(d.get("rows"), list)
        and isinstance(d.get("settings"), dict)
        and isinstance(d.get("device"), str)
    )


def _bench_json(path: Path) -> bool:
    try:
        return path.is_file() and _is_bench_result(json.loads(path.read_text()))
    except (OSError, ValueError, RecursionError):
        return False


def check_results_folder(path: str, flag: str) -> Path:
    """A folder the results (latest.json, latest.md) may be written into: not a file, and any latest.json /
    latest.md already there written by this benchmark (a latest.md only next to such a latest.json). Other
    files in it (e.g. run_on_device.sh's log.txt) are left alone. SaeRdpError naming ``flag`` otherwise."""
    from sae_rdp_plugin.errors import SaeRdpError
    from sae_rdp_plugin.io import check_out_folder

    p = Path(path)
    if str(path) == "":
        raise SaeRdpError(f"{flag} is empty; give a folder")
    if p.exists() and not p.is_dir():
        raise SaeRdpError(f"{flag} {p} exists and is not a folder")
    js, md = p / "latest.json", p / "latest.md"
    ours = _bench_json(js) and not js.is_symlink()
    for f in (js, md):
        if (f.exists() or f.is_symlink()) and not ours:
            raise SaeRdpError(
                f"{flag} {p}: {f.name} there was not written by this benchmark (it would be overwritten); "
                "give another folder"
            )
    return check_out_folder(p, lambda _: True, flag)


def check_args(args: argparse.Namespace) -> None:
    """Every input checked before anything is written or any row starts (a row's failure is recorded in
    latest.json and the other rows still run: that is for failures on the device, not for bad input).
    SaeRdpError naming the flag."""
    from sae_rdp_plugin.errors import SaeRdpError

    if args.profile is not None and (args.profile[0] < 0 or args.profile[1] < 1):
        raise SaeRdpError(f"--profile START COUNT needs START >= 0 and COUNT >= 1, got {args.profile}")
    if args.profile is not None and args.only is not None and "ours_profile" not in args.only:
        raise SaeRdpError("--profile applies only to the ours_profile row, which --only leaves out")
    for flag, v in (
        ("--tokens", args.tokens),
        ("--baseline-tokens", args.baseline_tokens),
        ("--heldout-tokens", args.heldout_tokens),
    ):
        if v is not None and v < 1:
            raise SaeRdpError(f"{flag} must be >= 1, got {v}")
    if args.context is not None and args.context < 2:
        raise SaeRdpError(f"--context must be >= 2 (BOS and one token), got {args.context}")
    if args.warmup_steps is not None and args.warmup_steps < 0:
        raise SaeRdpError(f"--warmup-steps must be >= 0, got {args.warmup_steps}")
    if not 0 <= args.seed < 2**63 - 1:
        raise SaeRdpError(f"--seed must be in [0, 2**63 - 1), got {args.seed}")
    if args.device is not None:
        try:
            dev = torch.device(args.device)
        except (RuntimeError, ValueError):
            raise SaeRdpError(f"--device {args.device!r} is not a device (cpu, cuda or cuda:N)") from None
        if dev.type == "cuda":
            if not torch.cuda.is_available():
                raise SaeRdpError(f"--device {args.device}: no CUDA device on this machine")
            if dev.index is not None and dev.index >= torch.cuda.device_count():
                raise SaeRdpError(f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA devices")
        elif dev.type != "cpu":
            raise SaeRdpError(f"--device {args.device}: only cpu and cuda[:N] are supported")
    if args.gguf is not None:
        g = Path(args.gguf)
        if not g.is_file():
            raise SaeRdpError(f"--gguf {g}: no such file")
        try:
            with open(g, "rb") as f:
                magic = f.read(4)
        except OSError as exc:
            raise SaeRdpError(f"--gguf {g}: unreadable ({exc.strerror})") from None
        if magic != b"GGUF":
            raise SaeRdpError(f"--gguf {g} is not a GGUF file")
    if args.corpus is not None:
        _check_corpus(Path(args.corpus))
    elif args.tokens is not None or args.heldout_tokens is not None:
        from sae_rdp_plugin.devices import check_fits_memory

        n = 1.25 * (args.tokens or 0) + (args.heldout_tokens or 0)
        # int64 draw + int32 rows per token
        check_fits_memory(n * 12, f"--tokens / --heldout-tokens ({n:.3g} random tokens)", "--tokens / --heldout-tokens")
    if args.work is not None and Path(args.work).exists() and not Path(args.work).is_dir():
        raise SaeRdpError(f"--work {args.work} exists and is not a folder")
    check_results_folder(args.out, "--out")
    if args.copy_to is not None:
        check_results_folder(args.copy_to, "--copy-to")
    if args.resume:  # an explicit file; a bare --resume reads OUT/latest.json
        _load_rows(Path(args.resume))
    elif args.resume is not None and (Path(args.out) / "latest.json").exists():
        # a bare --resume with no OUT/latest.json yet (an earlier call cut before its first row) starts afresh
        _load_rows(Path(args.out) / "latest.json", "--resume (OUT/latest.json)")


def _check_corpus(p: Path) -> None:
    """A ``sae-rdp corpus build`` folder (tokens.npz) or a shards folder (shards.json) with train and heldout."""
    from sae_rdp_plugin.errors import SaeRdpError
    from sae_rdp_plugin.io import read_json_object

    if not p.is_dir():
        raise SaeRdpError(f"--corpus {p}: no such folder")
    if (p / "tokens.npz").is_file():
        try:
            with np.load(p / "tokens.npz") as z:
                splits = set(z.files)
        except (OSError, ValueError) as exc:
            raise SaeRdpError(f"--corpus {p}: tokens.npz is unreadable ({type(exc).__name__})") from None
    elif (p / "shards.json").is_file():
        rows = read_json_object(p / "shards.json", "--corpus shards index").get("rows")
        splits = set(rows) if isinstance(rows, dict) else set()
    else:
        raise SaeRdpError(f"--corpus {p}: neither tokens.npz nor shards.json there (run `sae-rdp corpus build`)")
    if not {"train", "heldout"} <= splits:
        raise SaeRdpError(f"--corpus {p}: needs the splits train and heldout, has {sorted(splits)}")


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets from the rows present: ours (one hook, one SAE) >= 10x SAELens's runner and
    sparsify; held-out FVU within 2% of SAELens's at equal tokens; ours' time per token within 1.5x of
    forward-only + step-only; three hooks from one forward >= 0.6M input tokens/s (the faster of ours_3hooks and
    ours_3hooks_streams, SAELens's objective; ours_3hooks_streams_noaux apart, sparsify's)."""
    ok = {r["row"]: r for r in rows if "error" not in r and r.get("tokens_per_s")}
    s: dict[str, Any] = {}
    ours = ok.get("ours")
    sl = ok.get("saelens") or ok.get("saelens_speed")
    if ours and sl:
        s["ours_x_saelens"] = ours["tokens_per_s"] / sl["tokens_per_s"]
    over = ok.get("ours_overlap")
    if over and ours:
        s["overlap_x_ours"] = over["tokens_per_s"] / ours["tokens_per_s"]  # > 1: the overlap pays off
    if over and sl:
        s["ours_overlap_x_saelens"] = over["tokens_per_s"] / sl["tokens_per_s"]
    radix = ok.get("ours_radix")
    if radix and ours:
        s["radix_x_ours"] = radix["tokens_per_s"] / ours["tokens_per_s"]  # > 1: the radix aux top-k pays off
    mask = ok.get("ours_mask")
    if mask and ours:
        s["mask_x_ours"] = mask["tokens_per_s"] / ours["tokens_per_s"]  # > 1: the dense topk_mask selection pays
    if mask and sl:
        s["ours_mask_x_saelens"] = mask["tokens_per_s"] / sl["tokens_per_s"]
    lagged = ok.get("ours_lagged")
    if lagged and ours:
        s["lagged_x_ours"] = lagged["tokens_per_s"] / ours["tokens_per_s"]  # > 1: no host sync per step pays
    sp = ok.get("sparsify")
    # sparsify's own rows (4 x 1024); a run that cut them shorter starves its batch and is no baseline
    sp_ok = sp is not None and sp.get("settings", {}).get("context", 1024) >= 1024
    if ours and sp_ok:
        s["ours_x_sparsify"] = ours["tokens_per_s"] / sp["tokens_per_s"]
    noaux = ok.get("ours_noaux")
    if noaux and ours:
        s["noaux_x_ours"] = noaux["tokens_per_s"] / ours["tokens_per_s"]  # what the aux loss costs ours
    if noaux and sp_ok:
        # the same objective: sparsify's Trainer at its defaults computes no aux loss (auxk_alpha 0)
        s["ours_noaux_x_sparsify"] = noaux["tokens_per_s"] / sp["tokens_per_s"]
    if "ours_noaux_mean" in ok and sp_ok:  # sparsify's recipe too (b_dec from the data's mean)
        s["ours_noaux_mean_x_sparsify"] = ok["ours_noaux_mean"]["tokens_per_s"] / sp["tokens_per_s"]
    # beside the same-objective ratios, what each run's SAE kept alive (on the common held-out rows): the ratio
    # compares runs of one loss; these say whether the SAEs are alike
    dead = {name: ok[name].get("heldout_dead_fraction") for name in ("ours_noaux", "ours_noaux_mean") if name in ok}
    if sp_ok:
        dead["sparsify"] = sp.get("heldout_dead_fraction_common")
    if any(isinstance(v, float) for v in dead.values()):
        s["heldout_dead_fraction"] = {k: v for k, v in dead.items() if isinstance(v, float)}
    if ours and "forward_only" in ok and "step_only" in ok:
        t_sum = 1 / ok["forward_only"]["tokens_per_s"] + 1 / ok["step_only"]["tokens_per_s"]
        s["ours_time_over_forward_plus_step"] = (1 / ours["tokens_per_s"]) / t_sum
    full = ok.get("saelens")
    if ours and full and full.get("tokens") == ours.get("tokens"):
        fo, fs = ours.get("heldout_fvu"), full.get("heldout_fvu")
        if isinstance(fo, float) and isinstance(fs, float) and fs > 0:
            s["fvu_rel_diff_vs_saelens"] = (fo - fs) / fs
    # sparsify at the same tokens, rounded up to its whole batches (4 x 1023 tokens: < 0.1% of 20M)
    spf = ok.get("sparsify_full")
    fsp = spf.get("heldout_fvu_common") if spf else None
    if isinstance(fsp, float) and fsp > 0:
        st = spf.get("settings", {})
        batch = st.get("batch_seqs", 0) * (st.get("context", 1) - 1)
        rel = {}
        for name in ("ours", "ours_noaux", "ours_noaux_mean"):
            r = ok.get(name)
            if r and isinstance(r.get("heldout_fvu"), float) and 0 <= spf["tokens"] - r["tokens"] < batch:
                rel[name] = (r["heldout_fvu"] - fsp) / fsp
        if rel:
            s["fvu_rel_diff_vs_sparsify_full"] = rel
    ce = next((r for r in rows if r["row"] == "ce_recovered" and "error" not in r), None)
    if ce:
        s["ce_recovered"] = {key: v["ce_recovered"] for key, v in ce["saes"].items()}
    three = [ok[r]["tokens_per_s"] for r in ("ours_3hooks", "ours_3hooks_streams") if r in ok]
    if three:
        s["three_hooks_tokens_per_s"] = max(three)
    if "ours_3hooks_streams_noaux" in ok:
        s["three_hooks_noaux_tokens_per_s"] = ok["ours_3hooks_streams_noaux"]["tokens_per_s"]
    s["targets_met"] = {
        "x10_saelens": s["ours_x_saelens"] >= 10 if "ours_x_saelens" in s else None,
        "x10_sparsify": s["ours_x_sparsify"] >= 10 if "ours_x_sparsify" in s else None,
        "x10_sparsify_same_objective": s["ours_noaux_x_sparsify"] >= 10 if "ours_noaux_x_sparsify" in s else None,
        # "within 2%": at most 2% above SAELens's (a lower FVU is better)
        "fvu_within_2pct": s["fvu_rel_diff_vs_saelens"] <= 0.02 if "fvu_rel_diff_vs_saelens" in s else None,
        "within_1p5x_forward_plus_step": (
            s["ours_time_over_forward_plus_step"] <= 1.5 if "ours_time_over_forward_plus_step" in s else None
        ),
        "three_hooks_0p6M": s["three_hooks_tokens_per_s"] >= 6e5 if "three_hooks_tokens_per_s" in s else None,
        "three_hooks_0p6M_noaux": (
            s["three_hooks_noaux_tokens_per_s"] >= 6e5 if "three_hooks_noaux_tokens_per_s" in s else None
        ),
    }
    return s


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return "/".join(_fmt(x, nd) for x in v)
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.{nd}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _notes(r: dict[str, Any]) -> str:
    if r.get("error"):
        return r["error"][:80]
    if r["row"] == "ce_recovered":
        return "CE recovered " + ", ".join(f"{k} {v['ce_recovered']:.3f}" for k, v in r["saes"].items())
    if r.get("heldout_fvu_common") is not None and r["heldout_fvu_common"] != r.get("heldout_fvu"):
        return (
            f"FVU {r['heldout_fvu_common']:.4f}, dead {r['heldout_dead_fraction_common']:.3f} on the other rows' "
            "held-out rows"
        )
    return ""


def table(res: dict[str, Any]) -> str:
    """Markdown table of the rows, the summary below it."""
    rows = res["rows"]
    ok = {r["row"]: r for r in rows if r.get("tokens_per_s")}
    sl = ok.get("saelens") or ok.get("saelens_speed")
    lines = [
        f"{res['device']}, {res['date']}; model {res.get('model')}; torch {res['versions'].get('torch')}, "
        f"sae-lens {res['versions'].get('sae-lens')}, eai-sparsify {res['versions'].get('eai-sparsify')}",
        "",
        "| row | impl | hooks | SAEs | tokens | tokens/s | x SAELens | peak GB | fwd / step / other s | held-out FVU | "
        "held-out dead | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ts = r.get("time_split") or {}
        split = "/".join(_fmt(ts.get(k), 1) for k in ("forward_s", "sae_step_s", "other_s")) if ts else "-"
        x = r["tokens_per_s"] / sl["tokens_per_s"] if sl and r.get("tokens_per_s") else None
        hooks = ",".join(h.split(".")[1] for h in r.get("hooks", []))
        lines.append(
            f"| {r['row']} | {r['impl']} | {hooks or '-'} | {_fmt(r.get('n_saes'))} | {_fmt(r.get('tokens'))} | "
            f"{_fmt(r.get('tokens_per_s'))} | {_fmt(x, 2)} | {_fmt(r.get('peak_mem_gb'), 2)} | {split} | "
            f"{_fmt(r.get('heldout_fvu'), 4)} | {_fmt(r.get('heldout_dead_fraction'), 3)} | {_notes(r)} |"
        )
    lines += ["", "summary: " + json.dumps(res.get("summary", {}))]
    return "\n".join(lines)


def write_results(path: Path, res: dict[str, Any], copy_to: Path | None = None) -> None:
    """latest.json and latest.md into ``path`` (and ``copy_to``: a device's $OUT, so that a call cut off at its
    time limit still brings back the rows done while ``path`` stays for the next call's --resume)."""
    from sae_rdp_plugin.io import atomic_write_json, atomic_write_text

    res["summary"] = summary(res["rows"])
    data, text = _jsonable(res), table(res) + "\n"
    for d in (path, copy_to) if copy_to is not None else (path,):
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / "latest.json", data)
        atomic_write_text(d / "latest.md", text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from sae_rdp_plugin.cli import OneLineArgumentParser

    ap = OneLineArgumentParser(
        prog="bench_e2e.py", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--out", default="out/e2e", help="result folder (latest.json, latest.md)")
    ap.add_argument("--copy-to", default=None, help="also write latest.json / latest.md here after every row")
    ap.add_argument("--tokens", type=int, default=None, help="training tokens of ours / saelens (default 20M)")
    ap.add_argument("--baseline-tokens", type=int, default=None, help="tokens of sparsify / saelens_speed (2M)")
    ap.add_argument("--heldout-tokens", type=int, default=None, help="held-out tokens for FVU (131072)")
    ap.add_argument("--warmup-steps", type=int, default=None, help="steps left out of tokens/s (50)")
    ap.add_argument("--only", nargs="+", choices=ROWS, default=None, metavar="ROW", help=f"rows: {' '.join(ROWS)}")
    ap.add_argument(
        "--resume",
        nargs="?",
        const="",
        default=None,
        metavar="JSON",
        help="skip rows already in this latest.json (default OUT/latest.json); its rows are kept",
    )
    ap.add_argument("--quick", action="store_true", help="tiny model on CPU, seconds per row (tests)")
    ap.add_argument("--gguf", default=None, help="real Gemma-3-270M weights (GGUF file); adds ce_recovered")
    ap.add_argument("--corpus", default=None, help="token rows of `sae-rdp corpus build` instead of random ids")
    ap.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    ap.add_argument("--work", default=None, help="where the trained SAEs go (default: a temporary folder)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--context", type=int, default=None, help="tokens per row of ours and of held-out text (1024)")
    ap.add_argument("--in-process", action="store_true", help="run every row in this process")
    ap.add_argument(
        "--profile",
        type=int,
        nargs=2,
        default=None,
        metavar=("START", "COUNT"),
        help="the ours_profile row's torch.profiler window: COUNT steps from step START (default 2000 200; kernel "
        "table, GPU busy share, syncs)",
    )
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from sae_rdp_plugin.errors import SaeRdpError

    args = parse_args(argv)
    if not args._child:
        try:
            check_args(args)  # before any folder is made or any row starts
        except SaeRdpError as exc:
            print(f"error: {exc}".splitlines()[0], file=sys.stderr)
            return 2
    if args._child:  # one row in this (child) process
        cargs = argparse.Namespace(**json.loads(args._child))
        row = run_row(cargs._row, make_bench(cargs))
        Path(cargs._row_out).write_text(json.dumps(row))
        return 0
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args.work = args.work or tempfile.mkdtemp(prefix="bench_e2e_")
    b = make_bench(args)
    b.out.mkdir(parents=True, exist_ok=True)
    # by default every row but the diagnostic ones (ours_profile unless --profile asks for it, ours_first_profile
    # unless --only names it) and, without real weights, ce_recovered
    default = [
        r
        for r in ROWS
        if (r != "ce_recovered" or args.gguf) and (r != "ours_profile" or args.profile) and r != "ours_first_profile"
    ]
    names = list(args.only or default)
    rows: list[dict[str, Any]] = []
    if args.resume is not None and (args.resume or (b.out / "latest.json").exists()):
        rows = _load_rows(Path(args.resume) if args.resume else b.out / "latest.json")
        names = [n for n in names if n not in {r["row"] for r in rows if "error" not in r}]
        rows = [r for r in rows if r["row"] not in names]
    res: dict[str, Any] = {
        "device": device_name(b),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": f"{b.model_name} ({'real weights' if b.gguf else 'random init'}, blocks 0..{b.n_layers - 1})",
        "versions": versions(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(b).items() if k not in ("out", "work")},
        "rows": rows,
    }
    copy_to = Path(args.copy_to) if args.copy_to else None
    write_results(b.out, res, copy_to)
    for name in names:
        print(f"=== row {name}", flush=True)
        row = run_row(name, b) if args.in_process else run_row_isolated(name, args)
        res["rows"] = [r for r in res["rows"] if r["row"] != name] + [row]
        write_results(b.out, res, copy_to)
        print(
            f"=== row {name}: " + json.dumps({k: row.get(k) for k in ("tokens_per_s", "heldout_fvu", "error")}),
            flush=True,
        )
        if args.in_process:
            gc.collect()
            if b.cuda:
                torch.cuda.empty_cache()
    print(table(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
