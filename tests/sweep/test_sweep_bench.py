import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_bench_sweep_gpu_quick(tmp_path):
    """benchmarks/sweep/bench_sweep_gpu.py --quick runs on CPU and writes its JSON (both parts)."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "sweep" / "bench_sweep_gpu.py"),
            "--quick",
            "--device",
            "cpu",
            "--out",
            str(tmp_path),
        ],
        check=True,
        env=env,
        timeout=600,
    )
    res = json.loads((tmp_path / "bench_sweep_gpu.json").read_text())
    assert res["throughput"]["speedup"] > 0
    assert res["full_sweep"]["members"] == len(
        json.loads((tmp_path / "full_sweep" / "results.json").read_text())["members"]
    )
