"""The rdp_audit SAEBench eval module and the `sae-rdp audit` CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest
from sae_bench.sae_bench_utils.testing_utils import (
    validate_eval_cli_interface,
    validate_eval_output_format_file,
)

from sae_rdp_plugin.cli import main as cli_main
from sae_rdp_plugin.evals.rdp_audit.eval_config import RdpAuditEvalConfig
from sae_rdp_plugin.evals.rdp_audit.eval_output import RdpAuditEvalOutput
from sae_rdp_plugin.evals.rdp_audit.main import arg_parser, run_eval
from sae_rdp_plugin.evals.rdp_audit.main import main as eval_main


def _output(eval_type, metrics, i, layer=3):
    return {
        "eval_type_id": eval_type,
        "eval_config": {},
        "eval_id": f"id{i}",
        "datetime_epoch_millis": 1,
        "eval_result_metrics": metrics,
        "sae_bench_commit_hash": "h",
        "sae_lens_id": f"blocks.{layer}.sae_{i}",
        "sae_lens_release_id": "toy_release",
        "sae_lens_version": None,
        "sae_cfg_dict": {
            "model_name": "toy",
            "hook_layer": layer,
            "d_sae": 64,
            "architecture": "standard",
            "activation_fn_str": "topk",
            "activation_fn_kwargs": {"k": 2 * i + 1},
        },
    }


def write_sweep(d, n=10, seed=0, layer=3):
    """A chain sweep (rate and distortion both increase with i: every pair is dominated), with a
    faithful proxy (autointerp-like, higher = better, so falling with the budget index... see below)."""
    rng = np.random.default_rng(seed)
    rate = np.sort(rng.uniform(5, 100, n))
    dist = np.sort(rng.uniform(0.05, 0.5, n))
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        core = {"sparsity": {"l0": rate[i], "l1": 1.0}, "reconstruction_quality": {"explained_variance": 1 - dist[i]}}
        (d / f"core_{layer}_{i}.json").write_text(json.dumps(_output("core", core, i, layer)))
        # SAE i < j is under the tighter budget: faithful => Pi_i >= Pi_j => autointerp (Pi = -s) rises with i
        ai = {"autointerp": {"autointerp_score": 0.5 + 0.04 * i, "autointerp_std_dev": 0.1}}
        (d / f"ai_{layer}_{i}.json").write_text(json.dumps(_output("autointerp", ai, i, layer)))
        inv = {"cat": {"score": float(i)}}  # with orientation "+": Pi rises with i = inverted
        (d / f"my_{layer}_{i}.json").write_text(json.dumps(_output("my_eval", inv, i, layer)))
    return rate, dist


def test_run_eval_outputs_validate(tmp_path):
    res_dir = tmp_path / "results"
    write_sweep(res_dir)
    cfg = RdpAuditEvalConfig(
        results_paths=[str(res_dir)],
        proxies=["autointerp_score", "my_eval.cat.score:+"],
        n_bootstrap=200,
        n_permutations=400,
    )
    out = tmp_path / "out"
    res = run_eval(cfg, None, "cpu", str(out))
    assert list(res) == ["toy_L3_w64_topk"]
    f = out / "rdp_audit_toy_L3_w64_topk_eval_results.json"
    validate_eval_output_format_file(str(f), RdpAuditEvalOutput)
    obj = json.loads(f.read_text())
    det = {d["proxy"]: d for d in obj["eval_result_details"]}
    ai = det["autointerp.autointerp.autointerp_score"]
    assert ai["violation_rate"] == 0.0 and ai["rank_correlation"] == pytest.approx(1.0)
    assert ai["verdict"] == "faithful" and ai["n_dominated_pairs"] == 45 and ai["orientation"] == -1
    my = det["my_eval.cat.score"]
    assert my["violation_rate"] == 1.0 and my["verdict"] == "inverted" and my["orientation"] == 1
    assert obj["eval_result_metrics"]["sweep"]["n_saes"] == 10
    assert obj["eval_result_metrics"]["summary"]["n_faithful"] == 1
    assert (out / "rdp_audit_summary.md").read_text().count("toy_L3_w64_topk") == 2
    assert (out / "rdp_audit_toy_L3_w64_topk.png").stat().st_size > 1000


def test_default_proxies_selected_and_sae_filter(tmp_path):
    res_dir = tmp_path / "results"
    write_sweep(res_dir, layer=3)
    write_sweep(res_dir, layer=5, seed=1)
    out = tmp_path / "out"
    # default proxies: known orientations only (autointerp + core.sparsity.l1 control); my_eval is unknown
    cfg = RdpAuditEvalConfig(results_paths=[str(res_dir)], n_bootstrap=50, n_permutations=50, make_plots=False)
    res = run_eval(cfg, [("toy_release", f"blocks.5.sae_{i}") for i in range(10)], "cpu", str(out))
    assert list(res) == ["toy_L5_w64_topk"]
    proxies = {d["proxy"] for d in res["toy_L5_w64_topk"]["eval_result_details"]}
    assert proxies == {"autointerp.autointerp.autointerp_score", "core.sparsity.l1"}
    # SAEBench-style CLI with regex selection, pooled over layers
    eval_main(
        [
            "--results_paths",
            str(res_dir),
            "--sae_regex_pattern",
            "toy_.*",
            "--sae_block_pattern",
            "blocks\\.3\\..*",
            "--output_folder",
            str(tmp_path / "cli"),
            "--group_by",
            "--n_bootstrap",
            "20",
            "--n_permutations",
            "20",
            "--proxies",
            "autointerp_score",
        ]
    )
    obj = json.loads((tmp_path / "cli" / "rdp_audit_pooled_eval_results.json").read_text())
    assert obj["eval_result_metrics"]["sweep"]["n_saes"] == 10
    validate_eval_output_format_file(str(tmp_path / "cli" / "rdp_audit_pooled_eval_results.json"), RdpAuditEvalOutput)


def test_cli_interface_is_saebench_standard():
    validate_eval_cli_interface(arg_parser(), eval_config_cls=RdpAuditEvalConfig)


def test_pareto_front_has_no_pairs_reported_not_crashing(tmp_path):
    d = tmp_path / "front"
    d.mkdir()
    for i in range(5):  # rate up, distortion down: a pure front
        core = {"sparsity": {"l0": 10.0 * (i + 1)}, "reconstruction_quality": {"explained_variance": 0.5 + 0.1 * i}}
        (d / f"c{i}.json").write_text(json.dumps(_output("core", core, i)))
        (d / f"a{i}.json").write_text(json.dumps(_output("autointerp", {"a": {"autointerp_score": 0.1 * i}}, i)))
    res = run_eval(
        RdpAuditEvalConfig(
            results_paths=[str(d)], proxies=["autointerp_score"], n_bootstrap=20, n_permutations=20, make_plots=False
        ),
        None,
        "cpu",
        str(tmp_path / "o"),
    )
    det = next(iter(res.values()))["eval_result_details"][0]
    assert det["n_dominated_pairs"] == 0 and det["violation_rate"] is None
    assert det["rank_correlation"] is None and det["verdict"] == "undefined"
    validate_eval_output_format_file(str(next((tmp_path / "o").glob("*_eval_results.json"))), RdpAuditEvalOutput)


def test_cli_run_and_errors(tmp_path, capsys):
    res_dir = tmp_path / "results"
    write_sweep(res_dir)
    out = tmp_path / "out"
    rc = cli_main(
        [
            "audit",
            "run",
            "--results",
            str(res_dir),
            "--proxy",
            "autointerp_score",
            "--proxy",
            "my_eval.cat.score:-",
            "--n-boot",
            "50",
            "--n-perm",
            "50",
            "--no-plots",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert "faithful" in capsys.readouterr().out
    cases = [
        (["--proxy", "my_eval.cat.score"], "unknown metric 'my_eval.cat.score'"),
        (["--proxy", "nonexistent_metric"], "no metric 'nonexistent_metric'"),
        (["--proxy", "sparse_probing.llm.llm_test_accuracy:"], "bad proxy spec"),
    ]
    for extra, msg in cases:
        rc = cli_main(["audit", "run", "--results", str(res_dir), "--out", str(out), "--n-perm", "5"] + extra)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and err.startswith("error: ") and msg in err and "\n" not in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.json").write_text("{oops")
    rc = cli_main(["audit", "run", "--results", str(tmp_path / "bad"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "x.json: malformed JSON" in err


def test_cli_orientations_subprocess():
    r = subprocess.run(
        [sys.executable, "-m", "sae_rdp_plugin", "audit", "orientations"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "sparse_probing.sae.sae_top_*_test_accuracy | -s | proxy" in r.stdout


def test_bundled_audit_matches_brute_force(tmp_path):
    """The bundled pipeline's V for one (sweep, control) equals a brute-force count on the shipped CSV."""
    import csv
    import itertools

    from sae_rdp_plugin.audit.readers import BUNDLED_DIR, read_bundled

    t = read_bundled(None).where(model="pythia-70m-deduped", layer=3)
    cfg = RdpAuditEvalConfig(
        group_by=["model", "layer"],
        distortion_field="basic.l2_loss",
        proxies=["cossim"],
        n_bootstrap=20,
        n_permutations=20,
        make_plots=False,
    )
    res = run_eval(cfg, None, "cpu", str(tmp_path), table=t)
    row = res["pythia-70m-deduped_L3"]["eval_result_details"][0]
    with open(BUNDLED_DIR / "core_2024-09_final.csv") as f:
        recs = [r for r in csv.DictReader(f) if r["model"] == "pythia-70m-deduped" and r["layer"] == "3"]
    R = [float(r["core.sparsity.l0"]) for r in recs]
    D = [float(r["basic.l2_loss"]) for r in recs]
    P = [-float(r["core.reconstruction_quality.cossim"]) for r in recs]
    num = den = 0.0
    for i, j in itertools.permutations(range(len(R)), 2):
        if R[i] <= R[j] and D[i] <= D[j] and (R[i], D[i]) != (R[j], D[j]):
            den += 1
            num += 1.0 if P[i] < P[j] else 0.5 if P[i] == P[j] else 0.0
    assert row["n_saes"] == len(R) and row["n_dominated_pairs"] == den
    assert row["violation_rate"] == pytest.approx(num / den)
    assert row["proxy"] == "core.reconstruction_quality.cossim" and row["orientation"] == -1


@pytest.mark.slow
def test_demo_section(tmp_path):
    from sae_rdp_plugin.commands.audit import demo_section

    md = demo_section(tmp_path)
    assert "sae_top_20" in md and "(audit/rdp_audit_gemma-2-2b_L19.png)" in md
    assert (tmp_path / "audit" / "rdp_audit_gemma-2-2b_L19.png").exists()


@pytest.mark.slow
def test_proxy_validation_quick(tmp_path):
    """The synthetic proxy-validation runner end to end (4 tiny SAELens TopK SAEs)."""
    from pathlib import Path

    script = Path(__file__).parents[2] / "experiments" / "proxy_validation" / "run.py"
    r = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    obj = json.loads((tmp_path / "results.json").read_text())
    assert len(obj["saes"]) == 4 and {t["proxy"] for t in obj["audit"]} >= {"P_true", "dec_redundancy"}
    assert all(0 <= s["P_true"] <= 1 for s in obj["saes"])
