"""The audit keeps the names of the models users name (Pythia-70M / 160M, GPT-2) on their SAEBench results.

Held data: the shipped tables (sae_rdp_plugin/audit/data/saebench/) and ../shared/data/saebench/ hold
Pythia-70M-deduped results only (2024 core and sparse probing, SAEBench 0.6.0 acceptance outputs); no GPT-2 or
Pythia-160M results are shipped or held, so those are SAEBench outputs written here in the layouts SAEBench
and SAELens produce. Expected names are read from the raw files, not from the reader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sae_rdp_plugin.audit.readers import read_bundled, read_results

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "saebench"
OLD = SHARED / "SAE_Bench_Template_sae_bench_data_2024-09"
OLD_SP = SHARED / "SAE_Bench_Template_sparse_probing_2024-09"
ACC = SHARED / "SAEBench_acceptance_test_data_v0.6.0"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared SAEBench data not present")


def test_bundled_tables_name_pythia_70m():
    """Every Pythia row of the shipped tables says pythia-70m-deduped, Gemma rows gemma-2-2b: nothing else,
    nothing missing."""
    for run in (None, "A", "A2", "B"):
        t = read_bundled(run)
        for rel, model in zip(t.meta["release"], t.meta["model"], strict=True):
            assert model == ("pythia-70m-deduped" if "pythia" in rel else "gemma-2-2b"), (run, rel, model)
        assert t.meta["model"].count("pythia-70m-deduped") > 0


@needs_shared
def test_2024_files_keep_the_model_of_their_trainers():
    """The 2024 core files name the model in each trainer's lm_name (EleutherAI/pythia-70m-deduped); the
    reader keeps the name without the organisation, as in the shipped tables and SAELens's release names."""
    for f in sorted(OLD.glob("sae_bench_pythia70m_*_data.json")):
        raw = json.loads(f.read_text())["sae_config_dictionary_learning"]
        want = {v["trainer"]["lm_name"].split("/")[-1] for v in raw.values()}
        t = read_results(f, warn=False)
        assert len(t) == len(raw) and set(t.meta["model"]) == want == {"pythia-70m-deduped"}
    for name in ("example_pythia-70m-deduped_layer_4", "example_results_sae_bench_pythia70m_sweep_topk_ctx128_0730"):
        f = OLD_SP / f"{name}_eval_results.json"
        want = json.loads(f.read_text())["custom_eval_config"]["model_name"]
        assert set(read_results(f, warn=False).meta["model"]) == {want}


def _acceptance(name: str) -> tuple[Path, dict]:
    f = next(ACC.rglob(name))
    obj = json.loads(f.read_text())
    return f, obj if "eval_type_id" in obj else next(iter(obj.values()))


@needs_shared
@pytest.mark.parametrize("name", ["absorption_expected_results.json", "pythia70m_tr10_meta_structure.json"])
def test_acceptance_outputs_with_the_model_in_their_sae_cfg(name):
    f, obj = _acceptance(name)
    cfg = obj["sae_cfg_dict"]
    want = cfg.get("model_name") or cfg["metadata"]["model_name"]
    assert want == "pythia-70m-deduped" and read_results(f, warn=False).meta["model"] == [want]


@needs_shared
@pytest.mark.parametrize(
    "name",
    [
        "core_expected_results.json",
        "autointerp_expected_results.json",
        "scr_expected_results.json",
        "tpp_expected_results.json",
        "sparse_probing_expected_results.json",
    ],
)
def test_acceptance_outputs_with_the_model_only_in_their_eval_config(name):
    f, obj = _acceptance(name)
    assert "pythia70m" in obj["sae_lens_release_id"]
    assert read_results(f, warn=False).meta["model"] == [obj["eval_config"]["model_name"]]


def core_output(model: str, release: str, sid: str, layer: int, l0: float, ev: float, proxy: float, v6: bool) -> dict:
    """A SAEBench core output; ``v6``: SAELens 6 (model and hook under sae_cfg_dict.metadata), else the
    pre-6 cfg (model_name, hook_name, hook_layer at its top level)."""
    where = {"model_name": model, "hook_name": f"blocks.{layer}.hook_resid_pre"}
    cfg = {"architecture": "standard", "d_in": 768, "d_sae": 24576}
    cfg |= {"metadata": where} if v6 else where | {"hook_layer": layer}
    return {
        "eval_type_id": "core",
        "eval_config": {"model_name": model},
        "eval_id": sid,
        "datetime_epoch_millis": 1,
        "eval_result_metrics": {
            "sparsity": {"l0": l0},
            "reconstruction_quality": {"explained_variance": ev},
            "probe": {"proxy": proxy},
        },
        "sae_bench_commit_hash": "h",
        "sae_lens_id": sid,
        "sae_lens_release_id": release,
        "sae_lens_version": "6.54.0" if v6 else "5.0.0",
        "sae_cfg_dict": cfg,
    }


def test_gpt2_and_pythia_160m_results_keep_their_names_through_the_audit(tmp_path):
    """SAELens's gpt2-small release (SAELens 6 and pre-6 cfgs) and SAEBench's Pythia-160M custom SAEs (model
    named with its organisation, as SAEBench's custom_saes write it): the reader keeps each name, without the
    organisation (older SAEBench files of the same model omit it: one model, one sweep), and rdp_audit's
    sweeps are those models, named in their output."""
    from sae_rdp_plugin.evals.rdp_audit.eval_config import RdpAuditEvalConfig
    from sae_rdp_plugin.evals.rdp_audit.main import run_eval

    written = {}
    for i, (l0, ev, proxy) in enumerate([(20, 0.7, 0.1), (40, 0.8, 0.3), (80, 0.9, 0.2), (160, 0.95, 0.5)]):
        for model, release, v6 in (
            ("gpt2-small", "gpt2-small-res-jb", i % 2 == 0),
            ("EleutherAI/pythia-160m-deduped", "saebench_pythia-160m-deduped_width-2pow14_date-0104", True),
        ):
            sid = f"blocks.8.hook_resid_pre__trainer_{i}"
            obj = core_output(model, release, sid, 8, l0, ev, proxy, v6)
            path = tmp_path / "res" / f"{release}_{sid}_eval_results.json"
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(obj))
            written[f"{release}/{sid}"] = model.split("/")[-1]
    t = read_results(tmp_path / "res", warn=False)
    assert dict(zip(t.keys, t.meta["model"], strict=True)) == written
    assert set(t.meta["layer"]) == {8}
    cfg = RdpAuditEvalConfig(
        results_paths=[str(tmp_path / "res")],
        proxies=["core.probe.proxy:+"],
        group_by=["model", "layer"],
        n_bootstrap=50,
        n_permutations=50,
        make_plots=False,
    )
    res = run_eval(cfg, None, "cpu", str(tmp_path / "audit"))
    sweeps = {
        (o["eval_result_unstructured"]["sweep"]["model"], o["eval_result_metrics"]["sweep"]["n_saes"])
        for o in res.values()
    }
    assert sweeps == {("gpt2-small", 4), ("pythia-160m-deduped", 4)}
