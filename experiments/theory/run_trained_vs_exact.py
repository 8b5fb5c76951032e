"""Trained SAEs against the exact frontier (sae_rdp_plugin.experiments.theory_suite.trained_vs_exact): linear-encoder
TopK SAEs trained on the exact DGP of the toy theory, their exact (R, D) compared with each class's frontier.
CPU, about two minutes with the defaults.

    python experiments/theory/run_trained_vs_exact.py --out experiments/theory/results
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from sae_rdp_plugin.experiments.theory_suite import trained_vs_exact, trained_vs_exact_report  # noqa: E402
from sae_rdp_plugin.io import atomic_write_json, atomic_write_text  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    torch.set_num_threads(1)
    res = trained_vs_exact()
    atomic_write_json(args.out / "trained_vs_exact.json", res)
    md = trained_vs_exact_report(res) + f"\n\n_Machine and date: {res['metadata']}_\n"
    atomic_write_text(args.out / "trained_vs_exact.md", md)
    print(md)


if __name__ == "__main__":
    main()
