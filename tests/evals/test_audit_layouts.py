"""rdp_audit in SAEBench's own folder layout: re-runs, missing grouping keys, the checkpoint filter."""

import json

import pytest
from test_audit_eval import write_sweep

from sae_rdp_plugin.cli import main as cli_main
from sae_rdp_plugin.evals.rdp_audit.eval_config import RdpAuditEvalConfig
from sae_rdp_plugin.evals.rdp_audit.main import main as eval_main
from sae_rdp_plugin.evals.rdp_audit.main import run_eval

QUICK = ["--n_bootstrap", "30", "--n_permutations", "30", "--make_plots", "false"]


def _stable(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("eval_id", "datetime_epoch_millis")}


def test_second_run_in_the_readme_layout_gives_the_same_result(tmp_path):
    res = tmp_path / "eval_results"
    write_sweep(res / "core", n=8)
    write_sweep(res / "core", n=8, seed=1, layer=5)  # two sweeps of one release: two rdp_audit files keyed alike
    args = ["--results_paths", str(res), "--output_folder", str(res / "rdp_audit"), "--force_rerun"] + QUICK
    first = eval_main(args)
    files = sorted((res / "rdp_audit").glob("*_eval_results.json"))
    before = {f.name: json.loads(f.read_text()) for f in files}
    second = eval_main(args)  # reads eval_results/ again, rdp_audit/ included
    assert list(second) == list(first) and len(files) == 2
    for f in files:
        assert _stable(json.loads(f.read_text())) == _stable(before[f.name])


def test_missing_grouping_key_warns(tmp_path):
    res = tmp_path / "res"
    write_sweep(res, n=6)
    for f in res.glob("*_3_0.json"):  # every file of SAE 0: no layer anywhere
        o = json.loads(f.read_text())
        o["sae_cfg_dict"].pop("hook_layer")
        f.write_text(json.dumps(o))
    cfg = RdpAuditEvalConfig(results_paths=[str(res)], n_bootstrap=20, n_permutations=20, make_plots=False)
    with pytest.warns(UserWarning, match=r"1 of 6 SAEs have no 'layer'"):
        run_eval(cfg, None, "cpu", str(tmp_path / "out"))
    summary = json.loads((tmp_path / "out" / "rdp_audit_summary.json").read_text())
    assert any("have no 'layer'" in r for r in summary["reader_report"])


def test_checkpoint_filter_in_config_and_cli(tmp_path, capsys):
    res = tmp_path / "res"
    write_sweep(res, n=6)
    for f in list(res.glob("*.json")):  # the same sweep again, as training checkpoints
        o = json.loads(f.read_text())
        o["sae_lens_id"] += "_step_100"
        for cat in o["eval_result_metrics"].values():
            for m in cat:
                cat[m] = cat[m] * 1.01
        (res / f"ck_{f.name}").write_text(json.dumps(o))
    n = {}
    for mode in ("exclude", "only", "all"):
        cfg = RdpAuditEvalConfig(
            results_paths=[str(res)], checkpoints=mode, n_bootstrap=20, n_permutations=20, make_plots=False
        )
        out = run_eval(cfg, None, "cpu", str(tmp_path / mode))
        (obj,) = out.values()
        n[mode] = obj["eval_result_metrics"]["sweep"]["n_saes"]
        assert all(s.endswith("_step_100") == (mode == "only") for s in obj["eval_result_unstructured"]["saes"]) or (
            mode == "all"
        )
    assert n == {"exclude": 6, "only": 6, "all": 12}
    legacy = RdpAuditEvalConfig(results_paths=[str(res)], include_checkpoints=True, n_bootstrap=20, n_permutations=20)
    assert (
        next(iter(run_eval(legacy, None, "cpu", str(tmp_path / "legacy")).values()))["eval_result_metrics"]["sweep"][
            "n_saes"
        ]
        == 12
    )
    args = ["audit", "run", "--results", str(res), "--checkpoints", "only", "--n-boot", "20", "--n-perm", "20"]
    assert cli_main(args + ["--no-plots", "--out", str(tmp_path / "cli")]) == 0
    capsys.readouterr()
    rows = json.loads((tmp_path / "cli" / "rdp_audit_summary.json").read_text())["rows"]
    assert rows and {r["n_saes"] for r in rows} == {6}


@pytest.mark.parametrize(
    "args, words",
    [
        (["-m", "sae_rdp_plugin.evals.rdp_synthetic.main", "--sae_paths", "x"], "--dgp"),
        (["-m", "sae_rdp_plugin.evals.rdp_synthetic.main", "--n_samples", "many"], "n_samples"),
        (["-m", "sae_rdp_plugin.evals.rdp_audit.main", "--results_paths", "/no/such/folder"], "/no/such/folder"),
        (["-m", "sae_rdp_plugin.evals.rdp_audit.main", "--results_paths", "r", "--bogus"], "--bogus"),
        (["-m", "sae_rdp_plugin", "sweep", "run", "--config", "c.json", "--out", "o", "--nope"], "--nope"),
        (["-m", "sae_rdp_plugin", "sweep", "run"], "--config"),
    ],
)
def test_entry_points_fail_with_one_error_line(args, words, tmp_path):
    """The SAEBench-style eval mains and argparse usage errors: exit 2, one `error:` line naming the
    problem, no traceback, nothing written."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip() and "Warning" not in ln and "warn(" not in ln]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []
