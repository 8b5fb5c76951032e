"""SAEBench's ``sparse_probing_sae_probes`` on many saved SAEs, resumable across device calls (``E-*`` stages).

Called by ``run_stage.py`` for an ``E-<model>-<layer>`` stage. The eval is SAEBench's own
``sae_bench.evals.sparse_probing_sae_probes.main.run_eval`` (sae-probes, setting "normal": per dataset
``min(n - 100, 1024)`` balanced training prompts, the rest of at most 5,000 as the test set, the hooked
residual at the last token of each prompt; per SAE and k in ``ks``, an L1 logistic regression on the k latents
with the largest mean difference between classes; the LLM baseline is an L2 logistic regression ("logreg") on
the d_model-dim residual), unchanged. The offline adaptations are those of
``experiments/gemma3_270m/probing.py``, imported from there: the HookedTransformer is passed in (sae-probes'
model loader returns it for the model name and raises for any other name: nothing reaches the hub) and a stub
``xgboost`` module when xgboost is missing (sae-probes imports it; only its unused "xgboost" baseline calls it).

Three phases, each skipping what a previous call left on disk (``work``), so that a stage spans several
back-to-back device calls of at most 600 s:

1. activations: sae-probes' ``ensure_dataset_activations`` per dataset (a cached ``.pt`` file is kept);
2. LLM baselines: sae-probes' ``run_baseline_dataset_layer`` per dataset without a baseline file, in spawned
   CPU worker processes (``workers`` > 0) or in this process (``workers`` = 0);
3. SAEs: only once every dataset of the fixed subset has activations and a baseline (every SAE JSON covers
   the same datasets), ``run_eval`` SAE by SAE, in ``sae_workers`` spawned processes (one SAE per process at
   a time, one thread each; the cost is sae-probes' single-threaded CV of sklearn logistic regressions) or in
   this process (``sae_workers`` = 0), each SAE's decoder norms folded first as SAEBench's loader folds an SAE
   it loads by name (``saebench_fold``; the record's ``saebench_fold`` says which were); each output is checked
   (all datasets present, LLM baseline present), passed to ``finalize`` (the caller's ids) in this process,
   written atomically to its destination and validated there against SAEBench's output schema
   (``validate_eval_output_format_file`` with ``SparseProbingSaeProbesEvalOutput``). A destination that exists
   is not recomputed. sae-probes keeps its per-dataset JSONs of an SAE under ``<results>/<release>_custom_sae``
   and skips a dataset whose JSON exists: that folder is deleted before the SAE starts, so that a file left by a
   killed call is never reused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

GEMMA_DIR = Path(__file__).resolve().parent.parent / "gemma3_270m"
EVAL_TYPE = "sparse_probing_sae_probes"
BASELINE = "logreg"


def gemma_probing() -> Any:
    """``experiments/gemma3_270m/probing.py``, imported by the name its spawned workers re-import it by."""
    if str(GEMMA_DIR) not in sys.path:
        sys.path.insert(0, str(GEMMA_DIR))
    import probing

    return probing


def probes_available() -> str | None:
    """None when sae-probes, zstandard and SAEBench's eval import; otherwise why not (one line)."""
    import importlib.util

    for mod in ("sae_probes", "zstandard", "sae_bench"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (extra [probes])"
    return None


@dataclasses.dataclass
class ProbeSAE:
    """One SAE to probe: ``load`` returns the SAELens SAE (hook and model fields set), ``dest`` is its JSON,
    ``finalize`` maps SAEBench's output dict to what is stored (ids, config)."""

    name: str
    load: Callable[[], Any]
    dest: Path
    finalize: Callable[[dict], dict]


def _quiet_sklearn() -> None:
    # sklearn >= 1.8 deprecates LogisticRegression(penalty=...), which sae-probes passes
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"sklearn\.")
    warnings.filterwarnings("ignore", message="Inconsistent values: penalty", category=UserWarning)


def _probe_one(cfg_kw: dict, release: str, load: Callable[[], Any], device: str, raw: str) -> tuple[dict, float, dict]:
    """SAEBench's ``run_eval`` on one SAE (``load()``, decoder norms folded as SAEBench's loader folds them:
    ``saebench_fold``) under ``release``: (its raw output dict, seconds, the fold record). Runs in this process or
    in an SAE worker (``load`` must then pickle: a top-level function or a partial)."""
    from sae_bench.evals.sparse_probing_sae_probes.eval_config import SparseProbingSaeProbesEvalConfig
    from sae_bench.evals.sparse_probing_sae_probes.main import run_eval
    from saebench_fold import fold_for_saebench

    t = time.time()
    cfg = SparseProbingSaeProbesEvalConfig(**cfg_kw)
    # sae-probes skips a dataset whose per-SAE JSON exists: a call killed mid-SAE may have left a partial one
    shutil.rmtree(Path(cfg.results_path) / f"{release}_custom_sae", ignore_errors=True)
    sae = load()
    fold = fold_for_saebench(sae)
    run_eval(cfg, [(release, sae)], device, raw, force_rerun=True)
    d = json.loads((Path(raw) / f"{release}_custom_sae_eval_results.json").read_text())
    return d, time.time() - t, fold


class _NoModel:
    """sae-probes' model loader in an SAE worker: every activation file exists by phase 3, so a request for a
    model means one is missing."""

    @staticmethod
    def from_pretrained_no_processing(name: str, *a: Any, **k: Any) -> Any:
        raise RuntimeError(f"sae-probes asked for model {name!r} in an SAE worker (an activation file is missing)")


def _sae_worker_init() -> None:
    """An SAE worker: one thread, the xgboost stub before sae-probes is imported, no model loader."""
    gemma_probing().install_xgboost_stub()
    _quiet_sklearn()
    import sae_probes.generate_model_activations as gma
    import sklearn.linear_model  # noqa: F401 - loaded before the thread limit, which covers loaded libraries only
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)
    gma.HookedTransformer = _NoModel  # type: ignore[assignment]


def run_probing(
    model: Any,
    model_name: str,
    hook: str,
    saes: list[ProbeSAE],
    work: Path,
    datasets: list[str],
    deadline: float,
    device: str,
    ks: tuple[int, ...] = (1, 2, 5),
    seed: int = 42,
    workers: int = 0,
    max_saes: int | None = None,
    log: Callable[[str], None] = print,
    sae_workers: int = 0,
    on_result: Callable[[], None] | None = None,
) -> dict:
    """Run the three phases (module doc) until ``deadline`` (time.time()) or ``max_saes`` new JSONs; returns
    this call's record:
    seconds per phase and dataset, the SAEs evaluated / existing / left, ``saebench_fold`` (per SAE evaluated:
    :func:`saebench_fold.fold_for_saebench`'s record) and ``complete`` (all SAEs done).
    ``workers``: processes for the LLM baselines, ``sae_workers``: for the SAEs (0: this process). Either way
    a call finishes at least one SAE, starts none whose estimated time (1.3 x the slowest SAE so far) would pass
    the deadline and, with workers, stops at the deadline once one is done: an SAE not finished then is left
    for the next call (its workers are terminated; nothing of it is written to its destination).
    ``on_result()`` is called after each SAE's JSON is written (the stage's progress export)."""
    gp = gemma_probing()
    rec: dict[str, Any] = {
        "eval": f"SAEBench {EVAL_TYPE} (sae-probes), setting normal, reg_type l1, LLM baseline {BASELINE}",
        "xgboost_stubbed": gp.install_xgboost_stub(),
        "model_name": model_name,
        "hook": hook,
        "ks": list(ks),
        "datasets": list(datasets),
    }
    import sae_probes
    import sae_probes.generate_model_activations as gma
    from sae_probes.run_baselines import get_baseline_save_path

    unknown = [d for d in datasets if d not in sae_probes.DATASETS]
    if unknown:
        raise ValueError(f"unknown sae-probes datasets: {unknown}")
    rec["sae_probes_version"] = gp._dist_version("sae-probes")
    rec["sae_bench_version"] = gp._dist_version("sae-bench")
    cache, results, raw = work / "model_acts", work / "sae_probes", work / "saebench_out"
    for p in (cache, results, raw):
        p.mkdir(parents=True, exist_ok=True)
    existing = [s.name for s in saes if s.dest.is_file()]
    todo = [s for s in saes if not s.dest.is_file()]
    rec.update(existing=existing, evaluated=[], left=[s.name for s in todo])
    if not todo:
        rec["complete"] = True
        return rec

    # ---- 1. activations (one forward pass per dataset; sae-probes keeps a cached file)
    def act_file(ds: str) -> Path:
        return cache / f"model_activations_{model_name}" / f"{ds}_{hook}.pt"

    act_s: dict[str, float] = {}
    with gp._model_by_name(model, model_name):
        for ds in datasets:
            if act_file(ds).is_file():
                continue
            if act_s and time.time() + 1.5 * max(act_s.values()) > deadline:
                break
            t = time.time()
            gma.ensure_dataset_activations(
                model_name=model_name,
                dataset_short_names=[ds],
                hook_names=[hook],
                model_cache_path=cache,
                device=device,
                max_seq_len=int(min(1024, model.cfg.n_ctx)),
                model=model,
            )
            act_s[ds] = round(time.time() - t, 2)
    rec["activation_s"] = act_s

    # ---- 2. LLM baselines (CPU)
    def has_baseline(ds: str) -> bool:
        return get_baseline_save_path(ds, hook, BASELINE, model_name, results).is_file()

    pending = [ds for ds in datasets if act_file(ds).is_file() and not has_baseline(ds)]
    rec["baseline_s"] = _baselines(gp, pending, hook, model_name, cache, results, seed, workers, deadline)
    missing = [ds for ds in datasets if not (act_file(ds).is_file() and has_baseline(ds))]
    if missing:
        rec["complete"] = False
        rec["datasets_waiting"] = missing
        log(f"sparse probing: {len(missing)} datasets still need activations / baselines (next call)")
        return rec

    # ---- 3. SAEs
    from sae_bench.evals.sparse_probing_sae_probes.eval_output import SparseProbingSaeProbesEvalOutput
    from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_file

    cfg_kw = dict(
        model_name=model_name,
        random_seed=seed,
        dataset_names=list(datasets),
        reg_type="l1",
        setting="normal",
        ks=list(ks),
        binarize=False,
        results_path=str(results),
        model_cache_path=str(cache),
        include_llm_baseline=True,
        baseline_method=BASELINE,
    )
    rec["sae_workers"] = sae_workers
    rec["saebench_fold"] = {}  # per SAE evaluated: saebench_fold's record (decoder norms folded or why not)
    sae_s: dict[str, float] = {}

    def store(s: ProbeSAE, d: dict, seconds: float, fold: dict) -> None:
        got = sorted(det["dataset_name"] for det in d["eval_result_details"])
        if got != sorted(datasets):
            raise ValueError(f"{s.name}: results for datasets {got}, expected {sorted(datasets)}")
        if any(det.get("llm_test_accuracy") is None for det in d["eval_result_details"]):
            raise ValueError(f"{s.name}: LLM baseline missing for some dataset")
        obj = s.finalize(d)
        s.dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = s.dest.with_name(f".{s.dest.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text(json.dumps(obj, indent=1) + "\n")
        try:
            validate_eval_output_format_file(str(tmp), SparseProbingSaeProbesEvalOutput)
        except Exception:
            tmp.unlink()
            raise
        os.replace(tmp, s.dest)
        sae_s[s.name] = round(seconds, 2)
        rec["evaluated"].append(s.name)
        rec["saebench_fold"][s.name] = fold
        if on_result is not None:
            on_result()
        m = obj["eval_result_metrics"]
        log(
            f"sparse probing {s.name}: "
            + ", ".join(f"k={k} {m['sae'].get(f'sae_top_{k}_test_accuracy'):.3f}" for k in ks)
            + f", LLM {m['llm'].get('llm_test_accuracy'):.3f} ({sae_s[s.name]:.0f} s)"
        )

    def may_start() -> bool:
        return not sae_s or time.time() + 1.3 * max(sae_s.values()) <= deadline

    # a release unique per SAE: sae-probes keeps its per-SAE results under <results>/<release>_custom_sae
    queue = [(s, (cfg_kw, s.dest.stem, s.load, device, str(raw))) for s in todo[:max_saes]]
    if sae_workers <= 0:
        with warnings.catch_warnings(), gp._model_by_name(model, model_name):
            _quiet_sklearn()
            for s, job in queue:
                if not may_start():
                    break
                store(s, *_probe_one(*job))
    else:
        _saes_in_workers(queue, sae_workers, deadline, may_start, store, sae_s)
    rec["sae_s"] = sae_s
    rec["left"] = [s.name for s in todo if s.name not in sae_s]
    rec["complete"] = not rec["left"]
    return rec


def _saes_in_workers(
    queue: list[tuple[ProbeSAE, tuple]],
    n: int,
    deadline: float,
    may_start: Callable[[], bool],
    store: Callable[..., None],
    done: dict[str, float],
) -> None:
    """``_probe_one(*job)`` for each queued SAE in ``n`` spawned workers, ``store``-d here as results come;
    no new SAE once ``may_start()`` is False; past the deadline, the pool is terminated once one SAE is done."""
    import multiprocessing as mp

    n = min(n, len(queue))
    # one thread per worker: the limits must be in the environment before the libraries load
    env = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    os.environ.update(dict.fromkeys(env, "1"))
    try:
        pool = mp.get_context("spawn").Pool(n, initializer=_sae_worker_init)
    finally:
        for v, old in env.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old
    queue = list(queue)
    running: list[tuple[ProbeSAE, Any]] = []
    try:
        while queue or running:
            while queue and len(running) < n and may_start():
                s, job = queue.pop(0)
                running.append((s, pool.apply_async(_probe_one, job)))
            if not running:
                break
            ready = [r for r in running if r[1].ready()]
            for s, res in ready:
                running.remove((s, res))
                store(s, *res.get())
            if not ready:
                if done and time.time() > deadline:
                    break
                time.sleep(0.05)
    finally:
        pool.terminate()
        pool.join()


def _baselines(
    gp: Any,
    pending: list[str],
    hook: str,
    model_name: str,
    cache: Path,
    results: Path,
    seed: int,
    workers: int,
    deadline: float,
) -> dict[str, float | None]:
    """sae-probes' LLM baseline for each pending dataset (None: not finished by the deadline)."""
    done: dict[str, float | None] = {}
    if not pending:
        return done
    args = [(hook, ds, model_name, str(cache), str(results), seed) for ds in pending]
    if workers <= 0:
        with warnings.catch_warnings():
            for a in args:
                if done and time.time() + 1.5 * max(v for v in done.values() if v) > deadline:
                    break
                done[a[1]] = round(gp._baseline_job(*a, n_threads=os.cpu_count() or 1), 2)
        return done
    import multiprocessing as mp

    n = min(workers, len(pending))
    threads = max(1, (os.cpu_count() or 1) // n)
    # the workers read cached activations only: hide the GPU so that none opens a CUDA context
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        pool = mp.get_context("spawn").Pool(n)
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old
    try:
        jobs = {a[1]: pool.apply_async(gp._baseline_job, (*a, threads)) for a in args}
        for ds, job in jobs.items():
            job.wait(max(0.0, deadline - time.time()))
            done[ds] = round(job.get(), 2) if job.ready() else None
    finally:
        pool.terminate()
        pool.join()
    return done
