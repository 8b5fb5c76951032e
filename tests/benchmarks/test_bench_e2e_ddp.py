"""benchmarks/distributed/bench_e2e_ddp.py --quick: torchrun of `sae-rdp train --model` on 1 and 2 gloo ranks
(tiny model, CPU) runs end to end and reports what the GPU run will (its numbers mean nothing here)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quick_run_reports_both_points(tmp_path):
    script = REPO / "benchmarks" / "distributed" / "bench_e2e_ddp.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "bench_e2e_ddp.json").read_text())
    rows = {r["gpus"]: r for r in res["rows"]}
    assert set(rows) == {1, 2} and all("error" not in r for r in rows.values()), rows
    assert rows[2]["tokens"] == 2 * rows[1]["tokens"] and rows[2]["global_batch"] == 2 * rows[1]["global_batch"]
    assert rows[1]["efficiency"] == 1.0 and rows[2]["efficiency"] > 0
    assert 0 < rows[2]["heldout_fvu"] < 10
    assert rows[1]["fast_step"] and rows[2]["fast_step"] and rows[2]["kernels"] == "torch"
    assert proc.stdout.strip().splitlines()[-1].lstrip().startswith("2 ")  # the table comes last
