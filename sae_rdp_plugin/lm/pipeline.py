"""Activations for SAE training, straight from a Hugging Face causal LM: one truncated forward feeds every hook.

The pipeline, per forward::

    token rows [R, T]  --(model cut after the deepest hooked block)-->  hidden states h_0 .. h_K
        --(drop BOS / pad positions)-->  [n, d] per hook  --(shuffle buffer)-->  batches [batch_size, d] float32

Hook names are TransformerLens's: ``blocks.L.hook_resid_pre`` is the input of decoder block ``L`` and
``blocks.L.hook_resid_post`` its output. With ``output_hidden_states=True`` a transformers model returns
``h_0`` (the embeddings, Gemma's sqrt(d_model) scale included, since Gemma3 scales inside its embedding
module) and the output of each block, except that the last entry is taken *after* the final norm. The
truncated copy keeps blocks ``0..K-1`` and replaces the final norm by the identity, so

    h_i = input of block i = blocks.i.hook_resid_pre,     h_{L+1} = output of block L = blocks.L.hook_resid_post

for every kept index. Blocks after the deepest hook never run: their cost and memory are saved.

Shuffle buffer (one per hook, all hooks share one permutation so the rows of a batch dict are the same
tokens at every hook): fill it to ``buffer_tokens`` rows, permute it, hand out half in ``batch_size``
batches, keep the other half, refill. Rows of neighbouring positions of one document are strongly
correlated; after the first refill a batch draws from ~``buffer_tokens / context_size`` sequences, and
a row survives a refill with probability 1/2, so rows of different forwards (and epochs) mix too. The
permutations come from a generator seeded by ``cfg.seed``: the same seed gives the same batches (on a
deterministic forward).

With ``cfg.overlap`` the forward of the next refill is launched (on a side CUDA stream) as soon as a refill has
taken the previous one, so it runs while the SAE steps consume the buffer; the corpus rows, their order and the
permutations are the same, hence the same batches.

The corpus ``tokens`` is read in order, wrapping around at its end; ``stats["epochs"]`` counts passes
(rows forwarded / rows in the corpus), so a corpus smaller than the training run is visible, never silent.
"""

from __future__ import annotations

import copy
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import nullcontext as _nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from sae_rdp_plugin.errors import SaeRdpError

HOOK_KINDS = ("hook_resid_pre", "hook_resid_post")
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_post)$")

# Where the decoder blocks and the final norm live: (attribute of the *ForCausalLM holding the base model,
# its block list, its final norm). Llama / Gemma / Mistral / Qwen, GPT-2, GPT-NeoX (Pythia).
_LAYOUTS = (("model", "layers", "norm"), ("transformer", "h", "ln_f"), ("gpt_neox", "layers", "final_layer_norm"))

# The default forward size is capped: past ~128k tokens a forward is no faster per token, only larger
# in memory and longer to wait for.
MAX_DEFAULT_TOKENS_PER_FORWARD = 2**17
CPU_ROWS_PER_FORWARD = 8


@dataclass
class PipelineConfig:
    """What the pipeline computes and how much of it at once (sizes are in tokens = rows of activations)."""

    hooks: list[str]
    context_size: int = 1024
    tokens_per_forward: int | None = None  # None: sized to free GPU memory on CUDA, 8 rows on CPU
    buffer_tokens: int = 2**19  # rows per hook in the shuffle buffer
    batch_size: int = 4096  # rows per yielded batch
    model_dtype: str = "bfloat16"  # or "float32"
    compile: bool | None = None  # torch.compile the truncated forward; None: on CUDA only
    exclude_bos: bool = True
    seed: int = 0
    device: str = "cpu"
    check_finite: bool = True
    # run the next forward on a side CUDA stream while the SAE steps consume the current half of the buffer
    # (one forward in flight; same batches as without). Off by default until a benchmark row shows it faster
    # (benchmarks/e2e: ours_overlap against ours). On the CPU the prefetched forward simply runs earlier.
    overlap: bool = False


def base_model_parts(model: nn.Module) -> tuple[nn.Module, str, str]:
    """(base model, name of its block list, name of its final norm) of a causal LM or its base model."""
    for base_attr, layers, norm in _LAYOUTS:
        for cand in (model, getattr(model, base_attr, None)):
            if isinstance(getattr(cand, layers, None), nn.ModuleList) and hasattr(cand, norm):
                return cand, layers, norm
    raise SaeRdpError(
        f"{type(model).__name__} is not a supported Hugging Face causal LM "
        "(expected .model.layers, .transformer.h or .gpt_neox.layers)"
    )


def hidden_state_index(hook: str, n_layers: int) -> int:
    """Index into ``output_hidden_states`` of a hook: ``blocks.L.hook_resid_pre`` -> L, ``..._post`` -> L+1."""
    m = _HOOK_RE.match(hook)
    if m is None or int(m[1]) >= n_layers:
        raise SaeRdpError(
            f"unknown hook {hook!r}: use blocks.L.hook_resid_pre or blocks.L.hook_resid_post "
            f"with L in 0..{n_layers - 1} (the model has {n_layers} blocks)"
        )
    return int(m[1]) + (m[2] == "hook_resid_post")


def truncated_copy(model: nn.Module, n_blocks: int, dtype: torch.dtype, device: str | torch.device) -> nn.Module:
    """The base model cut after block ``n_blocks - 1``, final norm replaced by the identity, in eval mode.

    The caller's model is left as it is: the copy has its own module tree and config, and its own
    parameters, cast to ``dtype`` and moved to ``device`` (floating-point buffers, e.g. rotary
    frequencies, keep their dtype). Where no cast or move is needed a parameter shares its storage with
    the original (nothing is ever written to it). The lm head and the dropped blocks are not copied.
    """
    base, layers_attr, norm_attr = base_model_parts(model)
    shell = copy.copy(base)
    shell._modules = dict(base._modules)  # own child table: the two edits below leave `base` as it is
    shell._modules[layers_attr] = nn.ModuleList(list(getattr(base, layers_attr))[:n_blocks])
    shell._modules[norm_attr] = nn.Identity()
    # deepcopy with a memo that already maps each tensor to its cast copy: only the kept tensors are
    # converted, and never twice (no full-precision copy of the embedding on the way)
    memo: dict[int, Any] = {}
    for p in shell.parameters():
        cast = p.detach().to(device=device, dtype=dtype if p.is_floating_point() else p.dtype)
        memo[id(p)] = nn.Parameter(cast, requires_grad=False)
    for b in shell.buffers():
        memo[id(b)] = b.to(device=device)
    trunc = copy.deepcopy(shell, memo)
    cfg = trunc.config  # a copy too (the blocks' configs are the same object inside the copy)
    cfg.num_hidden_layers = n_blocks
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = list(cfg.layer_types[:n_blocks])
    return trunc.eval()


def _dtype(name: str) -> torch.dtype:
    if name not in ("bfloat16", "float32"):
        raise SaeRdpError(f"model_dtype must be 'bfloat16' or 'float32', got {name!r}")
    return getattr(torch, name)


def default_tokens_per_forward(
    model_cfg: Any, cfg: PipelineConfig, dtype: torch.dtype, n_hooks: int, d: int, device: torch.device
) -> int:
    """Tokens per forward that fit in a quarter of the free GPU memory left after the shuffle buffers.

    Peak bytes per token of a block's forward (bf16: 2 bytes per element): the residual and its norms
    (~6 d), q/k/v and the attention output (~2 (H + H_kv) d_head), the MLP (3 d_mlp: gate, up, product),
    one row of attention scores per head if attention falls back to the math kernel (H T), and the
    returned hook states (n_hooks d). The factor 4 of slack covers the allocator's fragmentation and
    kernels' workspaces. CPU: ``CPU_ROWS_PER_FORWARD`` rows.
    """
    T = cfg.context_size
    if device.type != "cuda":
        return CPU_ROWS_PER_FORWARD * T
    n_heads = getattr(model_cfg, "num_attention_heads", None) or getattr(model_cfg, "n_head", 8)
    n_kv = getattr(model_cfg, "num_key_value_heads", None) or n_heads
    d_head = getattr(model_cfg, "head_dim", None) or d // n_heads
    d_mlp = getattr(model_cfg, "intermediate_size", None) or getattr(model_cfg, "n_inner", None) or 4 * d
    elem = torch.finfo(dtype).bits // 8
    per_token = elem * (6 * d + 2 * (n_heads + n_kv) * d_head + 3 * d_mlp + n_heads * T + n_hooks * d) + 16
    free, _ = torch.cuda.mem_get_info(device)
    # the buffers, with one forward of overshoot, plus the permutation's temporary copy of one buffer
    buffers = (n_hooks + 1) * (cfg.buffer_tokens + MAX_DEFAULT_TOKENS_PER_FORWARD) * d * elem
    tokens = int(max(free - buffers, 0) / 4 / per_token)
    return max(T, min(tokens, MAX_DEFAULT_TOKENS_PER_FORWARD) // T * T)


class ActivationPipeline:
    """Endless shuffled batches ``{hook: [batch_size, d_in] float32}`` of a causal LM's residual stream.

    ``model``: a Hugging Face ``*ForCausalLM`` (Gemma3, Llama, GPT-2, GPT-NeoX) or its base model; it is
    not modified (see :func:`truncated_copy`). ``tokens``: int array/tensor ``[n_rows, context_size]``
    of token ids (``lm/corpus.py``'s packed rows: each row and each document in it starts with BOS).
    Positions holding ``bos_token_id`` (when ``cfg.exclude_bos``) or ``pad_token_id`` are left out; they
    are still attended to (causal attention: right padding changes no earlier position).
    """

    def __init__(
        self,
        model: nn.Module,
        tokens: Any,
        cfg: PipelineConfig,
        *,
        bos_token_id: int | None,
        pad_token_id: int | None,
    ) -> None:
        self.cfg = cfg
        self.hooks = list(cfg.hooks)
        if not self.hooks:
            raise SaeRdpError("no hooks: give at least one, e.g. blocks.6.hook_resid_post")
        if len(set(self.hooks)) != len(self.hooks):
            raise SaeRdpError(f"duplicate hooks in {self.hooks}")
        self.device = torch.device(cfg.device)
        self.dtype = _dtype(cfg.model_dtype)
        self.bos_token_id, self.pad_token_id = bos_token_id, pad_token_id

        base, layers_attr, _ = base_model_parts(model)
        n_layers = len(getattr(base, layers_attr))
        self._index = [hidden_state_index(h, n_layers) for h in self.hooks]
        embed = base.get_input_embeddings()
        self.d_in: int = embed.embedding_dim
        self.vocab_size: int = embed.num_embeddings

        self.tokens = self._check_tokens(tokens)
        self.n_rows = int(self.tokens.shape[0])
        self.tokens_per_epoch = int(self._keep_mask(self.tokens).sum())
        if self.tokens_per_epoch == 0:
            raise SaeRdpError(f"no tokens: all {self.n_rows * cfg.context_size} corpus positions are BOS or padding")

        if cfg.batch_size < 1 or cfg.buffer_tokens < 2 * cfg.batch_size:
            raise SaeRdpError(
                f"buffer_tokens ({cfg.buffer_tokens}) must be at least 2 x batch_size ({cfg.batch_size}): "
                "the buffer hands out half of itself at a time"
            )
        tpf = cfg.tokens_per_forward
        if tpf is None:
            tpf = default_tokens_per_forward(base.config, cfg, self.dtype, len(self.hooks), self.d_in, self.device)
        if tpf < cfg.context_size:
            raise SaeRdpError(f"tokens_per_forward ({tpf}) must be at least context_size ({cfg.context_size})")
        self.rows_per_forward = tpf // cfg.context_size
        self.tokens_per_forward = self.rows_per_forward * cfg.context_size

        # block max(index) - 1 is the deepest one needed; keep at least one so that h_0 is reported too
        self.model = truncated_copy(model, max(1, max(self._index)), self.dtype, self.device)
        use_compile = cfg.compile if cfg.compile is not None else self.device.type == "cuda"
        self._run = torch.compile(self._hidden_states, dynamic=False) if use_compile else self._hidden_states
        self._compiled = use_compile
        self.stats: dict[str, Any] = {}
        self._reset_stats()

    # ------------------------------------------------------------------ input checks

    def _check_tokens(self, tokens: Any) -> Any:
        """Validate the corpus and keep it on the CPU, as given (rows are copied to the device per forward)."""
        if tokens is None:
            raise SaeRdpError("no tokens: the corpus is empty")
        if not isinstance(tokens, torch.Tensor):
            tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[0] == 0:
            raise SaeRdpError(f"no tokens: expected [n_rows, context_size] token ids, got shape {tuple(tokens.shape)}")
        if tokens.shape[1] != self.cfg.context_size:
            raise SaeRdpError(f"token rows have {tokens.shape[1]} tokens but context_size is {self.cfg.context_size}")
        if tokens.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) or (
            isinstance(tokens, np.ndarray) and not np.issubdtype(tokens.dtype, np.integer)
        ):
            raise SaeRdpError(f"tokens must be integer token ids, got dtype {tokens.dtype}")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.vocab_size:
            raise SaeRdpError(f"token ids must be in 0..{self.vocab_size - 1} (the model's vocabulary), got {lo}..{hi}")
        return tokens

    def _keep_mask(self, ids: Any) -> Any:
        """True where a position is used: not BOS (if excluded), not padding (ids: a tensor or an array)."""
        keep = ids >= 0  # all True: ids were checked to be >= 0
        if self.cfg.exclude_bos and self.bos_token_id is not None:
            keep &= ids != self.bos_token_id
        if self.pad_token_id is not None:
            keep &= ids != self.pad_token_id
        return keep

    # ------------------------------------------------------------------ the forward

    def _hidden_states(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(input_ids=ids, output_hidden_states=True, use_cache=False)
        return tuple(out.hidden_states[i] for i in self._index)

    @torch.no_grad()
    def activations(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{hook: [rows, T, d_in]}`` in model dtype at every position of ``ids`` (no masking, no shuffle)."""
        hs = self._run(torch.as_tensor(ids).to(self.device, torch.long))
        return dict(zip(self.hooks, hs, strict=True))

    def _reset_stats(self) -> None:
        self.stats.clear()
        self.stats.update(
            tokens_forwarded=0,  # all positions run through the model
            tokens_kept=0,  # positions put into the buffers (BOS / padding left out)
            tokens_per_epoch=self.tokens_per_epoch,
            epochs=0.0,
            forwards=0,
            forward_seconds=0.0,  # GPU time of the forwards after the first (CUDA events; wall on CPU)
            first_forward_seconds=0.0,  # the first forward, which includes torch.compile's compilation
            batches=0,
            tokens_per_forward=self.tokens_per_forward,
            compiled=self._compiled,
        )

    @torch.no_grad()
    def _forward(self, start_row: int) -> list[torch.Tensor]:
        """Run rows ``start_row ..`` (wrapping around the corpus) and return ``[n_kept, d_in]`` per hook."""
        return self._collect(self._launch(start_row))

    @torch.no_grad()
    def _launch(self, start_row: int, stream: Any = None) -> dict[str, Any]:
        """Start the forward of rows ``start_row ..`` (on ``stream`` if given) without waiting for it: the kept
        positions come from the token ids on the host, so nothing here syncs with the device."""
        idx = np.arange(start_row, start_row + self.rows_per_forward) % self.n_rows
        rows = self.tokens[torch.from_numpy(idx)] if isinstance(self.tokens, torch.Tensor) else self.tokens[idx]
        keep_host = torch.as_tensor(np.flatnonzero(np.asarray(self._keep_mask(torch.as_tensor(rows))).ravel()))
        cuda = self.device.type == "cuda"
        ctx = torch.cuda.stream(stream) if (cuda and stream is not None) else _nullcontext()
        pending: dict[str, Any] = {"idx": idx, "stream": stream if cuda else None, "t0": time.perf_counter()}
        with ctx:
            ids = torch.as_tensor(rows).to(self.device, torch.long, non_blocking=True)
            keep = keep_host.to(self.device, non_blocking=True)
            try:
                if cuda:
                    pending["ev0"] = torch.cuda.Event(enable_timing=True)
                    pending["ev1"] = torch.cuda.Event(enable_timing=True)
                    pending["ev0"].record()
                hs = self._run_checked(ids)
                acts = [h.flatten(0, 1).index_select(0, keep) for h in hs]
                del hs
                if cuda:
                    pending["ev1"].record()
            except torch.cuda.OutOfMemoryError as exc:
                raise SaeRdpError(
                    f"CUDA out of memory in the model forward at tokens_per_forward={self.tokens_per_forward} "
                    f"({self.rows_per_forward} rows x {self.cfg.context_size}): lower tokens_per_forward "
                    "(--tokens-per-forward)"
                ) from exc
            finite = None
            if self.cfg.check_finite and acts[0].numel():
                finite = torch.stack([torch.isfinite(a).all() for a in acts])
        pending.update(acts=acts, finite=finite, n_kept=int(keep_host.numel()))
        return pending

    def _collect(self, pending: dict[str, Any]) -> list[torch.Tensor]:
        """The activations of a launched forward, usable on the current stream; its statistics and the
        finiteness check (one sync for all hooks) happen here, in the order the forwards are consumed."""
        acts, side = pending["acts"], pending["stream"]
        # the host waits for the forward's stream only (on the side stream: not for the SAE steps queued on the
        # main stream), then the main stream is ordered after it
        with torch.cuda.stream(side) if side is not None else _nullcontext():
            finite = pending["finite"].tolist() if pending["finite"] is not None else None
        if side is not None:
            main = torch.cuda.current_stream(self.device)
            main.wait_stream(side)
            for a in acts:  # the side stream allocated them: keep them alive until the main stream is done
                a.record_stream(main)
        step = self.stats["forwards"] + 1
        if "ev1" in pending:
            pending["ev1"].synchronize()
            seconds = pending["ev0"].elapsed_time(pending["ev1"]) / 1e3
        else:
            seconds = time.perf_counter() - pending["t0"]
        self.stats["first_forward_seconds" if step == 1 else "forward_seconds"] += seconds
        if finite is not None:
            idx = pending["idx"]
            for hook, ok in zip(self.hooks, finite, strict=True):
                if not ok:
                    raise SaeRdpError(
                        f"non-finite activations (NaN/Inf) at {hook} in forward {step} (corpus rows "
                        f"{idx[0]}..{idx[-1]}); try model_dtype='float32' or check the model weights"
                    )
        self.stats["forwards"] = step
        self.stats["tokens_forwarded"] += self.tokens_per_forward
        self.stats["tokens_kept"] += pending["n_kept"]
        self.stats["epochs"] = self.stats["forwards"] * self.rows_per_forward / self.n_rows
        return acts

    def _run_checked(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The (compiled) forward; if compilation itself fails, warn and continue eagerly."""
        if not self._compiled or self.stats["forwards"] > 0:
            return self._run(ids)
        try:
            return self._run(ids)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:  # a backend that cannot compile this model: the eager forward still works
            warnings.warn(f"torch.compile failed ({type(exc).__name__}); running the forward eagerly", stacklevel=3)
            self._run, self._compiled = self._hidden_states, False
            self.stats["compiled"] = False
            return self._run(ids)

    # ------------------------------------------------------------------ the shuffle buffer

    def _batches(self, hooks: list[str]) -> Iterator[dict[str, torch.Tensor]]:
        """A new iterator over ``hooks``: stats reset now, buffers allocated at the first batch."""
        self._reset_stats()
        return self._generate(hooks)

    def _generate(self, hooks: list[str]) -> Iterator[dict[str, torch.Tensor]]:
        """Fill -> permute -> hand out half -> refill, forever (see the module docstring)."""
        cfg = self.cfg
        which = [self.hooks.index(h) for h in hooks]
        gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
        capacity = cfg.buffer_tokens + self.tokens_per_forward  # room for one forward of overshoot
        try:
            bufs = [torch.empty(capacity, self.d_in, dtype=self.dtype, device=self.device) for _ in hooks]
        except torch.cuda.OutOfMemoryError as exc:
            raise SaeRdpError(
                f"CUDA out of memory allocating {len(hooks)} shuffle buffer(s) of {capacity} x {self.d_in}: "
                "lower buffer_tokens (--buffer-tokens)"
            ) from exc
        filled, next_row = 0, 0
        side = torch.cuda.Stream(self.device) if cfg.overlap and self.device.type == "cuda" else None
        pending = None  # with overlap: the forward of rows next_row .. already launched
        while True:
            while filled < cfg.buffer_tokens:
                if cfg.overlap:
                    if pending is None:
                        pending = self._launch(next_row, side)
                    acts = self._collect(pending)
                    # the next forward starts now, before this refill's batches go to the SAE steps
                    pending = self._launch((next_row + self.rows_per_forward) % self.n_rows, side)
                else:
                    acts = self._forward(next_row)
                next_row = (next_row + self.rows_per_forward) % self.n_rows
                n = acts[0].shape[0]
                for buf, j in zip(bufs, which, strict=True):
                    buf[filled : filled + n] = acts[j]
                filled += n
            perm = torch.randperm(filled, generator=gen, device=self.device)
            for buf in bufs:
                buf[:filled] = buf[perm]
            n_out = filled // 2 // cfg.batch_size * cfg.batch_size
            for start in range(filled - n_out, filled, cfg.batch_size):
                self.stats["batches"] += 1
                # a copy: the buffer rows are overwritten by the next refill
                yield {
                    h: buf[start : start + cfg.batch_size].to(torch.float32, copy=True) for h, buf in zip(hooks, bufs)
                }
            filled -= n_out

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """Endless ``{hook: [batch_size, d_in] float32}`` on ``cfg.device``; the rows of one dict are the same
        tokens at every hook. Each new iterator restarts at the corpus' first row (and resets ``stats``)."""
        return self._batches(self.hooks)

    def stream(self, hook: str) -> Iterator[torch.Tensor]:
        """One hook's batches ``[batch_size, d_in]`` float32 (e.g. a SAELens ``SAETrainer`` data_provider)."""
        if hook not in self.hooks:
            raise SaeRdpError(f"hook {hook!r} is not one of this pipeline's hooks {self.hooks}")
        return (batch[hook] for batch in self._batches([hook]))
