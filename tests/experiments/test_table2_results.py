"""The committed table2 results are consistent with their own ids: every eval JSON sits under the name its
release and SAE id give (run_stage.eval_json_name), its release names its model-layer folder and the
architecture its config was trained as, and no two files describe one SAE in one eval folder. A bundle
collected under another SAE's name (as a BatchTopK bundle once overwrote TopK JSONs) fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path

from script_loader import load_script

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments" / "table2" / "results"
RELEASE = re.compile(r"^table2-(?P<ml>.+-L\d+)-(?P<arch>[a-z_]+)$")


def test_committed_eval_jsons_are_named_by_their_ids(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "experiments" / "table2"))  # run_stage imports its sibling scripts
    rs = load_script("t2_run_stage_results", "experiments/table2/run_stage.py")
    files = [f for d in rs.EVAL_DIRS for f in RESULTS.glob(f"**/{d}/*.json")]
    assert len(files) > 100  # the Gemma sweep is committed
    seen: set[tuple[Path, str, str]] = set()
    for f in files:
        d = json.loads(f.read_text())
        rel, sid = d["sae_lens_release_id"], d["sae_lens_id"]
        assert f.name == rs.eval_json_name(rel, sid), f
        m = RELEASE.match(rel)
        assert m, (f, rel)
        folder = f.parent.parent.name
        assert folder == m["ml"] or folder.startswith(m["ml"] + "-"), (f, rel)  # archive folders add a suffix
        cfg_arch = (d.get("sae_cfg_dict") or {}).get("training_architecture")
        assert cfg_arch in (None, m["arch"]), (f, cfg_arch)
        key = (f.parent, rel, sid)
        assert key not in seen, f
        seen.add(key)


def test_findings_wsae_reading_holds_in_its_jsons():
    """FINDINGS.md's WSAE reading: uncapped alpha 1 mostly dead with about no CE loss recovered, uncapped alpha 0.5
    in between, the 0.99-quantile cap keeps alpha 1 near (below) alpha 0 on every measure; seeds agree closely."""
    rep = load_script("t2_report_wsae", "experiments/table2/report.py")
    lines = rep.wsae_variants(ROOT / "experiments/table2/results/gemma3-270m-L9")
    v = {}
    for line in lines:
        level = line.split("`")[1]
        nums = [float(x) for x in re.findall(r"-?\d+\.\d+", line.split(":", 1)[1])]
        v[level] = {"ce": nums[0:2], "ev": nums[2:4], "dead": nums[4:6]}
    assert set(v) == {"k32_alpha0", "k32_alpha0.5", "k32_alpha1", "k32_alpha1_capq0.99"}
    a0, a05, a1, cap = v["k32_alpha0"], v["k32_alpha0.5"], v["k32_alpha1"], v["k32_alpha1_capq0.99"]
    assert max(map(abs, a1["ce"])) < 0.05 and min(a1["dead"]) > 0.9
    assert max(a1["ce"]) < min(a05["ce"]) <= max(a05["ce"]) < min(cap["ce"]) <= max(cap["ce"]) < min(a0["ce"])
    for m in ("ce", "ev"):
        assert max(a0[m]) - min(cap[m]) < 0.1  # close to alpha 0, below it
    assert min(cap["dead"]) > max(a0["dead"]) and max(cap["dead"]) < 0.5
    for x in v.values():
        assert abs(x["ce"][0] - x["ce"][1]) < 0.05 and abs(x["ev"][0] - x["ev"][1]) < 0.05
    text = " ".join((ROOT / "experiments/table2/FINDINGS.md").read_text().split())
    assert "uncapped alpha 1 leaves most latents dead and recovers about none of the CE loss" in text


def test_deterministic_rerun_reproduced_r3(monkeypatch):
    """docs/fast_training.md's claim: r3's 4k TopK SAEs, retrained a day later in the deterministic mode (five in
    lockstep instead of ten), have what the SAE alone decides (collect.SAME_SAE_FIELDS) equal to the last digit."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments" / "table2"))
    col = load_script("t2_collect_rerun", "experiments/table2/collect.py")
    r3 = RESULTS / "replicates" / "gemma3-270m-L9-topk-r3"
    rerun = sorted((r3 / "rerun_2026-12-06" / "train_summaries").glob("*.json"))
    assert len(rerun) == 5
    for f in rerun:
        new, old = json.loads(f.read_text()), json.loads((r3 / "train_summaries" / f.name).read_text())
        assert new["fast_deterministic"] is True and new["n_saes"] == 5 and old["n_saes"] == 10, f
        for k in col.SAME_SAE_FIELDS:
            assert new[k] == old[k] and new[k] is not None, (f.name, k)


def test_paper_proxy_columns_exist_in_committed_saebench_jsons(monkeypatch):
    """Each column report.py maps to a paper proxy names a number in a committed SAEBench JSON of its eval
    (``<eval folder>.<path in eval_result_metrics>``): a column missing a level (absorption's ``mean.``) left the
    paper comparison silently empty."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments" / "table2"))
    report = load_script("t2_report_paper_cols", "experiments/table2/report.py")
    assert report.PAPER_PROXY_OF
    for column in report.PAPER_PROXY_OF:
        folder, *path = column.split(".")
        files = sorted(RESULTS.glob(f"**/{folder}/*.json"))
        assert files, column
        value = json.loads(files[0].read_text())["eval_result_metrics"]
        for key in path:
            assert key in value, (column, files[0], key)
            value = value[key]
        assert isinstance(value, float | int), (column, value)
