"""bench_model_load.py's bad input: one error line, exit 2, nothing written (the timed rows need the Gemma GGUF
and minutes of CPU: they run as the benchmark, not here)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bad_input_exits_2_with_one_line(tmp_path):
    script = ROOT / "benchmarks/e2e/bench_model_load.py"
    for extra, msg in (
        (["--repeats", "0"], "--repeats must be >= 1"),
        (["--gguf", str(tmp_path / "missing.gguf")], "missing.gguf"),
    ):
        out = tmp_path / "out"
        r = subprocess.run([sys.executable, str(script), "--out", str(out), *extra], capture_output=True, text=True)
        err = r.stderr.strip()
        assert r.returncode == 2 and err.startswith("error: ") and msg in err and "\n" not in err, (extra, err)
        assert not out.exists()
