"""SAEBench's ``absorption_first_letter`` eval (absorption and feature splitting) on saved SAEs, offline, resumable.

Called by ``run_stage.py`` for an ``E-<model>-<layer>`` stage with ``--evals absorption``. The eval is SAEBench's
own ``sae_bench.evals.absorption.main.run_eval``, unchanged: a first-letter linear probe on the model's
residual at the word position of ICL prompts ``"{word} has the first letter:"`` built from the model's own
alphabetic vocabulary tokens; k-sparse probes on the SAE's latents per letter (k <= ``max_k_value``; a latent
added when the F1 jumps by > ``f1_jump_threshold`` counts as a split feature); absorption = probe true positives
on which the main latents fail while another latent carries the probe direction.
``mean_absorption_fraction_score``, ``mean_full_absorption_score`` and ``mean_num_split_features`` are means
over the letters whose ground-truth probe F1 > ``min_GT_probe_f1``; SAEBench writes no output for an SAE when
fewer than ``min_feats_for_eval`` letters pass (recorded here as ``not_evaluable``).

Offline adaptations (no metric changes), active only while the eval runs, at the narrowest points:

* the model: ``run_eval`` loads ``HookedTransformer.from_pretrained_no_processing(config.model_name)``; that
  module global is replaced by a loader returning the model passed in for ``model_name`` (any other name raises);
* the caches: the probe, k-sparse-probing and absorption results go to ``RESULTS_DIR`` =
  ``<site-packages>/sae_bench/artifacts/absorption`` through default arguments ``run_eval`` does not pass; the two
  experiment functions it calls are wrapped to pass ``work/results`` instead, and the working directory is
  ``work`` (``run_eval`` also writes ``./artifacts/absorption``). The first-letter probe is cached per
  HookedTransformer name and layer: one ``work`` per model-layer;
* ``torch.set_grad_enabled(True)`` (set by ``run_eval``) is restored afterwards.

Reproducibility adaptations (they change which random draws an SAE gets, not the metric): SAEBench's
``run_eval`` draws from Python's, NumPy's and torch's global random generators (the probe's train / test split
of the vocabulary, the ICL examples of every prompt, the probes' initialisation and minibatch order) and never
seeds them (``AbsorptionEvalConfig.random_seed`` is read by nothing), so an SAE's result depended on what had
run before it in the same process; and it lists the vocabulary in the order of a fast tokenizer's ``vocab``,
which comes from a Rust hash map and changes from call to call, so even seeded draws picked other words. The
generators are seeded with ``random_seed`` before the probe is trained and before each SAE's ``run_eval`` (and
restored afterwards), and ``vocab.get_tokens`` sees the vocabulary in token-id order, so an SAE's JSON no longer
depends on the order, the call or the process it runs in.

Batching adaptations (the same activations, the same probe; only the cost changes):

* the probe's activations: ``gen_and_save_df_acts_probing`` runs ``probe_batch`` prompts per forward pass
  (SAEBench: 64, the probe's training batch, which stays 64) and every forward pass that reads
  ``blocks.L.hook_resid_post`` stops after block L (``stop_at_layer``: the later blocks and the 262k-wide
  unembedding do not change that activation);
* padding: the tokenizer pads on the left during the eval. SAEBench reads position ``prompt_token_pos`` (-6)
  of each padded row; with right padding a prompt shorter than the longest of its batch would be read at a pad
  position, so the activation would depend on the batch. With left padding (TransformerLens masks the pads and
  shifts the positions) the last tokens of every row are its own prompt's, as when it runs alone. SAEBench's
  absorption calculator refuses prompts of unequal token lengths for that reason; its check is kept but a batch
  also passes when the tokens after the word position are the same in every prompt (three Gemma-3 vocabulary
  words tokenize to 2-3 tokens in context; each prompt holds 11 random words, so several letters would fail);
* the probes' minibatches: ``train_multi_probe``'s ``DataLoader(dataset, batch_size, shuffle=True)`` gathers
  each minibatch with one index per tensor (the same sampler, the same random permutation, the same batches in
  the same order) instead of row by row;
* the k-sparse probes' SAE activations: ``train_k_sparse_probes`` calls ``_get_sae_acts`` once per letter and k
  (26 x ``max_k_value``), each re-encoding the whole training set to keep k columns; :class:`CachedSaeActs`
  encodes it once per SAE as SAEBench does, keeps its nonzero activations (up to ``KSP_CACHE_NNZ``; beyond that,
  SAEBench's function) and copies the k columns out of them: the same bits; emptied when the SAE's k-sparse
  probing ends;
* the k-sparse scoring (``eval_probe_and_sae_k_sparse_raw_scores``): SAEBench loops over the test words (~28k for
  Gemma-3) and per word over 26 letters x ``max_k_value`` probes (a 1-D ``x[ids] @ w + b``, ``.sum()``, ``.item()``
  and ``.numpy()`` each: millions of tiny torch ops, 211-226 s per SAE on the device) into one dict per word.
  :func:`batched_k_sparse_raw_scores` makes the same SAE encodings and probe scores with SAEBench's calls on
  SAEBench's batches, then per letter and k computes all words at once, its dots and sums in the order of float32
  operations that reproduces torch's 1-D dot (a BLAS sdot, whose order depends on the BLAS and the processor) and
  sum on the machine (:func:`reduction_plan`, calibrated once per process), and builds the DataFrame from columns:
  the same columns, dtypes, row order and bits. Each SAE's result is checked at run time against SAEBench's own
  row code on ``SCORING_CHECK_FIRST`` rows of the first batch and ``SCORING_CHECK_SPREAD`` rows spread over the set;
  on any difference SAEBench's function runs instead (the record's ``ksp_scoring`` says which ran, and why).
  ``SAE_RDP_ABSORPTION_SCORING=saebench`` (``SCORING_ENV``): SAEBench's function;
* the absorption experiment (``FeatureAbsorptionCalculator.calculate_absorption``): SAEBench reads each word's
  SAE activations and projections from the SAE's device one at a time (a row copy and a dozen ``.item()`` per word,
  each a wait for the GPU, slow when several workers share it); :func:`calculate_absorption_host_batches` computes
  the same tensors with the same operations on the same device and copies each batch to the host once, then runs
  SAEBench's per-word code on the copies: the same results. Checked per SAE at run time on the first
  ``ABSORPTION_CHECK_WORDS`` words of its first letter with words (:func:`checked_absorption_calculator`; the record's
  ``absorption_words``; on a difference SAEBench's method); ``SAE_RDP_ABSORPTION_WORDS=saebench``
  (``ABSORPTION_WORDS_ENV``): SAEBench's method;
* Python's garbage collector is off during each SAE's k-sparse probing (and on again after): SAEBench's scoring
  builds ~300 KiB of Python rows and small arrays per test word (~28k words for Gemma-3), over which the collector
  passes again and again with nothing to free (``diagnostics/absorption_memory.json``: the same values and peak
  memory either way, the scoring a few percent faster without it);
* ``BATCH_DEFAULTS`` (``llm_batch_size``, ``eval_k_sparse_probe_batch_size``: prompts per forward pass and
  rows per SAE encoding, nothing else) unless ``config`` sets them. ``k_sparse_probe_batch_size`` is the sparse
  probes' training minibatch (it changes the probes): it keeps SAEBench's default.

Hard deadline and parallel SAEs: the work runs in ``workers`` spawned child processes (the model is passed to
each, CUDA tensors through torch's IPC, so its weights are not copied) that take SAEs from one queue and report
each step to this process; at ``deadline`` they are terminated. Per SAE, most of the eval is Python and CPU
work (scikit-learn's k-sparse probes, 26 letters x ``max_k_value``, and a row-by-row scoring loop), so SAEs in
parallel processes overlap it. The first child trains the probe if it is missing while the others wait for it;
the probe is trained into a temporary folder moved into place when complete, each SAE's JSON is written here
after its child reports it done, so a cut leaves neither a partial probe nor a partial JSON; the record says
which phase was cut and after how many seconds. Near the host's memory limit a guard stops the worker holding the
most memory in an SAE (:class:`workers.MemoryGuard`; that SAE is left for a later call).

The carried probe (``carry``, ``OUT/absorption_probe``): a probe trained here is also written there as probe.pth
and a manifest (sha256, SAEBench's version, the probe config, vocabulary and csv fingerprints), which the stage's
bundle brings back; on a fresh machine with that folder the probe phase recomputes the vocabulary, prompts and
activations with SAEBench's own functions and the same seeds, checks the dataframes against the carried
fingerprints and uses the carried probe instead of training it (:func:`make_probe`; refused, with the reason in the
record, and trained when anything differs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import json
import multiprocessing as mp
import os
import queue
import random
import re
import shutil
import signal
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from probing_stage import ProbeSAE
from workers import MemoryGuard, die_with_parent, host_limit, start_all

from sae_rdp_plugin.io import sha256_file

EVAL_TYPE = "absorption_first_letter"
PROBE_BATCH = 1024  # prompts of ~90 tokens; stopping after the hook's block keeps a batch well under 10 GB
BATCH_DEFAULTS = {"llm_batch_size": 256, "eval_k_sparse_probe_batch_size": 1024}
PROBE_TMP = ".probes_tmp_"


class _UpToLayer:
    """``model`` whose ``run_with_cache`` stops after block ``layer``: activations of that block and earlier are
    unchanged, the later blocks and the unembedding are not computed."""

    def __init__(self, model: Any, layer: int) -> None:
        self._model, self._stop = model, layer + 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def run_with_cache(self, *a: Any, **k: Any) -> Any:
        return self._model.run_with_cache(*a, stop_at_layer=self._stop, **k)


class IdOrderedVocab:
    """``tokenizer`` whose ``vocab`` lists the tokens in id order (a fast tokenizer's ``vocab`` is built from a
    Rust hash map, in an order that changes from call to call); everything else is the tokenizer's."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    @property
    def vocab(self) -> dict[str, int]:
        return dict(sorted(self._tokenizer.vocab.items(), key=lambda kv: kv[1]))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


def _hook_layer(hook_point: str) -> int | None:
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", hook_point)
    return int(m.group(1)) if m else None


def _batch_loader(loader_cls: Any) -> Callable[..., Any]:
    """``DataLoader(dataset, batch_size, shuffle)`` yielding the same batches (same sampler, same order), each
    gathered by ``dataset[list of indices]`` (one index per tensor of a TensorDataset) instead of row by row."""
    from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

    def make(dataset: Any, batch_size: int = 1, shuffle: bool = False, **kw: Any) -> Any:
        sampler = RandomSampler(dataset) if shuffle else SequentialSampler(dataset)
        return loader_cls(dataset, batch_size=None, sampler=BatchSampler(sampler, batch_size, drop_last=False), **kw)

    return make


KSP_CACHE_NNZ = 1 << 26  # nonzero activations the k-sparse probes' cache keeps per SAE (8 bytes each: ~0.5 GB)
_INT_OF_SIZE = {1: "int8", 2: "int16", 4: "int32", 8: "int64"}


class CachedSaeActs:
    """SAEBench's ``k_sparse_probing._get_sae_acts(sae, input_activations, batch_size, sparse_feat_ids)`` with the
    SAE's activations of one input kept, so that its calls with other ``sparse_feat_ids`` on the same input (the
    k-sparse probes: 26 letters x ``max_k_value`` calls on the whole training set) select columns instead of
    re-encoding it.

    The first call for an (SAE, input tensor, batch_size) runs SAEBench's own loop (``batchify``, ``.to(device=
    sae.device, dtype=sae.dtype)``, ``sae.encode``, ``acts[:, ids].cpu()``, ``torch.cat``) and returns its result;
    meanwhile it keeps every activation whose bits are not all zero (so -0.0 and NaN too) as (row, value) pairs per
    column, on the SAE's device. A later call on the same SAE (the same parameter objects, unmodified: their
    version counters), the same input (the same tensor object, unmodified) and batch size writes those values into
    a zero [rows, k] tensor and returns it on the CPU: no arithmetic, so the bits are those SAEBench's call would
    return (as long as ``sae.encode`` is deterministic, which SAEBench's own re-encoding assumes). Anything else is
    SAEBench's function: a call without ``sparse_feat_ids`` or with ids other than a 1-D integer tensor in range,
    grad enabled, another SAE, input or batch size (which replaces the cache), an SAE or input changed in place (the
    tensors' version counters; an inference tensor has none), an SAE whose activations hold more than ``max_nnz``
    nonzeros (then not kept: later calls encode again). ``stats`` counts each case."""

    def __init__(self, orig: Callable[..., Any], max_nnz: int = KSP_CACHE_NNZ) -> None:
        self.orig, self.max_nnz = orig, max_nnz
        self.stats = {"builds": 0, "hits": 0, "over_cap": 0, "plain": 0}
        self.clear()

    def clear(self) -> None:
        """Drop the kept activations (and the references to the SAE and input they came from)."""
        self._key: tuple | None = None
        self._csc: tuple | None = None  # (column starts: d_sae + 1 ints, rows [nnz] int32, values [nnz], rows)

    @staticmethod
    def _state(sae: Any, inp: Any, batch_size: int) -> tuple:
        def version(t: Any) -> tuple:
            # inference tensors (made under torch.inference_mode, as SAEBench's probe data can be) keep no
            # version counter; they can only be changed in place inside inference mode
            return (None if t.is_inference() else t._version), t.data_ptr()

        tensors = (*sae.parameters(), *sae.buffers())
        versions = tuple(version(t) for t in tensors)
        return sae, inp, tensors, (batch_size, version(inp), str(sae.device), sae.dtype, versions)

    def _same(self, key: tuple) -> bool:
        old = self._key
        return (
            old is not None
            and old[0] is key[0]
            and old[1] is key[1]
            and len(old[2]) == len(key[2])
            and all(a is b for a, b in zip(old[2], key[2], strict=True))
            and old[3] == key[3]
        )

    def __call__(self, sae: Any, input_activations: Any, batch_size: int = 4096, sparse_feat_ids: Any = None) -> Any:
        import torch

        ids = sparse_feat_ids
        if (
            not isinstance(ids, torch.Tensor)
            or ids.dim() != 1
            or ids.dtype not in (torch.int64, torch.int32)
            or not isinstance(input_activations, torch.Tensor)
            or input_activations.dim() != 2
            or not 0 < len(input_activations) < 2**31
            or not isinstance(batch_size, int)
            or batch_size < 1
            or torch.is_grad_enabled()
        ):
            self.stats["plain"] += 1
            return self.orig(sae, input_activations, batch_size=batch_size, sparse_feat_ids=sparse_feat_ids)
        key = self._state(sae, input_activations, batch_size)
        if not self._same(key):
            return self._build(sae, input_activations, batch_size, ids, key)
        if self._csc is not None:
            if ids.numel() == 0 or (int(ids.min()) >= 0 and int(ids.max()) < len(self._csc[0]) - 1):
                self.stats["hits"] += 1
                return self._slice(ids)
        self.stats["plain"] += 1
        return self.orig(sae, input_activations, batch_size=batch_size, sparse_feat_ids=sparse_feat_ids)

    def _build(self, sae: Any, inp: Any, batch_size: int, ids: Any, key: tuple) -> Any:
        """SAEBench's loop, keeping each batch's nonzero activations (under the cap) on the way."""
        import sae_bench.evals.absorption.k_sparse_probing as ksp
        import torch

        self.clear()
        self.stats["builds"] += 1
        out, rows, cols, vals = [], [], [], []
        start, nnz, keep, d_sae = 0, 0, True, None
        for batch in ksp.batchify(inp, batch_size):
            acts = sae.encode(batch.to(device=sae.device, dtype=sae.dtype))
            out.append(acts[:, ids].cpu())  # SAEBench's result, as SAEBench computes it
            if keep:
                keep = acts.dim() == 2 and acts.dtype.is_floating_point and d_sae in (None, acts.shape[1])
            if keep:
                d_sae = acts.shape[1]
                nz = acts.view(getattr(torch, _INT_OF_SIZE[acts.element_size()])) != 0  # bits, not == 0.0
                r, c = nz.nonzero(as_tuple=True)  # row-major
                nnz += len(r)
                keep = nnz <= self.max_nnz
                if keep:
                    vals.append(acts[r, c])
                    rows.append((r + start).to(torch.int32))
                    cols.append(c.to(torch.int32))
            if not keep:
                rows, cols, vals = [], [], []
            start += len(acts)
        result = torch.cat(out)
        self._key = key
        if not keep or d_sae is None:
            self.stats["over_cap"] += 1
            return result
        col = torch.cat(cols)
        del cols
        col_ptr = [0, *torch.cumsum(torch.bincount(col, minlength=d_sae), 0).tolist()]
        order = torch.sort(col, stable=True).indices
        del col
        self._csc = (col_ptr, torch.cat(rows)[order], torch.cat(vals)[order], start)
        return result

    def _slice(self, ids: Any) -> Any:
        """Columns ``ids`` of the kept activations: a zero [rows, k] tensor with the kept values written in."""
        import torch

        col_ptr, rows, vals, n = self._csc  # type: ignore[misc]
        out = torch.zeros(n, len(ids), dtype=vals.dtype, device=vals.device)
        for j, c in enumerate(ids.tolist()):
            a, b = col_ptr[c], col_ptr[c + 1]
            out[rows[a:b].long(), j] = vals[a:b]  # distinct rows: plain copies
        return out.cpu()


# ------------------------------------------------------------------------------------------------------------------
# SAEBench's k-sparse scoring (``k_sparse_probing.eval_probe_and_sae_k_sparse_raw_scores``), per batch

SCORING_ENV = "SAE_RDP_ABSORPTION_SCORING"  # "saebench": SAEBench's row-by-row scoring instead of the batched one
#: "saebench": the absorption experiment's words read from the SAE's device one by one (SAEBench's method)
ABSORPTION_WORDS_ENV = "SAE_RDP_ABSORPTION_WORDS"
SCORING_CHECK_FIRST = 256  # rows of the first batch checked against SAEBench's own row code, each SAE
SCORING_CHECK_SPREAD = 256  # rows spread evenly over the whole set, checked likewise
_CALIBRATION_SEED = 20261206
_WIDTHS = (4, 8, 16)  # SIMD lanes of float32 (SSE, AVX, AVX-512) a BLAS dot may accumulate in


def saebench_forced(env: str) -> bool:
    """Whether the environment variable ``env`` (``SCORING_ENV``, ``ABSORPTION_WORDS_ENV``) asks for SAEBench's own
    code instead of the stage's replacement (``saebench``, any case)."""
    return os.environ.get(env, "").strip().lower() == "saebench"


def _fma32(x: Any, w: Any, c: Any) -> Any:
    """``fma(x, w, c)`` rounded once to float32, element-wise (float32 arrays or scalars): the product is exact in
    float64 (24 + 24 bits), the sum is rounded to float64 and its error taken exactly (TwoSum), the float64 is made
    odd when inexact (round to odd), then rounded to float32: rounding to odd with >= 24 + 2 bits and then to
    nearest gives the correctly rounded sum (Boldo & Melquiond, 2008)."""
    import numpy as np

    p = np.asarray(x, np.float64) * np.asarray(w, np.float64)
    c64 = np.asarray(c, np.float64)
    s = np.asarray(p + c64, np.float64)
    bb = s - p
    err = (p - (s - bb)) + (c64 - bb)
    fix = (err != 0) & ((s.view(np.int64) & 1) == 0)
    if fix.any():
        s = s.copy()
        s[fix] = np.nextafter(s[fix], np.where(err[fix] > 0, np.inf, -np.inf))
    return s.astype(np.float32)


def _add(a: Any, b: Any) -> Any:
    return b if a is None else ("+", a, b)


def _hsum(lanes: list, order: str) -> Any:
    """The lanes of a vector added together: ``halve`` (lane i + lane i + h, h = width / 2, repeated: the usual
    horizontal sum), ``pairs`` (neighbours) or ``seq`` (left to right). Empty lanes (None) hold zeros."""
    lanes = list(lanes)
    if order == "seq":
        e = None
        for lane in lanes:
            e = e if lane is None else _add(e, lane)
        return e
    while len(lanes) > 1:
        if order == "halve":
            h = len(lanes) // 2
            pairs = [(lanes[i], lanes[i + h]) for i in range(h)]
        else:
            pairs = [(lanes[i], lanes[i + 1]) for i in range(0, len(lanes), 2)]
        lanes = [a if b is None else _add(a, b) for a, b in pairs]
    return lanes[0]


def _dot_lanes(n: int, width: int, tail: str, acc: str, tail_op: str, order: str) -> Any:
    """A vectorised float32 dot's order of operations as an expression over the terms 0..n-1 (an int i: the rounded
    product x_i w_i; ``("+", a, b)``: a float32 addition; ``("fma", i, c)``: x_i w_i + c rounded once): ``width``
    lanes accumulate the full chunks (``acc``: add the rounded product, or fma), the terms after them (``tail``) go
    one by one into lane 0 (``lane0``), each into its own lane (``masked``) or onto the lanes' sum (``after``), by
    ``tail_op``; the lanes are summed in ``order``."""
    chunks = n // width
    lanes: list[Any] = [None] * width

    def put(e: Any, i: int, op: str) -> Any:
        if e is None:
            return i
        return ("fma", i, e) if op == "fma" else ("+", e, i)

    for c in range(chunks):
        for j in range(width):
            lanes[j] = put(lanes[j], c * width + j, acc)
    rest = range(chunks * width, n)
    if tail == "lane0":
        for i in rest:
            lanes[0] = put(lanes[0], i, tail_op)
    elif tail == "masked":
        for i in rest:
            lanes[i - chunks * width] = put(lanes[i - chunks * width], i, tail_op)
    e = _hsum(lanes, order)
    if tail == "after":
        for i in rest:
            e = put(e, i, tail_op)
    return e


def _seq_expr(n: int, op: str = "+") -> Any:
    e: Any = 0
    for i in range(1, n):
        e = ("fma", i, e) if op == "fma" else ("+", e, i)
    return e


def _torch_sum_scalar(n: int) -> Any:
    """torch's CPU sum of n contiguous floats below its vector width (``cascade_sum`` -> ``row_sum``: four
    interleaved partial sums, the tail into the first, then the four added left to right)."""
    parts: list[Any] = [None] * 4
    for i in range(n // 4 * 4):
        parts[i % 4] = i if parts[i % 4] is None else ("+", parts[i % 4], i)
    for i in range(n // 4 * 4, n):
        parts[0] = i if parts[0] is None else ("+", parts[0], i)
    return _hsum(parts, "seq")


def _torch_sum_vector(n: int, width: int) -> Any:
    """torch's CPU sum of n >= ``width`` (its vector width) contiguous floats, n < 4 ``width``
    (``vectorized_inner_sum``: lanes over the full vectors, the scalar tail first, then the lanes left to right)."""
    if n < width:
        return _torch_sum_scalar(n)
    chunks = n // width
    lanes: list[Any] = [None] * width
    for i in range(chunks * width):
        lanes[i % width] = _add(lanes[i % width], i)
    e = None
    for i in range(chunks * width, n):
        e = i if e is None else ("+", e, i)
    for lane in lanes:
        e = lane if e is None else ("+", e, lane)
    return e


@functools.cache
def _candidates(op: str, n: int) -> dict[str, Any]:
    """The orders of operations tried for a 1-D float32 ``op`` ("dot": ``x @ w``, "sum": ``x.sum()``) of n terms,
    by name, first the ones seen on the machines so far; "torch" and "mv" are torch's own batched ``A.sum(1)`` and
    ``A @ w``; the others are expressions (:func:`_dot_lanes`), duplicates dropped."""
    out: dict[str, Any] = {}
    seen: set[str] = set()

    def add(name: str, e: Any) -> None:
        if e is not None and repr(e) not in seen:
            seen.add(repr(e))
            out[name] = e

    if op == "sum":
        out["torch"] = "torch"
        add("torch_scalar", _torch_sum_scalar(n) if n < 64 else None)
        for width in (8, 16):
            add(f"torch_vec{width}", _torch_sum_vector(n, width) if n < 4 * width else None)
        add("seq", _seq_expr(n))
        return out
    add("seq", _seq_expr(n))
    widths = [w for w in _WIDTHS if w <= n][::-1] + [w for w in _WIDTHS if w > n]
    for width in widths:
        for tail in ("lane0", "masked", "after"):
            for acc in ("+", "fma"):
                for tail_op in ("+", "fma"):
                    for order in ("halve", "pairs", "seq"):
                        add(
                            f"lanes{width}_{tail}_{acc}_{tail_op}_{order}",
                            _dot_lanes(n, width, tail, acc, tail_op, order),
                        )
    add("seq_fma", _seq_expr(n, "fma"))
    out["mv"] = "mv"
    return out


def _eval_expr(e: Any, a: Any, w: Any, terms: Any) -> Any:
    """Expression ``e`` evaluated for all rows at once, in float32 (``terms``: the rounded products of ``a``'s
    columns and ``w`` (one weight vector, or one per row), or ``a`` itself for a sum)."""
    if isinstance(e, int):
        return terms[:, e]
    if e[0] == "+":
        return _eval_expr(e[1], a, w, terms) + _eval_expr(e[2], a, w, terms)
    return _fma32(a[:, e[1]], w[..., e[1]], _eval_expr(e[2], a, w, terms))


def _emulate(op: str, plan: str, a: Any, w: Any) -> Any:
    """Expression ``plan`` of :func:`_candidates` on every row of ``a`` (float32 [rows, n]; ``w``: float32 [n] or
    [rows, n]), float32 [rows]: NumPy's IEEE-754 single-precision additions and multiplications, one operation per
    call on whole columns (nothing fused or reordered), fma by :func:`_fma32`."""
    import numpy as np

    with np.errstate(all="ignore"):
        out = _eval_expr(_candidates(op, a.shape[1])[plan], a, w, a * w if op == "dot" else a)
    return np.array(out, np.float32, copy=True).reshape(len(a))


def _torch_rows(op: str, a: Any, w_t: Any) -> Any:
    """The 1-D torch op, row by row (each row a fresh tensor, as SAEBench's ``sae_acts[feature_ids]``)."""
    import numpy as np
    import torch

    out = np.empty(len(a), np.float32)
    for r, row in enumerate(a):
        x = torch.from_numpy(row).clone()
        out[r] = (x @ w_t if op == "dot" else x.sum()).item()
    return out


def batched_reduction(op: str, plan: str | None, a: Any, w_t: Any = None) -> Any:
    """``op`` of every row of ``a`` ([rows, n] float32, C-contiguous), as SAEBench's 1-D ``x @ w_t`` ("dot") or
    ``x.sum()`` ("sum") on each row gives it, float32 [rows].

    ``plan`` (:func:`reduction_plan`): "torch" / "mv": torch's batched ``A.sum(1)`` / ``A @ w`` (torch's sum runs
    the same kernel on each row as on a 1-D tensor); an expression name (:func:`_candidates`): that order of float32
    operations, column by column in NumPy (IEEE-754 single additions and multiplications, fma rounded once by
    :func:`_fma32`), where a row whose result is zero or NaN is recomputed by the 1-D torch op (the sign of a zero
    and a NaN's bits depend on more than the order; any other result does not depend on the signs of zeros
    inside); None: the 1-D torch op on every row that is not all +0.0 (all those rows give one value)."""
    import numpy as np
    import torch

    w = None if w_t is None else w_t.detach().cpu().numpy()
    if plan == "torch":
        return torch.from_numpy(a).sum(dim=1).numpy()
    if plan == "mv":
        return (torch.from_numpy(a) @ w_t).numpy()
    if plan is None:
        out = np.empty(len(a), np.float32)
        zero = ~a.view(np.int32).any(axis=1)
        if zero.any():
            out[zero] = _torch_rows(op, np.zeros((1, a.shape[1]), np.float32), w_t)[0]
        out[~zero] = _torch_rows(op, a[~zero], w_t)
        return out
    out = _emulate(op, plan, a, w)
    redo = (out == 0) | np.isnan(out)
    if redo.any():
        out[redo] = batched_reduction(op, None, np.ascontiguousarray(a[redo]), w_t)
    return out


def _calibration_data(n: int, groups: int = 32, per_group: int = 24) -> tuple[Any, Any]:
    """Inputs that tell orders of operations apart: rows of one scale with random signs (cancellations), rows of
    scales ~e^-9..e^9 apart, half of them non-negative (as ReLU / TopK activations), exact zeros of both signs,
    float32 subnormals, an all-zero row per weight vector; ``groups`` weight vectors (SAEBench's: one per letter
    and k), ``per_group`` rows each. A fixed seed: the same data in every process."""
    import numpy as np

    rng = np.random.default_rng(_CALIBRATION_SEED + n)
    rows = groups * per_group
    scale = np.where(rng.random((rows, 1)) < 0.5, 1.0, np.exp(rng.normal(0, 3, (rows, n))))
    x = rng.standard_normal((rows, n)) * scale
    u = rng.random((rows, n))
    x = np.where(rng.random((rows, 1)) < 0.5, np.abs(x), x)
    x[u < 0.2] = 0.0
    x[(u >= 0.2) & (u < 0.25)] = -0.0
    tiny = (u >= 0.25) & (u < 0.28)
    x[tiny] = rng.uniform(-1e-39, 1e-39, int(tiny.sum()))
    x[::per_group] = 0.0
    w = rng.standard_normal((groups, n)) * np.exp(rng.normal(0, 1, (groups, n)))
    w[rng.random((groups, n)) < 0.05] = 0.0
    return x.astype(np.float32), w.astype(np.float32)


@functools.cache
def reduction_plan(op: str, n: int) -> str | None:
    """The first of :func:`_candidates` with which :func:`batched_reduction` gives, bit for bit, what the 1-D torch
    op SAEBench runs (``x[ids] @ w``: torch's dot, a BLAS sdot; ``x[ids].sum()``) gives on this machine on every
    row of :func:`_calibration_data` (each row gathered into a fresh tensor, each weight vector a fresh tensor, as
    SAEBench's); None if none does (then :func:`batched_reduction` runs the 1-D op row by row). Once per process,
    op and n."""
    found = matching_plans(op, n, first=True)
    return found[0] if found else None


def matching_plans(op: str, n: int, first: bool = False) -> list[str]:
    """The names of :func:`_candidates` that pass :func:`reduction_plan`'s calibration (``first``: stop at the
    first), in the candidates' order."""
    import numpy as np
    import torch

    x, w = _calibration_data(n)
    per = len(x) // len(w)
    ws = [torch.tensor(w[g]) for g in range(len(w))]
    w_rows = np.repeat(w, per, axis=0)
    xt, ids = torch.from_numpy(x), torch.arange(n)
    found: list[str] = []
    with torch.inference_mode():
        ref = np.array(
            [(xt[r][ids] @ ws[r // per] if op == "dot" else xt[r][ids].sum()).item() for r in range(len(x))],
            np.float32,
        )
        for name, e in _candidates(op, n).items():
            if isinstance(e, str):  # torch's own batched op, per weight vector
                try:
                    got = np.concatenate(
                        [
                            batched_reduction(op, name, np.ascontiguousarray(x[g * per : (g + 1) * per]), ws[g])
                            for g in range(len(w))
                        ]
                    )
                except Exception:  # noqa: BLE001 - an op torch cannot run here is no candidate
                    continue
            else:  # a zero or NaN result is recomputed by the 1-D op itself (batched_reduction): ref's value
                got = _emulate(op, name, x, w_rows)
                redo = (got == 0) | np.isnan(got)
                got[redo] = ref[redo]
            if np.array_equal(got.view(np.int32), ref.view(np.int32)):
                found.append(name)
                if first:
                    break
    return found


class _ReplaySae:
    """An "SAE" whose ``encode`` returns kept activation rows: row ``int(x[i, 0])`` for input row i."""

    def __init__(self, acts: Any) -> None:
        import torch

        self.acts, self.device, self.dtype = acts, torch.device("cpu"), torch.float64

    def encode(self, x: Any) -> Any:
        return self.acts[x[:, 0].long()]


def _replay_probe(scores: Any) -> Any:
    """A probe returning kept score rows, as :class:`_ReplaySae` does activations."""
    import torch

    class ReplayProbe(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return scores[x[:, 0].long()]

    return ReplayProbe()


def _first_difference(got: Any, want: Any) -> str | None:
    """Where two scoring DataFrames first differ (columns, dtypes, then each value's bits), or None."""
    import numpy as np

    if list(got.columns) != list(want.columns):
        return f"columns {list(got.columns)[:4]}... != {list(want.columns)[:4]}..."
    if len(got) != len(want):
        return f"{len(got)} rows != {len(want)}"
    for col in want.columns:
        a, b = got[col], want[col]
        if a.dtype != b.dtype:
            return f"{col}: dtype {a.dtype} != SAEBench's {b.dtype}"
        if b.dtype == np.float64:
            bad = np.flatnonzero(a.to_numpy().view(np.int64) != b.to_numpy().view(np.int64))
            if len(bad):
                i = int(bad[0])
                return f"{col} row {i}: {float(a.iloc[i]).hex()} != SAEBench's {float(b.iloc[i]).hex()}"
            continue
        for i, (u, v) in enumerate(zip(a.tolist(), b.tolist(), strict=True)):
            if isinstance(v, np.ndarray):
                same = (
                    isinstance(u, np.ndarray)
                    and u.dtype == v.dtype
                    and u.shape == v.shape
                    and u.tobytes() == v.tobytes()
                )
            else:
                same = type(u) is type(v) and u == v
            if not same:
                return f"{col} row {i}: {u!r} != SAEBench's {v!r}"
    return None


def _scoring_unsupported(ksp: Any, k_sparse_probes: Any) -> str | None:
    """Why the batched scoring does not take these k-sparse probes (then SAEBench's function runs), or None."""
    import torch

    if not isinstance(k_sparse_probes, dict) or not k_sparse_probes:
        return "no k-sparse probes"
    for k, probes in k_sparse_probes.items():
        if not isinstance(probes, dict):
            return f"k {k}: not a dict of probes"
        for letter, p in probes.items():
            if not isinstance(p, ksp.KSparseProbe) or type(p).forward is not ksp.KSparseProbe.forward:
                return f"k {k} letter {letter}: not SAEBench's KSparseProbe"
            ids, w, b = p.feature_ids, p.weight, p.bias
            if not all(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in (ids, w, b)):
                return f"k {k} letter {letter}: not CPU tensors"
            if ids.dim() != 1 or ids.dtype not in (torch.int64, torch.int32) or not 0 < len(ids) < 256:
                return f"k {k} letter {letter}: feature ids not 1-D integers (1..255 of them)"
            if w.dtype != torch.float32 or w.shape != ids.shape or b.dtype != torch.float32 or b.numel() != 1:
                return f"k {k} letter {letter}: weight / bias not float32 of the ids' length / one value"
            if not w.is_contiguous():
                return f"k {k} letter {letter}: weight not contiguous"
    return None


def batched_k_sparse_raw_scores(
    orig: Callable[..., Any],
    sae: Any,
    probe: Any,
    k_sparse_probes: dict[int, dict[int, Any]],
    eval_labels: list[tuple[str, int]],
    eval_activations: Any,
    eval_batch_size: int = 24,
    *,
    record: Callable[[dict[str, Any]], None] | None = None,
    original: bool = False,
    plain_acts: Callable[..., Any] | None = None,
    check_first: int = SCORING_CHECK_FIRST,
    check_spread: int = SCORING_CHECK_SPREAD,
) -> Any:
    """SAEBench's ``eval_probe_and_sae_k_sparse_raw_scores`` (``orig``, same arguments), per batch: the same
    DataFrame (columns, their order and dtypes, row order, every value's bits), from columns instead of one dict of
    26 x (1 + 3 k) values per word.

    What it computes, and why it is SAEBench's: the SAE's activations and the probe's scores batch by batch exactly
    as SAEBench does (``batchify_indices(len(eval_labels), eval_batch_size)``, ``eval_activations[a:b]
    .to(sae.device)``, ``k_sparse_probing._get_sae_acts(sae, batch).float().cpu()``, ``probe(batch).float().cpu()``:
    the same calls on the same batches, so the same bits, also where a GPU's results depend on the batch); of the
    activations only the columns some k-sparse probe reads are kept (copies). Then per letter and k, for all rows
    at once: the probe's columns (``sparse_sae_{L}_k_{k}_acts``: row views of one float32 array, SAEBench's
    ``sae_acts[feature_ids].numpy()`` values), their dot with the probe's weight plus its bias (float32 addition) and
    their sum, by :func:`batched_reduction` with the order of operations that reproduces torch's 1-D dot (a BLAS
    sdot) and sum on this machine (:func:`reduction_plan`: calibrated once per process against the 1-D ops; sdot's
    order depends on the BLAS and the processor), widened to float64 as ``.item()`` does; ``score_probe_{L}``:
    the probe's float32 scores widened likewise; ``token``, ``answer_letter``: ``LETTERS[answer]``. Column
    insertion order is SAEBench's dicts': token, answer_letter, then per letter score_probe, then per k
    score_sparse_sae, sum_sparse_sae, sparse_sae_..._acts.

    Checked at run time on this SAE: rows ``check_first`` of the first batch and ``check_spread`` rows spread over
    the set are run through ``orig`` itself on their kept activations and scores (an SAE and probe that replay
    them: SAEBench's own row code), and must give the same columns, dtypes and bits. On any difference (or an
    error in the batched path) the result is ``orig``'s on the whole set, and ``record`` says why:
    ``{"fast": bool, "rows", "checked_rows", "mismatch", "plans": {"dot" | "sum": {k: plan}}}`` (or ``reason`` /
    ``error``). ``original``: ``orig`` only. ``plain_acts``: SAEBench's ``_get_sae_acts``, put in place for the
    check's replay (so that a cache wrapping it does not count those calls)."""
    import sae_bench.evals.absorption.k_sparse_probing as ksp
    from sae_bench.evals.absorption.vocab import LETTERS

    def report(info: dict[str, Any]) -> None:
        if record is not None:
            record(info)

    def run_orig() -> Any:
        return orig(sae, probe, k_sparse_probes, eval_labels, eval_activations, eval_batch_size)

    n = len(eval_labels)
    why = "forced (SCORING_ENV or original=True)" if original else None
    why = why or ("no rows" if n == 0 else None) or _scoring_unsupported(ksp, k_sparse_probes)
    if why is None and (not isinstance(eval_batch_size, int) or eval_batch_size < 1):
        why = f"eval_batch_size {eval_batch_size!r}"
    if why is not None:
        report({"fast": False, "reason": why})
        return run_orig()
    info: dict[str, Any] = {"fast": False, "rows": n}
    try:
        call = _ScoringCall(
            ksp, LETTERS, sae, probe, k_sparse_probes, eval_labels, eval_activations, eval_batch_size, check_first,
            check_spread,
        )  # fmt: skip
        df = _checked_batched_scores(orig, call, plain_acts, info)
    except Exception as e:  # noqa: BLE001 - SAEBench's function instead, the record says why
        info["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        df = None
    info["fast"] = df is not None
    report(info)
    # on a difference or an error the batched frame is gone before SAEBench's rows are built (memory)
    return df if df is not None else run_orig()


class _ScoringCall(NamedTuple):
    """SAEBench's scoring arguments (and SAEBench's k-sparse module and letters) with the check's row counts."""

    ksp: Any
    letters: Any
    sae: Any
    probe: Any
    k_sparse_probes: dict[int, dict[int, Any]]
    eval_labels: list[tuple[str, int]]
    eval_activations: Any
    eval_batch_size: int
    check_first: int
    check_spread: int


def _checked_batched_scores(
    orig: Callable[..., Any], c: _ScoringCall, plain_acts: Callable[..., Any] | None, info: dict[str, Any]
) -> Any:
    """:func:`_batched_scores`' frame if the rows kept for the check, run through ``orig`` itself (SAEBench's row
    code, on an SAE and a probe that replay their activations and scores), give the same columns, dtypes and bits;
    else None. ``info`` gets the seconds, the rows checked and the first difference."""
    import torch

    t0 = time.time()
    df, (rows, acts, scores) = _batched_scores(c, info)
    info["batched_s"] = round(time.time() - t0, 3)
    t0 = time.time()
    kept = c.ksp._get_sae_acts
    if plain_acts is not None:
        c.ksp._get_sae_acts = plain_acts  # SAEBench's own, not a cache counting these calls
    try:
        idx = torch.arange(len(rows), dtype=torch.float64)[:, None]
        labels = [c.eval_labels[r] for r in rows]
        want = orig(_ReplaySae(acts), _replay_probe(scores), c.k_sparse_probes, labels, idx, c.eval_batch_size)
    finally:
        c.ksp._get_sae_acts = kept
    info["checked_rows"] = len(rows)
    info["mismatch"] = _first_difference(df.iloc[rows].reset_index(drop=True), want)
    info["check_s"] = round(time.time() - t0, 3)
    return df if info["mismatch"] is None else None


def _batched_scores(c: _ScoringCall, info: dict[str, Any]) -> tuple[Any, tuple[list[int], Any, Any]]:
    """The batched scoring's DataFrame (:func:`batched_k_sparse_raw_scores`) and the rows kept for its check:
    (row indices, their full activation rows, their probe score rows)."""
    import numpy as np
    import pandas as pd
    import torch

    ksp, letters, sae, probe, k_sparse_probes = c.ksp, c.letters, c.sae, c.probe, c.k_sparse_probes
    eval_labels, eval_activations, eval_batch_size = c.eval_labels, c.eval_activations, c.eval_batch_size
    n = len(eval_labels)
    check_rows = set(range(min(c.check_first, eval_batch_size, n)))
    check_rows |= {int(r) for r in np.linspace(0, n - 1, num=min(c.check_spread, n)).round()}
    rows = sorted(check_rows)
    ids_all = torch.cat([p.feature_ids.long() for probes in k_sparse_probes.values() for p in probes.values()])
    cols = torch.unique(ids_all)  # sorted
    kept_acts, kept_scores, sel, scores = {}, {}, [], []
    with torch.inference_mode():
        probe = probe.to(sae.device)
        for start, end in ksp.batchify_indices(n, eval_batch_size):
            batch = eval_activations[start:end].to(sae.device)
            sae_acts = ksp._get_sae_acts(sae, batch).float().cpu()
            probe_scores = probe(batch).float().cpu()
            if sae_acts.dim() != 2 or probe_scores.dim() != 2 or len(sae_acts) != len(probe_scores):
                raise ValueError(f"activations {tuple(sae_acts.shape)}, probe scores {tuple(probe_scores.shape)}")
            if start == 0 and (int(cols.min()) < 0 or int(cols.max()) >= sae_acts.shape[1]):
                raise ValueError(f"feature ids outside the SAE's {sae_acts.shape[1]} latents")
            for r in range(start, start + len(sae_acts)):
                if r in check_rows:
                    kept_acts[r] = sae_acts[r - start].clone()
                    kept_scores[r] = probe_scores[r - start].clone()
            sel.append(sae_acts[:, cols].numpy())
            scores.append(probe_scores.numpy())
    sel_np, scores_np = np.concatenate(sel), np.concatenate(scores)
    if len(sel_np) != n:
        raise ValueError(f"{len(sel_np)} activation rows for {n} words")
    cols_np = cols.numpy()
    data: dict[str, Any] = {"token": [t for t, _ in eval_labels], "answer_letter": [letters[a] for _, a in eval_labels]}
    plans: dict[str, dict[str, str | None]] = {"dot": {}, "sum": {}}
    for letter_i, letter in enumerate(letters[: scores_np.shape[1]]):
        data[f"score_probe_{letter}"] = scores_np[:, letter_i].astype(np.float64)
        for k, k_probes in k_sparse_probes.items():
            p = k_probes[letter_i]
            width = len(p.feature_ids)
            dot_plan, sum_plan = reduction_plan("dot", width), reduction_plan("sum", width)
            plans["dot"][str(width)], plans["sum"][str(width)] = dot_plan, sum_plan
            a = np.ascontiguousarray(sel_np[:, np.searchsorted(cols_np, p.feature_ids.long().numpy())])
            dot = batched_reduction("dot", dot_plan, a, p.weight)
            data[f"score_sparse_sae_{letter}_k_{k}"] = (dot + np.float32(p.bias.item())).astype(np.float64)
            data[f"sum_sparse_sae_{letter}_k_{k}"] = batched_reduction("sum", sum_plan, a).astype(np.float64)
            data[f"sparse_sae_{letter}_k_{k}_acts"] = np.fromiter(a, dtype=object, count=n)  # row views
    info["plans"] = plans
    df = pd.DataFrame(data)
    return df, (rows, torch.stack([kept_acts[r] for r in rows]), torch.stack([kept_scores[r] for r in rows]))


# ------------------------------------------------------------------------------------------------------------------
# SAEBench's absorption experiment (``FeatureAbsorptionCalculator.calculate_absorption``), host copies per batch

ABSORPTION_CHECK_WORDS = 32  # words of each SAE's first letter computed both ways before the rest runs per batch
#: sha256 of the SAEBench sources :func:`calculate_absorption_host_batches` reproduces (sae-bench 0.6.0): with any
#: other source SAEBench's own method runs (the record says why) until the copy is reviewed against it
REVIEWED_SAEBENCH_SOURCES = {
    "FeatureAbsorptionCalculator.calculate_absorption": (
        "3f0b2d424099a281c289639679a11df4cf2c16205d1d5e787fd01c01cfabab16"
    ),
    "_get_feature_scores": "a4b62b80b7538cb89ae23cff7ae59e0540c819d8c5a72e1c58d4bbb35a47b7d2",
}


#: sha256 of SAEBench's prompt-length check (sae-bench 0.6.0), which :func:`validate_prompts_on_host` reproduces
REVIEWED_VALIDATE_SOURCE = {
    "FeatureAbsorptionCalculator._validate_prompts_are_same_length": (
        "39e05f31a4e0c25fa335ea2f47e1040cd731a2a1395639ee1f55f1110f6bb714"
    ),
}


def unreviewed_saebench_source(sources: dict[str, str] | None = None) -> str | None:
    """The first of SAEBench's absorption sources named in ``sources`` (default ``REVIEWED_SAEBENCH_SOURCES``, the
    ones the host-batch copy follows) whose text is not the reviewed one, or None."""
    import hashlib
    import inspect

    import sae_bench.evals.absorption.feature_absorption_calculator as fac

    for name, digest in (REVIEWED_SAEBENCH_SOURCES if sources is None else sources).items():
        obj: Any = fac
        for part in name.split("."):
            obj = getattr(obj, part, None)
        try:
            text = inspect.getsource(obj)
        except (TypeError, OSError):
            return name
        if hashlib.sha256(text.encode()).hexdigest() != digest:
            return name
    return None


def validate_prompts_on_host(calc: Any, prompts: list) -> None:
    """SAEBench's ``FeatureAbsorptionCalculator._validate_prompts_are_same_length`` (``calc`` its ``self``) with
    each prompt's tokens left on the host: the same ``to_tokens`` call and lengths, without ``move_to_device``.
    SAEBench's check copies every prompt's tokens to the model's GPU, one small copy per word (tens of thousands per
    SAE), each queued behind the other workers' work on a shared GPU. Raises SAEBench's ValueError."""
    token_lens = {len(calc.model.to_tokens(p.base, move_to_device=False)[0]) for p in prompts}
    if len(token_lens) > 1:
        raise ValueError("All prompts must have the same token length! Variable-length prompts are not yet supported.")


def calculate_absorption_host_batches(
    calc: Any,
    sae: Any,
    words: list[str],
    probe_direction: Any,
    main_feature_ids: list[int],
    layer: int,
    show_progress: bool = True,
    *,
    parts: dict[str, float] | None = None,
) -> Any:
    """SAEBench's ``FeatureAbsorptionCalculator.calculate_absorption`` (``calc`` its ``self``) with each batch's
    SAE activations, their probe projections and the probe's projections copied to the host once per batch.

    SAEBench reads them word by word from the SAE's device: per word one row copy (``.cpu()``), one ``.item()``
    of the probe projection and one ``.item()`` per main and top-projection latent (``_get_feature_scores``), each a
    wait for the GPU; with several processes sharing one GPU every wait queues behind the others' work (on the
    device the experiment took 41.5 s for an SAE alone and 109-130 s with nine at once, 2026-12-06). Here the same
    tensors are computed by the same operations on the same devices (the forward, ``sae.encode``, the products with
    the cosines and the probe direction on the SAE's device), then copied whole; a copy changes no bits and every
    per-word step after it is SAEBench's own CPU arithmetic, so each ``WordAbsorptionResult`` is SAEBench's
    (checked per SAE at run time: :func:`checked_absorption_calculator`). With ``parts``, the seconds of the
    batches' forward and copies (``forward``) and of the per-word loop (``words``) are added to it."""
    import numpy as np
    import sae_bench.evals.absorption.feature_absorption_calculator as fac
    import torch

    with torch.inference_mode():
        if probe_direction.ndim != 1:
            raise ValueError("probe_direction must be 1D")
        probe_direction = probe_direction / probe_direction.norm()
        prompts = calc._build_prompts(words)
        calc._validate_prompts_are_same_length(prompts)
        results: list[Any] = []
        cos_sims = (
            torch.nn.functional.cosine_similarity(probe_direction.to(sae.device), sae.W_dec, dim=-1).float().cpu()
        )
        hook_point = f"blocks.{layer}.hook_resid_post"
        for batch_prompts in fac.batchify(prompts, batch_size=calc.batch_size):
            t = time.time()
            batch_acts = calc.model.run_with_cache([p.base for p in batch_prompts], names_filter=[hook_point])[1][
                hook_point
            ][:, calc.word_token_pos, :]
            batch_sae_acts = sae.encode(batch_acts)
            batch_sae_probe_projections = batch_sae_acts * cos_sims.to(batch_sae_acts.device)
            batch_probe_projections = batch_acts @ probe_direction.to(
                device=batch_sae_acts.device, dtype=batch_sae_acts.dtype
            )
            host_sae_acts = batch_sae_acts.cpu()
            host_sae_probe_projections = batch_sae_probe_projections.cpu()
            host_probe_projections = batch_probe_projections.cpu()
            t_words = time.time()
            for i, prompt in enumerate(fac.tqdm(batch_prompts, disable=not show_progress)):
                sae_acts = host_sae_acts[i]
                act_probe_proj = host_probe_projections[i].item()
                sae_act_probe_proj = host_sae_probe_projections[i]
                # from here on SAEBench's per-word code, unchanged (its tensors were on the host already)
                main_feats_probe_proj = torch.sum(sae_act_probe_proj[main_feature_ids]).cpu().item()
                potential_absorbers_mask = torch.ones(sae_act_probe_proj.size(0), dtype=torch.bool)
                potential_absorbers_mask[main_feature_ids] = False
                potential_absorbers_mask &= cos_sims >= calc.absorption_fraction_probe_cos_sim_threshold
                potential_absorbers_mask &= sae_act_probe_proj > 0
                potential_absorbers_probe_proj = sae_act_probe_proj[potential_absorbers_mask]
                top_potential_absorbers_probe_proj = potential_absorbers_probe_proj.topk(
                    k=min(calc.absorption_fraction_max_absorbing_latents, potential_absorbers_probe_proj.numel())
                ).values
                top_potential_absorbers_total_probe_proj = torch.sum(top_potential_absorbers_probe_proj).cpu().item()
                top_potential_absorbers_probe_proj_proportion = (
                    top_potential_absorbers_total_probe_proj / act_probe_proj
                )
                if (
                    main_feats_probe_proj >= act_probe_proj
                    or top_potential_absorbers_probe_proj_proportion < calc.probe_projection_proportion_threshold
                ):
                    absorption_fraction = 0.0
                elif main_feats_probe_proj <= 0.0:
                    absorption_fraction = 1.0
                else:
                    unaccounted_probe_proj = act_probe_proj - main_feats_probe_proj
                    absorption_probe_proj = min(top_potential_absorbers_total_probe_proj, unaccounted_probe_proj)
                    absorption_fraction = absorption_probe_proj / (absorption_probe_proj + main_feats_probe_proj)
                    absorption_fraction = np.clip(absorption_fraction, 0.0, 1.0)
                top_proj_feats = sae_act_probe_proj.topk(calc.topk_feats).indices.tolist()
                main_feature_scores = fac._get_feature_scores(
                    main_feature_ids, probe_cos_sims=cos_sims, sae_acts=sae_acts
                )
                top_projection_feature_scores = fac._get_feature_scores(
                    top_proj_feats, probe_cos_sims=cos_sims, sae_acts=sae_acts
                )
                is_full_absorption = calc._is_full_absorption(
                    probe_projection=act_probe_proj,
                    top_projection_feature_scores=top_projection_feature_scores,
                    main_feature_scores=main_feature_scores,
                )
                results.append(
                    fac.WordAbsorptionResult(
                        word=prompt.word,
                        prompt=prompt.base,
                        probe_projection=act_probe_proj,
                        main_feature_scores=main_feature_scores,
                        top_projection_feature_scores=top_projection_feature_scores,
                        absorption_fraction=absorption_fraction,
                        is_full_absorption=is_full_absorption,
                    )
                )
            if parts is not None:
                parts["forward"] = parts.get("forward", 0.0) + t_words - t
                parts["words"] = parts.get("words", 0.0) + time.time() - t_words
        return fac.AbsorptionResults(main_feature_ids=main_feature_ids, word_results=results)


def _absorption_difference(got: Any, want: Any) -> str | None:
    """The first field in which two ``AbsorptionResults`` differ (every value's type, floats by their bits: -0.0 is
    not 0.0; NaN equal to NaN), or None."""
    import math
    import struct

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, float) or isinstance(b, float):  # Python and NumPy floats: the type, then the bits
            if type(a) is not type(b):
                return False
            return (math.isnan(a) and math.isnan(b)) or struct.pack("<d", a) == struct.pack("<d", b)
        return type(a) is type(b) and a == b

    if list(got.main_feature_ids) != list(want.main_feature_ids):
        return "main_feature_ids"
    if len(got.word_results) != len(want.word_results):
        return f"{len(got.word_results)} word results for {len(want.word_results)}"
    for n, (g, w) in enumerate(zip(got.word_results, want.word_results, strict=True)):
        for field in ("word", "prompt", "probe_projection", "absorption_fraction", "is_full_absorption"):
            if not same(getattr(g, field), getattr(w, field)):
                return f"word {n} ({w.word!r}): {field} {getattr(g, field)!r} != {getattr(w, field)!r}"
        for field in ("main_feature_scores", "top_projection_feature_scores"):
            gs, ws = getattr(g, field), getattr(w, field)
            if len(gs) != len(ws):
                return f"word {n} ({w.word!r}): {len(gs)} {field} for {len(ws)}"
            for a, b in zip(gs, ws, strict=True):
                for f in ("feature_id", "activation", "probe_cos_sim"):
                    if not same(getattr(a, f), getattr(b, f)):
                        return f"word {n} ({w.word!r}): {field} {f} {getattr(a, f)!r} != {getattr(b, f)!r}"
    return None


def checked_absorption_calculator(
    orig: Callable[..., Any],
    record: Callable[[dict[str, Any]], None] | None = None,
    check_words: int = ABSORPTION_CHECK_WORDS,
    parts: Callable[[dict[str, float]], None] | None = None,
) -> Callable[..., Any]:
    """A ``calculate_absorption`` for one SAE's experiment (a fresh one per SAE; call its ``finish()`` after the
    experiment): :func:`calculate_absorption_host_batches`, after its first call with words has computed its first
    ``check_words`` words
    both ways (SAEBench's method ``orig`` and this one, the same words in the same batches) and found them equal
    field by field (:func:`_absorption_difference`); on a difference or an error, SAEBench's method for this call
    and the rest of the SAE. ``record(info)`` is
    called once, after the check (``host_batches``: used or not; ``checked_words``; ``mismatch``/``error``);
    ``parts(seconds)`` after every call with its ``forward`` / ``words`` seconds (the host-batch path only), and
    after the check with its ``check`` seconds (both runs on the first words)."""
    state: dict[str, Any] = {"checked": False, "fast": True}

    def calculate(self: Any, sae: Any, words: list[str], *a: Any, **k: Any) -> Any:
        if not state["fast"] or (not state["checked"] and not words):  # no words to check on yet: SAEBench's
            return orig(self, sae, words, *a, **k)
        if not state["checked"]:
            state["checked"] = True
            t_check = time.time()
            info: dict[str, Any] = {"host_batches": False, "checked_words": min(check_words, len(words))}
            # the prompts' in-context examples are drawn from the global generators: both check runs start from
            # the state this call found, and so does the run after them (the same draws as SAEBench's alone)
            rng = _rng_state()
            try:
                head = words[:check_words]
                got = calculate_absorption_host_batches(self, sae, head, *a, **k)
                _set_rng_state(rng)
                diff = _absorption_difference(got, orig(self, sae, head, *a, **k))
                if diff is not None:
                    info["mismatch"] = diff[:300]
            except Exception as e:  # noqa: BLE001 - SAEBench's method instead, the record says why
                info["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            _set_rng_state(rng)
            info["host_batches"] = state["fast"] = "mismatch" not in info and "error" not in info
            if record is not None:
                record(info)
            if parts is not None:
                parts({"check": time.time() - t_check})
            if not state["fast"]:
                return orig(self, sae, words, *a, **k)
        seconds: dict[str, float] = {}
        out = calculate_absorption_host_batches(self, sae, words, *a, **k, parts=seconds)
        if parts is not None:
            parts(seconds)
        return out

    def finish() -> None:
        """After the SAE's experiment: the record of one whose calls all had no words (none checked, none run)."""
        if not state["checked"] and record is not None:
            record({"host_batches": False, "checked_words": 0, "reason": "no words"})

    calculate.finish = finish  # type: ignore[attr-defined]
    return calculate


@contextlib.contextmanager
def offline_absorption(
    model: Any,
    model_name: str,
    work: Path,
    probe_batch: int = PROBE_BATCH,
    progress: Callable[[str, float], None] | None = None,
    vocab_sample: int | None = None,
    ksp_cache_nnz: int | None = None,
    cache_stats: Callable[[dict[str, int]], None] | None = None,
    fast_scoring: bool | None = None,
    scoring_stats: Callable[[dict[str, Any]], None] | None = None,
    host_batches: bool | None = None,
    absorption_stats: Callable[[dict[str, Any]], None] | None = None,
):
    """Within the block SAEBench's absorption eval uses ``model``, writes only under ``work`` and runs batched
    (module doc). ``progress(part, seconds)`` is called after each timed part of SAEBench's eval: the vocabulary
    listing, the probe's activations, its training and saving (the probe phase), the k-sparse probing (within it
    ``k_sparse_probing.training`` and ``.scoring``) and the absorption experiment (per SAE).
    ``vocab_sample``: smoke runs only, not SAEBench's eval: its vocabulary cut to a fixed sample of that many
    words (seeded, in token-id order), for the probe and the absorption prompts alike.
    ``ksp_cache_nnz``: the cap of the k-sparse probes' activation cache (:class:`CachedSaeActs`, emptied when each
    SAE's k-sparse probing ends); default ``KSP_CACHE_NNZ``, 0: no cache (SAEBench's ``_get_sae_acts``).
    ``cache_stats(counts)`` is called when an SAE's k-sparse probing ends, with the cache's counts for that SAE
    (:class:`CachedSaeActs` ``stats``: builds, hits, over_cap, plain), so that a record shows whether it served.
    ``fast_scoring``: the k-sparse scoring per batch (:func:`batched_k_sparse_raw_scores`, checked against
    SAEBench's row code on each SAE) or SAEBench's row by row (False); default: per batch unless the environment
    variable ``SCORING_ENV`` is ``saebench``. ``scoring_stats(info)`` is called after each SAE's scoring with
    :func:`batched_k_sparse_raw_scores`' record (batched or not, and why not).
    ``host_batches``: the absorption experiment's per-word steps read each batch's host copies
    (:func:`checked_absorption_calculator`, checked against SAEBench's method on each SAE) or SAEBench's method
    (False); default: host copies unless ``ABSORPTION_WORDS_ENV`` is ``saebench``. ``absorption_stats(info)`` is
    called after each SAE's check with its record; the experiment's ``forward`` and ``words`` seconds are timed
    parts (``absorption_experiment.forward``, ``.words``, ``.check``), as are the prompts' building (``.prompts``),
    SAEBench's prompt-length check (``.validate``: with the tokens on the host, :func:`validate_prompts_on_host`) and
    the experiment's reads of the k-sparse results and the probe (``.load``)."""
    import sae_bench.evals.absorption.common as common
    import sae_bench.evals.absorption.feature_absorption as fa
    import sae_bench.evals.absorption.feature_absorption_calculator as fac
    import sae_bench.evals.absorption.k_sparse_probing as ksp_mod
    import sae_bench.evals.absorption.main as am
    import sae_bench.evals.absorption.probing as probing
    import sae_bench.evals.absorption.vocab as vocab
    import torch
    from sae_bench.evals.absorption.feature_absorption import FEATURE_ABSORPTION_EXPERIMENT_NAME
    from sae_bench.evals.absorption.k_sparse_probing import SPARSE_PROBING_EXPERIMENT_NAME

    class _LoadedModel:
        @staticmethod
        def from_pretrained_no_processing(name: str, *a: Any, **k: Any) -> Any:
            if name != model_name:
                raise RuntimeError(f"absorption asked for model {name!r}; only {model_name!r} is loaded (offline)")
            return model

    res = work / "results"
    probes, ksp = res / "probes", res / SPARSE_PROBING_EXPERIMENT_NAME
    orig = (am.HookedTransformer, am.run_k_sparse_probing_experiment, am.run_feature_absortion_experiment)
    orig_gather, orig_loader = common.gen_and_save_df_acts_probing, probing.DataLoader
    Calc = fac.FeatureAbsorptionCalculator
    orig_validate = Calc._validate_prompts_are_same_length
    orig_build = Calc._build_prompts
    orig_fa_load = (fa.load_experiment_df, fa.load_probe)
    orig_calculate = Calc.calculate_absorption
    orig_get_tokens = vocab.get_tokens
    orig_train, orig_save = common.train_linear_probe_for_task, common.save_probe_and_data
    orig_acts = ksp_mod._get_sae_acts
    orig_ksp_train, orig_ksp_scores = ksp_mod.train_k_sparse_probes, ksp_mod.eval_probe_and_sae_k_sparse_raw_scores
    orig_l1_probe = ksp_mod.train_sparse_multi_probe
    orig_ksp_io = (ksp_mod.load_probe_data_split_or_train, ksp_mod.load_dfs_or_run, ksp_mod.build_metrics_df)
    cap = KSP_CACHE_NNZ if ksp_cache_nnz is None else ksp_cache_nnz
    acts_cache = CachedSaeActs(orig_acts, cap) if cap > 0 else None

    def get_tokens(tokenizer: Any, *a: Any, **k: Any) -> list[str]:
        words = orig_get_tokens(IdOrderedVocab(tokenizer), *a, **k)
        if vocab_sample is None or vocab_sample >= len(words):
            return words
        keep = sorted(random.Random(0).sample(range(len(words)), vocab_sample))  # its own generator
        return [words[i] for i in keep]

    def timed(part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*a: Any, **k: Any) -> Any:
            t = time.time()
            out = fn(*a, **k)
            if progress is not None:
                progress(part, time.time() - t)
            return out

        return run

    def gather(**kw: Any) -> Any:
        layer = _hook_layer(kw["hook_point"])
        if layer is not None:
            kw["model"] = _UpToLayer(kw["model"], layer)
        return orig_gather(**{**kw, "batch_size": probe_batch})

    hosted = not saebench_forced(ABSORPTION_WORDS_ENV) if host_batches is None else host_batches
    changed = unreviewed_saebench_source() if hosted else None
    use_host = hosted and changed is None

    def experiment_parts(seconds: dict[str, float]) -> None:
        if progress is not None:
            for name, sec in seconds.items():
                progress(f"absorption_experiment.{name}", sec)

    def absorption_experiment(**kw: Any) -> Any:
        kw["model"] = _UpToLayer(kw["model"], kw["layer"])
        checked = None
        if use_host:  # a fresh check per SAE
            checked = checked_absorption_calculator(orig_calculate, record=absorption_stats, parts=experiment_parts)
            Calc.calculate_absorption = checked  # type: ignore[method-assign]
        elif absorption_stats is not None:
            why = f"SAEBench's {changed} is not the reviewed source" if hosted else "forced"
            absorption_stats({"host_batches": False, "reason": why})
        try:
            out = orig[2](
                **kw,
                experiment_dir=res / FEATURE_ABSORPTION_EXPERIMENT_NAME,
                sparse_probing_experiment_dir=ksp,
                probes_dir=probes,
            )
        finally:
            Calc.calculate_absorption = orig_calculate  # type: ignore[method-assign]
        if checked is not None:
            checked.finish()  # type: ignore[attr-defined]
        return out

    # SAEBench's prompt-length check with the tokens left on the host, while its source is the reviewed one
    check_lengths = validate_prompts_on_host if unreviewed_saebench_source(REVIEWED_VALIDATE_SOURCE) is None else None

    def validate(self: Any, prompts: list) -> None:
        t = time.time()
        try:
            (check_lengths or orig_validate)(self, prompts)
        except ValueError:
            # left padding: position word_token_pos of every row is its own prompt's if the tokens after it agree
            tails = {
                tuple(self.model.to_tokens(p.base, move_to_device=False)[0, self.word_token_pos + 1 :].tolist())
                for p in prompts
            }
            if self.model.tokenizer.padding_side != "left" or len(tails) != 1 or self.word_token_pos >= -1:
                raise
        finally:
            if progress is not None:
                progress("absorption_experiment.validate", time.time() - t)

    tok = model.tokenizer
    side = tok.padding_side
    grad = torch.is_grad_enabled()
    rng = _rng_state()
    work.mkdir(parents=True, exist_ok=True)
    am.HookedTransformer = _LoadedModel  # type: ignore[assignment]
    ksp_call = functools.partial(orig[1], experiment_dir=ksp, probes_dir=probes)

    def ksp_run(*a: Any, **k: Any) -> Any:
        collecting = gc.isenabled()
        gc.disable()  # the scoring's ~28k rows of arrays: no collector passes over them (the same values)
        try:
            return ksp_call(*a, **k)
        finally:
            if collecting:
                gc.enable()
            if acts_cache is not None:
                acts_cache.clear()  # this SAE's activations
                if cache_stats is not None:
                    cache_stats(dict(acts_cache.stats))
                acts_cache.stats = dict.fromkeys(acts_cache.stats, 0)

    am.run_k_sparse_probing_experiment = timed("k_sparse_probing", ksp_run)
    # its two longest parts, within it (a part name with a dot is inside the part before the dot)
    ksp_mod.train_k_sparse_probes = timed("k_sparse_probing.training", orig_ksp_train)
    # within the training: the L1 probe over all latents (torch, on the SAE's device) that picks each letter's
    # latents; the rest is scikit-learn's 260 k-sparse fits on the host
    ksp_mod.train_sparse_multi_probe = timed("k_sparse_probing.training.l1_probe", orig_l1_probe)
    batched = not saebench_forced(SCORING_ENV) if fast_scoring is None else fast_scoring

    def scoring(*a: Any, **k: Any) -> Any:
        # SAEBench's function (orig_ksp_scores) checks the batched result on each SAE, or replaces it
        return batched_k_sparse_raw_scores(
            orig_ksp_scores, *a, record=scoring_stats, original=not batched, plain_acts=orig_acts, **k
        )

    ksp_mod.eval_probe_and_sae_k_sparse_raw_scores = timed("k_sparse_probing.scoring", scoring)

    def dfs_or_run(fn: Callable[[], Any], paths: Any, force: bool = False) -> Any:
        # SAEBench's raw k-sparse results are computed (fn) and then written as parquet files: the writing alone
        ran = [0.0]

        def run() -> Any:
            t = time.time()
            try:
                return fn()
            finally:
                ran[0] = time.time() - t

        t = time.time()
        out = orig_ksp_io[1](run, paths, force=force)
        if progress is not None:
            progress("k_sparse_probing.save", time.time() - t - ran[0])
        return out

    # the rest of the k-sparse step, so that its parts add up: the probe data's loads (train, test), the raw
    # results' parquet files, the metrics (scikit-learn's scores per letter and k)
    ksp_mod.load_probe_data_split_or_train = timed("k_sparse_probing.data", orig_ksp_io[0])
    ksp_mod.load_dfs_or_run = dfs_or_run
    ksp_mod.build_metrics_df = timed("k_sparse_probing.metrics", orig_ksp_io[2])
    am.run_feature_absortion_experiment = timed("absorption_experiment", absorption_experiment)
    common.gen_and_save_df_acts_probing = timed("activations", gather)
    common.train_linear_probe_for_task = timed("probe_training", orig_train)
    common.save_probe_and_data = timed("probe_save", orig_save)
    probing.DataLoader = _batch_loader(orig_loader)
    Calc._validate_prompts_are_same_length = validate  # type: ignore[method-assign]
    Calc._build_prompts = timed("absorption_experiment.prompts", orig_build)  # type: ignore[method-assign]
    # the experiment's reads: the k-sparse step's metrics and raw results (parquet), the first-letter probe
    fa.load_experiment_df = timed("absorption_experiment.load", orig_fa_load[0])
    fa.load_probe = timed("absorption_experiment.load", orig_fa_load[1])
    vocab.get_tokens = timed("vocabulary", get_tokens)
    if acts_cache is not None:
        ksp_mod._get_sae_acts = acts_cache
    tok.padding_side = "left"
    try:
        with contextlib.chdir(work):
            yield
    finally:
        am.HookedTransformer, am.run_k_sparse_probing_experiment, am.run_feature_absortion_experiment = orig
        common.gen_and_save_df_acts_probing, probing.DataLoader = orig_gather, orig_loader
        common.train_linear_probe_for_task, common.save_probe_and_data = orig_train, orig_save
        Calc._validate_prompts_are_same_length = orig_validate  # type: ignore[method-assign]
        Calc._build_prompts = orig_build  # type: ignore[method-assign]
        fa.load_experiment_df, fa.load_probe = orig_fa_load
        Calc.calculate_absorption = orig_calculate  # type: ignore[method-assign]
        vocab.get_tokens = orig_get_tokens
        ksp_mod._get_sae_acts = orig_acts
        ksp_mod.train_k_sparse_probes, ksp_mod.eval_probe_and_sae_k_sparse_raw_scores = orig_ksp_train, orig_ksp_scores
        ksp_mod.train_sparse_multi_probe = orig_l1_probe
        ksp_mod.load_probe_data_split_or_train, ksp_mod.load_dfs_or_run, ksp_mod.build_metrics_df = orig_ksp_io
        if acts_cache is not None:
            acts_cache.clear()
        tok.padding_side = side
        torch.set_grad_enabled(grad)
        _set_rng_state(rng)


def seed_everything(seed: int) -> None:
    """Seed the global generators SAEBench's absorption eval draws from (module doc: reproducibility)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # the CUDA generators too


def _rng_state() -> tuple:
    import numpy as np
    import torch

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    import numpy as np
    import torch

    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])
    if state[3] is not None:
        torch.cuda.set_rng_state_all(state[3])


def _probe_ready(p: Path) -> bool:
    return (p / "probe.pth").is_file() and (p / "data.npz").is_file()


def probe_folder(work: Path, model: Any, layer: int) -> Path:
    """Where SAEBench reads the first-letter probe of ``model`` at ``layer`` (``work/results/probes/...``)."""
    return work / "results" / "probes" / model.cfg.model_name / f"layer_{layer}"


CARRY_DIR = "absorption_probe"  # under the stage's OUT: <model>/layer_<L>/{probe.pth, manifest.json}
CARRY_FORMAT = "sae-rdp absorption probe carry 1"
CSV_BLOCK = 4096  # rows per block fingerprint of a carried csv (says where a recomputed csv first differs)
# SAEBench's train_and_save_probes defaults, which load_or_train_probe (and so run_eval) leaves as they are
PROBE_TRAINING = {"batch_size": 64, "num_epochs": 50, "lr": 1e-2, "num_prompts_per_token": 1}


class ProbeRefused(Exception):
    """A carried probe that does not match what this call recomputes (the message is the one-line reason)."""


def carry_folder(root: Path, model: Any, layer: int) -> Path:
    """Where a carried first-letter probe of ``model`` at ``layer`` lies under ``root`` (``OUT/absorption_probe``)."""
    return root / model.cfg.model_name / f"layer_{layer}"


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _vocab_fingerprint(words: list[str]) -> dict:
    """The alphabetic vocabulary SAEBench's probe draws from, in the order it gets it (token ids)."""
    return {"words": len(words), "sha256": _sha256("\n".join(words).encode())}


def _df_fingerprint(df: Any) -> dict:
    """sha256 of ``df`` as SAEBench writes it (``df.to_csv(path, index=True)``: the file's bytes), of each column and
    of each block of ``CSV_BLOCK`` rows (the last two say where two csvs differ, without carrying them)."""
    return {
        "sha256": _sha256(df.to_csv(index=True).encode()),
        "rows": len(df),
        "columns": {c: _sha256(df[c].to_csv(index=False, header=False).encode()) for c in df.columns},
        "blocks": [
            _sha256(df.iloc[i : i + CSV_BLOCK].to_csv(index=True, header=False).encode())
            for i in range(0, len(df), CSV_BLOCK)
        ],
    }


def _df_mismatch(name: str, got: dict, want: dict) -> str | None:
    """Why the recomputed csv ``name`` (fingerprint ``got``) is not the carried one (``want``); None if equal."""
    if got["sha256"] == want.get("sha256"):
        return None
    cols = sorted(c for c, h in got["columns"].items() if want.get("columns", {}).get(c) != h)
    blocks = want.get("blocks", [])
    first = next((i for i, h in enumerate(got["blocks"]) if i >= len(blocks) or blocks[i] != h), None)
    where = f", first in rows {first * CSV_BLOCK}-{(first + 1) * CSV_BLOCK - 1}" if first is not None else ""
    return (
        f"the recomputed {name} ({got['rows']} rows) is not the carried one ({want.get('rows')} rows): "
        f"column(s) {', '.join(cols) or 'none'} differ{where}"
    )


def _arrays_sha256(arrays: dict[str, Any]) -> dict[str, str]:
    """sha256 of each array's bytes (data.npz's arrays; np.savez itself stamps the zip with the time)."""
    import numpy as np

    return {k: _sha256(np.ascontiguousarray(v).tobytes()) for k, v in arrays.items()}


def probe_config(cfg: Any, layer: int, vocab_sample: int | None) -> dict:
    """What the first-letter probe depends on besides the model, the vocabulary and SAEBench's code."""
    return {
        "hook_point": f"blocks.{layer}.hook_resid_post",
        "prompt_template": cfg.prompt_template,
        "prompt_token_pos": cfg.prompt_token_pos,
        "random_seed": cfg.random_seed,
        **PROBE_TRAINING,
        "vocab_sample": vocab_sample,
    }


def _saebench_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("sae_bench")


def check_carried(folder: Path, model: Any, cfg: Any, layer: int, vocab_sample: int | None) -> dict:
    """The carried probe's manifest if what can be checked before recomputing anything matches (the files' sha256,
    SAEBench's version, the model, layer and probe config); else ProbeRefused with the reason."""
    try:
        man = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise ProbeRefused(f"{folder}/manifest.json unreadable ({type(e).__name__})") from None
    if not isinstance(man, dict) or man.get("format") != CARRY_FORMAT:
        raise ProbeRefused(f"{folder}/manifest.json: not a {CARRY_FORMAT!r} manifest")
    files = man.get("files")
    if not isinstance(files, dict) or "probe.pth" not in files:
        raise ProbeRefused(f"{folder}/manifest.json lists no probe.pth")
    for name, sha in files.items():
        f = folder / name
        if not f.is_file():
            raise ProbeRefused(f"{name} missing from {folder}")
        if sha256_file(f) != sha:
            raise ProbeRefused(f"{name}: sha256 differs from the manifest's")
    want = {
        "saebench_version": _saebench_version(),
        "model": model.cfg.model_name,
        "layer": layer,
        "probe_config": probe_config(cfg, layer, vocab_sample),
    }
    for k, v in want.items():
        if man.get(k) != v:
            raise ProbeRefused(f"{k} differs: carried {man.get(k)!r}, here {v!r}")
    return man


def _train_probe(
    model: Any,
    cfg: Any,
    layer: int,
    work: Path,
    device: str,
    carried: tuple[Path, dict] | None = None,
    part: Callable[[str, float], None] | None = None,
) -> dict:
    """SAEBench's ``train_and_save_probes`` with the arguments its ``load_or_train_probe`` passes, into a
    temporary folder moved into place when complete (call inside :func:`offline_absorption`, generators seeded).

    ``carried`` (folder, manifest of :func:`check_carried`): the same call, but where SAEBench would train the
    probe, the recomputed train / test dataframes are checked against the carried csvs' fingerprints and, when
    equal, the carried probe is returned instead (``probe_load``); SAEBench's ``save_probe_and_data`` then writes
    data.npz from the recomputed activations as after training, and probe.pth is the carried file's bytes. A
    vocabulary that differs raises ProbeRefused before any activation is computed; csvs that differ train the
    probe in the same pass (``probe_refused`` says why; the draws so far are those training makes).
    Returns ``probe_source`` ("trained" | "carried"), ``probe_refused`` if any, and the fingerprints of the
    vocabulary, the csvs and data.npz's arrays (a manifest's contents)."""
    import numpy as np
    import torch
    from sae_bench.evals.absorption import common

    got: dict[str, Any] = {}
    orig_alpha, orig_train = common.get_alpha_tokens, common.train_linear_probe_for_task

    def alpha(tokenizer: Any, *a: Any, **k: Any) -> list[str]:
        words = orig_alpha(tokenizer, *a, **k)
        got["vocabulary"] = _vocab_fingerprint(words)
        if carried is not None and got["vocabulary"] != carried[1].get("vocabulary"):
            raise ProbeRefused(
                f"the vocabulary differs: carried {carried[1].get('vocabulary')}, here {got['vocabulary']}"
            )
        return words

    def train_or_load(**kw: Any) -> Any:
        t = time.time()
        got["csvs"] = {"train_df.csv": _df_fingerprint(kw["train_df"]), "test_df.csv": _df_fingerprint(kw["test_df"])}
        y = {s: np.array(kw[f"{s}_df"]["answer_class"].values) for s in ("train", "test")}  # as SAEBench's
        got["data_sha256"] = _arrays_sha256(
            {"X_train": kw["train_activations"], "X_test": kw["test_activations"], **{f"y_{s}": y[s] for s in y}}
        )
        why = None
        if carried is not None:
            csvs = carried[1].get("csvs", {})
            whys = [_df_mismatch(n, fp, csvs.get(n, {})) for n, fp in got["csvs"].items()]
            why = next((w for w in whys if w), None)
            if why is None:
                dev = kw["device"]
                probe = torch.load(carried[0] / "probe.pth", map_location=dev, weights_only=False)
                data = {  # what train_linear_probe_for_task returns next to its probe
                    "X_train": torch.from_numpy(kw["train_activations"]).float().to(dev),
                    "X_test": torch.from_numpy(kw["test_activations"]).float().to(dev),
                    "y_train": torch.from_numpy(y["train"]).long().to(dev),
                    "y_test": torch.from_numpy(y["test"]).long().to(dev),
                }
                got["probe_source"] = "carried"
                if part is not None:
                    part("probe_load", time.time() - t)
                return probe, data
            got["probe_refused"] = why
        if part is not None:
            part("probe_fingerprint", time.time() - t)
        got["probe_source"] = "trained"
        return orig_train(**kw)

    tmp = work / "results" / f"{PROBE_TMP}{uuid.uuid4().hex[:8]}"
    common.get_alpha_tokens, common.train_linear_probe_for_task = alpha, train_or_load
    try:
        common.train_and_save_probes(
            model,
            layers=[layer],
            base_template=cfg.prompt_template,
            pos_idx=cfg.prompt_token_pos,
            probes_dir=tmp,
            device=device,
        )
    except ProbeRefused:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        common.get_alpha_tokens, common.train_linear_probe_for_task = orig_alpha, orig_train
    built = tmp / model.cfg.model_name / f"layer_{layer}"
    if got["probe_source"] == "carried":
        shutil.copyfile(carried[0] / "probe.pth", built / "probe.pth")  # the carried bytes, not a re-save
    dest = probe_folder(work, model, layer)
    if dest.exists():  # incomplete (the check in _work found a file missing)
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(built, dest)
    shutil.rmtree(tmp)
    return got


def write_carry(
    root: Path, model: Any, cfg: Any, layer: int, work: Path, got: dict, stage: str | None, vocab_sample: int | None
) -> Path:
    """The trained probe in its carried form (``root/<model>/layer_<L>/``: probe.pth and manifest.json with the
    sha256 of probe.pth, SAEBench's version, the probe config, the vocabulary's and the csvs' fingerprints, the
    sha256 of data.npz's arrays and the stage whose bundle carries it), written to a temporary folder first."""
    dest = carry_folder(root, model, layer)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    shutil.copyfile(probe_folder(work, model, layer) / "probe.pth", tmp / "probe.pth")
    man = {
        "format": CARRY_FORMAT,
        "stage": stage,
        "saebench_version": _saebench_version(),
        "model": model.cfg.model_name,
        "layer": layer,
        "probe_config": probe_config(cfg, layer, vocab_sample),
        "vocabulary": got["vocabulary"],
        "files": {"probe.pth": sha256_file(tmp / "probe.pth")},
        "csvs": got["csvs"],
        "data_sha256": got["data_sha256"],
    }
    (tmp / "manifest.json").write_text(json.dumps(man, indent=1) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def make_probe(
    model: Any,
    cfg: Any,
    layer: int,
    work: Path,
    device: str,
    carry: Path | None,
    stage: str | None,
    vocab_sample: int | None,
    part: Callable[[str, float], None] | None = None,
) -> dict:
    """The first-letter probe into place: from the carried folder under ``carry`` if there is one that passes the
    checks (:func:`check_carried`, :func:`_train_probe`), else trained (and then written under ``carry`` in its
    carried form). Returns the record's ``probe_source``, ``probe_refused`` (one line, when a carried probe was
    refused), ``activations_match`` (carried: whether the recomputed data.npz arrays are the carried run's, bit
    for bit; not a condition) and ``probe_carry`` (the folder written)."""
    rec: dict[str, Any] = {}
    got = None
    folder = carry_folder(carry, model, layer) if carry is not None else None
    if folder is not None and (folder / "manifest.json").is_file():
        t = time.time()
        try:
            man = check_carried(folder, model, cfg, layer, vocab_sample)
            if part is not None:
                part("probe_check", time.time() - t)
            seed_everything(cfg.random_seed)
            got = _train_probe(model, cfg, layer, work, device, carried=(folder, man), part=part)
        except ProbeRefused as e:
            rec["probe_refused"] = str(e).splitlines()[0]
        else:
            if got["probe_source"] == "carried":
                return {"probe_source": "carried", "activations_match": got["data_sha256"] == man.get("data_sha256")}
            rec["probe_refused"] = got["probe_refused"]  # the csvs differed: trained in the same pass
    if got is None:
        seed_everything(cfg.random_seed)
        got = _train_probe(model, cfg, layer, work, device, part=part)
    rec["probe_source"] = "trained"
    if carry is not None:
        t = time.time()
        rec["probe_carry"] = str(write_carry(carry, model, cfg, layer, work, got, stage, vocab_sample))
        if part is not None:
            part("probe_carry", time.time() - t)
    return rec


def _work(
    model: Any,
    model_name: str,
    jobs: list[tuple[str, str, Callable[[], Any]] | None] | Any,
    work: Path,
    cfg_kw: dict,
    device: str,
    probe_batch: int,
    deadline: float,
    send: Callable[[tuple], None],
    trains_probe: bool = True,
    vocab_sample: int | None = None,
    carry: Path | None = None,
    stage: str | None = None,
) -> None:
    """The eval SAE by SAE (``jobs``: a list, or a queue shared by the workers, of (name, release, loader), None
    ends it), the probe first if missing (``trains_probe``: :func:`make_probe`, from ``carry`` if it holds one
    that passes the checks; else wait until another worker has moved it into place); each step reported through
    ``send`` (events handled by :func:`run_absorption`); run it inside :func:`_thread_limits`."""
    try:
        from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
        from sae_bench.evals.absorption.main import run_eval
        from saebench_fold import fold_for_saebench

        cfg = AbsorptionEvalConfig(**cfg_kw)
        raw = work / "saebench_out"
        send(("ready",))

        def part(name: str, s: float) -> None:
            send(("part", name, s))

        def cache(counts: dict[str, int]) -> None:
            send(("ksp_cache", counts))

        def scoring(info: dict[str, Any]) -> None:
            send(("ksp_scoring", info))

        def words(info: dict[str, Any]) -> None:
            send(("absorption_words", info))

        with offline_absorption(
            model, model_name, work, probe_batch, part, vocab_sample, cache_stats=cache, scoring_stats=scoring,
            absorption_stats=words,
        ):  # fmt: skip
            raw.mkdir(parents=True, exist_ok=True)
            sae_s: list[float] = []
            name = None  # the SAE in hand, for a memory stop's report
            while True:
                job = (jobs.pop(0) if jobs else None) if isinstance(jobs, list) else jobs.get()
                if job is None or (sae_s and time.time() + 1.3 * max(sae_s) > deadline):
                    break
                name, release, load = job
                send(("sae_load", name))
                t = time.time()
                sae = load()
                fold = fold_for_saebench(sae)  # as SAEBench's loader folds an SAE it loads by name
                p = probe_folder(work, model, sae.cfg.hook_layer)
                if not _probe_ready(p):
                    if trains_probe:
                        send(("probe_start",))
                        t_probe = time.time()
                        info = make_probe(
                            model, cfg, sae.cfg.hook_layer, work, device, carry, stage, vocab_sample, part
                        )
                        send(("probe_done", time.time() - t_probe, info))
                    else:
                        send(("probe_wait",))
                        while not _probe_ready(p):  # the parent ends this process at the deadline
                            time.sleep(0.5)
                    t = time.time()
                # from here on the SAE's eval (the probe is in place): the only phase the memory guard may stop
                send(("sae_start", name))
                out = raw / f"{release}_custom_sae_eval_results.json"
                out.unlink(missing_ok=True)
                seed_everything(cfg.random_seed)
                with _stop_armed():
                    run_eval(cfg, [(release, sae)], device, str(raw), force_rerun=True)
                if not out.is_file():
                    send(("not_evaluable", name))
                    break
                sae_s.append(time.time() - t)
                send(("sae_done", name, str(out), sae_s[-1], fold))
                name = None
                _report_missed_stop(send)
    except MemoryStop:  # the parent's memory guard (workers.MemoryGuard): this SAE is left for a later call
        send(("memory_stopped", name))
    except Exception:  # noqa: BLE001 - reported to the parent, which records it
        send(("error", traceback.format_exc()))
    _report_missed_stop(send)
    send(("end",))


class MemoryStop(BaseException):
    """Raised in a worker's main thread by :data:`STOP_SIGNAL` (the memory guard's stop): the SAE's eval unwinds,
    freeing its memory, and the worker ends cleanly. Not an ``Exception``, so no ``except Exception`` in SAEBench or
    scikit-learn swallows it. Killing the worker instead could leave the shared event queue's lock held (its
    feeder thread mid-write) and the other workers' events stuck behind it."""


#: the signal that stops a worker for host memory (Linux; elsewhere the worker is terminated)
STOP_SIGNAL = getattr(signal, "SIGUSR1", None)


class _StopState:
    """The stop signal raises MemoryStop only while an SAE's eval runs (``armed``, set by :func:`_stop_armed`);
    one that lands outside it (the SAE the guard aimed at finished before the signal arrived, or the worker is
    loading the next) is noted (``missed``), reported to the parent and otherwise ignored, so that it cannot end
    a worker outside its try block."""

    armed = False
    missed = False


def _raise_memory_stop(signum: int, frame: Any) -> None:
    if _StopState.armed:
        raise MemoryStop()
    _StopState.missed = True


@contextlib.contextmanager
def _stop_armed() -> Iterator[None]:
    """The memory guard's signal raises MemoryStop inside this block only (an SAE's eval)."""
    _StopState.armed = True
    try:
        yield
    finally:
        _StopState.armed = False


def _report_missed_stop(send: Callable[[tuple], None]) -> None:
    """Tell the parent once that a stop signal landed outside an SAE's eval (it then stops waiting for this
    worker to end)."""
    if _StopState.missed:
        _StopState.missed = False
        send(("memory_stop_missed",))


def _child(
    model: Any,
    model_name: str,
    work: Path,
    cfg_kw: dict,
    device: str,
    probe_batch: int,
    deadline: float,
    jobs: Any,
    events: Any,
    index: int,
    vocab_sample: int | None,
    probe_kw: dict | None = None,
) -> None:
    """A spawned worker: ``_work`` on the shared job queue, its events tagged with the worker's index (the queue's
    feeder thread flushes them before the process exits); worker 0 trains the probe if it is missing."""

    die_with_parent()
    if STOP_SIGNAL is not None:
        signal.signal(STOP_SIGNAL, _raise_memory_stop)

    def send(ev: tuple) -> None:
        events.put((index, ev))

    with _thread_limits(WORKER_THREADS):
        args = (model, model_name, jobs, work, cfg_kw, device, probe_batch, deadline, send)
        _work(*args, trains_probe=index == 0, vocab_sample=vocab_sample, **(probe_kw or {}))


#: Host memory of SAEBench's k-sparse scoring per test word at its peak (eval_probe_and_sae_k_sparse_raw_scores
#: builds one row of 26 x (1 + 3 max_k) Python values and arrays per word, then the DataFrame): ~300 KiB at
#: max_k 10, measured on the CPU (diagnostics/absorption_memory.json); taken as proportional to max_k.
EVAL_ROW_BYTES_K10 = 300 << 10
#: The same for :func:`batched_k_sparse_raw_scores` (the stage's default scoring: columns instead of one dict of
#: values per word, its run-time check on ~512 rows with SAEBench's function included): ~60 KiB per word at max_k 10
#: with 28,000 words, measured on the CPU (diagnostics/absorption_memory_batched.json). With Gemma-3's ~28k test words
#: and the base below that is ~4.6 GiB per worker; the device measured 4.5-4.9 GiB peak RSS per worker (H100,
#: 2026-12-06, nine workers, each SAE scored batched).
EVAL_ROW_BYTES_K10_BATCHED = 60 << 10
#: A worker's own process (torch with its CUDA context, SAEBench, the probe's train / test activations): assumed,
#: not measured on the device.
WORKER_BASE_BYTES = 3 << 30
#: The share of the machine's memory the workers' estimated peaks may take together (the rest: the stage's own
#: process, the system, the base's error; beyond it the memory guard stops a worker: workers.MemoryGuard).
WORKER_MEMORY_SHARE = 0.8
TEST_FRACTION = 0.2  # SAEBench's probe split (probing.py: train_test_fraction 0.8): the k-sparse scoring's words


def worker_peak_bytes(eval_rows: int, max_k: int = 10, scoring: str = "saebench") -> int:
    """A worker's estimated peak host memory: its process plus the k-sparse scoring of ``eval_rows`` words,
    ``scoring`` "saebench" (SAEBench's row-by-row function) or "batched" (:func:`batched_k_sparse_raw_scores`)."""
    per_row = {"saebench": EVAL_ROW_BYTES_K10, "batched": EVAL_ROW_BYTES_K10_BATCHED}[scoring]
    return WORKER_BASE_BYTES + int(eval_rows * per_row * max_k / 10)


def stage_scoring() -> str:
    """The k-sparse scoring this process's workers run: "saebench" where ``SCORING_ENV`` forces it, else
    "batched" (which falls back to SAEBench's function for an SAE whose run-time check fails: that SAE then needs
    SAEBench's memory, and the memory guard stops a worker rather than let the machine run out)."""
    return "saebench" if saebench_forced(SCORING_ENV) else "batched"


def default_workers(
    eval_rows: int | None = None, max_k: int = 10, host_bytes: int | None = None, scoring: str = "saebench"
) -> int:
    """SAEs evaluated in parallel by default: as the sparse-probing SAE workers, min(14, CPUs - 2) (the per-SAE
    work is mostly single-threaded Python and scikit-learn; the device has 16 CPUs), and, given the number of
    test words, no more than fit in ``WORKER_MEMORY_SHARE`` of ``host_bytes`` (default: this machine's memory) at
    :func:`worker_peak_bytes` each (Gemma-3's ~28k test words: ~11 GiB each with SAEBench's scoring, so 9 on
    128 GiB rather than 14, whose peaks together would pass the machine's memory; ~4.6 GiB with the batched
    scoring: 14); at least one."""
    n = max(1, min(14, (os.cpu_count() or 1) - 2))
    if eval_rows is not None:
        if host_bytes is None:
            from sae_rdp_plugin.devices import memory_bytes

            host_bytes = memory_bytes("cpu")
        if host_bytes is not None:
            n = min(n, int(WORKER_MEMORY_SHARE * host_bytes // worker_peak_bytes(eval_rows, max_k, scoring)))
    return max(1, n)


def eval_rows_estimate(model: Any, vocab_sample: int | None = None) -> int:
    """The number of test words SAEBench's k-sparse scoring will run per SAE: ``TEST_FRACTION`` of the model's
    alphabetic vocabulary (SAEBench's ``get_alpha_tokens``), or of the smoke runs' sample."""
    from sae_bench.evals.absorption.vocab import get_alpha_tokens

    words = len(get_alpha_tokens(model.tokenizer))
    if vocab_sample is not None:
        words = min(words, vocab_sample)
    return int(round(TEST_FRACTION * words))


def eval_config(model_name: str, config: dict[str, Any] | None = None) -> Any:
    """SAEBench's ``AbsorptionEvalConfig`` for ``model_name``: ``config``'s fields over ``BATCH_DEFAULTS``."""
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig

    return AbsorptionEvalConfig(model_name=model_name, **{**BATCH_DEFAULTS, **(config or {})})


def _clear_cut_probes(work: Path) -> None:
    """Remove the temporary probe folders a cut probe phase left under ``work`` (never a complete probe)."""
    for d in (work / "results").glob(f"{PROBE_TMP}*"):
        shutil.rmtree(d)


#: CPU threads of every absorption worker and of the in-process mode (torch's, and the BLAS / OpenMP pools
#: scikit-learn uses), whatever the number of workers and the device.
#: Speed: with the SAEs on a GPU a worker's CPU work is Python and scikit-learn's 26 x ``max_k_value`` small logistic
#: regressions per SAE (tens of thousands of rows, at most ``max_k_value`` columns), which more threads slow down: on
#: the device (H100 host, 16 CPUs, 2026-12-06) a lone worker with every thread trained its k-sparse probes in
#: 181.8 s, while nine workers sharing the CPUs at one thread each took 71-112 s each. Reproducibility:
#: scikit-learn's fitted coefficients change in their last bits with the BLAS thread count, and with them the raw
#: k-sparse scores SAEBench saves, so a count that followed the number of workers (as it did: the CPUs shared out)
#: made an SAE's files depend on how many SAEs its call had. One thread on the CPU too (smoke runs), where the SAEs'
#: encodings then run single-threaded.
WORKER_THREADS = 1


@contextlib.contextmanager
def _thread_limits(threads: int) -> Iterator[None]:
    """torch's thread count and scikit-learn's BLAS / OpenMP pools at ``threads`` inside the block (a worker's
    whole life, or the in-process mode's SAEs), torch's count restored after."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(before)


def run_absorption(
    model: Any,
    model_name: str,
    saes: list[ProbeSAE],
    work: Path,
    deadline: float,
    device: str,
    config: dict[str, Any] | None = None,
    max_saes: int | None = None,
    log: Callable[[str], None] = print,
    probe_batch: int = PROBE_BATCH,
    inline: bool = False,
    workers: int | None = 1,
    vocab_sample: int | None = None,
    on_result: Callable[[], None] | None = None,
    carry: Path | None = None,
    stage: str | None = None,
    guard: MemoryGuard | None = None,
) -> dict:
    """SAE by SAE until ``deadline`` (time.time()) or ``max_saes`` new JSONs; an existing destination is skipped.
    ``config``: fields of SAEBench's ``AbsorptionEvalConfig`` other than ``model_name`` (default: its defaults,
    with ``BATCH_DEFAULTS``). The work runs in ``workers`` spawned children taking SAEs from one queue, terminated
    at ``deadline`` (``inline``: in this process, the deadline checked only between SAEs). Record: SAEs evaluated
    / existing / left, ``saebench_fold`` (per SAE evaluated: its decoder norms folded before SAEBench's
    ``run_eval`` as SAEBench's loader folds an SAE loaded by name, or why not: :mod:`saebench_fold`),
    ``vocab_sample`` (smoke runs: :func:`offline_absorption`), seconds of the probe phase (``probe_s``,
    ``probe_parts_s``) and per SAE (``sae_s``, ``sae_parts_s``: SAEBench's timed parts), ``cut``
    (the phase running longest at the deadline, and every SAE cut), ``not_evaluable`` or ``error``.
    ``workers`` None: :func:`default_workers` for the model's test words (:func:`eval_rows_estimate`; the record's
    ``workers_memory`` gives the estimate and the cap it set).
    ``on_result()`` is called after each SAE's JSON is written (the stage's progress export). If no worker starts
    (the model cannot be passed to them), the SAEs are evaluated in this process instead (``mode`` and
    ``workers_failed`` in the record say so).
    ``carry`` (``OUT/absorption_probe``): a carried probe there is used when it passes the checks (:func:`make_probe`),
    a probe trained here is written there in its carried form (its manifest names ``stage``, whose bundle carries
    it); the record then has ``probe_source`` ("trained" | "carried"), ``probe_refused`` (why a carried probe was
    not used), ``activations_match`` and ``probe_carry``; ``probe_parts_s`` adds ``probe_check``, ``probe_load``
    (carried) or ``probe_fingerprint``, ``probe_carry`` (trained).
    ``guard``: the workers' host-memory guard (default :meth:`workers.MemoryGuard.for_host`): near the machine's
    memory the worker holding the most memory in an SAE is stopped and its SAE left for a later call; the record's
    ``host_memory`` says what it saw (peak used memory, each worker's peak resident memory, every stop)."""
    from sae_bench.evals.absorption.eval_output import AbsorptionEvalOutput
    from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_file

    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    work = work.resolve()  # the eval runs inside it (chdir): a relative path would point elsewhere there
    cfg = eval_config(model_name, config)
    existing = [s.name for s in saes if s.dest.is_file()]
    todo = [s for s in saes if not s.dest.is_file()]
    rec: dict[str, Any] = {"eval": f"SAEBench {EVAL_TYPE}", "existing": existing, "evaluated": [], "sae_s": {}}
    rec["saebench_fold"] = {}  # per SAE evaluated: saebench_fold's record (decoder norms folded or why not)
    rec.update(probe_batch=probe_batch, mode="inline" if inline else "child")
    if vocab_sample is not None:
        rec["vocab_sample"] = vocab_sample
    by_name = {s.name: s for s in todo}
    _clear_cut_probes(work)  # a probe phase cut by an earlier call (or worker)
    t0 = time.time()
    jobs = [(s.name, s.dest.stem, s.load) for s in todo[:max_saes]]  # release unique per SAE (SAEBench's cache)
    if workers is None:
        if inline or not jobs:
            workers = 1
        else:
            rows, (host, source) = eval_rows_estimate(model, vocab_sample), host_limit()
            scoring = stage_scoring()
            workers = default_workers(rows, cfg.max_k_value, host, scoring)
            rec["workers_memory"] = {
                "eval_rows_estimate": rows,
                "scoring": scoring,
                "worker_peak_bytes_estimate": worker_peak_bytes(rows, cfg.max_k_value, scoring),
                "host_bytes": host,
                "host_bytes_source": source,
                "workers": workers,
                "without_the_memory_cap": default_workers(),
            }
    n = 1 if inline else max(1, min(workers, len(jobs)))
    if not inline:
        rec["workers"] = n
    states = [{"phase": "starting", "since": t0, "sae": None} for _ in range(n)]

    def handle(i: int, ev: tuple) -> None:
        kind, now, state = ev[0], time.time(), states[i]
        if kind == "ready" and rec["mode"] == "child":
            rec.setdefault("child_start_s", round(now - t0, 2))  # spawn, imports, the model passed over
            state.update(phase="ready", since=now)
        elif kind == "probe_start":
            state.update(phase="probe", since=now)
            log("absorption: training the first-letter probe (SAEBench's probe phase)")
        elif kind == "probe_wait":
            state.update(phase="probe_wait", since=now)
        elif kind == "part":  # a timed part of SAEBench's eval, in the probe phase or an SAE's
            if state["phase"] == "probe":
                parts = rec.setdefault("probe_parts_s", {})
            elif state["phase"] == "sae" and state["sae"] is not None:
                parts = rec.setdefault("sae_parts_s", {}).setdefault(state["sae"], {})
            else:
                return
            parts[ev[1]] = round(parts.get(ev[1], 0.0) + ev[2], 2)
        elif kind == "ksp_cache" and state["phase"] == "sae" and state["sae"] is not None:
            # the k-sparse probes' activation cache per SAE: over_cap > 0 means SAEBench's re-encoding ran
            rec.setdefault("ksp_cache", {})[state["sae"]] = ev[1]
        elif kind == "ksp_scoring" and state["phase"] == "sae" and state["sae"] is not None:
            # the k-sparse scoring per SAE: batched (checked against SAEBench's row code) or SAEBench's, and why
            rec.setdefault("ksp_scoring", {})[state["sae"]] = ev[1]
        elif kind == "absorption_words" and state["phase"] == "sae" and state["sae"] is not None:
            # the absorption experiment per SAE: host copies per batch (checked against SAEBench's method) or not
            rec.setdefault("absorption_words", {})[state["sae"]] = ev[1]
        elif kind == "probe_done":
            rec["probe_s"] = round(ev[1], 2)
            rec.update(ev[2])
            why = f"; the carried one refused: {ev[2]['probe_refused']}" if "probe_refused" in ev[2] else ""
            log(f"absorption: probe {ev[2]['probe_source']} ({ev[1]:.0f} s){why}")
        elif kind == "memory_stopped":  # the worker unwound its SAE after the guard's signal; its "end" follows
            if ev[1] is not None:
                rec.setdefault("memory_stopped", []).append(ev[1])
            state.update(phase="stopped (host memory)", since=now, sae=None)
        elif kind == "memory_stop_missed":  # the guard's signal came after the SAE it aimed at: the worker goes on
            rec.setdefault("memory_stop_missed", []).append(i)
        elif kind == "sae_load":  # loading the SAE, then the probe if it is missing
            state.update(phase="loading", since=now, sae=ev[1])
        elif kind == "sae_start":
            state.update(phase="sae", since=now, sae=ev[1])
        elif kind == "not_evaluable":
            # run_eval stops without output: < min_feats_for_eval letters with probe F1 > min_GT_probe_f1
            # (a property of the model-layer, the same for every SAE)
            if "not_evaluable" not in rec:
                rec["not_evaluable"] = (
                    f"fewer than {cfg.min_feats_for_eval} first letters with a probe F1 > {cfg.min_GT_probe_f1}"
                )
                log(f"absorption: {rec['not_evaluable']} ({model_name}); no SAE evaluated")
            state.update(phase="done", since=now, sae=None)
        elif kind == "error":
            rec["error"] = ev[1].strip().splitlines()[-1]
            log(f"absorption failed in phase {state['phase']}:\n{ev[1]}")
        elif kind == "sae_done":
            s = by_name[ev[1]]
            obj = s.finalize(json.loads(Path(ev[2]).read_text()))
            s.dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = s.dest.with_name(f".{s.dest.name}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_text(json.dumps(obj, indent=1) + "\n")
            try:
                validate_eval_output_format_file(str(tmp), AbsorptionEvalOutput)
            except Exception:
                tmp.unlink()
                raise
            os.replace(tmp, s.dest)
            rec["sae_s"][s.name] = round(ev[3], 2)
            rec["evaluated"].append(s.name)
            rec["saebench_fold"][s.name] = ev[4]
            if on_result is not None:
                on_result()
            state.update(phase="between SAEs", since=now, sae=None)
            m = obj["eval_result_metrics"]["mean"]
            log(
                f"absorption {s.name}: fraction {m['mean_absorption_fraction_score']:.3f}, full "
                f"{m['mean_full_absorption_score']:.3f}, split features {m['mean_num_split_features']:.2f} "
                f"({ev[3]:.0f} s)"
            )

    cfg_kw = dataclasses.asdict(cfg)
    probe_kw = {"carry": None if carry is None else carry.resolve(), "stage": stage}
    if jobs:
        rec["threads_per_worker"] = WORKER_THREADS

    def in_process() -> None:  # every SAE in this process, with a worker's thread limits
        send0 = functools.partial(handle, 0)
        args = (model, model_name, list(jobs), work, cfg_kw, device, probe_batch, deadline, send0)
        with _thread_limits(WORKER_THREADS):
            _work(*args, trains_probe=True, vocab_sample=vocab_sample, **probe_kw)

    if jobs and inline:
        in_process()
    elif jobs:
        common = (model, model_name, work, cfg_kw, device, probe_batch, deadline)
        try:
            guard = guard or MemoryGuard.for_host()
            _supervise(common, jobs, n, vocab_sample, deadline, handle, states, rec, probe_kw, guard)
            rec["host_memory"] = guard.record()
        except Exception as e:  # noqa: BLE001 - starting the workers failed here (e.g. the model not picklable)
            rec["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
        if "error" in rec and "child_start_s" not in rec and time.time() < deadline:
            # no worker got as far as its first event: the model did not reach them (passing it to spawned
            # processes, by CUDA IPC on a GPU, is the one step the in-process mode does not take), so the SAEs
            # run in this process instead of the call ending with nothing
            rec["workers_failed"] = rec.pop("error")
            rec["mode"] = "inline (the workers failed to start)"
            log(f"absorption: the workers failed to start ({rec['workers_failed']}); evaluating in this process")
            _clear_cut_probes(work)  # a probe phase cut by an earlier call (or worker)
            in_process()
    rec["config"] = cfg_kw
    rec["left"] = [s.name for s in todo if s.name not in rec["evaluated"]]
    rec["complete"] = not rec["left"] and "error" not in rec
    return rec


def probe_only(
    model: Any,
    model_name: str,
    layer: int,
    work: Path,
    device: str,
    config: dict[str, Any] | None = None,
    probe_batch: int = PROBE_BATCH,
    vocab_sample: int | None = None,
    carry: Path | None = None,
    stage: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """The first-letter probe alone (``run_stage.py --absorption-probe-only``), in this process: made as the first
    SAE's worker makes it (:func:`make_probe` under :func:`offline_absorption`: the same seeds, batching and
    carried-probe checks), into ``work``, so that a later call's SAEs find it in place and skip the probe phase; no
    SAE is needed or evaluated. Record: ``probe_only``, ``probe_s``, ``probe_parts_s`` and :func:`make_probe`'s
    fields, or ``probe_present`` (already in place: nothing done); ``evaluated`` / ``existing`` / ``left`` empty
    and ``complete`` false (no SAE's JSON)."""
    work = work.resolve()
    cfg = eval_config(model_name, config)
    rec: dict[str, Any] = {"eval": f"SAEBench {EVAL_TYPE}", "probe_only": True, "probe_batch": probe_batch}
    rec.update(evaluated=[], existing=[], left=[], complete=False, config=dataclasses.asdict(cfg))
    if vocab_sample is not None:
        rec["vocab_sample"] = vocab_sample
    _clear_cut_probes(work)  # a probe phase cut by an earlier call (or worker)
    if _probe_ready(probe_folder(work, model, layer)):
        rec["probe_present"] = True
        log("absorption: the first-letter probe is in place already")
        return rec
    parts: dict[str, float] = {}

    def part(name: str, s: float) -> None:
        parts[name] = round(parts.get(name, 0.0) + s, 2)

    log("absorption: making the first-letter probe only (SAEBench's probe phase)")
    t = time.time()
    with offline_absorption(model, model_name, work, probe_batch, part, vocab_sample):
        info = make_probe(model, cfg, layer, work, device, carry, stage, vocab_sample, part)
    rec.update(info, probe_s=round(time.time() - t, 2), probe_parts_s=parts)
    log(f"absorption: probe {info['probe_source']} ({rec['probe_s']:.0f} s)")
    return rec


STOP_GRACE_S = 60.0  # a worker told to stop for host memory that has not ended by then is killed


def _stop(p: Any, grace_s: float = 5.0) -> None:
    """Terminate child ``p``, kill it after ``grace_s``, wait for it (its memory is freed when it is reaped)."""
    p.terminate()
    p.join(grace_s)
    if p.is_alive():
        p.kill()
    p.join()


def _supervise(
    common: tuple,
    jobs: list,
    n: int,
    vocab_sample: int | None,
    deadline: float,
    handle: Callable[[int, tuple], None],
    states: list[dict],
    rec: dict,
    probe_kw: dict | None = None,
    guard: MemoryGuard | None = None,
) -> None:
    """Run :func:`_work` in ``n`` spawned children sharing ``jobs``, ``handle`` their events here, terminate them
    at ``deadline``, at the first error or at the first 'not evaluable' (a property of the model-layer). Before
    stopping, the events already queued are handled (an SAE finished just before the deadline is kept). ``guard``
    is asked once a second which child to stop for host memory (one evaluating an SAE: its SAE is left, the other
    children go on)."""
    ctx = mp.get_context("spawn")
    job_q, events = ctx.Queue(), ctx.Queue()
    for job in [*jobs, *[None] * n]:
        job_q.put(job)
    procs = [ctx.Process(target=_child, args=(*common, job_q, events, i, vocab_sample, probe_kw)) for i in range(n)]
    ended, silent = [False] * n, [0] * n
    stopping: dict[int, float] = {}  # workers told to stop for host memory: when

    def take(i: int, ev: tuple) -> None:
        if ev[0] == "end":
            ended[i] = True
        else:
            if ev[0] == "memory_stop_missed":
                stopping.pop(i, None)  # it goes on: not to be killed after the grace period
            handle(i, ev)

    def take_queued() -> None:
        while True:
            try:
                take(*events.get_nowait())
            except queue.Empty:
                return

    try:
        rec["workers_start_s"] = round(start_all(procs), 2)  # the children import at once (workers.start_all)
        while not all(ended) and "error" not in rec and "not_evaluable" not in rec:
            left = deadline - time.time()
            if left <= 0:
                break
            if guard is not None:
                take_queued()  # first, so that the guard sees the workers' latest phases
                live = {
                    i: (p.pid, states[i]["phase"], states[i]["sae"])
                    for i, p in enumerate(procs)
                    if not ended[i] and p.pid is not None and p.exitcode is None
                }
                stop = guard.check(live)
                if stop is not None:
                    # a signal, not a kill: the worker unwinds its SAE and ends cleanly (MemoryStop); killed only
                    # if it has not ended STOP_GRACE_S later
                    if STOP_SIGNAL is not None:
                        try:
                            os.kill(procs[stop].pid, STOP_SIGNAL)
                            stopping[stop] = time.time()
                        except ProcessLookupError:  # it exited meanwhile (its "end" is queued): nothing to stop
                            rec.setdefault("memory_stop_missed", []).append(stop)
                    else:  # no stop signal here: terminated, its SAE (as last reported) left
                        _stop(procs[stop])
                        ended[stop] = True
                        rec.setdefault("memory_stopped", []).append(guard.stopped[-1]["sae"])
                    # with the signal, rec["memory_stopped"] comes from the worker: the SAE it unwound
                    states[stop].update(phase="stopping (host memory)", since=time.time())
                    continue
                for i in [i for i, since in stopping.items() if time.time() - since > STOP_GRACE_S]:
                    del stopping[i]
                    if not ended[i]:
                        _stop(procs[i])
                        ended[i] = True
                        rec.setdefault("memory_killed", []).append(i)
                        if states[i]["sae"] is not None:  # it did not unwind in time: its SAE is left
                            rec.setdefault("memory_stopped", []).append(states[i]["sae"])
            try:
                i, ev = events.get(timeout=min(left, 1.0))
            except queue.Empty:
                # a child that exited without its "end" event: its events were flushed before it exited, so an
                # empty queue on two polls in a row means it died (killed, or out of memory)
                for i, p in enumerate(procs):
                    if not ended[i] and p.exitcode is not None:
                        silent[i] += 1
                        if silent[i] >= 2:
                            rec["error"] = (
                                f"an absorption process exited with code {p.exitcode} in phase {states[i]['phase']}"
                            )
                continue
            take(i, ev)
        take_queued()  # a finished SAE's JSON is kept even at the deadline
        if not all(ended) and time.time() >= deadline:
            now = time.time()
            cut = [(i, st) for i, st in enumerate(states) if not ended[i]]
            _, st = min(cut, key=lambda c: c[1]["since"])
            rec["cut"] = {"phase": st["phase"], "ran_s": round(now - st["since"], 2)}
            if st["sae"] is not None:
                rec["cut"]["sae"] = st["sae"]
            rec["cut"]["saes"] = [c[1]["sae"] for c in cut if c[1]["sae"] is not None]
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        stop = time.time() + 10  # one grace period for all
        for p in procs:
            if p.pid is None:  # never started
                continue
            p.join(max(0.0, stop - time.time()))
            if p.is_alive():
                p.kill()
            p.join()
        job_q.cancel_join_thread()
        events.cancel_join_thread()
