"""The training-speed benchmark script runs end to end in its tiny CPU mode (slow: ~1-2 min)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_bench_quick_runs(tmp_path):
    root = Path(__file__).resolve().parents[2]
    subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "training_speed" / "bench_training_speed.py"),
            "--quick",
            "--out",
            str(tmp_path),
            "--only",
            "saelens_weighted_topk",
            "fast_weighted_topk",
            "fast_topk[x4,seq]",
            "fast_topk[x4,streams]",
            "fast_topk[deterministic]",
            "fast_weighted_topk[SAETrainer,deterministic]",
            "--skip-pipeline",
        ],
        check=True,
        capture_output=True,
        timeout=600,
        # no Triton interpreter in the subprocess: it lacks tests/triton_interp.py's numpy fix, and the
        # kernels' interpreter runs are tested in test_fast_kernels.py; the script then checks the PyTorch kernels
        env={**os.environ, "TRITON_INTERPRET": "0"},
    )
    res = json.loads((tmp_path / "training_speed.json").read_text())
    rows = {(r["impl"], r["precision"]): r for r in res["rows"]}
    for prec in ("bf16", "fp32"):
        assert rows[("fast_weighted_topk", prec)]["median_ms"] > 0
        assert rows[("saelens_weighted_topk", prec)]["median_ms"] > 0
        assert rows[("fast_topk[x4,seq]", prec)]["median_ms"] > 0
        assert rows[("fast_topk[deterministic]", prec)]["median_ms"] > 0
        assert rows[("fast_weighted_topk[SAETrainer,deterministic]", prec)]["median_ms"] > 0
        assert "need CUDA" in rows[("fast_topk[x4,streams]", prec)]["error"]  # CPU: refused, recorded
    chk = next(iter(res["checks"].values()))
    assert chk["rel_err_grad_W_enc_fp32"] < 1e-5  # fast vs SAELens autograd, float32
    assert (tmp_path / "training_speed.md").exists()


def test_table_from_a_cut_off_run(tmp_path):
    """--table-from: the table of a committed run whose call stopped before writing it (every row of its JSON
    in the table, nothing measured); an unreadable file is one error line, exit 2, nothing written."""
    root = Path(__file__).resolve().parents[2]
    script = root / "benchmarks" / "training_speed" / "bench_training_speed.py"
    src = root / "benchmarks" / "training_speed" / "aux_compact" / "training_speed.json"
    subprocess.run([sys.executable, str(script), "--table-from", str(src), "--out", str(tmp_path)], check=True)
    md = (tmp_path / "training_speed.md").read_text()
    rows = json.loads(src.read_text())["rows"]
    for r in rows:
        assert f"| {r['config']} | {r['precision']} | {r['impl']} | {r['median_ms']:.2f} |" in md, r["impl"]
    assert md == (src.parent / "training_speed.md").read_text()  # the committed table is this one
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    p = subprocess.run(
        [sys.executable, str(script), "--table-from", str(bad), "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert p.returncode == 2 and p.stdout.startswith("error: --table-from") and p.stdout.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_heavy_config_rows(tmp_path):
    """--heavy adds issue 14's aux-loss anchor shape (tiny under --quick) on Student-t activations: its rows, its
    gradient check against SAELens's autograd and its floors are all under the `_heavy` config key."""
    root = Path(__file__).resolve().parents[2]
    script = root / "benchmarks" / "training_speed" / "bench_training_speed.py"
    args = ["--quick", "--heavy", "--skip-pipeline", "--precisions", "bf16", "--out", str(tmp_path)]
    only = ["--only", "saelens_weighted_topk+aux", "fast_weighted_topk+aux[dead0.85]"]
    env = {**os.environ, "TRITON_INTERPRET": "0"}  # as test_bench_quick_runs: the PyTorch kernels
    subprocess.run([sys.executable, str(script), *args, *only], check=True, capture_output=True, timeout=600, env=env)
    res = json.loads((tmp_path / "training_speed.json").read_text())
    heavy = {r["impl"]: r for r in res["rows"] if r["config"] == "48x256_k8_heavy"}
    assert set(heavy) == {"saelens_weighted_topk+aux", "fast_weighted_topk+aux[dead0.85]"}
    assert all(r["median_ms"] > 0 and "x_sparse_floor" in r for r in heavy.values())
    assert res["checks"]["48x256_k8_heavy"]["rel_err_grad_W_enc_fp32"] < 1e-5
    assert {"32x256_k8", "48x256_k8_heavy"} <= set(res["floors"])


def test_profile_script_quick(tmp_path):
    """benchmarks/training_speed/profile_fast_step.py --quick --heavy (tiny shape, CPU profiler): one kernel table per
    implementation under the `_heavy` / `_dead` key, each with ops whose times add up to the reported total."""
    root = Path(__file__).resolve().parents[2]
    script = root / "benchmarks" / "training_speed" / "profile_fast_step.py"
    args = ["--quick", "--heavy", "--dead-frac", "0.5", "--steps", "2", "--out", str(tmp_path)]
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    subprocess.run([sys.executable, str(script), *args], check=True, capture_output=True, timeout=600, env=env)
    runs = json.loads((tmp_path / "profile_fast_step.json").read_text())["runs"]
    names = ["fast_weighted_topk", "fast_weighted_topk[SAETrainer]", "fast_weighted_topk[mask]"]
    assert set(runs) == {f"{n}@64x512k8_heavy_dead0.5" for n in names}
    for run in runs.values():
        assert run["kernels"] and run["total_kernel_ms_per_step"] > 0
        assert sum(r["ms_per_step"] for r in run["kernels"]) <= run["total_kernel_ms_per_step"] * (1 + 1e-9)
    assert (tmp_path / "profile_fast_step.txt").read_text().startswith("## fast_weighted_topk@64x512k8_heavy_dead0.5")
