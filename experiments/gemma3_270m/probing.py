#!/usr/bin/env python3
"""SAEBench's ``sparse_probing_sae_probes`` eval on SAEs trained in the same process, offline.

Used by ``run.py`` in this folder (step "sparse probing", after the main SAEs' run_evals). It runs
SAEBench's own ``sae_bench.evals.sparse_probing_sae_probes.main.run_eval`` (setting "normal", L1 probes
on the top-k latents by mean difference, k in ks; logistic-regression baseline on the residual stream),
unchanged, with two adaptations to the offline GPU machine:

* **The model.** sae-probes gets residual activations by model *name*: ``ensure_dataset_activations``
  (sae_probes.generate_model_activations) loads ``HookedTransformer.from_pretrained_no_processing(name)``
  (Hugging Face hub: unreachable) only when an activation file ``<cache>/model_activations_<name>/
  <dataset>_<hook>.pt`` is missing. We fill that cache first with sae-probes' own generator, called with
  the already loaded HookedTransformer (its ``model=`` argument), dataset by dataset under a time budget;
  and, as a guard, ``sae_probes.generate_model_activations.HookedTransformer`` (that module's global, the
  narrowest point) is replaced for the duration by a shim whose ``from_pretrained_no_processing``
  returns the loaded model for ``model_name`` and raises for any other name, so nothing ever reaches
  the hub.
* **xgboost.** sae-probes imports ``xgboost`` at module level (sae_probes.utils_training) but uses it
  only for its "xgboost" baseline method, which this eval never calls (SAE probes: L1 logistic
  regression; baseline: "logreg"). When xgboost is not installed (the device: the full wheel is >100 MB),
  a stub module is registered whose ``XGBClassifier`` raises.

The datasets ship inside the sae-probes wheel (113 binary tasks, zstd CSVs). Per dataset, sae-probes'
"normal" setting uses ``min(n - 100, 1024)`` balanced training prompts and the rest (of at most 5,000) as
the test set; the activation of the last token of each prompt (truncated to 1,024 tokens) is probed.
Cost per dataset: one forward pass (up to the hooked layer) over all its prompts, then per SAE an encode
of those activations and, per k, 10 L1 logistic regressions (validation split) + 1 final fit (about 1 s
per SAE and dataset on the dev CPU); the LLM baseline: 10 + 1 L2 logistic regressions (lbfgs, up to
1,000 iterations) on the d_model-dim activations, once per dataset, by far the costliest part (71 s for
22_headline_isobama on one dev-CPU core with the 2-layer test model; massive-activation residuals
converge slowly). Hence the two phases of :class:`Probing`: the baselines run in spawned worker
processes (GPU hidden from them) while the GPU trains the SAEs.

``PROBE_DATASETS`` is the fixed, ordered subset: ``--probe-datasets N`` takes its first N. It was chosen
for short prompts (<= ~500 characters on average, so the forward pass is cheap), small sizes (728-3,332
prompts) and variety (news headlines, geography, entities, spam, emotion, toxicity, truthfulness,
occupations, time/causal reasoning, arithmetic). Run ``python experiments/gemma3_270m/probing.py --check`` to
verify that the packages import (the device stage call does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import sys
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Fixed order: the first N are used. Sizes / mean prompt characters from sae-probes 0.4.2's data.
PROBE_DATASETS: list[str] = [
    "22_headline_isobama",  # 1,656 prompts, 57 chars: news headline mentions Obama
    "117_us_state_FL",  # 1,000, 14: US city/place is in Florida
    "96_spam_is",  # 1,494, 108: SMS spam
    "154_athlete_sport_football",  # 1,772, 12: athlete's sport
    "105_click_bait",  # 2,568, 71: clickbait headline
    "148_twt_emotion_worry",  # 2,500, 77: tweet emotion
    "41_truthqa_tf",  # 786, 113: TruthfulQA statement true/false
    "59_wikidata_occupation_isjournalist",  # 2,000, 474: Wikidata biography
    "133_context_type_Causality",  # 1,250, 48: temporal/causal question type
    "125_world_country_Italy",  # 2,000, 15: place is in Italy
    "95_toxic_is",  # 728, 275: toxic comment
    "139_news_class_Politics",  # 2,500, 237: news topic
    "129_arith_mc_A",  # 1,494, 43: arithmetic multiple choice
    "130_temp_cat_Frequency",  # 1,062, 43: temporal reasoning category
    "66_living-room",  # 3,118, 104: text mentions the phrase's topic
    "114_nyc_borough_Manhattan",  # 2,000, 26: NYC place borough
]
DEFAULT_N_DATASETS = 12
EVAL_TYPE = "sparse_probing_sae_probes"


def install_xgboost_stub() -> bool:
    """Register a stub ``xgboost`` module when the real one is missing; returns True if stubbed."""
    if "xgboost" in sys.modules or importlib.util.find_spec("xgboost") is not None:
        return False
    stub = types.ModuleType("xgboost")

    class XGBClassifier:  # noqa: D401 - stub
        def __init__(self, *a: Any, **k: Any) -> None:
            raise RuntimeError("xgboost is not installed (stubbed by experiments/gemma3_270m/probing.py)")

    stub.XGBClassifier = XGBClassifier  # type: ignore[attr-defined]
    stub.__stub__ = True  # type: ignore[attr-defined]
    sys.modules["xgboost"] = stub
    return True


def dataset_names(n: int) -> list[str]:
    """The first ``n`` of PROBE_DATASETS (0 <= n <= len)."""
    if not 0 <= n <= len(PROBE_DATASETS):
        raise ValueError(f"--probe-datasets must be in 0..{len(PROBE_DATASETS)}, got {n}")
    return PROBE_DATASETS[:n]


@contextlib.contextmanager
def _model_by_name(model: Any, model_name: str):
    """Within the block, sae-probes' model loader returns ``model`` for ``model_name`` (see module doc)."""
    import sae_probes.generate_model_activations as gma

    class _LoadedModel:
        @staticmethod
        def from_pretrained_no_processing(name: str, *a: Any, **k: Any) -> Any:
            if name != model_name:
                raise RuntimeError(f"sae-probes asked for model {name!r}; only {model_name!r} is loaded (offline)")
            return model

    orig = gma.HookedTransformer
    tok = model.tokenizer
    sides = (getattr(tok, "padding_side", None), getattr(tok, "truncation_side", None))
    gma.HookedTransformer = _LoadedModel  # type: ignore[assignment]
    try:
        yield
    finally:
        gma.HookedTransformer = orig
        # sae-probes sets padding_side="right", truncation_side="left" on the model's tokenizer: restore
        if sides[0] is not None:
            tok.padding_side = sides[0]
        if sides[1] is not None:
            tok.truncation_side = sides[1]


def _summary(d: dict, ks: list[int]) -> dict:
    m = d["eval_result_metrics"]
    out: dict[str, Any] = {f"sae_top_{k}_test_accuracy": m["sae"].get(f"sae_top_{k}_test_accuracy") for k in ks}
    out["llm_test_accuracy"] = m["llm"].get("llm_test_accuracy")
    for k in ks:
        out[f"sae_top_{k}_test_auc"] = m["sae"].get(f"sae_top_{k}_test_auc")
    out["llm_test_auc"] = m["llm"].get("llm_test_auc")
    out["per_dataset_test_accuracy"] = {
        det["dataset_name"]: {
            **{f"k{k}": det.get(f"sae_top_{k}_test_accuracy") for k in ks},
            "llm": det.get("llm_test_accuracy"),
        }
        for det in d["eval_result_details"]
    }
    return out


def _baseline_job(hook: str, ds: str, model_name: str, cache: str, results: str, seed: int, n_threads: int) -> float:
    """One dataset's LLM baseline (sae-probes' run_baseline_dataset_layer, method "logreg"), in a worker."""
    t = time.time()
    install_xgboost_stub()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"sklearn\.")
    warnings.filterwarnings("ignore", message="Inconsistent values: penalty", category=UserWarning)
    from sae_probes.run_baselines import run_baseline_dataset_layer
    from threadpoolctl import threadpool_limits

    with threadpool_limits(n_threads):
        run_baseline_dataset_layer(
            hook, ds, "logreg", model_name=model_name, model_cache_path=cache, results_path=results, seed=seed
        )
    return time.time() - t


class Probing:
    """Sparse probing in two phases, so that the CPU-bound LLM baseline overlaps GPU work:

    ``start`` (needs the model; GPU): fills sae-probes' activation cache for the datasets, dataset by
    dataset, within ``act_budget_s``; then starts a process pool that runs the LLM baseline (the
    costliest part: 11 logistic regressions on the d_model-dim activations per dataset, minutes on
    massive-activation residuals) for each dataset in parallel, in the background.
    ``finish`` (after the SAEs are trained): waits for the baselines until ``deadline`` (time.time()),
    drops the datasets whose baseline did not finish (recorded), then runs SAEBench's run_eval SAE by
    SAE (its baseline step finds the files and skips), validates and copies the outputs.
    """

    def __init__(
        self,
        model: Any,
        hook: str,
        work: Path,
        datasets: list[str],
        device: str,
        model_name: str = "gemma-3-270m",
        ks: tuple[int, ...] = (1, 2, 5),
        seed: int = 42,
        log: Callable[[str], None] = print,
        workers: int | None = None,
    ) -> None:
        self.model, self.hook, self.device, self.model_name = model, hook, device, model_name
        self.datasets, self.ks, self.seed, self.log = list(datasets), tuple(ks), seed, log
        self.workers = workers
        root = Path(work) / "probing"
        self.cache, self.results, self.saebench_out = root / "model_acts", root / "sae_probes", root / "saebench_out"
        self.pool: Any = None
        self.jobs: dict[str, Any] = {}
        self.rec: dict[str, Any] = {
            "eval": "SAEBench sparse_probing_sae_probes (sae-probes), setting normal, reg_type l1, LLM baseline logreg",
            "model_name": model_name,
            "hook": hook,
            "ks": list(ks),
            "datasets_requested": list(datasets),
            "saes": {},
        }

    # ------------------------------------------------------------------ phase 1
    def start(self, act_budget_s: float) -> dict:
        t0 = time.time()
        rec = self.rec
        rec["xgboost_stubbed"] = install_xgboost_stub()
        import sae_probes
        import sae_probes.generate_model_activations as gma

        rec["import_s"] = time.time() - t0
        rec["sae_probes_version"] = _dist_version("sae-probes")
        rec["sklearn_version"] = _dist_version("scikit-learn")
        unknown = [d for d in self.datasets if d not in sae_probes.DATASETS]
        if unknown:
            raise ValueError(f"unknown sae-probes datasets: {unknown}")
        for p in (self.cache, self.results, self.saebench_out):
            p.mkdir(parents=True, exist_ok=True)
        max_len = int(min(1024, self.model.cfg.n_ctx))
        ran: list[str] = []
        act_s: dict[str, float] = {}
        with _model_by_name(self.model, self.model_name):
            for ds in self.datasets:
                slowest = max(act_s.values()) if act_s else 0.0
                if ran and time.time() - t0 + slowest > act_budget_s:
                    self.log(f"sparse probing: activations for {ds} skipped (time budget)")
                    continue
                t = time.time()
                gma.ensure_dataset_activations(
                    model_name=self.model_name,
                    dataset_short_names=[ds],
                    hook_names=[self.hook],
                    model_cache_path=self.cache,
                    device=self.device,
                    max_seq_len=max_len,
                    model=self.model,
                )
                act_s[ds] = time.time() - t
                ran.append(ds)
        rec["datasets_with_activations"] = ran
        rec["activation_seconds"] = act_s
        self.log(
            f"sparse probing: activations for {len(ran)} datasets in {sum(act_s.values()):.1f}s; LLM baselines started"
        )
        # LLM baselines in a spawned process pool (no CUDA in the workers; they read the cached .pt files)
        import multiprocessing as mp
        import os

        # spawned workers import this module by name: they inherit sys.path, where run.py's folder (this
        # file's) comes first because run.py is the script that was started
        n_cpu = os.cpu_count() or 1
        n = max(1, min(len(ran), self.workers or max(1, n_cpu - 2)))
        threads = max(1, (n_cpu - 1) // n)
        rec["baseline_workers"], rec["baseline_threads_per_worker"] = n, threads
        if ran:
            # workers need no GPU: hide it from them (read at their start-up), so none opens a CUDA context
            old = os.environ.get("CUDA_VISIBLE_DEVICES")
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
            try:
                self.pool = mp.get_context("spawn").Pool(n)
            finally:
                if old is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = old
            self.jobs = {
                ds: self.pool.apply_async(
                    _baseline_job,
                    (self.hook, ds, self.model_name, str(self.cache), str(self.results), self.seed, threads),
                )
                for ds in ran
            }
        self.t_baselines = time.time()
        rec["start_seconds"] = time.time() - t0
        return rec

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    # ------------------------------------------------------------------ phase 2
    def finish(
        self,
        saes: list[tuple[str, Callable[[], Any]]],
        out: Path,
        deadline: float,
        on_progress: Callable[[dict], None] | None = None,
    ) -> dict:
        """``saes``: (name, loader returning a SAELens SAE). Stops when ``deadline`` (time.time()) is near."""
        from sae_rdp_plugin.io import atomic_write_text

        t0 = time.time()
        rec = self.rec
        try:
            # ---- wait for the baselines, leaving time for the SAE probes (cheap: k <= 5 features)
            reserve = max(10.0, 0.25 * max(0.0, deadline - t0))
            base_s: dict[str, float | None] = {}
            errors: dict[str, str] = {}
            for ds, job in self.jobs.items():
                job.wait(max(0.0, deadline - reserve - time.time()))
                if job.ready():
                    try:
                        base_s[ds] = job.get()
                    except Exception as exc:  # noqa: BLE001 - recorded per dataset
                        errors[ds] = f"{type(exc).__name__}: {str(exc)[:200]}"
                else:
                    base_s[ds] = None
            self.close()
            ran = [ds for ds in self.jobs if base_s.get(ds) is not None]
            rec["baseline_seconds"] = base_s
            rec["baseline_wait_s"] = time.time() - t0
            rec["baseline_wall_s"] = time.time() - self.t_baselines
            if errors:
                rec["baseline_errors"] = errors
            dropped = [ds for ds in self.jobs if ds not in ran]
            if dropped:
                rec["datasets_dropped_no_baseline"] = dropped
                self.log(f"sparse probing: LLM baseline unfinished for {dropped}: datasets dropped")
            rec["datasets_run"] = ran
            if on_progress:
                on_progress(rec)
            if not ran:
                rec["error"] = "no dataset with activations and a finished baseline within the time budget"
                return rec
            self._run_saes(saes, out, ran, deadline, on_progress, atomic_write_text)
        finally:
            self.close()
        rec["finish_seconds"] = time.time() - t0
        return rec

    def _run_saes(self, saes, out, ran, deadline, on_progress, atomic_write_text) -> None:
        install_xgboost_stub()
        from sae_bench.evals.sparse_probing_sae_probes.eval_config import SparseProbingSaeProbesEvalConfig
        from sae_bench.evals.sparse_probing_sae_probes.eval_output import SparseProbingSaeProbesEvalOutput
        from sae_bench.evals.sparse_probing_sae_probes.main import run_eval
        from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_file

        rec = self.rec
        cfg = SparseProbingSaeProbesEvalConfig(
            model_name=self.model_name,
            random_seed=self.seed,
            dataset_names=ran,
            reg_type="l1",
            setting="normal",
            ks=list(self.ks),
            binarize=False,
            results_path=str(self.results),
            model_cache_path=str(self.cache),
            include_llm_baseline=True,
            baseline_method="logreg",
        )
        rec["config"] = dataclasses.asdict(cfg)
        last = 0.0
        with warnings.catch_warnings(), _model_by_name(self.model, self.model_name):
            # sklearn >= 1.8 deprecates LogisticRegression(penalty=...), which sae-probes passes
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"sklearn\.")
            warnings.filterwarnings("ignore", message="Inconsistent values: penalty", category=UserWarning)
            for name, load in saes:
                if last and deadline - time.time() < 1.2 * last:
                    self.log(f"sparse probing: {name} skipped (time budget; last SAE took {last:.0f}s)")
                    rec["saes"][name] = {"skipped": "time budget"}
                    continue
                t = time.time()
                sae = load()
                release = f"{self.model_name}_{name}"
                run_eval(cfg, [(release, sae)], self.device, str(self.saebench_out), force_rerun=True)
                path = self.saebench_out / f"{release}_custom_sae_eval_results.json"
                validate_eval_output_format_file(str(path), SparseProbingSaeProbesEvalOutput)
                d = json.loads(path.read_text())
                got = sorted(det["dataset_name"] for det in d["eval_result_details"])
                if got != sorted(ran):
                    raise ValueError(f"{name}: results for datasets {got}, expected {sorted(ran)}")
                if any(det.get("llm_test_accuracy") is None for det in d["eval_result_details"]):
                    raise ValueError(f"{name}: LLM baseline missing for some dataset")
                dest = Path(out) / f"{EVAL_TYPE}_{name}.json"
                atomic_write_text(dest, path.read_text())
                last = time.time() - t
                rec["saes"][name] = {
                    **_summary(d, list(self.ks)),
                    "seconds": last,
                    "saebench_json": dest.name,
                    "validated": True,
                }
                s = rec["saes"][name]
                self.log(
                    f"sparse probing {name}: mean test acc "
                    + ", ".join(f"k={k} {s[f'sae_top_{k}_test_accuracy']:.3f}" for k in self.ks)
                    + f"; LLM baseline {s['llm_test_accuracy']:.3f} ({len(ran)} datasets, {last:.0f}s)"
                )
                del sae
                if on_progress:
                    on_progress(rec)


def run_sparse_probing(
    model: Any,
    saes: list[tuple[str, Callable[[], Any]]],
    hook: str,
    work: Path,
    out: Path,
    datasets: list[str],
    budget_s: float,
    device: str,
    model_name: str = "gemma-3-270m",
    ks: tuple[int, ...] = (1, 2, 5),
    seed: int = 42,
    log: Callable[[str], None] = print,
    on_progress: Callable[[dict], None] | None = None,
) -> dict:
    """Both phases back to back (``Probing.start`` then ``Probing.finish``) within ``budget_s``:
    activations get at most 40% of it. Returns the record (also what ran / was dropped)."""
    t0 = time.time()
    p = Probing(model, hook, work, datasets, device, model_name, ks, seed, log)
    try:
        p.start(0.4 * budget_s)
        rec = p.finish(saes, out, t0 + budget_s, on_progress)
    finally:
        p.close()
    rec["budget_s"] = budget_s
    rec["seconds"] = time.time() - t0
    return rec


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="check that sae-probes + SAEBench's sparse_probing_sae_probes import")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    if args.check:
        stubbed = install_xgboost_stub()
        import sae_probes
        from sae_bench.evals.sparse_probing_sae_probes.main import run_eval  # noqa: F401

        missing = [d for d in PROBE_DATASETS if d not in sae_probes.DATASETS]
        if missing:
            print(f"error: datasets missing from sae-probes: {missing}")
            return 3
        print(
            f"probes ok: sae-probes {_dist_version('sae-probes')}, sae-bench {_dist_version('sae-bench')}, "
            f"{len(sae_probes.DATASETS)} datasets, xgboost {'stubbed' if stubbed else 'real'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
