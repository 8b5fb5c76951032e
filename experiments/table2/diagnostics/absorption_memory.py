"""Host memory of SAEBench's k-sparse scoring per test word (the absorption eval's peak), on the CPU.

SAEBench's ``eval_probe_and_sae_k_sparse_raw_scores`` (absorption, k-sparse probing step) builds one Python row per
test word, 26 letters x (one probe score + ``max_k`` k-sparse scores, sums and activation arrays), and a
DataFrame of them; with Gemma-3's ~28k test words that is GBs per SAE, in every absorption worker at once. This
script runs that function, unchanged, on a small random TopK SAE with random probes for ``--rows`` words in a
fresh process per size and records the growth of the peak resident memory (``ru_maxrss``) per word.
``absorption_stage.EVAL_ROW_BYTES_K10`` (the workers' memory cap) is taken from it.

    .venv/bin/python experiments/table2/diagnostics/absorption_memory.py --rows 1000 4000 28000 --gc on off \\
        --out experiments/table2/diagnostics/absorption_memory.json

``--scoring batched`` measures ``absorption_stage.batched_k_sparse_raw_scores`` (the same DataFrame, per batch) instead
(``absorption_stage.EVAL_ROW_BYTES_K10_BATCHED``, the cap when that scoring runs: absorption_memory_batched.json).
``--gc on off`` runs each size with Python's garbage collector on (SAEBench's own setting) and off (as
``absorption_stage`` runs the k-sparse probing: the same values, no collector passes over the rows built).
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
import sys
from pathlib import Path

from sae_rdp_plugin.cli import OneLineArgumentParser
from sae_rdp_plugin.io import atomic_write_json

CHILD = r"""
import gc, json, resource, sys, time
import torch
from sae_bench.evals.absorption.k_sparse_probing import KSparseProbe, eval_probe_and_sae_k_sparse_raw_scores
from sae_bench.evals.absorption.probing import LinearProbe
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

rows, max_k, d_in, d_sae = (int(a) for a in sys.argv[1:5])
gc_on = sys.argv[5] == "on"
torch.manual_seed(0)
sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=32, device="cpu"))
probe = LinearProbe(d_in, 26)
ksp = {
    k: {i: KSparseProbe(torch.randn(k), torch.tensor(0.0), torch.randperm(d_sae)[:k]) for i in range(26)}
    for k in range(1, max_k + 1)
}
labels = [(f"w{i}", i % 26) for i in range(rows)]
acts = torch.randn(rows, d_in)
gc.collect()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if not gc_on:  # as absorption_stage runs SAEBench's k-sparse probing: the values are the same either way
    gc.disable()
t = time.perf_counter()
scoring = {}
if sys.argv[6] == "batched":  # absorption_stage's per-batch scoring of the same DataFrame, its run-time check included
    sys.path.insert(0, sys.argv[7])
    from absorption_stage import batched_k_sparse_raw_scores

    df = batched_k_sparse_raw_scores(
        eval_probe_and_sae_k_sparse_raw_scores, sae, probe, ksp, labels, acts, eval_batch_size=24,
        record=scoring.update,
    )
    if not scoring.get("fast"):  # it fell back to SAEBench's function: not the batched scoring's memory
        raise SystemExit(f"the batched scoring was not used: {scoring}")
else:
    df = eval_probe_and_sae_k_sparse_raw_scores(sae, probe, ksp, labels, acts, eval_batch_size=24)
s = time.perf_counter() - t
gc.enable()
r1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before the hash below, which holds a copy of the values
import hashlib, pickle
digest = hashlib.sha256(pickle.dumps([df[c].tolist() for c in df.columns])).hexdigest()
out = {"rows": rows, "gc": sys.argv[5], "scoring": sys.argv[6], "columns": df.shape[1],
       "peak_growth_bytes": (r1 - r0) * 1024, "seconds": s,
       "values_sha256": digest}
print(json.dumps(out))
"""


HERE = Path(__file__).resolve().parent
D_SAE = 2048  # the measured random TopK SAE's latents (a k-sparse probe reads up to max_k of them)
FUNCTIONS = {
    "saebench": "sae_bench.evals.absorption.k_sparse_probing.eval_probe_and_sae_k_sparse_raw_scores",
    "batched": "experiments/table2/absorption_stage.batched_k_sparse_raw_scores",
}


def main(argv: list[str] | None = None) -> int:
    ap = OneLineArgumentParser(prog="absorption_memory.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1000, 4000])
    ap.add_argument("--max-k", type=int, default=10, help="SAEBench's max_k_value (default 10)")
    ap.add_argument(
        "--gc", nargs="+", choices=["on", "off"], default=["on"],
        help="Python's garbage collector during the scoring; each mode is run for every --rows",
    )  # fmt: skip
    ap.add_argument(
        "--scoring", choices=["saebench", "batched"], default="saebench",
        help="SAEBench's row-by-row function (default) or absorption_stage.batched_k_sparse_raw_scores",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if min(args.rows) < 1 or not 1 <= args.max_k <= D_SAE:
        print(f"error: --rows must be >= 1 and --max-k in 1..{D_SAE} (the SAE's latents)", file=sys.stderr)
        return 2
    if not args.out.parent.is_dir() or args.out.is_dir():
        print(f"error: --out {args.out}: {'is a folder' if args.out.is_dir() else 'its folder does not exist'}",
              file=sys.stderr)  # fmt: skip
        return 2
    runs = []
    for n, mode in ((n, mode) for n in args.rows for mode in args.gc):
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD,
                str(n),
                str(args.max_k),
                "64",
                str(D_SAE),
                mode,
                args.scoring,
                str(HERE.parent),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    per_row = [r["peak_growth_bytes"] / r["rows"] for r in runs if r["gc"] == args.gc[0]]
    # the collector changes no value: every mode's DataFrame of a size hashes the same
    same = {n: len({r["values_sha256"] for r in runs if r["rows"] == n}) == 1 for n in args.rows}
    rec = {
        "what": __doc__.split("\n\n")[0],
        "function": FUNCTIONS[args.scoring],
        "scoring": args.scoring,
        "max_k": args.max_k,
        "sae": {"architecture": "topk", "d_in": 64, "d_sae": D_SAE, "k": 32},
        "runs": runs,
        "bytes_per_row": per_row,
        "same_values_in_every_gc_mode": same,
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "date": dt.date.today().isoformat(),
    }
    atomic_write_json(args.out, rec, indent=1)
    print(json.dumps({"bytes_per_row": per_row}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
