"""Reproducible run of the exact theory suite (the same code as `sae-rdp demo --only theory`, with the
settings in config.json): writes JSON, PNG figures and report.md under --out.

    python experiments/theory/run_theory.py --config experiments/theory/config.json --out experiments/theory/results
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from sae_rdp_plugin.experiments.theory_suite import run_suite  # noqa: E402
from sae_rdp_plugin.io import atomic_write_text  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = Path(__file__).resolve().parent
    ap.add_argument("--config", type=Path, default=here / "config.json")
    ap.add_argument("--out", type=Path, default=here / "results")
    args = ap.parse_args()
    cfg = json.loads(args.config.read_text())
    res = run_suite(args.out / "theory", cfg)
    md = res["report"] + f"\n\n_Machine and date: see theory/summary.json (metadata): {res['metadata']}_\n"
    atomic_write_text(args.out / "report.md", md)
    print(f"wrote {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
