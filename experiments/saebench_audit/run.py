"""Reproduce experiments/saebench_audit/results/: the RDP audit of the bundled real SAEBench results (CPU).

    python experiments/saebench_audit/run.py [--quick] [--work out/saebench_audit]

Every output (one SAEBench-format JSON per sweep and analysis, plots) goes to --work (git-ignored);
the committed subset is copied to experiments/saebench_audit/results/: summary.md (all tables), audits.csv
(all rows), and the pooled-per-layer analysis with the L2 distortion (eval JSONs + figures).
"""

import argparse
import shutil
import time
from pathlib import Path

from sae_rdp_plugin.evals.rdp_audit.bundled import run_bundled, summary_csv, summary_markdown
from sae_rdp_plugin.io import atomic_write_text

HERE = Path(__file__).parent

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", type=Path, default=Path("out/saebench_audit"))
    ap.add_argument("--results", type=Path, default=HERE / "results")
    ap.add_argument("--quick", action="store_true", help="200 resamples instead of 2000")
    a = ap.parse_args()
    n = 200 if a.quick else 2000
    t0 = time.time()
    s = run_bundled(a.work, n_boot=n, n_perm=n, seed=42)
    if a.results.exists():
        shutil.rmtree(a.results)
    a.results.mkdir(parents=True)
    atomic_write_text(a.results / "summary.md", summary_markdown(s))
    atomic_write_text(a.results / "audits.csv", summary_csv(s))
    for name in ("pooled_layer_runA_l2",):
        shutil.copytree(a.work / name, a.results / name)
    print(f"{len(s['rows'])} (sweep, proxy) audits in {time.time() - t0:.0f} s -> {a.results}")
