"""SAEBench's k-sparse scoring, row by row (SAEBench) and per batch (absorption_stage), on this machine.

``absorption_stage.batched_k_sparse_raw_scores`` replaces SAEBench's ``eval_probe_and_sae_k_sparse_raw_scores``
during the absorption eval with a per-batch computation of the same DataFrame, bit for bit; its dots and sums
follow the order of operations that reproduces torch's 1-D ops on this machine (``reduction_plan``: calibrated
per process). This script prints the machine (processor, torch, its BLAS and CPU capability), the plan chosen for
every k and, with ``--all``, every candidate that passes the calibration (more than one means the calibration data
did not tell them apart); then, unless ``--plans-only``, it runs both functions on a random TopK SAE with random
probes (``--rows`` words, 26 letters, k 1..``--max-k``), checks the DataFrames are equal bit for bit and prints the
seconds and their ratio. ``--plans-only`` needs torch, NumPy and pandas alone (no SAEBench, no SAELens).

    .venv/bin/python experiments/table2/diagnostics/absorption_scoring.py --rows 5000 [--out scoring.json]
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/table2
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root (sae_rdp_plugin)

import absorption_stage as ab  # noqa: E402

from sae_rdp_plugin.cli import OneLineArgumentParser  # noqa: E402


def machine() -> dict[str, Any]:
    """The processor, torch and its CPU BLAS: what a BLAS dot's order of operations depends on."""
    import numpy as np
    import torch

    cpu = platform.processor()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
        cpu = names[0] if names else cpu
        flags = next((ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")), "").split()
    except OSError:
        flags = []
    config = torch.__config__.show()
    blas = [ln.strip("- ").strip() for ln in config.splitlines() if "Math Kernel" in ln or "OpenBLAS" in ln]
    blas += [t.strip(", ") for t in config.split() if t.startswith("BLAS_INFO=")]
    return {
        "cpu": cpu,
        "avx512f": "avx512f" in flags,
        "avx2": "avx2" in flags,
        "fma": "fma" in flags,
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_blas": blas,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def plans(max_k: int, all_: bool) -> dict[str, Any]:
    t = time.perf_counter()
    out: dict[str, Any] = {op: {str(n): ab.reduction_plan(op, n) for n in range(1, max_k + 1)} for op in ("dot", "sum")}
    out["seconds"] = round(time.perf_counter() - t, 3)
    if all_:
        out["all_passing"] = {
            op: {str(n): ab.matching_plans(op, n) for n in range(1, max_k + 1)} for op in ("dot", "sum")
        }
    return out


def timing(rows: int, max_k: int, d_in: int, d_sae: int, batch: int) -> dict[str, Any]:
    """Both functions on one random TopK SAE, probe and set of k-sparse probes (fixed seeds)."""
    import numpy as np
    import torch
    from sae_bench.evals.absorption.k_sparse_probing import KSparseProbe, eval_probe_and_sae_k_sparse_raw_scores
    from sae_bench.evals.absorption.probing import LinearProbe
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=32, device="cpu"))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    probe = LinearProbe(d_in, 26)
    ksp = {
        k: {
            i: KSparseProbe(
                torch.tensor(rng.standard_normal(k)).float(),  # as SAEBench makes them (float64 -> float32)
                torch.tensor(rng.standard_normal()).float(),
                torch.randperm(d_sae)[:k],
            )
            for i in range(26)
        }
        for k in range(1, max_k + 1)
    }
    labels = [(f"w{i}", int(rng.integers(26))) for i in range(rows)]
    acts = torch.randn(rows, d_in) * 2
    t = time.perf_counter()
    want = eval_probe_and_sae_k_sparse_raw_scores(sae, probe, ksp, labels, acts, eval_batch_size=batch)
    s_orig = time.perf_counter() - t
    rec: list[dict] = []
    t = time.perf_counter()
    got = ab.batched_k_sparse_raw_scores(
        eval_probe_and_sae_k_sparse_raw_scores, sae, probe, ksp, labels, acts, eval_batch_size=batch, record=rec.append
    )
    s_fast = time.perf_counter() - t
    diff = ab._first_difference(got, want)  # columns, dtypes, rows, every value's bits: reported, not raised
    return {
        "rows": rows,
        "max_k": max_k,
        "sae": {"architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": 32},
        "eval_batch_size": batch,
        "saebench_s": round(s_orig, 2),
        "batched_s": round(s_fast, 2),
        "ratio": round(s_orig / s_fast, 1),
        "bitwise_equal": diff is None,
        "difference": diff,
        "record": rec[0] if rec else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = OneLineArgumentParser(prog="absorption_scoring.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--max-k", type=int, default=10)
    ap.add_argument("--d-sae", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1024, help="eval_batch_size (the stage's default 1024)")
    ap.add_argument("--plans-only", action="store_true")
    ap.add_argument("--all", action="store_true", help="every candidate that passes the calibration")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    bad = None
    if args.rows < 1 or args.max_k < 1 or args.batch < 1:
        bad = "--rows, --max-k and --batch must be >= 1"
    elif args.d_sae < max(32, args.max_k):  # the timing's TopK SAE keeps 32 latents; a probe reads up to max_k
        bad = f"--d-sae must be >= max(32, --max-k), got {args.d_sae}"
    elif args.out is not None and (args.out.is_dir() or not args.out.parent.is_dir()):
        bad = f"--out {args.out}: not a file in an existing folder"
    if bad is not None:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rec: dict[str, Any] = {"date": date, "machine": machine(), "plans": plans(args.max_k, args.all)}
    print(json.dumps(rec, indent=1), flush=True)
    if not args.plans_only:
        rec["timing"] = timing(args.rows, args.max_k, 64, args.d_sae, args.batch)
        print(json.dumps(rec["timing"], indent=1))
    if args.out is not None:  # whole or not at all
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(json.dumps(rec, indent=1) + "\n")
        os.replace(tmp, args.out)
    return 0 if rec.get("timing", {}).get("bitwise_equal", True) else 1


if __name__ == "__main__":
    sys.exit(main())
