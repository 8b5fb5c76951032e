"""The committed Gemma-3-270M probing re-run (experiments/gemma3_270m/probing_run/, H100, 2026-11-23) is well formed:
the three SAEBench sparse_probing_sae_probes JSONs pass SAEBench's own validator, and results.json agrees
with them and with itself (means recomputed from the per-dataset numbers, CE/KL scores recomputed from
their raw losses, tokens = steps x batch). The first run's metrics are compared where the docs claim the
re-run reproduced them. Reads JSON only (fast); the validator test needs the optional sae-probes extra.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "experiments" / "gemma3_270m" / "probing_run"
FIRST = ROOT / "experiments" / "gemma3_270m" / "gpu_run" / "results.json"
SAES = ("wsae_topk_alpha0", "wsae_topk_alpha0.5", "wsae_topk_alpha1")
KS = (1, 2, 5)

needs_probes = pytest.mark.skipif(
    importlib.util.find_spec("sae_probes") is None or importlib.util.find_spec("zstandard") is None,
    reason="sae-probes / zstandard not installed (scripts/setup.sh; extra [probes])",
)


def _results() -> dict:
    return json.loads((RUN / "results.json").read_text())


def _saebench(name: str) -> dict:
    return json.loads((RUN / f"sparse_probing_sae_probes_{name}.json").read_text())


def _mean(xs: list[float]) -> float:
    return math.fsum(xs) / len(xs)


@needs_probes
@pytest.mark.parametrize("name", SAES)
def test_saebench_validator_accepts_committed_json(name, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments" / "gemma3_270m"))
    gp = importlib.import_module("probing")  # experiments/gemma3_270m/probing.py
    gp.install_xgboost_stub()  # sae-probes imports xgboost at module level; only its xgboost baseline uses it
    from sae_bench.evals.sparse_probing_sae_probes.eval_output import SparseProbingSaeProbesEvalOutput
    from sae_bench.sae_bench_utils.testing_utils import validate_eval_output_format_file
    from sae_probes import DATASETS

    f = RUN / f"sparse_probing_sae_probes_{name}.json"
    validate_eval_output_format_file(str(f), SparseProbingSaeProbesEvalOutput)
    d = json.loads(f.read_text())
    assert set(d["eval_config"]["dataset_names"]) <= set(DATASETS)


def test_run_header():
    R = _results()
    assert R["run"]["finished"] is True
    assert R["run"]["device"] == "NVIDIA H100 80GB HBM3"
    assert R["run"]["started_utc"].startswith("2026-11-23")
    assert R["run"]["args"]["skip_sweep"] is True and R["sweep"] == {}
    assert sorted(R["main"]) == sorted(SAES)
    sp = R["sparse_probing"]
    assert sp["datasets_requested"] == sp["datasets_run"] and len(sp["datasets_run"]) == 12
    assert not sp.get("datasets_dropped_no_baseline") and "error" not in sp
    assert sp["sklearn_version"] and sp["sae_probes_version"] == "0.4.2"


@pytest.mark.parametrize("name", SAES)
def test_training_and_run_evals_consistent(name):
    R = _results()
    m, a = R["main"][name], R["run"]["args"]
    assert m["tokens_trained"] == m["steps"] * a["batch"] <= a["main_tokens"]
    assert m["alpha"] == float(name.removeprefix("wsae_topk_alpha")) and m["k"] == a["k"] and m["d_sae"] == a["d_sae"]
    ev = m["saelens_evals"]
    ce = "model_performance_preservation/ce_loss_"
    ce_score = (ev[ce + "with_ablation"] - ev[ce + "with_sae"]) / (ev[ce + "with_ablation"] - ev[ce + "without_sae"])
    assert ev[ce + "score"] == pytest.approx(ce_score, abs=1e-6)
    kl = "model_behavior_preservation/kl_div_"
    kl_score = (ev[kl + "with_ablation"] - ev[kl + "with_sae"]) / ev[kl + "with_ablation"]
    assert ev[kl + "score"] == pytest.approx(kl_score, abs=1e-6)
    h = m["heldout"]
    assert h["dead_fraction"] == pytest.approx(h["dead_latents"] / m["d_sae"]) and h["l0"] == pytest.approx(a["k"])


@pytest.mark.parametrize("name", SAES)
def test_probing_means_equal_mean_of_per_dataset(name):
    """results.json's per-SAE means = mean of its per-dataset accuracies; both equal the SAEBench JSON's."""
    sp = _results()["sparse_probing"]
    s = sp["saes"][name]
    per = s["per_dataset_test_accuracy"]
    assert sorted(per) == sorted(sp["datasets_run"])
    for k in KS:
        assert s[f"sae_top_{k}_test_accuracy"] == pytest.approx(_mean([per[d][f"k{k}"] for d in per]), abs=1e-12)
    assert s["llm_test_accuracy"] == pytest.approx(_mean([per[d]["llm"] for d in per]), abs=1e-12)
    assert all(0.0 <= v <= 1.0 for d in per.values() for v in d.values())

    d = _saebench(name)
    assert s["saebench_json"] == f"sparse_probing_sae_probes_{name}.json" and s["validated"] is True
    assert d["eval_type_id"] == "sparse_probing_sae_probes" and d["sae_lens_release_id"].endswith(name)
    assert d["eval_config"]["dataset_names"] == sp["datasets_run"] and d["eval_config"]["ks"] == list(KS)
    det = {row["dataset_name"]: row for row in d["eval_result_details"]}
    assert sorted(det) == sorted(per)
    met = d["eval_result_metrics"]
    for k in KS:
        for ds in per:
            assert det[ds][f"sae_top_{k}_test_accuracy"] == per[ds][f"k{k}"]
        for metric in ("accuracy", "auc"):
            col = f"sae_top_{k}_test_{metric}"
            mean = _mean([det[ds][col] for ds in det])
            assert met["sae"][col] == pytest.approx(mean, abs=1e-12)
            assert s[col] == pytest.approx(mean, abs=1e-12)
    for metric in ("accuracy", "auc"):
        col = f"llm_test_{metric}"
        assert met["llm"][col] == pytest.approx(_mean([det[ds][col] for ds in det]), abs=1e-12)
        assert s[col] == pytest.approx(met["llm"][col], abs=1e-12)


def test_llm_baseline_shared_across_saes():
    """The LLM baseline probes the residual stream, not the SAE: identical per dataset for every SAE."""
    sp = _results()["sparse_probing"]
    llm = [{ds: v["llm"] for ds, v in sp["saes"][n]["per_dataset_test_accuracy"].items()} for n in SAES]
    assert llm[0] == llm[1] == llm[2]


@pytest.mark.parametrize("name", SAES)
def test_rerun_reproduces_first_run_metrics(name):
    """The docs say the re-run (same seeds/config, PyTorch kernels) reproduced the first run's metrics exactly."""
    first = json.loads(FIRST.read_text())["main"][name]
    again = _results()["main"][name]
    for key in ("tokens_trained", "steps", "train_dead_latents", "heldout", "saelens_evals"):
        assert again[key] == first[key], key
