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
which phase was cut and after how many seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import multiprocessing as mp
import os
import queue
import random
import re
import shutil
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from probing_stage import ProbeSAE

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


@contextlib.contextmanager
def offline_absorption(
    model: Any,
    model_name: str,
    work: Path,
    probe_batch: int = PROBE_BATCH,
    progress: Callable[[str, float], None] | None = None,
    vocab_sample: int | None = None,
):
    """Within the block SAEBench's absorption eval uses ``model``, writes only under ``work`` and runs batched
    (module doc). ``progress(part, seconds)`` is called after each timed part of SAEBench's eval: the vocabulary
    listing, the probe's activations, its training and saving (the probe phase), the k-sparse probing and the
    absorption experiment (per SAE).
    ``vocab_sample``: smoke runs only, not SAEBench's eval: its vocabulary cut to a fixed sample of that many
    words (seeded, in token-id order), for the probe and the absorption prompts alike."""
    import sae_bench.evals.absorption.common as common
    import sae_bench.evals.absorption.feature_absorption_calculator as fac
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
    orig_get_tokens = vocab.get_tokens
    orig_train, orig_save = common.train_linear_probe_for_task, common.save_probe_and_data

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

    def absorption_experiment(**kw: Any) -> Any:
        kw["model"] = _UpToLayer(kw["model"], kw["layer"])
        return orig[2](
            **kw,
            experiment_dir=res / FEATURE_ABSORPTION_EXPERIMENT_NAME,
            sparse_probing_experiment_dir=ksp,
            probes_dir=probes,
        )

    def validate(self: Any, prompts: list) -> None:
        try:
            orig_validate(self, prompts)
        except ValueError:
            # left padding: position word_token_pos of every row is its own prompt's if the tokens after it agree
            tails = {tuple(self.model.to_tokens(p.base)[0, self.word_token_pos + 1 :].tolist()) for p in prompts}
            if self.model.tokenizer.padding_side != "left" or len(tails) != 1 or self.word_token_pos >= -1:
                raise

    tok = model.tokenizer
    side = tok.padding_side
    grad = torch.is_grad_enabled()
    rng = _rng_state()
    work.mkdir(parents=True, exist_ok=True)
    am.HookedTransformer = _LoadedModel  # type: ignore[assignment]
    ksp_run = functools.partial(orig[1], experiment_dir=ksp, probes_dir=probes)
    am.run_k_sparse_probing_experiment = timed("k_sparse_probing", ksp_run)
    am.run_feature_absortion_experiment = timed("absorption_experiment", absorption_experiment)
    common.gen_and_save_df_acts_probing = timed("activations", gather)
    common.train_linear_probe_for_task = timed("probe_training", orig_train)
    common.save_probe_and_data = timed("probe_save", orig_save)
    probing.DataLoader = _batch_loader(orig_loader)
    Calc._validate_prompts_are_same_length = validate  # type: ignore[method-assign]
    vocab.get_tokens = timed("vocabulary", get_tokens)
    tok.padding_side = "left"
    try:
        with contextlib.chdir(work):
            yield
    finally:
        am.HookedTransformer, am.run_k_sparse_probing_experiment, am.run_feature_absortion_experiment = orig
        common.gen_and_save_df_acts_probing, probing.DataLoader = orig_gather, orig_loader
        common.train_linear_probe_for_task, common.save_probe_and_data = orig_train, orig_save
        Calc._validate_prompts_are_same_length = orig_validate  # type: ignore[method-assign]
        vocab.get_tokens = orig_get_tokens
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


def _train_probe(model: Any, cfg: Any, layer: int, work: Path, device: str) -> None:
    """SAEBench's ``train_and_save_probes`` with the arguments its ``load_or_train_probe`` passes, into a
    temporary folder moved into place when complete (call inside :func:`offline_absorption`)."""
    from sae_bench.evals.absorption import common

    tmp = work / "results" / f"{PROBE_TMP}{uuid.uuid4().hex[:8]}"
    common.train_and_save_probes(
        model,
        layers=[layer],
        base_template=cfg.prompt_template,
        pos_idx=cfg.prompt_token_pos,
        probes_dir=tmp,
        device=device,
    )
    dest = probe_folder(work, model, layer)
    if dest.exists():  # incomplete (the check in _work found a file missing)
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp / model.cfg.model_name / f"layer_{layer}", dest)
    shutil.rmtree(tmp)


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
    threads: int | None = None,
    vocab_sample: int | None = None,
) -> None:
    """The eval SAE by SAE (``jobs``: a list, or a queue shared by the workers, of (name, release, loader), None
    ends it), the probe first if missing (``trains_probe``; else wait until another worker has moved it into
    place); each step reported through ``send`` (events handled by :func:`run_absorption`)."""
    try:
        import torch
        from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
        from sae_bench.evals.absorption.main import run_eval
        from saebench_fold import fold_for_saebench

        if threads is not None:
            torch.set_num_threads(threads)
        cfg = AbsorptionEvalConfig(**cfg_kw)
        raw = work / "saebench_out"
        send(("ready",))

        def part(name: str, s: float) -> None:
            send(("part", name, s))

        with offline_absorption(model, model_name, work, probe_batch, part, vocab_sample):
            raw.mkdir(parents=True, exist_ok=True)
            sae_s: list[float] = []
            while True:
                job = (jobs.pop(0) if jobs else None) if isinstance(jobs, list) else jobs.get()
                if job is None or (sae_s and time.time() + 1.3 * max(sae_s) > deadline):
                    break
                name, release, load = job
                send(("sae_start", name))
                t = time.time()
                sae = load()
                fold = fold_for_saebench(sae)  # as SAEBench's loader folds an SAE it loads by name
                p = probe_folder(work, model, sae.cfg.hook_layer)
                if not _probe_ready(p):
                    if trains_probe:
                        send(("probe_start",))
                        t_probe = time.time()
                        seed_everything(cfg.random_seed)
                        _train_probe(model, cfg, sae.cfg.hook_layer, work, device)
                        send(("probe_done", time.time() - t_probe))
                    else:
                        send(("probe_wait",))
                        while not _probe_ready(p):  # the parent ends this process at the deadline
                            time.sleep(0.5)
                    send(("sae_start", name))
                    t = time.time()
                out = raw / f"{release}_custom_sae_eval_results.json"
                out.unlink(missing_ok=True)
                seed_everything(cfg.random_seed)
                run_eval(cfg, [(release, sae)], device, str(raw), force_rerun=True)
                if not out.is_file():
                    send(("not_evaluable", name))
                    break
                sae_s.append(time.time() - t)
                send(("sae_done", name, str(out), sae_s[-1], fold))
    except Exception:  # noqa: BLE001 - reported to the parent, which records it
        send(("error", traceback.format_exc()))
    send(("end",))


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
    threads: int | None,
    vocab_sample: int | None,
) -> None:
    """A spawned worker: ``_work`` on the shared job queue, its events tagged with the worker's index (the queue's
    feeder thread flushes them before the process exits); worker 0 trains the probe if it is missing."""

    _die_with_parent()

    def send(ev: tuple) -> None:
        events.put((index, ev))

    with contextlib.ExitStack() as stack:
        if threads is not None:  # scikit-learn's BLAS / OpenMP pools too, not only torch's
            from threadpoolctl import threadpool_limits

            stack.enter_context(threadpool_limits(threads))
        args = (model, model_name, jobs, work, cfg_kw, device, probe_batch, deadline, send)
        _work(*args, trains_probe=index == 0, threads=threads, vocab_sample=vocab_sample)


def _die_with_parent() -> None:
    """Linux: this process gets SIGTERM when its parent dies (a stage killed from outside leaves no worker going
    on through the queue); elsewhere nothing."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def default_workers() -> int:
    """SAEs evaluated in parallel by default: as the sparse-probing SAE workers, min(14, CPUs - 2), at least one
    (the per-SAE work is mostly single-threaded Python and scikit-learn; the device has 16 CPUs)."""
    return max(1, min(14, (os.cpu_count() or 1) - 2))


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
    workers: int = 1,
    vocab_sample: int | None = None,
    on_result: Callable[[], None] | None = None,
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
    ``on_result()`` is called after each SAE's JSON is written (the stage's progress export). If no worker starts
    (the model cannot be passed to them), the SAEs are evaluated in this process instead (``mode`` and
    ``workers_failed`` in the record say so)."""
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
    from sae_bench.evals.absorption.eval_output import AbsorptionEvalOutput
    from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_file

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    work = work.resolve()  # the eval runs inside it (chdir): a relative path would point elsewhere there
    cfg = AbsorptionEvalConfig(model_name=model_name, **{**BATCH_DEFAULTS, **(config or {})})
    existing = [s.name for s in saes if s.dest.is_file()]
    todo = [s for s in saes if not s.dest.is_file()]
    rec: dict[str, Any] = {"eval": f"SAEBench {EVAL_TYPE}", "existing": existing, "evaluated": [], "sae_s": {}}
    rec["saebench_fold"] = {}  # per SAE evaluated: saebench_fold's record (decoder norms folded or why not)
    rec.update(probe_batch=probe_batch, mode="inline" if inline else "child")
    if vocab_sample is not None:
        rec["vocab_sample"] = vocab_sample
    by_name = {s.name: s for s in todo}
    for d in (work / "results").glob(f"{PROBE_TMP}*"):  # a probe phase cut by an earlier call's deadline
        shutil.rmtree(d)
    t0 = time.time()
    jobs = [(s.name, s.dest.stem, s.load) for s in todo[:max_saes]]  # release unique per SAE (SAEBench's cache)
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
        elif kind == "probe_done":
            rec["probe_s"] = round(ev[1], 2)
            log(f"absorption: probe trained ({ev[1]:.0f} s)")
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
    if jobs and inline:
        send0 = functools.partial(handle, 0)
        args = (model, model_name, list(jobs), work, cfg_kw, device, probe_batch, deadline, send0)
        _work(*args, trains_probe=True, threads=None, vocab_sample=vocab_sample)
    elif jobs:
        # threads per worker: the CPUs shared out (one worker keeps torch's default)
        threads = None if n == 1 else max(1, (os.cpu_count() or 1) // n)
        common = (model, model_name, work, cfg_kw, device, probe_batch, deadline)
        try:
            _supervise(common, jobs, n, threads, vocab_sample, deadline, handle, states, rec)
        except Exception as e:  # noqa: BLE001 - starting the workers failed here (e.g. the model not picklable)
            rec["error"] = f"{type(e).__name__}: {e}".splitlines()[0]
        if "error" in rec and "child_start_s" not in rec and time.time() < deadline:
            # no worker got as far as its first event: the model did not reach them (passing it to spawned
            # processes, by CUDA IPC on a GPU, is the one step the in-process mode does not take), so the SAEs
            # run in this process instead of the call ending with nothing
            rec["workers_failed"] = rec.pop("error")
            rec["mode"] = "inline (the workers failed to start)"
            log(f"absorption: the workers failed to start ({rec['workers_failed']}); evaluating in this process")
            for d in (work / "results").glob(f"{PROBE_TMP}*"):
                shutil.rmtree(d)
            send0 = functools.partial(handle, 0)
            args = (model, model_name, list(jobs), work, cfg_kw, device, probe_batch, deadline, send0)
            _work(*args, trains_probe=True, threads=None, vocab_sample=vocab_sample)
    rec["config"] = cfg_kw
    rec["left"] = [s.name for s in todo if s.name not in rec["evaluated"]]
    rec["complete"] = not rec["left"] and "error" not in rec
    return rec


def _supervise(
    common: tuple,
    jobs: list,
    n: int,
    threads: int | None,
    vocab_sample: int | None,
    deadline: float,
    handle: Callable[[int, tuple], None],
    states: list[dict],
    rec: dict,
) -> None:
    """Run :func:`_work` in ``n`` spawned children sharing ``jobs``, ``handle`` their events here, terminate them
    at ``deadline``, at the first error or at the first 'not evaluable' (a property of the model-layer). Before
    stopping, the events already queued are handled (an SAE finished just before the deadline is kept)."""
    ctx = mp.get_context("spawn")
    job_q, events = ctx.Queue(), ctx.Queue()
    for job in [*jobs, *[None] * n]:
        job_q.put(job)
    procs = [ctx.Process(target=_child, args=(*common, job_q, events, i, threads, vocab_sample)) for i in range(n)]
    ended, silent = [False] * n, [0] * n

    def take(i: int, ev: tuple) -> None:
        if ev[0] == "end":
            ended[i] = True
        else:
            handle(i, ev)

    try:
        for p in procs:
            p.start()
        while not all(ended) and "error" not in rec and "not_evaluable" not in rec:
            left = deadline - time.time()
            if left <= 0:
                break
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
        while True:  # what is already queued: a finished SAE's JSON is kept even at the deadline
            try:
                take(*events.get_nowait())
            except queue.Empty:
                break
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
