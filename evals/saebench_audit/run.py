"""Reproduce evals/saebench_audit/: the RDP audit of the bundled real SAEBench results (CPU, a few minutes).

    python evals/saebench_audit/run.py [--quick] [--out evals/saebench_audit/results]
"""

import argparse
import time
from pathlib import Path

from sae_rdp_plugin.evals.rdp_audit.bundled import run_bundled

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--quick", action="store_true", help="200 resamples instead of 2000")
    a = ap.parse_args()
    n = 200 if a.quick else 2000
    t0 = time.time()
    s = run_bundled(a.out, n_boot=n, n_perm=n, seed=42)
    print(f"{len(s['rows'])} (sweep, proxy) audits in {time.time() - t0:.0f} s -> {a.out}")
