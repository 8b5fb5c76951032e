"""The table2 WSAE arm's massive-activation safe variant: recipe -> plan.json -> run_stage's TrainConfig carries
``variance_cap_quantile``, its SAEs are trained (not skipped) under ids of their own, and PLAN.md's count of
capped dimensions agrees with torch.quantile."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch

EXP = Path(__file__).resolve().parents[2] / "experiments" / "table2"


@pytest.fixture
def mods(monkeypatch):
    monkeypatch.syspath_prepend(str(EXP))
    spec = importlib.util.spec_from_file_location("table2_plan", EXP / "plan.py")  # "plan" is too common a name
    plan = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plan)
    return plan, importlib.import_module("run_stage")


def test_capped_variant_reaches_the_train_config(mods):
    plan_mod, rs = mods
    recipe = json.loads((EXP / "recipe.json").read_text())
    plan = json.loads((EXP / "plan.json").read_text())
    assert plan["saes"] == plan_mod.expand(recipe)  # plan.json is regenerated from this recipe
    wsae = [s for s in plan["saes"] if s["stage"] == "W-wsae"]
    capped = [s for s in wsae if "variance_cap_quantile" in s]
    assert [(s["alpha"], s["variance_cap_quantile"], s["seed"]) for s in capped] == [(1.0, 0.99, 0), (1.0, 0.99, 1)]
    assert all("/capq=0.99/" in s["id"] for s in capped)
    ids = [rs.sae_lens_id(s, "final") for s in wsae]
    assert len(set(ids)) == len(ids) == 8
    assert rs.sae_lens_id(capped[0], "final").endswith("_k32_alpha1_capq0.99_s0_step_final")
    args = argparse.Namespace(batch_size=None, tokens_scale=1e-3, device="cpu")
    for s in wsae:
        cfg = rs.train_config(s, 640, recipe, args, 0)
        assert cfg.variance_cap_quantile == s.get("variance_cap_quantile")
        assert cfg.alpha == s["alpha"] and cfg.architecture == "weighted_topk"
    assert rs.train_config(capped[0], 640, recipe, args, 0).sae_config_dict()["variance_cap_quantile"] == 0.99


@pytest.mark.parametrize("d", [5, 12, 576, 640])
@pytest.mark.parametrize("q", [0.25, 0.5, 0.9, 0.99, 1.0])
def test_capped_dimension_count_matches_torch(mods, d, q):
    plan_mod, _ = mods
    v = torch.randperm(d, generator=torch.Generator().manual_seed(d)).to(torch.float64) + 1  # distinct variances
    assert plan_mod.capped_dimensions(d, q) == int((v > torch.quantile(v, q)).sum())


def test_plan_sums_the_recorded_device_calls_per_stage(mods, tmp_path):
    """PLAN.md's "spent so far" column: every call's GPU seconds of a stage, over model-layer folders only."""
    plan_mod, _ = mods
    (tmp_path / "m-L9").mkdir()
    (tmp_path / "archive" / "m-L9-old").mkdir(parents=True)
    rec = {"stage": "T-m-9-topk", "calls": [{"gpu_s": 100.0}, {"gpu_s": 20.5}], "gpu_s_total": 120.5}
    (tmp_path / "m-L9" / "stage_T-m-9-topk.json").write_text(json.dumps(rec))
    (tmp_path / "m-L9" / "stage_E-m-9.json").write_text(json.dumps({"stage": "E-m-9", "calls": [], "gpu_s_total": 0}))
    (tmp_path / "archive" / "m-L9-old" / "stage_T-m-9-topk.json").write_text(json.dumps({**rec, "gpu_s_total": 9e9}))
    assert plan_mod.spent(tmp_path) == {"T-m-9-topk": 120.5, "E-m-9": 0.0}
    assert plan_mod.spent(tmp_path / "missing") == {}
