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
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from probing_stage import ProbeSAE

EVAL_TYPE = "absorption_first_letter"


@contextlib.contextmanager
def offline_absorption(model: Any, model_name: str, work: Path):
    """Within the block SAEBench's absorption eval uses ``model`` and writes only under ``work``."""
    import sae_bench.evals.absorption.main as am
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
    grad = torch.is_grad_enabled()
    work.mkdir(parents=True, exist_ok=True)
    am.HookedTransformer = _LoadedModel  # type: ignore[assignment]
    am.run_k_sparse_probing_experiment = functools.partial(orig[1], experiment_dir=ksp, probes_dir=probes)
    am.run_feature_absortion_experiment = functools.partial(
        orig[2],
        experiment_dir=res / FEATURE_ABSORPTION_EXPERIMENT_NAME,
        sparse_probing_experiment_dir=ksp,
        probes_dir=probes,
    )
    try:
        with contextlib.chdir(work):
            yield
    finally:
        am.HookedTransformer, am.run_k_sparse_probing_experiment, am.run_feature_absortion_experiment = orig
        torch.set_grad_enabled(grad)


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
) -> dict:
    """SAE by SAE until ``deadline`` (time.time()) or ``max_saes`` new JSONs; an existing destination is skipped.
    ``config``: fields of SAEBench's ``AbsorptionEvalConfig`` other than ``model_name`` (default: its defaults)."""
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
    from sae_bench.evals.absorption.eval_output import AbsorptionEvalOutput
    from sae_bench.evals.absorption.main import run_eval
    from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_file

    cfg = AbsorptionEvalConfig(model_name=model_name, **(config or {}))
    existing = [s.name for s in saes if s.dest.is_file()]
    todo = [s for s in saes if not s.dest.is_file()]
    rec: dict[str, Any] = {"eval": f"SAEBench {EVAL_TYPE}", "existing": existing, "evaluated": [], "sae_s": {}}
    raw = work / "saebench_out"
    with offline_absorption(model, model_name, work):
        raw.mkdir(parents=True, exist_ok=True)
        for s in todo:
            if max_saes is not None and len(rec["evaluated"]) >= max_saes:
                break
            if rec["sae_s"] and time.time() + 1.3 * max(rec["sae_s"].values()) > deadline:
                break
            t = time.time()
            release = s.dest.stem  # unique per SAE: SAEBench caches k-sparse probing results per release
            out = raw / f"{release}_custom_sae_eval_results.json"
            out.unlink(missing_ok=True)
            run_eval(cfg, [(release, s.load())], device, str(raw), force_rerun=True)
            if not out.is_file():
                # run_eval stops without output: < min_feats_for_eval letters with probe F1 > min_GT_probe_f1
                # (a property of the model-layer, the same for every SAE)
                rec["not_evaluable"] = (
                    f"fewer than {cfg.min_feats_for_eval} first letters with a probe F1 > {cfg.min_GT_probe_f1}"
                )
                log(f"absorption: {rec['not_evaluable']} ({model_name}); no SAE evaluated")
                break
            obj = s.finalize(json.loads(out.read_text()))
            s.dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = s.dest.with_name(f".{s.dest.name}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_text(json.dumps(obj, indent=1) + "\n")
            try:
                validate_eval_output_format_file(str(tmp), AbsorptionEvalOutput)
            except Exception:
                tmp.unlink()
                raise
            os.replace(tmp, s.dest)
            rec["sae_s"][s.name] = round(time.time() - t, 2)
            rec["evaluated"].append(s.name)
            m = obj["eval_result_metrics"]["mean"]
            log(
                f"absorption {s.name}: fraction {m['mean_absorption_fraction_score']:.3f}, full "
                f"{m['mean_full_absorption_score']:.3f}, split features {m['mean_num_split_features']:.2f} "
                f"({rec['sae_s'][s.name]:.0f} s)"
            )
    rec["config"] = dataclasses.asdict(cfg)
    rec["left"] = [s.name for s in todo if s.name not in rec["evaluated"]]
    rec["complete"] = not rec["left"]
    return rec
