#!/usr/bin/env python
"""Empirical RDP experiments on trained SAEs (sae_rdp_plugin.experiments.rdp_sweeps).

    python experiments/rdp_sweeps/run.py                       # all, CPU size, into experiments/rdp_sweeps/results/
    python experiments/rdp_sweeps/run.py --only rotation
    python experiments/rdp_sweeps/run.py --size gpu --device cuda --out $OUT   # paper-sized (lead, H100)

Trained sweeps (weights, checkpoints) go to --work (resumable); committed outputs per experiment:
config.json, results.json (every SAE's R, D, P, MCC ...), analysis.json, table.md, PNG figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from sae_rdp_plugin.experiments.rdp_sweeps import EXPERIMENTS, run_experiment
from sae_rdp_plugin.io import atomic_write_text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS))
    ap.add_argument("--size", choices=["cpu", "gpu"], default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--work", type=Path, default=Path("/tmp/rdp_sweeps_work"))
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest for these tiny matmuls)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    parts = []
    for name in args.only:
        print(f"[rdp_sweeps] {name} ({args.size}) ...", flush=True)
        _, md = run_experiment(name, args.out, args.work, device=args.device, size=args.size)
        parts.append(f"## {name}\n\n{md}\n")
        print(md, flush=True)
    atomic_write_text(
        args.out / f"tables_{args.size}{'_' + '_'.join(args.only) if args.only != list(EXPERIMENTS) else ''}.md",
        "\n".join(parts),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
